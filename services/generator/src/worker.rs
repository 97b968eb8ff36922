//! The worker's jobs: what it does with an assignment (acknowledge it, run the backend with
//! progress, upload every artifact, then report completion or failure), a cancel, a revoked
//! lease, and the hand-back when the grace period of a drain is over. Jobs run in their own
//! tasks and keep running while the session with the scheduler (`api::scheduler`, which
//! turns the wire into these calls and [`Update`]s back into messages) reconnects.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    Config,
    backend::{Backend, BackendError, JobInput, Kind, Report, Sink},
    deliver::{Delivery, DeliveryError, deliver},
    hold::Holder,
    metrics::{Busy, Families},
    upload::{ArtifactStore, Target},
};

/// A job as leased to this worker: every word about it quotes the lease token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Lease {
    /// Job id.
    pub(crate) job_id: String,
    /// The token the scheduler leased the job under.
    pub(crate) token: String,
}

/// A job the scheduler assigned to this worker.
#[derive(Debug)]
pub(crate) struct Assignment {
    /// The job and its lease.
    pub(crate) lease: Lease,
    /// 1-based attempt number.
    pub(crate) attempt: u32,
    /// Owner, for the stored artifacts.
    pub(crate) owner_id: String,
    /// Project, empty for unsorted.
    pub(crate) project_id: String,
    /// W3C trace context of the job's trace.
    pub(crate) trace_context: HashMap<String, String>,
    /// What the backend runs; an assignment without one fails for good once acknowledged.
    pub(crate) input: Result<JobInput, BackendError>,
}

/// What the worker tells the scheduler about a job.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Update {
    /// The assignment arrived and the job starts, or waits in the backend's queue behind
    /// running jobs (`waiting`).
    Ack {
        /// The job.
        lease: Lease,
        /// Queued behind running jobs (every slot was taken when it arrived).
        waiting: bool,
    },
    /// Work done so far over the whole job.
    Progress {
        /// The job.
        lease: Lease,
        /// Units done.
        step: u32,
        /// Units in the whole job.
        total: u32,
        /// What is happening.
        stage: String,
        /// Batch item.
        item: u32,
    },
    /// A small PNG of the work in progress.
    Preview {
        /// The job.
        lease: Lease,
        /// PNG bytes.
        png: Vec<u8>,
        /// Step it was taken at.
        step: u32,
        /// Batch item.
        item: u32,
    },
    /// Every artifact is stored.
    Completed {
        /// The job.
        lease: Lease,
        /// File ids of the stored artifacts, in batch order.
        file_ids: Vec<String>,
    },
    /// The attempt failed.
    Failed {
        /// The job.
        lease: Lease,
        /// What went wrong, for people.
        error: String,
        /// Whether another attempt may succeed.
        retryable: bool,
        /// The platform failed, not the job (the artifacts could not be stored within
        /// `upload_wait_max`): the attempt is not counted.
        platform: bool,
    },
    /// The job stopped after a cancel.
    Canceled(Lease),
    /// The job left the backend's queue before it started, after a withdraw.
    Withdrawn(Lease),
}

/// What job tasks tell the session.
#[derive(Debug)]
pub(crate) enum Event {
    /// An update for the scheduler.
    Send(Update),
    /// The job's task ended; its slot is free.
    Finished(String),
}

#[derive(Debug)]
struct Running {
    lease: String,
    cancel: CancellationToken,
}

/// What a job's task needs besides its assignment.
struct Job {
    backend: Arc<dyn Backend>,
    metrics: Arc<Families>,
    busy: Busy,
    store: Arc<dyn ArtifactStore>,
    holder: Holder,
    wait_max: std::time::Duration,
    events: mpsc::Sender<Event>,
}

