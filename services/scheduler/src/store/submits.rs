//! Submits, committed in groups per owner. Each submit runs under its owner's lock (the
//! cap is checked and the job inserted with no other submit of that owner in between), so
//! one owner's submits commit one after another. Submits that arrive while their owner's
//! commit is under way wait for it to end and then go together, one statement each, in
//! the next transaction: one lock, one round trip and one commit for all of them. A lone
//! submit goes at once, as before; under load an owner's submits share commits instead of
//! queueing for the lock one by one.

use std::{
    collections::{HashMap, hash_map::Entry},
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use sakuga_mesh::auth::AuditEvent;
use tokio::sync::oneshot;
use tracing::Instrument as _;

use super::{
    jobs::{Inserted, LOCK_OWNER, SUBMIT, Submitted},
    leases::Claimed,
    rows::{Params, Store, i32_of, job_from_row, millis, statements_in_tx},
};
use crate::{
    error::SchedulerError,
    job::{NewJob, Status},
};

/// Most submits in one commit: one statement each, and the pipelined statements of a
/// transaction are polled in order only up to 30 at a time.
const MOST_PER_COMMIT: usize = 12;

/// Submits waiting for their owner's commit under way to end, by owner. An owner is here
/// while a commit of theirs is under way.
type Waiting = Arc<Mutex<HashMap<String, Vec<Pending>>>>;

/// Submits over the store, committed in groups per owner (see the module).
#[derive(Debug, Clone)]
pub struct Submits {
    store: Store,
    waiting: Waiting,
}

/// A free slot of an attached worker, reserved for a submit's job: the job goes to it
/// when nothing of the worker's backends waits (see [`Submits::insert`]).
#[derive(Debug, Clone, Copy)]
pub struct FreeSlot<'a> {
    /// The worker's own id.
    pub worker_id: &'a str,
    /// Backends it offers (the job's among them).
    pub backends: &'a [String],
    /// How long the lease of a job it gets runs.
    pub lease: Duration,
}

/// A [`FreeSlot`], owned (it travels to the task committing it).
#[derive(Debug)]
struct HandOff {
    worker_id: String,
    backends: Vec<String>,
    lease: Duration,
}

impl HandOff {
    fn of(slot: &FreeSlot<'_>) -> Self {
        Self { worker_id: slot.worker_id.to_owned(), backends: slot.backends.to_vec(), lease: slot.lease }
    }
}

/// One submit on its way to a commit, and where its answer goes.
#[derive(Debug)]
struct Pending {
    new: NewJob,
    cap: u32,
    audit: Option<AuditEvent>,
    hand_off: Option<HandOff>,
    answer: oneshot::Sender<Result<Submitted, SchedulerError>>,
}

/// The parameters of [`SUBMIT`] for one submit that are not fields of it.
struct Bound<'a> {
    kind: &'static str,
    /// Actor, action, result, peer and request id of the audit row, if any.
    audit: [Option<&'a str>; 5],
    seed: i64,
    size: [i32; 6],
    max_attempts: i32,
    spec_hash: String,
    trace: serde_json::Value,
    limit: i64,
    /// The worker whose free slot the job may go to at once, the backends it offers, and
    /// the lease in milliseconds.
    hand_to: Option<&'a str>,
    hand_backends: &'a [String],
    lease_ms: f64,
}

