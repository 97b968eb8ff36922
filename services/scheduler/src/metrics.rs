//! The scheduler's metrics: jobs finished by outcome, job duration by backend, dispatch
//! latency, lease expiries, and (refreshed at each scrape) unfinished jobs by state, this
//! replica's worker slots and its open job watches.

use std::sync::Arc;

use sakuga_mesh::metrics::{Metrics, Refresh};

use crate::{
    State,
    job::{Job, Status},
    store::Expired,
};

/// A job reached a final state.
pub fn finished(m: &Metrics, job: &Job) {
    if !matches!(job.status, Status::Succeeded | Status::Failed | Status::Canceled) {
        return;
    }
    m.inc(
        "sakuga_jobs_finished_total",
        "Jobs that reached a final state, by outcome.",
        &[("outcome", job.status.as_str())],
        1.0,
    );
    if let (Some(start), Some(end)) = (job.started_at, job.finished_at) {
        let secs = (end - start).to_std().unwrap_or_default().as_secs_f64();
        m.observe(
            "sakuga_job_duration_seconds",
            "Time from a job's start to its final state, by backend and outcome.",
            &[("backend", &job.spec.backend), ("outcome", job.status.as_str())],
            secs,
        );
    }
}

/// A job was handed to a worker; the first attempt's latency since submission is recorded.
pub fn dispatched(m: &Metrics, job: &Job) {
    if job.attempts <= 1 {
        let secs = (chrono::Utc::now() - job.created_at).to_std().unwrap_or_default().as_secs_f64();
        m.observe(
            "sakuga_dispatch_latency_seconds",
            "Time from submission to assignment to a worker (first attempts).",
            &[],
            secs,
        );
    }
}

/// Leases that ran out.
pub fn leases_expired(m: &Metrics, expired: &[Expired]) {
    for e in expired {
        m.inc(
            "sakuga_lease_expiries_total",
            "Job leases that ran out, by what became of the job.",
            &[("outcome", if e.status == Status::Failed { "failed" } else { "requeued" })],
            1.0,
        );
    }
}

/// Before each scrape: unfinished jobs by state (all replicas, from PostgreSQL; a count
/// bounded by [`crate::store::UNFINISHED_COUNT_LIMIT`] over the unfinished jobs only, never a
/// count of the whole history), this replica's worker slots, and its job watches (streams
/// and the per-job channels they share, both back to zero when nobody watches).
pub fn refresh(state: &Arc<State>) -> Refresh {
    let state = state.clone();
    Arc::new(move || {
        let state = state.clone();
        Box::pin(async move {
            let m = &state.metrics;
            if let Ok(counts) = state.store.count_unfinished().await {
                for s in [Status::Queued, Status::Assigned, Status::Running] {
                    let n = counts.iter().find(|(k, _)| *k == s.as_str()).map_or(0, |(_, n)| *n);
                    #[allow(clippy::cast_precision_loss)]
                    m.set(
                        "sakuga_jobs",
                        "Unfinished jobs by state (all replicas; counted up to 100000).",
                        &[("state", s.as_str())],
                        n as f64,
                    );
                }
            }
            let (busy, total) = state.registry.slot_usage();
            #[allow(clippy::cast_precision_loss)]
            m.set(
                "sakuga_worker_slots_busy",
                "Worker slots in use on this replica's sessions.",
                &[],
                busy as f64,
            );
            m.set("sakuga_worker_slots", "Worker slots on this replica's sessions.", &[], f64::from(total));
            #[allow(clippy::cast_precision_loss)]
            {
                m.set(
                    "sakuga_job_watchers",
                    "WatchJob streams open on this replica.",
                    &[],
                    state.watchers.held() as f64,
                );
                m.set(
                    "sakuga_job_event_channels",
                    "Jobs with an in-process event channel on this replica (watched here now).",
                    &[],
                    state.events.channels() as f64,
                );
            }
        })
    })
}
