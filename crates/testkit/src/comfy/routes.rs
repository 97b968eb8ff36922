//! The HTTP and WebSocket routes of the replay server, answering as the recordings did.

use std::{collections::HashMap, sync::Arc};

use axum::{
    Router,
    body::Bytes,
    extract::{
        Path as UrlPath, Query, State,
        ws::{Message, WebSocket, WebSocketUpgrade},
    },
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::Value;
use tokio::sync::mpsc;

use super::{
    play::enqueue,
    recording::{Recording, Version, load},
    state::{Queued, Shared},
};

/// Every route ComfyUI's client uses, over `shared`; /api/jobs only where the recorded
/// version has it (0.3.64 answers 404 there).
pub(super) fn router(shared: Arc<Shared>) -> Router {
    let router = if shared.version == Version::V0_26 {
        Router::new().route("/api/jobs/{id}/cancel", post(cancel_job))
    } else {
        Router::new()
    };
    router
        .route("/ws", get(ws))
        .route("/prompt", post(prompt))
        .route("/history/{id}", get(history))
        .route("/queue", get(queue).post(queue_op))
        .route("/interrupt", post(interrupt))
        .route("/view", get(view))
        .route("/object_info/{class}", get(object_info))
        .route("/system_stats", get(system_stats))
        .route("/free", post(empty_ok))
        .fallback(not_found)
        .with_state(shared)
}

/// Any other path: logged, and answered as aiohttp does.
async fn not_found(State(shared): St, method: axum::http::Method, uri: axum::http::Uri) -> Response {
    log(&shared, method.as_str(), uri.to_string(), b"");
    (StatusCode::NOT_FOUND, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], "404: Not Found")
        .into_response()
}

type St = State<Arc<Shared>>;

fn json_response(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json; charset=utf-8")], body).into_response()
}

fn unavailable(shared: &Shared) -> Option<Response> {
    let inner = shared.inner.lock().unwrap();
    inner
        .down_until
        .filter(|t| tokio::time::Instant::now() < *t)
        .map(|_| (StatusCode::SERVICE_UNAVAILABLE, "restarting").into_response())
}

fn log(shared: &Shared, method: &str, path: String, body: &[u8]) {
    shared.inner.lock().unwrap().requests.push((
        method.to_owned(),
        path,
        String::from_utf8_lossy(body).into_owned(),
    ));
}

async fn ws(State(shared): St, Query(q): Query<HashMap<String, String>>, up: WebSocketUpgrade) -> Response {
    if let Some(r) = unavailable(&shared) {
        return r;
    }
    let client_id = q.get("clientId").cloned().unwrap_or_default();
    log(&shared, "GET", format!("/ws?clientId={client_id}"), b"");
    up.on_upgrade(move |socket| serve_socket(shared, client_id, socket))
}

async fn serve_socket(shared: Arc<Shared>, client_id: String, socket: WebSocket) {
    let (mut sink, mut stream) = socket.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
    // The greeting as recorded (07), with this client's id; after a reconnect while its
    // prompt runs, the queue count and the bare `executing` of recording 17.
    let running = {
        let mut inner = shared.inner.lock().unwrap();
        inner.sockets.insert(client_id.clone(), tx.clone());
        inner.running.clone().filter(|(_, c, _, _)| *c == client_id)
    };
    let greeting = |remaining: u32| {
        format!(
            r#"{{"type": "status", "data": {{"status": {{"exec_info": {{"queue_remaining": {remaining}}}}}, "sid": "{client_id}"}}}}"#
        )
    };
    match running {
        Some((_, _, _, node)) => {
            let _ = tx.send(Message::text(greeting(1)));
            if let Some(node) = node {
                let _ = tx
                    .send(Message::text(format!(r#"{{"type": "executing", "data": {{"node": "{node}"}}}}"#)));
            }
        }
        None => {
            let _ = tx.send(Message::text(greeting(0)));
        }
    }
    let writer = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            let close = matches!(m, Message::Close(_));
            if sink.send(m).await.is_err() || close {
                break;
            }
        }
    });
    while let Some(Ok(msg)) = stream.next().await {
        if let Message::Text(t) = msg
            && t.as_str().contains("\"feature_flags\"")
        {
            shared.inner.lock().unwrap().flags.insert(client_id.clone());
            let _ = tx.send(Message::text(
                r#"{"type": "feature_flags", "data": {"supports_preview_metadata": true, "max_upload_size": 104857600}}"#,
            ));
        }
    }
    writer.abort();
    let mut inner = shared.inner.lock().unwrap();
    if inner.sockets.get(&client_id).is_some_and(|s| s.same_channel(&tx)) {
        inner.sockets.remove(&client_id);
    }
}

fn classes(workflow: &Value) -> Vec<(String, Value)> {
    workflow
        .as_object()
        .map(|m| {
            m.values()
                .map(|n| (n["class_type"].as_str().unwrap_or_default().to_owned(), n["inputs"].clone()))
                .collect()
        })
        .unwrap_or_default()
}