/// The jobs of this worker, and the outcomes not yet told to the scheduler.
pub(crate) struct Worker {
    config: Arc<Config>,
    backend: Arc<dyn Backend>,
    metrics: Arc<Families>,
    busy: Busy,
    id: String,
    store: Arc<dyn ArtifactStore>,
    holder: Holder,
    jobs: HashMap<String, Running>,
    /// Outcomes (completions, failures, cancels) that could not be sent while disconnected.
    unsent: VecDeque<Update>,
    events_tx: mpsc::Sender<Event>,
}

impl Worker {
    /// A worker with no jobs yet; job tasks report on `events_tx`.
    pub(crate) fn new(
        config: Arc<Config>,
        backend: Arc<dyn Backend>,
        (metrics, busy): (Arc<Families>, Busy),
        store: Arc<dyn ArtifactStore>,
        events_tx: mpsc::Sender<Event>,
    ) -> Self {
        let holder = Holder::new(config.held_memory_max_bytes, config.effective_spool_dir(), metrics.clone());
        Self {
            holder,
            id: config.effective_worker_id(),
            config,
            backend,
            metrics,
            busy,
            store,
            jobs: HashMap::new(),
            unsent: VecDeque::new(),
            events_tx,
        }
    }

    /// The id this worker announces.
    pub(crate) fn id(&self) -> &str {
        &self.id
    }

    /// The backend (slots, name, loaded models).
    pub(crate) fn backend(&self) -> &dyn Backend {
        self.backend.as_ref()
    }

    /// The configuration.
    pub(crate) fn config(&self) -> &Config {
        &self.config
    }

    /// Jobs running now.
    pub(crate) fn running(&self) -> Vec<Lease> {
        self.jobs.iter().map(|(id, r)| Lease { job_id: id.clone(), token: r.lease.clone() }).collect()
    }

    /// Number of jobs running now.
    pub(crate) fn running_count(&self) -> usize {
        self.jobs.len()
    }

    /// No job running and nothing left to tell.
    pub(crate) fn is_idle(&self) -> bool {
        self.jobs.is_empty() && self.unsent.is_empty()
    }

    /// Keeps what must survive a disconnect; progress and previews are dropped (the next
    /// one supersedes them).
    pub(crate) fn buffer(&mut self, ev: Event) {
        match ev {
            Event::Finished(id) => self.finished(&id),
            Event::Send(
                u @ (Update::Completed { .. }
                | Update::Failed { .. }
                | Update::Canceled(_)
                | Update::Withdrawn(_)),
            ) => {
                self.unsent.push_back(u);
            }
            Event::Send(_) => {}
        }
    }

    /// The oldest outcome not yet told.
    pub(crate) fn next_unsent(&mut self) -> Option<Update> {
        self.unsent.pop_front()
    }

    /// The job's task ended; its slot is free.
    pub(crate) fn finished(&mut self, job_id: &str) {
        self.jobs.remove(job_id);
    }

    /// Stops the jobs whose leases the scheduler dropped while this worker was away.
    pub(crate) fn drop_lost(&mut self, job_ids: &[String]) {
        for id in job_ids {
            if let Some(r) = self.jobs.remove(id) {
                warn!(job_id = %id, "lease lost while disconnected, stopping job");
                r.cancel.cancel();
            }
        }
    }

    /// Starts an assigned job in its own task, or refuses it (as a retryable failure, the
    /// returned update) while draining or without a free slot.
    pub(crate) fn assign(&mut self, a: Assignment, draining: bool) -> Option<Update> {
        let full = self.jobs.len() >= (self.backend.slots() + self.backend.queue_slots()) as usize;
        if draining || full {
            let error = if draining { "worker is draining" } else { "worker has no free slot" };
            return Some(Update::Failed {
                lease: a.lease,
                error: error.to_owned(),
                retryable: true,
                platform: false,
            });
        }
        let cancel = CancellationToken::new();
        self.jobs
            .insert(a.lease.job_id.clone(), Running { lease: a.lease.token.clone(), cancel: cancel.clone() });
        // Every slot taken: the job waits in the backend's queue and stays assigned until its
        // first progress (which comes at once if a slot frees meanwhile).
        let waiting = self.jobs.len() > self.backend.slots() as usize;
        info!(job_id = %a.lease.job_id, attempt = a.attempt, waiting, "job received");
        let job = Job {
            backend: self.backend.clone(),
            metrics: self.metrics.clone(),
            busy: self.busy.clone(),
            store: self.store.clone(),
            holder: self.holder.clone(),
            wait_max: self.config.upload_wait_max,
            events: self.events_tx.clone(),
        };
        tokio::spawn(run_job(a, job, cancel, waiting));
        None
    }

