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
use sakuga_proto::v1::{
    AttachRequest, Heartbeat, JobCompleted, LeasedJob, attach_request::Msg, attach_response,
};
use serde_json::json;
use tokio_stream::StreamExt as _;

use crate::{
    Settings,
    mesh::{HEARTBEAT, Mesh, SimWorker, attach, attach_on, small_job},
};

/// Send instants by prompt, and the latencies measured when assignments arrive.
#[derive(Default)]
struct Clock {
    sent: Mutex<HashMap<String, Instant>>,
    latencies: Mutex<Vec<Duration>>,
    submit_rtt: Mutex<Vec<Duration>>,
    done: AtomicUsize,
}

/// Completes each assignment `sim` receives at once, recording its latency in `clock`;
/// with `heartbeat`, also sends a heartbeat that often, as a generator does.
fn serve(mut sim: SimWorker, clock: Arc<Clock>, heartbeat: Option<Duration>) {
    if let Some(every) = heartbeat {
        let tx = sim.tx.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let beat = Msg::Heartbeat(Heartbeat::default());
                if tx.send(AttachRequest { msg: Some(beat) }).await.is_err() {
                    return;
                }
            }
        });
    }
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

/// Attaches `workers` simulated workers that complete each assignment at once.
async fn workers(mesh: &Mesh, settings: &Settings, clock: &Arc<Clock>) -> anyhow::Result<()> {
    for w in 0..settings.workers {
        let sim = attach(mesh, &format!("bench-{w}"), settings.slots as u32, "builtin").await?;
        serve(sim, clock.clone(), None);
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

/// Submits at the steady rate for the steady time over 4 connections (open loop) and waits
/// until every job was assigned; the number of jobs and the wall time.
async fn steady(mesh: &Mesh, settings: &Settings, clock: &Arc<Clock>) -> anyhow::Result<(usize, Duration)> {
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
    wait_done(clock, jobs).await?;
    Ok((jobs, start.elapsed()))
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
    let (jobs, wall) = steady(&mesh, settings, &clock).await?;
    row(&mut section, "steady", &format!("{} jobs/s", settings.steady_rate), jobs, wall, &clock)?;
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

/// CPU seconds this process has used (user and system, every thread).
fn cpu_secs() -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name; clock ticks
    // of 1/100 s (USER_HZ on Linux).
    let ticks: f64 = f.get(11).zip(f.get(12)).map_or(Ok(0.0), |(u, s)| {
        Ok::<_, std::num::ParseFloatError>(u.parse::<f64>()? + s.parse::<f64>()?)
    })?;
    Ok(ticks / 100.0)
}

/// Commits of the section's database so far.
async fn commits(db: &tokio_postgres::Client) -> anyhow::Result<i64> {
    Ok(db
        .query_one("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()", &[])
        .await?
        .get(0))
}

/// `scale`: one scheduler with many attached workers of one slot each, sharing a few
/// connections and heartbeating: dispatch latency at the steady rate, the process's CPU and
/// the database's commits per second.
pub async fn scale(settings: &Settings) -> anyhow::Result<Section> {
    let (n, conns) = (settings.scale_workers, settings.scale_connections.max(1));
    let mut section = Section::new(
        "scale",
        "A farm: many workers attached to one scheduler",
        &format!(
            "{n} simulated workers of one slot attach over {conns} mTLS connections (HTTP/2 streams \
             sharing them) and send a heartbeat every {} s, as generators do. Then the steady run of \
             `dispatch` ({} jobs/s for {} s over 4 client connections): submit → assignment latency. \
             CPU is this process's (the scheduler, the clients and the simulated workers: an upper \
             bound for the scheduler) over the steady run; commits/s are the database's over the \
             same time (submits, claims and completions included), from pg_stat_database.",
            HEARTBEAT.as_secs(),
            settings.steady_rate,
            settings.steady_secs
        ),
        &["workers", "connections", "jobs", "p50", "p95", "p99", "process CPU", "commits/s"],
    );
    let mesh = Mesh::start(false).await?;
    let generator = mesh.env.identity("generator").await?;
    let channels: Vec<_> =
        (0..conns).map(|_| generator.channel(&mesh.scheduler.addr_string())).collect::<Result<_, _>>()?;
    let clock = Arc::new(Clock::default());
    for w in 0..n {
        let sim = attach_on(channels[w % conns].clone(), &format!("farm-{w}"), 1, "builtin").await?;
        serve(sim, clock.clone(), Some(HEARTBEAT));
    }
    // Every heartbeat phase in play before the clock starts.
    tokio::time::sleep(HEARTBEAT).await;
    let db = mesh.env.db().await?;
    let (cpu0, commits0, t0) = (cpu_secs()?, commits(&db).await?, Instant::now());
    let (jobs, _) = steady(&mesh, settings, &clock).await?;
    let (cpu, wall) = (cpu_secs()? - cpu0, t0.elapsed().as_secs_f64());
    // Statistics reach pg_stat_database within a second.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let commits_per_sec = (commits(&db).await? - commits0) as f64 / wall;
    mesh.stop().await?;
    let mut lat = clock.latencies.lock().unwrap().clone();
    anyhow::ensure!(lat.len() == jobs, "{} of {jobs} assignments matched their submit", lat.len());
    let st = Stats::of(&mut lat).unwrap();
    let cpu_share = cpu / wall;
    section.row(
        vec![
            n.to_string(),
            conns.to_string(),
            jobs.to_string(),
            format!("{:.2} ms", st.p50_ms),
            format!("{:.2} ms", st.p95_ms),
            format!("{:.2} ms", st.p99_ms),
            format!("{:.0} % of a core", cpu_share * 100.0),
            format!("{commits_per_sec:.0}"),
        ],
        json!({"workers": n, "connections": conns, "jobs": jobs, "submit_to_assigned": st,
               "process_cpu_cores": cpu_share, "commits_per_sec": commits_per_sec}),
    );
    Ok(section)
}
