//! Rate limits: GCRA in Redis per caller and class (the method's rule names the class).
//! Submits, writes and logins fail closed when Redis cannot decide; reads go on.

use tonic::body::Body;
use tracing::warn;

use super::{Caller, Refusal, context::Call, layer::Step};
use crate::ratelimit::{Class, Decision, RateLimiter};

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
        let subject =
            req.extensions().get::<Caller>().map_or_else(|| Caller::Anonymous.actor(), Caller::actor);
        match limiter.check(class, &subject).await {
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
