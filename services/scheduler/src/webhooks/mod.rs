//! Webhooks: endpoints owned like every other object (another owner's is NOT_FOUND), their
//! secrets ([`secret`]), where they may point ([`target`]), the HTTP client ([`send`]) and the
//! delivery of the outbox ([`deliver`]). The gRPC `WebhookService` over this is in `api::webhooks`.

pub mod deliver;
pub mod secret;
pub mod send;
pub mod target;

use std::{path::PathBuf, sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use sakuga_mesh::{MeshError, api::Page};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{
    error::SchedulerError,
    job::Job,
    projects::Projects,
    store::{DisableRule, EndpointRow, Store},
    validate::{text_field, uuid_field},
    webhook::{
        Delivery, DeliveryFilter, EVENTS, Endpoint, EndpointChanges, NewEndpoint, TEST_EVENT, message_id,
    },
};

/// Default deliveries in flight to one endpoint.
pub const DEFAULT_CONCURRENCY: u32 = 4;
/// Default per-attempt timeout.
pub const DEFAULT_TIMEOUT_MS: u32 = 10_000;
/// Overlap of a rotated secret when the request does not say.
pub const DEFAULT_OVERLAP: Duration = Duration::from_hours(24);
/// Longest overlap.
pub const MAX_OVERLAP: Duration = Duration::from_hours(24 * 7);

/// `[webhooks]`: where endpoint secrets are sealed, where webhooks may go and how
/// deliveries are retried.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookConfig {
    /// Vault KV path whose field `key` (32 bytes, base64) seals endpoint secrets.
    pub key_vault_path: String,
    /// Endpoints one user may have (each job change of theirs is written once per endpoint
    /// that wants it).
    pub max_endpoints_per_user: u32,
    /// Allow `http://` endpoints (the local stack does, for its demo receiver).
    pub allow_http: bool,
    /// Networks (CIDR or single addresses) that may be targeted although they are
    /// loopback, private or link-local. Empty: none.
    pub allow_networks: Vec<String>,
    /// PEM bundle of CA certificates for `https://` endpoints; unset: the system's roots.
    pub ca_file: Option<PathBuf>,
    /// A delivery is retried for this long after its job's change, then kept as failed.
    #[serde(with = "humantime_serde")]
    pub retry_period: Duration,
    /// First retry delay; each next one doubles, with jitter, up to `backoff_max`.
    #[serde(with = "humantime_serde")]
    pub backoff_initial: Duration,
    /// Longest retry delay.
    #[serde(with = "humantime_serde")]
    pub backoff_max: Duration,
    /// An endpoint is disabled after this many failed attempts in a row ...
    pub disable_after_failures: u32,
    /// ... that span at least this long.
    #[serde(with = "humantime_serde")]
    pub disable_after: Duration,
    /// Deliveries in flight at once on this replica.
    pub max_in_flight: u32,
    /// Safety-net poll of the outbox when no wake-up arrives.
    #[serde(with = "humantime_serde")]
    pub poll: Duration,
    /// An attempt's lease outlasts its endpoint's timeout by this much; a replica that dies
    /// mid-attempt leaves the delivery to another one after it.
    #[serde(with = "humantime_serde")]
    pub lease_grace: Duration,
    /// Bytes of an endpoint's response read (the rest is dropped).
    pub max_response_bytes: u32,
    /// Finished deliveries are deleted after this long.
    #[serde(with = "humantime_serde")]
    pub keep_deliveries: Duration,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            key_vault_path: "sakuga/scheduler/webhooks".to_owned(),
            max_endpoints_per_user: 20,
            allow_http: false,
            allow_networks: Vec::new(),
            ca_file: None,
            retry_period: Duration::from_hours(24),
            backoff_initial: Duration::from_secs(5),
            backoff_max: Duration::from_hours(1),
            disable_after_failures: 20,
            disable_after: Duration::from_hours(24),
            max_in_flight: 64,
            poll: Duration::from_secs(1),
            lease_grace: Duration::from_secs(30),
            max_response_bytes: 64 * 1024,
            keep_deliveries: Duration::from_hours(24 * 30),
        }
    }
}

