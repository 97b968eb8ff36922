//! `fanout`: how many WatchJob watchers one scheduler holds with events still delivered
//! within 100 ms.

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
    AssignmentAck, AttachRequest, Heartbeat, JobProgress, LeasedJob, ProgressUpdate, WatchJobRequest,
    attach_request::Msg, attach_response, job_event,
};
use serde_json::json;
use tokio_stream::StreamExt as _;

use crate::{
    Settings,
    mesh::{Mesh, attach, small_job},
};

/// Progress events sent per level, and their spacing.
const EVENTS: u32 = 20;
const SPACING: Duration = Duration::from_millis(50);
/// The bar each level must clear.
const BOUND_MS: f64 = 100.0;
/// Streams per connection the harness opens (below HTTP/2's usual 200-stream limit).
const STREAMS_PER_CONNECTION: usize = 150;

pub async fn run(settings: &Settings) -> anyhow::Result<Section> {
    let mut section = Section::new(
        "fanout",
        "WatchJob fan-out: watchers on one scheduler",
        &format!(
            "One scheduler in-process; one simulated worker runs one job and sends {EVENTS} \
             progress updates {} ms apart; W clients watch that job with `WatchJob` (mTLS, a \
             token each; at most {STREAMS_PER_CONNECTION} streams per connection). Latency runs \
             from the worker sending a progress update to a watcher receiving it (same process, \
             same clock). A level passes when every watcher got every update and p99 ≤ {BOUND_MS} \
             ms; levels grow until one fails or `BENCH_FANOUT_MAX` is reached.",
            SPACING.as_millis()
        ),
        &["watchers", "connections", "open all (s)", "delivered", "p50", "p99", "max", "within 100 ms"],
    );
    let mesh = Mesh::start(false).await?;
    let mut sim = attach(&mesh, "fanout-worker", 1, "builtin").await?;
    let job = mesh.jobs()?.submit_job(small_job("fanout".into(), "builtin")).await?.into_inner().job.unwrap();
    let leased = loop {
        let msg = sim.inbound.next().await.ok_or_else(|| anyhow::anyhow!("attach stream ended"))??;
        if let Some(attach_response::Msg::Assignment(a)) = msg.msg {
            break LeasedJob { job_id: a.job_id, lease_token: a.lease_token };
        }
    };
    sim.tx
        .send(AttachRequest {
            msg: Some(Msg::Ack(AssignmentAck { job: Some(leased.clone()), waiting: false })),
        })
        .await?;
    // Keep the lease while watchers come and go.
    let (tx, hb_job) = (sim.tx.clone(), leased.clone());
    let heartbeat = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let hb = Heartbeat { running: vec![hb_job.clone()], loaded_models: vec![] };
            if tx.send(AttachRequest { msg: Some(Msg::Heartbeat(hb)) }).await.is_err() {
                return;
            }
        }
    });
    let worker_tx = sim.tx.clone();
    let mut inbound = sim.inbound;
    tokio::spawn(async move { while inbound.next().await.is_some() {} });

    let mut levels: Vec<usize> =
        [100, 500, 1000, 2000, 3000, 4000, 5000, 7500, 10_000, 15_000, 20_000, 30_000, 50_000]
            .into_iter()
            .filter(|&w| w <= settings.fanout_max)
            .collect();
    if levels.is_empty() {
        levels.push(settings.fanout_max);
    }
    let mut step = 0u32;
    let mut best = 0usize;
    for watchers in levels {
        let connections = watchers.div_ceil(STREAMS_PER_CONNECTION);
        let channels: Vec<_> = (0..connections).map(|_| mesh.jobs()).collect::<Result<_, _>>()?;
        let sent: Arc<Mutex<HashMap<u32, Instant>>> = Arc::default();
        let ready = Arc::new(AtomicUsize::new(0));
        let first = step + 1;
        let last = step + EVENTS;
        let open_started = Instant::now();
        let mut tasks = Vec::with_capacity(watchers);
        for w in 0..watchers {
            let mut client = channels[w % connections].clone();
            let (sent, ready, job_id) = (sent.clone(), ready.clone(), job.id.clone());
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::with_capacity(EVENTS as usize);
                let Ok(resp) = client.watch_job(WatchJobRequest { job_id }).await else {
                    ready.fetch_add(1, Ordering::SeqCst);
                    return (lat, false);
                };
                let mut stream = resp.into_inner();
                let mut counted = false;
                let deadline = tokio::time::Instant::now() + Duration::from_mins(2);
                while let Ok(Some(Ok(msg))) = tokio::time::timeout_at(deadline, stream.next()).await {
                    let now = Instant::now();
                    if !counted {
                        counted = true;
                        ready.fetch_add(1, Ordering::SeqCst);
                    }
                    if let Some(job_event::Kind::Progress(p)) = msg.event.and_then(|e| e.kind) {
                        if p.step < first {
                            continue;
                        }
                        if let Some(t) = sent.lock().unwrap().get(&p.step) {
                            lat.push(now.saturating_duration_since(*t));
                        }
                        if p.step >= last {
                            return (lat, true);
                        }
                    }
                }
                if !counted {
                    ready.fetch_add(1, Ordering::SeqCst);
                }
                (lat, false)
            }));
        }
        let open_deadline = Instant::now() + Duration::from_mins(2);
        while ready.load(Ordering::SeqCst) < watchers && Instant::now() < open_deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let open_secs = open_started.elapsed().as_secs_f64();
        for _ in 0..EVENTS {
            tokio::time::sleep(SPACING).await;
            step += 1;
            sent.lock().unwrap().insert(step, Instant::now());
            let update = ProgressUpdate {
                job: Some(leased.clone()),
                progress: Some(JobProgress {
                    step,
                    total_steps: 1_000_000,
                    stage: "generating".into(),
                    item: 0,
                }),
            };
            worker_tx.send(AttachRequest { msg: Some(Msg::Progress(update)) }).await?;
        }
        let mut all = Vec::new();
        let mut complete = 0usize;
        for t in tasks {
            let (lat, done) = t.await?;
            complete += usize::from(done);
            all.extend(lat);
        }
        let expected = watchers * EVENTS as usize;
        let delivered = all.len();
        let st = Stats::of(&mut all);
        let pass = delivered == expected && st.is_some_and(|s| s.p99_ms <= BOUND_MS);
        let f = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.2} ms"));
        section.row(
            vec![
                watchers.to_string(),
                connections.to_string(),
                format!("{open_secs:.1}"),
                format!("{delivered} / {expected}"),
                f(st.map(|s| s.p50_ms)),
                f(st.map(|s| s.p99_ms)),
                f(st.map(|s| s.max_ms)),
                if pass { "yes" } else { "no" }.to_owned(),
            ],
            json!({"watchers": watchers, "connections": connections, "open_secs": open_secs, "delivered": delivered,
                   "expected": expected, "complete_watchers": complete, "latency": st, "pass": pass}),
        );
        if !pass {
            break;
        }
        best = watchers;
    }
    heartbeat.abort();
    section.notes.push(format!(
        "Most watchers held with every update delivered and p99 ≤ {BOUND_MS} ms: **{best}** \
         (the largest level tried was {}).",
        settings.fanout_max
    ));
    mesh.stop().await?;
    Ok(section)
}
