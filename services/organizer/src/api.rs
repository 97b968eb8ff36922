//! FileService: translates the wire to the ingest use case and the record store, and
//! streams stored bytes and thumbnails back.

use std::sync::Arc;

use sakuga_mesh::{
    api::{Page, from_timestamp},
    auth as mesh_auth,
};
use sakuga_proto::v1::{self as pb, file_service_server::FileService, store_artifact_request::Part};
use tokio_stream::StreamExt as _;
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, warn};

use crate::{
    Config,
    convert::{self, file_to_pb, kind_of, parse_id},
    download,
    error::OrganizerError,
    ingest::{self, Ingest, RETRY_AFTER_SECS},
    limits::{self, PerKeySlots, Slot},
    reconcile,
    storage::{Storage, thumb_key},
    store::{FileRecord, ListFilter, Store},
};

/// Chunk size of ReadFile.
const READ_CHUNK: usize = 256 * 1024;

/// FileService over the records and the bytes.
#[derive(Debug, Clone)]
pub struct Api {
    /// Records.
    pub store: Store,
    /// Bytes.
    pub storage: Arc<dyn Storage>,
    /// Prometheus metrics.
    pub metrics: Arc<sakuga_mesh::metrics::Metrics>,
    /// Configuration (limits).
    pub config: Arc<Config>,
    /// Uploads, from the header to the record.
    ingest: Ingest,
    /// Read streams per user (`max_reads_per_user`).
    reads: Arc<PerKeySlots>,
}

/// The gRPC services this module serves (health and reflection name them).
pub const SERVICES: &[&str] = &[sakuga_proto::service_names::FILES];

/// The tonic service over `api`.
pub fn server(api: Api) -> sakuga_proto::v1::file_service_server::FileServiceServer<Api> {
    sakuga_proto::v1::file_service_server::FileServiceServer::new(api)
}

/// An upload's messages after the header, as the ingest use case reads them.
fn parts(
    stream: Streaming<pb::StoreArtifactRequest>,
) -> impl futures_util::Stream<Item = Result<ingest::Part, OrganizerError>> + Unpin {
    stream.map(|msg| match msg.map_err(OrganizerError::Stream)?.part {
        Some(Part::Chunk(chunk)) => Ok(Some(chunk)),
        Some(Part::Header(_)) => Err(OrganizerError::invalid("header", "sent twice")),
        None => Ok(None),
    })
}

impl Api {
    /// The service, with its ceilings from `config`.
    pub fn new(
        store: Store,
        storage: Arc<dyn Storage>,
        metrics: Arc<sakuga_mesh::metrics::Metrics>,
        config: Arc<Config>,
    ) -> Self {
        let reads = PerKeySlots::new(config.max_reads_per_user);
        let families = crate::metrics::Families::register(&metrics);
        let ingest = Ingest::new(store.clone(), storage.clone(), metrics.clone(), families, config.clone());
        Self { store, storage, metrics, config, ingest, reads }
    }

    /// The same, its uploads failing as `faults` say (tests only).
    #[must_use]
    pub fn with_faults(self, faults: ingest::Faults) -> Self {
        Self { ingest: self.ingest.with_faults(faults), ..self }
    }

    /// Counts a refusal by a ceiling (label: the ceiling's name).
    fn refused(&self, ceiling: &'static str) {
        self.metrics.ceiling_refused(ceiling);
    }

    /// The record `file_id` names, if `scope` (`None`: an admin) may see it: the owner check
    /// of every call on one file. NOT_FOUND when missing or another owner's, alike.
    async fn visible_file(&self, scope: Option<&str>, file_id: &str) -> Result<FileRecord, OrganizerError> {
        let id = parse_id("file_id", file_id)?;
        self.store.get(id, scope).await
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
        let idle = self.config.read_idle_timeout;
        limits::outbox(4, idle, format!("stream ended: nothing was read for {idle:?} (read_idle_timeout)"))
    }

