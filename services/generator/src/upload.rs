//! Where a job's artifacts go once the backend made them: the organizer stores each under
//! the job's lease. [`ArtifactStore`] is what the worker needs of it; the client that
//! speaks `FileService` is `api::organizer`.

use std::time::Duration;

use futures_util::future::BoxFuture;
use sakuga_imaging::Artifact;

use crate::backend::Kind;

/// Where an artifact belongs.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// Job id.
    pub(crate) job_id: String,
    /// The lease token of the assignment: the organizer accepts artifacts only under it.
    pub(crate) lease_token: String,
    /// Owner.
    pub(crate) owner_id: String,
    /// Project, empty for unsorted.
    pub(crate) project_id: String,
    /// Image or video.
    pub(crate) kind: Kind,
    /// Width the job asked for (the organizer checks the artifact against it).
    pub(crate) width: u32,
    /// Height the job asked for.
    pub(crate) height: u32,
    /// Frames the job asked for (1 for an image).
    pub(crate) frames: u32,
}

/// Why the platform, not the job, kept an artifact from being stored. A closed set: the
/// values are metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Fault {
    /// The organizer's store has no space left.
    StorageFull,
    /// The organizer's store cannot be reached or fails.
    StorageUnavailable,
    /// No organizer answers (refused connection, timeout, restarting).
    OrganizerUnreachable,
    /// The organizer is up but refuses for now (a ceiling full) or fails (an internal error).
    OrganizerError,
}

impl Fault {
    /// Every fault, for tests and metrics.
    pub(crate) const ALL: [Fault; 4] =
        [Self::StorageFull, Self::StorageUnavailable, Self::OrganizerUnreachable, Self::OrganizerError];

    /// The metric label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::StorageFull => "storage_full",
            Self::StorageUnavailable => "storage_unavailable",
            Self::OrganizerUnreachable => "organizer_unreachable",
            Self::OrganizerError => "organizer_error",
        }
    }

    /// What a job held back by this fault waits for (its progress stage).
    pub(crate) fn waiting_stage(self) -> &'static str {
        match self {
            Self::StorageFull => "waiting for storage: storage full",
            Self::StorageUnavailable => "waiting for storage: storage unavailable",
            Self::OrganizerUnreachable => "waiting for storage: organizer unreachable",
            Self::OrganizerError => "waiting for storage: organizer failing",
        }
    }
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::StorageFull => "storage full",
            Self::StorageUnavailable => "storage unavailable",
            Self::OrganizerUnreachable => "organizer unreachable",
            Self::OrganizerError => "organizer failing",
        })
    }
}

/// Why an upload failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum UploadError {
    /// The organizer refused the artifact itself (a check failed, a field is wrong): the
    /// job's failure, counted as an attempt.
    #[error("artifact refused: {0}")]
    Refused(String),
    /// The organizer no longer knows the lease (canceled, expired, reassigned): the
    /// artifact is of no use under it.
    #[error("lease lost: {0}")]
    LeaseLost(String),
    /// The platform failed: the artifact is kept and the upload tried again.
    #[error("upload failed: {fault}: {message}")]
    Platform {
        /// What failed.
        fault: Fault,
        /// The organizer's or the connection's words.
        message: String,
        /// The least wait the organizer asked for (zero if none).
        retry_after: Duration,
    },
}

/// Stores artifacts for the worker.
pub(crate) trait ArtifactStore: Send + Sync {
    /// Stores artifact `index` of `target`'s job once (the worker retries); returns its file
    /// id.
    fn store<'a>(
        &'a self,
        target: &'a Target,
        index: u32,
        artifact: &'a Artifact,
    ) -> BoxFuture<'a, Result<String, UploadError>>;
}
