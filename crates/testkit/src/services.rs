//! In-process services on `127.0.0.1:0` with real mTLS, Vault, PostgreSQL and Redis.

use std::{future::Future, net::SocketAddr, path::PathBuf, time::Duration};

use sakuga_mesh::{
    MeshError,
    ratelimit::{Limit, RateLimits},
    service::Service as _,
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{TestEnv, loopback};

/// A running service.
#[derive(Debug)]
pub struct Spawned {
    /// Its gRPC (or health) address.
    pub addr: SocketAddr,
    /// Cancel to stop it gracefully.
    pub shutdown: CancellationToken,
    /// Ends when it stopped.
    pub task: JoinHandle<Result<(), MeshError>>,
    /// Its Prometheus scrape address.
    pub metrics: Option<SocketAddr>,
}

impl Spawned {
    /// `127.0.0.1:port`.
    pub fn addr_string(&self) -> String {
        self.addr.to_string()
    }

    /// A stand-in for a service that is not running (its address refuses connections),
    /// for configurations of services that must fail before they call it.
    pub fn unused() -> Self {
        let addr = std::net::TcpListener::bind(loopback())
            .and_then(|l| l.local_addr())
            .unwrap_or_else(|_| loopback());
        Self { addr, shutdown: CancellationToken::new(), task: tokio::spawn(async { Ok(()) }), metrics: None }
    }

    /// Stops it and waits.
    pub async fn stop(self) -> Result<(), MeshError> {
        self.shutdown.cancel();
        self.task.await.map_err(|e| MeshError::Server(e.to_string()))?
    }
}

fn spawn<A, F>(app: A, addr: SocketAddr, run: impl FnOnce(A, CancellationToken) -> F) -> Spawned
where
    A: sakuga_mesh::service::Service,
    F: Future<Output = Result<(), MeshError>> + Send + 'static,
{
    let shutdown = CancellationToken::new();
    let metrics = app.metrics_addr();
    let task = tokio::spawn(run(app, shutdown.clone()));
    Spawned { addr, shutdown, task, metrics }
}

/// Limits generous enough for functional tests (the rate-limit tests set their own).
pub fn test_rate_limits() -> RateLimits {
    RateLimits::uniform(Limit { per_minute: 600_000, burst: 10_000 })
}

/// Scheduler configuration for this environment.
pub fn scheduler_config(env: &TestEnv, auth: &Spawned) -> sakuga_scheduler::Config {
    sakuga_scheduler::Config {
        server: env.server_config(),
        database: env.database_config(),
        redis: env.redis_config(),
        auth_addr: auth.addr_string(),
        rate_limits: test_rate_limits(),
        lease_ttl: Duration::from_secs(3),
        heartbeat_interval: Duration::from_millis(500),
        dispatch_poll: Duration::from_millis(500),
        // Test receivers listen on loopback over plain HTTP, as in the local stack.
        webhooks: sakuga_scheduler::webhooks::WebhookConfig {
            key_vault_path: env.webhook_key_secret.clone(),
            allow_http: true,
            allow_networks: vec!["127.0.0.0/8".to_owned(), "::1/128".to_owned()],
            poll: Duration::from_millis(200),
            ..sakuga_scheduler::webhooks::WebhookConfig::default()
        },
        ..sakuga_scheduler::Config::default()
    }
}

/// Starts a scheduler.
pub async fn spawn_scheduler(config: sakuga_scheduler::Config) -> anyhow::Result<Spawned> {
    let app = sakuga_scheduler::Application::build(config).await?;
    let addr = app.local_addr();
    Ok(spawn(app, addr, sakuga_scheduler::Application::run_until_stopped))
}

/// Organizer configuration for this environment, storing under `root`.
pub fn organizer_config(env: &TestEnv, auth: &Spawned, root: PathBuf) -> sakuga_organizer::Config {
    sakuga_organizer::Config {
        server: env.server_config(),
        database: env.database_config(),
        redis: env.redis_config(),
        auth_addr: auth.addr_string(),
        rate_limits: test_rate_limits(),
        storage: sakuga_organizer::config::StorageConfig { root, ..Default::default() },
        ..sakuga_organizer::Config::default()
    }
}

/// Starts an organizer.
pub async fn spawn_organizer(config: sakuga_organizer::Config) -> anyhow::Result<Spawned> {
    spawn_organizer_with_faults(config, sakuga_organizer::Faults::default()).await
}

/// Starts an organizer whose uploads fail as `faults` say.
pub async fn spawn_organizer_with_faults(
    config: sakuga_organizer::Config,
    faults: sakuga_organizer::Faults,
) -> anyhow::Result<Spawned> {
    let app = sakuga_organizer::Application::build(config).await?.with_faults(faults);
    let addr = app.local_addr();
    Ok(spawn(app, addr, sakuga_organizer::Application::run_until_stopped))
}

/// Auth configuration for this environment.
pub fn auth_config(env: &TestEnv) -> sakuga_auth::Config {
    sakuga_auth::Config {
        server: env.server_config(),
        database: env.database_config(),
        redis: env.redis_config(),
        signing_keys_path: env.signing_secret.clone(),
        bootstrap_admin_path: env.admin_secret.clone(),
        rate_limits: test_rate_limits(),
        ..sakuga_auth::Config::default()
    }
}

/// Starts an auth service.
pub async fn spawn_auth(config: sakuga_auth::Config) -> anyhow::Result<Spawned> {
    let app = sakuga_auth::Application::build(config).await?;
    let addr = app.local_addr();
    Ok(spawn(app, addr, sakuga_auth::Application::run_until_stopped))
}

/// Generator configuration for this environment.
pub fn generator_config(
    env: &TestEnv,
    auth: &Spawned,
    scheduler: &Spawned,
    organizer: &Spawned,
) -> sakuga_generator::Config {
    sakuga_generator::Config {
        server: env.server_config(),
        scheduler_addr: scheduler.addr_string(),
        organizer_addr: organizer.addr_string(),
        auth_addr: auth.addr_string(),
        worker_id: format!("test-generator-{}", env.id),
        slots: 2,
        preview_every_steps: 2,
        reconnect_max_backoff: Duration::from_millis(500),
        ..sakuga_generator::Config::default()
    }
}

/// Starts a generator.
pub async fn spawn_generator(config: sakuga_generator::Config) -> anyhow::Result<Spawned> {
    let app = sakuga_generator::Application::build(config).await?;
    let addr = app.local_addr();
    Ok(spawn(app, addr, sakuga_generator::Application::run_until_stopped))
}