    /// Counts why a read stream's producer stopped early.
    fn undelivered(&self, why: limits::Undelivered) {
        if why == limits::Undelivered::Stalled {
            self.refused("read_idle_timeout");
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
        let first =
            self.ingest.next_part(&mut (&mut stream).map(|m| m.map_err(OrganizerError::Stream))).await?;
        let header = match first {
            Some(pb::StoreArtifactRequest { part: Some(Part::Header(h)) }) => h,
            Some(_) => {
                return Err(OrganizerError::invalid("header", "the first message must be the header").into());
            }
            None => {
                return Err(OrganizerError::invalid("header", "stream closed before the header").into());
            }
        };
        let header = convert::header(header, self.config.max_artifact_bytes)?;
        let file = self.ingest.run(header, &mut parts(stream)).await?;
        Ok(Response::new(pb::StoreArtifactResponse { file: Some(file_to_pb(&file)) }))
    }

    async fn get_file(
        &self,
        req: Request<pb::GetFileRequest>,
    ) -> Result<Response<pb::GetFileResponse>, Status> {
        let scope = mesh_auth::caller(&req)?.owner_scope()?;
        let f = self.visible_file(scope.as_deref(), &req.get_ref().file_id).await?;
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
        let f = self.visible_file(scope.as_deref(), &r.file_id).await?;
        let id = f.id;
        if r.offset > f.size_bytes {
            return Err(OrganizerError::invalid(
                "offset",
                format!("past the end of the file ({} bytes)", f.size_bytes),
            )
            .into());
        }
        let end =
            if r.length == 0 { f.size_bytes } else { (r.offset.saturating_add(r.length)).min(f.size_bytes) };
        // One ranged read of the store for the whole answer, opened before answering so
        // that missing bytes are the call's error.
        let mut pieces = match self.storage.read_stream(f.bytes_key(), r.offset, end - r.offset).await {
            Ok(pieces) => pieces,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                warn!(file_id = %id, "stored bytes missing");
                return Err(OrganizerError::DataLoss(format!("bytes of file {id} are missing")).into());
            }
            Err(e) => return Err(OrganizerError::Storage(e).into()),
        };
        let (out, stream) = self.read_outbox();
        let (size, api) = (f.size_bytes, self.clone());
        tokio::spawn(async move {
            // The slot is held until the stream is read to its end, the client goes, or it
            // stops reading for longer than the idle timeout.
            let _slot = slot;
            let mut offset = r.offset;
            // Pieces of the store's answer not yet sent: at most a chunk and one piece.
            let mut pending = Vec::new();
            while offset < end {
                let want = usize::try_from((end - offset).min(READ_CHUNK as u64)).unwrap_or(READ_CHUNK);
                let msg = loop {
                    if pending.len() >= want {
                        let rest = pending.split_off(want);
                        let chunk = std::mem::replace(&mut pending, rest);
                        break Ok(pb::ReadFileResponse { chunk, offset, size_bytes: size });
                    }
                    match pieces.next().await {
                        Some(Ok(piece)) => pending.extend_from_slice(&piece),
                        Some(Err(e)) => {
                            break Err(OrganizerError::DataLoss(format!(
                                "reading file {id} failed: {}",
                                e.kind()
                            ))
                            .into());
                        }
                        None => {
                            break Err(OrganizerError::DataLoss(format!(
                                "file {id} is shorter than its record"
                            ))
                            .into());
                        }
                    }
                };
                let failed = msg.is_err();
                if let Err(why) = out.send(msg).await {
                    api.undelivered(why);
                    return;
                }
                if failed {
                    return;
                }
                offset += want as u64;
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
        let f = self.visible_file(scope.as_deref(), &req.get_ref().file_id).await?;
        let id = f.id;
        let thumb = match self.storage.read(&thumb_key(f.bytes_key()), 0, 0).await {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // Made again from the bytes (a thumbnail lost, or made before they existed).
                let bytes = self.storage.read(f.bytes_key(), 0, 0).await.map_err(|e| {
                    warn!(file_id = %id, error = %e, "stored bytes missing");
                    OrganizerError::DataLoss(format!("bytes of file {id} are missing"))
                })?;
                self.write_thumbnail(f.bytes_key(), bytes).await.ok_or(OrganizerError::NoThumbnail(id))?
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
        // Bytes shared with another record (same sha256) stay for it; the last record's go
        // with it (or, if just rewritten by an upload of the same bytes, stay for that one).
        let grace = self.config.orphan_grace;
        if let Err(e) =
            reconcile::remove_if_unused(&self.store, self.storage.as_ref(), f.bytes_key(), grace).await
        {
            warn!(file_id = %id, error = %e, "record deleted but bytes could not be removed; the reconciler will");
        }
        if let Err(e) = crate::export::remove(self.storage.as_ref(), &f).await {
            warn!(file_id = %id, error = %e, "record deleted but its export entry could not be removed; the reconciler will");
        }
        info!(file_id = %id, "file deleted");
        Ok(mesh_auth::audited(pb::DeleteFileResponse {}, format!("file:{id}")))
    }

    async fn get_download_url(
        &self,
        req: Request<pb::GetDownloadUrlRequest>,
    ) -> Result<Response<pb::GetDownloadUrlResponse>, Status> {
        let scope = mesh_auth::caller(&req)?.owner_scope()?;
        let r = req.into_inner();
        let ttl = download::ttl(convert::ttl(r.ttl)?, &self.config.storage)?;
        let f = self.visible_file(scope.as_deref(), &r.file_id).await?;
        let got = download::url(self.storage.as_ref(), &f, ttl).await?;
        // Never the URL itself: it reads the bytes without a token until it expires.
        info!(file_id = %f.id, ttl_secs = ttl.as_secs(), "download url issued");
        Ok(mesh_auth::audited(convert::download_url_to_pb(&f, got), format!("file:{}", f.id)))
    }
}
