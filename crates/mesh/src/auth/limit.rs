//! Rate limits: GCRA in Redis per caller and class (the method's rule names the class),
//! in the caller's tier: an API key is limited per key with the `api_key` limits, an admin
//! with the `admin` limits, everyone else per user id with the user limits. Submits,
//! writes and logins fail closed when Redis cannot decide; reads go on.
//!
//! For a bearer credential the decision is asked by the authentication step, at the same
//! time as the revocation check (one Redis round trip for both), and acted on here, after
//! authorization: a call refused by authorization has still been counted.

use tonic::body::Body;
use tracing::warn;

use super::{Caller, Refusal, Role, context::Call, layer::Step};
use crate::ratelimit::{Class, Decision, RateLimiter, Tier};

/// A rate-limit decision the authentication step already took (in the revocation check's
/// Redis round trip), for this step to act on instead of asking again.
#[derive(Debug, Clone)]
pub(crate) struct Decided(pub(crate) Result<Decision, String>);

/// The tier and subject a caller is limited as.
pub(crate) fn tier_of(caller: &Caller) -> (Tier, String) {
    match caller {
        Caller::User { api_key: Some(key), .. } => (Tier::ApiKey, key.to_string()),
        Caller::User { role: Role::Admin, id, .. } => (Tier::Admin, id.to_string()),
        Caller::User { id, .. } => (Tier::User, id.to_string()),
        Caller::Service(_) | Caller::Anonymous => (Tier::User, caller.actor()),
    }
}

/// The rate-limit step.
#[derive(Debug, Clone)]
pub struct Limit {
    pub(crate) limiter: Option<RateLimiter>,
}

impl Step for Limit {
    type State = ();

    async fn before(&self, req: &mut http::Request<Body>) -> Result<(), Refusal> {
        let Some(limiter) = &self.limiter else { return Ok(()) };
        let Some(class) = req.extensions().get::<Call>().and_then(|c| c.method).and_then(|m| m.rule.class)
        else {
            return Ok(());
        };
        let decision = if let Some(Decided(decision)) = req.extensions_mut().remove::<Decided>() {
            decision
        } else {
            let (tier, subject) = tier_of(req.extensions().get::<Caller>().unwrap_or(&Caller::Anonymous));
            limiter.check_tier(class, tier, &subject).await.map_err(|e| e.to_string())
        };
        match decision {
            Ok(Decision::Allowed { .. }) => Ok(()),
            Ok(Decision::Limited { retry_after }) => Err(Refusal::RateLimited { class, retry_after }),
            Err(e) if matches!(class, Class::Submit | Class::Login | Class::Write) => {
                warn!(error = %e, class = class.as_str(), "rate limiter unavailable: refusing");
                Err(Refusal::LimiterUnavailable)
            }
            Err(e) => {
                warn!(error = %e, class = class.as_str(), "rate limiter unavailable: allowing read");
                Ok(())
            }
        }
    }

    async fn after(&self, (): (), _resp: &mut http::Response<Body>) {}
}
