//! What commands print: a stable JSON shape per object (`--json`, documented in the
//! README) and plain aligned tables for people. Each shape is a typed view of its wire
//! message; its fields are declared in alphabetical order because that is the order the
//! JSON has always had (a test keeps it so), and keys are only ever added.

use chrono::{DateTime, Utc};
use sakuga_proto::v1 as pb;
use serde::Serialize;
use serde_json::Value;

mod webhooks;

pub use webhooks::{Delivery, Webhook, WebhookTest, delivery_state_name, secret_note, webhook_with_secret};

/// RFC 3339 UTC, or null.
fn time(t: Option<&prost_types::Timestamp>) -> Option<String> {
    t.and_then(|t| DateTime::<Utc>::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(0)))
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

/// Empty text is absent: null.
fn or_null(s: &str) -> Option<String> {
    if s.is_empty() { None } else { Some(s.to_owned()) }
}

/// `queued`, `running`, ...
pub fn status_name(s: i32) -> &'static str {
    match pb::JobStatus::try_from(s).unwrap_or(pb::JobStatus::Unspecified) {
        pb::JobStatus::Queued => "queued",
        pb::JobStatus::Assigned => "assigned",
        pb::JobStatus::Running => "running",
        pb::JobStatus::Succeeded => "succeeded",
        pb::JobStatus::Failed => "failed",
        pb::JobStatus::Canceled => "canceled",
        pb::JobStatus::Unspecified => "unknown",
    }
}

fn kind_name(k: i32) -> &'static str {
    if k == i32::from(pb::JobKind::Video) { "video" } else { "image" }
}

/// A job.
#[derive(Debug, Serialize)]
pub struct Job {
    attempts: u32,
    backend: String,
    batch_size: u32,
    character_ids: Vec<String>,
    composed_prompt: String,
    created: Option<String>,
    error: Option<String>,
    file_ids: Vec<String>,
    finished: Option<String>,
    fps: u32,
    frames: u32,
    height: u32,
    id: String,
    kind: &'static str,
    max_attempts: u32,
    model: String,
    negative_prompt: String,
    priority: i32,
    progress: Progress,
    project_id: Option<String>,
    prompt: String,
    seed: Option<u64>,
    started: Option<String>,
    status: &'static str,
    steps: u32,
    webhook_id: Option<String>,
    width: u32,
    worker_id: Option<String>,
}

/// A job's progress.
#[derive(Debug, Serialize)]
pub struct Progress {
    stage: String,
    step: u32,
    total_steps: u32,
}

impl From<&pb::Job> for Job {
    fn from(j: &pb::Job) -> Self {
        let s = j.spec.clone().unwrap_or_default();
        let p = j.progress.clone().unwrap_or_default();
        Self {
            attempts: j.attempts,
            backend: s.backend,
            batch_size: s.batch_size.max(1),
            character_ids: j.character_ids.clone(),
            composed_prompt: j.composed_prompt.clone(),
            created: time(j.create_time.as_ref()),
            error: or_null(&j.error),
            file_ids: j.file_ids.clone(),
            finished: time(j.finish_time.as_ref()),
            fps: s.fps,
            frames: s.frames,
            height: s.height,
            id: j.id.clone(),
            kind: kind_name(s.kind),
            max_attempts: j.max_attempts,
            model: s.model,
            negative_prompt: s.negative_prompt,
            priority: j.priority,
            progress: Progress { stage: p.stage, step: p.step, total_steps: p.total_steps },
            project_id: or_null(&j.project_id),
            prompt: s.prompt,
            seed: s.seed,
            started: time(j.start_time.as_ref()),
            status: status_name(j.status),
            steps: s.steps,
            webhook_id: or_null(&j.webhook_id),
            width: s.width,
            worker_id: or_null(&j.worker_id),
        }
    }
}

