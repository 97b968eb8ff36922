//! Keeps bytes and records in step, at start-up and periodically, one organizer at a time
//! (a PostgreSQL advisory lock; a replica that finds it held skips its pass):
//! - partial writes older than the grace period are removed;
//! - bytes (and thumbnails) no record points at, older than the grace period, are removed:
//!   they are what a crash between writing the bytes and inserting the record leaves, and
//!   what deleting the last record of shared bytes leaves; if the records cannot be read,
//!   nothing is removed;
//! - records whose bytes are gone are flagged (`missing_at`), and unflagged if they return;
//! - files of projects with a retention period, once older than it, are deleted (bytes,
//!   thumbnail, export entry, record) and audited;
//! - export-view entries (`export/…`, see [`crate::export`]) no record names, older than the
//!   grace period, are removed like orphan bytes (never counted as bytes); while the view is
//!   on, missing entries of records whose bytes are present are placed again.
//!
//! The grace period keeps it from racing an upload that has written its bytes and is about
//! to insert the record.
//!
//! A database with no file records at all while the store holds files is taken for the
//! wrong database (or an emptied one), not for a library to erase: the pass logs an error
//! and removes no bytes.

use std::{collections::HashSet, sync::Arc, time::Duration};

use sakuga_mesh::auth::{Audit, AuditEvent};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::{
    error::OrganizerError,
    storage::{EXPORT_DIR, Storage, THUMBS_DIR, thumb_key},
    store::Store,
};

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Partial writes removed.
    pub partial: usize,
    /// Unreferenced bytes and thumbnails removed.
    pub orphans: usize,
    /// Records newly flagged as missing their bytes.
    pub missing: usize,
    /// Files deleted by project retention.
    pub expired: usize,
    /// Export entries no record names, removed.
    pub exports_removed: usize,
    /// Missing export entries placed again (`storage.export` on).
    pub exports_placed: usize,
    /// Unreferenced bytes were not removed: the database holds no file records at all while
    /// the store holds files.
    pub refused_empty_database: bool,
    /// Another organizer was reconciling: this pass did nothing.
    pub locked_elsewhere: bool,
}

/// Removes the bytes at `key` and their thumbnail if no record points at them any more and
/// they were not written within `grace` (an upload of the same bytes rewrites them just
/// before inserting its record); else leaves them, to that record or to the reconciler.
/// Returns whether they were removed.
pub async fn remove_if_unused(
    store: &Store,
    storage: &dyn Storage,
    key: &str,
    grace: Duration,
) -> Result<bool, OrganizerError> {
    if store.bytes_referenced(key).await? {
        return Ok(false);
    }
    match storage.modified(key).await? {
        Some(at) if at.elapsed().unwrap_or_default() < grace => return Ok(false),
        _ => {}
    }
    storage.delete(key).await?;
    storage.delete(&thumb_key(key)).await?;
    Ok(true)
}

/// The reconciler.
#[derive(Debug, Clone)]
pub struct Reconciler {
    /// Records.
    pub store: Store,
    /// Bytes.
    pub storage: Arc<dyn Storage>,
    /// Audit log of retention deletions.
    pub audit: Audit,
    /// Unreferenced bytes younger than this are left alone.
    pub grace: Duration,
    /// Whether the export view is on (`storage.export`): missing entries are placed again.
    /// Entries no record names are removed either way.
    pub export: bool,
}

impl Reconciler {
    /// One pass, unless another organizer is running one.
    pub async fn run_once(&self) -> Result<Report, OrganizerError> {
        Ok(self
            .store
            .with_reconcile_lock(self.pass())
            .await?
            .unwrap_or(Report { locked_elsewhere: true, ..Report::default() }))
    }

    async fn pass(&self) -> Result<Report, OrganizerError> {
        let mut report =
            Report { partial: self.storage.sweep_partial(self.grace).await?, ..Report::default() };
        report.expired = self.expire().await?;
        // Records first: bytes written after this read are younger than the grace period.
        let records = self.store.all_keys().await?;
        let referenced: HashSet<String> = records
            .iter()
            .flat_map(|r| [r.bytes.clone(), thumb_key(&r.bytes)].into_iter().chain(r.export.clone()))
            .collect();
        let objects = self.storage.keys().await?;
        if records.is_empty() && !objects.is_empty() {
            error!(
                stored = objects.len(),
                "the database holds no file records but the store holds files: is this the right \
                 database? nothing is deleted"
            );
            report.refused_empty_database = true;
            return Ok(report);
        }
        let export_prefix = format!("{EXPORT_DIR}/");
        let mut listed = HashSet::with_capacity(objects.len());
        for object in objects {
            let old = |at: std::time::SystemTime| at.elapsed().unwrap_or_default() >= self.grace;
            if old(object.modified) && !referenced.contains(&object.key) {
                // Looked at again just before: an upload of the same bytes rewrites them
                // before inserting its record.
                if !self.storage.modified(&object.key).await?.is_some_and(old) {
                    listed.insert(object.key);
                    continue;
                }
                self.storage.delete(&object.key).await?;
                if object.key.starts_with(&export_prefix) {
                    info!(key = %object.key, "removing an export entry no record names");
                    report.exports_removed += 1;
                } else {
                    warn!(key = %object.key, thumbnail = object.key.starts_with(THUMBS_DIR), "removing bytes no record points at");
                    report.orphans += 1;
                }
                continue;
            }
            listed.insert(object.key);
        }
        for record in records {
            let present = self.storage.exists(&record.bytes).await?;
            if !present && !record.flagged {
                error!(file_id = %record.id, "stored bytes are missing; the record is flagged");
                report.missing += 1;
            }
            if present == record.flagged {
                self.store.set_missing(record.id, !present).await?;
            }
            if let Some(export) = record.export.filter(|e| self.export && present && !listed.contains(e)) {
                match self.storage.copy(&record.bytes, &export).await {
                    Ok(()) => report.exports_placed += 1,
                    Err(e) => warn!(file_id = %record.id, error = %e, "export entry not placed"),
                }
            }
        }
        Ok(report)
    }

    async fn expire(&self) -> Result<usize, OrganizerError> {
        let mut total = 0;
        loop {
            let batch = self.store.delete_expired(500).await?;
            if batch.is_empty() {
                return Ok(total);
            }
            for f in &batch {
                remove_if_unused(&self.store, self.storage.as_ref(), f.bytes_key(), self.grace).await?;
                crate::export::remove(self.storage.as_ref(), f).await?;
                self.audit
                    .record(AuditEvent {
                        actor: "service:organizer".to_owned(),
                        action: "FileService.Retention".to_owned(),
                        target: format!("file:{}", f.id),
                        result: "OK".to_owned(),
                        ..AuditEvent::default()
                    })
                    .await;
            }
            total += batch.len();
        }
    }

    /// Runs a pass every `every` until `shutdown`.
    pub fn spawn(self, every: Duration, shutdown: CancellationToken) -> JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(every) => {}
                }
                match self.run_once().await {
                    Ok(r) if r != Report::default() => info!(?r, "reconciled storage and records"),
                    Ok(_) => {}
                    Err(e) => warn!(error = %e, "reconcile pass failed"),
                }
            }
        })
    }
}
