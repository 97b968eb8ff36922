//! The organizer's metrics: artifacts stored and their bytes by kind, artifacts refused by
//! a check, export entries not placed. Families are registered once; `kind` is `image` or `video`.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
};
use sakuga_mesh::metrics::Metrics;

/// `kind` label.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct Kind {
    kind: &'static str,
}

/// The organizer's own families.
#[derive(Debug, Clone)]
pub struct Families {
    stored: Family<Kind, Counter>,
    bytes: Family<Kind, Counter>,
    rejected: Counter,
    export_failed: Counter,
}

/// A file kind as a label (`image`, `video`, else `other`).
fn kind_label(kind: &str) -> &'static str {
    match kind {
        "image" => "image",
        "video" => "video",
        _ => "other",
    }
}

impl Families {
    /// Registers the families in `m`.
    pub fn register(m: &Metrics) -> Self {
        let f = Self {
            stored: Family::default(),
            bytes: Family::default(),
            rejected: Counter::default(),
            export_failed: Counter::default(),
        };
        m.register("sakuga_files_stored", "Artifacts stored, by kind.", f.stored.clone());
        m.register("sakuga_upload_bytes", "Bytes of artifacts stored, by kind.", f.bytes.clone());
        m.register("sakuga_artifacts_rejected", "Artifacts refused by a check.", f.rejected.clone());
        m.register(
            "sakuga_export_failed",
            "Files stored whose export-view entry (storage.export) could not be placed.",
            f.export_failed.clone(),
        );
        f
    }

    /// One artifact of `kind` and `size` bytes stored.
    pub fn stored(&self, kind: &str, size: u64) {
        let label = Kind { kind: kind_label(kind) };
        self.stored.get_or_create(&label).inc();
        self.bytes.get_or_create(&label).inc_by(size);
    }

    /// One artifact refused by a check.
    pub fn rejected(&self) {
        self.rejected.inc();
    }

    /// One file's export entry not placed.
    pub fn export_failed(&self) {
        self.export_failed.inc();
    }
}