/// A file.
#[derive(Debug, Serialize)]
pub struct File {
    checks: Vec<String>,
    created: Option<String>,
    frames: u32,
    height: u32,
    id: String,
    index: u32,
    job_id: String,
    kind: &'static str,
    mime_type: String,
    name: String,
    project_id: Option<String>,
    sha256: String,
    size_bytes: u64,
    width: u32,
}

impl From<&pb::File> for File {
    fn from(f: &pb::File) -> Self {
        Self {
            checks: f.checks.clone(),
            created: time(f.create_time.as_ref()),
            frames: f.frames,
            height: f.height,
            id: f.id.clone(),
            index: f.index,
            job_id: f.job_id.clone(),
            kind: kind_name(f.kind),
            mime_type: f.mime_type.clone(),
            name: f.name.clone(),
            project_id: or_null(&f.project_id),
            sha256: f.sha256.clone(),
            size_bytes: f.size_bytes,
            width: f.width,
        }
    }
}

/// A project.
#[derive(Debug, Serialize)]
pub struct Project {
    archived: bool,
    created: Option<String>,
    description: String,
    id: String,
    name: String,
    retention_days: u32,
    slug: String,
}

impl From<&pb::Project> for Project {
    fn from(p: &pb::Project) -> Self {
        Self {
            archived: p.archived,
            created: time(p.create_time.as_ref()),
            description: p.description.clone(),
            id: p.id.clone(),
            name: p.name.clone(),
            retention_days: p.retention_days,
            slug: p.slug.clone(),
        }
    }
}

/// A character.
#[derive(Debug, Serialize)]
pub struct Character {
    description: String,
    id: String,
    name: String,
    negative_fragment: String,
    project_id: String,
    prompt_fragment: String,
}

impl From<&pb::Character> for Character {
    fn from(c: &pb::Character) -> Self {
        Self {
            description: c.description.clone(),
            id: c.id.clone(),
            name: c.name.clone(),
            negative_fragment: c.negative_fragment.clone(),
            project_id: c.project_id.clone(),
            prompt_fragment: c.prompt_fragment.clone(),
        }
    }
}

/// A user.
#[derive(Debug, Serialize)]
pub struct User {
    created: Option<String>,
    disabled: bool,
    id: String,
    role: &'static str,
    username: String,
}

impl From<&pb::User> for User {
    fn from(u: &pb::User) -> Self {
        Self {
            created: time(u.create_time.as_ref()),
            disabled: u.disabled,
            id: u.id.clone(),
            role: if u.role == i32::from(pb::Role::Admin) { "admin" } else { "user" },
            username: u.username.clone(),
        }
    }
}

/// An API key; its secret only right after it was created.
#[derive(Debug, Serialize)]
pub struct ApiKey {
    created: Option<String>,
    expires: Option<String>,
    id: String,
    last_used: Option<String>,
    name: String,
    prefix: String,
    revoked: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<String>,
    user_id: String,
}

impl From<&pb::ApiKey> for ApiKey {
    fn from(k: &pb::ApiKey) -> Self {
        Self {
            created: time(k.create_time.as_ref()),
            expires: time(k.expire_time.as_ref()),
            id: k.id.clone(),
            last_used: time(k.last_used_time.as_ref()),
            name: k.name.clone(),
            prefix: k.prefix.clone(),
            revoked: k.revoked,
            secret: None,
            user_id: k.user_id.clone(),
        }
    }
}

impl ApiKey {
    /// A key just created, with the secret shown this once.
    pub fn with_secret(k: &pb::ApiKey, secret: String) -> Self {
        Self { secret: Some(secret), ..Self::from(k) }
    }
}

/// An audit event.
#[derive(Debug, Serialize)]
pub struct Audit {
    action: String,
    actor: String,
    id: u64,
    request_id: String,
    result: String,
    target: String,
    time: Option<String>,
}

impl From<&pb::AuditEvent> for Audit {
    fn from(e: &pb::AuditEvent) -> Self {
        Self {
            action: e.action.clone(),
            actor: e.actor.clone(),
            id: e.id,
            request_id: e.request_id.clone(),
            result: e.result.clone(),
            target: e.target.clone(),
            time: time(e.time.as_ref()),
        }
    }
}