    /// The scheduler asked to stop a job: its task reports it canceled.
    pub(crate) fn cancel(&self, job_id: &str) {
        if let Some(r) = self.jobs.get(job_id) {
            info!(job_id = %job_id, "cancel requested");
            r.cancel.cancel();
        }
    }

    /// The scheduler asked to take a job waiting in the backend's queue out of it (another
    /// worker has a free slot): if it has not started, its task reports it withdrawn.
    pub(crate) fn withdraw(&self, job_id: &str) {
        if self.jobs.contains_key(job_id) {
            let asked = self.backend.withdraw(job_id);
            info!(job_id = %job_id, asked, "withdraw requested");
        }
    }

    /// The job's lease is no longer valid: it stops, and nothing more is said about it.
    pub(crate) fn revoke(&mut self, job_id: &str, reason: &str) {
        if let Some(job) = self.jobs.remove(job_id) {
            warn!(job_id = %job_id, reason = %reason, "lease revoked, stopping job");
            job.cancel.cancel();
        }
    }

    /// Grace period over: stops running jobs and gives them back (retryable failures) for
    /// another worker.
    pub(crate) fn hand_back(&mut self) -> Vec<Update> {
        warn!(running = self.jobs.len(), "grace period over, handing running jobs back");
        self.jobs
            .drain()
            .map(|(id, r)| {
                r.cancel.cancel();
                Update::Failed {
                    lease: Lease { job_id: id, token: r.lease },
                    error: "worker shut down before the job finished".to_owned(),
                    retryable: true,
                    platform: false,
                }
            })
            .collect()
    }
}

/// Runs one job: ack, run the backend with progress, upload every artifact (waiting for
/// the platform when storage is away, see `deliver`), then complete — or fail (retryable
/// or not, the job's or the platform's), or acknowledge a cancel. Nothing is reported
/// completed before every artifact is stored.
async fn run_job(a: Assignment, job: Job, cancel: CancellationToken, waiting: bool) {
    let emit = |u: Update| {
        let events = job.events.clone();
        async move {
            let _ = events.send(Event::Send(u)).await;
        }
    };
    emit(Update::Ack { lease: a.lease.clone(), waiting }).await;
    let started = std::time::Instant::now();
    job.busy.fetch_add(1, Ordering::Relaxed);
    // Generation and uploads join the job's trace (carried in the assignment).
    let span = tracing::info_span!("generate", otel.name = "generate", service = "generator", job_id = %a.lease.job_id, attempt = a.attempt);
    sakuga_mesh::telemetry::set_parent_from_map(&span, &a.trace_context);
    let outcome = tracing::Instrument::instrument(produce_and_store(&a, &job, &cancel), span).await;
    job.busy.fetch_sub(1, Ordering::Relaxed);
    let result = match &outcome {
        Ok(_) => "succeeded",
        Err(Stop::Backend(BackendError::Canceled)) => "canceled",
        Err(Stop::Backend(BackendError::Withdrawn)) => "withdrawn",
        Err(Stop::Backend(BackendError::Permanent(_))) => "failed",
        Err(Stop::Backend(BackendError::Retryable(_))) => "retryable",
        Err(Stop::Platform(_)) => "platform",
    };
    job.metrics.attempt(job.backend.name(), result, started.elapsed().as_secs_f64());
    let job_id = a.lease.job_id.clone();
    let lease = a.lease;
    let update = match outcome {
        Ok(file_ids) => {
            info!(job_id = %job_id, files = file_ids.len(), "job done");
            Update::Completed { lease, file_ids }
        }
        Err(Stop::Backend(BackendError::Canceled)) => {
            info!(job_id = %job_id, "job stopped");
            Update::Canceled(lease)
        }
        Err(Stop::Backend(BackendError::Withdrawn)) => {
            info!(job_id = %job_id, "job withdrawn before it started");
            Update::Withdrawn(lease)
        }
        Err(Stop::Backend(BackendError::Permanent(error))) => {
            warn!(job_id = %job_id, %error, "job failed");
            Update::Failed { lease, error, retryable: false, platform: false }
        }
        Err(Stop::Backend(BackendError::Retryable(error))) => {
            warn!(job_id = %job_id, %error, "job attempt failed, retryable");
            Update::Failed { lease, error, retryable: true, platform: false }
        }
        Err(Stop::Platform(error)) => {
            warn!(job_id = %job_id, %error, "artifacts not stored: a platform failure, the attempt is not counted");
            Update::Failed { lease, error, retryable: true, platform: true }
        }
    };
    emit(update).await;
    let _ = job.events.send(Event::Finished(job_id)).await;
}

