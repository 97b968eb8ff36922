//! The session with the scheduler: one `WorkerService.Attach` stream carrying everything
//! (hello, assignments, acks, heartbeats, progress, completion, failure, cancel, drain),
//! reconnecting with backoff. Messages in become calls on the [`Worker`]; its
//! updates go out as messages (`convert`). Jobs keep running while the stream reconnects; the new
//! hello re-announces them with their leases.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use sakuga_mesh::retry::Backoff;
use sakuga_proto::v1::{
    AttachRequest, AttachResponse, Heartbeat, LeasedJob, WorkerDraining, WorkerHello, attach_request::Msg,
    attach_response, worker_service_client::WorkerServiceClient,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Streaming, transport::Channel};
use tracing::{info, warn};

use super::organizer::Organizer;
use crate::{
    Config,
    backend::Backend,
    metrics::{Busy, Families},
    worker::{Event, Worker},
};

/// Runs the worker until `shutdown`, then drains: no new work, running jobs get the grace
/// period, the rest are handed back as retryable failures.
pub(crate) async fn run(
    config: Arc<Config>,
    backend: Arc<dyn Backend>,
    (metrics, busy): (Arc<Families>, Busy),
    schedulers: Vec<Channel>,
    organizers: Vec<Channel>,
    attached: Arc<AtomicBool>,
    shutdown: CancellationToken,
) {
    let (events_tx, mut events_rx) = mpsc::channel::<Event>(1024);
    let store = Arc::new(Organizer::new(organizers, config.upload_chunk_bytes));
    let mut w = Worker::new(config, backend, (metrics, busy), store, events_tx);
    let mut backoff = Backoff::new(
        Duration::from_millis(200),
        w.config().reconnect_max_backoff.max(Duration::from_millis(200)),
    );
    let mut drain_deadline: Option<tokio::time::Instant> = None;
    let mut turn = 0_usize;
    loop {
        if shutdown.is_cancelled() && drain_deadline.is_none() {
            drain_deadline = Some(tokio::time::Instant::now() + grace(w.config()));
        }
        if drain_deadline.is_some() && w.is_idle() {
            info!("worker drained");
            return;
        }
        // Replicas in turn: after a failure or a closed stream, the next one.
        let scheduler = &schedulers[turn % schedulers.len()];
        turn += 1;
        let delay =
            match session(&mut w, scheduler, &mut events_rx, &attached, &shutdown, &mut drain_deadline).await
            {
                Ok(SessionEnd::Drained) => {
                    info!("worker drained");
                    return;
                }
                Ok(SessionEnd::Disconnected) => {
                    backoff.reset();
                    warn!("scheduler stream closed, reconnecting");
                    backoff.next_delay()
                }
                Err(e) => {
                    let delay = backoff.next_delay();
                    warn!(error = %e, backoff_ms = delay.as_millis(), "cannot attach to scheduler, retrying");
                    delay
                }
            };
        attached.store(false, Ordering::SeqCst);
        if let Some(deadline) = drain_deadline
            && tokio::time::Instant::now() >= deadline
        {
            warn!(running = w.running_count(), "grace period over while disconnected; leases will expire");
            return;
        }
        // Keep draining job events while disconnected so job tasks never block.
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = &mut sleep => break,
                () = shutdown.cancelled(), if drain_deadline.is_none() => break,
                ev = events_rx.recv() => match ev {
                    Some(ev) => w.buffer(ev),
                    None => return,
                },
            }
        }
    }
}

fn grace(config: &Config) -> Duration {
    config.server.shutdown_grace
}

enum SessionEnd {
    Drained,
    Disconnected,
}

fn request(msg: Msg) -> AttachRequest {
    AttachRequest { msg: Some(msg) }
}

fn draining_message() -> AttachRequest {
    request(Msg::Draining(WorkerDraining { reason: "shutting down".to_owned() }))
}

