//! Redis: a reconnecting connection manager with credentials from Vault. Redis carries
//! rate limits, the revocation list and progress fan-out; losing it loses no job.

use std::{
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use backon::Retryable as _;
use futures_util::FutureExt as _;
use redis::{
    Client, Cmd, IntoConnectionInfo as _, Pipeline, RedisConnectionInfo, RedisFuture, Value,
    aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig},
};
use secrecy::ExposeSecret as _;
use tracing::warn;

use crate::{config::RedisConfig, error::MeshError, vault::Credentials};

/// A Redis client (for pub/sub connections) and a shared multiplexed connection.
#[derive(Clone)]
pub struct Redis {
    /// For dedicated connections (pub/sub).
    pub client: Client,
    /// Shared, reconnecting connection for commands.
    shared: Arc<Shared>,
    /// Prefix of every key and channel.
    pub prefix: String,
    /// Until when Redis counts as down after a failure (a breaker: while it is open,
    /// callers skip Redis at once instead of each waiting for a timeout).
    down_until: Arc<Mutex<Option<std::time::Instant>>>,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

impl Redis {
    /// Connects (retrying while Redis is unreachable) and authenticates.
    pub async fn connect(cfg: &RedisConfig, creds: &Credentials) -> Result<Self, MeshError> {
        let mut settings = RedisConnectionInfo::default();
        if let Some(user) = &creds.username {
            settings = settings.set_username(user);
        }
        if let Some(password) = &creds.password {
            settings = settings.set_password(password.expose_secret());
        }
        let info = redis::ConnectionAddr::Tcp(cfg.host.clone(), cfg.port)
            .into_connection_info()
            .map_err(|e| MeshError::Redis(e.to_string()))?
            .set_redis_settings(settings);
        let client = Client::open(info).map_err(|e| MeshError::Redis(e.to_string()))?;
        let manager_cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(3)))
            .set_response_timeout(Some(Duration::from_secs(3)))
            .set_number_of_retries(2);
        let mut failed = 0_u32;
        // A refused login is retried too: a Redis that just restarted without its ACL file
        // knows no users until they are provisioned again, which is seconds, not a minute.
        let connected = (|| ConnectionManager::new_with_config(client.clone(), manager_cfg.clone()))
            .retry(crate::retry::start_up())
            .notify(|e, _| {
                failed += 1;
                if e.kind() == redis::ErrorKind::AuthenticationFailed {
                    warn!(host = %cfg.host, port = cfg.port, attempt = failed, error = %e, "redis refused the login, retrying");
                } else {
                    warn!(host = %cfg.host, port = cfg.port, attempt = failed, error = %e, "redis not reachable, retrying");
                }
            })
            .await;
        match connected {
            Ok(manager) => {
                let shared = Arc::new(Shared {
                    client: client.clone(),
                    config: manager_cfg,
                    current: Mutex::new((0, manager)),
                });
                Ok(Self { client, shared, prefix: cfg.key_prefix.clone(), down_until: Arc::default() })
            }
            Err(e) if e.kind() == redis::ErrorKind::AuthenticationFailed => {
                Err(MeshError::Redis(format!("authentication to {}:{} refused: {e}", cfg.host, cfg.port)))
            }
            Err(e) => Err(MeshError::Redis(format!("cannot connect to {}:{}: {e}", cfg.host, cfg.port))),
        }
    }

    /// Connects with the credentials stored in Vault at `cfg.vault_path`.
    pub async fn connect_with_vault(
        vault: &crate::vault::Vault,
        cfg: &RedisConfig,
    ) -> Result<Self, MeshError> {
        let creds = vault.read_credentials(&cfg.vault_path).await?;
        Self::connect(cfg, &creds).await
    }

    /// How long the breaker stays open after a failure.
    pub const BREAKER: Duration = Duration::from_secs(1);

    /// The shared connection, for commands.
    pub fn conn(&self) -> Conn {
        let (generation, manager) = self.shared.current();
        Conn { shared: Arc::clone(&self.shared), generation, manager }
    }

    /// True while a recent failure says Redis is down.
    pub fn is_down(&self) -> bool {
        let guard = self.down_until.lock().unwrap_or_else(PoisonError::into_inner);
        guard.is_some_and(|until| std::time::Instant::now() < until)
    }

    /// Records the outcome of a Redis call for the breaker.
    pub fn note<T, E>(&self, result: &Result<T, E>) {
        let mut guard = self.down_until.lock().unwrap_or_else(PoisonError::into_inner);
        *guard = result.is_err().then(|| std::time::Instant::now() + Self::BREAKER);
    }

    /// `prefix` + `suffix`.
    pub fn key(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.prefix)
    }

    /// PING, for health.
    pub async fn ping(&self) -> Result<(), MeshError> {
        let mut conn = self.conn();
        let result = redis::cmd("PING").query_async::<String>(&mut conn).await;
        result.map(|_| ()).map_err(|e| MeshError::Redis(e.to_string()))
    }

    /// A health probe that PINGs.
    pub fn health_check(&self) -> crate::health::HealthCheck {
        let redis = self.clone();
        std::sync::Arc::new(move || {
            let redis = redis.clone();
            Box::pin(async move { redis.ping().await.map_err(crate::health::Unhealthy::new) })
        })
    }
}

/// The manager every command goes through, and what it takes to make a new one.
struct Shared {
    client: Client,
    config: ConnectionManagerConfig,
    /// The manager in use and how many times it was replaced.
    current: Mutex<(u64, ConnectionManager)>,
}

impl Shared {
    fn current(&self) -> (u64, ConnectionManager) {
        let guard = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        (guard.0, guard.1.clone())
    }

    /// Replaces the manager of `generation` (if no other caller did already) with one that
    /// connects afresh on its next command.
    ///
    /// `ConnectionManager` reconnects only after I/O errors. A reconnection Redis refuses
    /// (a restarted Redis whose ACL users are not provisioned yet) is remembered as the
    /// connection, and every later command gets the same refusal, long after the user is
    /// back. So a refused login throws the manager away.
    fn renew(&self, generation: u64) -> (u64, ConnectionManager) {
        let mut guard = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        if guard.0 == generation {
            match ConnectionManager::new_lazy_with_config(self.client.clone(), self.config.clone()) {
                Ok(manager) => {
                    warn!("redis refused the login; the next command logs in again");
                    *guard = (generation + 1, manager);
                }
                Err(e) => warn!(error = %e, "cannot make a new redis connection manager"),
            }
        }
        (guard.0, guard.1.clone())
    }
}

/// A handle on the shared connection (cheap to clone): a `ConnectionManager` that is replaced
/// when Redis refuses its login (see [`Shared::renew`]).
#[derive(Clone)]
pub struct Conn {
    shared: Arc<Shared>,
    generation: u64,
    manager: ConnectionManager,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn").field("generation", &self.generation).finish_non_exhaustive()
    }
}

impl Conn {
    fn after<T>(&mut self, result: &redis::RedisResult<T>) {
        if result.as_ref().is_err_and(|e| e.kind() == redis::ErrorKind::AuthenticationFailed) {
            (self.generation, self.manager) = self.shared.renew(self.generation);
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        async move {
            let result = self.manager.send_packed_command(cmd).await;
            self.after(&result);
            result
        }
        .boxed()
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        async move {
            let result = self.manager.send_packed_commands(pipeline, offset, count).await;
            self.after(&result);
            result
        }
        .boxed()
    }

    fn get_db(&self) -> i64 {
        self.manager.get_db()
    }
}
