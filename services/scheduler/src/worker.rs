//! One worker session on `WorkerService.Attach`: hello, then assignments one way and
//! acks, heartbeats, progress, completion and failure the other, all on one stream.
//! Every message about a job carries its lease token; a stale one changes nothing and is
//! answered with `LeaseRevoked`.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use sakuga_proto::v1::{
    AttachRequest, AttachResponse, LeaseRevoked, LeasedJob, Welcome, WorkerHello, attach_request::Msg,
    attach_response,
};
use tokio::sync::{Notify, mpsc};
use tokio_stream::StreamExt as _;
use tokio_util::sync::CancellationToken;
use tonic::{Status, Streaming};
use tracing::{info, warn};
use uuid::Uuid;

use crate::{
    State,
    dispatch::{WorkerSession, WorkerTx},
    error::SchedulerError,
    grpc,
    store::Completion,
};

/// How long a new stream may take to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

fn parse_leased(job: Option<&LeasedJob>) -> Result<(Uuid, Uuid), Status> {
    let job = job.ok_or_else(|| Status::invalid_argument("job: required"))?;
    let id = Uuid::parse_str(&job.job_id).map_err(|_| Status::invalid_argument("job.job_id: not a UUID"))?;
    let lease = Uuid::parse_str(&job.lease_token)
        .map_err(|_| Status::invalid_argument("job.lease_token: not a UUID"))?;
    Ok((id, lease))
}

fn check_hello(h: &WorkerHello) -> Result<(), Status> {
    if h.worker_id.is_empty() || h.worker_id.len() > 128 {
        return Err(Status::invalid_argument("hello.worker_id: must be 1..=128 characters"));
    }
    if !(1..=64).contains(&h.slots) {
        return Err(Status::invalid_argument("hello.slots: must be between 1 and 64"));
    }
    if h.backends.is_empty() {
        return Err(Status::invalid_argument("hello.backends: must name at least one backend"));
    }
    Ok(())
}

fn revoked(job_id: Uuid, reason: &str) -> AttachResponse {
    AttachResponse {
        msg: Some(attach_response::Msg::LeaseRevoked(LeaseRevoked {
            job_id: job_id.to_string(),
            reason: reason.to_owned(),
        })),
    }
}

