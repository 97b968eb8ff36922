//! The audit step: one row per call of an audited RPC (every mutating RPC and auth
//! event), and one row per (actor, method, reason) and window for refused calls
//! ([`RefusalAudit`]), so a flood of refusals costs a bounded number of rows.

use tonic::body::Body;

use super::{
    AuditTarget, Caller, Refusal,
    audit::{Audit, AuditEvent, RefusalAudit},
    context::Call,
    layer::{Refused, Step},
};
use crate::{
    identity::PeerIdentity,
    metrics::{CodeLabel, code_name},
};

/// The audit row of a call's success, for a handler that commits it in the transaction of
/// what the call does (one commit instead of two). The audit step puts one in the request's
/// extensions of every audited method when it writes audit rows; a handler that committed
/// it answers with [`audit_committed`], and the step writes no second row. A call that
/// fails is audited by the step as before.
#[derive(Debug, Clone)]
pub struct AuditRow(pub(crate) AuditEvent);

impl AuditRow {
    /// The row: `caller` did this call's method to `target`, and it succeeded.
    pub fn ok(&self, caller: &Caller, target: impl Into<String>) -> AuditEvent {
        AuditEvent {
            actor: caller.actor(),
            target: target.into(),
            result: code_name(tonic::Code::Ok).to_owned(),
            ..self.0.clone()
        }
    }
}

/// The audit row to commit with the call's work, when the guard audits this call.
pub fn audit_row<T>(req: &tonic::Request<T>) -> Option<AuditRow> {
    req.extensions().get::<AuditRow>().cloned()
}

/// Set on a response whose audit row the handler committed itself.
#[derive(Debug, Clone, Copy)]
pub struct AuditCommitted;

/// A response whose audit row (from [`audit_row`]) was committed with the call's work.
pub fn audit_committed<T>(msg: T) -> tonic::Response<T> {
    let mut resp = tonic::Response::new(msg);
    resp.extensions_mut().insert(AuditCommitted);
    resp
}

/// The audit step.
#[derive(Debug, Clone)]
pub struct Audited {
    pub(crate) audit: Option<(Audit, RefusalAudit)>,
}

/// Whether a refusal is a security event worth a row (people without credentials, rate
/// limits and outages are not: they are counted in metrics).
fn is_security_event(r: &Refusal) -> bool {
    match r {
        Refusal::UnknownMethod
        | Refusal::MalformedAuthorization
        | Refusal::MalformedToken
        | Refusal::TokenAlgorithm
        | Refusal::UnknownSigningKey
        | Refusal::TokenInvalid
        | Refusal::TokenRevoked
        | Refusal::ApiKeyInvalid
        | Refusal::NoMeshIdentity
        | Refusal::WrongIdentity { .. }
        | Refusal::PersonRequired
        | Refusal::AdminRequired => true,
        Refusal::MissingCredentials
        | Refusal::TokenExpired
        | Refusal::KeysNotLoaded
        | Refusal::RevocationUnavailable
        | Refusal::CredentialsNotAccepted
        | Refusal::CredentialStoreUnavailable
        | Refusal::RateLimited { .. }
        | Refusal::LimiterUnavailable
        | Refusal::Ceiling { .. } => false,
    }
}

impl Step for Audited {
    type State = Option<Call>;

    async fn before(&self, req: &mut http::Request<Body>) -> Result<Self::State, Refusal> {
        let call = self.audit.as_ref().and_then(|_| req.extensions().get::<Call>().cloned());
        if let Some(call) = call.as_ref().filter(|c| c.method.is_some_and(|m| m.rule.audit)) {
            // The handler may commit this row with its own work (the actor and target are
            // its to fill); then the response says so and no second row is written.
            req.extensions_mut().insert(AuditRow(AuditEvent {
                actor: String::new(),
                action: call.name().to_owned(),
                target: String::new(),
                result: String::new(),
                peer: call.remote_text(),
                request_id: call.request_id.clone(),
            }));
        }
        Ok(call)
    }

    async fn after(&self, call: Self::State, resp: &mut http::Response<Body>) {
        let (Some((audit, refusals)), Some(call)) = (&self.audit, call) else { return };
        let actor = match resp.extensions().get::<Caller>() {
            Some(c @ (Caller::User { .. } | Caller::Service(_))) => c.actor(),
            _ => call.peer.as_ref().map_or_else(|| Caller::Anonymous.actor(), PeerIdentity::uri),
        };
        let result = code_name(CodeLabel::of_response(resp).0).to_owned();
        let event = AuditEvent {
            actor,
            action: call.name().to_owned(),
            target: String::new(),
            result,
            peer: call.remote_text(),
            request_id: call.request_id.clone(),
        };
        if let Some(Refused(refusal)) = resp.extensions().get::<Refused>() {
            if is_security_event(refusal) {
                let action = if refusal.code() == tonic::Code::PermissionDenied {
                    "auth.permission_denied"
                } else {
                    "auth.refused"
                };
                let event = AuditEvent { action: action.to_owned(), target: event.action.clone(), ..event };
                refusals.record(event, refusal.reason()).await;
            }
            return;
        }
        if call.method.is_some_and(|m| m.rule.audit) && resp.extensions().get::<AuditCommitted>().is_none() {
            let target = resp.extensions().get::<AuditTarget>().map(|t| t.0.clone()).unwrap_or_default();
            audit.record(AuditEvent { target, ..event }).await;
        }
    }
}
