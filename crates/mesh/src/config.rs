//! Layered configuration: defaults -> optional TOML file -> `SAKUGA_<SERVICE>__KEY`
//! environment variables, then `validate()`. Unknown keys are errors, so a typo in a file
//! or a variable name fails at start-up instead of being ignored.
//!
//! Secrets never live here: the structs below say where in Vault to find them.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use figment::{
    Figment,
    providers::{Env, Format, Serialized, Toml},
};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::error::MeshError;

mod renamed;
mod server;

pub use renamed::Renamed;
pub use server::{RENAMED as SERVER_RENAMED, ServerConfig};

/// Loads a service's configuration. `service` is the lowercase service name
/// (`scheduler`), which selects the `SAKUGA_SCHEDULER__` environment prefix. Old names of
/// keys keep working: `renamed` (after those of `[server]`, [`SERVER_RENAMED`]) says where
/// each now lives, and each old key found is logged with its new name.
pub fn load<T>(service: &str, file: Option<&Path>, renamed: &[Renamed]) -> Result<T, MeshError>
where
    T: DeserializeOwned + Serialize + Default,
{
    let mut given = Figment::new();
    if let Some(path) = file {
        if !path.exists() {
            return Err(MeshError::Config(format!("config file {} does not exist", path.display())));
        }
        given = given.merge(Toml::file_exact(path));
    }
    let prefix = format!("SAKUGA_{}__", service.to_ascii_uppercase());
    given = given.merge(Env::prefixed(&prefix).split("__"));
    let defaults = Figment::from(Serialized::defaults(T::default()));
    let mut keys: figment::value::Dict = given.extract().map_err(|e| MeshError::Config(e.to_string()))?;
    let all: Vec<Renamed> = SERVER_RENAMED.iter().chain(renamed).copied().collect();
    let applied = renamed::apply(&mut keys, &all)?;
    // Without old keys the file and environment are read as they are, so errors keep
    // naming the file or variable a bad value came from.
    let figment = if applied.is_empty() {
        defaults.merge(given)
    } else {
        for rename in applied {
            tracing::warn!("{}", renamed::warning(rename));
        }
        defaults.merge(Serialized::defaults(keys))
    };
    figment.extract().map_err(|e| MeshError::Config(e.to_string()))
}

/// How a service reaches Vault (OpenBao) and logs in.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct VaultConfig {
    /// Vault address, e.g. `http://127.0.0.1:8200`.
    pub addr: String,
    /// Login method.
    pub auth: VaultAuth,
    /// File holding a Vault token (`auth = "token"`).
    pub token_file: Option<PathBuf>,
    /// File holding the AppRole role id (`auth = "approle"`).
    pub role_id_file: Option<PathBuf>,
    /// File holding the AppRole secret id (`auth = "approle"`).
    pub secret_id_file: Option<PathBuf>,
    /// Mount of the AppRole auth method.
    pub approle_mount: String,
    /// Vault role to log in as (`auth = "kubernetes"`); usually the service's name.
    pub kubernetes_role: String,
    /// Mount of the Kubernetes auth method.
    pub kubernetes_mount: String,
    /// The pod's service account token (`auth = "kubernetes"`).
    pub kubernetes_token_file: PathBuf,
    /// Mount of the KV v2 secrets engine.
    pub kv_mount: String,
    /// Mount of the PKI secrets engine that issues service certificates.
    pub pki_mount: String,
    /// PKI role that issues this service's certificate; empty means the service's own role,
    /// `sakuga-<service>`, which may issue only that service's names and SPIFFE id.
    pub pki_role: String,
    /// Lifetime requested for the service certificate; it is renewed at two thirds.
    #[serde(with = "humantime_serde")]
    pub cert_ttl: Duration,
    /// Attempts to reach Vault at start-up before giving up (with exponential backoff).
    pub connect_attempts: u32,
    /// First backoff between attempts, doubled each time (capped at 10 s).
    #[serde(with = "humantime_serde")]
    pub backoff_initial: Duration,
}

