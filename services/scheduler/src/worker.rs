//! One worker session, in domain terms: a hello, then assignments one way and acks,
//! heartbeats, progress, completion and failure the other (the wire side is
//! `api::worker_session`). Every message about a job carries its lease token; a stale one changes
//! nothing and is answered with [`WorkerCommand::Revoke`].

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::{Notify, mpsc};
use tracing::{info, warn};
use uuid::Uuid;

use crate::{
    dispatch,
    error::SchedulerError,
    job::Progress,
    registry::{WorkerCommand, WorkerSession, WorkerTx},
    state::State,
    store::{ClaimFor, Completion},
};

/// A job and its lease token.
pub type Lease = (Uuid, Uuid);

/// Largest preview passed on to watchers.
const MAX_PREVIEW: usize = 256 * 1024;

/// A worker's first message.
#[derive(Debug, Clone)]
pub struct Hello {
    /// Worker's own id.
    pub worker_id: String,
    /// Jobs it runs at once.
    pub slots: u32,
    /// Jobs it takes beyond `slots` to wait in its backend's own queue.
    pub queue_slots: u32,
    /// Backends it offers.
    pub backends: Vec<String>,
    /// Models it has loaded.
    pub loaded_models: Vec<String>,
    /// Jobs it still runs from an earlier session.
    pub running: Vec<Lease>,
}

/// What a session starts with, for the worker's welcome.
#[derive(Debug, Clone)]
pub struct Attached {
    /// The session.
    pub session: Uuid,
    /// How often the worker should heartbeat.
    pub heartbeat_interval: Duration,
    /// How long a lease lasts without news.
    pub lease_ttl: Duration,
    /// Announced jobs the worker keeps.
    pub kept: Vec<Uuid>,
    /// Announced jobs it no longer holds.
    pub dropped: Vec<Uuid>,
}

/// A message from an attached worker.
#[derive(Debug, Clone)]
pub enum WorkerMessage {
    /// It accepted the job: started it, or queued it in its backend (`waiting`).
    Ack {
        /// The job.
        lease: Lease,
        /// Queued behind another job in the backend: stays assigned until its first
        /// progress.
        waiting: bool,
    },
    /// It is alive, with these models loaded and these jobs running.
    Heartbeat {
        /// Models loaded now.
        loaded_models: Vec<String>,
        /// Jobs it runs.
        running: Vec<Lease>,
    },
    /// Progress of a job.
    Progress {
        /// The job.
        lease: Lease,
        /// Where it is.
        progress: Progress,
    },
    /// A preview image of a job.
    Preview {
        /// The job.
        lease: Lease,
        /// PNG bytes.
        png: Vec<u8>,
        /// Step it shows.
        step: u32,
        /// Batch item it shows.
        item: u32,
    },
    /// The job succeeded with these stored files.
    Completed {
        /// The job.
        lease: Lease,
        /// Files the organizer stored for it.
        file_ids: Vec<Uuid>,
    },
    /// The attempt failed.
    Failed {
        /// The job.
        lease: Lease,
        /// Why.
        error: String,
        /// Worth another attempt.
        retryable: bool,
        /// The platform failed, not the job: the attempt is not counted.
        platform: bool,
    },
    /// The job left the backend's queue before it started (after a withdraw).
    Withdrawn {
        /// The job.
        lease: Lease,
    },
    /// The backend stopped a canceled job.
    Canceled {
        /// The job.
        job_id: Uuid,
    },
    /// No new work, please.
    Draining {
        /// Why.
        reason: String,
    },
}

/// Starts a session: confirms re-announced leases, hands back the worker's other jobs,
/// registers the worker and returns the session, its welcome and its command stream.
pub async fn attach(
    state: Arc<State>,
    wake: Arc<Notify>,
    hello: Hello,
) -> Result<(Session, Attached, mpsc::Receiver<WorkerCommand>), SchedulerError> {
    let announced = &hello.running;
    let kept = state.store.extend_leases(&hello.worker_id, announced, state.config.lease_ttl).await?;
    let released = state.store.release_unannounced(&hello.worker_id, &kept).await?;
    if !released.is_empty() {
        state.families.leases_expired(&released);
        for e in &released {
            warn!(job_id = %e.id, worker_id = %hello.worker_id, status = e.status.as_str(), "job handed back: its worker restarted without it");
            if let Ok(job) = state.store.get(e.id, None).await {
                state.events.status_changed(&job);
            }
        }
        wake.notify_one();
    }
    let session = Uuid::now_v7();
    let (tx, rx) = mpsc::channel(256);
    let running: HashMap<Uuid, Uuid> =
        announced.iter().copied().filter(|(id, _)| kept.contains(id)).collect();
    let attached = Attached {
        session,
        heartbeat_interval: state.config.heartbeat_interval,
        lease_ttl: state.config.lease_ttl,
        kept: running.keys().copied().collect(),
        dropped: announced.iter().filter(|(id, _)| !kept.contains(id)).map(|(id, _)| *id).collect(),
    };
    info!(worker_id = %hello.worker_id, %session, slots = hello.slots, queue_slots = hello.queue_slots, backends = ?hello.backends, kept = running.len(), "worker attached");
    state.registry.register(
        session,
        WorkerSession {
            worker_id: hello.worker_id.clone(),
            slots: hello.slots,
            queue_slots: hello.queue_slots,
            backends: hello.backends,
            models: hello.loaded_models,
            running,
            waiting: HashMap::new(),
            draining: false,
            reserved: 0,
            tx: tx.clone(),
        },
    );
    wake.notify_one();
    let s = Session { state, wake, id: session, worker_id: hello.worker_id, tx, last_write: HashMap::new() };
    Ok((s, attached, rx))
}

