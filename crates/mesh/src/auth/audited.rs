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
        Ok(self.audit.as_ref().and_then(|_| req.extensions().get::<Call>().cloned()))
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
        if call.method.is_some_and(|m| m.rule.audit) {
            let target = resp.extensions().get::<AuditTarget>().map(|t| t.0.clone()).unwrap_or_default();
            audit.record(AuditEvent { target, ..event }).await;
        }
    }
}