/// Starts a session: reads hello, confirms re-announced leases, registers the worker and
/// returns the receiving end of its outbound stream.
pub(crate) async fn attach(
    state: Arc<State>,
    wake: Arc<Notify>,
    mut inbound: Streaming<AttachRequest>,
    shutdown: CancellationToken,
) -> Result<mpsc::Receiver<Result<AttachResponse, Status>>, Status> {
    let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.next())
        .await
        .map_err(|_| Status::deadline_exceeded("no hello within 10 s"))?
        .ok_or_else(|| Status::invalid_argument("stream closed before hello"))??;
    let Some(Msg::Hello(hello)) = first.msg else {
        return Err(Status::invalid_argument("first message must be hello"));
    };
    check_hello(&hello)?;
    let announced: Vec<(Uuid, Uuid)> =
        hello.running.iter().map(|j| parse_leased(Some(j))).collect::<Result<_, _>>()?;
    let kept = state
        .store
        .extend_leases(&hello.worker_id, &announced, state.config.lease_ttl())
        .await
        .map_err(Status::from)?;
    let released = state.store.release_unannounced(&hello.worker_id, &kept).await.map_err(Status::from)?;
    if !released.is_empty() {
        state.families.leases_expired(&released);
        for e in &released {
            warn!(job_id = %e.id, worker_id = %hello.worker_id, status = e.status.as_str(), "job handed back: its worker restarted without it");
            if let Ok(job) = state.store.get(e.id, None).await {
                state.events.publish(e.id, &grpc::status_event(&job));
            }
        }
        wake.notify_one();
    }
    let session = Uuid::now_v7();
    let (tx, rx) = mpsc::channel(256);
    let running: HashMap<Uuid, Uuid> =
        announced.iter().copied().filter(|(id, _)| kept.contains(id)).collect();
    let welcome = Welcome {
        session_id: session.to_string(),
        heartbeat_interval: Some(grpc::duration(Duration::from_millis(state.config.heartbeat_interval_ms))),
        lease_ttl: Some(grpc::duration(state.config.lease_ttl())),
        kept_job_ids: running.keys().map(Uuid::to_string).collect(),
        dropped_job_ids: announced
            .iter()
            .filter(|(id, _)| !kept.contains(id))
            .map(|(id, _)| id.to_string())
            .collect(),
    };
    tx.send(Ok(AttachResponse { msg: Some(attach_response::Msg::Welcome(welcome)) }))
        .await
        .map_err(|_| Status::cancelled("worker went away"))?;
    info!(worker_id = %hello.worker_id, %session, slots = hello.slots, backends = ?hello.backends, kept = running.len(), "worker attached");
    state.registry.register(
        session,
        WorkerSession {
            worker_id: hello.worker_id.clone(),
            slots: hello.slots,
            backends: hello.backends.clone(),
            models: hello.loaded_models.clone(),
            running,
            draining: false,
            tx: tx.clone(),
        },
    );
    wake.notify_one();
    tokio::spawn(async move {
        let mut s =
            Session { state, wake, id: session, worker_id: hello.worker_id, tx, last_write: HashMap::new() };
        loop {
            let msg = tokio::select! {
                () = shutdown.cancelled() => break,
                msg = inbound.next() => msg,
            };
            match msg {
                Some(Ok(AttachRequest { msg: Some(m) })) => {
                    if let Err(e) = s.handle(m).await {
                        warn!(worker_id = %s.worker_id, error = %e, "worker message failed");
                        let _ = s.tx.send(Err(Status::from(e))).await;
                        break;
                    }
                }
                Some(Ok(AttachRequest { msg: None })) => {}
                Some(Err(e)) => {
                    info!(worker_id = %s.worker_id, error = %e, "worker stream ended with error");
                    break;
                }
                None => break,
            }
        }
        s.state.registry.unregister(s.id);
        info!(worker_id = %s.worker_id, session = %s.id, "worker detached");
    });
    Ok(rx)
}

struct Session {
    state: Arc<State>,
    wake: Arc<Notify>,
    id: Uuid,
    worker_id: String,
    tx: WorkerTx,
    last_write: HashMap<Uuid, Instant>,
}

impl Session {
    async fn revoke(&mut self, job: Uuid, reason: &str) {
        self.state.registry.release(self.id, job);
        self.last_write.remove(&job);
        let _ = self.tx.send(Ok(revoked(job, reason))).await;
    }

    fn finished(&mut self, job: Uuid) {
        self.state.registry.release(self.id, job);
        self.last_write.remove(&job);
        self.wake.notify_one();
    }

