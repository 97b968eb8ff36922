//! Scheduler errors and their gRPC status codes.

use tonic::Status;
use tracing::error;

/// What a scheduler operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    /// A request field is invalid; `field` is its path in the request.
    #[error("{field}: {reason}")]
    InvalidField {
        /// Field path, e.g. `spec.width`.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// The object does not exist or belongs to someone else.
    #[error("{0} not found")]
    NotFound(String),
    /// An object with this unique name exists.
    #[error("{0}")]
    AlreadyExists(String),
    /// The object is in a state that does not allow this.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The owner has too many jobs queued or running.
    #[error("{active} jobs queued or running, the limit is {cap}")]
    QueueFull {
        /// Jobs queued or running now.
        active: i64,
        /// The limit.
        cap: u32,
    },
    /// The owner already has as many webhook endpoints as allowed.
    #[error("{cap} webhook endpoints already registered, the limit")]
    TooManyWebhooks {
        /// `webhooks.max_endpoints_per_user`.
        cap: u32,
    },
    /// The caller already holds as many `WatchJob` streams as a ceiling allows.
    #[error("{} reached ({cap})", ceiling.name())]
    TooManyWatchers {
        /// Which ceiling.
        ceiling: WatchCeiling,
        /// Its configured value.
        cap: u32,
    },
    /// PostgreSQL failed.
    #[error("database: {0}")]
    Db(#[from] tokio_postgres::Error),
    /// No pooled connection.
    #[error("database pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    /// The task committing a submit stopped without saying whether it committed.
    #[error("the commit carrying this submit stopped without an answer")]
    Abandoned,
}

impl SchedulerError {
    /// Shorthand for [`SchedulerError::InvalidField`].
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidField { field, reason: reason.into() }
    }

    /// The ceiling this refusal is by, as metrics name it; `None` for other errors.
    pub fn ceiling(&self) -> Option<&'static str> {
        match self {
            Self::QueueFull { .. } => Some("active_jobs_per_user"),
            Self::TooManyWebhooks { .. } => Some("webhooks_per_user"),
            Self::TooManyWatchers { ceiling, .. } => Some(ceiling.name()),
            Self::InvalidField { .. }
            | Self::NotFound(_)
            | Self::AlreadyExists(_)
            | Self::FailedPrecondition(_)
            | Self::Db(_)
            | Self::Pool(_)
            | Self::Abandoned => None,
        }
    }
}

impl From<SchedulerError> for Status {
    fn from(e: SchedulerError) -> Self {
        match e {
            SchedulerError::InvalidField { field, reason } => {
                Status::invalid_argument(format!("{field}: {reason}"))
            }
            SchedulerError::NotFound(what) => Status::not_found(format!("{what} not found")),
            SchedulerError::FailedPrecondition(why) => Status::failed_precondition(why),
            SchedulerError::AlreadyExists(why) => Status::already_exists(why),
            SchedulerError::QueueFull { active, cap } => sakuga_mesh::auth::ceiling(
                "active_jobs_per_user",
                format!(
                    "{active} of your jobs are queued or running, the limit is {cap}: wait for some to finish"
                ),
                None,
            ),
            // No retry-after: the caller frees one by deleting an endpoint.
            SchedulerError::TooManyWebhooks { cap } => sakuga_mesh::auth::ceiling(
                "webhooks_per_user",
                format!(
                    "you already have {cap} webhook endpoints, the limit; delete one before creating another"
                ),
                None,
            ),
            // No retry-after: a slot comes back only when one of the caller's own streams
            // ends, which the caller sees and controls.
            SchedulerError::TooManyWatchers { ceiling, cap } => sakuga_mesh::auth::ceiling(
                ceiling.name(),
                format!(
                    "{}: {cap} WatchJob streams already open, the limit; close one before watching another",
                    ceiling.name()
                ),
                None,
            ),
            SchedulerError::Db(e) => {
                error!(error = %e, "database error");
                Status::internal("internal error")
            }
            SchedulerError::Abandoned => {
                error!("a submit's commit stopped without an answer");
                Status::internal(
                    "internal error: the submit may or may not be queued; retry with the same idempotency key",
                )
            }
            SchedulerError::Pool(e) => {
                error!(error = %e, "database pool exhausted or unreachable");
                Status::unavailable("database unavailable, retry later")
            }
        }
    }
}

/// Which watcher ceiling a refusal hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchCeiling {
    /// `watch.max_per_user`.
    PerUser,
    /// `watch.max_per_connection`.
    PerConnection,
}

impl WatchCeiling {
    /// The ceiling's name in metrics and messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::PerUser => "watchers_per_user",
            Self::PerConnection => "watchers_per_connection",
        }
    }
}
