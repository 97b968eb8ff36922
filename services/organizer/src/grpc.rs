//! Proto <-> domain conversions and FileService.

use std::{path::PathBuf, sync::Arc, time::Duration};

use chrono::Utc;
use sakuga_mesh::{
    api::{Page, from_timestamp, timestamp},
    auth as mesh_auth,
};
use sakuga_proto::v1::{self as pb, file_service_server::FileService, store_artifact_request::Part};
use tokio::sync::Semaphore;
use tokio_stream::StreamExt as _;
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, warn};
use uuid::Uuid;

use crate::{
    Config, checks,
    error::OrganizerError,
    layout,
    limits::{self, PerKeySlots, Slot},
    storage::{Partial, Storage, thumb_key},
    store::{FileRecord, JobLease, ListFilter, Store},
};

/// Largest chunk accepted in an upload.
const MAX_CHUNK: usize = 1024 * 1024;
/// Chunk size of ReadFile.
const READ_CHUNK: usize = 256 * 1024;

fn kind_of(k: i32) -> Option<&'static str> {
    match pb::JobKind::try_from(k).ok()? {
        pb::JobKind::Image => Some("image"),
        pb::JobKind::Video => Some("video"),
        pb::JobKind::Unspecified => None,
    }
}

/// The API view of a record: ids and metadata, never the storage path.
fn file_to_pb(f: &FileRecord) -> pb::File {
    let name =
        PathBuf::from(&f.storage_key).iter().skip(1).collect::<PathBuf>().to_string_lossy().into_owned();
    pb::File {
        id: f.id.to_string(),
        job_id: f.job_id.to_string(),
        owner_id: f.owner_id.clone(),
        project_id: f.project_id.map(|p| p.to_string()).unwrap_or_default(),
        index: f.index,
        kind: if f.kind == "video" { pb::JobKind::Video } else { pb::JobKind::Image }.into(),
        mime_type: f.mime_type.clone(),
        width: f.width,
        height: f.height,
        frames: f.frames,
        size_bytes: f.size_bytes,
        sha256: f.sha256.clone(),
        checks: f.checks.clone(),
        create_time: Some(timestamp(f.created_at)),
        name,
    }
}

fn parse_id(field: &'static str, s: &str) -> Result<Uuid, OrganizerError> {
    Uuid::parse_str(s).map_err(|_| OrganizerError::invalid(field, "must be a UUID"))
}

/// Seconds a refused caller is told to wait before retrying a ceiling.
const RETRY_AFTER_SECS: u64 = 1;

/// FileService over the records and the bytes.
#[derive(Debug, Clone)]
pub struct Api {
    /// Records.
    pub store: Store,
    /// Bytes.
    pub storage: Arc<dyn Storage>,
    /// Prometheus metrics.
    pub metrics: Arc<sakuga_mesh::metrics::Metrics>,
    /// The organizer's own metric families.
    pub families: crate::metrics::Families,
    /// Configuration (limits).
    pub config: Arc<Config>,
    /// Permits of concurrent uploads (`max_concurrent_uploads`).
    uploads: Arc<Semaphore>,
    /// Read streams per user (`max_reads_per_user`).
    reads: Arc<PerKeySlots>,
}

/// The header as sent: what the generator says it uploads.
struct Header {
    job_id: Uuid,
    lease_token: Option<Uuid>,
    owner_id: String,
    project_id: Option<Uuid>,
    index: u32,
    kind: &'static str,
    expected: checks::Expected,
}

