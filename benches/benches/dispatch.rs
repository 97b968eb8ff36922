//! Dispatch latency and queue throughput through the real scheduler.
//!
//! Method: one scheduler (in-process, release build) with real PostgreSQL, Redis, OpenBao
//! and mTLS, as in the tests; W simulated workers attach over `WorkerService.Attach` with
//! generator certificates and S slots each, and complete every assignment at once (no
//! rendering: this measures the queue, not the renderer). A client submits N jobs over
//! mTLS with an access token, C at a time.
//! - dispatch latency: from the client sending SubmitJob to the worker receiving the
//!   Assignment, per job (the job's prompt links the two); p50/p95/p99 over the run. It
//!   includes the submit's own validation, insert and commit, so it bounds "committed ->
//!   assigned" from above (the assignment often reaches the worker before the submit's
//!   answer reaches the client);
//! - throughput: jobs completed per second, from the first submit to the last completion.
//!
//! Settings come from the environment: `BENCH_JOBS` (2000), `BENCH_WORKERS` (8),
//! `BENCH_SLOTS` (8), `BENCH_CLIENTS` (16).

#![allow(
    clippy::unwrap_used,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)]

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use sakuga_proto::v1::{
    AttachRequest, JobCompleted, LeasedJob, WorkerHello, attach_request::Msg, attach_response,
    job_service_client::JobServiceClient, worker_service_client::WorkerServiceClient,
};
use tokio_stream::StreamExt as _;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let jobs = env_or("BENCH_JOBS", 2000);
    let workers = env_or("BENCH_WORKERS", 8);
    let slots = env_or("BENCH_SLOTS", 8);
    let clients = env_or("BENCH_CLIENTS", 16);

    let env = sakuga_testkit::TestEnv::new().await?;
    let auth = sakuga_testkit::spawn_auth(sakuga_testkit::auth_config(&env)).await?;
    let mut cfg = sakuga_testkit::scheduler_config(&env, &auth);
    cfg.max_active_jobs_per_user = u32::try_from(jobs).unwrap_or(u32::MAX);
    cfg.lease_ttl_ms = 30_000;
    cfg.heartbeat_interval_ms = 5_000;
    let scheduler = sakuga_testkit::spawn_scheduler(cfg).await?;
    let operator = env.identity("operator").await?;
    let token =
        sakuga_testkit::login(operator.channel(&auth.addr_string())?, "admin", &env.admin_password).await?;

    // Send instants by prompt; the workers read them when an assignment arrives.
    let submitted: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let latencies: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<()>();

    let generator = env.identity("generator").await?;
    for w in 0..workers {
        let channel = generator.channel(&scheduler.addr_string())?;
        let (tx, rx) = tokio::sync::mpsc::channel(4096);
        tx.send(AttachRequest {
            msg: Some(Msg::Hello(WorkerHello {
                worker_id: format!("bench-{w}"),
                slots: u32::try_from(slots).unwrap_or(1),
                backends: vec!["builtin".into()],
                ..WorkerHello::default()
            })),
        })
        .await?;
        let mut inbound = WorkerServiceClient::new(channel)
            .attach(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        let (submitted, latencies, done_tx) = (submitted.clone(), latencies.clone(), done_tx.clone());
        tokio::spawn(async move {
            while let Some(Ok(msg)) = inbound.next().await {
                if let Some(attach_response::Msg::Assignment(a)) = msg.msg {
                    let now = Instant::now();
                    let sent = submitted.lock().unwrap().get(&a.composed_prompt).copied();
                    if let Some(sent) = sent {
                        latencies.lock().unwrap().push(now.saturating_duration_since(sent));
                    }
                    let job = LeasedJob { job_id: a.job_id, lease_token: a.lease_token };
                    let _ = tx
                        .send(AttachRequest {
                            msg: Some(Msg::Completed(JobCompleted { job: Some(job), file_ids: vec![] })),
                        })
                        .await;
                    let _ = done_tx.send(());
                }
            }
        });
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let start = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut submitters = Vec::new();
    for _ in 0..clients {
        let channel = operator.channel(&scheduler.addr_string())?;
        let mut client = JobServiceClient::new(
            tower::ServiceBuilder::new()
                .layer(tonic::service::InterceptorLayer::new(sakuga_testkit::Bearer::new(&token)))
                .service(channel),
        );
        let (next, submitted) = (next.clone(), submitted.clone());
        submitters.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if i >= jobs {
                    return;
                }
                let prompt = format!("bench {i}");
                submitted.lock().unwrap().insert(prompt.clone(), Instant::now());
                let req = sakuga_proto::v1::SubmitJobRequest {
                    spec: Some(sakuga_proto::v1::JobSpec {
                        kind: sakuga_proto::v1::JobKind::Image.into(),
                        prompt,
                        width: 64,
                        height: 64,
                        steps: 1,
                        ..Default::default()
                    }),
                    ..Default::default()
                };
                client.submit_job(req).await.unwrap();
            }
        }));
    }
    for s in submitters {
        s.await?;
    }
    let submit_wall = start.elapsed();
    for _ in 0..jobs {
        tokio::time::timeout(Duration::from_mins(2), done_rx.recv()).await?;
    }
    let wall = start.elapsed();
    let mut lat = latencies.lock().unwrap().clone();
    assert_eq!(lat.len(), jobs, "every assignment matched its submit");
    lat.sort();
    println!("## Dispatch through one scheduler\n");
    println!(
        "| jobs | workers × slots | clients | submit req/s | jobs/s end to end | submit → assigned p50 | p95 | p99 |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    println!(
        "| {jobs} | {workers} × {slots} | {clients} | {:.0} | {:.0} | {:.2} ms | {:.2} ms | {:.2} ms |",
        jobs as f64 / submit_wall.as_secs_f64(),
        jobs as f64 / wall.as_secs_f64(),
        ms(percentile(&lat, 0.50)),
        ms(percentile(&lat, 0.95)),
        ms(percentile(&lat, 0.99)),
    );
    println!(
        "\nmachine: {} cores; {}",
        std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
        std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| m.lines().next().map(str::to_owned))
            .unwrap_or_default()
    );
    scheduler.stop().await?;
    auth.stop().await?;
    env.cleanup().await;
    Ok(())
}
