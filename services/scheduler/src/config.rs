//! Scheduler configuration (see `docs` in the README for every key).

use std::{net::SocketAddr, time::Duration};

use sakuga_mesh::{
    MeshError,
    config::{DatabaseConfig, RedisConfig, TlsConfig, VaultConfig},
};
use serde::{Deserialize, Serialize};

/// Everything the scheduler reads at start-up.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// gRPC listen address (JobService, WorkerService, health, reflection).
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
    /// Redis (progress fan-out).
    pub redis: RedisConfig,
    /// A lease lasts this long after the last heartbeat or progress message.
    pub lease_ttl_ms: u64,
    /// Heartbeat period asked of workers (well under the lease).
    pub heartbeat_interval_ms: u64,
    /// Attempts per job before it fails.
    pub max_attempts: u32,
    /// Safety-net poll of the queue when no wake-up arrives.
    pub dispatch_poll_ms: u64,
    /// Progress is published on every step but written to PostgreSQL at most this often
    /// per job.
    pub progress_write_interval_ms: u64,
    /// Largest width × height × batch_size × max(frames, 1) a job may ask for.
    pub max_job_pixels: u64,
    /// Time in-flight calls get after SIGTERM.
    pub shutdown_grace_secs: u64,
    /// Auth service `host:port`, where the token verification keys come from.
    pub auth_addr: String,
    /// Rate limits per class and user.
    pub rate_limits: sakuga_mesh::ratelimit::RateLimits,
    /// Jobs a user may have queued or running at once.
    pub max_active_jobs_per_user: u32,
    /// Finished jobs older than this many days are deleted (their file records stay);
    /// 0 keeps them forever.
    pub job_retention_days: u32,
    /// How often the retention sweep runs.
    pub retention_sweep_secs: u64,
    /// Ceilings on `WatchJob` streams.
    pub watch: WatchConfig,
}

/// Ceilings on `WatchJob` streams: each open stream holds a task, a slot in its job's
/// event channel and the caller's share of these caps.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct WatchConfig {
    /// Events buffered per watched job on this replica; a watcher that falls further
    /// behind re-reads the job row instead (previews in between are skipped).
    pub channel_capacity: usize,
    /// Streams one user may have open at once on this replica.
    pub max_per_user: u32,
    /// Streams one connection (peer address) may have open at once.
    pub max_per_connection: u32,
}

impl Default for WatchConfig {
    fn default() -> Self {
        Self { channel_capacity: 64, max_per_user: 100, max_per_connection: 32 }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50052)),
            metrics_listen: Some(SocketAddr::from(([127, 0, 0, 1], 9102))),
            probe_listen: None,
            vault: VaultConfig::for_service("scheduler"),
            tls: TlsConfig::default(),
            grpc: sakuga_mesh::listen::GrpcLimits::default(),
            database: DatabaseConfig::for_service("scheduler"),
            redis: RedisConfig::for_service("scheduler"),
            lease_ttl_ms: 10_000,
            heartbeat_interval_ms: 2_000,
            max_attempts: 3,
            dispatch_poll_ms: 1_000,
            progress_write_interval_ms: 1_000,
            max_job_pixels: 64 * 1024 * 1024,
            shutdown_grace_secs: 20,
            auth_addr: "127.0.0.1:50051".to_owned(),
            rate_limits: sakuga_mesh::ratelimit::RateLimits::default(),
            max_active_jobs_per_user: 50,
            job_retention_days: 90,
            retention_sweep_secs: 3600,
            watch: WatchConfig::default(),
        }
    }
}

impl Config {
    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<(), MeshError> {
        self.vault.validate()?;
        self.database.validate()?;
        self.rate_limits.validate()?;
        let bad = |field: &str, why: &str| Err(MeshError::Config(format!("{field}: {why}")));
        if self.lease_ttl_ms < 1_000 {
            return bad("lease_ttl_ms", "must be at least 1000");
        }
        if self.heartbeat_interval_ms == 0 || self.heartbeat_interval_ms * 2 > self.lease_ttl_ms {
            return bad("heartbeat_interval_ms", "must be positive and at most half of lease_ttl_ms");
        }
        if self.max_attempts == 0 || self.max_attempts > 100 {
            return bad("max_attempts", "must be between 1 and 100");
        }
        if self.dispatch_poll_ms == 0 {
            return bad("dispatch_poll_ms", "must be positive");
        }
        if self.retention_sweep_secs == 0 {
            return bad("retention_sweep_secs", "must be positive");
        }
        if self.max_active_jobs_per_user == 0 {
            return bad("max_active_jobs_per_user", "must be at least 1");
        }
        if !(1..=4096).contains(&self.watch.channel_capacity) {
            return bad("watch.channel_capacity", "must be between 1 and 4096");
        }
        if self.watch.max_per_user == 0 {
            return bad("watch.max_per_user", "must be at least 1");
        }
        if self.watch.max_per_connection == 0 {
            return bad("watch.max_per_connection", "must be at least 1");
        }
        if self.max_job_pixels < 64 * 64 {
            return bad("max_job_pixels", "must be at least 4096");
        }
        Ok(())
    }

    /// Lease lifetime.
    pub fn lease_ttl(&self) -> Duration {
        Duration::from_millis(self.lease_ttl_ms)
    }
}
