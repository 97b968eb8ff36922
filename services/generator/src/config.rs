//! Generator configuration.

use std::{path::PathBuf, time::Duration};

use sakuga_mesh::{
    MeshError,
    config::{Renamed, ServerConfig},
};
use serde::{Deserialize, Serialize};

use crate::{benchmark::BenchmarkConfig, comfyui::ComfyConfig};

/// Everything the generator reads at start-up.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Ports (health and reflection only), Vault, certificate, limits of the gRPC port, and
    /// the grace running jobs get after SIGTERM before they are handed back.
    pub server: ServerConfig,
    /// Scheduler `host:port` (the host must be on its certificate); several replicas,
    /// comma-separated, are tried in turn whenever the stream drops, so a scheduler that
    /// shuts down hands its workers (and their running jobs, by lease) to another.
    pub scheduler_addr: String,
    /// File organizer `host:port`; several replicas, comma-separated, are used in turn: an
    /// upload the platform failed (no answer, storage trouble) is retried on the next.
    pub organizer_addr: String,
    /// Auth service `host:port`, where the token verification keys come from (the
    /// health port's reflection accepts operators' tokens).
    pub auth_addr: String,
    /// Stable worker id; empty means `$HOSTNAME` (the pod name in Kubernetes) or
    /// `generator-<pid>`.
    pub worker_id: String,
    /// The backend this worker runs: `builtin`, `comfyui`, or `benchmark` (load tests only:
    /// a tiny generated image at once).
    pub backend: String,
    /// Jobs the builtin or benchmark backend runs at once (a comfyui worker has one slot per
    /// server).
    pub slots: u32,
    /// Settings of the comfyui backend.
    pub comfyui: ComfyConfig,
    /// Settings of the benchmark backend.
    pub benchmark: BenchmarkConfig,
    /// A preview is sent every this many steps; 0 sends none.
    pub preview_every_steps: u32,
    /// Upload chunk size in bytes (at most 1 MiB).
    pub upload_chunk_bytes: usize,
    /// Longest wait between reconnect attempts to the scheduler.
    #[serde(with = "humantime_serde")]
    pub reconnect_max_backoff: Duration,
    /// Longest time a finished job's artifacts wait for storage (full, unreachable, or no
    /// organizer answering) while the job keeps its lease; then the attempt ends as a
    /// platform failure, which is not counted, and the job is queued again.
    #[serde(with = "humantime_serde")]
    pub upload_wait_max: Duration,
    /// Bytes of waiting artifacts this worker keeps in memory (all its jobs together); the
    /// rest go to spool files.
    pub held_memory_max_bytes: u64,
    /// Folder of the spool files of waiting artifacts (removed once stored); empty: the
    /// system temp folder.
    pub spool_dir: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server: ServerConfig::for_service("generator", 15054, 9104),
            scheduler_addr: "127.0.0.1:15052".to_owned(),
            organizer_addr: "127.0.0.1:15053".to_owned(),
            auth_addr: "127.0.0.1:15051".to_owned(),
            worker_id: String::new(),
            backend: "builtin".to_owned(),
            slots: 2,
            comfyui: ComfyConfig::default(),
            benchmark: BenchmarkConfig::default(),
            preview_every_steps: 5,
            upload_chunk_bytes: 256 * 1024,
            reconnect_max_backoff: Duration::from_secs(5),
            upload_wait_max: Duration::from_hours(1),
            held_memory_max_bytes: 256 * 1024 * 1024,
            spool_dir: PathBuf::new(),
        }
    }
}

/// `a, b,c` → `[a, b, c]`; empty entries are skipped.
fn split_addrs(list: &str) -> Vec<String> {
    list.split(',').map(str::trim).filter(|a| !a.is_empty()).map(str::to_owned).collect()
}

impl Config {
    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<(), MeshError> {
        self.server.validate()?;
        let bad = |field: &str, why: &str| Err(MeshError::Config(format!("{field}: {why}")));
        if !(1..=64).contains(&self.slots) {
            return bad("slots", "must be between 1 and 64");
        }
        match self.backend.as_str() {
            "builtin" | "benchmark" => {}
            "comfyui" => {
                self.comfyui.templates().map_err(|e| MeshError::Config(e.to_string()))?;
            }
            other => {
                return Err(MeshError::Config(format!(
                    "backend: unknown backend {other:?} (available: builtin, comfyui, benchmark)"
                )));
            }
        }
        if !(1024..=1024 * 1024).contains(&self.upload_chunk_bytes) {
            return bad("upload_chunk_bytes", "must be between 1024 and 1048576");
        }
        if self.scheduler_addrs().is_empty() {
            return bad("scheduler_addr", "must name at least one host:port");
        }
        if self.organizer_addrs().is_empty() {
            return bad("organizer_addr", "must name at least one host:port");
        }
        if self.upload_wait_max < Duration::from_secs(1) {
            return bad("upload_wait_max", "must be at least 1s");
        }
        if self.worker_id.len() > 128 {
            return bad("worker_id", "must be at most 128 characters");
        }
        Ok(())
    }

    /// The scheduler addresses, in the order they are tried.
    pub fn scheduler_addrs(&self) -> Vec<String> {
        split_addrs(&self.scheduler_addr)
    }

    /// The organizer addresses, in the order they are used.
    pub fn organizer_addrs(&self) -> Vec<String> {
        split_addrs(&self.organizer_addr)
    }

    /// Where waiting artifacts are spooled.
    pub fn effective_spool_dir(&self) -> PathBuf {
        if self.spool_dir.as_os_str().is_empty() { std::env::temp_dir() } else { self.spool_dir.clone() }
    }

    /// The worker id to announce.
    pub fn effective_worker_id(&self) -> String {
        if !self.worker_id.is_empty() {
            return self.worker_id.clone();
        }
        std::env::var("HOSTNAME")
            .ok()
            .filter(|h| !h.is_empty() && h.len() <= 128)
            .unwrap_or_else(|| format!("generator-{}", std::process::id()))
    }
}

/// The generator's keys that were numbers of milliseconds or seconds.
pub const RENAMED: &[Renamed] = &[
    Renamed::Millis { from: "reconnect_max_backoff_ms", to: "reconnect_max_backoff" },
    Renamed::Millis { from: "benchmark.hold_ms", to: "benchmark.hold" },
    Renamed::Secs { from: "comfyui.request_timeout_secs", to: "comfyui.request_timeout" },
    Renamed::Secs { from: "comfyui.connect_timeout_secs", to: "comfyui.connect_timeout" },
    Renamed::Secs { from: "comfyui.lost_after_secs", to: "comfyui.lost_after" },
    Renamed::Secs { from: "comfyui.job_timeout_secs", to: "comfyui.job_timeout" },
];
