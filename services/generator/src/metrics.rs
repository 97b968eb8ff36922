//! The generator's metrics: attempts by backend and result, attempt duration, and (at
//! each scrape) this worker's slots. Families are registered once; labels are the
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

use crate::backend::Backend;

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

/// The generator's own families.
#[derive(Debug, Clone)]
pub(crate) struct Families {
    jobs: Family<BackendResult, Counter>,
    job_seconds: HistogramFamily<BackendLabel>,
    slots: Family<BackendLabel, Gauge>,
    slots_busy: Family<BackendLabel, Gauge>,
}

impl Families {
    /// Registers the families in `m`.
    pub(crate) fn register(m: &Metrics) -> Self {
        let f = Self {
            jobs: Family::default(),
            job_seconds: histogram_family(),
            slots: Family::default(),
            slots_busy: Family::default(),
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
        f
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
            families.slots.get_or_create(&label).set(i64::from(backend.slots()));
            families.slots_busy.get_or_create(&label).set(i64::from(busy.load(Ordering::Relaxed)));
        })
    })
}
