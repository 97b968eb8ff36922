//! Auth service configuration.

use std::net::SocketAddr;

use sakuga_mesh::{
    MeshError,
    config::{DatabaseConfig, RedisConfig, TlsConfig, VaultConfig},
    ratelimit::RateLimits,
};
use serde::{Deserialize, Serialize};

/// Everything the auth service reads at start-up.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// gRPC listen address (AuthService, health, reflection).
    pub listen: SocketAddr,
    /// Prometheus scrape port (`GET /metrics`, plain HTTP); `"off"`: none.
    #[serde(with = "sakuga_mesh::config::switchable_addr")]
    pub metrics_listen: Option<SocketAddr>,
    /// Plaintext gRPC health (only) for kubelet probes; unset: none.
    pub probe_listen: Option<SocketAddr>,
    /// Vault login and mounts.
    pub vault: VaultConfig,
    /// Names on the service certificate.
    pub tls: TlsConfig,
    /// Limits of the gRPC port: connections, handshakes, streams per connection, keepalive.
    pub grpc: sakuga_mesh::listen::GrpcLimits,
    /// PostgreSQL (users, keys, refresh tokens, audit log).
    pub database: DatabaseConfig,
    /// Redis (revocation list, rate limits).
    pub redis: RedisConfig,
    /// KV path of the signing keys: field `active` names the key id that signs; every other
    /// field is a key id holding an Ed25519 private key (PKCS#8 PEM), all published.
    pub signing_keys_path: String,
    /// KV path of the bootstrap admin (`username`, `password`): created at start-up if no
    /// user of that name exists, never changed afterwards. Absent secret: no bootstrap
    /// account.
    pub bootstrap_admin_path: String,
    /// Access token lifetime.
    pub access_token_ttl_secs: u64,
    /// Refresh token lifetime.
    pub refresh_token_ttl_secs: u64,
    /// Rate limits per class (login attempts are limited per username and peer).
    pub rate_limits: RateLimits,
    /// Time in-flight calls get after SIGTERM.
    pub shutdown_grace_secs: u64,
    /// Argon2id computations (19 MiB each) allowed at once; 0: the number of cores.
    pub argon2_permits: usize,
    /// How long a login or user creation waits for an Argon2 permit before it is refused
    /// with RESOURCE_EXHAUSTED.
    pub argon2_wait_ms: u64,
    /// Audit events older than this many days are deleted; 0 keeps them forever.
    pub audit_retention_days: u32,
    /// How often the audit retention sweep runs.
    pub audit_sweep_secs: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            metrics_listen: Some(SocketAddr::from(([127, 0, 0, 1], 9101))),
            probe_listen: None,
            vault: VaultConfig::for_service("auth"),
            tls: TlsConfig::default(),
            grpc: sakuga_mesh::listen::GrpcLimits::default(),
            database: DatabaseConfig::for_service("auth"),
            redis: RedisConfig::for_service("auth"),
            signing_keys_path: "sakuga/auth/signing".to_owned(),
            bootstrap_admin_path: "sakuga/auth/bootstrap-admin".to_owned(),
            access_token_ttl_secs: 900,
            refresh_token_ttl_secs: 30 * 24 * 3600,
            rate_limits: RateLimits::default(),
            shutdown_grace_secs: 20,
            argon2_permits: 0,
            // Long enough to wait out a few computations ahead in the queue; a longer
            // queue means overload, and the caller is told to come back.
            argon2_wait_ms: 1_000,
            audit_retention_days: 365,
            audit_sweep_secs: 3_600,
        }
    }
}

impl Config {
    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<(), MeshError> {
        self.vault.validate()?;
        self.database.validate()?;
        self.rate_limits.validate()?;
        if !(30..=86_400).contains(&self.access_token_ttl_secs) {
            return Err(MeshError::Config("access_token_ttl_secs: must be between 30 and 86400".to_owned()));
        }
        if self.refresh_token_ttl_secs < self.access_token_ttl_secs {
            return Err(MeshError::Config(
                "refresh_token_ttl_secs: must be at least access_token_ttl_secs".to_owned(),
            ));
        }
        if self.argon2_wait_ms > 60_000 {
            return Err(MeshError::Config("argon2_wait_ms: must be at most 60000".to_owned()));
        }
        if self.audit_sweep_secs == 0 {
            return Err(MeshError::Config("audit_sweep_secs: must be positive".to_owned()));
        }
        Ok(())
    }
}
