//! Proto <-> domain conversions of the organizer: file records to the API view, and an
//! upload's header to what the ingest use case expects.

use std::{path::PathBuf, time::Duration};

use sakuga_mesh::api::timestamp;
use sakuga_proto::v1 as pb;
use uuid::Uuid;

use crate::{
    checks, download::DownloadUrl, error::OrganizerError, ingest::Header, layout, store::FileRecord,
};

/// The kind named by a proto enum value (`None`: unspecified or unknown).
pub fn kind_of(k: i32) -> Option<&'static str> {
    match pb::JobKind::try_from(k).ok()? {
        pb::JobKind::Image => Some("image"),
        pb::JobKind::Video => Some("video"),
        pb::JobKind::Unspecified => None,
    }
}

/// The API view of a record: ids and metadata, never the storage path.
pub fn file_to_pb(f: &FileRecord) -> pb::File {
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

/// The `ttl` of a `GetDownloadUrl` request (`None`: not set).
pub fn ttl(d: Option<prost_types::Duration>) -> Result<Option<Duration>, OrganizerError> {
    let Some(d) = d else { return Ok(None) };
    let secs =
        u64::try_from(d.seconds).map_err(|_| OrganizerError::invalid("ttl", "must not be negative"))?;
    let nanos = u32::try_from(d.nanos)
        .ok()
        .filter(|n| *n < 1_000_000_000)
        .ok_or_else(|| OrganizerError::invalid("ttl", "nanos must be between 0 and 999999999"))?;
    Ok(Some(Duration::new(secs, nanos)))
}

/// The answer of `GetDownloadUrl`: the URL, its expiry, and what the bytes are.
pub fn download_url_to_pb(f: &FileRecord, got: DownloadUrl) -> pb::GetDownloadUrlResponse {
    pb::GetDownloadUrlResponse {
        url: got.url,
        expire_time: Some(timestamp(got.expires_at)),
        size_bytes: f.size_bytes,
        sha256: f.sha256.clone(),
        mime_type: f.mime_type.clone(),
    }
}

/// A UUID field of a request.
pub fn parse_id(field: &'static str, s: &str) -> Result<Uuid, OrganizerError> {
    Uuid::parse_str(s).map_err(|_| OrganizerError::invalid(field, "must be a UUID"))
}

/// An upload's header, each field checked on its own (what the job says comes later).
pub fn header(h: pb::ArtifactHeader, max_bytes: u64) -> Result<Header, OrganizerError> {
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
