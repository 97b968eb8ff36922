//! Server assembly: every server mounts health (reflecting real dependency state) and
//! reflection (v1 and v1alpha: the grpcurl operators have speaks only v1alpha), serves
//! over our mTLS acceptor, and shuts down gracefully.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Server, server::Router};
use tonic_health::server::HealthReporter;
use tower::layer::util::{Identity, Stack};
use tracing::{info, warn};

use crate::{
    auth::Guard,
    error::MeshError,
    health::{self, HEALTH_SERVICE, NamedCheck},
    listen::GrpcLimits,
    tls::MeshTls,
};

/// A service's ports, bound before it opens a connection of its own: an outgoing
/// connection (to Vault, PostgreSQL, Redis) may be given any port of the ephemeral range as
/// its local port, the configured listen port included, and a bind after it would fail with
/// "address in use".
#[derive(Debug)]
pub struct Ports {
    grpc: TcpListener,
    /// `grpc.health.v1.Health` alone, in plaintext: for kubelet's gRPC probes, which cannot
    /// present a client certificate. It reveals only SERVING/NOT_SERVING.
    probe: Option<TcpListener>,
    /// `GET /metrics` (see [`crate::metrics`]).
    metrics: Option<crate::metrics::Listener>,
}

impl Ports {
    /// Binds the gRPC port `listen` and, when given, the probe and metrics ports (port 0
    /// picks a free port).
    pub async fn bind(
        listen: SocketAddr,
        probe: Option<SocketAddr>,
        metrics: Option<SocketAddr>,
    ) -> Result<Self, MeshError> {
        let grpc = TcpListener::bind(listen)
            .await
            .map_err(|e| MeshError::Server(format!("cannot listen on {listen}: {e}")))?;
        let probe = match probe {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|e| MeshError::Server(format!("probe_listen: cannot listen on {addr}: {e}")))?,
            ),
            None => None,
        };
        let metrics = crate::metrics::Listener::bind(metrics).await?;
        Ok(Self { grpc, probe, metrics })
    }
}

/// The bound ports plus the router with health and reflection already mounted.
pub struct GrpcServer {
    listener: TcpListener,
    local_addr: SocketAddr,
    router: Router<Stack<Guard, Identity>>,
    health: HealthReporter,
    services: Vec<&'static str>,
    limits: GrpcLimits,
    probe: Router,
    probe_listener: Option<TcpListener>,
    metrics:
        Option<(crate::metrics::Listener, Arc<crate::metrics::Metrics>, Option<crate::metrics::Refresh>)>,
}

impl std::fmt::Debug for GrpcServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcServer")
            .field("local_addr", &self.local_addr)
            .field("services", &self.services)
            .finish_non_exhaustive()
    }
}

impl GrpcServer {
    /// Mounts health and reflection for `services` on `ports` (the metrics port serves
    /// `metrics`); add the services themselves with [`GrpcServer::add_service`]. Every
    /// call passes `guard` (the authorization table, credentials, rate limits, audit)
    /// before it reaches a handler; connections, handshakes and streams are bounded by
    /// `limits`.
    pub async fn new(
        ports: Ports,
        services: &[&'static str],
        guard: Guard,
        limits: &GrpcLimits,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Result<Self, MeshError> {
        limits.validate()?;
        let Ports { grpc: listener, probe: probe_listener, metrics: metrics_listener } = ports;
        let local_addr = listener.local_addr()?;
        let (health, health_service) = tonic_health::server::health_reporter();
        health::report_starting(&health, services).await;
        let reflection = || {
            let mut b = tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(sakuga_proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                .with_service_name(HEALTH_SERVICE)
                .with_service_name("grpc.reflection.v1.ServerReflection")
                .with_service_name("grpc.reflection.v1alpha.ServerReflection");
            for name in services {
                b = b.with_service_name(*name);
            }
            b
        };
        let v1 = reflection().build_v1().map_err(|e| MeshError::Server(e.to_string()))?;
        let v1alpha = reflection().build_v1alpha().map_err(|e| MeshError::Server(e.to_string()))?;
        let probe = Server::builder().add_service(health_service.clone());
        let router = Server::builder()
            .layer(guard)
            .max_concurrent_streams(Some(limits.max_concurrent_streams))
            .http2_max_header_list_size(Some(limits.max_header_list_bytes))
            .http2_keepalive_interval(Some(limits.keepalive_interval))
            .http2_keepalive_timeout(Some(limits.keepalive_timeout))
            .add_service(health_service)
            .add_service(v1)
            .add_service(v1alpha);
        Ok(Self {
            listener,
            local_addr,
            router,
            health,
            services: services.to_vec(),
            limits: limits.clone(),
            probe,
            probe_listener,
            metrics: metrics_listener.map(|l| (l, metrics, None)),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Runs `refresh` before each scrape (gauges read from elsewhere).
    #[must_use]
    pub fn with_metrics_refresh(mut self, refresh: crate::metrics::Refresh) -> Self {
        if let Some((_, _, r)) = self.metrics.as_mut() {
            *r = Some(refresh);
        }
        self
    }

    /// The bound metrics address, if any.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(|(l, _, _)| l.local_addr())
    }

    /// The health reporter (for services that report their own state).
    pub fn health(&self) -> HealthReporter {
        self.health.clone()
    }

    /// Mounts a service.
    #[must_use]
    pub fn add_service<S>(mut self, svc: S) -> Self
    where
        S: tower::Service<
                http::Request<tonic::body::Body>,
                Response = http::Response<tonic::body::Body>,
                Error = std::convert::Infallible,
            > + tonic::server::NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.router = self.router.add_service(svc);
        self
    }

    /// Serves until `shutdown`: health reports SERVING while every check passes (checked
    /// every `interval`), NOT_SERVING otherwise and from the moment shutdown begins. After
    /// shutdown, in-flight calls get `grace` to finish.
    pub async fn serve(
        self,
        tls: Arc<MeshTls>,
        checks: Vec<NamedCheck>,
        interval: Duration,
        grace: Duration,
        shutdown: CancellationToken,
    ) -> Result<(), MeshError> {
        let monitor = health::spawn_monitor(
            self.health.clone(),
            self.services.clone(),
            checks,
            interval,
            shutdown.clone(),
        );
        let metrics = self.metrics.as_ref().map(|(_, m, _)| m.clone());
        if let Some((listener, metrics, refresh)) = self.metrics {
            listener.spawn(metrics, refresh, shutdown.clone());
        }
        if let Some(listener) = self.probe_listener {
            let (probe, stop) = (self.probe, shutdown.clone());
            info!(addr = ?listener.local_addr().ok(), "plaintext health for probes");
            tokio::spawn(async move {
                let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
                let _ = probe.serve_with_incoming_shutdown(incoming, stop.cancelled_owned()).await;
            });
        }
        let incoming =
            crate::listen::incoming(self.listener, tls.acceptor(), &self.limits, metrics, shutdown.clone());
        info!(addr = %self.local_addr, services = ?self.services, "serving");
        let serve = self.router.serve_with_incoming_shutdown(incoming, shutdown.clone().cancelled_owned());
        let deadline = async {
            shutdown.cancelled().await;
            tokio::time::sleep(grace).await;
        };
        let result = tokio::select! {
            r = serve => r.map_err(|e| MeshError::Server(e.to_string())),
            () = deadline => {
                warn!(grace_secs = grace.as_secs(), "grace period over, closing remaining calls");
                Ok(())
            }
        };
        monitor.abort();
        result
    }
}