fn check_header(h: pb::ArtifactHeader, max_bytes: u64) -> Result<Header, OrganizerError> {
    let job_id = parse_id("header.job_id", &h.job_id)?;
    let lease_token =
        if h.lease_token.is_empty() { None } else { Some(parse_id("header.lease_token", &h.lease_token)?) };
    if h.owner_id.len() > 256 {
        return Err(OrganizerError::invalid("header.owner_id", "must be at most 256 characters"));
    }
    let project_id =
        if h.project_id.is_empty() { None } else { Some(parse_id("header.project_id", &h.project_id)?) };
    if h.index > 7 {
        return Err(OrganizerError::invalid("header.index", "must be between 0 and 7"));
    }
    let kind =
        kind_of(h.kind).ok_or_else(|| OrganizerError::invalid("header.kind", "must be image or video"))?;
    if layout::extension(&h.mime_type).is_none() {
        return Err(OrganizerError::invalid("header.mime_type", "must be image/png or image/apng"));
    }
    if h.size_bytes == 0 || h.size_bytes > max_bytes {
        return Err(OrganizerError::invalid(
            "header.size_bytes",
            format!("must be between 1 and {max_bytes}"),
        ));
    }
    if h.sha256.len() != 64 || !h.sha256.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(OrganizerError::invalid("header.sha256", "must be 64 hex digits"));
    }
    Ok(Header {
        job_id,
        lease_token,
        owner_id: h.owner_id,
        project_id,
        index: h.index,
        kind,
        expected: checks::Expected {
            mime: h.mime_type,
            width: h.width,
            height: h.height,
            frames: h.frames.max(1),
            size_bytes: h.size_bytes,
            sha256: h.sha256.to_ascii_lowercase(),
        },
    })
}

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

impl Api {
    /// The service, with its ceilings from `config`.
    pub fn new(
        store: Store,
        storage: Arc<dyn Storage>,
        metrics: Arc<sakuga_mesh::metrics::Metrics>,
        config: Arc<Config>,
    ) -> Self {
        let uploads = Arc::new(Semaphore::new(config.max_concurrent_uploads));
        let reads = PerKeySlots::new(config.max_reads_per_user);
        let families = crate::metrics::Families::register(&metrics);
        Self { store, storage, metrics, families, config, uploads, reads }
    }

    /// Counts a refusal by a ceiling (label: the ceiling's name).
    fn refused(&self, ceiling: &'static str) {
        self.metrics.ceiling_refused(ceiling);
    }

    /// A read slot of `caller`, or RESOURCE_EXHAUSTED.
    fn read_slot(&self, caller: &mesh_auth::Caller) -> Result<Slot, OrganizerError> {
        self.reads.try_acquire(&caller.actor()).ok_or_else(|| {
            self.refused("reads_per_user");
            OrganizerError::Exhausted {
                what: "open file reads of this user",
                ceiling: "max_reads_per_user",
                limit: self.reads.limit(),
                retry_after_secs: RETRY_AFTER_SECS,
            }
        })
    }

