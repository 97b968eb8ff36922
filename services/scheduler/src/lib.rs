//! The scheduler: owns jobs and the queue. Serves `JobService` to clients and the internal
//! `WorkerService` to generators; PostgreSQL is the source of truth, Redis carries progress
//! fan-out.

mod api;
pub mod config;
mod convert;
pub mod dispatch;
pub mod error;
pub mod events;
pub mod job;
pub mod metrics;
pub mod projects;
pub mod registry;
pub mod state;
pub mod store;
pub mod validate;
pub mod watchers;
pub mod webhook;
pub mod webhooks;
pub mod worker;

use std::{net::SocketAddr, sync::Arc};

use sakuga_mesh::{
    MeshError,
    auth::{Guard, Verifier},
    config::Renamed,
    db,
    health::NamedCheck,
    node::Node,
    redis::Redis,
    server::GrpcServer,
    service::Service,
};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use config::Config;
pub use state::State;

/// A built, not yet running scheduler.
#[derive(Debug)]
pub struct Application {
    node: Node,
    server: GrpcServer,
    state: Arc<State>,
    /// For the dedicated LISTEN connection.
    listen: tokio_postgres::Config,
}

impl Service for Application {
    const NAME: &'static str = "scheduler";
    const BINARY: &'static str = "sakuga-scheduler";
    const ABOUT: &'static str = "Sakuga job scheduler";
    type Config = Config;
    const RENAMED: &'static [Renamed] = config::RENAMED;

    /// Logs in to Vault, loads secrets and the certificate, connects to PostgreSQL (and
    /// migrates) and Redis, and binds the listener.
    async fn build(config: Config) -> Result<Self, MeshError> {
        config.validate()?;
        let mut node = Node::start(Self::NAME, &config.server).await?;
        let pool = db::connect_with_vault(&node.vault, &config.database).await?;
        let listen =
            db::pg_config(&config.database, &node.vault.read_credentials(&config.database.vault_path).await?);
        let redis = Redis::connect_with_vault(&node.vault, &config.redis).await?;
        let verifier = Arc::new(Verifier::remote(
            node.tls.channel_to(&config.auth_addr, "auth")?,
            Some(redis.clone()),
            Some(pool.clone()),
        ));
        let guard = Guard::for_service(&verifier, &redis, &config.rate_limits, &pool);
        let server = node.bind(&api::SERVICES, guard).await?;
        let metrics = node.metrics.clone();
        let key_path = &config.webhooks.key_vault_path;
        let key = node.vault.read_kv(key_path).await?;
        let sealer = webhooks::secret::Sealer::from_base64(key_path, key.get("key").map(String::as_str))
            .map_err(MeshError::Config)?;
        let projects = projects::Projects::new(pool.clone());
        let store = store::Store::new(pool);
        let webhooks = webhooks::Webhooks::new(
            store.clone(),
            projects.clone(),
            sealer,
            config.webhooks.clone(),
            convert::WEBHOOK_BODY,
        )?;
        let state = Arc::new(State {
            projects,
            webhooks: Arc::new(webhooks),
            submits: store::Submits::new(store.clone()),
            store,
            verifier,
            events: events::Events::new(redis.clone(), config.watch.channel_capacity, convert::EVENT_CODEC),
            watchers: watchers::Watchers::new(&config.watch),
            registry: registry::Registry::default(),
            families: metrics::Families::register(&metrics),
            metrics,
            redis,
            config,
        });
        Ok(Self { node, server, state, listen })
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
        let Self { node, server, state, listen } = self;
        let server = server.with_metrics_refresh(state::metrics_refresh(&state));
        let wake = Arc::new(Notify::new());
        let listener = state.events.spawn_listener(shutdown.clone());
        let dispatcher = dispatch::spawn_dispatcher(state.clone(), wake.clone(), shutdown.clone());
        let reaper = dispatch::spawn_reaper(state.clone(), wake.clone(), shutdown.clone());
        let retention = dispatch::spawn_retention(state.clone(), shutdown.clone());
        let keys = state.verifier.spawn_refresh(shutdown.clone());
        // Every replica hears of new work through NOTIFY (see migration 3), so a job
        // submitted to one replica is dispatched at once by another that holds the worker.
        let notified = {
            let wake = wake.clone();
            db::spawn_listener(
                listen.clone(),
                "sakuga_jobs_queued",
                move || wake.notify_one(),
                shutdown.clone(),
            )
        };
        // Deliveries are written by a trigger in the job's transaction (migration 14); the
        // NOTIFY it sends wakes the senders of every replica.
        let outbox = Arc::new(Notify::new());
        let outbox_notified = {
            let outbox = outbox.clone();
            db::spawn_listener(listen, "sakuga_webhooks", move || outbox.notify_one(), shutdown.clone())
        };
        let senders = tokio::spawn(webhooks::deliver::run(
            state.webhooks.clone(),
            state.families.clone(),
            outbox,
            shutdown.clone(),
        ));
        let checks = health_checks(&state);
        let server = api::add_services(server, &state, wake, shutdown.clone());
        let tasks = vec![listener, dispatcher, reaper, keys, notified, retention, outbox_notified];
        let result = node.serve(server, checks, tasks, shutdown).await;
        // Not aborted with the rest: on shutdown the senders hand their attempts in flight
        // back, so another replica sends them at once instead of after their leases.
        if tokio::time::timeout(std::time::Duration::from_secs(5), senders).await.is_err() {
            tracing::warn!("webhook senders did not stop in 5s; their leases will run out");
        }
        result
    }

    fn database(
        config: &Config,
    ) -> Option<(&sakuga_mesh::config::VaultConfig, &sakuga_mesh::config::DatabaseConfig)> {
        Some((&config.server.vault, &config.database))
    }
}

fn health_checks(state: &Arc<State>) -> Vec<NamedCheck> {
    vec![("postgres", db::health_check(state.store.pool())), ("redis", state.redis.health_check())]
}
