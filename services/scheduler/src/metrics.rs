//! The scheduler's metrics: jobs finished by outcome, job duration by backend, dispatch
//! latency, lease expiries, and (refreshed at each scrape) queue depth by state and this
//! replica's worker slots. Families are registered once; every label value comes from a
//! closed set (job states, the validated backends).

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
};
use sakuga_mesh::metrics::{HistogramFamily, Metrics, histogram_family, latency_histogram};

use crate::{
    job::{Job, Status},
    store::{Expired, Recorded},
};

/// `outcome` label.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct Outcome {
    outcome: &'static str,
}

/// `backend` and `outcome` labels.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct BackendOutcome {
    backend: &'static str,
    outcome: &'static str,
}

/// `state` label.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct JobState {
    state: &'static str,
}

/// The scheduler's own families.
#[derive(Debug, Clone)]
pub struct Families {
    finished: Family<Outcome, Counter>,
    duration: HistogramFamily<BackendOutcome>,
    dispatch_latency: Histogram,
    lease_expiries: Family<Outcome, Counter>,
    jobs: Family<JobState, Gauge>,
    slots_busy: Gauge,
    slots: Gauge,
    queue_slots_busy: Gauge,
    queue_slots: Gauge,
    watchers: Gauge,
    channels: Gauge,
    webhook_attempts: HistogramFamily<Outcome>,
    webhook_deliveries: Family<Outcome, Counter>,
    webhook_latency: Histogram,
    webhook_pending: Gauge,
}

/// A backend name as a label: one of the validated backends, or `other`.
fn backend_label(backend: &str) -> &'static str {
    crate::validate::BACKENDS.iter().copied().find(|b| *b == backend).unwrap_or("other")
}

impl Families {
    /// Registers the families in `m`.
    pub fn register(m: &Metrics) -> Self {
        let f = Self {
            finished: Family::default(),
            duration: histogram_family(),
            dispatch_latency: latency_histogram(),
            lease_expiries: Family::default(),
            jobs: Family::default(),
            slots_busy: Gauge::default(),
            slots: Gauge::default(),
            queue_slots_busy: Gauge::default(),
            queue_slots: Gauge::default(),
            watchers: Gauge::default(),
            channels: Gauge::default(),
            webhook_attempts: histogram_family(),
            webhook_deliveries: Family::default(),
            webhook_latency: latency_histogram(),
            webhook_pending: Gauge::default(),
        };
        m.register(
            "sakuga_jobs_finished",
            "Jobs that reached a final state, by outcome.",
            f.finished.clone(),
        );
        m.register(
            "sakuga_job_duration_seconds",
            "Time from a job's start to its final state, by backend and outcome.",
            f.duration.clone(),
        );
        m.register(
            "sakuga_dispatch_latency_seconds",
            "Time from submission to assignment to a worker (first attempts).",
            f.dispatch_latency.clone(),
        );
        m.register(
            "sakuga_lease_expiries",
            "Job leases that ran out, by what became of the job.",
            f.lease_expiries.clone(),
        );
        m.register(
            "sakuga_jobs",
            "Unfinished jobs by state (all replicas; counted up to 100000).",
            f.jobs.clone(),
        );
        m.register(
            "sakuga_worker_slots_busy",
            "Worker slots in use on this replica's sessions.",
            f.slots_busy.clone(),
        );
        m.register("sakuga_worker_slots", "Worker slots on this replica's sessions.", f.slots.clone());
        m.register(
            "sakuga_worker_queue_slots_busy",
            "Worker queue slots holding a job that waits in its backend's queue, on this replica's sessions.",
            f.queue_slots_busy.clone(),
        );
        m.register(
            "sakuga_worker_queue_slots",
            "Worker queue slots (jobs a backend queues behind running ones) on this replica's sessions.",
            f.queue_slots.clone(),
        );
        m.register("sakuga_job_watchers", "WatchJob streams open on this replica.", f.watchers.clone());
        m.register(
            "sakuga_job_event_channels",
            "Jobs with an in-process event channel on this replica (watched here now).",
            f.channels.clone(),
        );
        m.register(
            "sakuga_webhook_attempt_duration_seconds",
            "Webhook POSTs made by this replica, by outcome (delivered or failed), and how long each took.",
            f.webhook_attempts.clone(),
        );
        m.register(
            "sakuga_webhook_deliveries",
            "Webhook attempts recorded by this replica, by what became of the delivery: delivered, retrying, \
             gave_up (retry period over) or lost (its lease had run out).",
            f.webhook_deliveries.clone(),
        );
        m.register(
            "sakuga_webhook_delivery_latency_seconds",
            "Time from a job's change to its webhook's acceptance by the endpoint (retries included).",
            f.webhook_latency.clone(),
        );
        m.register(
            "sakuga_webhook_deliveries_pending",
            "Webhook deliveries waiting for an attempt or in one (all replicas; counted up to 100000).",
            f.webhook_pending.clone(),
        );
        f
    }

