//! The auth service: users, password logins, access tokens (Ed25519 JWTs), rotating
//! refresh tokens, API keys and the audit log. Other services verify tokens locally with
//! the keys it publishes (`GetJwks`).

pub mod api;
pub mod api_keys;
pub mod config;
pub mod convert;
pub mod error;
pub mod keys;
pub mod login;
pub mod password;
pub mod service;
pub mod store;
pub mod tokens;
pub mod users;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use sakuga_mesh::{
    MeshError,
    auth::{Audit, Guard, Verifier},
    config::Renamed,
    db,
    health::NamedCheck,
    node::Node,
    ratelimit::RateLimiter,
    redis::Redis,
    server::GrpcServer,
    service::Service,
};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

pub use config::Config;

/// A built, not yet running auth service.
#[derive(Debug)]
pub struct Application {
    node: Node,
    server: GrpcServer,
    api: api::Api,
}

impl Service for Application {
    const NAME: &'static str = "auth";
    const BINARY: &'static str = "sakuga-auth";
    const ABOUT: &'static str = "Sakuga auth service";
    type Config = Config;
    const RENAMED: &'static [Renamed] = config::RENAMED;

    /// Logs in to Vault, loads the signing keys, credentials and certificate, connects to
    /// PostgreSQL (and migrates) and Redis, creates the bootstrap admin, binds.
    async fn build(config: Config) -> Result<Self, MeshError> {
        config.validate()?;
        let mut node = Node::start(Self::NAME, &config.server).await?;
        let vault = &node.vault;
        let keys = keys::SigningKeys::from_secret(vault.read_kv(&config.signing_keys_path).await?)?;
        let pool = db::connect_with_vault(vault, &config.database).await?;
        let redis = Redis::connect_with_vault(vault, &config.redis).await?;
        let store = store::Store::new(pool.clone());
        let metrics = node.metrics.clone();
        let passwords =
            password::Passwords::new(config.argon2_permits, config.argon2_wait, Some(metrics.clone()));
        if let Some(admin) = vault.read_kv_optional(&config.bootstrap_admin_path).await? {
            bootstrap_admin(&store, &passwords, admin).await?;
        }
        let verifier =
            Arc::new(Verifier::with_keys(keys.decoding()?, Some(redis.clone()), Some(pool.clone())));
        let limiter = RateLimiter::new(redis.clone(), config.rate_limits.clone());
        let audit = Audit::new(pool);
        let guard = Guard::new(Some(verifier), Some(limiter.clone()), Some(audit.clone()));
        let server = node.bind(api::SERVICES, guard).await?;
        let auth = service::Auth {
            store,
            keys: Arc::new(keys),
            redis,
            limiter,
            audit,
            config: Arc::new(config),
            passwords,
            metrics,
        };
        Ok(Self { node, server, api: api::Api { auth } })
    }

    fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    fn metrics_addr(&self) -> Option<SocketAddr> {
        self.server.metrics_addr()
    }

    async fn run_until_stopped(self, shutdown: CancellationToken) -> Result<(), MeshError> {
        let Self { node, server, api } = self;
        let auth = &api.auth;
        let retention = spawn_audit_retention(
            auth.store.clone(),
            auth.config.audit_retention_days,
            auth.config.audit_sweep,
            shutdown.clone(),
        );
        let checks: Vec<NamedCheck> =
            vec![("postgres", db::health_check(auth.store.pool())), ("redis", auth.redis.health_check())];
        node.serve(server.add_service(api::server(api)), checks, vec![retention], shutdown).await
    }

    fn database(
        config: &Config,
    ) -> Option<(&sakuga_mesh::config::VaultConfig, &sakuga_mesh::config::DatabaseConfig)> {
        Some((&config.server.vault, &config.database))
    }
}

/// Creates the bootstrap admin from its Vault secret if no user of that name exists. An
/// existing account keeps its role and its disabled flag: an operator who disabled or
/// demoted it keeps that across restarts. Its password follows the secret (there is no
/// password RPC; rotating the secret and restarting is how the bootstrap password changes),
/// and is rewritten only when the stored hash does not already verify it.
async fn bootstrap_admin(
    store: &store::Store,
    passwords: &password::Passwords,
    mut secret: std::collections::HashMap<String, String>,
) -> Result<(), MeshError> {
    let bad = |why: &str| MeshError::Config(format!("bootstrap admin secret: {why}"));
    let username = secret.remove("username").ok_or_else(|| bad("field `username` missing"))?;
    let password = secret.remove("password").ok_or_else(|| bad("field `password` missing"))?;
    users::check_username(&username).map_err(|e| bad(&e.to_string()))?;
    if password.chars().count() < 12 {
        return Err(bad("the password must have at least 12 characters"));
    }
    if let Some(existing) = store.user_by_name(&username).await.map_err(|e| bad(&e.to_string()))? {
        // A stored value that is no Argon2 hash at all simply does not verify.
        let current =
            passwords.verify(password.clone(), existing.password_hash.clone()).await.unwrap_or(false);
        if current {
            info!(user_id = %existing.id, username = %existing.username, "bootstrap admin exists; left as it is");
        } else {
            let hash = passwords.hash(password).await.map_err(|e| bad(&e.to_string()))?;
            store.set_password_hash(existing.id, &hash).await.map_err(|e| bad(&e.to_string()))?;
            info!(
                user_id = %existing.id,
                username = %existing.username,
                disabled = existing.disabled,
                role = existing.role.as_str(),
                "bootstrap admin password set from its secret; role and disabled flag left as they are"
            );
        }
        return Ok(());
    }
    let hash = passwords.hash(password).await.map_err(|e| bad(&e.to_string()))?;
    let created = store.create_admin_once(&username, &hash).await.map_err(|e| bad(&e.to_string()))?;
    if let Some(user) = created {
        info!(user_id = %user.id, username = %user.username, "bootstrap admin created");
    } else {
        // Another replica created it in between.
        info!(username = %username, "bootstrap admin exists; left as it is");
    }
    Ok(())
}

/// Deletes audit events older than `days` (0: never) in batches of 1,000, now and then
/// every `period`, until `shutdown`.
fn spawn_audit_retention(
    store: store::Store,
    days: u32,
    period: Duration,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if days == 0 {
            return;
        }
        loop {
            let mut total = 0;
            loop {
                match store.prune_audit(days, 1_000).await {
                    Ok(0) => break,
                    Ok(n) => total += n,
                    Err(e) => {
                        error!(error = %e, "audit retention sweep failed");
                        break;
                    }
                }
            }
            if total > 0 {
                info!(deleted = total, days, "audit events past retention deleted");
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(period) => {}
            }
        }
    })
}
