//! Metrics of every call: count and latency by method (from the table, `unknown` for any
//! other path) and code; refusals by reason code and rate limits by class.

use std::{sync::Arc, time::Instant};

use tonic::body::Body;

use super::{
    Refusal,
    context::Call,
    layer::{Refused, Step},
};
use crate::metrics::{ClassLabels, CodeLabel, Metrics, ReasonLabels, RpcLabels};

/// The metrics step.
#[derive(Debug, Clone)]
pub struct Observe {
    pub(crate) metrics: Option<Arc<Metrics>>,
}

impl Step for Observe {
    type State = (&'static str, Instant);

    async fn before(&self, req: &mut http::Request<Body>) -> Result<Self::State, Refusal> {
        let method = req.extensions().get::<Call>().map_or(super::rules::UNKNOWN_METHOD, Call::name);
        Ok((method, Instant::now()))
    }

    async fn after(&self, (method, started): Self::State, resp: &mut http::Response<Body>) {
        let Some(m) = &self.metrics else { return };
        let labels = RpcLabels { method, code: CodeLabel::of_response(resp) };
        m.rpc_requests.get_or_create(&labels).inc();
        m.rpc_duration.get_or_create(&labels).observe(started.elapsed().as_secs_f64());
        if let Some(Refused(refusal)) = resp.extensions().get::<Refused>() {
            m.refusals.get_or_create(&ReasonLabels { reason: refusal.reason() }).inc();
            if let Refusal::RateLimited { class, .. } = refusal {
                m.rate_limited.get_or_create(&ClassLabels { class: class.as_str() }).inc();
            }
        }
    }
}
