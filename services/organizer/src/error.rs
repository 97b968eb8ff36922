//! Organizer errors and their gRPC status codes.

use tonic::Status;
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
            OrganizerError::Unavailable(why) => Status::unavailable(why),
            OrganizerError::Stream(status) => status,
            OrganizerError::Storage(e) => {
                error!(error = %e, "storage error");
                Status::internal("internal error")
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