/// A configured profile.
#[derive(Debug, Serialize)]
pub struct ProfileRow {
    /// Auth service address.
    pub auth: String,
    /// Whether it is the default.
    pub default: bool,
    /// Its name.
    pub name: String,
    /// Organizer address.
    pub organizer: String,
    /// Scheduler address.
    pub scheduler: String,
}

/// The views of a list of wire messages.
pub fn all<'a, W: 'a, V: From<&'a W>>(items: &'a [W]) -> Vec<V> {
    items.iter().map(V::from).collect()
}

/// Prints `value` as JSON, or for people as a table of `columns` (a list) or as
/// `key: value` lines (one object).
pub fn print<T: Serialize + ?Sized>(json: bool, value: &T, columns: &[&str]) {
    let value = serde_json::to_value(value).unwrap_or_default();
    if json {
        println!("{}", serde_json::to_string_pretty(&value).unwrap_or_default());
    } else if let Value::Array(rows) = &value {
        println!("{}", table(rows, columns));
    } else {
        println!("{}", details(&value));
    }
}

/// Prints `rows` (JSON objects) as a table of `columns` (headers are the keys, upper-cased).
pub fn table(rows: &[Value], columns: &[&str]) -> String {
    let cell = |v: &Value| match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        Value::Array(a) => a
            .iter()
            .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_owned))
            .collect::<Vec<_>>()
            .join(","),
        other => other.to_string(),
    };
    let get = |row: &Value, col: &str| {
        // `progress` shows as step/total.
        if col == "progress" {
            let p = &row["progress"];
            return format!("{}/{}", p["step"], p["total_steps"]);
        }
        let mut text = cell(&row[col]);
        if text.chars().count() > 48 {
            text = text.chars().take(47).collect::<String>() + "…";
        }
        text
    };
    let cells: Vec<Vec<String>> = rows.iter().map(|r| columns.iter().map(|c| get(r, c)).collect()).collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| cells.iter().map(|r| r[i].chars().count()).chain([c.len()]).max().unwrap_or(0))
        .collect();
    let line = |values: Vec<String>| {
        values
            .iter()
            .zip(&widths)
            .map(|(v, w)| format!("{v:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    let mut out = vec![line(columns.iter().map(|c| c.to_ascii_uppercase()).collect())];
    out.extend(cells.into_iter().map(line));
    out.join("\n")
}

/// Prints one object as `key: value` lines.
pub fn details(v: &Value) -> String {
    let Some(map) = v.as_object() else { return v.to_string() };
    let width = map.keys().map(String::len).max().unwrap_or(0);
    map.iter()
        .map(|(k, v)| {
            let text = match v {
                Value::Null => "-".to_owned(),
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            format!("{k:<width$}  {text}")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// The JSON of `view` has its keys in the order `serde_json::Value` (a sorted map) gives
    /// them, the order the output has always had.
    fn keys_sorted<T: Serialize>(view: &T) {
        let text = serde_json::to_string(view).unwrap();
        let value = serde_json::to_value(view).unwrap();
        assert_eq!(text, serde_json::to_string(&value).unwrap());
    }

    #[test]
    fn every_view_declares_its_keys_in_order() {
        let time = Some(prost_types::Timestamp { seconds: 1_700_000_000, nanos: 5_000_000 });
        let job = pb::Job {
            id: "j".into(),
            spec: Some(pb::JobSpec { seed: Some(3), ..Default::default() }),
            progress: Some(pb::JobProgress {
                step: 1,
                total_steps: 2,
                stage: "generating".into(),
                ..Default::default()
            }),
            create_time: time,
            ..Default::default()
        };
        keys_sorted(&Job::from(&job));
        keys_sorted(&File::from(&pb::File { create_time: time, ..Default::default() }));
        keys_sorted(&Project::from(&pb::Project::default()));
        keys_sorted(&Character::from(&pb::Character::default()));
        keys_sorted(&User::from(&pb::User::default()));
        keys_sorted(&ApiKey::from(&pb::ApiKey::default()));
        keys_sorted(&ApiKey::with_secret(&pb::ApiKey::default(), "sk_x".into()));
        keys_sorted(&Audit::from(&pb::AuditEvent::default()));
        keys_sorted(&Webhook::from(&pb::WebhookEndpoint { create_time: time, ..Default::default() }));
        keys_sorted(&Webhook::with_secret(&pb::WebhookEndpoint::default(), "whsec_x".into()));
        keys_sorted(&Delivery::from(&pb::WebhookDelivery { next_attempt_time: time, ..Default::default() }));
        keys_sorted(&WebhookTest::from(&pb::TestWebhookResponse::default()));
        keys_sorted(&ProfileRow {
            auth: String::new(),
            default: true,
            name: String::new(),
            organizer: String::new(),
            scheduler: String::new(),
        });
    }

    #[test]
    fn a_job_keeps_its_documented_json() {
        let job = pb::Job {
            id: "j".into(),
            status: pb::JobStatus::Succeeded.into(),
            spec: Some(pb::JobSpec { prompt: "p".into(), width: 64, seed: Some(3), ..Default::default() }),
            file_ids: vec!["f".into()],
            create_time: Some(prost_types::Timestamp { seconds: 1_700_000_000, nanos: 5_000_000 }),
            ..Default::default()
        };
        let v = serde_json::to_value(Job::from(&job)).unwrap();
        assert_eq!(
            v,
            json!({
                "id": "j", "status": "succeeded", "kind": "image", "prompt": "p", "composed_prompt": "",
                "negative_prompt": "", "width": 64, "height": 0, "steps": 0, "batch_size": 1,
                "frames": 0, "fps": 0, "seed": 3, "backend": "", "model": "", "project_id": null,
                "character_ids": [], "priority": 0, "attempts": 0, "max_attempts": 0,
                "progress": {"step": 0, "total_steps": 0, "stage": ""}, "error": null,
                "file_ids": ["f"], "worker_id": null, "created": "2023-11-14T22:13:20.005Z",
                "started": null, "finished": null, "webhook_id": null,
            })
        );
    }

    fn endpoint() -> pb::WebhookEndpoint {
        pb::WebhookEndpoint {
            id: "w".into(),
            owner_id: "user:u".into(),
            url: "https://hooks.example.com/sakuga".into(),
            events: vec!["job.succeeded".into(), "job.failed".into()],
            enabled: true,
            max_concurrency: 4,
            timeout_ms: 10_000,
            create_time: Some(prost_types::Timestamp { seconds: 1_700_000_000, nanos: 5_000_000 }),
            ..Default::default()
        }
    }

    #[test]
    fn a_webhook_keeps_its_documented_json_and_shows_its_secret_only_when_just_made() {
        let v = serde_json::to_value(Webhook::from(&endpoint())).unwrap();
        assert_eq!(
            v,
            json!({
                "id": "w", "owner_id": "user:u", "url": "https://hooks.example.com/sakuga",
                "events": ["job.succeeded", "job.failed"], "project_id": null,
                "only_named_jobs": false, "enabled": true, "description": "", "max_concurrency": 4,
                "timeout_ms": 10000, "disabled_reason": null, "consecutive_failures": 0,
                "failing_since": null, "previous_secret_expires": null,
                "created": "2023-11-14T22:13:20.005Z", "updated": null,
            })
        );
        let with = serde_json::to_value(Webhook::with_secret(&endpoint(), "whsec_abc".into())).unwrap();
        assert_eq!(with["secret"], "whsec_abc");
        assert_eq!(with.as_object().unwrap().len(), v.as_object().unwrap().len() + 1);
    }

    #[test]
    fn a_new_secret_is_printed_last_with_what_to_do_with_it() {
        let text = webhook_with_secret(&endpoint(), "whsec_abc");
        assert!(text.starts_with("consecutive_failures     0\n"), "{text}");
        assert!(text.contains("\nurl                      https://hooks.example.com/sakuga\n"), "{text}");
        assert!(text.ends_with("\n\nsecret: whsec_abc"), "{text}");
        let note = secret_note(&endpoint());
        assert!(note.starts_with("this secret is shown only once"), "{note}");
        assert!(!note.contains("previous"), "nothing to say of a previous secret: {note}");
        let rotated = |seconds| pb::WebhookEndpoint {
            previous_secret_expire_time: Some(prost_types::Timestamp { seconds, nanos: 0 }),
            ..endpoint()
        };
        let note = secret_note(&rotated(4_102_444_800));
        assert!(
            note.ends_with("; the previous secret keeps signing beside it until 2100-01-01T00:00:00.000Z"),
            "{note}"
        );
        let note = secret_note(&rotated(1_700_000_000));
        assert!(!note.contains("previous"), "an expired previous secret signs no more: {note}");
    }

    #[test]
    fn deliveries_show_their_state_by_name_and_no_status_as_a_dash() {
        let delivery = |state: pb::DeliveryState, status| pb::WebhookDelivery {
            id: "d".into(),
            message_id: "msg_1".into(),
            webhook_id: "w".into(),
            job_id: "j".into(),
            event: "job.failed".into(),
            state: state.into(),
            attempts: 3,
            last_status_code: status,
            last_error: if status == 0 { "connection refused".into() } else { String::new() },
            next_attempt_time: Some(prost_types::Timestamp { seconds: 1_700_000_000, nanos: 0 }),
            ..Default::default()
        };
        let v = serde_json::to_value(Delivery::from(&delivery(pb::DeliveryState::Pending, 0))).unwrap();
        assert_eq!(
            v,
            json!({
                "id": "d", "message_id": "msg_1", "webhook_id": "w", "job_id": "j",
                "event": "job.failed", "state": "pending", "attempts": 3, "last_status_code": null,
                "last_error": "connection refused", "created": null,
                "next_attempt": "2023-11-14T22:13:20.000Z", "last_attempt": null, "delivered": null,
            })
        );
        let rows = vec![
            v,
            serde_json::to_value(Delivery::from(&delivery(pb::DeliveryState::Delivered, 204))).unwrap(),
        ];
        let t = table(&rows, &["id", "event", "state", "attempts", "last_status_code", "last_error"]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "ID  EVENT       STATE      ATTEMPTS  LAST_STATUS_CODE  LAST_ERROR");
        assert_eq!(lines[1], "d   job.failed  pending    3         -                 connection refused");
        assert_eq!(lines[2], "d   job.failed  delivered  3         204               -");
        assert_eq!(delivery_state_name(pb::DeliveryState::Failed.into()), "failed");
        assert_eq!(delivery_state_name(42), "unknown");
    }

    #[test]
    fn a_test_shows_its_status_error_and_duration() {
        let t = WebhookTest::from(&pb::TestWebhookResponse {
            message_id: "msg_t".into(),
            status_code: 0,
            error: "timed out".into(),
            duration_ms: 10_001,
        });
        assert_eq!(
            details(&serde_json::to_value(t).unwrap()),
            "duration_ms  10001\nerror        timed out\nmessage_id   msg_t\nstatus_code  -"
        );
    }

    #[test]
    fn tables_align_and_shorten() {
        let rows = vec![
            json!({"id": "a", "status": "queued", "progress": {"step": 1, "total_steps": 4}, "prompt": "x".repeat(60)}),
            json!({"id": "bbbb", "status": "succeeded", "progress": {"step": 4, "total_steps": 4}, "prompt": null}),
        ];
        let t = table(&rows, &["id", "status", "progress", "prompt"]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], format!("ID    STATUS     PROGRESS  PROMPT"));
        assert!(lines[1].starts_with("a     queued     1/4       xxx"));
        assert!(lines[1].ends_with('…'));
        assert_eq!(lines[2], "bbbb  succeeded  4/4       -");
    }
}
