//! Prometheus metrics on `prometheus-client`: each service registers its families once, at
//! start-up, with typed label sets whose values come from closed sets (a method of the
//! authorization table or `unknown`, a gRPC code, a refusal reason, a ceiling's name),
//! never from what a caller sent, so no request can add a series. They are served in the
//! Prometheus text format (0.0.4) on `GET /metrics` by a small hyper server with header
//! and connection timeouts and a cap on concurrent scrapes (plain HTTP on the service's
//! metrics port; the network policy decides who may scrape).

use std::{
    fmt::Write as _,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures_util::future::BoxFuture;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Bytes, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder},
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::{Metric, Registry},
};
use tokio::{net::TcpListener, sync::Semaphore};
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tracing::{debug, info, warn};

use crate::MeshError;

/// Upper bounds of the latency buckets, in seconds.
pub const BUCKETS: &[f64] =
    &[0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];

/// How long a scraper may take to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one scrape connection may stay open in all.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);
/// Scrapes served at once; more wait for a free slot (the accept loop stops reading).
const CONCURRENT_SCRAPES: usize = 8;

/// A latency histogram with [`BUCKETS`].
pub fn latency_histogram() -> Histogram {
    Histogram::new(BUCKETS.iter().copied())
}

/// A family of latency histograms.
pub type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// A new family of latency histograms with [`BUCKETS`].
pub fn histogram_family<L: Clone + std::hash::Hash + Eq>() -> HistogramFamily<L> {
    Family::new_with_constructor(latency_histogram as fn() -> Histogram)
}

/// A gRPC status code as a label value (`OK`, `NOT_FOUND`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CodeLabel(pub Code);

impl CodeLabel {
    /// The code of a response: `grpc-status` in its headers (unary errors and refusals),
    /// otherwise OK (successes and streams carry it in the trailers).
    pub fn of_response<B>(resp: &http::Response<B>) -> Self {
        let code = resp
            .headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<i32>().ok())
            .map_or(Code::Ok, Code::from);
        Self(code)
    }
}

/// `NOT_FOUND` for `Code::NotFound`.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

impl EncodeLabelValue for CodeLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(code_name(self.0))
    }
}

/// Labels of the RPC families.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RpcLabels {
    /// `Service.Method` from the authorization table, or `unknown`.
    pub method: &'static str,
    /// The status code.
    pub code: CodeLabel,
}

/// Labels of the refusal counter.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ReasonLabels {
    /// The refusal's reason code (`TOKEN_EXPIRED`, ...).
    pub reason: &'static str,
}

/// Labels of the rate-limit counter.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ClassLabels {
    /// The rate-limit class (`submit`, `read`, ...).
    pub class: &'static str,
}

/// Labels of the ceiling counter.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct CeilingLabels {
    /// The ceiling's name (`watchers_per_user`, `argon2_busy`, ...).
    pub ceiling: &'static str,
}

/// Runs before each scrape (to refresh gauges read from elsewhere).
pub type Refresh = Arc<dyn Fn() -> BoxFuture<'static, ()> + Send + Sync>;

/// One service's metrics: the registry and the families every server has.
pub struct Metrics {
    registry: Mutex<Registry>,
    /// RPCs handled, by method and code.
    pub rpc_requests: Family<RpcLabels, Counter>,
    /// RPC latency to the response headers, by method and code.
    pub rpc_duration: HistogramFamily<RpcLabels>,
    /// Calls refused before reaching the service, by reason.
    pub refusals: Family<ReasonLabels, Counter>,
    /// Calls refused by a rate limit, by class.
    pub rate_limited: Family<ClassLabels, Counter>,
    /// Requests refused by a resource ceiling, by ceiling.
    pub ceilings: Family<CeilingLabels, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// A registry with the families every server has.
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::default();
        let rpc_requests = Family::<RpcLabels, Counter>::default();
        registry.register(
            "sakuga_rpc_requests",
            "RPCs handled, by method and status code.",
            rpc_requests.clone(),
        );
        let rpc_duration = histogram_family::<RpcLabels>();
        registry.register(
            "sakuga_rpc_duration_seconds",
            "RPC latency to the response headers, by method and status code.",
            rpc_duration.clone(),
        );
        let refusals = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "sakuga_auth_failures",
            "Calls refused before reaching the service, by reason code.",
            refusals.clone(),
        );
        let rate_limited = Family::<ClassLabels, Counter>::default();
        registry.register(
            "sakuga_rate_limited",
            "Calls refused by a rate limit, by class.",
            rate_limited.clone(),
        );
        let ceilings = Family::<CeilingLabels, Counter>::default();
        registry.register(
            "sakuga_limit_refusals",
            "Requests refused by a resource ceiling, by ceiling.",
            ceilings.clone(),
        );
        Arc::new(Self {
            registry: Mutex::new(registry),
            rpc_requests,
            rpc_duration,
            refusals,
            rate_limited,
            ceilings,
        })
    }

    /// Registers a service's own family (once, at start-up). Counters get `_total` appended
    /// by the encoder: register `sakuga_jobs_finished`, not `sakuga_jobs_finished_total`.
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        self.registry.lock().unwrap_or_else(std::sync::PoisonError::into_inner).register(name, help, metric);
    }

    /// Counts one refusal of `ceiling`.
    pub fn ceiling_refused(&self, ceiling: &'static str) {
        self.ceilings.get_or_create(&CeilingLabels { ceiling }).inc();
    }

    /// The Prometheus text exposition format (0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry) {
            warn!(error = %e, "metrics could not be encoded");
            let _ = writeln!(out, "# encoding failed");
        }
        out
    }
}