impl WebhookConfig {
    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<(), MeshError> {
        let bad = |field: &str, why: &str| Err(MeshError::Config(format!("webhooks.{field}: {why}")));
        if self.key_vault_path.trim().is_empty() {
            return bad("key_vault_path", "must not be empty");
        }
        target::Policy::new(self.allow_http, &self.allow_networks).map_err(MeshError::Config)?;
        if self.retry_period < Duration::from_secs(1) {
            return bad("retry_period", "must be at least 1s");
        }
        if self.backoff_initial.is_zero() || self.backoff_max < self.backoff_initial {
            return bad("backoff_initial", "must be positive and at most backoff_max");
        }
        if !(1..=1000).contains(&self.max_endpoints_per_user) {
            return bad("max_endpoints_per_user", "must be between 1 and 1000");
        }
        if self.disable_after_failures == 0 {
            return bad("disable_after_failures", "must be at least 1");
        }
        if !(1..=10_000).contains(&self.max_in_flight) {
            return bad("max_in_flight", "must be between 1 and 10000");
        }
        if self.poll.is_zero() {
            return bad("poll", "must be positive");
        }
        if self.lease_grace < Duration::from_secs(1) {
            return bad("lease_grace", "must be at least 1s");
        }
        if !(1024..=16 * 1024 * 1024).contains(&self.max_response_bytes) {
            return bad("max_response_bytes", "must be between 1024 and 16777216");
        }
        if self.keep_deliveries < self.retry_period {
            return bad("keep_deliveries", "must be at least retry_period");
        }
        Ok(())
    }

    /// When an endpoint that keeps failing is disabled.
    pub fn disable_rule(&self) -> DisableRule {
        DisableRule { failures: self.disable_after_failures, period: self.disable_after }
    }
}

/// Turns an event into the bytes POSTed: `{"type", "timestamp", "data": {"job": ...}}` with
/// the job as GetJob shows it (wired in by the service, which owns the wire format).
pub type Render = fn(event: &str, job: &Job, at: DateTime<Utc>) -> Vec<u8>;

/// What TestWebhook saw.
#[derive(Debug, Clone)]
pub struct TestResult {
    /// The `webhook-id` sent.
    pub message_id: String,
    /// The attempt.
    pub sent: send::Sent,
}

/// Endpoints and deliveries, scoped to their owners.
#[derive(Debug)]
pub struct Webhooks {
    store: Store,
    projects: Projects,
    sealer: secret::Sealer,
    policy: Arc<target::Policy>,
    sender: send::Sender,
    config: WebhookConfig,
    render: Render,
}

fn check_events(events: &[String]) -> Result<Vec<String>, SchedulerError> {
    if events.is_empty() {
        return Err(SchedulerError::invalid("events", format!("name at least one of {}", EVENTS.join(", "))));
    }
    let mut out: Vec<String> = Vec::new();
    for e in events {
        let e = e.trim();
        if !EVENTS.contains(&e) {
            return Err(SchedulerError::invalid(
                "events",
                format!("unknown event {e:?}; known: {}", EVENTS.join(", ")),
            ));
        }
        if !out.iter().any(|o| o == e) {
            out.push(e.to_owned());
        }
    }
    Ok(out)
}

fn check_concurrency(n: u32) -> Result<u32, SchedulerError> {
    match n {
        0 => Ok(DEFAULT_CONCURRENCY),
        1..=64 => Ok(n),
        _ => Err(SchedulerError::invalid("max_concurrency", format!("must be between 1 and 64, got {n}"))),
    }
}

fn check_timeout(ms: u32) -> Result<u32, SchedulerError> {
    match ms {
        0 => Ok(DEFAULT_TIMEOUT_MS),
        1000..=60_000 => Ok(ms),
        _ => Err(SchedulerError::invalid("timeout_ms", format!("must be between 1000 and 60000, got {ms}"))),
    }
}

impl Webhooks {
    /// Over the store, with secrets sealed by `sealer`, URLs checked and deliveries sent as
    /// `config` says, and payloads made by `render`.
    pub fn new(
        store: Store,
        projects: Projects,
        sealer: secret::Sealer,
        config: WebhookConfig,
        render: Render,
    ) -> Result<Self, MeshError> {
        let policy = Arc::new(
            target::Policy::new(config.allow_http, &config.allow_networks).map_err(MeshError::Config)?,
        );
        let sender = send::Sender::new(policy.clone(), config.ca_file.as_deref(), config.max_response_bytes)?;
        Ok(Self { store, projects, sealer, policy, sender, config, render })
    }

