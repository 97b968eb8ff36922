//! PostgreSQL: a deadpool pool with credentials from Vault, and the schema migrations
//! (applied at start-up or by the `migrate` subcommand; versioned, idempotent, serialized
//! across replicas with an advisory lock).

use std::time::Duration;

use backon::Retryable as _;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Timeouts};
use secrecy::ExposeSecret as _;
use tokio_postgres::NoTls;
use tracing::{info, warn};

use crate::{config::DatabaseConfig, error::MeshError, retry::Backoff, vault::Credentials};

/// One migration file.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Version, strictly increasing.
    pub version: i64,
    /// Name, for the record.
    pub name: &'static str,
    /// SQL, run in one transaction.
    pub sql: &'static str,
}

/// Every migration of the schema, in order (files in `migrations/`).
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "jobs_and_files",
        sql: include_str!("../../../migrations/0001_jobs_and_files.sql"),
    },
    Migration { version: 2, name: "auth", sql: include_str!("../../../migrations/0002_auth.sql") },
    Migration {
        version: 3,
        name: "queue_wakeups_and_backoff",
        sql: include_str!("../../../migrations/0003_queue_wakeups_and_backoff.sql"),
    },
    Migration {
        version: 4,
        name: "result_reuse",
        sql: include_str!("../../../migrations/0004_result_reuse.sql"),
    },
    Migration { version: 5, name: "projects", sql: include_str!("../../../migrations/0005_projects.sql") },
    Migration {
        version: 6,
        name: "file_integrity",
        sql: include_str!("../../../migrations/0006_file_integrity.sql"),
    },
    Migration {
        version: 7,
        name: "trace_context",
        sql: include_str!("../../../migrations/0007_trace_context.sql"),
    },
    Migration {
        version: 8,
        name: "active_jobs_index",
        sql: include_str!("../../../migrations/0008_active_jobs_index.sql"),
    },
    Migration {
        version: 9,
        name: "queue_by_owner",
        sql: include_str!("../../../migrations/0009_queue_by_owner.sql"),
    },
    Migration {
        version: 10,
        name: "service_roles",
        sql: include_str!("../../../migrations/0010_service_roles.sql"),
    },
    Migration {
        version: 11,
        name: "refresh_access_tokens",
        sql: include_str!("../../../migrations/0011_refresh_access_tokens.sql"),
    },
    Migration {
        version: 12,
        name: "content_addressed_files",
        sql: include_str!("../../../migrations/0012_content_addressed_files.sql"),
    },
    Migration {
        version: 13,
        name: "queue_heads",
        sql: include_str!("../../../migrations/0013_queue_heads.sql"),
    },
    Migration { version: 14, name: "webhooks", sql: include_str!("../../../migrations/0014_webhooks.sql") },
    Migration {
        version: 15,
        name: "queue_cursor",
        sql: include_str!("../../../migrations/0015_queue_cursor.sql"),
    },
    Migration {
        version: 16,
        name: "queue_heads_by_backend",
        sql: include_str!("../../../migrations/0016_queue_heads_by_backend.sql"),
    },
];

/// Arbitrary constant identifying the migration lock.
const MIGRATION_LOCK: i64 = 0x5A4B_5547_4131;

/// The connection settings for `cfg` with `creds`.
pub fn pg_config(cfg: &DatabaseConfig, creds: &Credentials) -> tokio_postgres::Config {
    let mut pg = tokio_postgres::Config::new();
    pg.host(&cfg.host)
        .port(cfg.port)
        .dbname(&cfg.dbname)
        .application_name("sakuga")
        .connect_timeout(Duration::from_secs(5));
    if let Some(user) = &creds.username {
        pg.user(user);
    }
    if let Some(password) = &creds.password {
        pg.password(password.expose_secret());
    }
    pg
}

