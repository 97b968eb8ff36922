//! The auth service: users, password logins, access tokens (Ed25519 JWTs), rotating
//! refresh tokens, API keys and the audit log. Other services verify tokens locally with
//! the keys it publishes (`GetJwks`).

pub mod config;
pub mod error;
pub mod grpc;
pub mod keys;
pub mod store;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use sakuga_mesh::{
    MeshError,
    auth::{Audit, Guard, Verifier},
    db,
    ratelimit::RateLimiter,
    redis::Redis,
    server::{GrpcServer, HealthCheck},
    service::Service,
    tls::MeshTls,
    vault::Vault,
};
use sakuga_proto::{service_names, v1::auth_service_server::AuthServiceServer};
use tokio_util::sync::CancellationToken;
use tracing::info;

pub use config::Config;

/// A built, not yet running auth service.
#[derive(Debug)]
pub struct Application {
    server: GrpcServer,
    api: grpc::Api,
    tls: Arc<MeshTls>,
    vault: Vault,
}

impl Service for Application {
    const NAME: &'static str = "auth";
    const BINARY: &'static str = "sakuga-auth";
    const ABOUT: &'static str = "Sakuga auth service";
    type Config = Config;

    /// Logs in to Vault, loads the signing keys, credentials and certificate, connects to
    /// PostgreSQL (and migrates) and Redis, creates the bootstrap admin, binds.
    async fn build(config: Config) -> Result<Self, MeshError> {
        config.validate()?;
        let (vault, tls) = MeshTls::bootstrap(Self::NAME, &config.vault, &config.tls).await?;
        let keys = keys::SigningKeys::from_secret(vault.read_kv(&config.signing_keys_path).await?)?;
        let pool = db::connect_with_vault(&vault, &config.database).await?;
        let redis = Redis::connect_with_vault(&vault, &config.redis).await?;
        let store = store::Store::new(pool.clone());
        if let Some(admin) = vault.read_kv_optional(&config.bootstrap_admin_path).await? {
            bootstrap_admin(&store, admin).await?;
        }
        let verifier =
            Arc::new(Verifier::with_keys(keys.decoding()?, Some(redis.clone()), Some(pool.clone())));
        let limiter = RateLimiter::new(redis.clone(), config.rate_limits.clone());
        let audit = Audit::new(pool);
        let metrics = sakuga_mesh::metrics::Metrics::new();
        let guard = Guard::new(Some(verifier), Some(limiter.clone()), Some(audit.clone()))
            .observed(Self::NAME, metrics.clone());
        let server = GrpcServer::bind(config.listen, &[service_names::AUTH], guard, &config.grpc)
            .await?
            .with_probe(config.probe_listen)
            .await?
            .with_metrics(config.metrics_listen, metrics)
            .await?;
        let api = grpc::Api { store, keys: Arc::new(keys), redis, limiter, audit, config: Arc::new(config) };
        Ok(Self { server, api, tls, vault })
    }

    fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    fn metrics_addr(&self) -> Option<SocketAddr> {
        self.server.metrics_addr()
    }

    async fn run_until_stopped(self, shutdown: CancellationToken) -> Result<(), MeshError> {
        let Self { server, api, tls, vault } = self;
        let renewal = tls.spawn_renewal(vault, api.config.tls.clone(), shutdown.clone());
        let checks: Vec<(&'static str, HealthCheck)> =
            vec![("postgres", db::health_check(api.store.pool())), ("redis", api.redis.health_check())];
        let grace = Duration::from_secs(api.config.shutdown_grace_secs);
        let result = server
            .add_service(AuthServiceServer::new(api))
            .serve(tls, checks, Duration::from_secs(2), grace, shutdown)
            .await;
        renewal.abort();
        result
    }

    fn database(
        config: &Config,
    ) -> Option<(&sakuga_mesh::config::VaultConfig, &sakuga_mesh::config::DatabaseConfig)> {
        Some((&config.vault, &config.database))
    }
}

/// Creates the bootstrap admin from its Vault secret, or resets its password and role:
/// the secret is the source of truth for that one account.
async fn bootstrap_admin(
    store: &store::Store,
    mut secret: std::collections::HashMap<String, String>,
) -> Result<(), MeshError> {
    let bad = |why: &str| MeshError::Config(format!("bootstrap admin secret: {why}"));
    let username = secret.remove("username").ok_or_else(|| bad("field `username` missing"))?;
    let password = secret.remove("password").ok_or_else(|| bad("field `password` missing"))?;
    if password.chars().count() < 12 {
        return Err(bad("the password must have at least 12 characters"));
    }
    let hash = grpc::hash_password(password).await.map_err(|e| bad(&e.to_string()))?;
    let user = store.upsert_admin(&username, &hash).await.map_err(|e| bad(&e.to_string()))?;
    info!(user_id = %user.id, username = %user.username, "bootstrap admin ready");
    Ok(())
}
