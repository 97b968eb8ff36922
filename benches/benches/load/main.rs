//! `make bench`: the load harness. It starts the mesh against real PostgreSQL, Redis and
//! OpenBao, with mTLS on every connection and an access token on every client call, and
//! measures it from the outside through the public gRPC API. Each section gets a fresh mesh
//! (its own database, Redis prefix and certificates), so no section sees another's jobs.
//!
//! - `rpc`: SubmitJob and GetJob requests/s and latency at 1, 10 and 50 clients;
//! - `dispatch`: submit → assignment at a steady 100 jobs/s and at saturation;
//! - `scale`: 1,000 workers of one slot on one scheduler over 10 connections, heartbeating:
//!   dispatch latency, CPU and commits/s;
//! - `drain`: 20,000 queued jobs through W simulated workers × S slots (the peer's drain);
//! - `replicas`: the same drain with 1, 2 and 3 scheduler replicas on one database;
//! - `deep`: the time per dispatched job with 10^4, 10^5 and 10^6 jobs queued across 10,000
//!   owners;
//! - `concurrency`: five jobs on one worker with five slots against one slot;
//! - `fanout`: WatchJob watchers one scheduler holds with events still under 100 ms;
//! - `store`: StoreArtifact throughput (MiB/s, artifacts/s) of one organizer on local disk
//!   and on S3 (a SeaweedFS on loopback), 1 MiB and 8 MiB PNGs from a few clients;
//! - `comfyui`: 20 jobs through the mesh on one ComfyUI server replayed at the recorded
//!   pace, with the server over-queued (`comfyui.over_queue = 1`) and without;
//! - `processes`: the four services as release binaries (one process each): pipeline
//!   throughput end to end with the benchmark backend, and each process's RSS idle and
//!   under that load.
//!
//! All but the last run the services in this process (tokio tasks, as the tests do); the
//! last runs them as processes. Settings come from `BENCH_*` variables (see `Settings`);
//! `BENCH_SECTIONS=rpc,fanout` runs a subset. With `BENCH_PEER_JSON` (the peer harness's
//! JSON from the same run) a last section sets the figures beside graphile-worker's. The
//! report goes to `BENCH_OUT` (default `.dev/bench`) as `report.json` and `report.md`, and
//! the Markdown is printed.

#![allow(
    clippy::unwrap_used,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::too_many_lines,
    clippy::cast_possible_wrap,
    clippy::similar_names,
    unreachable_pub
)]

mod comfyui;
mod concurrency;
mod dispatch;
mod drain;
mod fanout;
mod mesh;
mod processes;
mod rpc;
mod store;

use std::path::PathBuf;

use sakuga_benches::{Report, env_or};
use serde_json::json;

/// What the run does, from `BENCH_*` variables.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Seconds each (method, clients) point of `rpc` runs.
    pub rpc_secs: u64,
    /// Client counts of `rpc`.
    pub rpc_clients: Vec<usize>,
    /// Seconds of the steady-rate dispatch run.
    pub steady_secs: u64,
    /// Submits per second of the steady run.
    pub steady_rate: u64,
    /// Jobs of the saturation run.
    pub saturation_jobs: usize,
    /// Submitting clients of the saturation and pipeline runs.
    pub saturation_clients: usize,
    /// Simulated workers × slots of the dispatch runs.
    pub workers: usize,
    /// Slots per worker.
    pub slots: usize,
    /// Jobs of the pipeline run.
    pub pipeline_jobs: usize,
    /// Generator processes of the pipeline run.
    pub pipeline_generators: usize,
    /// Slots per generator in the pipeline run.
    pub pipeline_slots: usize,
    /// Largest watcher count the fan-out run tries.
    pub fanout_max: usize,
    /// MiB of artifacts each (backend, size) point of `store` uploads.
    pub store_mib: usize,
    /// Concurrent uploading clients of `store`.
    pub store_clients: usize,
    /// Jobs of each `comfyui` run.
    pub comfy_jobs: usize,
    /// Jobs queued before each `drain` run.
    pub drain_jobs: usize,
    /// Workers × slots of the `drain` runs.
    pub drain_shapes: Vec<drain::Shape>,
    /// Workers of the `scale` run.
    pub scale_workers: usize,
    /// Connections they share.
    pub scale_connections: usize,
    /// Queue depths of the `deep` runs.
    pub deep_depths: Vec<usize>,
    /// Owners the `deep` queue is spread over.
    pub deep_owners: usize,
    /// Jobs each `deep` run takes from the queue.
    pub deep_jobs: usize,
    /// Scheduler replicas of the `replicas` runs.
    pub replica_counts: Vec<usize>,
    /// Workers × slots of every `replicas` run, spread over the replicas.
    pub replica_shape: drain::Shape,
    /// Owners the `replicas` queue is spread over.
    pub replica_owners: usize,
    /// Sections to run.
    pub sections: Vec<String>,
}

