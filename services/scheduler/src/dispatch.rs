//! The dispatcher that hands queued jobs to attached workers (as
//! [`WorkerCommand::Assign`] on the [`crate::registry`]), the lease reaper and the
//! retention sweep. PostgreSQL stays the source of truth: claims use
//! `FOR UPDATE SKIP LOCKED`, so several replicas never hand out the same job.

use std::{collections::BTreeSet, sync::Arc, time::Duration};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::{
    registry::{FreeWorker, Reservation, WorkerCommand},
    state::State,
    store::Claimed,
};

/// Hands queued jobs to free workers whenever woken, and at least every `poll`.
pub fn spawn_dispatcher(
    state: Arc<State>,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let poll = state.config.dispatch_poll;
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
    // Slots first. Warm first: every free worker takes jobs for the models it already has
    // loaded (no cold start), then free slots take whatever is next in line.
    // A claim that found fewer jobs than it asked for leaves nothing of its backends for the
    // next workers of this pass: they are not asked again (a thousand idle workers would be a
    // thousand empty claims per wake). A job queued meanwhile wakes the next pass; rows
    // another replica's claim held are that claim's, and the poll catches any it left.
    let mut drained: BTreeSet<String> = BTreeSet::new();
    for warm in [true, false] {
        for worker in state.registry.free_workers() {
            if worker.free == 0
                || (warm && worker.models.is_empty())
                || (!warm && worker.backends.iter().all(|b| drained.contains(b)))
            {
                continue;
            }
            let (claimed, asked) =
                hand_out(state, &worker, &worker.backends, warm, worker.free, false).await?;
            if !warm && claimed < asked {
                drained.extend(worker.backends.iter().cloned());
            }
        }
    }
    // Then queue slots: a job waits in a backend's own queue behind another only for a
    // backend no worker here has a free slot for, so it never waits while a slot is idle.
    // Jobs of models loaded there first.
    for warm in [true, false] {
        let workers = state.registry.free_workers();
        if warm {
            // A slot still free has nothing to claim: a job waiting behind another in some
            // backend's queue is withdrawn from there, queued again, and claimed by it.
            let asked = state.registry.withdraw_for(&workers);
            if asked > 0 {
                debug!(asked, "waiting jobs asked to be withdrawn for free slots");
            }
        }
        let idle: BTreeSet<&str> = workers
            .iter()
            .filter(|w| w.free > 0)
            .flat_map(|w| w.backends.iter().map(String::as_str))
            .collect();
        for worker in &workers {
            if worker.free > 0 || worker.queue_free == 0 || (warm && worker.models.is_empty()) {
                continue;
            }
            let busy: Vec<String> =
                worker.backends.iter().filter(|b| !idle.contains(b.as_str())).cloned().collect();
            if !busy.is_empty() {
                hand_out(state, worker, &busy, warm, worker.queue_free, true).await?;
            }
        }
    }
    Ok(())
}

/// Claims up to `limit` queued jobs of `backends` (of the worker's loaded models when
/// `warm`) for its free slots (with `queue`, its queue slots too) and sends them to the
/// worker; how many it claimed and how many it asked for (the slots still free once
/// reserved: a claim of a submit running at the same time cannot count them free too).
async fn hand_out(
    state: &State,
    worker: &FreeWorker,
    backends: &[String],
    warm: bool,
    limit: u32,
    queue: bool,
) -> Result<(u32, u32), crate::error::SchedulerError> {
    let mut slots = state.registry.reserve(worker.session, limit, queue);
    let asked = slots.count();
    if asked == 0 {
        return Ok((0, 0));
    }
    let models = warm.then_some(worker.models.as_slice());
    let turn = state.registry.claim_turn().await;
    let claimed =
        state.store.claim(&worker.worker_id, backends, models, asked, state.config.lease_ttl).await?;
    drop(turn);
    let count = u32::try_from(claimed.len()).unwrap_or(u32::MAX);
    deliver(state, &worker.worker_id, &mut slots, claimed, warm).await?;
    Ok((count, asked))
}

/// Sends claimed jobs to the worker whose slots `slots` reserved (one slot each), each
/// joining the trace of its submit; a job the worker can no longer take (it went away)
/// is handed back to the queue.
pub(crate) async fn deliver(
    state: &State,
    worker_id: &str,
    slots: &mut Reservation<'_>,
    claimed: Vec<Claimed>,
    warm: bool,
) -> Result<(), crate::error::SchedulerError> {
    for c in claimed {
        // The dispatch joins the submitter's trace; the worker's spans join it.
        let span = tracing::info_span!(
            "dispatch",
            otel.name = "dispatch",
            service = "scheduler",
            job_id = %c.job.id,
            worker_id = %worker_id,
        );
        sakuga_mesh::telemetry::set_parent_from_map(&span, &c.job.trace_context);
        let context = span.in_scope(sakuga_mesh::telemetry::current_context_map);
        let (id, lease) = (c.job.id, c.lease_token);
        let command = WorkerCommand::Assign { job: Box::new(c.job.clone()), lease, trace_context: context };
        if slots.assign(id, lease, command) {
            state.families.dispatched(&c.job);
            info!(job_id = %c.job.id, worker_id = %worker_id, attempt = c.job.attempts, warm, "job assigned");
            state.events.status_changed(&c.job);
        } else {
            warn!(job_id = %c.job.id, worker_id = %worker_id, "worker went away, job handed back");
            state.store.unclaim(c.job.id, c.lease_token).await?;
        }
    }
    Ok(())
}

/// How often the reaper deletes rows of the line of owners left without queued jobs (a
/// canceled job leaves one behind; claims pass over them, so they cost only scan time).
const PRUNE_HEADS_EVERY: Duration = Duration::from_mins(1);

/// Requeues (or fails) jobs whose lease ran out, tells the holder if it is still attached;
/// now and then prunes the line of owners.
pub fn spawn_reaper(
    state: Arc<State>,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let period = (state.config.lease_ttl / 4).max(Duration::from_millis(250));
        let mut pruned = tokio::time::Instant::now();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(period) => {}
            }
            if pruned.elapsed() >= PRUNE_HEADS_EVERY {
                pruned = tokio::time::Instant::now();
                match state.store.prune_queue_heads(1_000).await {
                    Ok(0) => {}
                    Ok(n) => debug!(deleted = n, "owners with nothing queued left the line"),
                    Err(e) => error!(error = %e, "pruning the line of owners failed"),
                }
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

/// Deletes finished jobs past the retention age, in batches, every `retention_sweep`.
pub fn spawn_retention(state: Arc<State>, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let days = state.config.job_retention_days;
        if days == 0 {
            return;
        }
        let period = state.config.retention_sweep;
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
