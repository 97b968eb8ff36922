//! Generator backends.
//!
//! - builtin: render time per megapixel-step. The builtin backend (as the worker runs it:
//!   blocking pool, progress to a sink, a preview every 5 steps) renders square images of
//!   several sizes; the figure is wall time / (megapixels × steps), best and median of R
//!   runs. Cost should be flat across sizes if it really grows with width × height × steps.
//! - comfyui: the backend's own cost per job, i.e. time not spent inside ComfyUI. The
//!   backend runs jobs one after another against the replay server (recorded traffic
//!   of a real ComfyUI, played without the recorded pauses), so a job's wall time is the
//!   backend's work (template fill, POST /prompt, socket frames, previews decoded and
//!   shrunk, history, /view, PNG inspection) plus the replay server's, on the same cores.
//!
//! Settings: `BENCH_RUNS` (5), `BENCH_COMFY_JOBS` (200).

#![allow(clippy::unwrap_used, clippy::cast_precision_loss)]

use std::time::{Duration, Instant};

use sakuga_generator::{
    backend::{Backend, JobInput, Sink},
    builtin::Builtin,
    comfyui::{ComfyConfig, ComfyUi},
};
use sakuga_proto::v1::{JobKind, JobSpec};
use sakuga_testkit::comfy::{Pacing, ReplayComfy};
use tokio_util::sync::CancellationToken;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn job(size: u32, steps: u32, seed: u64) -> JobInput {
    JobInput {
        job_id: uuid::Uuid::new_v4().to_string(),
        attempt: 1,
        spec: JobSpec {
            kind: JobKind::Image.into(),
            prompt: "sakura over a seaside station at dusk".into(),
            width: size,
            height: size,
            steps,
            seed: Some(seed),
            model: "default".into(),
            ..JobSpec::default()
        }
        .into(),
        prompt: "sakura over a seaside station at dusk".into(),
    }
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn builtin(runs: usize) {
    let backend = Builtin::new(1, 5);
    backend.warm_up(CancellationToken::new()).await.unwrap();
    println!("### builtin: render time per megapixel-step\n");
    println!("| size | steps | runs | best | median | ms per megapixel-step (median) |");
    println!("|---|---|---|---|---|---|");
    for (size, steps) in [(256_u32, 20_u32), (512, 20), (1024, 10)] {
        let mut times = Vec::with_capacity(runs);
        for r in 0..runs {
            let started = Instant::now();
            let out =
                backend.run(job(size, steps, r as u64), Sink::discard(), CancellationToken::new()).await;
            times.push(started.elapsed());
            assert_eq!(out.unwrap().len(), 1);
        }
        let best = *times.iter().min().unwrap();
        let med = median(&mut times);
        let mp_steps = f64::from(size) * f64::from(size) / 1e6 * f64::from(steps);
        println!(
            "| {size}×{size} | {steps} | {runs} | {:.1} ms | {:.1} ms | {:.2} |",
            ms(best),
            ms(med),
            ms(med) / mp_steps
        );
    }
}

async fn comfyui(jobs: usize) {
    let replay = ReplayComfy::start(Pacing::Instant).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("fake.json"), sakuga_testkit::comfy::FAKE_SAMPLER_TEMPLATE).unwrap();
    println!("\n### comfyui: backend overhead per job (replay server, no recorded pauses)\n");
    println!("| recording | previews | jobs | p50 | p95 | max | jobs/s |");
    println!("|---|---|---|---|---|---|---|");
    for (metadata, name, size, steps) in
        [(false, "07: 8 steps, JPEG previews", 512, 8), (true, "14: 4 steps, previews with metadata", 128, 4)]
    {
        let backend = ComfyUi::new(ComfyConfig {
            urls: vec![replay.url()],
            templates_dir: Some(dir.path().to_path_buf()),
            image_template: "fake".into(),
            video_template: "fake".into(),
            preview_metadata: metadata,
            ..ComfyConfig::default()
        })
        .unwrap();
        backend.warm_up(CancellationToken::new()).await.unwrap();
        let mut times = Vec::with_capacity(jobs);
        let all = Instant::now();
        for i in 0..jobs {
            let started = Instant::now();
            let out =
                backend.run(job(size, steps, i as u64), Sink::discard(), CancellationToken::new()).await;
            times.push(started.elapsed());
            assert_eq!(out.unwrap().len(), 1);
        }
        let rate = jobs as f64 / all.elapsed().as_secs_f64();
        times.sort();
        let p95 = times[(times.len() * 95 / 100).min(times.len() - 1)];
        println!(
            "| {name} | {} | {jobs} | {:.2} ms | {:.2} ms | {:.2} ms | {rate:.0} |",
            if metadata { 4 } else { 8 },
            ms(times[times.len() / 2]),
            ms(p95),
            ms(*times.last().unwrap())
        );
    }
}

#[tokio::main]
async fn main() {
    sakuga_mesh::tls::install_crypto_provider();
    builtin(env_or("BENCH_RUNS", 5)).await;
    comfyui(env_or("BENCH_COMFY_JOBS", 200)).await;
}