impl Settings {
    fn from_env() -> Self {
        let list = |name: &str, default: &str| -> Vec<String> {
            std::env::var(name)
                .unwrap_or_else(|_| default.to_owned())
                .split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect()
        };
        Self {
            rpc_secs: env_or("BENCH_RPC_SECS", 5),
            rpc_clients: list("BENCH_RPC_CLIENTS", "1,10,50").iter().filter_map(|s| s.parse().ok()).collect(),
            steady_secs: env_or("BENCH_STEADY_SECS", 10),
            steady_rate: env_or("BENCH_STEADY_RATE", 100),
            saturation_jobs: env_or("BENCH_JOBS", 2000),
            saturation_clients: env_or("BENCH_CLIENTS", 16),
            workers: env_or("BENCH_WORKERS", 8),
            slots: env_or("BENCH_SLOTS", 8),
            pipeline_jobs: env_or("BENCH_PIPELINE_JOBS", 2000),
            pipeline_generators: env_or("BENCH_GENERATORS", 4),
            pipeline_slots: env_or("BENCH_GENERATOR_SLOTS", 8),
            fanout_max: env_or("BENCH_FANOUT_MAX", 10_000),
            store_mib: env_or("BENCH_STORE_MIB", 256),
            store_clients: env_or("BENCH_STORE_CLIENTS", 4),
            comfy_jobs: env_or("BENCH_COMFY_JOBS", 20),
            drain_jobs: env_or("BENCH_DRAIN_JOBS", 20_000),
            drain_shapes: list("BENCH_DRAIN_SHAPES", "1x10,2x10,8x8")
                .iter()
                .map(|s| {
                    drain::Shape::parse(s).unwrap_or_else(|| {
                        panic!("BENCH_DRAIN_SHAPES: {s:?} is not WORKERSxSLOTS, e.g. 1x10")
                    })
                })
                .collect(),
            deep_depths: list("BENCH_DEEP_DEPTHS", "10000,100000,1000000")
                .iter()
                .map(|s| s.parse().unwrap_or_else(|_| panic!("BENCH_DEEP_DEPTHS: {s:?} is not a count")))
                .collect(),
            deep_owners: env_or("BENCH_DEEP_OWNERS", 10_000),
            scale_workers: env_or("BENCH_SCALE_WORKERS", 1000),
            scale_connections: env_or("BENCH_SCALE_CONNECTIONS", 10),
            deep_jobs: env_or("BENCH_DEEP_JOBS", 50),
            replica_counts: list("BENCH_REPLICAS", "1,2,3")
                .iter()
                .map(|s| match s.parse() {
                    Ok(n) if n > 0 => n,
                    _ => panic!("BENCH_REPLICAS: {s:?} is not a count of replicas"),
                })
                .collect(),
            replica_shape: drain::Shape::parse(
                &std::env::var("BENCH_REPLICA_SHAPE").unwrap_or_else(|_| "6x10".into()),
            )
            .unwrap_or_else(|| panic!("BENCH_REPLICA_SHAPE is not WORKERSxSLOTS, e.g. 6x10")),
            replica_owners: env_or("BENCH_REPLICA_OWNERS", 100),
            sections: list(
                "BENCH_SECTIONS",
                "rpc,dispatch,scale,drain,replicas,deep,concurrency,fanout,store,comfyui,processes",
            ),
        }
    }

