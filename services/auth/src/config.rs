//! Auth service configuration.

use std::time::Duration;

use sakuga_mesh::{
    MeshError,
    config::{DatabaseConfig, RedisConfig, Renamed, ServerConfig},
    ratelimit::RateLimits,
};
use serde::{Deserialize, Serialize};

/// Everything the auth service reads at start-up.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Ports (AuthService, health, reflection), Vault, certificate, limits of the gRPC port, shutdown grace.
    pub server: ServerConfig,
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
    #[serde(with = "humantime_serde")]
    pub access_token_ttl: Duration,
    /// Refresh token lifetime.
    #[serde(with = "humantime_serde")]
    pub refresh_token_ttl: Duration,
    /// Rate limits per class (login attempts are limited per username and peer).
    pub rate_limits: RateLimits,
    /// Argon2id computations (19 MiB each) allowed at once; 0: the number of cores.
    pub argon2_permits: usize,
    /// How long a login or user creation waits for an Argon2 permit before it is refused
    /// with RESOURCE_EXHAUSTED.
    #[serde(with = "humantime_serde")]
    pub argon2_wait: Duration,
    /// Audit events older than this many days are deleted; 0 keeps them forever.
    pub audit_retention_days: u32,
    /// How often the audit retention sweep runs.
    #[serde(with = "humantime_serde")]
    pub audit_sweep: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server: ServerConfig::for_service("auth", 15051, 9101),
            database: DatabaseConfig::for_service("auth"),
            redis: RedisConfig::for_service("auth"),
            signing_keys_path: "sakuga/auth/signing".to_owned(),
            bootstrap_admin_path: "sakuga/auth/bootstrap-admin".to_owned(),
            access_token_ttl: Duration::from_mins(15),
            refresh_token_ttl: Duration::from_hours(30 * 24),
            rate_limits: RateLimits::default(),
            argon2_permits: 0,
            // Long enough to wait out a few computations ahead in the queue; a longer
            // queue means overload, and the caller is told to come back.
            argon2_wait: Duration::from_secs(1),
            audit_retention_days: 365,
            audit_sweep: Duration::from_hours(1),
        }
    }
}

impl Config {
    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<(), MeshError> {
        self.server.validate()?;
        self.database.validate()?;
        self.rate_limits.validate()?;
        if !(Duration::from_secs(30)..=Duration::from_hours(24)).contains(&self.access_token_ttl) {
            return Err(MeshError::Config("access_token_ttl: must be between 30s and 24h".to_owned()));
        }
        if self.refresh_token_ttl < self.access_token_ttl {
            return Err(MeshError::Config("refresh_token_ttl: must be at least access_token_ttl".to_owned()));
        }
        if self.argon2_wait > Duration::from_mins(1) {
            return Err(MeshError::Config("argon2_wait: must be at most 60s".to_owned()));
        }
        if self.audit_sweep.is_zero() {
            return Err(MeshError::Config("audit_sweep: must be positive".to_owned()));
        }
        Ok(())
    }
}

/// The auth service's keys that were numbers of milliseconds or seconds.
pub const RENAMED: &[Renamed] = &[
    Renamed::Secs { from: "access_token_ttl_secs", to: "access_token_ttl" },
    Renamed::Secs { from: "refresh_token_ttl_secs", to: "refresh_token_ttl" },
    Renamed::Millis { from: "argon2_wait_ms", to: "argon2_wait" },
    Renamed::Secs { from: "audit_sweep_secs", to: "audit_sweep" },
];