async fn produce_and_store(
    a: &Assignment,
    job: &Job,
    cancel: &CancellationToken,
) -> Result<Vec<String>, Stop> {
    let input = a.input.clone()?;
    let target = Target {
        job_id: a.lease.job_id.clone(),
        lease_token: a.lease.token.clone(),
        owner_id: a.owner_id.clone(),
        project_id: a.project_id.clone(),
        kind: input.kind(),
        width: input.spec.width,
        height: input.spec.height,
        frames: if input.kind() == Kind::Video { input.spec.frames } else { 1 },
    };
    let (tx, lease) = (job.events.clone(), a.lease.clone());
    let last = Arc::new(AtomicU32::new(0));
    let seen = last.clone();
    // Progress and previews are best effort (the next one supersedes a dropped one);
    // completion is not.
    let sink = Sink::new(move |report| {
        let update = match report {
            Report::Step { step, total, item, stage } => {
                seen.store(total, Ordering::Relaxed);
                Update::Progress { lease: lease.clone(), step, total, stage, item }
            }
            Report::Preview { png, step, item } => Update::Preview { lease: lease.clone(), png, step, item },
        };
        let _ = tx.try_send(Event::Send(update));
    });
    let artifacts = job.backend.run(input, sink, cancel.clone()).await?;
    if cancel.is_cancelled() {
        return Err(Stop::Backend(BackendError::Canceled));
    }
    let total = last.load(Ordering::Relaxed);
    let (events, lease) = (job.events.clone(), a.lease.clone());
    let progress = move |item: u32, stage: &str| {
        let update =
            Update::Progress { lease: lease.clone(), step: total, total, stage: stage.to_owned(), item };
        let _ = events.try_send(Event::Send(update));
    };
    let delivery = Delivery {
        store: job.store.as_ref(),
        holder: &job.holder,
        metrics: &job.metrics,
        wait_max: job.wait_max,
        target: &target,
        cancel,
        progress: &progress,
    };
    deliver(&delivery, artifacts).await.map_err(|e| match e {
        // A refused artifact is retried like a failed render: another attempt may render it
        // right; the scheduler's attempt limit bounds the retries.
        DeliveryError::Job(e) => Stop::Backend(BackendError::Retryable(e.to_string())),
        DeliveryError::Platform(why) => Stop::Platform(why),
        DeliveryError::Canceled => Stop::Backend(BackendError::Canceled),
    })
}

/// Why a job's task ended without every artifact stored.
#[derive(Debug)]
enum Stop {
    /// The job's own failure, or a cancel.
    Backend(BackendError),
    /// The platform could not store the artifacts in time: not counted as an attempt.
    Platform(String),
}

impl From<BackendError> for Stop {
    fn from(e: BackendError) -> Self {
        Self::Backend(e)
    }
}
