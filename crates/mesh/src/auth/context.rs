//! The outermost layer: what every other layer and the handler know of a call. It names
//! the request (`x-request-id`, kept when the caller sent a sane one), reads the peer's
//! certificate identity and address, finds the method's row of the authorization table,
//! and opens one server span per call, child of the caller's W3C trace context. The span
//! is named by the table (`JobService.SubmitJob`), or `unknown`: a caller cannot create
//! span names or metric series by inventing paths.

use std::{
    net::SocketAddr,
    task::{Context, Poll},
};

use futures_util::future::BoxFuture;
use tonic::{
    body::Body,
    transport::server::{TcpConnectInfo, TlsConnectInfo},
};
use uuid::Uuid;

use super::rules::{Method, UNKNOWN_METHOD, method};
use crate::identity::{PeerIdentity, identity_from_der};

/// Longest `x-request-id` kept from a caller.
const MAX_REQUEST_ID: usize = 128;

/// What the guard knows of a call, in the request's extensions.
#[derive(Debug, Clone)]
pub struct Call {
    /// The method's row of the table; `None` for a path that is not in it.
    pub(crate) method: Option<&'static Method>,
    /// Request id (the caller's, or made up here).
    pub(crate) request_id: String,
    /// The identity of the peer certificate.
    pub(crate) peer: Option<PeerIdentity>,
    /// The peer's address.
    pub(crate) remote: Option<SocketAddr>,
}

impl Call {
    /// The method's name for metrics, spans and audit rows.
    pub(crate) fn name(&self) -> &'static str {
        self.method.map_or(UNKNOWN_METHOD, |m| m.name.as_str())
    }

    /// The peer address as text (empty when unknown).
    pub(crate) fn remote_text(&self) -> String {
        self.remote.map(|a| a.to_string()).unwrap_or_default()
    }

    fn of(req: &http::Request<Body>) -> Self {
        let request_id = req
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty() && v.len() <= MAX_REQUEST_ID && v.bytes().all(|b| b.is_ascii_graphic()))
            .map_or_else(|| Uuid::new_v4().to_string(), str::to_owned);
        let (peer, remote) = match req.extensions().get::<TlsConnectInfo<TcpConnectInfo>>() {
            Some(info) => (
                info.peer_certs()
                    .and_then(|certs| certs.first().and_then(|leaf| identity_from_der(leaf.as_ref()))),
                info.get_ref().remote_addr(),
            ),
            None => (None, None),
        };
        Self { method: method(req.uri().path()), request_id, peer, remote }
    }
}

/// The context layer.
#[derive(Debug, Clone)]
pub struct ContextLayer {
    pub(crate) service: &'static str,
}

impl<S> tower::Layer<S> for ContextLayer {
    type Service = WithContext<S>;

    fn layer(&self, inner: S) -> Self::Service {
        WithContext { inner, service: self.service }
    }
}

/// A service wrapped by the context layer.
#[derive(Debug, Clone)]
pub struct WithContext<S> {
    inner: S,
    service: &'static str,
}

impl<S> tower::Service<http::Request<Body>> for WithContext<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let call = Call::of(&req);
        let name = call.name();
        let span = tracing::info_span!(
            "rpc",
            otel.name = name,
            otel.kind = "server",
            method = name,
            service = self.service,
            request_id = call.request_id.as_str(),
            trace_id = tracing::field::Empty,
        );
        crate::telemetry::set_parent(&span, crate::telemetry::extract(req.headers()));
        let trace_id = crate::telemetry::trace_id(&span);
        if !trace_id.is_empty() {
            span.record("trace_id", trace_id.as_str());
        }
        let request_id = http::HeaderValue::from_str(&call.request_id).ok();
        req.extensions_mut().insert(call);
        Box::pin(tracing::Instrument::instrument(
            async move {
                let mut resp = inner.call(req).await?;
                if let Some(v) = request_id {
                    resp.headers_mut().insert("x-request-id", v);
                }
                Ok(resp)
            },
            span,
        ))
    }
}