/// Opens the stream: hello (re-announcing running jobs), then the welcome, which says
/// which of them this worker keeps and how often to heartbeat.
async fn attach(
    w: &mut Worker,
    scheduler: &Channel,
    attached: &AtomicBool,
) -> Result<(mpsc::Sender<AttachRequest>, Streaming<AttachResponse>, Duration), tonic::Status> {
    let (out, out_rx) = mpsc::channel::<AttachRequest>(256);
    let hello = WorkerHello {
        worker_id: w.id().to_owned(),
        slots: w.backend().slots(),
        queue_slots: w.backend().queue_slots(),
        backends: vec![w.backend().name().to_owned()],
        loaded_models: w.backend().loaded_models(),
        running: w.running().into_iter().map(LeasedJob::from).collect(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
    };
    // The hello is queued before the call so the scheduler reads it first.
    let _ = out.send(request(Msg::Hello(hello))).await;
    let mut client = WorkerServiceClient::new(scheduler.clone());
    let mut inbound = client.attach(ReceiverStream::new(out_rx)).await?.into_inner();
    let welcome = match inbound.message().await? {
        Some(AttachResponse { msg: Some(attach_response::Msg::Welcome(w)) }) => w,
        Some(_) => {
            return Err(tonic::Status::internal("scheduler did not answer hello with welcome"));
        }
        None => return Err(tonic::Status::unavailable("scheduler closed the stream")),
    };
    w.drop_lost(&welcome.dropped_job_ids);
    attached.store(true, Ordering::SeqCst);
    info!(worker_id = %w.id(), session = %welcome.session_id, kept = welcome.kept_job_ids.len(), "attached to scheduler");
    let beat = welcome
        .heartbeat_interval
        .and_then(|d| Some(Duration::new(u64::try_from(d.seconds).ok()?, u32::try_from(d.nanos).ok()?)))
        .filter(|d| !d.is_zero())
        .unwrap_or(Duration::from_secs(2));
    Ok((out, inbound, beat))
}

async fn session(
    w: &mut Worker,
    scheduler: &Channel,
    events_rx: &mut mpsc::Receiver<Event>,
    attached: &AtomicBool,
    shutdown: &CancellationToken,
    drain_deadline: &mut Option<tokio::time::Instant>,
) -> Result<SessionEnd, tonic::Status> {
    let (out, mut inbound, beat) = attach(w, scheduler, attached).await?;
    while let Some(u) = w.next_unsent() {
        if out.send(request(u.into())).await.is_err() {
            return Ok(SessionEnd::Disconnected);
        }
    }
    let mut heartbeat = tokio::time::interval(beat);
    let mut draining = drain_deadline.is_some();
    if draining {
        let _ = out.send(draining_message()).await;
    }
    loop {
        if draining && w.running_count() == 0 {
            return Ok(SessionEnd::Drained);
        }
        let deadline = async {
            match drain_deadline {
                Some(d) => tokio::time::sleep_until(*d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            msg = inbound.message() => match msg {
                Ok(Some(m)) => {
                    if let Some(m) = m.msg {
                        on_message(w, m, draining, &out).await;
                    }
                }
                Ok(None) => return Ok(SessionEnd::Disconnected),
                Err(e) => {
                    warn!(code = ?e.code(), error = %e.message(), "scheduler stream failed");
                    return Ok(SessionEnd::Disconnected);
                }
            },
            ev = events_rx.recv() => match ev {
                Some(Event::Send(u)) => {
                    let Ok(permit) = out.reserve().await else {
                        w.buffer(Event::Send(u));
                        return Ok(SessionEnd::Disconnected);
                    };
                    permit.send(request(u.into()));
                }
                Some(Event::Finished(id)) => w.finished(&id),
                None => return Ok(SessionEnd::Drained),
            },
            _ = heartbeat.tick() => {
                let hb = Heartbeat {
                    running: w.running().into_iter().map(LeasedJob::from).collect(),
                    loaded_models: w.backend().loaded_models(),
                };
                if out.send(request(Msg::Heartbeat(hb))).await.is_err() {
                    return Ok(SessionEnd::Disconnected);
                }
            }
            () = shutdown.cancelled(), if !draining => {
                info!(running = w.running_count(), "draining: no new jobs, running ones may finish");
                draining = true;
                *drain_deadline = Some(tokio::time::Instant::now() + grace(w.config()));
                let _ = out.send(draining_message()).await;
            }
            () = deadline => {
                for u in w.hand_back() {
                    let _ = out.send(request(u.into())).await;
                }
                return Ok(SessionEnd::Drained);
            }
        }
    }
}

async fn on_message(
    w: &mut Worker,
    m: attach_response::Msg,
    draining: bool,
    out: &mpsc::Sender<AttachRequest>,
) {
    match m {
        attach_response::Msg::Assignment(a) => {
            if let Some(refusal) = w.assign(a.into(), draining) {
                let _ = out.send(request(refusal.into())).await;
            }
        }
        attach_response::Msg::Cancel(c) => w.cancel(&c.job_id),
        attach_response::Msg::Withdraw(c) => w.withdraw(&c.job_id),
        attach_response::Msg::LeaseRevoked(r) => w.revoke(&r.job_id, &r.reason),
        attach_response::Msg::Drain(d) => {
            info!(reason = %d.reason, "scheduler asked this worker to drain");
        }
        attach_response::Msg::Welcome(_) => warn!("unexpected second welcome"),
    }
}