    /// A webhook POST ended.
    pub fn webhook_attempt(&self, delivered: bool, elapsed: std::time::Duration) {
        let outcome = if delivered { "delivered" } else { "failed" };
        self.webhook_attempts.get_or_create(&Outcome { outcome }).observe(elapsed.as_secs_f64());
    }

    /// A webhook attempt was recorded; a delivery's latency since its job's change is
    /// observed when it is accepted.
    pub fn webhook_recorded(&self, recorded: Recorded, changed_at: chrono::DateTime<chrono::Utc>) {
        let outcome = match recorded {
            Recorded::Delivered => "delivered",
            Recorded::Retrying => "retrying",
            Recorded::GaveUp => "gave_up",
            Recorded::Lost => "lost",
        };
        self.webhook_deliveries.get_or_create(&Outcome { outcome }).inc();
        if recorded == Recorded::Delivered {
            let secs = (chrono::Utc::now() - changed_at).to_std().unwrap_or_default().as_secs_f64();
            self.webhook_latency.observe(secs);
        }
    }

    /// Pending webhook deliveries, all replicas (set at each scrape).
    pub fn set_webhooks_pending(&self, n: i64) {
        self.webhook_pending.set(n);
    }

    /// A job reached a final state.
    pub fn finished(&self, job: &Job) {
        if !matches!(job.status, Status::Succeeded | Status::Failed | Status::Canceled) {
            return;
        }
        let outcome = job.status.as_str();
        self.finished.get_or_create(&Outcome { outcome }).inc();
        if let (Some(start), Some(end)) = (job.started_at, job.finished_at) {
            let secs = (end - start).to_std().unwrap_or_default().as_secs_f64();
            let labels = BackendOutcome { backend: backend_label(&job.spec.backend), outcome };
            self.duration.get_or_create(&labels).observe(secs);
        }
    }

    /// A job was handed to a worker; the first attempt's latency since submission is
    /// recorded.
    pub fn dispatched(&self, job: &Job) {
        if job.attempts <= 1 {
            let secs = (chrono::Utc::now() - job.created_at).to_std().unwrap_or_default().as_secs_f64();
            self.dispatch_latency.observe(secs);
        }
    }

    /// Leases that ran out.
    pub fn leases_expired(&self, expired: &[Expired]) {
        for e in expired {
            let outcome = if e.status == Status::Failed { "failed" } else { "requeued" };
            self.lease_expiries.get_or_create(&Outcome { outcome }).inc();
        }
    }

    /// Unfinished jobs in state `s`, all replicas (set at each scrape).
    pub fn set_jobs(&self, s: Status, n: i64) {
        self.jobs.get_or_create(&JobState { state: s.as_str() }).set(n);
    }

    /// This replica's worker slots and queue slots in use and in all (set at each scrape).
    pub fn set_slots(&self, usage: crate::registry::SlotUsage) {
        self.slots_busy.set(i64::from(usage.busy));
        self.slots.set(i64::from(usage.slots));
        self.queue_slots_busy.set(i64::from(usage.queue_busy));
        self.queue_slots.set(i64::from(usage.queue_slots));
    }

    /// This replica's `WatchJob` streams and the job channels they share (set at each
    /// scrape).
    pub fn set_watch(&self, watchers: usize, channels: usize) {
        self.watchers.set(i64::try_from(watchers).unwrap_or(i64::MAX));
        self.channels.set(i64::try_from(channels).unwrap_or(i64::MAX));
    }
}
