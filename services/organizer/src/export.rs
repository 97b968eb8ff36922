//! The optional export view (`storage.export`): each file's bytes again at its record's
//! human name under `export/` (`export/<project-slug|unsorted>/YYYY/MM/DD/<job>-<n>.png`),
//! so people browsing the folder or the bucket find their files by project and date.
//!
//! It is a view, never the truth: the record names the file and points at its blob, reads
//! go to the blob, and an entry can be lost or rebuilt at any time. An entry is placed after
//! the record is committed (a failure is logged and counted, never an upload's failure),
//! removed with the record (DeleteFile, retention), and the reconciler removes entries no
//! record names and re-creates missing ones while the view is on.

use std::io;

use crate::{
    storage::{Storage, export_key},
    store::FileRecord,
};

/// The export entry of `record`: `None` for records from before content addressing, whose
/// bytes are at their human name already.
pub fn entry(record: &FileRecord) -> Option<(&str, String)> {
    record.blob_key.as_deref().map(|blob| (blob, export_key(&record.storage_key)))
}

/// Places `record`'s bytes at its export key (a hard link or server-side copy of the blob).
pub async fn place(storage: &dyn Storage, record: &FileRecord) -> io::Result<()> {
    match entry(record) {
        Some((blob, key)) => storage.copy(blob, &key).await,
        None => Ok(()),
    }
}

/// Removes `record`'s export entry (nothing if it has none, or the view was never on).
pub async fn remove(storage: &dyn Storage, record: &FileRecord) -> io::Result<()> {
    match entry(record) {
        Some((_, key)) => storage.delete(&key).await,
        None => Ok(()),
    }
}
