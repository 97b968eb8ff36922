//! `drain`: N jobs already queued, K simulated workers attach and complete every assignment
//! at once; jobs/s from the attach to the last completion committed. The same measurement
//! as the peer harness's throughput run (`benches/peers/graphile`).

use std::time::{Duration, Instant};

use sakuga_benches::Section;
use sakuga_proto::v1::{AttachRequest, JobCompleted, LeasedJob, attach_request::Msg, attach_response};
use serde_json::json;
use tokio_stream::StreamExt as _;

use crate::{
    Settings,
    mesh::{Mesh, SimWorker, attach, attach_on, scheduler_config, small_job},
};

/// One drain shape: `workers` attached sessions of `slots` slots each.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub workers: usize,
    pub slots: usize,
}

impl Shape {
    /// Parses `WORKERSxSLOTS`, e.g. `1x10`.
    pub fn parse(s: &str) -> Option<Self> {
        let (w, c) = s.split_once('x')?;
        let shape = Self { workers: w.trim().parse().ok()?, slots: c.trim().parse().ok()? };
        (shape.workers > 0 && shape.slots > 0).then_some(shape)
    }

    pub fn label(self) -> String {
        format!("{}x{}", self.workers, self.slots)
    }
}

/// Queues `n` jobs: one through `SubmitJob` (so every column is what a submit writes), then
/// `n - 1` copies of its row in one statement, then `VACUUM ANALYZE` as the peer does. With
/// `owners` the copies are spread over that many owners (`owner-0`, `owner-1`, ...), each
/// copy one second younger than the last (a queue that built up over time).
async fn queue(mesh: &Mesh, n: usize, owners: Option<usize>) -> anyhow::Result<()> {
    let first = mesh.jobs()?.submit_job(small_job("drain".into(), "builtin")).await?.into_inner();
    let id: uuid::Uuid = first.job.map(|j| j.id).unwrap_or_default().parse()?;
    let db = mesh.env.db().await?;
    let columns: Vec<String> = db
        .query(
            "SELECT column_name FROM information_schema.columns \
             WHERE table_schema = current_schema() AND table_name = 'jobs' \
             AND column_name NOT IN ('id', 'idempotency_key', 'owner_id', 'created_at') ORDER BY ordinal_position",
            &[],
        )
        .await?
        .iter()
        .map(|r| format!("\"{}\"", r.get::<_, String>(0)))
        .collect();
    let list = columns.join(", ");
    let copies = i64::try_from(n.saturating_sub(1))?;
    let owners = i64::try_from(owners.unwrap_or(0))?;
    db.execute(
        &format!(
            "INSERT INTO jobs (id, owner_id, created_at, {list}) \
             SELECT gen_random_uuid(), \
               CASE WHEN $3::int8 > 0 THEN 'owner-' || (g % $3::int8) ELSE owner_id END, \
               CASE WHEN $3::int8 > 0 THEN created_at - (g * interval '1 second') ELSE created_at END, \
               {list} FROM jobs, generate_series(1, $2::int8) AS g WHERE id = $1"
        ),
        &[&id, &copies, &owners],
    )
    .await?;
    db.batch_execute("VACUUM ANALYZE jobs").await?;
    Ok(())
}

/// Completes every assignment `sim` receives at once, until its stream ends.
fn complete_every_assignment(mut sim: SimWorker) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(Ok(msg)) = sim.inbound.next().await {
            if let Some(attach_response::Msg::Assignment(a)) = msg.msg {
                let job = LeasedJob { job_id: a.job_id, lease_token: a.lease_token };
                let done = Msg::Completed(JobCompleted { job: Some(job), file_ids: vec![] });
                if sim.tx.send(AttachRequest { msg: Some(done) }).await.is_err() {
                    return;
                }
            }
        }
    })
}

/// Attaches the shape's workers, each completing every assignment at once, and returns the
/// time from the first attach to no job left queued, assigned or running. Worker `w`
/// attaches to `schedulers[w % len]`.
async fn drain(mesh: &Mesh, schedulers: &[String], shape: Shape, n: usize) -> anyhow::Result<Duration> {
    let db = mesh.env.db().await?;
    let generator = mesh.env.identity("generator").await?;
    let channels = schedulers.iter().map(|addr| generator.channel(addr)).collect::<Result<Vec<_>, _>>()?;
    let started = Instant::now();
    let mut sessions = Vec::new();
    for w in 0..shape.workers {
        let channel = channels[w % channels.len()].clone();
        let sim = attach_on(channel, &format!("drain-{w}"), u32::try_from(shape.slots)?, "builtin").await?;
        sessions.push(complete_every_assignment(sim));
    }
    let deadline = started + Duration::from_mins(10);
    loop {
        let left: bool = db
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM jobs WHERE status IN ('queued', 'assigned', 'running'))",
                &[],
            )
            .await?
            .get(0);
        if !left {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "{n} jobs not drained within 10 minutes");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let wall = started.elapsed();
    for s in sessions {
        s.abort();
    }
    let done: i64 = db.query_one("SELECT count(*) FROM jobs WHERE status = 'succeeded'", &[]).await?.get(0);
    anyhow::ensure!(done == i64::try_from(n)?, "{done} of {n} jobs succeeded");
    Ok(wall)
}

