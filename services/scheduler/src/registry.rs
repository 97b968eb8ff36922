//! This replica's view of its own worker sessions: free slots, backends, loaded models,
//! the leases each session holds, and the channel of [`WorkerCommand`]s to each worker.
//! PostgreSQL stays the source of truth; the registry only routes.

use std::{
    collections::HashMap,
    sync::{Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use tokio::sync::mpsc;
use uuid::Uuid;

use crate::job::Job;

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
    /// Take the job out of the backend's queue if it has not started there.
    Withdraw {
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

/// How long a withdraw request stands before it is sent again.
pub const WITHDRAW_AGAIN: Duration = Duration::from_secs(2);

/// Commands to one worker.
pub type WorkerTx = mpsc::Sender<WorkerCommand>;

/// One attached worker session.
#[derive(Debug)]
pub struct WorkerSession {
    /// Worker's own id.
    pub worker_id: String,
    /// Jobs it runs at once.
    pub slots: u32,
    /// Jobs it takes beyond `slots` to wait in its backend's own queue.
    pub queue_slots: u32,
    /// Backends it offers.
    pub backends: Vec<String>,
    /// Models it has loaded.
    pub models: Vec<String>,
    /// Jobs it holds, with their lease tokens.
    pub running: HashMap<Uuid, Uuid>,
    /// Jobs it holds that wait in its backend's queue, with their backends, and when a
    /// withdraw was last sent for them.
    pub waiting: HashMap<Uuid, (String, Option<Instant>)>,
    /// No new work when draining.
    pub draining: bool,
    /// Slots promised to claims in flight ([`Reservation`]s): not free, not yet running.
    pub reserved: u32,
    /// Its stream.
    pub tx: WorkerTx,
}

impl WorkerSession {
    /// The session `id` as a claim sees it: who it is and its room now.
    fn free_worker(&self, id: Uuid) -> FreeWorker {
        let (free, queue_free) = self.room();
        FreeWorker {
            session: id,
            worker_id: self.worker_id.clone(),
            backends: self.backends.clone(),
            models: self.models.clone(),
            free,
            queue_free,
        }
    }

    /// Free slots and free queue slots: the jobs it holds and the slots reserved for
    /// claims in flight fill its slots first.
    fn room(&self) -> (u32, u32) {
        let used = u32::try_from(self.running.len()).unwrap_or(u32::MAX).saturating_add(self.reserved);
        let free = self.slots.saturating_sub(used);
        (free, self.slots.saturating_add(self.queue_slots).saturating_sub(used) - free)
    }
}

/// Slots of one session promised to one claim ([`Registry::reserve`]).
#[derive(Debug)]
pub struct Reservation<'a> {
    registry: &'a Registry,
    session: Uuid,
    count: u32,
}

impl Reservation<'_> {
    /// Slots still reserved.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// Spends one reserved slot on an assignment (see [`Registry::assign`]): `false` when
    /// the session is gone or its stream is full, and the caller hands the job back.
    pub fn assign(&mut self, job: Uuid, lease: Uuid, command: WorkerCommand) -> bool {
        debug_assert!(self.count > 0, "an assignment beyond the reservation");
        self.count = self.count.saturating_sub(1);
        self.registry.assign(self.session, job, lease, command)
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if self.count > 0 {
            self.registry.unreserve(self.session, self.count);
        }
    }
}

/// Slot counts over a replica's sessions.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SlotUsage {
    /// Slots running a job.
    pub busy: u32,
    /// Slots in all.
    pub slots: u32,
    /// Queue slots holding a job that waits in its backend's queue.
    pub queue_busy: u32,
    /// Queue slots in all.
    pub queue_slots: u32,
}

/// Sessions attached to this replica.
#[derive(Debug, Default)]
pub struct Registry {
    sessions: Mutex<HashMap<Uuid, WorkerSession>>,
    /// Held by the claim of this replica under way (see [`Registry::claim_turn`]).
    claiming: tokio::sync::Mutex<()>,
}

