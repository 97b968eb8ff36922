//! The ingest use case: one artifact a generator uploads under its job's lease, from the
//! checked header to the stored record. The lease is checked, the bytes streamed into a
//! partial object, an upload already recorded answered as it was, the bytes checked and
//! thumbnailed, stored once under their sha256 (identical bytes share one object) and
//! recorded under the lease with their human name. The gRPC handler only translates the wire to and from this.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use chrono::Utc;
use futures_util::{Stream, StreamExt as _};
use tokio::sync::Semaphore;
use tracing::{info, warn};
use uuid::Uuid;

use crate::{
    Config, checks,
    error::OrganizerError,
    layout,
    storage::{Partial, Storage, blob_key, thumb_key},
    store::{FileRecord, JobLease, Store},
};

/// Largest chunk accepted in an upload.
const MAX_CHUNK: usize = 1024 * 1024;
/// Seconds a refused caller is told to wait before retrying a ceiling.
pub const RETRY_AFTER_SECS: u64 = 1;

/// Faults a test injects to see what a crash at a given moment leaves behind; none in
/// production (the default). Set with `Application::with_faults`, never from
/// configuration.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Store the bytes of an upload, then fail before inserting its record.
    pub crash_after_write: bool,
    /// While set, the store is full: every chunk written fails with ENOSPC (the partial
    /// object is dropped as on a real full disk) and the health probe says so. For hosts
    /// where a test may not mount a small filesystem.
    pub storage_full: Option<Arc<AtomicBool>>,
}

impl Faults {
    /// Whether the store is full now (`storage_full` set).
    pub fn full(&self) -> bool {
        self.storage_full.as_ref().is_some_and(|f| f.load(Ordering::SeqCst))
    }
}

/// The error a full disk gives (ENOSPC).
pub fn no_space() -> std::io::Error {
    std::io::Error::from_raw_os_error(28)
}

/// The header as sent: what the generator says it uploads.
#[derive(Debug, Clone)]
pub struct Header {
    /// The job the artifact belongs to.
    pub job_id: Uuid,
    /// The lease the generator holds on it, if it sent one.
    pub lease_token: Option<Uuid>,
    /// The owner the generator names (empty: the job's).
    pub owner_id: String,
    /// The project the generator names (none: the job's).
    pub project_id: Option<Uuid>,
    /// Which artifact of the job's batch.
    pub index: u32,
    /// `image` or `video`.
    pub kind: &'static str,
    /// What the bytes must be.
    pub expected: checks::Expected,
}

/// One message of an upload after the header: a chunk of bytes, or a message carrying
/// none (it still shows the sender is alive).
pub type Part = Option<Vec<u8>>;

/// What the job says where the header speaks for it: the owner and project recorded are
/// the job's; a header naming others is refused, and kind, dimensions and index must be the
/// job's. Returns the checks' expectations (the job's dimensions are the decode limits).
fn against_job(header: &Header, job: &JobLease) -> Result<checks::Expected, OrganizerError> {
    if !header.owner_id.is_empty() && header.owner_id != job.owner_id {
        return Err(OrganizerError::Forbidden("header.owner_id: not the leased job's owner".to_owned()));
    }
    if header.project_id.is_some() && header.project_id != job.project_id {
        return Err(OrganizerError::Forbidden("header.project_id: not the leased job's project".to_owned()));
    }
    if header.kind != job.kind {
        return Err(OrganizerError::invalid("header.kind", "not the job's kind"));
    }
    if header.index >= job.batch_size.max(1) {
        return Err(OrganizerError::invalid("header.index", "past the job's batch size"));
    }
    let frames = if job.kind == "video" { job.frames.max(1) } else { 1 };
    let e = &header.expected;
    if (e.width, e.height, e.frames) != (job.width, job.height, frames) {
        return Err(OrganizerError::invalid("header.width", "width, height and frames must be the job's"));
    }
    Ok(checks::Expected { width: job.width, height: job.height, frames, ..e.clone() })
}

/// Ingests uploads: the records, the bytes and the ceiling on uploads at once.
#[derive(Debug, Clone)]
pub struct Ingest {
    store: Store,
    storage: Arc<dyn Storage>,
    metrics: Arc<sakuga_mesh::metrics::Metrics>,
    families: crate::metrics::Families,
    config: Arc<Config>,
    /// Permits of concurrent uploads (`max_concurrent_uploads`).
    uploads: Arc<Semaphore>,
    faults: Faults,
}

