//! File organizer configuration.

use std::{net::SocketAddr, path::PathBuf};

use sakuga_mesh::{
    MeshError,
    config::{DatabaseConfig, RedisConfig, TlsConfig, VaultConfig},
    ratelimit::RateLimits,
};
use serde::{Deserialize, Serialize};

/// Everything the organizer reads at start-up.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// gRPC listen address (FileService, health, reflection).
    pub listen: SocketAddr,
    /// Vault login and mounts.
    pub vault: VaultConfig,
    /// Names on the service certificate.
    pub tls: TlsConfig,
    /// PostgreSQL.
    pub database: DatabaseConfig,
    /// Redis (revocation list, rate limits).
    pub redis: RedisConfig,
    /// Auth service `host:port`, where the token verification keys come from.
    pub auth_addr: String,
    /// Rate limits per class and user.
    pub rate_limits: RateLimits,
    /// Root folder of the stored files.
    pub storage_root: PathBuf,
    /// Largest artifact accepted, in bytes.
    pub max_artifact_bytes: u64,
    /// Time in-flight calls get after SIGTERM.
    pub shutdown_grace_secs: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50053)),
            vault: VaultConfig::default(),
            tls: TlsConfig::default(),
            database: DatabaseConfig::default(),
            redis: RedisConfig::default(),
            auth_addr: "127.0.0.1:50051".to_owned(),
            rate_limits: RateLimits::default(),
            storage_root: PathBuf::from("files"),
            max_artifact_bytes: 256 * 1024 * 1024,
            shutdown_grace_secs: 20,
        }
    }
}

impl Config {
    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<(), MeshError> {
        self.vault.validate()?;
        self.database.validate()?;
        self.rate_limits.validate()?;
        if self.storage_root.as_os_str().is_empty() {
            return Err(MeshError::Config("storage_root: must not be empty".to_owned()));
        }
        if self.max_artifact_bytes < 1024 {
            return Err(MeshError::Config("max_artifact_bytes: must be at least 1024".to_owned()));
        }
        Ok(())
    }
}