/// A worker with room for more jobs.
#[derive(Debug)]
pub struct FreeWorker {
    /// Its session.
    pub session: Uuid,
    /// Worker's own id.
    pub worker_id: String,
    /// Backends it offers.
    pub backends: Vec<String>,
    /// Models it has loaded.
    pub models: Vec<String>,
    /// Slots free: jobs it would start at once.
    pub free: u32,
    /// Queue slots free: jobs it would queue in its backend behind running ones.
    pub queue_free: u32,
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
            w.waiting.remove(&job);
        }
    }

    /// The job, of `backend`, waits in the session's backend queue behind running jobs.
    pub fn set_waiting(&self, session: Uuid, job: Uuid, backend: String) {
        if let Some(w) = self.lock().get_mut(&session)
            && w.running.contains_key(&job)
        {
            w.waiting.insert(job, (backend, None));
        }
    }

    /// The job started (it reported progress): it no longer waits.
    pub fn started(&self, session: Uuid, job: Uuid) {
        if let Some(w) = self.lock().get_mut(&session) {
            w.waiting.remove(&job);
        }
    }

    /// For every free slot of `idle` (sessions with free slots and nothing to claim for
    /// them), asks one session holding a waiting job of the same backend to withdraw it,
    /// so it runs now rather than behind another job. Returns how many were asked. A job
    /// still waiting is asked again after [`WITHDRAW_AGAIN`] (a request can arrive before
    /// the backend holds the job; one that started is no longer waiting).
    pub fn withdraw_for(&self, idle: &[FreeWorker]) -> usize {
        let mut free: HashMap<&str, u32> = HashMap::new();
        for w in idle.iter().filter(|w| w.free > 0) {
            for b in &w.backends {
                *free.entry(b.as_str()).or_default() += w.free;
            }
        }
        let mut asked = 0;
        let mut sessions = self.lock();
        for w in sessions.values_mut() {
            // A session with a free slot of its own starts its waiting jobs itself.
            if w.running.len() < w.slots as usize {
                continue;
            }
            for (job, (backend, sent)) in &mut w.waiting {
                let Some(n) = free.get_mut(backend.as_str()).filter(|n| **n > 0) else { continue };
                if sent.is_some_and(|t| t.elapsed() < WITHDRAW_AGAIN)
                    || w.tx.try_send(WorkerCommand::Withdraw { job_id: *job }).is_err()
                {
                    continue;
                }
                *sent = Some(Instant::now());
                *n -= 1;
                asked += 1;
            }
        }
        asked
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

    /// Sessions with free slots or free queue slots, most free slots first. A session's
    /// jobs fill its slots first, then its queue slots.
    pub fn free_workers(&self) -> Vec<FreeWorker> {
        let mut free: Vec<FreeWorker> = self
            .lock()
            .iter()
            .filter(|(_, w)| !w.draining)
            .filter_map(|(id, w)| {
                let (free, queue_free) = w.room();
                (free + queue_free > 0).then(|| w.free_worker(*id))
            })
            .collect();
        free.sort_by_key(|w| std::cmp::Reverse(w.free));
        free
    }

    /// Promises up to `want` of the session's free slots (with `queue`, of its slots and
    /// queue slots together) to one claim, so that no other claim of this replica counts
    /// them free meanwhile: a worker is never sent more jobs than it has room for, however
    /// many claims run at once. The reservation holds what was free (possibly nothing); what
    /// it does not [`Reservation::assign`] is given back when it is dropped.
    pub fn reserve(&self, session: Uuid, want: u32, queue: bool) -> Reservation<'_> {
        let mut sessions = self.lock();
        let count = sessions.get_mut(&session).filter(|w| !w.draining).map_or(0, |w| {
            let (free, queue_free) = w.room();
            let count = want.min(if queue { free + queue_free } else { free });
            w.reserved += count;
            count
        });
        Reservation { registry: self, session, count }
    }

    /// Waits for this replica's turn to claim: its claims run one at a time. A claim locks
    /// the rows of the line of owners it reads and holds them to its commit, and a claim
    /// that finds them held skips them; two claims of one replica at once would mostly
    /// leave each other nothing (with one owner queued, the second finds nothing at all).
    pub async fn claim_turn(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.claiming.lock().await
    }

    /// The turn to claim, if no claim of this replica is under way.
    pub fn try_claim_turn(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        self.claiming.try_lock().ok()
    }

    /// Frees the slots of `jobs` (the session's jobs whose attempts are ending) and
    /// reserves them again at once, under one lock, for a claim that refills them: no other
    /// claim of this replica sees them free in between. The session as a claim sees it, and
    /// the reservation (holding nothing when the session is gone or draining; the slots are
    /// then just freed).
    pub fn refill(&self, session: Uuid, jobs: &[Uuid]) -> (Option<FreeWorker>, Reservation<'_>) {
        let mut sessions = self.lock();
        let Some(w) = sessions.get_mut(&session) else {
            return (None, Reservation { registry: self, session, count: 0 });
        };
        let mut count = 0;
        for job in jobs {
            w.waiting.remove(job);
            if w.running.remove(job).is_some() {
                count += 1;
            }
        }
        if w.draining {
            count = 0;
        }
        w.reserved += count;
        (Some(w.free_worker(session)), Reservation { registry: self, session, count })
    }

    /// A free slot for a job of `backend` and `model`, reserved: of a session with the
    /// model loaded when there is one (the claim then takes jobs of its loaded models,
    /// `warm`), else of the session with the most free slots. `None` when no session here
    /// has a free slot for the backend. Chosen and reserved under one lock, without
    /// copying every session.
    pub fn reserve_for(&self, backend: &str, model: &str) -> Option<(FreeWorker, Reservation<'_>, bool)> {
        let mut sessions = self.lock();
        let (id, w) = sessions
            .iter_mut()
            .filter(|(_, w)| !w.draining && w.room().0 > 0 && w.backends.iter().any(|b| b == backend))
            .max_by_key(|(_, w)| (w.models.iter().any(|m| m == model), w.room().0))?;
        let warm = w.models.iter().any(|m| m == model);
        let worker = w.free_worker(*id);
        w.reserved += 1;
        Some((worker, Reservation { registry: self, session: *id, count: 1 }, warm))
    }

    /// Records an assignment and queues it on the session's stream. `false` when the
    /// session is gone or its stream is full: the caller hands the job back.
    fn assign(&self, session: Uuid, job: Uuid, lease: Uuid, command: WorkerCommand) -> bool {
        let mut sessions = self.lock();
        let Some(w) = sessions.get_mut(&session) else {
            return false;
        };
        w.reserved = w.reserved.saturating_sub(1);
        if w.tx.try_send(command).is_err() {
            return false;
        }
        w.running.insert(job, lease);
        true
    }

    fn unreserve(&self, session: Uuid, count: u32) {
        if let Some(w) = self.lock().get_mut(&session) {
            w.reserved = w.reserved.saturating_sub(count);
        }
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

    /// Slots and queue slots in use and in all, over this replica's sessions. A session's
    /// jobs fill its slots first.
    pub fn slot_usage(&self) -> SlotUsage {
        let s = self.lock();
        let mut usage = SlotUsage::default();
        for w in s.values() {
            let held = u32::try_from(w.running.len()).unwrap_or(u32::MAX);
            usage.busy += held.min(w.slots);
            usage.slots += w.slots;
            usage.queue_busy += held.saturating_sub(w.slots);
            usage.queue_slots += w.queue_slots;
        }
        usage
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(registry: &Registry, slots: u32, queue_slots: u32, running: usize) -> Uuid {
        let id = Uuid::now_v7();
        let (tx, _rx) = mpsc::channel(1);
        registry.register(
            id,
            WorkerSession {
                running: (0..running).map(|_| (Uuid::now_v7(), Uuid::now_v7())).collect(),
                ..worker(&format!("w{slots}-{queue_slots}-{running}"), slots, queue_slots, tx)
            },
        );
        id
    }

    /// An idle session of `comfyui` with nothing loaded.
    fn worker(worker_id: &str, slots: u32, queue_slots: u32, tx: WorkerTx) -> WorkerSession {
        WorkerSession {
            worker_id: worker_id.into(),
            slots,
            queue_slots,
            backends: vec!["comfyui".into()],
            models: Vec::new(),
            running: HashMap::new(),
            waiting: HashMap::new(),
            draining: false,
            reserved: 0,
            tx,
        }
    }

    #[test]
    fn jobs_fill_slots_first_then_queue_slots() {
        let registry = Registry::default();
        let idle = session(&registry, 2, 2, 0);
        let half = session(&registry, 2, 2, 1);
        let busy = session(&registry, 2, 2, 3);
        let full = session(&registry, 2, 2, 4);
        let free: HashMap<Uuid, (u32, u32)> =
            registry.free_workers().into_iter().map(|w| (w.session, (w.free, w.queue_free))).collect();
        assert_eq!(free[&idle], (2, 2));
        assert_eq!(free[&half], (1, 2));
        assert_eq!(free[&busy], (0, 1));
        assert!(!free.contains_key(&full), "a session with every slot and queue slot taken is not free");
        let plain = session(&registry, 1, 0, 1);
        assert!(registry.free_workers().iter().all(|w| w.session != plain), "no queue slots: busy is full");
        let usage = registry.slot_usage();
        assert_eq!(usage, SlotUsage { busy: 1 + 2 + 2 + 1, slots: 9, queue_busy: 1 + 2, queue_slots: 8 });
    }

    #[test]
    fn reserved_slots_are_not_free_until_spent_or_given_back() {
        let registry = Registry::default();
        let (tx, mut rx) = mpsc::channel(4);
        let id = Uuid::now_v7();
        registry.register(id, worker("two", 2, 1, tx));
        let free =
            |r: &Registry| r.free_workers().iter().find(|w| w.session == id).map(|w| (w.free, w.queue_free));
        let mut first = registry.reserve(id, 1, false);
        assert_eq!(first.count(), 1);
        assert_eq!(free(&registry), Some((1, 1)));
        let second = registry.reserve(id, 5, false);
        assert_eq!(second.count(), 1, "only what is free");
        assert_eq!(registry.reserve(id, 5, false).count(), 0, "nothing free is left to reserve");
        assert_eq!(registry.reserve(id, 5, true).count(), 1, "the queue slot, then given back");
        assert!(registry.reserve_for("comfyui", "any").is_none(), "no free slot for a submit either");
        let (job, lease) = (Uuid::now_v7(), Uuid::now_v7());
        assert!(first.assign(job, lease, WorkerCommand::Cancel { job_id: job }));
        assert!(matches!(rx.try_recv(), Ok(WorkerCommand::Cancel { job_id }) if job_id == job));
        assert_eq!(first.count(), 0);
        drop(first);
        drop(second);
        assert_eq!(free(&registry), Some((1, 1)), "one running, the unspent reservation given back");
        let (worker, slot, warm) = registry.reserve_for("comfyui", "any").expect("a free slot");
        assert_eq!((worker.session, slot.count(), warm), (id, 1, false));
        assert!(registry.reserve_for("other-backend", "any").is_none());
    }

    #[test]
    fn a_free_slot_asks_a_busy_session_to_withdraw_a_waiting_job_of_its_backend_once() {
        let registry = Registry::default();
        let (tx, mut rx) = mpsc::channel(4);
        let (running, waiting) = (Uuid::now_v7(), Uuid::now_v7());
        let busy = Uuid::now_v7();
        registry.register(
            busy,
            WorkerSession {
                running: [(running, Uuid::now_v7()), (waiting, Uuid::now_v7())].into(),
                ..worker("busy", 1, 1, tx)
            },
        );
        registry.set_waiting(busy, waiting, "comfyui".into());
        let other_backend = FreeWorker {
            session: Uuid::now_v7(),
            worker_id: "builtin".into(),
            backends: vec!["builtin".into()],
            models: Vec::new(),
            free: 2,
            queue_free: 0,
        };
        assert_eq!(registry.withdraw_for(std::slice::from_ref(&other_backend)), 0, "another backend's slot");
        let idle = FreeWorker { backends: vec!["comfyui".into()], worker_id: "idle".into(), ..other_backend };
        assert_eq!(registry.withdraw_for(std::slice::from_ref(&idle)), 1);
        assert!(matches!(rx.try_recv(), Ok(WorkerCommand::Withdraw { job_id }) if job_id == waiting));
        assert_eq!(registry.withdraw_for(std::slice::from_ref(&idle)), 0, "not asked again at once");
        registry.started(busy, waiting);
        registry.set_waiting(busy, running, "comfyui".into());
        registry.release(busy, running);
        assert_eq!(registry.withdraw_for(&[idle]), 0, "started or released jobs are not waiting");
    }

    #[test]
    fn slots_refilled_are_never_seen_free_and_what_a_refill_does_not_spend_is_freed() {
        let registry = Registry::default();
        let (tx, _rx) = mpsc::channel(4);
        let (a, b, other) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let id = Uuid::now_v7();
        registry.register(
            id,
            WorkerSession {
                backends: vec!["builtin".into()],
                models: vec!["m".into()],
                running: [(a, Uuid::now_v7()), (b, Uuid::now_v7())].into(),
                ..worker("two", 2, 0, tx)
            },
        );
        let (worker, mut slots) = registry.refill(id, &[a, b, other]);
        let worker = worker.expect("the session");
        assert_eq!(
            (worker.worker_id.as_str(), worker.models.as_slice()),
            ("two", ["m".to_owned()].as_slice())
        );
        assert_eq!(slots.count(), 2, "the two jobs it held; a job it did not hold frees nothing");
        assert!(registry.free_workers().is_empty(), "refilled slots are not free to other claims");
        assert!(registry.reserve_for("builtin", "m").is_none());
        let (next, lease) = (Uuid::now_v7(), Uuid::now_v7());
        assert!(slots.assign(next, lease, WorkerCommand::Cancel { job_id: next }));
        drop(slots);
        assert_eq!(
            registry.free_workers().iter().map(|w| w.free).collect::<Vec<_>>(),
            [1],
            "one refilled, one freed"
        );
        assert!(registry.holds(id, next, lease));

        registry.set_draining(id);
        let (_, slots) = registry.refill(id, &[next]);
        assert_eq!(slots.count(), 0, "a draining worker's slots are freed, not refilled");
        let (none, slots) = registry.refill(Uuid::now_v7(), &[next]);
        assert!(none.is_none() && slots.count() == 0, "no such session");

        let turn = registry.try_claim_turn().expect("no claim under way");
        assert!(registry.try_claim_turn().is_none(), "one claim of a replica at a time");
        drop(turn);
        assert!(registry.try_claim_turn().is_some());
    }
}