impl Ingest {
    /// The use case over `store` and `storage`, with its ceilings from `config`.
    pub fn new(
        store: Store,
        storage: Arc<dyn Storage>,
        metrics: Arc<sakuga_mesh::metrics::Metrics>,
        families: crate::metrics::Families,
        config: Arc<Config>,
    ) -> Self {
        let uploads = Arc::new(Semaphore::new(config.max_concurrent_uploads));
        Self { store, storage, metrics, families, config, uploads, faults: Faults::default() }
    }

    /// The same, failing as `faults` say.
    #[must_use]
    pub fn with_faults(self, faults: Faults) -> Self {
        Self { faults, ..self }
    }

    /// The next message of an upload, waiting at most the upload idle timeout.
    pub async fn next_part<S, T>(&self, parts: &mut S) -> Result<Option<T>, OrganizerError>
    where
        S: Stream<Item = Result<T, OrganizerError>> + Unpin,
    {
        let idle = self.config.upload_idle_timeout;
        let Ok(next) = tokio::time::timeout(idle, parts.next()).await else {
            self.metrics.ceiling_refused("upload_idle_timeout");
            return Err(OrganizerError::Stalled(format!(
                "upload ended: no message for {idle:?} (upload_idle_timeout)"
            )));
        };
        next.transpose()
    }

    /// Stores the artifact `header` announces, its bytes read from `parts`; returns its
    /// record (the one already stored if this job and index were uploaded before).
    pub async fn run<S>(&self, header: Header, parts: &mut S) -> Result<FileRecord, OrganizerError>
    where
        S: Stream<Item = Result<Part, OrganizerError>> + Unpin,
    {
        let (job_id, index) = (header.job_id, header.index);
        let Some(lease) = header.lease_token else {
            warn!(%job_id, index, "artifact refused: no lease token");
            return Err(OrganizerError::NotLeased(job_id));
        };
        let job = self.store.job_lease(job_id).await?;
        if let Some(why) = job.as_ref().map_or(Some("no such job"), |j| j.refusal(lease)) {
            warn!(%job_id, index, reason = why, "artifact refused: not under the job's live lease");
            return Err(OrganizerError::NotLeased(job_id));
        }
        let job = job.ok_or(OrganizerError::NotLeased(job_id))?;
        let expected = against_job(&header, &job).inspect_err(|e| {
            warn!(%job_id, index, error = %e, "artifact refused: the header disagrees with the job");
        })?;
        let _permit = self.uploads.clone().try_acquire_owned().map_err(|_| {
            self.metrics.ceiling_refused("uploads_concurrent");
            OrganizerError::Exhausted {
                what: "uploads",
                ceiling: "max_concurrent_uploads",
                limit: self.config.max_concurrent_uploads,
                retry_after_secs: RETRY_AFTER_SECS,
            }
        })?;
        // Every early return from here drops the partial object, which removes its bytes.
        let (partial, received) = self.receive(parts, expected.size_bytes).await?;
        if let Some(existing) = self.store.by_job_index(job_id, index).await? {
            info!(file_id = %existing.id, %job_id, index, "artifact already stored");
            return Ok(existing);
        }
        let (checks, thumb, partial) =
            self.check(partial, received, expected.clone()).await.inspect_err(|e| {
                warn!(%job_id, index, error = %e, "artifact rejected");
                self.families.rejected();
            })?;
        let slug = match job.project_id {
            Some(p) => Some(
                self.store
                    .project_slug(p, &job.owner_id)
                    .await?
                    .ok_or_else(|| OrganizerError::NotFound(format!("project {p}")))?,
            ),
            None => None,
        };
        let now = Utc::now();
        let ext = layout::extension(&expected.mime).unwrap_or("bin");
        let key = layout::storage_key(slug.as_deref(), now, job_id, index, ext);
        let blob = blob_key(&expected.sha256);
        self.write(&blob, partial, thumb).await?;
        if self.faults.crash_after_write {
            return Err(OrganizerError::Unavailable(
                "organizer stopped after writing the bytes (test fault)".to_owned(),
            ));
        }
        let record = FileRecord {
            id: Uuid::now_v7(),
            job_id,
            owner_id: job.owner_id,
            project_id: job.project_id,
            index,
            kind: header.kind.to_owned(),
            mime_type: expected.mime,
            width: expected.width,
            height: expected.height,
            frames: expected.frames,
            size_bytes: expected.size_bytes,
            sha256: expected.sha256,
            storage_key: key,
            blob_key: Some(blob),
            checks,
            created_at: now,
        };
        let Some(stored) = self.store.insert(&record, lease).await? else {
            // The lease ended while the bytes arrived: nothing is recorded. The bytes may be
            // another record's too; the reconciler removes them if no record points at them.
            warn!(%job_id, index, "artifact refused: the lease ended during the upload");
            return Err(OrganizerError::NotLeased(job_id));
        };
        self.families.stored(&stored.kind, stored.size_bytes);
        if self.config.storage.export
            && let Err(e) = crate::export::place(self.storage.as_ref(), &stored).await
        {
            // A view: the record and its blob are stored; the reconciler places it later.
            warn!(file_id = %stored.id, error = %e, "export entry not placed");
            self.families.export_failed();
        }
        info!(file_id = %stored.id, job_id = %stored.job_id, index = stored.index, size = stored.size_bytes, "artifact stored");
        Ok(stored)
    }

