//! The worker: one `WorkerService.Attach` stream to the scheduler carrying everything
//! (hello, assignments, acks, heartbeats, progress, completion, failure, cancel, drain),
//! reconnecting with backoff. Jobs run in their own tasks and keep running while the
//! stream reconnects; the new hello re-announces them with their leases.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use sakuga_mesh::retry::Backoff;
use sakuga_proto::v1::{
    Assignment, AssignmentAck, AttachRequest, AttachResponse, Heartbeat, JobCanceledAck, JobCompleted,
    JobFailed, JobProgress, LeasedJob, PreviewUpdate, ProgressUpdate, WorkerDraining, WorkerHello,
    attach_request::Msg, attach_response, file_service_client::FileServiceClient,
    worker_service_client::WorkerServiceClient,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Streaming, transport::Channel};
use tracing::{info, warn};

use crate::{
    Config,
    backend::{Backend, BackendError, Kind, Report, Sink},
    convert,
    metrics::Families,
    upload,
};

/// Attempts running now on a worker.
pub(crate) type Busy = Arc<std::sync::atomic::AtomicU32>;

/// What job tasks tell the connection loop.
#[derive(Debug)]
enum Event {
    /// A message for the scheduler.
    Send(Msg),
    /// The job's task ended; its slot is free.
    Finished(String),
}

#[derive(Debug)]
struct Running {
    lease: String,
    cancel: CancellationToken,
}