    /// A response stream bounded by the read idle timeout.
    fn read_outbox<T: Send + 'static>(&self) -> (limits::Outbox<T>, tonic::codegen::BoxStream<T>) {
        let secs = self.config.read_idle_timeout_secs;
        limits::outbox(
            4,
            Duration::from_secs(secs),
            format!("stream ended: nothing was read for {secs} s (read_idle_timeout_secs)"),
        )
    }

    /// Counts why a read stream's producer stopped early.
    fn undelivered(&self, why: limits::Undelivered) {
        if why == limits::Undelivered::Stalled {
            self.refused("read_idle_timeout");
        }
    }

    /// The next message of an upload, waiting at most the upload idle timeout.
    async fn next_part(
        &self,
        stream: &mut Streaming<pb::StoreArtifactRequest>,
    ) -> Result<Option<pb::StoreArtifactRequest>, Status> {
        let secs = self.config.upload_idle_timeout_secs;
        let Ok(next) = tokio::time::timeout(Duration::from_secs(secs), stream.next()).await else {
            self.refused("upload_idle_timeout");
            return Err(OrganizerError::Stalled(format!(
                "upload ended: no message for {secs} s (upload_idle_timeout_secs)"
            ))
            .into());
        };
        next.transpose()
    }

    /// Streams the chunks into a partial object of the store, refusing the first byte past
    /// the header's size; returns it finished, with what arrived.
    async fn receive(
        &self,
        stream: &mut Streaming<pb::StoreArtifactRequest>,
        size_bytes: u64,
    ) -> Result<(Box<dyn Partial>, checks::Received), Status> {
        let mut partial = self.storage.begin().await.map_err(OrganizerError::Storage)?;
        while let Some(msg) = self.next_part(stream).await? {
            match msg.part {
                Some(Part::Chunk(chunk)) => {
                    if chunk.len() > MAX_CHUNK {
                        return Err(OrganizerError::invalid("chunk", "must be at most 1 MiB").into());
                    }
                    if partial.written() + chunk.len() as u64 > size_bytes {
                        return Err(OrganizerError::Rejected(
                            "more bytes than the header's size_bytes".to_owned(),
                        )
                        .into());
                    }
                    partial.write(chunk).await.map_err(OrganizerError::Storage)?;
                }
                Some(Part::Header(_)) => {
                    return Err(OrganizerError::invalid("header", "sent twice").into());
                }
                None => {}
            }
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

    /// Stores the checked bytes under `key` (linked to identical bytes already stored, so
    /// they are kept once; else the partial object is renamed to it) and their thumbnail
    /// beside them.
    async fn write(
        &self,
        key: &str,
        sha256: &str,
        partial: Box<dyn Partial>,
        thumb: Option<Vec<u8>>,
    ) -> Result<(), OrganizerError> {
        if let Some(same) = self.store.key_with_sha(sha256).await?
            && same != key
        {
            match self.storage.put_same_as(&same, key).await {
                Ok(()) => {
                    drop(partial);
                    if self.storage.put_same_as(&thumb_key(&same), &thumb_key(key)).await.is_err() {
                        self.put_thumbnail(key, thumb).await;
                    }
                    return Ok(());
                }
                Err(e) => warn!(error = %e, "identical bytes could not be linked; storing a copy"),
            }
        }
        partial.commit(key).await?;
        self.put_thumbnail(key, thumb).await;
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

    /// Makes and stores the thumbnail of `bytes`; returns it. A failure is logged (a
    /// thumbnail is made again when asked for).
    async fn write_thumbnail(&self, key: &str, bytes: Vec<u8>) -> Option<Vec<u8>> {
        let side = self.config.thumbnail_max_side;
        let thumb =
            match tokio::task::spawn_blocking(move || sakuga_imaging::thumbnail_png(&bytes, side)).await {
                Ok(Ok(t)) => t,
                Ok(Err(e)) => {
                    warn!(error = %e, "thumbnail not made");
                    return None;
                }
                Err(e) => {
                    warn!(error = %e, "thumbnail task failed");
                    return None;
                }
            };
        if let Err(e) = self.storage.put(&thumb_key(key), thumb.clone()).await {
            warn!(error = %e, "thumbnail not stored");
        }
        Some(thumb)
    }
}

#[tonic::async_trait]
impl FileService for Api {
    type ReadFileStream = tonic::codegen::BoxStream<pb::ReadFileResponse>;
    type GetThumbnailStream = tonic::codegen::BoxStream<pb::GetThumbnailResponse>;

    async fn store_artifact(
        &self,
        req: Request<Streaming<pb::StoreArtifactRequest>>,
    ) -> Result<Response<pb::StoreArtifactResponse>, Status> {
        // The guard admits only generator certificates here (see the authorization table);
        // the job's lease decides which job a generator may upload for.
        let mut stream = req.into_inner();
        let header = match self.next_part(&mut stream).await? {
            Some(pb::StoreArtifactRequest { part: Some(Part::Header(h)) }) => h,
            Some(_) => {
                return Err(OrganizerError::invalid("header", "the first message must be the header").into());
            }
            None => {
                return Err(OrganizerError::invalid("header", "stream closed before the header").into());
            }
        };
        let header = check_header(header, self.config.max_artifact_bytes)?;
        let (job_id, index) = (header.job_id, header.index);
        let Some(lease) = header.lease_token else {
            warn!(%job_id, index, "artifact refused: no lease token");
            return Err(OrganizerError::NotLeased(job_id).into());
        };
        let job = self.store.job_lease(job_id).await?;
        if let Some(why) = job.as_ref().map_or(Some("no such job"), |j| j.refusal(lease)) {
            warn!(%job_id, index, reason = why, "artifact refused: not under the job's live lease");
            return Err(OrganizerError::NotLeased(job_id).into());
        }
        let job = job.ok_or(OrganizerError::NotLeased(job_id))?;
        let expected = against_job(&header, &job).inspect_err(|e| {
            warn!(%job_id, index, error = %e, "artifact refused: the header disagrees with the job");
        })?;
        let _permit = self.uploads.clone().try_acquire_owned().map_err(|_| {
            self.refused("uploads_concurrent");
            OrganizerError::Exhausted {
                what: "uploads",
                ceiling: "max_concurrent_uploads",
                limit: self.config.max_concurrent_uploads,
                retry_after_secs: RETRY_AFTER_SECS,
            }
        })?;
        // Every early return from here drops the partial object, which removes its bytes.
        let (partial, received) = self.receive(&mut stream, expected.size_bytes).await?;
        if let Some(existing) = self.store.by_job_index(job_id, index).await? {
            info!(file_id = %existing.id, %job_id, index, "artifact already stored");
            return Ok(Response::new(pb::StoreArtifactResponse { file: Some(file_to_pb(&existing)) }));
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
        self.write(&key, &expected.sha256, partial, thumb).await?;
        if self.config.fault_crash_after_write {
            return Err(Status::unavailable("organizer stopped after writing the bytes (test fault)"));
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
            checks,
            created_at: now,
        };
        let Some(stored) = self.store.insert(&record, lease).await? else {
            // The lease ended while the bytes arrived: nothing is recorded, and the name just
            // written (unique to this job and index) goes too.
            warn!(%job_id, index, "artifact refused: the lease ended during the upload");
            for k in [record.storage_key.clone(), thumb_key(&record.storage_key)] {
                if let Err(e) = self.storage.delete(&k).await {
                    warn!(error = %e, "bytes of a refused upload not removed; the reconciler will");
                }
            }
            return Err(OrganizerError::NotLeased(job_id).into());
        };
        self.families.stored(&stored.kind, stored.size_bytes);
        info!(file_id = %stored.id, job_id = %stored.job_id, index = stored.index, size = stored.size_bytes, "artifact stored");
        Ok(Response::new(pb::StoreArtifactResponse { file: Some(file_to_pb(&stored)) }))
    }

    async fn get_file(
        &self,
        req: Request<pb::GetFileRequest>,
    ) -> Result<Response<pb::GetFileResponse>, Status> {
        let scope = mesh_auth::caller(&req)?.owner_scope()?;
        let id = parse_id("file_id", &req.get_ref().file_id)?;
        let f = self.store.get(id, scope.as_deref()).await?;
        Ok(Response::new(pb::GetFileResponse { file: Some(file_to_pb(&f)) }))
    }

    async fn list_files(
        &self,
        req: Request<pb::ListFilesRequest>,
    ) -> Result<Response<pb::ListFilesResponse>, Status> {
        let scope = mesh_auth::caller(&req)?.owner_scope()?;
        let r = req.into_inner();
        let page = Page::parse(r.page_size, &r.page_token)?;
        let project_id =
            if r.project_id.is_empty() { None } else { Some(parse_id("project_id", &r.project_id)?) };
        let prompt = r.prompt_contains.trim();
        if prompt.chars().count() > 200 {
            return Err(OrganizerError::invalid("prompt_contains", "must be at most 200 characters").into());
        }
        let filter = ListFilter {
            job_id: if r.job_id.is_empty() { None } else { Some(parse_id("job_id", &r.job_id)?) },
            kind: kind_of(r.kind),
            after: from_timestamp("created_after", r.created_after)?,
            before: from_timestamp("created_before", r.created_before)?,
            prompt_contains: (!prompt.is_empty()).then(|| prompt.to_owned()),
            cursor: page.after,
            project_id,
        };
        let mut files = self.store.list(scope.as_deref(), &filter, page.fetch()).await?;
        let next_page_token = page.finish(&mut files, |f| (f.created_at, f.id));
        Ok(Response::new(pb::ListFilesResponse {
            files: files.iter().map(file_to_pb).collect(),
            next_page_token,
        }))
    }

    async fn read_file(
        &self,
        req: Request<pb::ReadFileRequest>,
    ) -> Result<Response<tonic::codegen::BoxStream<pb::ReadFileResponse>>, Status> {
        let caller = mesh_auth::caller(&req)?;
        let scope = caller.owner_scope()?;
        let slot = self.read_slot(&caller)?;
        let r = req.into_inner();
        let id = parse_id("file_id", &r.file_id)?;
        let f = self.store.get(id, scope.as_deref()).await?;
        if r.offset > f.size_bytes {
            return Err(OrganizerError::invalid(
                "offset",
                format!("past the end of the file ({} bytes)", f.size_bytes),
            )
            .into());
        }
        let end =
            if r.length == 0 { f.size_bytes } else { (r.offset.saturating_add(r.length)).min(f.size_bytes) };
        if !self.storage.exists(&f.storage_key).await.map_err(OrganizerError::Storage)? {
            warn!(file_id = %id, "stored bytes missing");
            return Err(Status::data_loss(format!("bytes of file {id} are missing")));
        }
        let (out, stream) = self.read_outbox();
        let (size, storage, key, api) = (f.size_bytes, self.storage.clone(), f.storage_key, self.clone());
        tokio::spawn(async move {
            // The slot is held until the stream is read to its end, the client goes, or it
            // stops reading for longer than the idle timeout.
            let _slot = slot;
            let mut offset = r.offset;
            while offset < end {
                let want = (end - offset).min(READ_CHUNK as u64);
                let msg = match storage.read(&key, offset, want).await {
                    Ok(buf) if buf.len() as u64 == want => {
                        Ok(pb::ReadFileResponse { chunk: buf, offset, size_bytes: size })
                    }
                    Ok(_) => Err(Status::data_loss(format!("file {id} is shorter than its record"))),
                    Err(e) => Err(Status::data_loss(format!("reading file {id} failed: {}", e.kind()))),
                };
                let failed = msg.is_err();
                if let Err(why) = out.send(msg).await {
                    api.undelivered(why);
                    return;
                }
                if failed {
                    return;
                }
                offset += want;
            }
        });
        Ok(Response::new(stream))
    }

    async fn get_thumbnail(
        &self,
        req: Request<pb::GetThumbnailRequest>,
    ) -> Result<Response<tonic::codegen::BoxStream<pb::GetThumbnailResponse>>, Status> {
        let caller = mesh_auth::caller(&req)?;
        let scope = caller.owner_scope()?;
        let slot = self.read_slot(&caller)?;
        let id = parse_id("file_id", &req.get_ref().file_id)?;
        let f = self.store.get(id, scope.as_deref()).await?;
        let thumb = match self.storage.read(&thumb_key(&f.storage_key), 0, 0).await {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // Made again from the bytes (a thumbnail lost, or made before they existed).
                let bytes = self.storage.read(&f.storage_key, 0, 0).await.map_err(|e| {
                    warn!(file_id = %id, error = %e, "stored bytes missing");
                    Status::data_loss(format!("bytes of file {id} are missing"))
                })?;
                self.write_thumbnail(&f.storage_key, bytes)
                    .await
                    .ok_or_else(|| Status::internal(format!("no thumbnail could be made of file {id}")))?
            }
            Err(e) => return Err(OrganizerError::Storage(e).into()),
        };
        let (out, stream) = self.read_outbox();
        let api = self.clone();
        tokio::spawn(async move {
            let _slot = slot;
            for c in thumb.chunks(READ_CHUNK) {
                if let Err(why) = out.send(Ok(pb::GetThumbnailResponse { chunk: c.to_vec() })).await {
                    api.undelivered(why);
                    return;
                }
            }
        });
        Ok(Response::new(stream))
    }

    async fn delete_file(
        &self,
        req: Request<pb::DeleteFileRequest>,
    ) -> Result<Response<pb::DeleteFileResponse>, Status> {
        let scope = mesh_auth::caller(&req)?.owner_scope()?;
        let id = parse_id("file_id", &req.get_ref().file_id)?;
        let f = self.store.delete(id, scope.as_deref()).await?;
        // Bytes shared with another record (same sha256) stay for it: on disk a name is
        // removed, and the bytes go with their last name.
        for key in [f.storage_key.clone(), thumb_key(&f.storage_key)] {
            if let Err(e) = self.storage.delete(&key).await {
                warn!(file_id = %id, error = %e, "record deleted but bytes could not be removed; the reconciler will");
            }
        }
        info!(file_id = %id, "file deleted");
        let mut resp = Response::new(pb::DeleteFileResponse {});
        resp.extensions_mut().insert(mesh_auth::AuditTarget(format!("file:{id}")));
        Ok(resp)
    }
}