    fn json(&self) -> serde_json::Value {
        json!({
            "rpc_secs": self.rpc_secs,
            "rpc_clients": self.rpc_clients,
            "steady_secs": self.steady_secs,
            "steady_rate": self.steady_rate,
            "saturation_jobs": self.saturation_jobs,
            "saturation_clients": self.saturation_clients,
            "workers": self.workers,
            "slots": self.slots,
            "pipeline_jobs": self.pipeline_jobs,
            "pipeline_generators": self.pipeline_generators,
            "pipeline_slots": self.pipeline_slots,
            "fanout_max": self.fanout_max,
            "store_mib": self.store_mib,
            "store_clients": self.store_clients,
            "comfy_jobs": self.comfy_jobs,
            "drain_jobs": self.drain_jobs,
            "drain_shapes": self.drain_shapes.iter().map(|s| s.label()).collect::<Vec<_>>(),
            "deep_depths": self.deep_depths,
            "deep_owners": self.deep_owners,
            "deep_jobs": self.deep_jobs,
            "replica_counts": self.replica_counts,
            "replica_shape": self.replica_shape.label(),
            "replica_owners": self.replica_owners,
            "scale_workers": self.scale_workers,
            "scale_connections": self.scale_connections,
            "build": if cfg!(debug_assertions) { "debug" } else { "release" },
        })
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::from_env();
    let meta =
        std::env::var("BENCH_META").ok().and_then(|m| serde_json::from_str(&m).ok()).unwrap_or(json!({}));
    let mut report = Report::new(meta, settings.json());
    let out = std::env::var("BENCH_OUT")
        .map_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.dev/bench"), PathBuf::from);
    std::fs::create_dir_all(&out)?;
    for section in &settings.sections {
        let started = std::time::Instant::now();
        eprintln!("==> bench section {section}");
        let s = match section.as_str() {
            "rpc" => vec![rpc::run(&settings).await?],
            "dispatch" => vec![dispatch::run(&settings).await?],
            "scale" => vec![dispatch::scale(&settings).await?],
            "drain" => vec![drain::run(&settings).await?],
            "deep" => vec![drain::deep(&settings).await?],
            "replicas" => vec![drain::replicas(&settings).await?],
            "concurrency" => vec![concurrency::run(&settings).await?],
            "fanout" => vec![fanout::run(&settings).await?],
            "store" => vec![store::run(&settings).await?],
            "comfyui" => vec![comfyui::run(&settings).await?],
            "processes" => processes::run(&settings).await?,
            other => anyhow::bail!("BENCH_SECTIONS: unknown section {other:?}"),
        };
        eprintln!("    {section} took {:.0} s", started.elapsed().as_secs_f64());
        for s in s {
            eprint!("{}", s.markdown());
            report.sections.push(s);
        }
        // Written after every section, so a failure later keeps what was measured.
        std::fs::write(out.join("report.json"), serde_json::to_string_pretty(&report)?)?;
        std::fs::write(out.join("report.md"), report.markdown())?;
    }
    if let Ok(path) = std::env::var("BENCH_PEER_JSON") {
        let peer: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
        let s = sakuga_benches::peer::compare(&report.sections, &peer);
        eprint!("{}", s.markdown());
        report.sections.push(s);
        std::fs::write(out.join("report.json"), serde_json::to_string_pretty(&report)?)?;
        std::fs::write(out.join("report.md"), report.markdown())?;
    }
    println!("{}", report.markdown());
    println!("(written to {}/report.json and report.md)", out.display());
    Ok(())
}
