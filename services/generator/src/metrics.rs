//! The generator's metrics: attempts by backend and result, attempt duration, artifacts
//! waiting for storage and upload retries by reason, and (at each scrape) this worker's
//! slots. Families are registered once; labels are the
//! backend's static name and a fixed set of results.

use std::sync::{
    Arc,
    atomic::{AtomicU32, Ordering},
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
};
use sakuga_mesh::metrics::{HistogramFamily, Metrics, Refresh, histogram_family};

use crate::{backend::Backend, upload::Fault};

/// Attempts running now on a worker: the worker counts them, the slot gauges read them.
pub(crate) type Busy = Arc<AtomicU32>;

/// `backend` label.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct BackendLabel {
    backend: &'static str,
}

/// `backend` and `result` labels.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct BackendResult {
    backend: &'static str,
    result: &'static str,
}

/// `held` label: where an artifact waiting for storage is kept (`memory`, `spool`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct HeldLabel {
    held: &'static str,
}

/// `reason` label: a [`Fault`]'s label.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

/// The generator's own families.
#[derive(Debug, Clone)]
pub(crate) struct Families {
    jobs: Family<BackendResult, Counter>,
    job_seconds: HistogramFamily<BackendLabel>,
    slots: Family<BackendLabel, Gauge>,
    slots_busy: Family<BackendLabel, Gauge>,
    queue_slots: Family<BackendLabel, Gauge>,
    queue_slots_busy: Family<BackendLabel, Gauge>,
    waiting: Family<HeldLabel, Gauge>,
    upload_retries: Family<ReasonLabel, Counter>,
}

impl Families {
    /// Registers the families in `m`.
    pub(crate) fn register(m: &Metrics) -> Self {
        let f = Self {
            jobs: Family::default(),
            job_seconds: histogram_family(),
            slots: Family::default(),
            slots_busy: Family::default(),
            queue_slots: Family::default(),
            queue_slots_busy: Family::default(),
            waiting: Family::default(),
            upload_retries: Family::default(),
        };
        m.register(
            "sakuga_generator_jobs",
            "Job attempts run by this worker, by backend and result.",
            f.jobs.clone(),
        );
        m.register(
            "sakuga_generator_job_seconds",
            "Time an attempt took on this worker (generation and uploads), by backend.",
            f.job_seconds.clone(),
        );
        m.register("sakuga_worker_slots", "Slots of this worker.", f.slots.clone());
        m.register("sakuga_worker_slots_busy", "Slots of this worker running a job.", f.slots_busy.clone());
        m.register(
            "sakuga_worker_queue_slots",
            "Queue slots of this worker: jobs its backend queues behind running ones.",
            f.queue_slots.clone(),
        );
        m.register(
            "sakuga_worker_queue_slots_busy",
            "Jobs of this worker waiting in its backend's queue (the jobs it holds beyond its slots).",
            f.queue_slots_busy.clone(),
        );
        m.register(
            "sakuga_generator_artifacts_waiting",
            "Finished artifacts this worker keeps because storage is full or unreachable, by where they are held (memory, spool).",
            f.waiting.clone(),
        );
        m.register(
            "sakuga_generator_upload_retries",
            "Uploads that failed for the platform and are tried again, by reason.",
            f.upload_retries.clone(),
        );
        for held in ["memory", "spool"] {
            drop(f.waiting.get_or_create(&HeldLabel { held }));
        }
        for fault in Fault::ALL {
            drop(f.upload_retries.get_or_create(&ReasonLabel { reason: fault.label() }));
        }
        f
    }

    /// The gauge of artifacts held in `held` (`memory` or `spool`).
    pub(crate) fn waiting(&self, held: &'static str) -> Gauge {
        self.waiting.get_or_create(&HeldLabel { held }).clone()
    }

    /// An upload failed for `fault` and is tried again.
    pub(crate) fn upload_retry(&self, fault: Fault) {
        self.upload_retries.get_or_create(&ReasonLabel { reason: fault.label() }).inc();
    }

    /// One attempt ended with `result` after `secs`.
    pub(crate) fn attempt(&self, backend: &'static str, result: &'static str, secs: f64) {
        self.jobs.get_or_create(&BackendResult { backend, result }).inc();
        self.job_seconds.get_or_create(&BackendLabel { backend }).observe(secs);
    }
}

/// Before each scrape: slots in all and in use.
pub(crate) fn slot_gauges(families: Arc<Families>, backend: Arc<dyn Backend>, busy: Busy) -> Refresh {
    Arc::new(move || {
        let (families, backend, busy) = (families.clone(), backend.clone(), busy.clone());
        Box::pin(async move {
            let label = BackendLabel { backend: backend.name() };
            let (slots, held) = (backend.slots(), busy.load(Ordering::Relaxed));
            families.slots.get_or_create(&label).set(i64::from(slots));
            families.slots_busy.get_or_create(&label).set(i64::from(held.min(slots)));
            families.queue_slots.get_or_create(&label).set(i64::from(backend.queue_slots()));
            families.queue_slots_busy.get_or_create(&label).set(i64::from(held.saturating_sub(slots)));
        })
    })
}