    /// The configuration.
    pub fn config(&self) -> &WebhookConfig {
        &self.config
    }

    async fn project_filter(&self, owner: &str, project: &str) -> Result<Option<Uuid>, SchedulerError> {
        if project.is_empty() {
            return Ok(None);
        }
        let id = uuid_field("project_id", project)?;
        self.projects.get(id, Some(owner)).await?;
        Ok(Some(id))
    }

    /// Registers an endpoint for `owner`; returns it and its secret as shown once.
    pub async fn create(&self, owner: &str, new: &NewEndpoint) -> Result<(Endpoint, String), SchedulerError> {
        let url = self.policy.check(&new.url).await?;
        let events = check_events(&new.events)?;
        let description = text_field("description", &new.description, 0, 500)?;
        let row = EndpointRow {
            url: url.as_str(),
            events: &events,
            project_id: self.project_filter(owner, &new.project_id).await?,
            only_named_jobs: new.only_named_jobs,
            description: &description,
            max_concurrency: check_concurrency(new.max_concurrency)?,
            timeout_ms: check_timeout(new.timeout_ms)?,
        };
        let id = Uuid::now_v7();
        let key = self.sealer.generate();
        let sealed = self.sealer.seal(id, &key);
        let cap = self.config.max_endpoints_per_user;
        let endpoint = self.store.insert_endpoint(id, owner, &row, &sealed, cap).await?;
        Ok((endpoint, secret::shown(&key)))
    }

    /// An endpoint visible to `scope` (`None`: any).
    pub async fn get(&self, id: Uuid, scope: Option<&str>) -> Result<Endpoint, SchedulerError> {
        self.store.endpoint(id, scope).await
    }

    /// A page of endpoints visible to `scope`.
    pub async fn list(
        &self,
        scope: Option<&str>,
        page: &Page,
    ) -> Result<(Vec<Endpoint>, String), SchedulerError> {
        let mut rows = self.store.endpoints(scope, page.after, page.fetch()).await?;
        let next = page.finish(&mut rows, |e| (e.created_at, e.id));
        Ok((rows, next))
    }

    /// Changes an endpoint visible to `scope`; the project filter must be its owner's.
    pub async fn update(
        &self,
        id: Uuid,
        scope: Option<&str>,
        changes: &EndpointChanges,
    ) -> Result<Endpoint, SchedulerError> {
        let current = self.store.endpoint(id, scope).await?;
        let url = match &changes.url {
            Some(u) => self.policy.check(u).await?.to_string(),
            None => current.url.clone(),
        };
        let events = changes.events.as_deref().map(check_events).transpose()?.unwrap_or(current.events);
        let description = changes
            .description
            .as_deref()
            .map(|d| text_field("description", d, 0, 500))
            .transpose()?
            .unwrap_or(current.description);
        let project_id = match &changes.project_id {
            Some(p) => self.project_filter(&current.owner_id, p).await?,
            None => current.project_id,
        };
        let row = EndpointRow {
            url: &url,
            events: &events,
            project_id,
            only_named_jobs: changes.only_named_jobs.unwrap_or(current.only_named_jobs),
            description: &description,
            max_concurrency: changes
                .max_concurrency
                .map_or(Ok(current.max_concurrency), check_concurrency)?,
            timeout_ms: changes.timeout_ms.map_or(Ok(current.timeout_ms), check_timeout)?,
        };
        self.store.update_endpoint(id, scope, &row, changes.enabled.unwrap_or(current.enabled)).await
    }

    /// Deletes an endpoint visible to `scope` and its deliveries.
    pub async fn delete(&self, id: Uuid, scope: Option<&str>) -> Result<(), SchedulerError> {
        self.store.delete_endpoint(id, scope).await
    }

    /// A new secret for an endpoint visible to `scope`, the old one signing beside it for
    /// `overlap` (default one day).
    pub async fn rotate(
        &self,
        id: Uuid,
        scope: Option<&str>,
        overlap: Option<Duration>,
    ) -> Result<(Endpoint, String), SchedulerError> {
        let overlap = overlap.unwrap_or(DEFAULT_OVERLAP);
        if overlap > MAX_OVERLAP {
            return Err(SchedulerError::invalid("overlap_seconds", "must be at most 604800 (seven days)"));
        }
        let key = self.sealer.generate();
        let endpoint = self.store.rotate_secret(id, scope, &self.sealer.seal(id, &key), overlap).await?;
        Ok((endpoint, secret::shown(&key)))
    }