/// Vault login methods.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum VaultAuth {
    /// A token read from `token_file` (development).
    Token,
    /// AppRole with `role_id_file` and `secret_id_file`.
    Approle,
    /// Kubernetes: the pod's service account token, exchanged for a Vault token under
    /// `kubernetes_role`.
    Kubernetes,
}

impl Default for VaultConfig {
    fn default() -> Self {
        Self {
            addr: "http://127.0.0.1:8200".to_owned(),
            auth: VaultAuth::Approle,
            token_file: None,
            role_id_file: None,
            secret_id_file: None,
            approle_mount: "approle".to_owned(),
            kubernetes_role: String::new(),
            kubernetes_mount: "kubernetes".to_owned(),
            kubernetes_token_file: PathBuf::from("/var/run/secrets/kubernetes.io/serviceaccount/token"),
            kv_mount: "secret".to_owned(),
            pki_mount: "pki".to_owned(),
            pki_role: String::new(),
            cert_ttl: Duration::from_hours(24),
            connect_attempts: 6,
            backoff_initial: Duration::from_millis(250),
        }
    }
}

impl VaultConfig {
    /// The defaults of `service`: its certificate comes from its own PKI role.
    pub fn for_service(service: &str) -> Self {
        Self { pki_role: pki_role_of(service), ..Self::default() }
    }

    /// The PKI role that issues `service`'s certificate: `pki_role`, or the service's own.
    pub fn pki_role_for(&self, service: &str) -> String {
        if self.pki_role.is_empty() { pki_role_of(service) } else { self.pki_role.clone() }
    }

    /// Checks the fields that must agree with each other.
    pub fn validate(&self) -> Result<(), MeshError> {
        if !(self.addr.starts_with("http://") || self.addr.starts_with("https://")) {
            return Err(MeshError::Config(format!(
                "server.vault.addr: must be an http:// or https:// URL, got {:?}",
                self.addr
            )));
        }
        match self.auth {
            VaultAuth::Token if self.token_file.is_none() => Err(MeshError::Config(
                "server.vault.token_file: required when vault.auth = \"token\"".to_owned(),
            )),
            VaultAuth::Approle if self.role_id_file.is_none() => Err(MeshError::Config(
                "server.vault.role_id_file: required when vault.auth = \"approle\"".to_owned(),
            )),
            VaultAuth::Approle if self.secret_id_file.is_none() => Err(MeshError::Config(
                "server.vault.secret_id_file: required when vault.auth = \"approle\"".to_owned(),
            )),
            VaultAuth::Kubernetes if self.kubernetes_role.is_empty() => Err(MeshError::Config(
                "server.vault.kubernetes_role: required when vault.auth = \"kubernetes\"".to_owned(),
            )),
            _ if self.cert_ttl < Duration::from_secs(10) => {
                Err(MeshError::Config("server.vault.cert_ttl: must be at least 10s".to_owned()))
            }
            _ if self.connect_attempts == 0 => {
                Err(MeshError::Config("server.vault.connect_attempts: must be at least 1".to_owned()))
            }
            _ => Ok(()),
        }
    }
}

/// The PKI role of a service: `sakuga-<service>`.
pub fn pki_role_of(service: &str) -> String {
    format!("sakuga-{service}")
}

/// The PKI role that issues client-only certificates to people and scripts
/// (`spiffe://sakuga/user/<name>`); no service certificate comes from it.
pub const USER_PKI_ROLE: &str = "sakuga-user";

/// Names and addresses the service certificate carries.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// DNS subject alternative names (clients dial one of these, or an IP below).
    pub dns_names: Vec<String>,
    /// IP subject alternative names.
    pub ip_addresses: Vec<String>,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self { dns_names: vec!["localhost".to_owned()], ip_addresses: vec!["127.0.0.1".to_owned()] }
    }
}

