//! The guard of one server: the six layers of the perimeter, assembled in their order.

use std::{sync::Arc, time::Duration};

use deadpool_postgres::Pool;

use super::{
    Audit, RefusalAudit, Verifier,
    audited::Audited,
    authn::Authn,
    authz::Authz,
    context::{ContextLayer, WithContext},
    layer::{StepLayer, Stepped},
    limit::Limit,
    observe::Observe,
};
use crate::{metrics::Metrics, ratelimit::RateLimiter, redis::Redis};

/// How long refusals of one (actor, method, reason) share one audit row.
pub const REFUSAL_AUDIT_WINDOW: Duration = Duration::from_mins(1);

/// What the guard of one server uses; a tower layer over the server's routes.
#[derive(Debug, Clone, Default)]
pub struct Guard {
    verifier: Option<Arc<Verifier>>,
    limiter: Option<RateLimiter>,
    audit: Option<(Audit, RefusalAudit)>,
    metrics: Option<Arc<Metrics>>,
    service: &'static str,
}

impl Guard {
    /// A guard that verifies with `verifier`, limits with `limiter` and audits into `audit`
    /// (each optional: a service without Redis has no limiter, one without a database
    /// writes no audit rows).
    pub fn new(verifier: Option<Arc<Verifier>>, limiter: Option<RateLimiter>, audit: Option<Audit>) -> Self {
        let audit = audit.map(|a| (a.clone(), RefusalAudit::new(a, REFUSAL_AUDIT_WINDOW)));
        Self { verifier, limiter, audit, metrics: None, service: "" }
    }

    /// Counts every call (by method and code, with its latency), refusals (by reason) and
    /// rate-limit refusals (by class) in `metrics`, and names `service` on every span.
    #[must_use]
    pub fn observed(mut self, service: &'static str, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self.service = service;
        self
    }

    /// The guard of a service with a database and Redis: verification with `verifier`,
    /// GCRA limits in `redis`, audit rows in `pool`'s database.
    pub fn for_service(
        verifier: &Arc<Verifier>,
        redis: &Redis,
        limits: &crate::ratelimit::RateLimits,
        pool: &Pool,
    ) -> Self {
        Self::new(
            Some(verifier.clone()),
            Some(RateLimiter::new(redis.clone(), limits.clone())),
            Some(Audit::new(pool.clone())),
        )
    }
}

/// A server wrapped by its [`Guard`]: context, metrics, audit, authentication,
/// authorization, rate limits, then the routes.
pub type Guarded<S> =
    WithContext<Stepped<Observe, Stepped<Audited, Stepped<Authn, Stepped<Authz, Stepped<Limit, S>>>>>>;

impl<S> tower::Layer<S> for Guard {
    type Service = Guarded<S>;

    fn layer(&self, inner: S) -> Self::Service {
        let limited = StepLayer(Limit { limiter: self.limiter.clone() }).layer(inner);
        let authorized = StepLayer(Authz).layer(limited);
        let authenticated =
            StepLayer(Authn { verifier: self.verifier.clone(), limiter: self.limiter.clone() })
                .layer(authorized);
        let audited = StepLayer(Audited { audit: self.audit.clone() }).layer(authenticated);
        let observed = StepLayer(Observe { metrics: self.metrics.clone() }).layer(audited);
        ContextLayer { service: self.service }.layer(observed)
    }
}
