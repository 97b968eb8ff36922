//! The file organizer: checks, stores and serves the artifacts generators produce.
//! Clients get ids and metadata and read bytes through streams; no RPC returns a path.

pub mod api;
pub mod checks;
pub mod config;
pub mod convert;
pub mod download;
pub mod error;
pub mod export;
pub mod ingest;
pub mod layout;
pub mod limits;
pub mod metrics;
pub mod reconcile;
pub mod storage;
pub mod store;

use std::{net::SocketAddr, sync::Arc};

use sakuga_mesh::{
    MeshError,
    auth::{Guard, Verifier},
    config::Renamed,
    db,
    health::{NamedCheck, Unhealthy},
    node::Node,
    redis::Redis,
    server::GrpcServer,
    service::Service,
};
use tokio_util::sync::CancellationToken;

pub use config::Config;
pub use ingest::Faults;

/// A built, not yet running organizer.
#[derive(Debug)]
pub struct Application {
    node: Node,
    server: GrpcServer,
    api: api::Api,
    verifier: Arc<Verifier>,
    redis: Redis,
    faults: Faults,
}

impl Application {
    /// The same organizer, its uploads failing as `faults` say: a test's way to see what a
    /// crash at a given moment leaves behind. Never set in production.
    #[must_use]
    pub fn with_faults(self, faults: Faults) -> Self {
        Self { api: self.api.with_faults(faults.clone()), faults, ..self }
    }
}

impl Service for Application {
    const NAME: &'static str = "organizer";
    const BINARY: &'static str = "sakuga-organizer";
    const ABOUT: &'static str = "Sakuga file organizer";
    type Config = Config;
    const RENAMED: &'static [Renamed] = config::RENAMED;

    /// Logs in to Vault, loads secrets and the certificate, opens the storage (the S3 access
    /// key from Vault), connects to PostgreSQL (and migrates) and binds the listener.
    async fn build(config: Config) -> Result<Self, MeshError> {
        config.validate()?;
        let mut node = Node::start(Self::NAME, &config.server).await?;
        let storage = storage::open(&config.storage, &node.vault).await?;
        let pool = db::connect_with_vault(&node.vault, &config.database).await?;
        let redis = Redis::connect_with_vault(&node.vault, &config.redis).await?;
        let verifier = Arc::new(Verifier::remote(
            node.tls.channel_to(&config.auth_addr, "auth")?,
            Some(redis.clone()),
            Some(pool.clone()),
        ));
        let guard = Guard::for_service(&verifier, &redis, &config.rate_limits, &pool);
        let server = node.bind(api::SERVICES, guard).await?;
        let api = api::Api::new(store::Store::new(pool), storage, node.metrics.clone(), Arc::new(config));
        Ok(Self { node, server, api, verifier, redis, faults: Faults::default() })
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
        let Self { node, server, api, verifier, redis, faults } = self;
        let keys = verifier.spawn_refresh(shutdown.clone());
        let pool = api.store.pool().clone();
        let storage = api.storage.clone();
        // Bytes and records in step before the first upload, then periodically.
        let reconciler = reconcile::Reconciler {
            store: api.store.clone(),
            storage: api.storage.clone(),
            audit: sakuga_mesh::auth::Audit::new(pool.clone()),
            grace: api.config.orphan_grace,
            export: api.config.storage.export,
        };
        match reconciler.run_once().await {
            Ok(report) => tracing::info!(?report, "storage reconciled at start-up"),
            Err(e) => tracing::warn!(error = %e, "start-up reconcile failed; the periodic pass retries"),
        }
        let reconciling = reconciler.spawn(api.config.reconcile_interval, shutdown.clone());
        let checks: Vec<NamedCheck> = vec![
            ("postgres", db::health_check(&pool)),
            ("redis", redis.health_check()),
            (
                "storage",
                // A real write (a page, removed at once): a full or read-only store is
                // NOT_SERVING, not only a missing root.
                Arc::new(move || {
                    let (storage, full) = (storage.clone(), faults.full());
                    Box::pin(async move {
                        let probed = if full { Err(ingest::no_space()) } else { storage.health().await };
                        probed.map_err(|e| {
                            if error::is_full(&e) {
                                Unhealthy::new("storage full")
                            } else {
                                Unhealthy::new(e.kind())
                            }
                        })
                    })
                }),
            ),
        ];
        node.serve(server.add_service(api::server(api)), checks, vec![keys, reconciling], shutdown).await
    }

    fn database(
        config: &Config,
    ) -> Option<(&sakuga_mesh::config::VaultConfig, &sakuga_mesh::config::DatabaseConfig)> {
        Some((&config.server.vault, &config.database))
    }
}