/// The recorded 400 answer for a workflow equal to one of the recorded invalid prompts.
fn invalid_answer(version: Version, workflow: &Value) -> Option<String> {
    let recorded = load(version, "12_invalid_prompts.json");
    recorded.as_array()?.iter().find_map(|e| {
        let body = &e["request"]["body"];
        (body.get("prompt") == Some(workflow) && e["response"]["status"] == 400)
            .then(|| e["response"]["body_raw"].as_str().unwrap().to_owned())
    })
}

async fn prompt(State(shared): St, body: Bytes) -> Response {
    log(&shared, "POST", "/prompt".to_owned(), &body);
    if let Some(r) = unavailable(&shared) {
        return r;
    }
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        // As recorded: malformed JSON is a 500 with aiohttp's text page.
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "500 Internal Server Error\n\nServer got itself in trouble",
        )
            .into_response();
    };
    let Some(workflow) = req.get("prompt").cloned() else {
        return json_response(StatusCode::BAD_REQUEST, r#"{"error": {"type": "no_prompt", "message": "No prompt provided", "details": "No prompt provided", "extra_info": {}}, "node_errors": {}}"#.to_owned());
    };
    if shared.version == Version::V0_26
        && let Some(answer) = invalid_prompt_id(&req["prompt_id"])
    {
        shared.inner.lock().unwrap().number += 1;
        return json_response(StatusCode::BAD_REQUEST, answer);
    }
    if let Some(answer) = invalid_answer(shared.version, &workflow) {
        return json_response(StatusCode::BAD_REQUEST, answer);
    }
    let client_id = req["client_id"].as_str().unwrap_or_default().to_owned();
    let prompt_id = req["prompt_id"].as_str().map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned);
    let mut inner = shared.inner.lock().unwrap();
    let (recording, fault, number) = {
        let key = workflow.to_string();
        let cached = !inner.seen.insert(key);
        let by_content = {
            let nodes = classes(&workflow);
            let has = |c: &str| nodes.iter().find(|(n, _)| n == c).map(|(_, i)| i.clone());
            if has("FailingNode").is_some() {
                Recording::FailingNode
            } else if let Some(inputs) = has("FakeSampler") {
                if inputs["steps"].as_u64().unwrap_or(0) >= 100 {
                    Recording::Interrupt
                } else if inner.flags.contains(&client_id) {
                    Recording::FakeSamplerWithFlags
                } else {
                    Recording::FakeSampler
                }
            } else if cached {
                Recording::EmptyImageCached
            } else {
                Recording::EmptyImage
            }
        };
        let (recording, fault) = inner.scripted.pop_front().unwrap_or((by_content, None));
        inner.number += 1;
        (recording, fault, inner.number)
    };
    let script = recording.load(shared.version);
    let answer = script.prompt_response.replace(&script.prompt_id, &prompt_id);
    let answer = answer.replacen(
        &format!("\"number\": {}", number_of(&script.prompt_response)),
        &format!("\"number\": {number}"),
        1,
    );
    enqueue(&shared, &mut inner, Queued { prompt_id, client_id, number, script, fault });
    json_response(StatusCode::OK, answer)
}

/// ComfyUI 0.26's answer to a `prompt_id` that is present, not null and not a canonical
/// lowercase hyphenated UUID: the recorded 400 (19).
fn invalid_prompt_id(id: &Value) -> Option<String> {
    let canonical = |s: &str| uuid::Uuid::parse_str(s).is_ok_and(|u| u.hyphenated().to_string() == s);
    match id {
        Value::Null => None,
        Value::String(s) if canonical(s) => None,
        _ => {
            let recorded = load(Version::V0_26, "19_prompt_id_rules.json");
            recorded.as_array()?.iter().find_map(|e| {
                (e["case"] == "not_a_uuid").then(|| e["response"]["body_raw"].as_str().unwrap().to_owned())
            })
        }
    }
}

fn number_of(body: &str) -> u64 {
    serde_json::from_str::<Value>(body).ok().and_then(|v| v["number"].as_u64()).unwrap_or(0)
}

async fn history(State(shared): St, UrlPath(id): UrlPath<String>) -> Response {
    log(&shared, "GET", format!("/history/{id}"), b"");
    if let Some(r) = unavailable(&shared) {
        return r;
    }
    let body = shared.inner.lock().unwrap().history.get(&id).cloned().unwrap_or_else(|| "{}".to_owned());
    json_response(StatusCode::OK, body)
}

