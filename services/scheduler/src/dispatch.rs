//! Attached workers and the dispatcher that hands them queued jobs, plus the lease reaper.
//!
//! The registry is this replica's view of its own worker sessions: free slots, backends
//! and the leases each session holds. PostgreSQL stays the source of truth: claims use
//! `FOR UPDATE SKIP LOCKED`, so several replicas never hand out the same job.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};
use uuid::Uuid;

use crate::{State, job::Job};

/// What the scheduler tells one worker.
#[derive(Debug, Clone)]
pub enum WorkerCommand {
    /// Run this job under this lease.
    Assign {
        /// The job, status assigned.
        job: Box<Job>,
        /// Its fresh lease token.
        lease: Uuid,
        /// W3C trace context of the dispatch, for the worker's spans.
        trace_context: HashMap<String, String>,
    },
    /// Stop the job (its owner canceled it).
    Cancel {
        /// The job.
        job_id: Uuid,
    },
    /// The worker no longer holds the job's lease.
    Revoke {
        /// The job.
        job_id: Uuid,
        /// Why.
        reason: String,
    },
}

/// Commands to one worker.
pub type WorkerTx = mpsc::Sender<WorkerCommand>;

/// One attached worker session.
#[derive(Debug)]
pub struct WorkerSession {
    /// Worker's own id.
    pub worker_id: String,
    /// Jobs it runs at once.
    pub slots: u32,
    /// Backends it offers.
    pub backends: Vec<String>,
    /// Models it has loaded.
    pub models: Vec<String>,
    /// Jobs it holds, with their lease tokens.
    pub running: HashMap<Uuid, Uuid>,
    /// No new work when draining.
    pub draining: bool,
    /// Its stream.
    pub tx: WorkerTx,
}

/// Sessions attached to this replica.
#[derive(Debug, Default)]
pub struct Registry {
    sessions: Mutex<HashMap<Uuid, WorkerSession>>,
}

/// A worker with room for more jobs.
#[derive(Debug)]
pub struct FreeWorker {
    session: Uuid,
    worker_id: String,
    backends: Vec<String>,
    models: Vec<String>,
    free: u32,
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, HashMap<Uuid, WorkerSession>> {
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a session.
    pub fn register(&self, session: Uuid, worker: WorkerSession) {
        self.lock().insert(session, worker);
    }

    /// Removes a session (its leases stay valid until they expire, so a reconnecting
    /// worker keeps its jobs).
    pub fn unregister(&self, session: Uuid) {
        self.lock().remove(&session);
    }

    /// Does the session hold this lease?
    pub fn holds(&self, session: Uuid, job: Uuid, lease: Uuid) -> bool {
        self.lock().get(&session).is_some_and(|w| w.running.get(&job) == Some(&lease))
    }

    /// Frees the slot of a job.
    pub fn release(&self, session: Uuid, job: Uuid) {
        if let Some(w) = self.lock().get_mut(&session) {
            w.running.remove(&job);
        }
    }

    /// Records the models a session has loaded now (from its heartbeat).
    pub fn set_models(&self, session: Uuid, models: Vec<String>) {
        if let Some(w) = self.lock().get_mut(&session) {
            w.models = models;
        }
    }

    /// Stops giving the session work.
    pub fn set_draining(&self, session: Uuid) {
        if let Some(w) = self.lock().get_mut(&session) {
            w.draining = true;
        }
    }

    /// Sessions with free slots, most free first.
    pub fn free_workers(&self) -> Vec<FreeWorker> {
        let mut free: Vec<FreeWorker> = self
            .lock()
            .iter()
            .filter(|(_, w)| !w.draining)
            .filter_map(|(id, w)| {
                let used = u32::try_from(w.running.len()).unwrap_or(u32::MAX);
                (w.slots > used).then(|| FreeWorker {
                    session: *id,
                    worker_id: w.worker_id.clone(),
                    backends: w.backends.clone(),
                    models: w.models.clone(),
                    free: w.slots - used,
                })
            })
            .collect();
        free.sort_by_key(|w| std::cmp::Reverse(w.free));
        free
    }

    /// Records an assignment and queues it on the session's stream. `false` when the
    /// session is gone or its stream is full: the caller hands the job back.
    fn assign(&self, session: Uuid, job: Uuid, lease: Uuid, command: WorkerCommand) -> bool {
        let mut sessions = self.lock();
        let Some(w) = sessions.get_mut(&session) else {
            return false;
        };
        if w.tx.try_send(command).is_err() {
            return false;
        }
        w.running.insert(job, lease);
        true
    }

    /// Sends a message to whichever session holds `job` and frees its slot if `release`.
    pub fn send_to_holder(&self, job: Uuid, command: WorkerCommand, release: bool) -> bool {
        let mut sessions = self.lock();
        for w in sessions.values_mut() {
            if w.running.contains_key(&job) {
                let sent = w.tx.try_send(command).is_ok();
                if release {
                    w.running.remove(&job);
                }
                return sent;
            }
        }
        false
    }

    /// Slots in use and in all, over this replica's sessions.
    pub fn slot_usage(&self) -> (usize, u32) {
        let s = self.lock();
        (s.values().map(|w| w.running.len()).sum(), s.values().map(|w| w.slots).sum())
    }
}

/// Hands queued jobs to free workers whenever woken, and at least every `poll`.
pub fn spawn_dispatcher(
    state: Arc<State>,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let poll = Duration::from_millis(state.config.dispatch_poll_ms);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = wake.notified() => {}
                () = tokio::time::sleep(poll) => {}
            }
            if let Err(e) = dispatch_once(&state).await {
                error!(error = %e, "dispatch failed");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    })
}

