//! Proto <-> domain conversions and FileService.

use std::{path::PathBuf, sync::Arc};

use chrono::Utc;
use sakuga_mesh::{
    api::{Page, from_timestamp, timestamp},
    auth as mesh_auth,
};
use sakuga_proto::v1::{self as pb, file_service_server::FileService, store_artifact_request::Part};
use tokio_stream::{StreamExt as _, wrappers::ReceiverStream};
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, warn};
use uuid::Uuid;

use crate::{
    Config, checks,
    error::OrganizerError,
    layout,
    storage::{Storage, thumb_key},
    store::{FileRecord, ListFilter, Store},
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
}

struct Header {
    job_id: Uuid,
    owner_id: String,
    project_id: Option<Uuid>,
    index: u32,
    kind: &'static str,
    expected: checks::Expected,
}

fn check_header(h: pb::ArtifactHeader, max_bytes: u64) -> Result<Header, OrganizerError> {
    let job_id = parse_id("header.job_id", &h.job_id)?;
    if h.owner_id.is_empty() || h.owner_id.len() > 256 {
        return Err(OrganizerError::invalid("header.owner_id", "must be 1..=256 characters"));
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

impl Api {
    /// Stores the bytes under `key` (linked to identical bytes already stored, so they are
    /// kept once) and their thumbnail beside them.
    async fn write(&self, key: &str, sha256: &str, bytes: Vec<u8>) -> Result<(), OrganizerError> {
        if let Some(same) = self.store.key_with_sha(sha256).await?
            && same != key
        {
            match self.storage.put_same_as(&same, key).await {
                Ok(()) => {
                    if self.storage.put_same_as(&thumb_key(&same), &thumb_key(key)).await.is_err() {
                        self.write_thumbnail(key, bytes).await;
                    }
                    return Ok(());
                }
                Err(e) => warn!(error = %e, "identical bytes could not be linked; storing a copy"),
            }
        }
        self.storage.put(key, bytes.clone()).await?;
        self.write_thumbnail(key, bytes).await;
        Ok(())
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
        // The guard admits only generator certificates here (see the authorization table).
        let mut stream = req.into_inner();
        let header = match stream.next().await {
            Some(Ok(pb::StoreArtifactRequest { part: Some(Part::Header(h)) })) => h,
            Some(Ok(_)) => {
                return Err(OrganizerError::invalid("header", "the first message must be the header").into());
            }
            Some(Err(e)) => return Err(e),
            None => {
                return Err(OrganizerError::invalid("header", "stream closed before the header").into());
            }
        };
        let header = check_header(header, self.config.max_artifact_bytes)?;
        let expected_len = usize::try_from(header.expected.size_bytes).unwrap_or(usize::MAX);
        let mut bytes = Vec::with_capacity(expected_len);
        while let Some(msg) = stream.next().await {
            match msg?.part {
                Some(Part::Chunk(chunk)) => {
                    if chunk.len() > MAX_CHUNK {
                        return Err(OrganizerError::invalid("chunk", "must be at most 1 MiB").into());
                    }
                    if bytes.len() + chunk.len() > expected_len {
                        return Err(OrganizerError::Rejected(
                            "more bytes than the header's size_bytes".to_owned(),
                        )
                        .into());
                    }
                    bytes.extend_from_slice(&chunk);
                }
                Some(Part::Header(_)) => {
                    return Err(OrganizerError::invalid("header", "sent twice").into());
                }
                None => {}
            }
        }
        if let Some(existing) = self.store.by_job_index(header.job_id, header.index).await? {
            info!(file_id = %existing.id, job_id = %header.job_id, index = header.index, "artifact already stored");
            return Ok(Response::new(pb::StoreArtifactResponse { file: Some(file_to_pb(&existing)) }));
        }
        let checks = checks::run(&bytes, &header.expected).inspect_err(|e| {
            warn!(job_id = %header.job_id, index = header.index, error = %e, "artifact rejected");
            self.families.rejected();
        })?;
        let slug = match header.project_id {
            Some(p) => Some(
                self.store
                    .project_slug(p, &header.owner_id)
                    .await?
                    .ok_or_else(|| OrganizerError::NotFound(format!("project {p}")))?,
            ),
            None => None,
        };
        let now = Utc::now();
        let ext = layout::extension(&header.expected.mime).unwrap_or("bin");
        let key = layout::storage_key(slug.as_deref(), now, header.job_id, header.index, ext);
        self.write(&key, &header.expected.sha256, bytes).await?;
        if self.config.fault_crash_after_write {
            return Err(Status::unavailable("organizer stopped after writing the bytes (test fault)"));
        }
        let record = FileRecord {
            id: Uuid::now_v7(),
            job_id: header.job_id,
            owner_id: header.owner_id,
            project_id: header.project_id,
            index: header.index,
            kind: header.kind.to_owned(),
            mime_type: header.expected.mime,
            width: header.expected.width,
            height: header.expected.height,
            frames: header.expected.frames,
            size_bytes: header.expected.size_bytes,
            sha256: header.expected.sha256,
            storage_key: key,
            checks,
            created_at: now,
        };
        let stored = self.store.insert(&record).await?;
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
        let scope = mesh_auth::caller(&req)?.owner_scope()?;
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
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let (size, storage, key) = (f.size_bytes, self.storage.clone(), f.storage_key);
        tokio::spawn(async move {
            let mut offset = r.offset;
            while offset < end {
                let want = (end - offset).min(READ_CHUNK as u64);
                let chunk = match storage.read(&key, offset, want).await {
                    Ok(buf) if buf.len() as u64 == want => buf,
                    Ok(_) => {
                        let _ = tx
                            .send(Err(Status::data_loss(format!("file {id} is shorter than its record"))))
                            .await;
                        return;
                    }
                    Err(e) => {
                        let _ = tx
                            .send(Err(Status::data_loss(format!("reading file {id} failed: {}", e.kind()))))
                            .await;
                        return;
                    }
                };
                let msg = pb::ReadFileResponse { chunk, offset, size_bytes: size };
                if tx.send(Ok(msg)).await.is_err() {
                    return;
                }
                offset += want;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_thumbnail(
        &self,
        req: Request<pb::GetThumbnailRequest>,
    ) -> Result<Response<tonic::codegen::BoxStream<pb::GetThumbnailResponse>>, Status> {
        let scope = mesh_auth::caller(&req)?.owner_scope()?;
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
        let chunks: Vec<Result<pb::GetThumbnailResponse, Status>> =
            thumb.chunks(READ_CHUNK).map(|c| Ok(pb::GetThumbnailResponse { chunk: c.to_vec() })).collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks))))
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
