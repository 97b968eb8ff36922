//! Streams an artifact to `FileService.StoreArtifact`: header (with size, sha256 and the
//! job's lease token, without which the organizer refuses it), then chunks, once. A failure
//! is classified ([`classify`]); the worker retries the platform's (after the organizer's
//! `retry-after` when it is busy), and the organizer answers a repeat of the same
//! (job, index) under the same lease with the record it already has.

use std::{
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use futures_util::future::BoxFuture;
use sakuga_imaging::Artifact;
use sakuga_mesh::auth::{STORAGE_FULL, STORAGE_UNAVAILABLE, reason_of};
use sakuga_proto::v1::{
    ArtifactHeader, JobKind, StoreArtifactRequest, file_service_client::FileServiceClient,
    store_artifact_request::Part,
};
use sha2::{Digest as _, Sha256};
use tokio::time::Instant;
use tonic::{Code, transport::Channel};

use crate::upload::{ArtifactStore, Fault, Target, UploadError};

/// The organizers' `FileService`, as the worker's artifact store. With several replicas the
/// uploads take them in turn, skipping for [`REST`] one that failed an upload for the
/// platform's reasons (no answer, storage trouble, a full ceiling), unless every one did.
/// The retry of the same (job, index) on another replica is answered with the record the
/// first one made, if it made one.
#[derive(Debug)]
pub(crate) struct Organizer {
    replicas: Vec<Replica>,
    next: AtomicUsize,
    chunk_bytes: usize,
}

/// How long a replica that failed an upload is left out of the turn.
const REST: Duration = Duration::from_secs(5);

#[derive(Debug)]
struct Replica {
    client: FileServiceClient<Channel>,
    /// Left out of the turn until then.
    resting_until: Mutex<Option<Instant>>,
}

impl Replica {
    fn resting(&self, now: Instant) -> bool {
        self.resting_until.lock().unwrap_or_else(PoisonError::into_inner).is_some_and(|until| now < until)
    }
}

impl Organizer {
    /// Uploads over `channels` (at least one) in chunks of `chunk_bytes`.
    pub(crate) fn new(channels: Vec<Channel>, chunk_bytes: usize) -> Self {
        let replicas = channels
            .into_iter()
            .map(|c| Replica { client: FileServiceClient::new(c), resting_until: Mutex::new(None) })
            .collect();
        Self { replicas, next: AtomicUsize::new(0), chunk_bytes }
    }

    /// The replica the next upload goes to: the next in turn that is not resting (if all
    /// are, the next in turn).
    fn pick(&self) -> usize {
        let n = self.replicas.len();
        let first = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let now = Instant::now();
        (0..n).map(|k| (first + k) % n).find(|&i| !self.replicas[i].resting(now)).unwrap_or(first)
    }

    /// Replica `i` failed an upload for the platform's reasons: it rests.
    fn rest(&self, i: usize) {
        *self.replicas[i].resting_until.lock().unwrap_or_else(PoisonError::into_inner) =
            Some(Instant::now() + REST);
    }
}

impl ArtifactStore for Organizer {
    fn store<'a>(
        &'a self,
        target: &'a Target,
        index: u32,
        artifact: &'a Artifact,
    ) -> BoxFuture<'a, Result<String, UploadError>> {
        Box::pin(async move {
            let i = self.pick();
            let result = store(&self.replicas[i].client, target, index, artifact, self.chunk_bytes).await;
            if matches!(result, Err(UploadError::Platform { .. })) {
                self.rest(i);
            }
            result
        })
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
    let mut messages = vec![StoreArtifactRequest { part: Some(Part::Header(header)) }];
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
    match client.store_artifact(request).await {
        Ok(resp) => resp.into_inner().file.map(|f| f.id).ok_or_else(|| UploadError::Platform {
            fault: Fault::OrganizerError,
            message: "organizer answered without a file".to_owned(),
            retry_after: Duration::ZERO,
        }),
        Err(s) => Err(classify(&s)),
    }
}

/// Whose failure a refused upload is, by status code and `ErrorInfo` reason (never the
/// message): the job's own (a check or field refused), a lost lease, or the platform's
/// (storage full or down, no organizer answering, an organizer ceiling), which keeps the
/// artifact and waits.
pub(crate) fn classify(s: &tonic::Status) -> UploadError {
    let reason = reason_of(s);
    let fault = match s.code() {
        Code::InvalidArgument
        | Code::FailedPrecondition
        | Code::NotFound
        | Code::OutOfRange
        | Code::AlreadyExists => return UploadError::Refused(s.message().to_owned()),
        Code::PermissionDenied => return UploadError::LeaseLost(s.message().to_owned()),
        Code::ResourceExhausted if reason.as_deref() == Some(STORAGE_FULL) => Fault::StorageFull,
        Code::Unavailable if reason.as_deref() == Some(STORAGE_UNAVAILABLE) => Fault::StorageUnavailable,
        // No reason of ours: the connection, not the organizer, said so.
        Code::Unavailable if reason.is_none() => Fault::OrganizerUnreachable,
        _ => Fault::OrganizerError,
    };
    UploadError::Platform {
        fault,
        message: format!("{:?}: {}", s.code(), s.message()),
        retry_after: retry_after(s),
    }
}

