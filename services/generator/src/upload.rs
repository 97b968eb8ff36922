//! Where a job's artifacts go once the backend made them: the organizer stores each under
//! the job's lease. [`ArtifactStore`] is what the worker needs of it; the client that
//! speaks `FileService` is `api::organizer`.

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

/// Why an upload failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UploadError {
    /// The organizer refused the bytes (a check failed); the organizer's reason.
    #[error("{0}")]
    Rejected(String),
    /// The organizer could not be reached or failed.
    #[error("upload failed: {0}")]
    Failed(String),
}

/// Stores artifacts for the worker.
pub(crate) trait ArtifactStore: Send + Sync {
    /// Stores artifact `index` of `target`'s job; returns its file id.
    fn store<'a>(
        &'a self,
        target: &'a Target,
        index: u32,
        artifact: &'a Artifact,
    ) -> BoxFuture<'a, Result<String, UploadError>>;
}
