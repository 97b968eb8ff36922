//! File organizer configuration.

use std::{path::PathBuf, time::Duration};

use sakuga_mesh::{
    MeshError,
    config::{DatabaseConfig, RedisConfig, Renamed, ServerConfig},
    ratelimit::RateLimits,
};
use serde::{Deserialize, Serialize};

/// Everything the organizer reads at start-up.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Ports (FileService, health, reflection), Vault, certificate, limits of the gRPC port, shutdown grace.
    pub server: ServerConfig,
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
    /// Uploads (`StoreArtifact`) handled at once; more are refused with RESOURCE_EXHAUSTED
    /// and `retry-after`.
    pub max_concurrent_uploads: usize,
    /// An upload whose next message takes longer than this is ended (ABORTED).
    #[serde(with = "humantime_serde")]
    pub upload_idle_timeout: Duration,
    /// `ReadFile` and `GetThumbnail` streams one user may have open at once; more are
    /// refused with RESOURCE_EXHAUSTED and `retry-after`.
    pub max_reads_per_user: usize,
    /// A read stream the client stops reading for longer than this is ended (ABORTED),
    /// freeing its slot.
    #[serde(with = "humantime_serde")]
    pub read_idle_timeout: Duration,
    /// Longest side of thumbnails, in pixels.
    pub thumbnail_max_side: u32,
    /// The reconciler runs at start-up and then this often.
    #[serde(with = "humantime_serde")]
    pub reconcile_interval: Duration,
    /// Bytes no record points at are removed once this old (protects uploads in flight).
    #[serde(with = "humantime_serde")]
    pub orphan_grace: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server: ServerConfig::for_service("organizer", 50053, 9103),
            database: DatabaseConfig::for_service("organizer"),
            redis: RedisConfig::for_service("organizer"),
            auth_addr: "127.0.0.1:50051".to_owned(),
            rate_limits: RateLimits::default(),
            storage_root: PathBuf::from("files"),
            max_artifact_bytes: 256 * 1024 * 1024,
            max_concurrent_uploads: 8,
            upload_idle_timeout: Duration::from_secs(30),
            max_reads_per_user: 8,
            read_idle_timeout: Duration::from_secs(30),
            thumbnail_max_side: 256,
            reconcile_interval: Duration::from_hours(1),
            orphan_grace: Duration::from_mins(10),
        }
    }
}

impl Config {
    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<(), MeshError> {
        self.server.validate()?;
        self.database.validate()?;
        self.rate_limits.validate()?;
        if self.storage_root.as_os_str().is_empty() {
            return Err(MeshError::Config("storage_root: must not be empty".to_owned()));
        }
        if !(16..=1024).contains(&self.thumbnail_max_side) {
            return Err(MeshError::Config("thumbnail_max_side: must be between 16 and 1024".to_owned()));
        }
        if self.reconcile_interval.is_zero() {
            return Err(MeshError::Config("reconcile_interval: must be positive".to_owned()));
        }
        if self.max_artifact_bytes < 1024 {
            return Err(MeshError::Config("max_artifact_bytes: must be at least 1024".to_owned()));
        }
        for (key, value) in [
            ("max_concurrent_uploads", self.max_concurrent_uploads),
            ("max_reads_per_user", self.max_reads_per_user),
        ] {
            if value == 0 {
                return Err(MeshError::Config(format!("{key}: must be at least 1")));
            }
        }
        for (key, value) in
            [("upload_idle_timeout", self.upload_idle_timeout), ("read_idle_timeout", self.read_idle_timeout)]
        {
            if value.is_zero() {
                return Err(MeshError::Config(format!("{key}: must be positive")));
            }
        }
        Ok(())
    }
}

/// The organizer's keys that were numbers of seconds.
pub const RENAMED: &[Renamed] = &[
    Renamed::Secs { from: "upload_idle_timeout_secs", to: "upload_idle_timeout" },
    Renamed::Secs { from: "read_idle_timeout_secs", to: "read_idle_timeout" },
    Renamed::Secs { from: "reconcile_interval_secs", to: "reconcile_interval" },
    Renamed::Secs { from: "orphan_grace_secs", to: "orphan_grace" },
];
