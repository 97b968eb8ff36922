//! Streams an artifact to `FileService.StoreArtifact`: header (with size, sha256 and the
//! job's lease token, without which the organizer refuses it), then chunks. Retried on
//! transient errors (after the organizer's `retry-after` when it is busy); the organizer
//! answers a repeat of the same (job, index) under the same lease with the record it
//! already has.

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable as _};
use futures_util::future::BoxFuture;
use sakuga_imaging::Artifact;
use sakuga_proto::v1::{
    ArtifactHeader, JobKind, StoreArtifactRequest, file_service_client::FileServiceClient,
    store_artifact_request::Part,
};
use sha2::{Digest as _, Sha256};
use tonic::{Code, transport::Channel};
use tracing::warn;

use crate::upload::{ArtifactStore, Target, UploadError};

/// The organizer's `FileService`, as the worker's artifact store.
#[derive(Debug, Clone)]
pub(crate) struct Organizer {
    client: FileServiceClient<Channel>,
    chunk_bytes: usize,
}

impl Organizer {
    /// Uploads over `channel` in chunks of `chunk_bytes`.
    pub(crate) fn new(channel: Channel, chunk_bytes: usize) -> Self {
        Self { client: FileServiceClient::new(channel), chunk_bytes }
    }
}

impl ArtifactStore for Organizer {
    fn store<'a>(
        &'a self,
        target: &'a Target,
        index: u32,
        artifact: &'a Artifact,
    ) -> BoxFuture<'a, Result<String, UploadError>> {
        Box::pin(store(&self.client, target, index, artifact, self.chunk_bytes))
    }
}

/// Uploads one artifact; returns the file id.
async fn store(
    client: &FileServiceClient<Channel>,
    target: &Target,
    index: u32,
    artifact: &Artifact,
    chunk_bytes: usize,
) -> Result<String, UploadError> {
    let header = ArtifactHeader {
        job_id: target.job_id.clone(),
        owner_id: target.owner_id.clone(),
        project_id: target.project_id.clone(),
        index,
        kind: JobKind::from(target.kind).into(),
        mime_type: artifact.mime.to_owned(),
        width: target.width,
        height: target.height,
        frames: target.frames,
        size_bytes: artifact.bytes.len() as u64,
        sha256: hex::encode(Sha256::digest(&artifact.bytes)),
        lease_token: target.lease_token.clone(),
    };
    // Three retries, 200 ms apart at first and doubling, or after the organizer's
    // `retry-after` when it asks for longer.
    let delays = ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(200))
        .without_max_delay()
        .with_max_times(3);
    let attempt = || {
        let mut messages = vec![StoreArtifactRequest { part: Some(Part::Header(header.clone())) }];
        messages.extend(
            artifact
                .bytes
                .chunks(chunk_bytes)
                .map(|c| StoreArtifactRequest { part: Some(Part::Chunk(c.to_vec())) }),
        );
        let mut client = client.clone();
        let mut request = tonic::Request::new(tokio_stream::iter(messages));
        // The organizer's span joins the job's trace.
        sakuga_mesh::telemetry::inject(request.metadata_mut());
        async move { client.store_artifact(request).await }
    };
    let mut failed = 0_u32;
    let stored = attempt
        .retry(delays)
        .when(|s| !refused(s))
        .adjust(|s, delay| delay.map(|d| d.max(retry_after(s))))
        .notify(|s, _| {
            failed += 1;
            warn!(job_id = %target.job_id, index, attempt = failed, code = ?s.code(), error = %s.message(), "upload failed, retrying");
        })
        .await;
    match stored {
        Ok(resp) => resp
            .into_inner()
            .file
            .map(|f| f.id)
            .ok_or_else(|| UploadError::Failed("organizer answered without a file".to_owned())),
        Err(s) if refused(&s) => Err(UploadError::Rejected(s.message().to_owned())),
        Err(s) => Err(UploadError::Failed(format!("{:?}: {}", s.code(), s.message()))),
    }
}

/// Whether the organizer refused the artifact itself: another try would be refused too.
fn refused(s: &tonic::Status) -> bool {
    matches!(s.code(), Code::InvalidArgument | Code::PermissionDenied | Code::NotFound)
}

/// The wait a refusal asks for (`retry-after` seconds, at most a minute); zero if none.
fn retry_after(s: &tonic::Status) -> Duration {
    let secs = s.metadata().get("retry-after").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
    Duration::from_secs(secs.unwrap_or(0_u64).min(60))
}