/// One attached worker.
#[derive(Debug)]
pub struct Session {
    state: Arc<State>,
    wake: Arc<Notify>,
    id: Uuid,
    worker_id: String,
    tx: WorkerTx,
    last_write: HashMap<Uuid, Instant>,
}

impl Session {
    /// The worker's own id.
    pub fn worker_id(&self) -> &str {
        &self.worker_id
    }

    /// Ends the session (its leases stay valid until they expire, so a reconnecting
    /// worker keeps its jobs).
    pub fn detach(self) {
        self.state.registry.unregister(self.id);
        info!(worker_id = %self.worker_id, session = %self.id, "worker detached");
    }

    async fn revoke(&mut self, job_id: Uuid, reason: &str) {
        self.state.registry.release(self.id, job_id);
        self.last_write.remove(&job_id);
        let _ = self.tx.send(WorkerCommand::Revoke { job_id, reason: reason.to_owned() }).await;
    }

    fn finished(&mut self, job: Uuid) {
        self.state.registry.release(self.id, job);
        self.last_write.remove(&job);
        self.wake.notify_one();
    }

    /// Acts on the messages in order, each run of completions in one commit; an error ends
    /// the session.
    pub async fn handle_all(&mut self, msgs: Vec<WorkerMessage>) -> Result<(), SchedulerError> {
        let mut done = Vec::new();
        for msg in msgs {
            match msg {
                WorkerMessage::Completed { lease: (id, lease), file_ids } => done.push((id, lease, file_ids)),
                other => {
                    if !done.is_empty() {
                        self.completed(&std::mem::take(&mut done)).await?;
                    }
                    self.handle(other).await?;
                }
            }
        }
        if !done.is_empty() {
            self.completed(&done).await?;
        }
        Ok(())
    }

    /// Acts on one message; an error ends the session.
    async fn handle(&mut self, msg: WorkerMessage) -> Result<(), SchedulerError> {
        let ttl = self.state.config.lease_ttl;
        match msg {
            WorkerMessage::Ack { lease: (id, lease), waiting } => {
                // A job queued in the backend is still assigned (queued on the worker);
                // its first progress makes it running.
                if waiting {
                    match self.state.store.get(id, None).await {
                        Ok(job) if job.lease_token == Some(lease) => {
                            self.state.registry.set_waiting(self.id, id, job.spec.backend);
                            // A free slot elsewhere may want it.
                            self.wake.notify_one();
                        }
                        _ => self.revoke(id, "lease no longer held").await,
                    }
                } else if self.state.store.mark_running(id, lease, ttl).await? {
                    let job = self.state.store.get(id, None).await?;
                    self.state.events.status_changed(&job);
                } else if !self.state.store.lease_held(id, lease).await? {
                    self.revoke(id, "lease no longer held").await;
                }
            }
            WorkerMessage::Heartbeat { loaded_models, running } => {
                self.state.registry.set_models(self.id, loaded_models);
                let kept = self.state.store.extend_leases(&self.worker_id, &running, ttl).await?;
                for (id, _) in running.iter().filter(|(id, _)| !kept.contains(id)) {
                    self.revoke(*id, "lease no longer held").await;
                }
            }
            WorkerMessage::Progress { lease: (id, lease), progress } => {
                self.state.registry.started(self.id, id);
                self.progress(id, lease, progress, ttl).await?;
            }
            WorkerMessage::Preview { lease: (id, lease), png, step, item } => {
                if self.state.registry.holds(self.id, id, lease) && png.len() <= MAX_PREVIEW {
                    self.state.events.preview(id, png, step, item);
                }
            }
            WorkerMessage::Completed { lease: (id, lease), file_ids } => {
                self.completed(&[(id, lease, file_ids)]).await?;
            }
            WorkerMessage::Failed { lease: (id, lease), error, retryable, platform } => {
                let error: String = error.chars().take(2000).collect();
                match self.state.store.fail(id, lease, &error, retryable, platform).await? {
                    Some(job) => {
                        self.state.families.finished(&job);
                        warn!(job_id = %id, worker_id = %self.worker_id, retryable, platform, status = job.status.as_str(), error = %error, "job attempt failed");
                        self.state.events.status_changed(&job);
                        self.finished(id);
                    }
                    None => self.revoke(id, "finished or lease lost").await,
                }
            }
            WorkerMessage::Canceled { job_id } => self.finished(job_id),
            WorkerMessage::Withdrawn { lease: (id, lease) } => {
                // Queued again at once, the attempt not counted: a worker with a free slot
                // takes it.
                if self.state.store.unclaim(id, lease).await? {
                    info!(job_id = %id, worker_id = %self.worker_id, "waiting job withdrawn for a free slot elsewhere");
                    if let Ok(job) = self.state.store.get(id, None).await {
                        self.state.events.status_changed(&job);
                    }
                    self.finished(id);
                } else {
                    self.revoke(id, "finished or lease lost").await;
                }
            }
            WorkerMessage::Draining { reason } => {
                info!(worker_id = %self.worker_id, reason = %reason, "worker draining");
                self.state.registry.set_draining(self.id);
            }
        }
        Ok(())
    }

