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
    pub upload_idle_timeout_secs: u64,
    /// `ReadFile` and `GetThumbnail` streams one user may have open at once; more are
    /// refused with RESOURCE_EXHAUSTED and `retry-after`.
    pub max_reads_per_user: usize,
    /// A read stream the client stops reading for longer than this is ended (ABORTED),
    /// freeing its slot.
    pub read_idle_timeout_secs: u64,
    /// Time in-flight calls get after SIGTERM.
    pub shutdown_grace_secs: u64,
    /// Longest side of thumbnails, in pixels.
    pub thumbnail_max_side: u32,
    /// The reconciler runs at start-up and then this often.
    pub reconcile_interval_secs: u64,
    /// Bytes no record points at are removed once this old (protects uploads in flight).
    pub orphan_grace_secs: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50053)),
            metrics_listen: Some(SocketAddr::from(([127, 0, 0, 1], 9103))),
            probe_listen: None,
            vault: VaultConfig::for_service("organizer"),
            tls: TlsConfig::default(),
            grpc: sakuga_mesh::listen::GrpcLimits::default(),
            database: DatabaseConfig::for_service("organizer"),
            redis: RedisConfig::for_service("organizer"),
            auth_addr: "127.0.0.1:50051".to_owned(),
            rate_limits: RateLimits::default(),
            storage_root: PathBuf::from("files"),
            max_artifact_bytes: 256 * 1024 * 1024,
            max_concurrent_uploads: 8,
            upload_idle_timeout_secs: 30,
            max_reads_per_user: 8,
            read_idle_timeout_secs: 30,
            shutdown_grace_secs: 20,
            thumbnail_max_side: 256,
            reconcile_interval_secs: 3600,
            orphan_grace_secs: 600,
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
        if !(16..=1024).contains(&self.thumbnail_max_side) {
            return Err(MeshError::Config("thumbnail_max_side: must be between 16 and 1024".to_owned()));
        }
        if self.reconcile_interval_secs == 0 {
            return Err(MeshError::Config("reconcile_interval_secs: must be at least 1".to_owned()));
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
        for (key, value) in [
            ("upload_idle_timeout_secs", self.upload_idle_timeout_secs),
            ("read_idle_timeout_secs", self.read_idle_timeout_secs),
        ] {
            if value == 0 {
                return Err(MeshError::Config(format!("{key}: must be at least 1")));
            }
        }
        Ok(())
    }
}