impl Pending {
    fn bound(&self) -> Bound<'_> {
        let s = &self.new.spec;
        let a = self.audit.as_ref();
        Bound {
            kind: s.kind.as_str(),
            audit: [
                a.map(|a| a.actor.as_str()),
                a.map(|a| a.action.as_str()),
                a.map(|a| a.result.as_str()),
                a.map(|a| a.peer.as_str()),
                a.map(|a| a.request_id.as_str()),
            ],
            seed: i64::try_from(s.seed).unwrap_or(i64::MAX),
            size: [s.width, s.height, s.steps, s.batch_size, s.frames, s.fps].map(i32_of),
            max_attempts: i32_of(self.new.max_attempts),
            spec_hash: s.hash(),
            trace: serde_json::to_value(&self.new.trace_context).unwrap_or_default(),
            limit: i64::from(self.cap),
            hand_to: self.hand_off.as_ref().map(|h| h.worker_id.as_str()),
            hand_backends: self.hand_off.as_ref().map_or(&[], |h| h.backends.as_slice()),
            lease_ms: self.hand_off.as_ref().map_or(0.0, |h| millis(h.lease)),
        }
    }

    /// The 35 parameters of [`SUBMIT`].
    fn submit_params<'a>(&'a self, b: &'a Bound<'a>) -> [&'a (dyn tokio_postgres::types::ToSql + Sync); 35] {
        let (new, s) = (&self.new, &self.new.spec);
        let [width, height, steps, batch, frames, fps] = &b.size;
        let [actor, action, result, peer, request] = &b.audit;
        [
            &new.id,
            &new.owner_id,
            &b.kind,
            &s.backend,
            &s.model,
            &s.prompt,
            &s.negative_prompt,
            &new.composed_prompt,
            width,
            height,
            steps,
            batch,
            frames,
            fps,
            &b.seed,
            &s.cfg_scale,
            &s.sampler,
            &new.priority,
            &new.idempotency_key,
            &b.max_attempts,
            &b.spec_hash,
            &new.project_id,
            &new.character_ids,
            &new.composed_negative,
            &b.trace,
            &b.limit,
            &new.webhook_endpoint_id,
            actor,
            action,
            result,
            peer,
            request,
            &b.hand_to,
            &b.hand_backends,
            &b.lease_ms,
        ]
    }
}

impl Submits {
    /// Submits over `store`.
    pub fn new(store: Store) -> Self {
        Self { store, waiting: Waiting::default() }
    }

    /// Inserts a queued job; with an idempotency key already used by this owner, returns
    /// the first job instead. Refuses when the owner already has `cap` jobs queued or
    /// running (checked under a per-owner lock, so concurrent submits cannot overshoot).
    /// `audit`, when given, is committed with the job, naming the job answered; a refused
    /// submit writes none.
    ///
    /// One round trip: `BEGIN` (generic plans), the owner's lock, one statement that looks
    /// up the key, counts and inserts, and `COMMIT` go out together (pipelined on one
    /// connection). The statement starts after the lock is held, so its snapshot sees every
    /// submit of the owner that committed before; a failure anywhere aborts the transaction
    /// and the `COMMIT` rolls it back. Submits of the owner that arrive while one of theirs
    /// is being committed go together in the next commit, each its own statement in turn
    /// (each sees those before it), as described in this module.
    ///
    /// With `hand_off` (a free slot of an attached worker, of one with the job's model
    /// loaded when there is one), the job goes in already assigned to that slot, under its
    /// lease, when nothing of the slot's backends waits in the line of owners: it is then
    /// what a claim for the slot would take. It is never queued: no second write and commit
    /// before a worker has it, no row in the line, no wake-up of the dispatchers. When
    /// something waits, the job goes in queued and the slot is left to the dispatcher's
    /// claim, which takes whatever is next in line by priority and fair share. The job, when it
    /// went to the slot, is in `assigned`.
    ///
    /// The commit runs in a task of its own: a caller that stops waiting strands neither
    /// its own submit nor those committed with it.
    pub async fn insert(
        &self,
        new: NewJob,
        cap: u32,
        audit: Option<AuditEvent>,
        hand_off: Option<&FreeSlot<'_>>,
    ) -> Result<Submitted, SchedulerError> {
        let (answer, answered) = oneshot::channel();
        let owner = new.owner_id.clone();
        let pending = Pending { new, cap, audit, hand_off: hand_off.map(HandOff::of), answer };
        let first = match lock(&self.waiting).entry(owner.clone()) {
            Entry::Occupied(mut waiting) => {
                waiting.get_mut().push(pending);
                None
            }
            Entry::Vacant(none) => {
                none.insert(Vec::new());
                Some(pending)
            }
        };
        if let Some(first) = first {
            let submits = self.clone();
            tokio::spawn(submits.commit_in_turn(owner, vec![first]).in_current_span());
        }
        answered.await.map_err(|_| SchedulerError::Abandoned)?
    }

    /// Commits `batch`, then what waited for it, until the owner has nothing waiting.
    async fn commit_in_turn(self, owner: String, mut batch: Vec<Pending>) {
        // If this task panics, the owner is taken off the map, so later submits are not
        // left waiting for a commit that never comes; those waiting now are answered
        // `Abandoned` as their senders drop.
        let _on_panic = Leave { waiting: &self.waiting, owner: &owner };
        loop {
            self.commit(batch).await;
            let mut waiting = lock(&self.waiting);
            let Some(next) = waiting.get_mut(&owner) else { return };
            if next.is_empty() {
                // Under the lock: a submit arriving from now on starts the next turn.
                waiting.remove(&owner);
                return;
            }
            batch = next.drain(..next.len().min(MOST_PER_COMMIT)).collect();
        }
    }