/// PostgreSQL connection (credentials come from Vault).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// Host name or IP.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Database name.
    pub dbname: String,
    /// KV v2 path (under `vault.kv_mount`) holding `username` and `password`.
    pub vault_path: String,
    /// Pool size.
    pub max_connections: usize,
    /// Wait for a pooled connection before UNAVAILABLE.
    #[serde(with = "humantime_serde")]
    pub acquire_timeout: Duration,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".to_owned(),
            port: 5432,
            dbname: "sakuga".to_owned(),
            vault_path: "sakuga/database".to_owned(),
            max_connections: 16,
            acquire_timeout: Duration::from_secs(5),
        }
    }
}

impl DatabaseConfig {
    /// The defaults of `service`: its credentials are its own, at `sakuga/<service>/database`.
    pub fn for_service(service: &str) -> Self {
        Self { vault_path: format!("sakuga/{service}/database"), ..Self::default() }
    }

    /// Checks ranges.
    pub fn validate(&self) -> Result<(), MeshError> {
        if self.max_connections == 0 {
            return Err(MeshError::Config("database.max_connections: must be at least 1".to_owned()));
        }
        if self.dbname.is_empty() {
            return Err(MeshError::Config("database.dbname: must not be empty".to_owned()));
        }
        Ok(())
    }
}

/// Redis connection (credentials come from Vault).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// Host name or IP.
    pub host: String,
    /// Port.
    pub port: u16,
    /// KV v2 path (under `vault.kv_mount`) holding `username` and `password`; both may be
    /// absent in the secret for a Redis without authentication.
    pub vault_path: String,
    /// Prefix of every key and channel this service uses.
    pub key_prefix: String,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".to_owned(),
            port: 6379,
            vault_path: "sakuga/redis".to_owned(),
            key_prefix: "sakuga:".to_owned(),
        }
    }
}

impl RedisConfig {
    /// The defaults of `service`: its ACL user is its own, at `sakuga/<service>/redis`.
    pub fn for_service(service: &str) -> Self {
        Self { vault_path: format!("sakuga/{service}/redis"), ..Self::default() }
    }
}

/// Parses a listen address, naming the field in the error.
pub fn parse_listen(field: &str, value: &str) -> Result<SocketAddr, MeshError> {
    value.parse().map_err(|_| MeshError::Config(format!("{field}: not a socket address: {value:?}")))
}

/// Serde for an address that is on by default (`metrics_listen`): `"off"` (or `""`) turns
/// it off, since TOML has no null. Use with `#[serde(with = "...::switchable_addr")]`.
pub mod switchable_addr {
    use std::net::SocketAddr;

    use serde::{Deserialize as _, Deserializer, Serializer};

    /// `None` is written as `"off"`.
    #[allow(clippy::ref_option)]
    pub fn serialize<S: Serializer>(addr: &Option<SocketAddr>, s: S) -> Result<S::Ok, S::Error> {
        match addr {
            Some(a) => s.collect_str(a),
            None => s.serialize_str("off"),
        }
    }

    /// An address, or `"off"`/`""` for none.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
        let text = String::deserialize(d)?;
        match text.trim() {
            "" | "off" => Ok(None),
            t => t.parse().map(Some).map_err(|_| {
                serde::de::Error::custom(format!(
                    "{t:?} is not an address such as 127.0.0.1:9101, nor \"off\""
                ))
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    struct Switchable {
        #[serde(with = "switchable_addr")]
        scrape: Option<SocketAddr>,
    }

    impl Default for Switchable {
        fn default() -> Self {
            Self { scrape: Some(SocketAddr::from(([127, 0, 0, 1], 9101))) }
        }
    }

    #[test]
    fn an_address_that_is_on_by_default_can_be_turned_off_in_toml() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "").unwrap();
        let c: Switchable = load("switchtest", Some(&path), &[]).unwrap();
        assert_eq!(c.scrape, Some(SocketAddr::from(([127, 0, 0, 1], 9101))));
        std::fs::write(&path, "scrape = \"off\"\n").unwrap();
        let c: Switchable = load("switchtest", Some(&path), &[]).unwrap();
        assert_eq!(c.scrape, None);
        std::fs::write(&path, "scrape = \"0.0.0.0:9300\"\n").unwrap();
        let c: Switchable = load("switchtest", Some(&path), &[]).unwrap();
        assert_eq!(c.scrape, Some(SocketAddr::from(([0, 0, 0, 0], 9300))));
        std::fs::write(&path, "scrape = \"nine\"\n").unwrap();
        let err = load::<Switchable>("switchtest", Some(&path), &[]).unwrap_err().to_string();
        assert!(err.contains("scrape") && err.contains("\"off\""), "{err}");
        let written = serde_json::to_value(Switchable { scrape: None }).unwrap();
        assert_eq!(written["scrape"], "off", "None round-trips through a file");
    }

    #[derive(Debug, Default, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    struct Sample {
        server: ServerConfig,
        database: DatabaseConfig,
        lease_ttl: Option<String>,
    }

