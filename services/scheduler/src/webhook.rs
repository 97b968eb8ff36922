//! Webhook endpoints and their deliveries as the scheduler sees them (no proto types here).
//! The service over them is in [`crate::webhooks`], their SQL in `store::webhooks`.

use chrono::{DateTime, Utc};
use uuid::Uuid;

/// The events an endpoint may ask for, as sent in the payload's `type`.
pub const EVENTS: [&str; 4] = ["job.started", "job.succeeded", "job.failed", "job.canceled"];

/// The `type` of the event `TestWebhook` sends.
pub const TEST_EVENT: &str = "webhook.test";

/// A registered endpoint (its secrets stay in the store).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Id.
    pub id: Uuid,
    /// Owner principal.
    pub owner_id: String,
    /// Target URL (checked against the address policy when set).
    pub url: String,
    /// Event names it receives.
    pub events: Vec<String>,
    /// Only jobs of this project.
    pub project_id: Option<Uuid>,
    /// Only jobs that name it.
    pub only_named_jobs: bool,
    /// New deliveries are made and pending ones sent only while enabled.
    pub enabled: bool,
    /// Free text.
    pub description: String,
    /// Deliveries in flight at once, across replicas.
    pub max_concurrency: u32,
    /// Per-attempt timeout in milliseconds.
    pub timeout_ms: u32,
    /// Why the scheduler disabled it; empty otherwise.
    pub disabled_reason: String,
    /// Failed attempts since the last success.
    pub consecutive_failures: u32,
    /// First failure of the current run of failures.
    pub failing_since: Option<DateTime<Utc>>,
    /// Until when the previous secret signs too.
    pub previous_secret_expires_at: Option<DateTime<Utc>>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

/// A new endpoint, as asked for (checked by [`crate::webhooks::Webhooks::create`]).
#[derive(Debug, Clone, Default)]
pub struct NewEndpoint {
    /// Target URL.
    pub url: String,
    /// Event names.
    pub events: Vec<String>,
    /// Project filter (a UUID or empty).
    pub project_id: String,
    /// Only jobs that name it.
    pub only_named_jobs: bool,
    /// Free text.
    pub description: String,
    /// 0: the default.
    pub max_concurrency: u32,
    /// 0: the default.
    pub timeout_ms: u32,
}

/// Changes to an endpoint; `None` keeps the field.
#[derive(Debug, Clone, Default)]
pub struct EndpointChanges {
    /// New URL.
    pub url: Option<String>,
    /// New events.
    pub events: Option<Vec<String>>,
    /// New project filter; `Some("")` removes it.
    pub project_id: Option<String>,
    /// New named-jobs-only flag.
    pub only_named_jobs: Option<bool>,
    /// Enable (clearing why it was disabled) or disable.
    pub enabled: Option<bool>,
    /// New description.
    pub description: Option<String>,
    /// New concurrency.
    pub max_concurrency: Option<u32>,
    /// New timeout.
    pub timeout_ms: Option<u32>,
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryState {
    /// Waiting for an attempt (or in one).
    Pending,
    /// Accepted by the endpoint.
    Delivered,
    /// Given up after the retry period.
    Failed,
}

impl DeliveryState {
    /// Database spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
        }
    }

    /// From the database spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(Self::Pending),
            "delivered" => Some(Self::Delivered),
            "failed" => Some(Self::Failed),
            _ => None,
        }
    }
}

/// One event for one endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// Id.
    pub id: Uuid,
    /// The endpoint.
    pub endpoint_id: Uuid,
    /// The job.
    pub job_id: Uuid,
    /// Event name.
    pub event: String,
    /// Where it stands.
    pub state: DeliveryState,
    /// Attempts made.
    pub attempts: u32,
    /// HTTP status of the last attempt (0: no response).
    pub last_status_code: u32,
    /// Why the last attempt failed.
    pub last_error: String,
    /// When the job's change happened.
    pub created_at: DateTime<Utc>,
    /// Next attempt (pending only).
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// Last attempt.
    pub last_attempt_at: Option<DateTime<Utc>>,
    /// When the endpoint accepted it.
    pub delivered_at: Option<DateTime<Utc>>,
}

/// The `webhook-id` of a delivery: the same on every attempt and redelivery.
pub fn message_id(delivery: Uuid) -> String {
    format!("msg_{}", delivery.simple())
}

/// Filters of ListDeliveries.
#[derive(Debug, Clone, Default)]
pub struct DeliveryFilter {
    /// Only this endpoint's.
    pub endpoint_id: Option<Uuid>,
    /// Only this job's.
    pub job_id: Option<Uuid>,
    /// Only this state.
    pub state: Option<DeliveryState>,
    /// Keyset cursor: (created_at, id) of the last row of the previous page.
    pub cursor: Option<(DateTime<Utc>, Uuid)>,
}
