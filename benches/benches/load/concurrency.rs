//! `concurrency`: five jobs on one worker with five slots against the same five on one slot.

use std::time::{Duration, Instant};

use sakuga_benches::Section;
use sakuga_proto::v1::{JobKind, JobSpec, SubmitJobRequest};
use serde_json::json;

use crate::{Settings, mesh::Mesh};

fn job(backend: &str, size: u32, steps: u32, i: usize) -> SubmitJobRequest {
    SubmitJobRequest {
        spec: Some(JobSpec {
            kind: JobKind::Image.into(),
            prompt: format!("concurrency {i}"),
            width: size,
            height: size,
            steps,
            seed: Some(i as u64),
            backend: backend.to_owned(),
            ..JobSpec::default()
        }),
        ..SubmitJobRequest::default()
    }
}

/// Wall time of five jobs submitted at once to one fresh worker with `slots` slots.
async fn five_jobs(
    mesh: &mut Mesh,
    done: &mut i64,
    backend: &str,
    hold_ms: u64,
    (size, steps): (u32, u32),
    slots: u32,
) -> anyhow::Result<Duration> {
    mesh.add_generator(backend, slots, hold_ms).await?;
    let mut client = mesh.jobs()?;
    // A first job proves the worker attached and warms it; it is not timed.
    client.submit_job(job(backend, 64, 1, 0)).await?;
    *done += 1;
    mesh.wait_succeeded(*done, Duration::from_mins(1)).await?;
    let start = Instant::now();
    for i in 1..=5 {
        client.submit_job(job(backend, size, steps, i)).await?;
    }
    *done += 5;
    mesh.wait_succeeded(*done, Duration::from_mins(5)).await?;
    let wall = start.elapsed();
    mesh.generators.pop().unwrap().stop().await?;
    Ok(wall)
}

pub async fn run(_settings: &Settings) -> anyhow::Result<Section> {
    let mut section = Section::new(
        "concurrency",
        "Concurrency: 5 jobs on one worker, 5 slots vs 1 slot",
        "A scheduler, an organizer and one generator in-process. Five jobs are submitted at \
         once to a fresh worker (after one untimed warm-up job); the wall time runs from the \
         first submit to the fifth job's success (rendered, uploaded, checked, stored, \
         recorded). The prototype ran one job at a time per GPU: its ratio is 1.0 by \
         construction. builtin renders on this machine's CPU, so its gain is capped by the \
         cores; the benchmark backend with `hold = \"1s\"` waits 1 s per job without the CPU, \
         as a job waits on an accelerator.",
        &["backend", "job", "1 slot", "5 slots", "speed-up (1 slot / 5 slots)"],
    );
    let mut mesh = Mesh::start(true).await?;
    let mut done = 0i64;
    let cases: [(&str, u64, (u32, u32), &str); 2] =
        [("builtin", 0, (512, 20), "512×512, 20 steps"), ("benchmark", 1000, (64, 1), "64×64, held 1 s")];
    for (backend, hold, shape, label) in cases {
        let one = five_jobs(&mut mesh, &mut done, backend, hold, shape, 1).await?;
        let five = five_jobs(&mut mesh, &mut done, backend, hold, shape, 5).await?;
        let ratio = one.as_secs_f64() / five.as_secs_f64();
        section.row(
            vec![
                backend.to_owned(),
                label.to_owned(),
                format!("{:.2} s", one.as_secs_f64()),
                format!("{:.2} s", five.as_secs_f64()),
                format!("{ratio:.2}×"),
            ],
            json!({"backend": backend, "job": label, "one_slot_secs": one.as_secs_f64(), "five_slots_secs": five.as_secs_f64(), "speedup": ratio}),
        );
    }
    mesh.stop().await?;
    Ok(section)
}