async fn dispatch_once(state: &State) -> Result<(), crate::error::SchedulerError> {
    // Warm first: every free worker takes jobs for the models it already has loaded (no
    // cold start), then free slots take whatever is next in line.
    for warm in [true, false] {
        for worker in state.registry.free_workers() {
            if warm && worker.models.is_empty() {
                continue;
            }
            let models = warm.then_some(worker.models.as_slice());
            let claimed = state
                .store
                .claim(&worker.worker_id, &worker.backends, models, worker.free, state.config.lease_ttl())
                .await?;
            for c in claimed {
                // The dispatch joins the submitter's trace; the worker's spans join it.
                let span = tracing::info_span!(
                    "dispatch",
                    otel.name = "dispatch",
                    service = "scheduler",
                    job_id = %c.job.id,
                    worker_id = %worker.worker_id,
                );
                sakuga_mesh::telemetry::set_parent_from_map(&span, &c.job.trace_context);
                let context = span.in_scope(sakuga_mesh::telemetry::current_context_map);
                let (id, lease) = (c.job.id, c.lease_token);
                let command =
                    WorkerCommand::Assign { job: Box::new(c.job.clone()), lease, trace_context: context };
                if state.registry.assign(worker.session, id, lease, command) {
                    state.families.dispatched(&c.job);
                    info!(job_id = %c.job.id, worker_id = %worker.worker_id, attempt = c.job.attempts, warm, "job assigned");
                    state.events.status_changed(&c.job);
                } else {
                    warn!(job_id = %c.job.id, worker_id = %worker.worker_id, "worker went away, job handed back");
                    state.store.unclaim(c.job.id, c.lease_token).await?;
                }
            }
        }
    }
    Ok(())
}

/// Requeues (or fails) jobs whose lease ran out, tells the holder if it is still attached.
pub fn spawn_reaper(
    state: Arc<State>,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let period = (state.config.lease_ttl() / 4).max(Duration::from_millis(250));
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(period) => {}
            }
            match state.store.expire_leases().await {
                Ok(expired) if expired.is_empty() => {}
                Ok(expired) => {
                    state.families.leases_expired(&expired);
                    for e in &expired {
                        warn!(job_id = %e.id, status = e.status.as_str(), "lease expired");
                        let revoke = WorkerCommand::Revoke { job_id: e.id, reason: "expired".to_owned() };
                        state.registry.send_to_holder(e.id, revoke, true);
                        if let Ok(job) = state.store.get(e.id, None).await {
                            state.events.status_changed(&job);
                        }
                    }
                    debug!(count = expired.len(), "expired leases handled");
                    wake.notify_one();
                }
                Err(e) => error!(error = %e, "lease sweep failed"),
            }
        }
    })
}

/// Deletes finished jobs past the retention age, in batches, every `retention_sweep_secs`.
pub fn spawn_retention(state: Arc<State>, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let days = state.config.job_retention_days;
        if days == 0 {
            return;
        }
        let period = Duration::from_secs(state.config.retention_sweep_secs);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(period) => {}
            }
            let mut total = 0;
            loop {
                match state.store.prune_finished(days, 1_000).await {
                    Ok(0) => break,
                    Ok(n) => total += n,
                    Err(e) => {
                        error!(error = %e, "retention sweep failed");
                        break;
                    }
                }
            }
            if total > 0 {
                info!(deleted = total, days, "finished jobs past retention deleted");
            }
        }
    })
}
