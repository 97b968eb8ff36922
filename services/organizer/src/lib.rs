//! The file organizer: checks, stores and serves the artifacts generators produce.
//! Clients get ids and metadata and read bytes through streams; no RPC returns a path.

pub mod api;
pub mod checks;
pub mod config;
pub mod convert;
pub mod error;
pub mod ingest;
pub mod layout;
pub mod limits;
pub mod metrics;
pub mod reconcile;
pub mod storage;
pub mod store;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use sakuga_mesh::{
    MeshError,
    auth::{Guard, Verifier},
    db,
    redis::Redis,
    server::GrpcServer,
    service::Service,
    tls::MeshTls,
    vault::Vault,
};
use tokio_util::sync::CancellationToken;

pub use config::Config;
pub use ingest::Faults;

/// A built, not yet running organizer.
#[derive(Debug)]
pub struct Application {
    server: GrpcServer,
    api: api::Api,
    tls: Arc<MeshTls>,
    vault: Vault,
    verifier: Arc<Verifier>,
    redis: Redis,
}

impl Application {
    /// The same organizer, its uploads failing as `faults` say: a test's way to see what a
    /// crash at a given moment leaves behind. Never set in production.
    #[must_use]
    pub fn with_faults(self, faults: Faults) -> Self {
        Self { api: self.api.with_faults(faults), ..self }
    }
}

impl Service for Application {
    const NAME: &'static str = "organizer";
    const BINARY: &'static str = "sakuga-organizer";
    const ABOUT: &'static str = "Sakuga file organizer";
    type Config = Config;

    /// Logs in to Vault, loads secrets and the certificate, connects to PostgreSQL (and
    /// migrates), prepares the storage root and binds the listener.
    async fn build(config: Config) -> Result<Self, MeshError> {
        config.validate()?;
        let storage: Arc<dyn storage::Storage> =
            Arc::new(storage::LocalDisk::new(config.storage_root.clone()).map_err(|e| {
                MeshError::Config(format!(
                    "storage_root: cannot create {}: {e}",
                    config.storage_root.display()
                ))
            })?);
        let (vault, tls) = MeshTls::bootstrap(Self::NAME, &config.vault, &config.tls).await?;
        let pool = db::connect_with_vault(&vault, &config.database).await?;
        let redis = Redis::connect_with_vault(&vault, &config.redis).await?;
        let verifier = Arc::new(Verifier::remote(
            tls.channel_to(&config.auth_addr, "auth")?,
            Some(redis.clone()),
            Some(pool.clone()),
        ));
        let metrics = sakuga_mesh::metrics::Metrics::new();
        let guard = Guard::for_service(&verifier, &redis, &config.rate_limits, &pool)
            .observed(Self::NAME, metrics.clone());
        let server = GrpcServer::bind(config.listen, api::SERVICES, guard, &config.grpc)
            .await?
            .with_probe(config.probe_listen)
            .await?
            .with_metrics(config.metrics_listen, metrics.clone())
            .await?;
        let api = api::Api::new(store::Store::new(pool), storage, metrics, Arc::new(config));
        Ok(Self { server, api, tls, vault, verifier, redis })
    }

    /// The bound address.
    fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    fn metrics_addr(&self) -> Option<SocketAddr> {
        self.server.metrics_addr()
    }

    /// Serves until `shutdown`, then drains.
    async fn run_until_stopped(self, shutdown: CancellationToken) -> Result<(), MeshError> {
        let Self { server, api, tls, vault, verifier, redis } = self;
        let renewal = tls.spawn_renewal(vault, api.config.tls.clone(), shutdown.clone());
        let keys = verifier.spawn_refresh(shutdown.clone());
        let pool = api.store.pool().clone();
        let root = api.config.storage_root.clone();
        // Bytes and records in step before the first upload, then periodically.
        let reconciler = reconcile::Reconciler {
            store: api.store.clone(),
            storage: api.storage.clone(),
            audit: sakuga_mesh::auth::Audit::new(pool.clone()),
            grace: Duration::from_secs(api.config.orphan_grace_secs),
        };
        match reconciler.run_once().await {
            Ok(report) => tracing::info!(?report, "storage reconciled at start-up"),
            Err(e) => tracing::warn!(error = %e, "start-up reconcile failed; the periodic pass retries"),
        }
        let reconciling =
            reconciler.spawn(Duration::from_secs(api.config.reconcile_interval_secs), shutdown.clone());
        let checks: Vec<(&'static str, sakuga_mesh::server::HealthCheck)> = vec![
            ("postgres", db::health_check(&pool)),
            ("redis", redis.health_check()),
            (
                "storage",
                Arc::new(move || {
                    let root = root.clone();
                    Box::pin(async move {
                        let meta = tokio::fs::metadata(&root).await.map_err(|e| e.kind().to_string())?;
                        if meta.is_dir() { Ok(()) } else { Err("storage root is not a folder".to_owned()) }
                    })
                }),
            ),
        ];
        let grace = Duration::from_secs(api.config.shutdown_grace_secs);
        let result = server
            .add_service(api::server(api))
            .serve(tls, checks, Duration::from_secs(2), grace, shutdown)
            .await;
        renewal.abort();
        keys.abort();
        reconciling.abort();
        result
    }

    fn database(
        config: &Config,
    ) -> Option<(&sakuga_mesh::config::VaultConfig, &sakuga_mesh::config::DatabaseConfig)> {
        Some((&config.vault, &config.database))
    }
}