    /// The keys that sign for endpoint `id` now: the current one, then the previous one
    /// while it overlaps.
    fn keys(&self, id: Uuid, secret: &[u8], previous: Option<&[u8]>) -> Result<Vec<Vec<u8>>, String> {
        let current = self.sealer.open(id, secret).ok_or_else(|| {
            "the endpoint's secret does not open with this scheduler's key (webhooks.key_vault_path)"
                .to_owned()
        })?;
        Ok(std::iter::once(current).chain(previous.and_then(|p| self.sealer.open(id, p))).collect())
    }

    /// Sends a signed `webhook.test` event to an endpoint visible to `scope` now.
    pub async fn test(&self, id: Uuid, scope: Option<&str>) -> Result<TestResult, SchedulerError> {
        let (endpoint, secret, previous) = self.store.endpoint_secrets(id, scope).await?;
        let keys = self.keys(id, &secret, previous.as_deref()).map_err(SchedulerError::FailedPrecondition)?;
        let message_id = message_id(Uuid::now_v7());
        let body = serde_json::to_vec(&serde_json::json!({
            "type": TEST_EVENT,
            "timestamp": Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "data": { "webhookId": endpoint.id.to_string() },
        }))
        .unwrap_or_default();
        let timeout = Duration::from_millis(u64::from(endpoint.timeout_ms));
        let sent = self.sender.send(&endpoint.url, &message_id, &body, &keys, timeout).await;
        Ok(TestResult { message_id, sent })
    }

    /// A page of deliveries of endpoints visible to `scope`.
    pub async fn deliveries(
        &self,
        scope: Option<&str>,
        mut filter: DeliveryFilter,
        page: &Page,
    ) -> Result<(Vec<Delivery>, String), SchedulerError> {
        filter.cursor = page.after;
        let mut rows = self.store.deliveries(scope, &filter, page.fetch()).await?;
        let next = page.finish(&mut rows, |d| (d.created_at, d.id));
        Ok((rows, next))
    }

    /// Sends a delivered or failed delivery visible to `scope` again.
    pub async fn redeliver(&self, id: Uuid, scope: Option<&str>) -> Result<Delivery, SchedulerError> {
        self.store.redeliver(id, scope).await
    }

    /// Checks that `owner` may name endpoint `id` in SubmitJob.
    pub async fn check_named(&self, owner: &str, id: &str) -> Result<Option<Uuid>, SchedulerError> {
        if id.is_empty() {
            return Ok(None);
        }
        let id = uuid_field("webhook_id", id)?;
        if !self.store.owns_endpoint(id, owner).await? {
            return Err(SchedulerError::NotFound(format!("webhook {id}")));
        }
        Ok(Some(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_and_limits_are_checked_by_name() {
        let e = |v: &[&str]| check_events(&v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>());
        assert_eq!(
            e(&["job.succeeded", "job.failed", "job.succeeded"]).unwrap(),
            ["job.succeeded", "job.failed"]
        );
        assert!(e(&[]).unwrap_err().to_string().starts_with("events: "));
        assert!(e(&["job.done"]).unwrap_err().to_string().contains("unknown event \"job.done\""));
        assert_eq!(check_concurrency(0).unwrap(), DEFAULT_CONCURRENCY);
        assert!(check_concurrency(65).unwrap_err().to_string().starts_with("max_concurrency: "));
        assert_eq!(check_timeout(0).unwrap(), DEFAULT_TIMEOUT_MS);
        assert!(check_timeout(999).unwrap_err().to_string().starts_with("timeout_ms: "));
    }

    #[test]
    fn the_defaults_are_valid_and_bad_settings_are_named() {
        WebhookConfig::default().validate().unwrap();
        let c = WebhookConfig { allow_networks: vec!["nope".to_owned()], ..WebhookConfig::default() };
        assert!(c.validate().unwrap_err().to_string().contains("webhooks.allow_networks"));
        let c = WebhookConfig { keep_deliveries: Duration::from_secs(1), ..WebhookConfig::default() };
        assert!(c.validate().unwrap_err().to_string().contains("webhooks.keep_deliveries"));
    }
}