pub async fn run(settings: &Settings) -> anyhow::Result<Section> {
    let n = settings.drain_jobs;
    let mut section = Section::new(
        "drain",
        "Drain: queued jobs through simulated workers",
        &format!(
            "{n} jobs are queued before any worker attaches (one SubmitJob, then copies of its row in \
             one INSERT, then VACUUM ANALYZE, as the peer queues with one add_jobs and vacuums). \
             Then W simulated workers attach over `WorkerService.Attach` with mTLS and generator \
             certificates, S slots each, and complete every assignment at once. jobs/s = jobs / \
             (first attach → no job left queued, assigned or running, polled every 5 ms), so it \
             includes the attach, as the peer's includes its worker start-up. One fresh scheduler \
             per run, in the harness's process; PostgreSQL and Redis on the same machine."
        ),
        &["W×S", "jobs", "seconds", "jobs/s"],
    );
    for shape in &settings.drain_shapes {
        let mesh = Mesh::start(false).await?;
        queue(&mesh, n, None).await?;
        let wall = drain(&mesh, &[mesh.scheduler.addr_string()], *shape, n).await?;
        mesh.stop().await?;
        let rate = n as f64 / wall.as_secs_f64();
        section.row(
            vec![shape.label(), n.to_string(), format!("{:.2}", wall.as_secs_f64()), format!("{rate:.0}")],
            json!({"shape": shape.label(), "workers": shape.workers, "slots": shape.slots, "jobs": n,
                   "seconds": wall.as_secs_f64(), "jobs_per_sec": rate}),
        );
    }
    Ok(section)
}

/// `replicas`: the drain with 1, 2, 3 scheduler replicas on one database.
pub async fn replicas(settings: &Settings) -> anyhow::Result<Section> {
    let (n, shape, owners) = (settings.drain_jobs, settings.replica_shape, settings.replica_owners);
    let mut section = Section::new(
        "replicas",
        "Drain with scheduler replicas on one database",
        &format!(
            "The drain above ({n} jobs queued, spread over {owners} owners, each owner's jobs over \
             time), with R scheduler replicas on the same database and {} simulated workers of {} \
             slots each attached to the replicas in turn. jobs/s = jobs / (first attach → no job \
             left). The replicas run in the harness's process, on the same 2 cores as PostgreSQL.",
            shape.workers, shape.slots
        ),
        &["replicas", "W×S", "jobs", "seconds", "jobs/s"],
    );
    for &count in &settings.replica_counts {
        let mesh = Mesh::start(false).await?;
        let mut extra = Vec::new();
        for _ in 1..count {
            extra.push(sakuga_testkit::spawn_scheduler(scheduler_config(&mesh.env, &mesh.auth)).await?);
        }
        let addrs: Vec<String> = std::iter::once(mesh.scheduler.addr_string())
            .chain(extra.iter().map(sakuga_testkit::Spawned::addr_string))
            .collect();
        queue(&mesh, n, Some(owners)).await?;
        let wall = drain(&mesh, &addrs, shape, n).await?;
        for s in extra {
            s.stop().await?;
        }
        mesh.stop().await?;
        let rate = n as f64 / wall.as_secs_f64();
        section.row(
            vec![
                count.to_string(),
                shape.label(),
                n.to_string(),
                format!("{:.2}", wall.as_secs_f64()),
                format!("{rate:.0}"),
            ],
            json!({"replicas": count, "shape": shape.label(), "jobs": n, "owners": owners,
                   "seconds": wall.as_secs_f64(), "jobs_per_sec": rate}),
        );
    }
    Ok(section)
}

/// Attaches one worker of one slot to a queue `depth` deep and returns the mean time per
/// job (claim, assignment, completion) over `jobs` jobs taken from it.
async fn take(mesh: &Mesh, depth: usize, jobs: usize) -> anyhow::Result<Duration> {
    let db = mesh.env.db().await?;
    let sim = attach(mesh, "deep", 1, "builtin").await?;
    let started = Instant::now();
    let session = complete_every_assignment(sim);
    let deadline = started + Duration::from_mins(10);
    let target = i64::try_from(jobs)?;
    loop {
        let done: i64 =
            db.query_one("SELECT count(*) FROM jobs WHERE status = 'succeeded'", &[]).await?.get(0);
        if done >= target {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {done} of {jobs} jobs taken from a queue {depth} deep"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let per_job = started.elapsed() / u32::try_from(jobs)?;
    session.abort();
    Ok(per_job)
}

/// `deep`: how the time per dispatched job grows with the queue's depth.
pub async fn deep(settings: &Settings) -> anyhow::Result<Section> {
    let (owners, jobs) = (settings.deep_owners, settings.deep_jobs);
    let mut section = Section::new(
        "deep",
        "Deep queue: time per dispatched job by queue depth",
        &format!(
            "D jobs are queued across {owners} owners (copies of one submitted job's row, each owner's \
             jobs spread over time, then VACUUM ANALYZE). One simulated worker with one slot attaches \
             and completes every assignment at once; the figure is the mean time per job over the \
             first {jobs} (each is a fair-share claim over the whole queue, an assignment over mTLS \
             and a completion), from the attach to the {jobs}th completion committed."
        ),
        &["queued", "owners", "jobs taken", "per job", "jobs/s"],
    );
    for &depth in &settings.deep_depths {
        let mesh = Mesh::start(false).await?;
        queue(&mesh, depth, Some(owners)).await?;
        let per_job = take(&mesh, depth, jobs.min(depth)).await?;
        mesh.stop().await?;
        let ms = per_job.as_secs_f64() * 1000.0;
        section.row(
            vec![
                depth.to_string(),
                owners.to_string(),
                jobs.min(depth).to_string(),
                format!("{ms:.2} ms"),
                format!("{:.0}", 1000.0 / ms),
            ],
            json!({"queued": depth, "owners": owners, "jobs": jobs.min(depth), "per_job_ms": ms}),
        );
    }
    Ok(section)
}
