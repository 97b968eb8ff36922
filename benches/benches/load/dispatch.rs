//! `dispatch`: submit → assignment latency at a steady rate and at saturation.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use sakuga_benches::{Section, Stats};
use sakuga_proto::v1::{AttachRequest, JobCompleted, LeasedJob, attach_request::Msg, attach_response};
use serde_json::json;
use tokio_stream::StreamExt as _;

use crate::{
    Settings,
    mesh::{Mesh, attach, small_job},
};

/// Send instants by prompt, and the latencies measured when assignments arrive.
#[derive(Default)]
struct Clock {
    sent: Mutex<HashMap<String, Instant>>,
    latencies: Mutex<Vec<Duration>>,
    submit_rtt: Mutex<Vec<Duration>>,
    done: AtomicUsize,
}

/// Attaches `workers` simulated workers that complete each assignment at once.
async fn workers(mesh: &Mesh, settings: &Settings, clock: &Arc<Clock>) -> anyhow::Result<()> {
    for w in 0..settings.workers {
        let mut sim = attach(mesh, &format!("bench-{w}"), settings.slots as u32, "builtin").await?;
        let clock = clock.clone();
        tokio::spawn(async move {
            while let Some(Ok(msg)) = sim.inbound.next().await {
                if let Some(attach_response::Msg::Assignment(a)) = msg.msg {
                    let now = Instant::now();
                    let sent = clock.sent.lock().unwrap().get(&a.composed_prompt).copied();
                    if let Some(sent) = sent {
                        clock.latencies.lock().unwrap().push(now.saturating_duration_since(sent));
                    }
                    let job = LeasedJob { job_id: a.job_id, lease_token: a.lease_token };
                    let completed = Msg::Completed(JobCompleted { job: Some(job), file_ids: vec![] });
                    let _ = sim.tx.send(AttachRequest { msg: Some(completed) }).await;
                    clock.done.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(())
}

async fn wait_done(clock: &Clock, n: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_mins(3);
    while clock.done.load(Ordering::SeqCst) < n {
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {} of {n} jobs assigned",
            clock.done.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

fn row(
    section: &mut Section,
    mode: &str,
    offered: &str,
    jobs: usize,
    wall: Duration,
    clock: &Clock,
) -> anyhow::Result<()> {
    let mut lat = clock.latencies.lock().unwrap().clone();
    anyhow::ensure!(lat.len() == jobs, "{} of {jobs} assignments matched their submit", lat.len());
    let st = Stats::of(&mut lat).unwrap();
    let rtt = Stats::of(&mut clock.submit_rtt.lock().unwrap().clone()).unwrap();
    let rate = jobs as f64 / wall.as_secs_f64();
    section.row(
        vec![
            mode.to_owned(),
            offered.to_owned(),
            jobs.to_string(),
            format!("{rate:.0}"),
            format!("{:.2} ms", st.p50_ms),
            format!("{:.2} ms", st.p95_ms),
            format!("{:.2} ms", st.p99_ms),
            format!("{:.2} ms", rtt.p50_ms),
        ],
        json!({"mode": mode, "offered": offered, "jobs": jobs, "jobs_per_sec": rate, "submit_to_assigned": st, "submit_rtt": rtt}),
    );
    Ok(())
}

pub async fn run(settings: &Settings) -> anyhow::Result<Section> {
    let mut section = Section::new(
        "dispatch",
        "Dispatch latency: submit → assignment received",
        &format!(
            "One scheduler in-process with real PostgreSQL, Redis and mTLS. {} simulated workers \
             attach over `WorkerService.Attach` with generator certificates, {} slots each, and \
             complete each assignment at once (no rendering: this measures the queue). The latency \
             runs from the client sending `SubmitJob` to the worker receiving the `Assignment` \
             (matched by prompt), so it contains the submit's validation, insert and commit and \
             bounds \"committed → assigned\" from above. Steady: an open-loop pacer starts one \
             submit every 1/rate s over 4 connections, whatever the answers do. Saturation: C \
             clients submit back to back. \"jobs/s\" is jobs assigned and completed per second \
             from the first submit to the last completion.",
            settings.workers, settings.slots
        ),
        &["mode", "offered load", "jobs", "jobs/s", "p50", "p95", "p99", "SubmitJob p50"],
    );

    // Steady rate, open loop.
    let mesh = Mesh::start(false).await?;
    let clock = Arc::new(Clock::default());
    workers(&mesh, settings, &clock).await?;
    let jobs = (settings.steady_secs * settings.steady_rate) as usize;
    let period = Duration::from_secs_f64(1.0 / settings.steady_rate as f64);
    let clients: Vec<_> = (0..4).map(|_| mesh.jobs()).collect::<Result<_, _>>()?;
    for c in &clients {
        c.clone().submit_job(small_job("warm-up".into(), "comfyui")).await?;
    }
    let start = Instant::now();
    for i in 0..jobs {
        tokio::time::sleep_until((start + period * i as u32).into()).await;
        let mut client = clients[i % clients.len()].clone();
        let clock = clock.clone();
        tokio::spawn(async move {
            let prompt = format!("steady {i}");
            let t = Instant::now();
            clock.sent.lock().unwrap().insert(prompt.clone(), t);
            client.submit_job(small_job(prompt, "builtin")).await.unwrap();
            clock.submit_rtt.lock().unwrap().push(t.elapsed());
        });
    }
    wait_done(&clock, jobs).await?;
    row(&mut section, "steady", &format!("{} jobs/s", settings.steady_rate), jobs, start.elapsed(), &clock)?;
    mesh.stop().await?;

    // Saturation, closed loop.
    let mesh = Mesh::start(false).await?;
    let clock = Arc::new(Clock::default());
    workers(&mesh, settings, &clock).await?;
    let jobs = settings.saturation_jobs;
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..settings.saturation_clients {
        let mut client = mesh.jobs()?;
        let (next, clock) = (next.clone(), clock.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= jobs {
                    return;
                }
                let prompt = format!("saturation {i}");
                let t = Instant::now();
                clock.sent.lock().unwrap().insert(prompt.clone(), t);
                client.submit_job(small_job(prompt, "builtin")).await.unwrap();
                clock.submit_rtt.lock().unwrap().push(t.elapsed());
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    wait_done(&clock, jobs).await?;
    row(
        &mut section,
        "saturation",
        &format!("{} clients back to back", settings.saturation_clients),
        jobs,
        start.elapsed(),
        &clock,
    )?;
    mesh.stop().await?;
    section.notes.push(
        "Everything (clients, scheduler, simulated workers, PostgreSQL, Redis) shares the machine's \
         cores, so saturation figures are a floor for a scheduler on its own machine."
            .to_owned(),
    );
    Ok(section)
}
