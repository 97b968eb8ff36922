//! Organizer errors and their gRPC status codes.

use sakuga_mesh::auth::{DOWNLOAD_URLS_UNSUPPORTED, STORAGE_FULL, STORAGE_UNAVAILABLE};
use tonic::{Code, Status};
use tracing::error;

/// What an organizer operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum OrganizerError {
    /// A request field is invalid; `field` is its path.
    #[error("{field}: {reason}")]
    InvalidField {
        /// Field path.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// The uploaded bytes failed a check.
    #[error("artifact rejected: {0}")]
    Rejected(String),
    /// The object does not exist or belongs to someone else.
    #[error("{0} not found")]
    NotFound(String),
    /// An upload for a job that is not currently leased with the header's lease token
    /// (no such job, finished, another lease, or expired: one answer for all of them).
    #[error(
        "job {0} is not leased with this lease token; an artifact is accepted only under the job's live lease"
    )]
    NotLeased(uuid::Uuid),
    /// The caller may not do this (e.g. a header naming another owner than the job's).
    #[error("{0}")]
    Forbidden(String),
    /// A resource ceiling is reached; `ceiling` names it (the configuration key).
    #[error("{what}: at most {limit} at a time ({ceiling}); retry in {retry_after_secs} s")]
    Exhausted {
        /// What was refused.
        what: &'static str,
        /// The configuration key of the ceiling.
        ceiling: &'static str,
        /// The ceiling.
        limit: usize,
        /// When to retry.
        retry_after_secs: u64,
    },
    /// The peer stopped sending (or reading) for longer than the idle timeout.
    #[error("{0}")]
    Stalled(String),
    /// Stored bytes are missing or shorter than their record says.
    #[error("{0}")]
    DataLoss(String),
    /// No thumbnail could be made of a file whose bytes are there.
    #[error("no thumbnail could be made of file {0}")]
    NoThumbnail(uuid::Uuid),
    /// The store has no download URLs (the local backend): bytes are read with `ReadFile`.
    #[error("the local storage backend has no download URLs; read the bytes with ReadFile")]
    NoDownloadUrls,
    /// The service cannot finish the call now; retrying may succeed.
    #[error("{0}")]
    Unavailable(String),
    /// The client's stream failed (the status it ended with is passed on).
    #[error("stream: {}", .0.message())]
    Stream(Status),
    /// Disk error (logged with the path; clients never see paths).
    #[error("storage: {0}")]
    Storage(#[from] std::io::Error),
    /// PostgreSQL failed.
    #[error("database: {0}")]
    Db(#[from] tokio_postgres::Error),
    /// No pooled connection.
    #[error("database pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
}

impl OrganizerError {
    /// Shorthand for [`OrganizerError::InvalidField`].
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidField { field, reason: reason.into() }
    }
}

impl From<OrganizerError> for Status {
    fn from(e: OrganizerError) -> Self {
        match e {
            OrganizerError::InvalidField { field, reason } => {
                Status::invalid_argument(format!("{field}: {reason}"))
            }
            OrganizerError::Rejected(why) => Status::invalid_argument(format!("artifact rejected: {why}")),
            OrganizerError::NotFound(what) => Status::not_found(format!("{what} not found")),
            e @ OrganizerError::NotLeased(_) => Status::permission_denied(e.to_string()),
            OrganizerError::Forbidden(why) => Status::permission_denied(why),
            e @ OrganizerError::Exhausted { ceiling, retry_after_secs, .. } => sakuga_mesh::auth::ceiling(
                ceiling,
                e.to_string(),
                Some(std::time::Duration::from_secs(retry_after_secs)),
            ),
            OrganizerError::Stalled(why) => Status::aborted(why),
            OrganizerError::DataLoss(why) => Status::data_loss(why),
            e @ OrganizerError::NoThumbnail(_) => Status::internal(e.to_string()),
            e @ OrganizerError::NoDownloadUrls => {
                sakuga_mesh::auth::fault(Code::FailedPrecondition, DOWNLOAD_URLS_UNSUPPORTED, e.to_string())
            }
            OrganizerError::Unavailable(why) => Status::unavailable(why),
            OrganizerError::Stream(status) => status,
            OrganizerError::Storage(e) if is_full(&e) => {
                error!(error = %e, "storage full");
                sakuga_mesh::auth::fault(Code::ResourceExhausted, STORAGE_FULL, "storage full")
            }
            OrganizerError::Storage(e) => {
                error!(error = %e, "storage error");
                sakuga_mesh::auth::fault(Code::Unavailable, STORAGE_UNAVAILABLE, "storage unavailable")
            }
            OrganizerError::Db(e) => {
                error!(error = %e, "database error");
                Status::internal("internal error")
            }
            OrganizerError::Pool(e) => {
                error!(error = %e, "database pool exhausted or unreachable");
                Status::unavailable("database unavailable, retry later")
            }
        }
    }
}

/// Whether a store error means no space is left (a full disk, or a quota reached).
pub fn is_full(e: &std::io::Error) -> bool {
    matches!(e.kind(), std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_of(e: std::io::Error) -> Status {
        OrganizerError::Storage(e).into()
    }

    #[test]
    fn a_full_store_is_resource_exhausted_and_other_store_errors_unavailable() {
        // ENOSPC and EDQUOT, as the disk reports them.
        for errno in [28, 122] {
            let s = status_of(std::io::Error::from_raw_os_error(errno));
            assert_eq!(s.code(), Code::ResourceExhausted, "errno {errno}");
            assert_eq!(sakuga_mesh::auth::reason_of(&s).as_deref(), Some(STORAGE_FULL));
            assert_eq!(s.message(), "storage full");
        }
        // EIO, EACCES: the store is there but cannot be written.
        for errno in [5, 13] {
            let s = status_of(std::io::Error::from_raw_os_error(errno));
            assert_eq!(s.code(), Code::Unavailable, "errno {errno}");
            assert_eq!(sakuga_mesh::auth::reason_of(&s).as_deref(), Some(STORAGE_UNAVAILABLE));
        }
    }
}
