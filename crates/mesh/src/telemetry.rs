//! Logging and tracing.
//!
//! Logs go to stderr: `tracing` with an env filter (`RUST_LOG`, default `info`),
//! human-readable (colored only on a terminal) or JSON (`SAKUGA_LOG_FORMAT=json`; every
//! line inside a call carries the call's `request_id` and `trace_id`).
//!
//! Traces: with `OTEL_EXPORTER_OTLP_ENDPOINT` set (e.g. `http://otel-collector:4317`), spans
//! are exported over OTLP/gRPC. The W3C trace context (`traceparent`) travels in gRPC
//! metadata on every hop and inside the worker stream's assignments, so one job's submit,
//! dispatch, generation, uploads and completion form one trace across the services.

use std::{collections::HashMap, io::IsTerminal as _};

use opentelemetry::{
    Context,
    propagation::{Extractor, Injector, TextMapPropagator as _},
    trace::{TraceContextExt as _, TracerProvider as _},
};
use opentelemetry_sdk::{propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// Without `RUST_LOG`: info, but not the Vault client's own per-request errors (we report
/// Vault failures ourselves, once, with the reason).
const DEFAULT_FILTER: &str = "info,rustify=off,vaultrs=off";

/// The OTLP exporter could not be built (the service runs on, without exporting traces).
#[derive(Debug, thiserror::Error)]
#[error("OTLP exporter for {endpoint}: {source}")]
pub struct ExporterError {
    /// The endpoint the exporter was for.
    pub endpoint: String,
    /// What the exporter builder refused.
    #[source]
    pub source: opentelemetry_otlp::ExporterBuildError,
}

/// Builds a tracer provider exporting to `endpoint` over OTLP/gRPC, batched on the tokio
/// runtime. Must run inside a runtime.
pub fn otlp_provider(endpoint: &str, service: &str) -> Result<SdkTracerProvider, ExporterError> {
    use opentelemetry_otlp::WithExportConfig as _;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .map_err(|source| ExporterError { endpoint: endpoint.to_owned(), source })?;
    let processor = opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
        exporter,
        opentelemetry_sdk::runtime::Tokio,
    )
    .build();
    Ok(SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(opentelemetry_sdk::Resource::builder().with_service_name(service.to_owned()).build())
        .build())
}

/// Installs the global subscriber (and, with `provider`, the OpenTelemetry layer and the
/// W3C propagator). Safe to call more than once: later calls do nothing.
pub fn install(provider: Option<&SdkTracerProvider>, service: &'static str) -> bool {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let json = std::env::var("SAKUGA_LOG_FORMAT").is_ok_and(|v| v == "json");
    let otel = provider.map(|p| {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        opentelemetry::global::set_tracer_provider(p.clone());
        tracing_opentelemetry::layer().with_tracer(p.tracer(format!("sakuga-{service}")))
    });
    let registry = tracing_subscriber::registry().with(filter).with(otel);
    let result = if json {
        registry
            .with(
                fmt::layer().json().with_current_span(true).with_span_list(true).with_writer(std::io::stderr),
            )
            .try_init()
    } else {
        let ansi = std::io::stderr().is_terminal();
        registry.with(fmt::layer().with_target(false).with_ansi(ansi).with_writer(std::io::stderr)).try_init()
    };
    result.is_ok()
}

/// Logging, and tracing when `OTEL_EXPORTER_OTLP_ENDPOINT` is set. Call once at start-up,
/// inside the runtime. The returned provider flushes on drop of the process (call
/// `shutdown` on it to flush earlier).
pub fn init(service: &'static str) -> Option<SdkTracerProvider> {
    let endpoint = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok().filter(|e| !e.is_empty());
    let (provider, problem) =
        match endpoint.as_deref().map(|e| otlp_provider(e, &format!("sakuga-{service}"))) {
            Some(Ok(p)) => (Some(p), None),
            Some(Err(e)) => (None, Some(e)),
            None => (None, None),
        };
    if install(provider.as_ref(), service) {
        tracing::info!(
            service,
            version = env!("CARGO_PKG_VERSION"),
            tracing = provider.is_some(),
            "starting"
        );
    }
    if let Some(problem) = problem {
        tracing::warn!(error = %problem, "traces are not exported");
    }
    provider
}

struct HeaderCarrier<'a>(&'a http::HeaderMap);

impl Extractor for HeaderCarrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

struct MapCarrier<'a, S>(&'a HashMap<String, String, S>);

impl<S: std::hash::BuildHasher> Extractor for MapCarrier<'_, S> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

struct MetadataCarrier<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataCarrier<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            tonic::metadata::MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(k, v);
        }
    }
}

/// The trace context a request carries (`traceparent`, `tracestate`).
pub fn extract(headers: &http::HeaderMap) -> Context {
    TraceContextPropagator::new().extract(&HeaderCarrier(headers))
}

/// Puts the current span's trace context into outgoing metadata.
pub fn inject(metadata: &mut tonic::metadata::MetadataMap) {
    let cx = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&cx, &mut MetadataCarrier(metadata));
}

/// The current span's trace context as a map (for the assignment's `trace_context` and the
/// job row).
pub fn current_context_map() -> HashMap<String, String> {
    let mut map = HashMap::new();
    TraceContextPropagator::new().inject_context(&tracing::Span::current().context(), &mut map);
    map
}

/// Makes the context in `map` (from [`current_context_map`]) the parent of `span`.
pub fn set_parent_from_map<S: std::hash::BuildHasher>(
    span: &tracing::Span,
    map: &HashMap<String, String, S>,
) {
    let cx = TraceContextPropagator::new().extract(&MapCarrier(map));
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// Makes `cx` the parent of `span` (when it names a trace).
pub fn set_parent(span: &tracing::Span, cx: Context) {
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// The trace id of `span` (hex), or empty when tracing is off.
pub fn trace_id(span: &tracing::Span) -> String {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    if sc.is_valid() { sc.trace_id().to_string() } else { String::new() }
}
