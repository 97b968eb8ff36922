//! Views of webhook endpoints, deliveries and test results.

use sakuga_proto::v1 as pb;
use serde::Serialize;

use chrono::Utc;

use super::{details, or_null, time};

/// A webhook endpoint; its signing secret only right after it was created or rotated.
#[derive(Debug, Serialize)]
pub struct Webhook {
    consecutive_failures: u32,
    created: Option<String>,
    description: String,
    disabled_reason: Option<String>,
    enabled: bool,
    events: Vec<String>,
    failing_since: Option<String>,
    id: String,
    max_concurrency: u32,
    only_named_jobs: bool,
    owner_id: String,
    previous_secret_expires: Option<String>,
    project_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<String>,
    timeout_ms: u32,
    updated: Option<String>,
    url: String,
}

impl From<&pb::WebhookEndpoint> for Webhook {
    fn from(w: &pb::WebhookEndpoint) -> Self {
        Self {
            consecutive_failures: w.consecutive_failures,
            created: time(w.create_time.as_ref()),
            description: w.description.clone(),
            disabled_reason: or_null(&w.disabled_reason),
            enabled: w.enabled,
            events: w.events.clone(),
            failing_since: time(w.failing_since.as_ref()),
            id: w.id.clone(),
            max_concurrency: w.max_concurrency,
            only_named_jobs: w.only_named_jobs,
            owner_id: w.owner_id.clone(),
            previous_secret_expires: time(w.previous_secret_expire_time.as_ref()),
            project_id: or_null(&w.project_id),
            secret: None,
            timeout_ms: w.timeout_ms,
            updated: time(w.update_time.as_ref()),
            url: w.url.clone(),
        }
    }
}

impl Webhook {
    /// An endpoint just created or rotated, with the secret shown this once.
    pub fn with_secret(w: &pb::WebhookEndpoint, secret: String) -> Self {
        Self { secret: Some(secret), ..Self::from(w) }
    }
}

/// For people: an endpoint's lines, then its new secret on a line of its own (last, so it
/// is easy to find and copy).
pub fn webhook_with_secret(w: &pb::WebhookEndpoint, secret: &str) -> String {
    let view = serde_json::to_value(Webhook::from(w)).unwrap_or_default();
    format!("{}\n\nsecret: {secret}", details(&view))
}

/// What to do with a secret just shown, and until when the previous one still signs (when
/// it does: set and in the future).
pub fn secret_note(w: &pb::WebhookEndpoint) -> String {
    let note = "this secret is shown only once: store it now (it verifies the webhook-signature header \
                of every delivery)";
    let still_signs = w.previous_secret_expire_time.as_ref().filter(|t| t.seconds > Utc::now().timestamp());
    match time(still_signs) {
        Some(until) => format!("{note}; the previous secret keeps signing beside it until {until}"),
        None => note.to_owned(),
    }
}

/// `pending`, `delivered`, `failed`.
pub fn delivery_state_name(s: i32) -> &'static str {
    match pb::DeliveryState::try_from(s).unwrap_or(pb::DeliveryState::Unspecified) {
        pb::DeliveryState::Pending => "pending",
        pb::DeliveryState::Delivered => "delivered",
        pb::DeliveryState::Failed => "failed",
        pb::DeliveryState::Unspecified => "unknown",
    }
}

/// An HTTP status, or null when no response came.
fn status_code(code: u32) -> Option<u32> {
    if code == 0 { None } else { Some(code) }
}

/// One event for one endpoint.
#[derive(Debug, Serialize)]
pub struct Delivery {
    attempts: u32,
    created: Option<String>,
    delivered: Option<String>,
    event: String,
    id: String,
    job_id: String,
    last_attempt: Option<String>,
    last_error: Option<String>,
    last_status_code: Option<u32>,
    message_id: String,
    next_attempt: Option<String>,
    state: &'static str,
    webhook_id: String,
}

impl From<&pb::WebhookDelivery> for Delivery {
    fn from(d: &pb::WebhookDelivery) -> Self {
        Self {
            attempts: d.attempts,
            created: time(d.create_time.as_ref()),
            delivered: time(d.deliver_time.as_ref()),
            event: d.event.clone(),
            id: d.id.clone(),
            job_id: d.job_id.clone(),
            last_attempt: time(d.last_attempt_time.as_ref()),
            last_error: or_null(&d.last_error),
            last_status_code: status_code(d.last_status_code),
            message_id: d.message_id.clone(),
            next_attempt: time(d.next_attempt_time.as_ref()),
            state: delivery_state_name(d.state),
            webhook_id: d.webhook_id.clone(),
        }
    }
}

/// What an endpoint answered to a test event.
#[derive(Debug, Serialize)]
pub struct WebhookTest {
    duration_ms: u32,
    error: Option<String>,
    message_id: String,
    status_code: Option<u32>,
}

impl From<&pb::TestWebhookResponse> for WebhookTest {
    fn from(t: &pb::TestWebhookResponse) -> Self {
        Self {
            duration_ms: t.duration_ms,
            error: or_null(&t.error),
            message_id: t.message_id.clone(),
            status_code: status_code(t.status_code),
        }
    }
}
