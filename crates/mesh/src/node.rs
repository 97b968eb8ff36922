//! Start-up assembly every service shares: bind the gRPC, probe and metrics ports, log in
//! to Vault, get the service certificate, create the metrics registry, put the ports behind
//! the guard, and at the end serve with certificate renewal and health until shutdown.

use std::{sync::Arc, time::Duration};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{
    MeshError,
    auth::Guard,
    config::ServerConfig,
    health::NamedCheck,
    metrics::Metrics,
    server::{GrpcServer, Ports},
    tls::MeshTls,
    vault::Vault,
};

/// How often health re-runs the dependency checks.
const HEALTH_INTERVAL: Duration = Duration::from_secs(2);

/// A started service: its Vault session, its mTLS identity, its metrics registry and its
/// `[server]` settings.
pub struct Node {
    name: &'static str,
    config: ServerConfig,
    health_interval: Duration,
    /// Bound first, served once [`Node::bind`] mounts them.
    ports: Option<Ports>,
    /// The Vault session (secrets, certificate renewal).
    pub vault: Vault,
    /// This service's certificate and the mesh CA.
    pub tls: Arc<MeshTls>,
    /// Every metric family of the service is registered here.
    pub metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("name", &self.name).finish_non_exhaustive()
    }
}

impl Node {
    /// Checks `config`, binds its ports (before any connection of the service's own could
    /// be given one of them as its local port), logs in to Vault and issues service
    /// `name`'s certificate.
    pub async fn start(name: &'static str, config: &ServerConfig) -> Result<Self, MeshError> {
        config.validate()?;
        let ports = Ports::bind(config.listen, config.probe_listen, config.metrics_listen).await?;
        let (vault, tls) = MeshTls::bootstrap(name, &config.vault, &config.tls).await?;
        let health_interval = HEALTH_INTERVAL;
        Ok(Self {
            name,
            config: config.clone(),
            health_interval,
            ports: Some(ports),
            vault,
            tls,
            metrics: Metrics::new(),
        })
    }

    /// Re-runs the health checks every `interval` instead of every 2 s.
    #[must_use]
    pub fn with_health_interval(self, interval: Duration) -> Self {
        Self { health_interval: interval, ..self }
    }

    /// Gives calls in flight `grace` after shutdown instead of `server.shutdown_grace` (a
    /// service whose own work drains first, under that grace, before it stops serving).
    #[must_use]
    pub fn with_call_grace(mut self, grace: Duration) -> Self {
        self.config.shutdown_grace = grace;
        self
    }

    /// Mounts `services` on the gRPC port (every call passes `guard`, observed in this
    /// node's metrics), with the plaintext probe port and the metrics port as configured.
    /// Once per node: the ports go to the server it returns.
    pub async fn bind(&mut self, services: &[&'static str], guard: Guard) -> Result<GrpcServer, MeshError> {
        let ports =
            self.ports.take().ok_or_else(|| MeshError::Server("the ports are already served".into()))?;
        let guard = guard.observed(self.name, self.metrics.clone());
        GrpcServer::new(ports, services, guard, &self.config.grpc, self.metrics.clone()).await
    }

    /// Serves `server` until `shutdown`, renewing the certificate and reporting health from
    /// `checks`; in-flight calls then get the shutdown grace. `tasks` (the service's
    /// background loops) are stopped when serving ends.
    pub async fn serve(
        self,
        server: GrpcServer,
        checks: Vec<NamedCheck>,
        tasks: Vec<JoinHandle<()>>,
        shutdown: CancellationToken,
    ) -> Result<(), MeshError> {
        let Self { config, vault, tls, health_interval, .. } = self;
        let renewal = tls.spawn_renewal(vault, config.tls.clone(), shutdown.clone());
        let result = server.serve(tls, checks, health_interval, config.shutdown_grace, shutdown).await;
        for task in tasks.into_iter().chain([renewal]) {
            task.abort();
        }
        result
    }
}