/// The bound metrics port, not yet serving.
#[derive(Debug)]
pub struct Listener {
    listener: TcpListener,
    addr: SocketAddr,
}

impl Listener {
    /// Binds `addr` (`None`: no metrics port).
    pub async fn bind(addr: Option<SocketAddr>) -> Result<Option<Self>, MeshError> {
        let Some(addr) = addr else { return Ok(None) };
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| MeshError::Config(format!("metrics_listen: cannot bind {addr}: {e}")))?;
        let addr = listener.local_addr().map_err(|e| MeshError::Config(format!("metrics_listen: {e}")))?;
        Ok(Some(Self { listener, addr }))
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves `GET /metrics` until `shutdown`, running `refresh` before each scrape.
    pub fn spawn(self, metrics: Arc<Metrics>, refresh: Option<Refresh>, shutdown: CancellationToken) {
        let Self { listener, addr } = self;
        info!(%addr, "metrics on /metrics");
        let slots = Arc::new(Semaphore::new(CONCURRENT_SCRAPES));
        tokio::spawn(async move {
            loop {
                let Ok(permit) = slots.clone().acquire_owned().await else { return };
                let (stream, _) = tokio::select! {
                    () = shutdown.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok(a) => a,
                        Err(e) => { warn!(error = %e, "metrics accept failed"); continue; }
                    },
                };
                let (metrics, refresh) = (metrics.clone(), refresh.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req| answer(req, metrics.clone(), refresh.clone()));
                    let conn = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(HEADER_TIMEOUT)
                        .keep_alive(false)
                        .serve_connection(TokioIo::new(stream), service);
                    match tokio::time::timeout(CONNECTION_TIMEOUT, conn).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => debug!(error = %e, "metrics connection failed"),
                        Err(_) => debug!("metrics connection timed out"),
                    }
                    drop(permit);
                });
            }
        });
    }
}

async fn answer(
    req: Request<hyper::body::Incoming>,
    metrics: Arc<Metrics>,
    refresh: Option<Refresh>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let (status, content_type, body) = if req.method() == Method::GET && req.uri().path() == "/metrics" {
        if let Some(r) = refresh {
            r().await;
        }
        (StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", metrics.render())
    } else {
        (StatusCode::NOT_FOUND, "text/plain; charset=utf-8", "only GET /metrics is served here\n".to_owned())
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(content_type));
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::gauge::Gauge;

    use super::*;

    #[test]
    fn families_render_in_the_prometheus_text_format() {
        let m = Metrics::new();
        let ok = RpcLabels { method: "JobService.GetJob", code: CodeLabel(Code::Ok) };
        m.rpc_requests.get_or_create(&ok).inc_by(3);
        m.rpc_duration.get_or_create(&ok).observe(0.02);
        m.rpc_duration.get_or_create(&ok).observe(7.0);
        m.ceiling_refused("watchers_per_user");
        let queue = Gauge::<i64>::default();
        m.register("sakuga_queue", "Queue.", queue.clone());
        queue.set(4);
        let text = m.render();
        assert!(text.contains("# TYPE sakuga_rpc_requests_total counter\n"), "{text}");
        assert!(
            text.contains("sakuga_rpc_requests_total{method=\"JobService.GetJob\",code=\"OK\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("sakuga_rpc_duration_seconds_bucket{le=\"0.025\",method=\"JobService.GetJob\",code=\"OK\"} 1\n")
                || text.contains(
                    "sakuga_rpc_duration_seconds_bucket{method=\"JobService.GetJob\",code=\"OK\",le=\"0.025\"} 1\n"
                ),
            "{text}"
        );
        assert!(text.contains("sakuga_limit_refusals_total{ceiling=\"watchers_per_user\"} 1\n"), "{text}");
        assert!(text.contains("sakuga_queue 4\n"), "{text}");
    }
}