    #[test]
    fn file_overrides_defaults_and_unknown_keys_fail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        let text = "[server]\nlisten = \"127.0.0.1:1\"\nshutdown_grace = \"5s\"\n[server.vault]\naddr = \"http://v:1\"\n";
        std::fs::write(&path, text).unwrap();
        let c: Sample = load("sampletest", Some(&path), &[]).unwrap();
        assert_eq!(c.server.listen, SocketAddr::from(([127, 0, 0, 1], 1)));
        assert_eq!(c.server.shutdown_grace, Duration::from_secs(5));
        assert_eq!(c.server.vault.addr, "http://v:1");
        assert_eq!(c.server.vault.kv_mount, "secret");

        std::fs::write(&path, "[server.vault]\nadress = \"http://v:1\"\n").unwrap();
        let err = load::<Sample>("sampletest", Some(&path), &[]).unwrap_err().to_string();
        assert!(err.contains("adress"), "{err}");
    }

    #[test]
    fn the_keys_from_before_server_and_durations_still_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        let text = "listen = \"127.0.0.1:1\"\nshutdown_grace_secs = 5\nlease_ttl_ms = 1500\n\
                    [vault]\naddr = \"http://v:1\"\ncert_ttl_secs = 60\n\
                    [grpc]\nhandshake_timeout_ms = 250\n[database]\nacquire_timeout_secs = 2\n";
        std::fs::write(&path, text).unwrap();
        let renamed = [Renamed::Millis { from: "lease_ttl_ms", to: "lease_ttl" }];
        let c: Sample = load("sampletest", Some(&path), &renamed).unwrap();
        assert_eq!(c.server.listen, SocketAddr::from(([127, 0, 0, 1], 1)));
        assert_eq!(c.server.shutdown_grace, Duration::from_secs(5));
        assert_eq!(c.server.vault.addr, "http://v:1");
        assert_eq!(c.server.vault.cert_ttl, Duration::from_mins(1));
        assert_eq!(c.server.grpc.handshake_timeout, Duration::from_millis(250));
        assert_eq!(c.database.acquire_timeout, Duration::from_secs(2));
        assert_eq!(c.lease_ttl.as_deref(), Some("1500ms"));

        std::fs::write(&path, "listen = \"127.0.0.1:1\"\n[server]\nlisten = \"127.0.0.1:2\"\n").unwrap();
        let err = load::<Sample>("sampletest", Some(&path), &[]).unwrap_err().to_string();
        assert!(err.contains("`listen` and `server.listen` are both set"), "{err}");
    }

    #[test]
    fn missing_file_is_an_error() {
        let err = load::<Sample>("sampletest", Some(Path::new("/nonexistent/x.toml")), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not exist"), "{err}");
    }

    #[test]
    fn approle_needs_its_files() {
        let v = VaultConfig::default();
        let err = v.validate().unwrap_err().to_string();
        assert!(err.contains("server.vault.role_id_file"), "{err}");
    }
}