    async fn handle(&mut self, msg: Msg) -> Result<(), SchedulerError> {
        let ttl = self.state.config.lease_ttl();
        match msg {
            Msg::Hello(_) => Err(SchedulerError::FailedPrecondition("hello was already sent".to_owned())),
            Msg::Ack(ack) => {
                let (id, lease) = parse_leased(ack.job.as_ref()).map_err(|s| invalid(&s))?;
                if self.state.store.mark_running(id, lease, ttl).await? {
                    let job = self.state.store.get(id, None).await?;
                    self.state.events.publish(id, &grpc::status_event(&job));
                } else if !self.state.store.lease_held(id, lease).await? {
                    self.revoke(id, "lease no longer held").await;
                }
                Ok(())
            }
            Msg::Heartbeat(hb) => {
                self.state.registry.set_models(self.id, hb.loaded_models.clone());
                let leases: Vec<(Uuid, Uuid)> = hb
                    .running
                    .iter()
                    .map(|j| parse_leased(Some(j)))
                    .collect::<Result<_, _>>()
                    .map_err(|s| invalid(&s))?;
                let kept = self.state.store.extend_leases(&self.worker_id, &leases, ttl).await?;
                for (id, _) in leases.iter().filter(|(id, _)| !kept.contains(id)) {
                    self.revoke(*id, "lease no longer held").await;
                }
                Ok(())
            }
            Msg::Progress(p) => {
                let (id, lease) = parse_leased(p.job.as_ref()).map_err(|s| invalid(&s))?;
                if !self.state.registry.holds(self.id, id, lease) {
                    self.revoke(id, "lease no longer held").await;
                    return Ok(());
                }
                let progress = p.progress.unwrap_or_default();
                let interval = Duration::from_millis(self.state.config.progress_write_interval_ms);
                let due = self.last_write.get(&id).is_none_or(|t| t.elapsed() >= interval)
                    || progress.step >= progress.total_steps;
                if due {
                    let held = self
                        .state
                        .store
                        .record_progress(
                            id,
                            lease,
                            (progress.step, progress.total_steps, &progress.stage, progress.item),
                            ttl,
                        )
                        .await?;
                    if !held {
                        self.revoke(id, "lease no longer held").await;
                        return Ok(());
                    }
                    self.last_write.insert(id, Instant::now());
                }
                self.state.events.publish(id, &grpc::progress_event(id, progress));
                Ok(())
            }
            Msg::Preview(p) => {
                let (id, lease) = parse_leased(p.job.as_ref()).map_err(|s| invalid(&s))?;
                if self.state.registry.holds(self.id, id, lease) && p.png.len() <= 256 * 1024 {
                    self.state.events.publish(id, &grpc::preview_event(id, p.png, p.step, p.item));
                }
                Ok(())
            }
            Msg::Completed(c) => {
                let (id, lease) = parse_leased(c.job.as_ref()).map_err(|s| invalid(&s))?;
                let file_ids = c
                    .file_ids
                    .iter()
                    .map(|f| Uuid::parse_str(f))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|_| SchedulerError::invalid("completed.file_ids", "not a UUID"))?;
                match self.state.store.complete(id, lease, &file_ids).await? {
                    Completion::Succeeded(job) => {
                        self.state.families.finished(&job);
                        let span = tracing::info_span!("complete", otel.name = "complete", service = "scheduler", job_id = %id);
                        sakuga_mesh::telemetry::set_parent_from_map(&span, &job.trace_context);
                        span.in_scope(|| {
                            info!(job_id = %id, worker_id = %self.worker_id, files = file_ids.len(), "job succeeded");
                        });
                        self.state.events.publish(id, &grpc::status_event(&job));
                        self.finished(id);
                    }
                    // Refused, and the attempt failed in its place (see `Store::complete`).
                    // The worker loses the lease like any worker whose attempt is over; its
                    // session stays, its other jobs are not this one's business.
                    Completion::ForeignFiles { job, foreign } => {
                        self.state.families.finished(&job);
                        warn!(job_id = %id, worker_id = %self.worker_id, foreign = ?foreign, status = job.status.as_str(), "completion refused: it named files not stored for this job");
                        self.state.events.publish(id, &grpc::status_event(&job));
                        self.revoke(id, "completion refused: it named files not stored for this job").await;
                        self.wake.notify_one();
                    }
                    Completion::LeaseLost => self.revoke(id, "finished or lease lost").await,
                }
                Ok(())
            }
            Msg::Failed(f) => {
                let (id, lease) = parse_leased(f.job.as_ref()).map_err(|s| invalid(&s))?;
                let error: String = f.error.chars().take(2000).collect();
                match self.state.store.fail(id, lease, &error, f.retryable).await? {
                    Some(job) => {
                        self.state.families.finished(&job);
                        warn!(job_id = %id, worker_id = %self.worker_id, retryable = f.retryable, status = job.status.as_str(), error = %error, "job attempt failed");
                        self.state.events.publish(id, &grpc::status_event(&job));
                        self.finished(id);
                    }
                    None => self.revoke(id, "finished or lease lost").await,
                }
                Ok(())
            }
            Msg::Canceled(c) => {
                let (id, _) = parse_leased(c.job.as_ref()).map_err(|s| invalid(&s))?;
                self.finished(id);
                Ok(())
            }
            Msg::Draining(d) => {
                info!(worker_id = %self.worker_id, reason = %d.reason, "worker draining");
                self.state.registry.set_draining(self.id);
                Ok(())
            }
        }
    }
}

fn invalid(s: &Status) -> SchedulerError {
    SchedulerError::invalid("msg", s.message().to_owned())
}
