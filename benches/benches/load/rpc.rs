//! `rpc`: SubmitJob and GetJob at 1, 10 and 50 concurrent clients.

use std::time::{Duration, Instant};

use sakuga_benches::{Section, Stats};
use sakuga_proto::v1::{
    AttachRequest, GetJobRequest, JobCompleted, LeasedJob, attach_request::Msg, attach_response,
};
use serde_json::json;
use tokio_stream::StreamExt as _;

use crate::{
    Settings,
    mesh::{Mesh, attach, small_job},
};

pub async fn run(settings: &Settings) -> anyhow::Result<Section> {
    let mut section = Section::new(
        "rpc",
        "SubmitJob and GetJob: requests/s and latency by concurrent clients",
        &format!(
            "One scheduler and one auth service in the harness's process (release build) with \
             real PostgreSQL, Redis and OpenBao-issued certificates. Each client is its own mTLS \
             connection and sends an access token with every call (verified, rate-limit script \
             run in Redis, audit row for SubmitJob); it sends the next call when the last one \
             answers (closed loop), for {} s per point. SubmitJob inserts a queued 64×64 job (\
             four simulated workers with 8 slots each take and complete every job at once, so \
             the queue stays short, as in a system keeping up); GetJob reads one job. Latency is \
             the client's round trip.",
            settings.rpc_secs
        ),
        &["method", "clients", "requests", "errors", "req/s", "p50", "p95", "p99"],
    );
    let mesh = Mesh::start(false).await?;
    for w in 0..4 {
        let mut sim = attach(&mesh, &format!("drain-{w}"), 8, "builtin").await?;
        tokio::spawn(async move {
            while let Some(Ok(msg)) = sim.inbound.next().await {
                if let Some(attach_response::Msg::Assignment(a)) = msg.msg {
                    let job = LeasedJob { job_id: a.job_id, lease_token: a.lease_token };
                    let done = Msg::Completed(JobCompleted { job: Some(job), file_ids: vec![] });
                    let _ = sim.tx.send(AttachRequest { msg: Some(done) }).await;
                }
            }
        });
    }
    let first = mesh.jobs()?.submit_job(small_job("rpc bench seed".into(), "builtin")).await?.into_inner();
    let job_id = first.job.map(|j| j.id).unwrap_or_default();
    for &clients in &settings.rpc_clients {
        for method in ["SubmitJob", "GetJob"] {
            let mut ready = Vec::new();
            for _ in 0..clients {
                let mut client = mesh.jobs()?;
                // One call before the clock starts: the TLS handshake is not part of a call.
                client.get_job(GetJobRequest { job_id: job_id.clone() }).await?;
                ready.push(client);
            }
            let started = Instant::now();
            let deadline = started + Duration::from_secs(settings.rpc_secs);
            let mut tasks = Vec::new();
            for (c, mut client) in ready.into_iter().enumerate() {
                let job_id = job_id.clone();
                tasks.push(tokio::spawn(async move {
                    let mut lat = Vec::new();
                    let mut errors = 0usize;
                    let mut i = 0usize;
                    while Instant::now() < deadline {
                        let t = Instant::now();
                        let ok = if method == "SubmitJob" {
                            client
                                .submit_job(small_job(format!("rpc {clients} {c} {i}"), "builtin"))
                                .await
                                .is_ok()
                        } else {
                            client.get_job(GetJobRequest { job_id: job_id.clone() }).await.is_ok()
                        };
                        if ok {
                            lat.push(t.elapsed());
                        } else {
                            errors += 1;
                        }
                        i += 1;
                    }
                    (lat, errors)
                }));
            }
            let mut all = Vec::new();
            let mut errors = 0;
            for t in tasks {
                let (lat, e) = t.await?;
                all.extend(lat);
                errors += e;
            }
            let wall = started.elapsed().as_secs_f64();
            let n = all.len();
            let st = Stats::of(&mut all).ok_or_else(|| anyhow::anyhow!("{method}: no call succeeded"))?;
            let rps = n as f64 / wall;
            section.row(
                vec![
                    method.to_owned(),
                    clients.to_string(),
                    n.to_string(),
                    errors.to_string(),
                    format!("{rps:.0}"),
                    format!("{:.2} ms", st.p50_ms),
                    format!("{:.2} ms", st.p95_ms),
                    format!("{:.2} ms", st.p99_ms),
                ],
                json!({"method": method, "clients": clients, "requests": n, "errors": errors, "rps": rps, "latency": st}),
            );
        }
    }
    mesh.stop().await?;
    Ok(section)
}