    /// Streams the chunks into a partial object of the store, refusing the first byte past
    /// the header's size; returns it finished, with what arrived.
    async fn receive<S>(
        &self,
        parts: &mut S,
        size_bytes: u64,
    ) -> Result<(Box<dyn Partial>, checks::Received), OrganizerError>
    where
        S: Stream<Item = Result<Part, OrganizerError>> + Unpin,
    {
        let mut partial = self.storage.begin().await.map_err(OrganizerError::Storage)?;
        while let Some(part) = self.next_part(parts).await? {
            let Some(chunk) = part else { continue };
            if chunk.len() > MAX_CHUNK {
                return Err(OrganizerError::invalid("chunk", "must be at most 1 MiB"));
            }
            if partial.written() + chunk.len() as u64 > size_bytes {
                return Err(OrganizerError::Rejected("more bytes than the header's size_bytes".to_owned()));
            }
            if self.faults.full() {
                return Err(OrganizerError::Storage(no_space()));
            }
            partial.write(chunk).await.map_err(OrganizerError::Storage)?;
        }
        let sha256 = partial.finish().await.map_err(OrganizerError::Storage)?;
        let received = checks::Received { size_bytes: partial.written(), sha256 };
        Ok((partial, received))
    }

    /// Runs the checks and makes the thumbnail off the async runtime, reading the partial
    /// object from disk (never the whole artifact in memory). Returns the checks passed, the
    /// thumbnail (if one could be made) and the partial object.
    async fn check(
        &self,
        partial: Box<dyn Partial>,
        received: checks::Received,
        expected: checks::Expected,
    ) -> Result<(Vec<String>, Option<Vec<u8>>, Box<dyn Partial>), OrganizerError> {
        let side = self.config.thumbnail_max_side;
        tokio::task::spawn_blocking(move || {
            let passed = checks::run(&received, partial.open()?, &expected)?;
            let thumb = match partial.open().map(|r| sakuga_imaging::thumbnail_png_from(r, side)) {
                Ok(Ok(t)) => Some(t),
                Ok(Err(e)) => {
                    warn!(error = %e, "thumbnail not made");
                    None
                }
                Err(e) => {
                    warn!(error = %e, "thumbnail not made");
                    None
                }
            };
            Ok((passed, thumb, partial))
        })
        .await
        .map_err(|e| OrganizerError::Storage(std::io::Error::other(e)))?
    }

    /// Stores the checked bytes under their content key `blob` and their thumbnail beside
    /// them. Identical bytes already there are written again over themselves (still one
    /// object): the write marks them as just used, so the reconciler, which removes only
    /// objects older than the grace period, cannot remove them before this upload's record
    /// points at them.
    async fn write(
        &self,
        blob: &str,
        partial: Box<dyn Partial>,
        thumb: Option<Vec<u8>>,
    ) -> Result<(), OrganizerError> {
        partial.commit(blob).await?;
        self.put_thumbnail(blob, thumb).await;
        Ok(())
    }

    /// Stores a thumbnail made at upload; a failure is logged (a thumbnail is made again
    /// when asked for).
    async fn put_thumbnail(&self, key: &str, thumb: Option<Vec<u8>>) {
        if let Some(thumb) = thumb
            && let Err(e) = self.storage.put(&thumb_key(key), thumb).await
        {
            warn!(error = %e, "thumbnail not stored");
        }
    }
}