async fn queue(State(shared): St) -> Response {
    log(&shared, "GET", "/queue".to_owned(), b"");
    if let Some(r) = unavailable(&shared) {
        return r;
    }
    let inner = shared.inner.lock().unwrap();
    let item = |number: u64, id: &str, client: &str| {
        format!(r#"[{number}, "{id}", {{}}, {{"client_id": "{client}"}}, []]"#)
    };
    let running: Vec<String> =
        inner.running.iter().map(|(id, client, number, _)| item(*number, id, client)).collect();
    let pending: Vec<String> =
        inner.pending.iter().map(|p| item(p.number, &p.prompt_id, &p.client_id)).collect();
    json_response(
        StatusCode::OK,
        format!(
            r#"{{"queue_running": [{}], "queue_pending": [{}]}}"#,
            running.join(", "),
            pending.join(", ")
        ),
    )
}

/// POST /queue: `{"delete": [ids]}` removes waiting prompts, `{"clear": true}` all of them.
async fn queue_op(State(shared): St, body: Bytes) -> Response {
    log(&shared, "POST", "/queue".to_owned(), &body);
    if let Some(r) = unavailable(&shared) {
        return r;
    }
    let req: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let mut inner = shared.inner.lock().unwrap();
    if req["clear"] == true {
        inner.pending.clear();
    }
    for id in req["delete"].as_array().into_iter().flatten() {
        inner.pending.retain(|p| Some(p.prompt_id.as_str()) != id.as_str());
    }
    StatusCode::OK.into_response()
}

/// POST /api/jobs/{id}/cancel (0.26): a waiting prompt leaves the queue, the running one is
/// interrupted; `{"cancelled": false}` for anything else (21).
async fn cancel_job(State(shared): St, UrlPath(id): UrlPath<String>) -> Response {
    log(&shared, "POST", format!("/api/jobs/{id}/cancel"), b"");
    if let Some(r) = unavailable(&shared) {
        return r;
    }
    let cancelled = {
        let mut inner = shared.inner.lock().unwrap();
        let waiting = inner.pending.len();
        inner.pending.retain(|p| p.prompt_id != id);
        if inner.pending.len() < waiting {
            true
        } else if inner.running.as_ref().is_some_and(|(running, ..)| *running == id) {
            inner.interrupted = true;
            true
        } else {
            false
        }
    };
    shared.interrupt.notify_waiters();
    json_response(StatusCode::OK, format!(r#"{{"cancelled": {cancelled}}}"#))
}

async fn interrupt(State(shared): St, body: Bytes) -> Response {
    log(&shared, "POST", "/interrupt".to_owned(), &body);
    if let Some(r) = unavailable(&shared) {
        return r;
    }
    let target =
        serde_json::from_slice::<Value>(&body).ok().and_then(|v| v["prompt_id"].as_str().map(str::to_owned));
    {
        let mut inner = shared.inner.lock().unwrap();
        let running = inner.running.as_ref().map(|(id, ..)| id.clone());
        // Global, or naming the running prompt; naming another prompt does nothing.
        if target.is_none() || target == running {
            inner.interrupted = true;
        }
    }
    shared.interrupt.notify_waiters();
    empty_ok_for(&shared)
}

fn empty_ok_for(shared: &Shared) -> Response {
    unavailable(shared).unwrap_or_else(|| StatusCode::OK.into_response())
}

async fn empty_ok(State(shared): St) -> Response {
    empty_ok_for(&shared)
}

async fn view(State(shared): St, Query(q): Query<HashMap<String, String>>) -> Response {
    let name = q.get("filename").cloned().unwrap_or_default();
    log(&shared, "GET", format!("/view?filename={name}"), b"");
    if let Some(r) = unavailable(&shared) {
        return r;
    }
    let file = if name.starts_with("fixture_fake") {
        "07_fake_sampler_output.png"
    } else if name.starts_with("fixture_empty") {
        "08_empty_image_output.png"
    } else {
        return (StatusCode::NOT_FOUND, "404: Not Found").into_response();
    };
    let bytes = std::fs::read(shared.version.fixtures_dir().join(file)).unwrap();
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "image/png"), (header::CONTENT_DISPOSITION, &format!("filename=\"{name}\""))],
        bytes,
    )
        .into_response()
}

async fn object_info(State(shared): St, UrlPath(class): UrlPath<String>) -> Response {
    log(&shared, "GET", format!("/object_info/{class}"), b"");
    let file = match class.as_str() {
        "FakeSampler" => "03_object_info_FakeSampler.json",
        "SaveImage" => "04_object_info_SaveImage.json",
        "EmptyImage" => "05_object_info_EmptyImage.json",
        _ => return json_response(StatusCode::OK, "{}".to_owned()),
    };
    json_response(
        StatusCode::OK,
        load(shared.version, file)["response"]["body_raw"].as_str().unwrap().to_owned(),
    )
}

async fn system_stats(State(shared): St) -> Response {
    log(&shared, "GET", "/system_stats".to_owned(), b"");
    json_response(
        StatusCode::OK,
        load(shared.version, "01_system_stats.json")["response"]["body_raw"].as_str().unwrap().to_owned(),
    )
}
