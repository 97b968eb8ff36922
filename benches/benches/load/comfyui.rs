//! `comfyui`: N jobs through the mesh on one ComfyUI server, replayed at the recorded pace,
//! with the server over-queued and without. The question is how much of the server's
//! time Sakuga leaves idle between two jobs.

use std::time::Duration;

use sakuga_benches::{Section, ms};
use sakuga_generator::comfyui::ComfyConfig;
use sakuga_proto::v1::{JobKind, JobSpec, SubmitJobRequest};
use sakuga_testkit::comfy::{FAKE_SAMPLER_TEMPLATE, Pacing, Recording, ReplayComfy, Version};
use serde_json::json;

use crate::{Settings, mesh::Mesh};

fn job(i: usize) -> SubmitJobRequest {
    SubmitJobRequest {
        spec: Some(JobSpec {
            kind: JobKind::Image.into(),
            prompt: format!("over-queue {i}"),
            width: 512,
            height: 512,
            steps: 8,
            seed: Some(i as u64),
            backend: "comfyui".into(),
            ..JobSpec::default()
        }),
        ..SubmitJobRequest::default()
    }
}

/// One run's figures.
struct Figures {
    /// First submit to the last job's completion, from the jobs' own timestamps.
    wall: Duration,
    /// Times the server's queue was empty when a run ended with more jobs to come.
    empty_between: usize,
    /// Sum and largest of the server's idle gaps between two runs.
    idle_sum: Duration,
    idle_max: Duration,
}

/// Submits `n` jobs at once to a fresh worker driving `replay` with `over_queue` and waits
/// for them (after one untimed job that proves the worker attached).
async fn batch(
    mesh: &mut Mesh,
    replay: &ReplayComfy,
    templates: &std::path::Path,
    over_queue: u32,
    n: usize,
    done: &mut i64,
) -> anyhow::Result<Figures> {
    let url = replay.url();
    mesh.add_generator_with(|gc| {
        gc.backend = "comfyui".into();
        gc.comfyui = ComfyConfig {
            urls: vec![url],
            over_queue,
            // Bare previews: the server then plays 07 (8 steps), not 14 (4 steps).
            preview_metadata: false,
            templates_dir: Some(templates.to_path_buf()),
            image_template: "fake".into(),
            video_template: "fake".into(),
            ..ComfyConfig::default()
        };
    })
    .await?;
    let mut client = mesh.jobs()?;
    client.submit_job(job(0)).await?;
    *done += 1;
    mesh.wait_succeeded(*done, Duration::from_mins(1)).await?;
    let before = replay.runs().len();
    let mut ids = Vec::with_capacity(n);
    for i in 1..=n {
        ids.push(client.submit_job(job(i)).await?.into_inner().job.unwrap().id.parse::<uuid::Uuid>()?);
    }
    *done += n as i64;
    mesh.wait_succeeded(*done, Duration::from_mins(10)).await?;
    let row = mesh
        .env
        .db()
        .await?
        .query_one(
            "SELECT extract(epoch FROM max(finished_at) - min(created_at))::float8 FROM jobs WHERE id = ANY($1)",
            &[&ids],
        )
        .await?;
    let wall = Duration::from_secs_f64(row.get(0));
    let runs = replay.runs();
    let runs = &runs[before..];
    anyhow::ensure!(runs.len() == n, "{} runs for {n} jobs", runs.len());
    let empty_between = runs[..n - 1].iter().filter(|(_, r)| !r.next_waiting).count();
    let gaps: Vec<Duration> = runs
        .windows(2)
        .map(|w| w[1].1.started.saturating_duration_since(w[0].1.ended.unwrap_or(w[1].1.started)))
        .collect();
    mesh.generators.pop().unwrap().stop().await?;
    Ok(Figures {
        wall,
        empty_between,
        idle_sum: gaps.iter().sum(),
        idle_max: gaps.iter().max().copied().unwrap_or_default(),
    })
}

pub async fn run(settings: &Settings) -> anyhow::Result<Section> {
    let n = settings.comfy_jobs.max(2);
    let mut section = Section::new(
        "comfyui",
        "ComfyUI: one server kept busy (over-queue)",
        &format!(
            "A scheduler, an organizer and one generator in-process; the generator drives one \
             replayed ComfyUI server (the recorded traffic of 07, FakeSampler 512×512, 8 steps) \
             whose frames are sent at their recorded offsets (gaps capped at 500 ms), so one job \
             takes as long in the replay as it was recorded. {n} jobs are submitted at once (after \
             one untimed job); the wall time runs from the first job's creation to the last one's \
             completion (rendered, fetched, uploaded, checked, stored), from the jobs' own \
             timestamps. The ideal is {n} × the recorded per-job time: the server never idle. \
             \"Queue empty\" counts the runs that ended with no prompt waiting in the server's \
             queue while more jobs were to come; \"idle\" sums the server's gaps between runs."
        ),
        &[
            "ComfyUI",
            "over_queue",
            "jobs",
            "recorded per job",
            "ideal (jobs × per job)",
            "wall",
            "wall / ideal",
            "queue empty",
            "idle between runs (sum / max)",
        ],
    );
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("fake.json"), FAKE_SAMPLER_TEMPLATE)?;
    let mut mesh = Mesh::start(true).await?;
    let mut done = 0i64;
    for version in Version::ALL {
        for over_queue in [1, 0] {
            let replay = ReplayComfy::start_version(version, Pacing::Recorded).await;
            let per_job = replay.paced_run_time(Recording::FakeSampler);
            let ideal = per_job * u32::try_from(n)?;
            let f = batch(&mut mesh, &replay, dir.path(), over_queue, n, &mut done).await?;
            let ratio = f.wall.as_secs_f64() / ideal.as_secs_f64();
            let name = match version {
                Version::V0_3_64 => "0.3.64",
                Version::V0_26 => "0.26.0",
            };
            section.row(
                vec![
                    name.to_owned(),
                    over_queue.to_string(),
                    n.to_string(),
                    format!("{:.1} ms", ms(per_job)),
                    format!("{:.2} s", ideal.as_secs_f64()),
                    format!("{:.2} s", f.wall.as_secs_f64()),
                    format!("{ratio:.3}×"),
                    format!("{} of {}", f.empty_between, n - 1),
                    format!("{:.0} ms / {:.1} ms", ms(f.idle_sum), ms(f.idle_max)),
                ],
                json!({
                    "comfyui": name, "over_queue": over_queue, "jobs": n,
                    "per_job_ms": ms(per_job), "ideal_secs": ideal.as_secs_f64(),
                    "wall_secs": f.wall.as_secs_f64(), "ratio": ratio,
                    "queue_empty_between": f.empty_between,
                    "idle_sum_ms": ms(f.idle_sum), "idle_max_ms": ms(f.idle_max),
                }),
            );
        }
    }
    mesh.stop().await?;
    Ok(section)
}