/// Runs the worker until `shutdown`, then drains: no new work, running jobs get the grace
/// period, the rest are handed back as retryable failures.
pub(crate) async fn run(
    config: Arc<Config>,
    backend: Arc<dyn Backend>,
    (metrics, busy): (Arc<Families>, Busy),
    schedulers: Vec<Channel>,
    organizer: Channel,
    attached: Arc<AtomicBool>,
    shutdown: CancellationToken,
) {
    let (events_tx, mut events_rx) = mpsc::channel::<Event>(1024);
    let mut w = Worker {
        id: config.effective_worker_id(),
        config,
        backend,
        metrics,
        busy,
        organizer: FileServiceClient::new(organizer),
        jobs: HashMap::new(),
        unsent: VecDeque::new(),
        events_tx,
    };
    let mut backoff = Backoff::new(
        Duration::from_millis(200),
        Duration::from_millis(w.config.reconnect_max_backoff_ms.max(200)),
    );
    let mut drain_deadline: Option<tokio::time::Instant> = None;
    let mut turn = 0_usize;
    loop {
        if shutdown.is_cancelled() && drain_deadline.is_none() {
            drain_deadline =
                Some(tokio::time::Instant::now() + Duration::from_secs(w.config.shutdown_grace_secs));
        }
        if drain_deadline.is_some() && w.jobs.is_empty() && w.unsent.is_empty() {
            info!("worker drained");
            return;
        }
        // Replicas in turn: after a failure or a closed stream, the next one.
        let scheduler = &schedulers[turn % schedulers.len()];
        turn += 1;
        let delay =
            match w.session(scheduler, &mut events_rx, &attached, &shutdown, &mut drain_deadline).await {
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
            warn!(running = w.jobs.len(), "grace period over while disconnected; leases will expire");
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

enum SessionEnd {
    Drained,
    Disconnected,
}

struct Worker {
    config: Arc<Config>,
    backend: Arc<dyn Backend>,
    metrics: Arc<Families>,
    busy: Busy,
    id: String,
    organizer: FileServiceClient<Channel>,
    jobs: HashMap<String, Running>,
    /// Messages that could not be sent (completions, failures) while disconnected.
    unsent: VecDeque<Msg>,
    events_tx: mpsc::Sender<Event>,
}

fn leased(job_id: &str, lease: &str) -> LeasedJob {
    LeasedJob { job_id: job_id.to_owned(), lease_token: lease.to_owned() }
}

impl Worker {
    /// Keeps what must survive a disconnect; progress and previews are dropped (the next
    /// one supersedes them).
    fn buffer(&mut self, ev: Event) {
        match ev {
            Event::Finished(id) => {
                self.jobs.remove(&id);
            }
            Event::Send(m @ (Msg::Completed(_) | Msg::Failed(_) | Msg::Canceled(_))) => {
                self.unsent.push_back(m);
            }
            Event::Send(_) => {}
        }
    }

    fn running(&self) -> Vec<LeasedJob> {
        self.jobs.iter().map(|(id, r)| leased(id, &r.lease)).collect()
    }

    /// Opens the stream: hello (re-announcing running jobs), then the welcome, which says
    /// which of them this worker keeps and how often to heartbeat.
    async fn attach(
        &mut self,
        scheduler: &Channel,
        attached: &AtomicBool,
    ) -> Result<(mpsc::Sender<AttachRequest>, Streaming<AttachResponse>, Duration), tonic::Status> {
        let (out, out_rx) = mpsc::channel::<AttachRequest>(256);
        let hello = WorkerHello {
            worker_id: self.id.clone(),
            slots: self.backend.slots(),
            backends: vec![self.backend.name().to_owned()],
            loaded_models: self.backend.loaded_models(),
            running: self.running(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
        };
        // The hello is queued before the call so the scheduler reads it first.
        let _ = out.send(AttachRequest { msg: Some(Msg::Hello(hello)) }).await;
        let mut client = WorkerServiceClient::new(scheduler.clone());
        let mut inbound = client.attach(ReceiverStream::new(out_rx)).await?.into_inner();
        let welcome = match inbound.message().await? {
            Some(AttachResponse { msg: Some(attach_response::Msg::Welcome(w)) }) => w,
            Some(_) => {
                return Err(tonic::Status::internal("scheduler did not answer hello with welcome"));
            }
            None => return Err(tonic::Status::unavailable("scheduler closed the stream")),
        };
        for id in &welcome.dropped_job_ids {
            if let Some(r) = self.jobs.remove(id) {
                warn!(job_id = %id, "lease lost while disconnected, stopping job");
                r.cancel.cancel();
            }
        }
        attached.store(true, Ordering::SeqCst);
        info!(worker_id = %self.id, session = %welcome.session_id, kept = welcome.kept_job_ids.len(), "attached to scheduler");
        let beat = welcome
            .heartbeat_interval
            .and_then(|d| Some(Duration::new(u64::try_from(d.seconds).ok()?, u32::try_from(d.nanos).ok()?)))
            .filter(|d| !d.is_zero())
            .unwrap_or(Duration::from_secs(2));
        Ok((out, inbound, beat))
    }

    async fn session(
        &mut self,
        scheduler: &Channel,
        events_rx: &mut mpsc::Receiver<Event>,
        attached: &AtomicBool,
        shutdown: &CancellationToken,
        drain_deadline: &mut Option<tokio::time::Instant>,
    ) -> Result<SessionEnd, tonic::Status> {
        let send = |m: Msg| AttachRequest { msg: Some(m) };
        let (out, mut inbound, beat) = self.attach(scheduler, attached).await?;
        while let Some(m) = self.unsent.pop_front() {
            if out.send(send(m)).await.is_err() {
                return Ok(SessionEnd::Disconnected);
            }
        }
        let mut heartbeat = tokio::time::interval(beat);
        let mut draining = drain_deadline.is_some();
        if draining {
            let _ =
                out.send(send(Msg::Draining(WorkerDraining { reason: "shutting down".to_owned() }))).await;
        }
        loop {
            if draining && self.jobs.is_empty() {
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
                            self.on_message(m, draining, &out).await;
                        }
                    }
                    Ok(None) => return Ok(SessionEnd::Disconnected),
                    Err(e) => {
                        warn!(code = ?e.code(), error = %e.message(), "scheduler stream failed");
                        return Ok(SessionEnd::Disconnected);
                    }
                },
                ev = events_rx.recv() => match ev {
                    Some(Event::Send(m)) => {
                        if let Err(e) = out.send(send(m)).await {
                            if let Some(m) = e.0.msg { self.buffer(Event::Send(m)); }
                            return Ok(SessionEnd::Disconnected);
                        }
                    }
                    Some(Event::Finished(id)) => { self.jobs.remove(&id); }
                    None => return Ok(SessionEnd::Drained),
                },
                _ = heartbeat.tick() => {
                    let hb = Heartbeat { running: self.running(), loaded_models: self.backend.loaded_models() };
                    if out.send(send(Msg::Heartbeat(hb))).await.is_err() {
                        return Ok(SessionEnd::Disconnected);
                    }
                }
                () = shutdown.cancelled(), if !draining => {
                    info!(running = self.jobs.len(), "draining: no new jobs, running ones may finish");
                    draining = true;
                    *drain_deadline = Some(tokio::time::Instant::now() + Duration::from_secs(self.config.shutdown_grace_secs));
                    let _ = out.send(send(Msg::Draining(WorkerDraining { reason: "shutting down".to_owned() }))).await;
                }
                () = deadline => {
                    self.hand_back(&out).await;
                    return Ok(SessionEnd::Drained);
                }
            }
        }
    }

    /// Grace period over: stop running jobs and give them back for another worker.
    async fn hand_back(&mut self, out: &mpsc::Sender<AttachRequest>) {
        warn!(running = self.jobs.len(), "grace period over, handing running jobs back");
        for (id, r) in self.jobs.drain() {
            r.cancel.cancel();
            let failed = JobFailed {
                job: Some(leased(&id, &r.lease)),
                error: "worker shut down before the job finished".to_owned(),
                retryable: true,
            };
            let _ = out.send(AttachRequest { msg: Some(Msg::Failed(failed)) }).await;
        }
    }

    async fn on_message(
        &mut self,
        m: attach_response::Msg,
        draining: bool,
        out: &mpsc::Sender<AttachRequest>,
    ) {
        match m {
            attach_response::Msg::Assignment(a) => {
                let full = self.jobs.len() >= self.backend.slots() as usize;
                if draining || full {
                    let failed = JobFailed {
                        job: Some(leased(&a.job_id, &a.lease_token)),
                        error: if draining { "worker is draining" } else { "worker has no free slot" }
                            .to_owned(),
                        retryable: true,
                    };
                    let _ = out.send(AttachRequest { msg: Some(Msg::Failed(failed)) }).await;
                    return;
                }
                let cancel = CancellationToken::new();
                self.jobs.insert(
                    a.job_id.clone(),
                    Running { lease: a.lease_token.clone(), cancel: cancel.clone() },
                );
                info!(job_id = %a.job_id, attempt = a.attempt, "job received");
                tokio::spawn(run_job(
                    a,
                    self.backend.clone(),
                    (self.metrics.clone(), self.busy.clone()),
                    self.config.clone(),
                    self.organizer.clone(),
                    self.events_tx.clone(),
                    cancel,
                ));
            }
            attach_response::Msg::Cancel(c) => {
                if let Some(r) = self.jobs.get(&c.job_id) {
                    info!(job_id = %c.job_id, "cancel requested");
                    r.cancel.cancel();
                }
            }
            attach_response::Msg::LeaseRevoked(r) => {
                if let Some(job) = self.jobs.remove(&r.job_id) {
                    warn!(job_id = %r.job_id, reason = %r.reason, "lease revoked, stopping job");
                    job.cancel.cancel();
                }
            }
            attach_response::Msg::Drain(d) => {
                info!(reason = %d.reason, "scheduler asked this worker to drain");
            }
            attach_response::Msg::Welcome(_) => warn!("unexpected second welcome"),
        }
    }
}

/// Runs one job: ack, run the backend with progress, upload every artifact, then complete
/// — or fail (retryable or not), or acknowledge a cancel. Nothing is reported completed
/// before every artifact is stored.
async fn run_job(
    a: Assignment,
    backend: Arc<dyn Backend>,
    (metrics, busy): (Arc<Families>, Busy),
    config: Arc<Config>,
    organizer: FileServiceClient<Channel>,
    events: mpsc::Sender<Event>,
    cancel: CancellationToken,
) {
    let job = leased(&a.job_id, &a.lease_token);
    let emit = |m: Msg| {
        let events = events.clone();
        async move {
            let _ = events.send(Event::Send(m)).await;
        }
    };
    emit(Msg::Ack(AssignmentAck { job: Some(job.clone()) })).await;
    let started = std::time::Instant::now();
    busy.fetch_add(1, Ordering::Relaxed);
    // Generation and uploads join the job's trace (carried in the assignment).
    let span = tracing::info_span!("generate", otel.name = "generate", service = "generator", job_id = %a.job_id, attempt = a.attempt);
    sakuga_mesh::telemetry::set_parent_from_map(&span, &a.trace_context);
    let outcome = tracing::Instrument::instrument(
        produce_and_store(&a, &job, backend.as_ref(), &config, &organizer, &events, &cancel),
        span,
    )
    .await;
    busy.fetch_sub(1, Ordering::Relaxed);
    let result = match &outcome {
        Ok(_) => "succeeded",
        Err(BackendError::Canceled) => "canceled",
        Err(BackendError::Permanent(_)) => "failed",
        Err(BackendError::Retryable(_)) => "retryable",
    };
    metrics.attempt(backend.name(), result, started.elapsed().as_secs_f64());
    let msg = match outcome {
        Ok(file_ids) => {
            info!(job_id = %a.job_id, files = file_ids.len(), "job done");
            Msg::Completed(JobCompleted { job: Some(job), file_ids })
        }
        Err(BackendError::Canceled) => {
            info!(job_id = %a.job_id, "job stopped");
            Msg::Canceled(JobCanceledAck { job: Some(job) })
        }
        Err(BackendError::Permanent(error)) => {
            warn!(job_id = %a.job_id, %error, "job failed");
            Msg::Failed(JobFailed { job: Some(job), error, retryable: false })
        }
        Err(BackendError::Retryable(error)) => {
            warn!(job_id = %a.job_id, %error, "job attempt failed, retryable");
            Msg::Failed(JobFailed { job: Some(job), error, retryable: true })
        }
    };
    emit(msg).await;
    let _ = events.send(Event::Finished(a.job_id)).await;
}

async fn produce_and_store(
    a: &Assignment,
    job: &LeasedJob,
    backend: &dyn Backend,
    config: &Config,
    organizer: &FileServiceClient<Channel>,
    events: &mpsc::Sender<Event>,
    cancel: &CancellationToken,
) -> Result<Vec<String>, BackendError> {
    let input = convert::job_input(a)?;
    let target = upload::Target {
        job_id: a.job_id.clone(),
        lease_token: job.lease_token.clone(),
        owner_id: a.owner_id.clone(),
        project_id: a.project_id.clone(),
        kind: input.kind(),
        width: input.spec.width,
        height: input.spec.height,
        frames: if input.kind() == Kind::Video { input.spec.frames } else { 1 },
    };
    let (tx, lease) = (events.clone(), job.clone());
    let last = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let seen = last.clone();
    // Progress and previews are best effort (the next one supersedes a dropped one);
    // completion is not.
    let sink = Sink::new(move |report| {
        let msg = match report {
            Report::Step { step, total, item, stage } => {
                seen.store(total, Ordering::Relaxed);
                Msg::Progress(ProgressUpdate {
                    job: Some(lease.clone()),
                    progress: Some(JobProgress { step, total_steps: total, stage, item }),
                })
            }
            Report::Preview { png, step, item } => {
                Msg::Preview(PreviewUpdate { job: Some(lease.clone()), png, step, item })
            }
        };
        let _ = tx.try_send(Event::Send(msg));
    });
    let artifacts = backend.run(input, sink, cancel.clone()).await?;
    if cancel.is_cancelled() {
        return Err(BackendError::Canceled);
    }
    let total = last.load(Ordering::Relaxed);
    let mut file_ids = Vec::with_capacity(artifacts.len());
    for (index, artifact) in (0_u32..).zip(&artifacts) {
        let uploading =
            JobProgress { step: total, total_steps: total, stage: "uploading".to_owned(), item: index };
        let _ = events.try_send(Event::Send(Msg::Progress(ProgressUpdate {
            job: Some(job.clone()),
            progress: Some(uploading),
        })));
        let upload = tracing::info_span!("upload", otel.name = "upload", service = "generator", index);
        let id = tracing::Instrument::instrument(
            upload::store(organizer, &target, index, artifact, config.upload_chunk_bytes),
            upload,
        )
        .await
        // A refused artifact (a failed check) is retried like a failed upload: another
        // attempt may render it right; the scheduler's attempt limit bounds the retries.
        .map_err(|e| BackendError::Retryable(e.to_string()))?;
        file_ids.push(id);
    }
    Ok(file_ids)
}