/// Builds a pool and checks that a connection works, retrying while PostgreSQL is not
/// reachable.
pub async fn connect(cfg: &DatabaseConfig, creds: &Credentials) -> Result<Pool, MeshError> {
    cfg.validate()?;
    let pg = pg_config(cfg, creds);
    let manager = Manager::from_config(pg, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
    let pool = Pool::builder(manager)
        .max_size(cfg.max_connections)
        .timeouts(Timeouts {
            wait: Some(cfg.acquire_timeout),
            create: Some(Duration::from_secs(5)),
            recycle: Some(Duration::from_secs(5)),
        })
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()
        .map_err(|e| MeshError::Database(e.to_string()))?;
    let mut failed = 0_u32;
    let client = (|| pool.get())
        .retry(crate::retry::start_up())
        .notify(|e, _| {
            failed += 1;
            warn!(host = %cfg.host, port = cfg.port, attempt = failed, error = %e, "database not reachable, retrying");
        })
        .await
        .map_err(|e| {
            MeshError::Database(format!("cannot connect to {}:{}/{}: {e}", cfg.host, cfg.port, cfg.dbname))
        })?;
    client.simple_query("SELECT 1").await.map_err(|e| MeshError::Database(e.to_string()))?;
    Ok(pool)
}

/// Applies the migrations not yet recorded in `schema_migrations`; returns the versions
/// applied now. When every migration is recorded it only reads: a service's own database
/// role, which may not change the schema, starts against a schema its owner migrated.
pub async fn migrate(pool: &Pool) -> Result<Vec<i64>, MeshError> {
    let db = |e: tokio_postgres::Error| MeshError::Database(format!("migration: {e}"));
    let mut client = pool.get().await.map_err(|e| MeshError::Database(e.to_string()))?;
    let recorded = client
        .query_one("SELECT to_regclass('schema_migrations') IS NOT NULL", &[])
        .await
        .map_err(db)?
        .get::<_, bool>(0);
    if recorded {
        let rows = client.query("SELECT version FROM schema_migrations", &[]).await.map_err(db)?;
        let done: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
        if MIGRATIONS.iter().all(|m| done.contains(&m.version)) {
            return Ok(Vec::new());
        }
    }
    client
        .batch_execute(
            "SET client_min_messages = warning;
             CREATE TABLE IF NOT EXISTS schema_migrations (
                version bigint PRIMARY KEY,
                name text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .await
        .map_err(db)?;
    let tx = client.transaction().await.map_err(db)?;
    // Replicas starting together apply each migration once.
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await.map_err(db)?;
    let rows = tx.query("SELECT version FROM schema_migrations", &[]).await.map_err(db)?;
    let done: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    let mut applied = Vec::new();
    for m in MIGRATIONS.iter().filter(|m| !done.contains(&m.version)) {
        tx.batch_execute(m.sql)
            .await
            .map_err(|e| MeshError::Database(format!("migration {} ({}): {e}", m.version, m.name)))?;
        tx.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", &[&m.version, &m.name])
            .await
            .map_err(db)?;
        info!(version = m.version, name = m.name, "migration applied");
        applied.push(m.version);
    }
    tx.commit().await.map_err(db)?;
    Ok(applied)
}

/// Connects with the credentials stored in Vault at `cfg.vault_path` and applies the
/// migrations: what every service that owns tables does at start-up.
pub async fn connect_with_vault(
    vault: &crate::vault::Vault,
    cfg: &DatabaseConfig,
) -> Result<Pool, MeshError> {
    let creds = vault.read_credentials(&cfg.vault_path).await?;
    let pool = connect(cfg, &creds).await?;
    migrate(&pool).await?;
    Ok(pool)
}

/// The `migrate` subcommand of every service: log in to Vault, read the database
/// credentials, connect and apply the migrations; returns the versions applied now.
pub async fn migrate_with_vault(
    vault_cfg: &crate::config::VaultConfig,
    db_cfg: &DatabaseConfig,
) -> Result<Vec<i64>, MeshError> {
    let vault = crate::vault::Vault::connect(vault_cfg).await?;
    let creds = vault.read_credentials(&db_cfg.vault_path).await?;
    let pool = connect(db_cfg, &creds).await?;
    migrate(&pool).await
}

/// A health probe that runs `SELECT 1` on a pooled connection.
pub fn health_check(pool: &Pool) -> crate::health::HealthCheck {
    use crate::health::Unhealthy;
    let pool = pool.clone();
    std::sync::Arc::new(move || {
        let pool = pool.clone();
        Box::pin(async move {
            let client = pool.get().await.map_err(Unhealthy::new)?;
            client.simple_query("SELECT 1").await.map(|_| ()).map_err(Unhealthy::new)
        })
    })
}

/// Calls `on_notify` for every NOTIFY on `channel` (a dedicated connection: pooled ones do
/// not deliver notifications), reconnecting with backoff, until `shutdown`. After each
/// (re)connect it calls `on_notify` once too, since notifications sent while it was away
/// are lost.
pub fn spawn_listener(
    config: tokio_postgres::Config,
    channel: &'static str,
    on_notify: impl Fn() + Send + Sync + 'static,
    shutdown: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<()> {
    use futures_util::StreamExt as _;
    tokio::spawn(async move {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        loop {
            let connected = tokio::select! {
                () = shutdown.cancelled() => return,
                c = config.connect(NoTls) => c,
            };
            match connected {
                Ok((client, mut connection)) => {
                    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
                    let driver = tokio::spawn(async move {
                        let mut messages =
                            futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
                        while let Some(Ok(msg)) = messages.next().await {
                            if matches!(msg, tokio_postgres::AsyncMessage::Notification(_))
                                && tx.send(()).is_err()
                            {
                                return;
                            }
                        }
                    });
                    if let Err(e) = client.batch_execute(&format!("LISTEN {channel}")).await {
                        warn!(error = %e, channel, "LISTEN failed");
                    } else {
                        backoff.reset();
                        on_notify();
                        loop {
                            tokio::select! {
                                () = shutdown.cancelled() => {
                                    driver.abort();
                                    return;
                                }
                                n = rx.recv() => match n {
                                    Some(()) => on_notify(),
                                    None => break,
                                },
                            }
                        }
                        warn!(channel, "notification connection lost, reconnecting");
                    }
                    driver.abort();
                }
                Err(e) => warn!(error = %e, channel, "cannot open the notification connection, retrying"),
            }
            if !backoff.wait(&shutdown).await {
                return;
            }
        }
    })
}
