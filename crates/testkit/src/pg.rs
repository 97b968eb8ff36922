//! PostgreSQL and Redis fixtures: a migrated template database (built once per migration
//! set), a clone of it per test, and a Redis ACL user per test.

use std::{
    collections::HashMap,
    time::{SystemTime, UNIX_EPOCH},
};

use sha2::{Digest as _, Sha256};
use tokio_postgres::{Config, NoTls};

/// Connection to the server with a role that may create databases.
#[derive(Debug, Clone)]
pub(crate) struct Admin {
    config: Config,
    pub(crate) host: String,
    pub(crate) port: u16,
    user: String,
    password: Option<String>,
}

fn template_name(user: &str) -> String {
    let mut h = Sha256::new();
    for m in sakuga_mesh::db::MIGRATIONS {
        h.update(m.version.to_le_bytes());
        h.update(m.sql.as_bytes());
    }
    // Per role: a template another role created may not be cloneable by this one.
    h.update(user.as_bytes());
    format!("sakuga_tmpl_{}", &hex::encode(h.finalize())[..16])
}

/// The server's message, which `Display` of tokio-postgres errors leaves out.
fn describe(e: &tokio_postgres::Error) -> String {
    e.as_db_error().map_or_else(|| e.to_string(), |d| format!("{}: {}", d.code().code(), d.message()))
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Admin {
    pub(crate) fn from_env() -> anyhow::Result<Self> {
        let url = std::env::var("SAKUGA_TEST_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
        let config: Config = url.parse()?;
        let host = match config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            _ => "127.0.0.1".to_owned(),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let user = config.get_user().unwrap_or("postgres").to_owned();
        let password = config.get_password().map(|p| String::from_utf8_lossy(p).into_owned());
        Ok(Self { config, host, port, user, password })
    }

    /// `{username, password}` for the Vault KV secret.
    pub(crate) fn credentials(&self) -> HashMap<&'static str, String> {
        let mut m = HashMap::new();
        m.insert("username", self.user.clone());
        if let Some(p) = &self.password {
            m.insert("password", p.clone());
        }
        m
    }

    pub(crate) async fn connect(&self, dbname: &str) -> anyhow::Result<tokio_postgres::Client> {
        let mut cfg = self.config.clone();
        cfg.dbname(dbname);
        let (client, conn) = cfg.connect(NoTls).await?;
        tokio::spawn(conn);
        Ok(client)
    }

    /// Builds the template once (serialized across test processes by an advisory lock),
    /// sweeps databases left by tests that died over an hour ago, then clones the template.
    pub(crate) async fn create_test_database(&self, id: &str) -> anyhow::Result<String> {
        let admin = self.connect("postgres").await?;
        let template = template_name(&self.user);
        admin.execute("SELECT pg_advisory_lock(7261)", &[]).await?;
        let result = async {
            let exists =
                admin.query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&template]).await?;
            if exists.is_none() {
                // Names are generated here from hex digits: safe to splice.
                admin.batch_execute(&format!("CREATE DATABASE {template}")).await?;
                let mut pg = deadpool_postgres::Config::new();
                pg.host = Some(self.host.clone());
                pg.port = Some(self.port);
                pg.user = Some(self.user.clone());
                pg.password.clone_from(&self.password);
                pg.dbname = Some(template.clone());
                let pool = pg.create_pool(Some(deadpool_postgres::Runtime::Tokio1), NoTls)?;
                sakuga_mesh::db::migrate(&pool).await?;
                pool.close();
                admin.batch_execute(&format!("ALTER DATABASE {template} IS_TEMPLATE true")).await?;
            }
            let cutoff = now_secs().saturating_sub(3600);
            let stale =
                admin.query("SELECT datname FROM pg_database WHERE datname LIKE 'sakuga_t\\_%'", &[]).await?;
            for row in stale {
                let name: String = row.get(0);
                let born = name.split('_').nth(2).and_then(|s| s.parse::<u64>().ok()).unwrap_or(u64::MAX);
                if born < cutoff && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    let _ =
                        admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
                }
            }
            anyhow::Ok(())
        }
        .await;
        admin.execute("SELECT pg_advisory_unlock(7261)", &[]).await?;
        result.map_err(|e| match e.downcast_ref::<tokio_postgres::Error>() {
            Some(pg) => anyhow::anyhow!("preparing the template database {template}: {}", describe(pg)),
            None => e,
        })?;
        anyhow::ensure!(id.chars().all(|c| c.is_ascii_alphanumeric()), "test id must be alphanumeric");
        let name = format!("sakuga_t_{}_{id}", now_secs());
        admin.batch_execute(&format!("CREATE DATABASE {name} TEMPLATE {template}")).await.map_err(|e| {
            anyhow::anyhow!("creating test database {name} from {template}: {}", describe(&e))
        })?;
        Ok(name)
    }

    pub(crate) async fn drop_database(&self, name: &str) -> anyhow::Result<()> {
        anyhow::ensure!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "bad database name");
        let admin = self.connect("postgres").await?;
        admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await?;
        Ok(())
    }
}

