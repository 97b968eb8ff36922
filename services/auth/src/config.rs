//! Auth service configuration.

use std::net::SocketAddr;

use sakuga_mesh::{
    MeshError,
    config::{DatabaseConfig, RedisConfig, TlsConfig, VaultConfig},
};
use serde::{Deserialize, Serialize};

/// Everything the auth service reads at start-up.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// gRPC listen address (AuthService, health, reflection).
    pub listen: SocketAddr,
    /// Vault login and mounts.
    pub vault: VaultConfig,
    /// Names on the service certificate.
    pub tls: TlsConfig,
    /// PostgreSQL (users, keys, audit log).
    pub database: DatabaseConfig,
    /// Redis (revocation list, login rate limits).
    pub redis: RedisConfig,
    /// Time in-flight calls get after SIGTERM.
    pub shutdown_grace_secs: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            vault: VaultConfig::default(),
            tls: TlsConfig::default(),
            database: DatabaseConfig::default(),
            redis: RedisConfig::default(),
            shutdown_grace_secs: 20,
        }
    }
}

impl Config {
    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<(), MeshError> {
        self.vault.validate()?;
        self.database.validate()
    }
}
