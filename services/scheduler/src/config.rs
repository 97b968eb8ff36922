//! Scheduler configuration (see `docs` in the README for every key).

use std::time::Duration;

use sakuga_mesh::{
    MeshError,
    config::{DatabaseConfig, RedisConfig, Renamed, ServerConfig},
};
use serde::{Deserialize, Serialize};

/// Everything the scheduler reads at start-up.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Ports (JobService, WorkerService, health, reflection), Vault, certificate, limits
    /// of the gRPC port, shutdown grace.
    pub server: ServerConfig,
    /// PostgreSQL.
    pub database: DatabaseConfig,
    /// Redis (progress fan-out).
    pub redis: RedisConfig,
    /// A lease lasts this long after the last heartbeat or progress message.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// Heartbeat period asked of workers (well under the lease).
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// Attempts per job before it fails.
    pub max_attempts: u32,
    /// Safety-net poll of the queue when no wake-up arrives.
    #[serde(with = "humantime_serde")]
    pub dispatch_poll: Duration,
    /// Progress is published on every step but written to PostgreSQL at most this often
    /// per job.
    #[serde(with = "humantime_serde")]
    pub progress_write_interval: Duration,
    /// Largest width × height × batch_size × max(frames, 1) a job may ask for.
    pub max_job_pixels: u64,
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
    #[serde(with = "humantime_serde")]
    pub retention_sweep: Duration,
    /// Ceilings on `WatchJob` streams.
    pub watch: WatchConfig,
    /// Webhook endpoints and their deliveries.
    pub webhooks: crate::webhooks::WebhookConfig,
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
            server: ServerConfig::for_service("scheduler", 15052, 9102),
            database: DatabaseConfig::for_service("scheduler"),
            redis: RedisConfig::for_service("scheduler"),
            lease_ttl: Duration::from_secs(10),
            heartbeat_interval: Duration::from_secs(2),
            max_attempts: 3,
            dispatch_poll: Duration::from_secs(1),
            progress_write_interval: Duration::from_secs(1),
            max_job_pixels: 64 * 1024 * 1024,
            auth_addr: "127.0.0.1:15051".to_owned(),
            rate_limits: sakuga_mesh::ratelimit::RateLimits::default(),
            max_active_jobs_per_user: 50,
            job_retention_days: 90,
            retention_sweep: Duration::from_hours(1),
            watch: WatchConfig::default(),
            webhooks: crate::webhooks::WebhookConfig::default(),
        }
    }
}

impl Config {
    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<(), MeshError> {
        self.server.validate()?;
        self.database.validate()?;
        self.rate_limits.validate()?;
        let bad = |field: &str, why: &str| Err(MeshError::Config(format!("{field}: {why}")));
        if self.lease_ttl < Duration::from_secs(1) {
            return bad("lease_ttl", "must be at least 1s");
        }
        if self.heartbeat_interval.is_zero() || self.heartbeat_interval * 2 > self.lease_ttl {
            return bad("heartbeat_interval", "must be positive and at most half of lease_ttl");
        }
        if self.max_attempts == 0 || self.max_attempts > 100 {
            return bad("max_attempts", "must be between 1 and 100");
        }
        if self.dispatch_poll.is_zero() {
            return bad("dispatch_poll", "must be positive");
        }
        if self.retention_sweep.is_zero() {
            return bad("retention_sweep", "must be positive");
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
        self.webhooks.validate()
    }
}

/// The scheduler's keys that were numbers of milliseconds or seconds.
pub const RENAMED: &[Renamed] = &[
    Renamed::Millis { from: "lease_ttl_ms", to: "lease_ttl" },
    Renamed::Millis { from: "heartbeat_interval_ms", to: "heartbeat_interval" },
    Renamed::Millis { from: "dispatch_poll_ms", to: "dispatch_poll" },
    Renamed::Millis { from: "progress_write_interval_ms", to: "progress_write_interval" },
    Renamed::Secs { from: "retention_sweep_secs", to: "retention_sweep" },
];