fn redis_url() -> String {
    std::env::var("SAKUGA_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

pub(crate) fn redis_host_port() -> (String, u16) {
    let url = redis_url();
    let rest = url.trim_start_matches("redis://");
    let hostport = rest.rsplit('@').next().unwrap_or(rest).trim_end_matches('/');
    match hostport.rsplit_once(':') {
        Some((h, p)) => (h.to_owned(), p.parse().unwrap_or(6379)),
        None => (hostport.to_owned(), 6379),
    }
}

/// Creates an ACL user limited to the test's key prefix; returns (user, password, prefix).
pub(crate) async fn create_redis_user(id: &str) -> anyhow::Result<(String, String, String)> {
    let client = redis::Client::open(redis_url())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    sweep_redis_users(&mut conn).await?;
    let user = format!("sakuga-test-{}-{id}", now_secs());
    let password = uuid::Uuid::new_v4().simple().to_string();
    let prefix = format!("sakuga-test:{id}:");
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg(&user)
        .arg("reset")
        .arg("on")
        .arg(format!(">{password}"))
        .arg(format!("~{prefix}*"))
        .arg(format!("&{prefix}*"))
        // PSUBSCRIBE patterns are matched literally against the ACL's channel patterns.
        .arg(format!("&{prefix}job:*"))
        .arg("+@all")
        .arg("-@admin")
        .arg("-@dangerous")
        .query_async(&mut conn)
        .await?;
    Ok((user, password, prefix))
}

/// The rules of `service`'s own Redis user (deploy/redis/acl.conf) for key prefix `prefix`.
pub(crate) fn service_acl_rules(service: &str, prefix: &str) -> anyhow::Result<Vec<String>> {
    const ACL: &str = include_str!("../../../deploy/redis/acl.conf");
    let line = ACL
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .find(|l| l.split_whitespace().next() == Some(service))
        .ok_or_else(|| anyhow::anyhow!("deploy/redis/acl.conf has no user for {service}"))?;
    Ok(line.split_whitespace().skip(1).map(|r| r.replace("{prefix}", prefix)).collect())
}

/// Creates an ACL user for `service` with its deployed rules on the test's prefix;
/// returns (user, password).
pub(crate) async fn create_service_redis_user(
    id: &str,
    service: &str,
    prefix: &str,
) -> anyhow::Result<(String, String)> {
    let rules = service_acl_rules(service, prefix)?;
    let client = redis::Client::open(redis_url())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let user = format!("sakuga-test-{}-{id}-{service}", now_secs());
    let password = uuid::Uuid::new_v4().simple().to_string();
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg(&user)
        .arg("reset")
        .arg("on")
        .arg(format!(">{password}"))
        .arg(&rules)
        .query_async(&mut conn)
        .await?;
    Ok((user, password))
}

/// Removes users of tests that died over an hour ago without cleaning up.
async fn sweep_redis_users(conn: &mut redis::aio::MultiplexedConnection) -> anyhow::Result<()> {
    let users: Vec<String> = redis::cmd("ACL").arg("USERS").query_async(conn).await?;
    let cutoff = now_secs().saturating_sub(3600);
    for user in users {
        let born =
            user.strip_prefix("sakuga-test-").and_then(|rest| rest.split('-').next()?.parse::<u64>().ok());
        if born.is_some_and(|b| b < cutoff) {
            let _: i64 = redis::cmd("ACL").arg("DELUSER").arg(&user).query_async(conn).await?;
        }
    }
    Ok(())
}

pub(crate) async fn delete_redis_user(user: &str) -> anyhow::Result<()> {
    let client = redis::Client::open(redis_url())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let _: i64 = redis::cmd("ACL").arg("DELUSER").arg(user).query_async(&mut conn).await?;
    Ok(())
}
