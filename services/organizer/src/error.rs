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