/// The wait a refusal asks for (`retry-after` seconds, at most a minute); zero if none.
fn retry_after(s: &tonic::Status) -> Duration {
    let secs = s.metadata().get("retry-after").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
    Duration::from_secs(secs.unwrap_or(0_u64).min(60))
}

#[cfg(test)]
mod tests {
    use sakuga_mesh::auth::{Refusal, fault};

    use super::*;

    fn platform(s: &tonic::Status) -> Option<Fault> {
        match classify(s) {
            UploadError::Platform { fault, .. } => Some(fault),
            _ => None,
        }
    }

    #[test]
    fn storage_and_organizer_outages_are_the_platforms() {
        let full = fault(Code::ResourceExhausted, STORAGE_FULL, "storage full");
        assert_eq!(platform(&full), Some(Fault::StorageFull));
        let down = fault(Code::Unavailable, STORAGE_UNAVAILABLE, "storage unavailable");
        assert_eq!(platform(&down), Some(Fault::StorageUnavailable));
        let refused = tonic::Status::unavailable("tcp connect error: Connection refused");
        assert_eq!(platform(&refused), Some(Fault::OrganizerUnreachable));
        let busy =
            sakuga_mesh::auth::ceiling("max_concurrent_uploads", "uploads", Some(Duration::from_secs(3)));
        assert_eq!(
            classify(&busy),
            UploadError::Platform {
                fault: Fault::OrganizerError,
                message: "ResourceExhausted: uploads".to_owned(),
                retry_after: Duration::from_secs(3),
            }
        );
        for s in [
            tonic::Status::internal("internal error"),
            tonic::Status::deadline_exceeded("timeout"),
            tonic::Status::aborted("upload ended"),
            tonic::Status::unknown("reset"),
            Refusal::KeysNotLoaded.to_status(),
            Refusal::TokenExpired.to_status(),
        ] {
            assert_eq!(platform(&s), Some(Fault::OrganizerError), "{s:?}");
        }
    }

    fn replicas(n: usize) -> Organizer {
        let channels =
            (0..n).map(|_| tonic::transport::Endpoint::from_static("http://127.0.0.1:1").connect_lazy());
        Organizer::new(channels.collect(), 1024)
    }

    #[tokio::test(start_paused = true)]
    async fn uploads_take_the_replicas_in_turn_and_one_that_failed_rests() {
        let o = replicas(3);
        assert_eq!([o.pick(), o.pick(), o.pick(), o.pick()], [0, 1, 2, 0]);
        o.rest(1);
        assert_eq!([o.pick(), o.pick(), o.pick(), o.pick()], [2, 2, 0, 2], "1 is left out");
        tokio::time::advance(REST).await;
        assert_eq!([o.pick(), o.pick(), o.pick()], [2, 0, 1], "back in turn after its rest");
        for i in 0..3 {
            o.rest(i);
        }
        assert_eq!([o.pick(), o.pick()], [2, 0], "all resting: in turn anyway");
    }

    #[tokio::test(start_paused = true)]
    async fn a_replica_that_refuses_the_connection_rests() {
        let o = replicas(2);
        let target = Target {
            job_id: "j".to_owned(),
            lease_token: "t".to_owned(),
            owner_id: "o".to_owned(),
            project_id: String::new(),
            kind: crate::backend::Kind::Image,
            width: 1,
            height: 1,
            frames: 1,
        };
        let artifact = Artifact { bytes: vec![1, 2, 3], mime: "image/png", width: 1, height: 1, frames: 1 };
        let got = o.store(&target, 0, &artifact).await;
        assert!(
            matches!(got, Err(UploadError::Platform { fault: Fault::OrganizerUnreachable, .. })),
            "{got:?}"
        );
        assert!(o.replicas[0].resting(Instant::now()));
        assert!(!o.replicas[1].resting(Instant::now()));
    }

    #[test]
    fn the_message_never_decides() {
        // A job's refusal that happens to say "storage full" is still the job's.
        let s = tonic::Status::invalid_argument("storage full");
        assert_eq!(classify(&s), UploadError::Refused("storage full".to_owned()));
        // RESOURCE_EXHAUSTED without the reason is not a full store.
        let s = tonic::Status::resource_exhausted("storage full");
        assert_eq!(platform(&s), Some(Fault::OrganizerError));
    }

    #[test]
    fn refused_output_is_the_jobs_and_a_lost_lease_ends_it() {
        for s in [
            tonic::Status::invalid_argument("artifact rejected: not a PNG"),
            tonic::Status::failed_precondition("dimensions differ"),
            tonic::Status::not_found("project not found"),
        ] {
            assert!(matches!(classify(&s), UploadError::Refused(_)), "{s:?}");
        }
        let s = tonic::Status::permission_denied("job is not leased with this lease token");
        assert!(matches!(classify(&s), UploadError::LeaseLost(_)));
    }
}
