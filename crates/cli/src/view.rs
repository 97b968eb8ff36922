//! What commands print: a stable JSON shape per object (`--json`, documented in the
//! README) and plain aligned tables for people.

use chrono::{DateTime, Utc};
use sakuga_proto::v1 as pb;
use serde_json::{Value, json};

/// RFC 3339 UTC, or null.
fn time(t: Option<&prost_types::Timestamp>) -> Value {
    t.and_then(|t| DateTime::<Utc>::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(0)))
        .map_or(Value::Null, |t| Value::from(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)))
}

fn or_null(s: &str) -> Value {
    if s.is_empty() { Value::Null } else { Value::from(s) }
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
pub fn job(j: &pb::Job) -> Value {
    let s = j.spec.clone().unwrap_or_default();
    let p = j.progress.clone().unwrap_or_default();
    json!({
        "id": j.id,
        "status": status_name(j.status),
        "kind": kind_name(s.kind),
        "prompt": s.prompt,
        "composed_prompt": j.composed_prompt,
        "negative_prompt": s.negative_prompt,
        "width": s.width,
        "height": s.height,
        "steps": s.steps,
        "batch_size": s.batch_size.max(1),
        "frames": s.frames,
        "fps": s.fps,
        "seed": s.seed,
        "backend": s.backend,
        "model": s.model,
        "project_id": or_null(&j.project_id),
        "character_ids": j.character_ids,
        "priority": j.priority,
        "attempts": j.attempts,
        "max_attempts": j.max_attempts,
        "progress": {"step": p.step, "total_steps": p.total_steps, "stage": p.stage},
        "error": or_null(&j.error),
        "file_ids": j.file_ids,
        "worker_id": or_null(&j.worker_id),
        "created": time(j.create_time.as_ref()),
        "started": time(j.start_time.as_ref()),
        "finished": time(j.finish_time.as_ref()),
    })
}

/// A file.
pub fn file(f: &pb::File) -> Value {
    json!({
        "id": f.id,
        "job_id": f.job_id,
        "project_id": or_null(&f.project_id),
        "index": f.index,
        "kind": kind_name(f.kind),
        "mime_type": f.mime_type,
        "width": f.width,
        "height": f.height,
        "frames": f.frames,
        "size_bytes": f.size_bytes,
        "sha256": f.sha256,
        "name": f.name,
        "checks": f.checks,
        "created": time(f.create_time.as_ref()),
    })
}

/// A project.
pub fn project(p: &pb::Project) -> Value {
    json!({
        "id": p.id,
        "name": p.name,
        "slug": p.slug,
        "description": p.description,
        "archived": p.archived,
        "retention_days": p.retention_days,
        "created": time(p.create_time.as_ref()),
    })
}

/// A character.
pub fn character(c: &pb::Character) -> Value {
    json!({
        "id": c.id,
        "project_id": c.project_id,
        "name": c.name,
        "description": c.description,
        "prompt_fragment": c.prompt_fragment,
        "negative_fragment": c.negative_fragment,
    })
}

/// A user.
pub fn user(u: &pb::User) -> Value {
    let role = if u.role == i32::from(pb::Role::Admin) { "admin" } else { "user" };
    json!({"id": u.id, "username": u.username, "role": role, "disabled": u.disabled, "created": time(u.create_time.as_ref())})
}

/// An API key (never its secret).
pub fn api_key(k: &pb::ApiKey) -> Value {
    json!({
        "id": k.id,
        "user_id": k.user_id,
        "name": k.name,
        "prefix": k.prefix,
        "revoked": k.revoked,
        "created": time(k.create_time.as_ref()),
        "expires": time(k.expire_time.as_ref()),
        "last_used": time(k.last_used_time.as_ref()),
    })
}

/// An audit event.
pub fn audit(e: &pb::AuditEvent) -> Value {
    json!({
        "id": e.id,
        "time": time(e.time.as_ref()),
        "actor": e.actor,
        "action": e.action,
        "target": e.target,
        "result": e.result,
        "request_id": e.request_id,
    })
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
    use super::*;

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