    /// Commits `batch` in one transaction and answers each submit. If PostgreSQL refused
    /// it, each is tried again alone, so that a submit that cannot go in fails only itself.
    /// If the connection failed instead, the commit may have happened: nothing is tried
    /// again (that could queue a job twice), and the submits are answered that their
    /// outcome is unknown, as a lone submit's would be.
    async fn commit(&self, batch: Vec<Pending>) {
        let outcomes = match self.commit_together(&batch).await {
            Ok(submitted) => submitted.into_iter().map(Ok).collect(),
            Err(e) if batch.len() == 1 => vec![Err(e)],
            Err(e) if !nothing_committed(&e) => {
                tracing::error!(error = %e, submits = batch.len(), "a group commit's outcome is unknown");
                std::iter::once(Err(e))
                    .chain(std::iter::repeat_with(|| Err(SchedulerError::Abandoned)))
                    .take(batch.len())
                    .collect()
            }
            Err(e) => {
                tracing::warn!(error = %e, submits = batch.len(), "a group commit failed; committing each alone");
                let mut outcomes = Vec::with_capacity(batch.len());
                for pending in &batch {
                    let one = self.commit_together(std::slice::from_ref(pending)).await;
                    outcomes
                        .push(one.and_then(|one| one.into_iter().next().ok_or(SchedulerError::Abandoned)));
                }
                outcomes
            }
        };
        for (pending, outcome) in batch.into_iter().zip(outcomes) {
            // A caller gone by now had its submit committed all the same.
            let _ = pending.answer.send(outcome);
        }
    }

    /// One transaction: the owner's lock, then each submit's statement.
    async fn commit_together(&self, batch: &[Pending]) -> Result<Vec<Submitted>, SchedulerError> {
        let Some(owner) = batch.first().map(|p| p.new.owner_id.as_str()) else { return Ok(Vec::new()) };
        let client = self.store.pool.get().await?;
        let (lock, submit) =
            tokio::try_join!(client.prepare_cached(LOCK_OWNER), client.prepare_cached(&SUBMIT))?;
        let bound: Vec<Bound<'_>> = batch.iter().map(Pending::bound).collect();
        let params: Vec<_> = batch.iter().zip(&bound).map(|(p, b)| p.submit_params(b)).collect();
        let sent: Vec<(&tokio_postgres::Statement, Params<'_>)> =
            params.iter().map(|p| (&submit, p.as_slice())).collect();
        let rows = statements_in_tx(&client, Some((&lock, owner)), &sent).await?;
        Ok(rows
            .iter()
            .map(|rows| {
                let row = rows.first();
                let inserted = row
                    .map(|r| Inserted { job: job_from_row(r), deduplicated: !r.get::<_, bool>("inserted") });
                let assigned = inserted.as_ref().filter(|_| row.is_some_and(assigned_in_insert)).map(|i| {
                    Claimed { lease_token: i.job.lease_token.unwrap_or_default(), job: i.job.clone() }
                });
                Submitted { inserted, assigned }
            })
            .collect())
    }
}

/// True for a row of [`SUBMIT`] whose job went in assigned to the slot handed off.
fn assigned_in_insert(row: &tokio_postgres::Row) -> bool {
    row.get::<_, bool>("inserted") && row.get::<_, &str>("status") == Status::Assigned.as_str()
}

/// True when `e` says the transaction did not commit: no connection was had, or
/// PostgreSQL answered with an error, which aborts the transaction (and turns the
/// pipelined `COMMIT` into a rollback). An error of the connection itself says nothing of
/// the `COMMIT` already sent.
fn nothing_committed(e: &SchedulerError) -> bool {
    match e {
        SchedulerError::Pool(_) => true,
        SchedulerError::Db(e) => e.as_db_error().is_some(),
        _ => false,
    }
}

/// Takes an owner off the waiting map when the task committing for them panics.
struct Leave<'a> {
    waiting: &'a Waiting,
    owner: &'a str,
}

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            lock(self.waiting).remove(self.owner);
        }
    }
}

fn lock(waiting: &Waiting) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Pending>>> {
    waiting.lock().unwrap_or_else(PoisonError::into_inner)
}
