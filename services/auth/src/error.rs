//! Auth errors and their gRPC status codes.

use tonic::Status;
use tracing::error;

/// What an auth operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// A request field is invalid.
    #[error("{field}: {reason}")]
    InvalidField {
        /// Field path.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// Wrong credentials (one message whatever was wrong).
    #[error("{0}")]
    Unauthenticated(&'static str),
    /// The caller may not do this.
    #[error("{0}")]
    PermissionDenied(&'static str),
    /// Missing, or not the caller's.
    #[error("{0} not found")]
    NotFound(String),
    /// Name taken.
    #[error("{0}")]
    AlreadyExists(String),
    /// Redis (rate limits, revocation) unreachable: fail closed.
    #[error("{0}")]
    Unavailable(&'static str),
    /// A resource ceiling is reached (`ceiling` names it); retry after the given seconds.
    #[error("too many requests in progress ({ceiling}); retry after {retry_after_secs} s")]
    Busy {
        /// The ceiling's name, as in the metric label.
        ceiling: &'static str,
        /// Whole seconds to wait.
        retry_after_secs: u64,
    },
    /// A login limit is reached (the mesh's refusal, with its reason and retry-after).
    #[error("{0}")]
    Refused(sakuga_mesh::auth::Refusal),
    /// Token signing failed.
    #[error("signing: {0}")]
    Signing(String),
    /// PostgreSQL failed.
    #[error("database: {0}")]
    Db(#[from] tokio_postgres::Error),
    /// No pooled connection.
    #[error("database pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
}

impl AuthError {
    /// Shorthand for [`AuthError::InvalidField`].
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidField { field, reason: reason.into() }
    }
}

impl From<AuthError> for Status {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::InvalidField { field, reason } => {
                Status::invalid_argument(format!("{field}: {reason}"))
            }
            AuthError::Unauthenticated(why) => Status::unauthenticated(why),
            AuthError::PermissionDenied(why) => Status::permission_denied(why),
            AuthError::NotFound(what) => Status::not_found(format!("{what} not found")),
            AuthError::AlreadyExists(what) => Status::already_exists(what),
            AuthError::Unavailable(why) => Status::unavailable(why),
            e @ AuthError::Busy { ceiling, retry_after_secs } => sakuga_mesh::auth::ceiling(
                ceiling,
                e.to_string(),
                Some(std::time::Duration::from_secs(retry_after_secs)),
            ),
            AuthError::Refused(refusal) => refusal.into(),
            AuthError::Signing(e) => {
                error!(error = %e, "token signing failed");
                Status::internal("internal error")
            }
            AuthError::Db(e) => {
                error!(error = %e, "database error");
                Status::internal("internal error")
            }
            AuthError::Pool(e) => {
                error!(error = %e, "database pool exhausted or unreachable");
                Status::unavailable("database unavailable, retry later")
            }
        }
    }
}