    async fn progress(
        &mut self,
        id: Uuid,
        lease: Uuid,
        progress: Progress,
        ttl: Duration,
    ) -> Result<(), SchedulerError> {
        if !self.state.registry.holds(self.id, id, lease) {
            self.revoke(id, "lease no longer held").await;
            return Ok(());
        }
        let interval = self.state.config.progress_write_interval;
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
        self.state.events.progress(id, progress);
        Ok(())
    }

    /// Completions, in one statement and one commit however many (see
    /// [`crate::store::Store::complete_all`]). The slots they free are refilled in the
    /// same commit when no other claim of this replica is under way: a claim for them (of
    /// the worker's loaded models, when it has any) runs in it, and what it took goes
    /// straight to the worker. Slots it found nothing for, or all of them when another claim
    /// was under way, are the dispatcher's.
    async fn completed(&mut self, done: &[(Uuid, Uuid, Vec<Uuid>)]) -> Result<(), SchedulerError> {
        let ids: Vec<Uuid> = done.iter().map(|(id, _, _)| *id).collect();
        let registry = &self.state.registry;
        let Some(turn) = registry.try_claim_turn() else {
            let outcomes = self.state.store.complete_all(done, None).await?.0;
            for id in &ids {
                registry.release(self.id, *id);
            }
            self.wake.notify_one();
            return self.answer(done, outcomes).await;
        };
        let (worker, mut slots) = registry.refill(self.id, &ids);
        let warm = worker.as_ref().is_some_and(|w| !w.models.is_empty());
        let refill = worker.as_ref().filter(|_| slots.count() > 0).map(|w| ClaimFor {
            worker_id: &w.worker_id,
            backends: &w.backends,
            models: warm.then_some(w.models.as_slice()),
            limit: slots.count(),
            lease: self.state.config.lease_ttl,
        });
        let (outcomes, claimed) = self.state.store.complete_all(done, refill.as_ref()).await?;
        drop(turn);
        // A job it cannot hand back now stays under lease until the reaper requeues it.
        if !claimed.is_empty()
            && let Err(e) = dispatch::deliver(&self.state, &self.worker_id, &mut slots, claimed, warm).await
        {
            tracing::error!(error = %e, "handing a claimed job back failed");
        }
        // Slots left free are given back first, then the dispatcher is woken for them.
        let left = slots.count() > 0;
        drop(slots);
        if left {
            self.wake.notify_one();
        }
        self.answer(done, outcomes).await
    }

    /// Acts on what became of each completion: events, and the lease taken back from the
    /// worker where it no longer holds.
    async fn answer(
        &mut self,
        done: &[(Uuid, Uuid, Vec<Uuid>)],
        outcomes: Vec<Completion>,
    ) -> Result<(), SchedulerError> {
        for ((id, _, file_ids), outcome) in done.iter().zip(outcomes) {
            let id = *id;
            match outcome {
                Completion::Succeeded(job) => {
                    self.state.families.finished(&job);
                    let span = tracing::info_span!("complete", otel.name = "complete", service = "scheduler", job_id = %id);
                    sakuga_mesh::telemetry::set_parent_from_map(&span, &job.trace_context);
                    span.in_scope(|| {
                        info!(job_id = %id, worker_id = %self.worker_id, files = file_ids.len(), "job succeeded");
                    });
                    self.state.events.status_changed(&job);
                    // Its slot was freed (and refilled) above.
                    self.last_write.remove(&id);
                }
                // Refused, and the attempt failed in its place (see `Store::complete_all`).
                // The worker loses the lease like any worker whose attempt is over; its
                // session stays, its other jobs are not this one's business.
                Completion::ForeignFiles { job, foreign } => {
                    self.state.families.finished(&job);
                    warn!(job_id = %id, worker_id = %self.worker_id, foreign = ?foreign, status = job.status.as_str(), "completion refused: it named files not stored for this job");
                    self.state.events.status_changed(&job);
                    self.revoke(id, "completion refused: it named files not stored for this job").await;
                    self.wake.notify_one();
                }
                Completion::LeaseLost => self.revoke(id, "finished or lease lost").await,
            }
        }
        Ok(())
    }
}
