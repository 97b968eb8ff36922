//! A ComfyUI stand-in that replays traffic recorded from a real ComfyUI server
//! (`fixtures/comfyui/`, see its README): the same frames in the same order, text frames
//! byte for byte and binary preview frames with their headers, the same HTTP status codes,
//! content types and bodies. Only the ids differ: the recorded prompt id and client id are
//! replaced by the ones the client uses (both UUIDs, so lengths stay the same).
//!
//! A submitted workflow picks its recording the way the real server would have produced
//! it: `FailingNode` -> the failing run, `FakeSampler` with 200 steps -> the interrupt run
//! (it holds where the recorder interrupted until an `/interrupt` arrives), `FakeSampler`
//! -> the success run (the feature-flags recording when the client asked for preview
//! metadata), `EmptyImage` -> the built-in-nodes run, and the cached run when the same
//! workflow comes again. A workflow equal to one of the recorded invalid prompts gets the
//! recorded 400 answer. Faults (a dropped socket, a restart) can be scripted per prompt.
//!
//! One liberty: only two output PNGs were recorded, so every `fixture_fake_*` file is served
//! with the bytes of the first FakeSampler output, every `fixture_empty_*` with the EmptyImage one.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

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
use base64::Engine as _;
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::Value;
use tokio::sync::{Notify, mpsc};

/// The folder of recorded ComfyUI traffic.
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/comfyui")
}

fn load(name: &str) -> Value {
    let text = std::fs::read_to_string(fixtures_dir().join(name)).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn load_lines(name: &str) -> Vec<Value> {
    std::fs::read_to_string(fixtures_dir().join(name))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A recorded run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Recording {
    /// 07: FakeSampler 512x512, 8 steps, legacy JPEG previews (type 1 frames).
    FakeSampler,
    /// 14: FakeSampler 128x128, 4 steps, previews with metadata (type 4 frames).
    FakeSamplerWithFlags,
    /// 08: EmptyImage -> SaveImage.
    EmptyImage,
    /// 09: the same again, served from ComfyUI's cache.
    EmptyImageCached,
    /// 10: FakeSampler 200 steps, interrupted.
    Interrupt,
    /// 11: EmptyImage -> FailingNode -> SaveImage.
    FailingNode,
}

impl Recording {
    fn files(self) -> (&'static str, &'static str) {
        match self {
            Self::FakeSampler => ("07_fake_sampler_ws.jsonl", "07_fake_sampler_history.json"),
            Self::FakeSamplerWithFlags => {
                ("14_fake_sampler_feature_flags_ws.jsonl", "14_fake_sampler_feature_flags_history.json")
            }
            Self::EmptyImage => ("08_empty_image_ws.jsonl", "08_empty_image_history.json"),
            Self::EmptyImageCached => {
                ("09_empty_image_cached_ws.jsonl", "09_empty_image_cached_history.json")
            }
            Self::Interrupt => ("10_interrupt_ws.jsonl", "10_interrupt_history.json"),
            Self::FailingNode => ("11_failing_node_ws.jsonl", "11_failing_node_history.json"),
        }
    }

    /// The recorded frames (after the connection greeting) with their times, the recorded
    /// answer to POST /prompt, the history body, and the ids to replace.
    fn load(self) -> Script {
        let (ws, history) = self.files();
        let lines = load_lines(ws);
        let client_id = lines
            .iter()
            .find_map(|l| l["url"].as_str().and_then(|u| u.split("clientId=").nth(1)))
            .unwrap()
            .to_owned();
        let mut frames = Vec::new();
        let mut prompt_response = None;
        let mut greeting_done = false;
        for l in &lines {
            let t = l["t_ms"].as_f64().unwrap_or(0.0);
            match l["kind"].as_str().unwrap() {
                "ws_text" => {
                    let raw = l["raw"].as_str().unwrap().to_owned();
                    // The status carrying `sid` and the feature flags reply belong to the
                    // connection, not to the prompt.
                    let msg = &l["msg"];
                    if !greeting_done && (msg["data"].get("sid").is_some() || msg["type"] == "feature_flags")
                    {
                        continue;
                    }
                    greeting_done = true;
                    frames.push(Frame::Text(t, raw));
                }
                "ws_binary" => {
                    let b64 = l["b64"].as_str().expect("recorded binary frame");
                    frames.push(Frame::Binary(
                        t,
                        base64::engine::general_purpose::STANDARD.decode(b64).unwrap(),
                    ));
                }
                "http" => {
                    let req = &l["request"];
                    match (req["method"].as_str().unwrap(), req["path"].as_str().unwrap()) {
                        ("POST", "/prompt") => prompt_response = Some(l["response"].clone()),
                        ("POST", "/interrupt") => frames.push(Frame::AwaitInterrupt),
                        _ => {}
                    }
                }
                _ => {}
            }
        }
        let prompt_response = prompt_response.unwrap();
        let body: Value = serde_json::from_str(prompt_response["body_raw"].as_str().unwrap()).unwrap();
        let prompt_id = body["prompt_id"].as_str().unwrap().to_owned();
        let history = load(history)["response"]["body_raw"].as_str().unwrap().to_owned();
        Script {
            frames,
            prompt_response: prompt_response["body_raw"].as_str().unwrap().to_owned(),
            history,
            prompt_id,
            client_id,
        }
    }
}

#[derive(Debug, Clone)]
enum Frame {
    Text(f64, String),
    Binary(f64, Vec<u8>),
    /// The recorder interrupted here; wait for the client's /interrupt.
    AwaitInterrupt,
}

#[derive(Debug, Clone)]
struct Script {
    frames: Vec<Frame>,
    prompt_response: String,
    history: String,
    prompt_id: String,
    client_id: String,
}

/// Something going wrong during a scripted prompt, at the n-th frame of its run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The server closes the client's socket; the run goes on, and a socket reopened with
    /// the same client id gets the rest (as recorded in 17).
    DropSocket(usize),
    /// The server restarts: sockets close, everything is forgotten, and for `down_ms` every
    /// request is answered 503.
    Restart {
        /// Frame index.
        at: usize,
        /// Downtime.
        down_ms: u64,
    },
}

/// How fast frames are replayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pacing {
    /// With the recorded gaps between frames.
    Recorded,
    /// As fast as possible.
    Instant,
}

#[derive(Debug, Default)]
struct Inner {
    /// Socket writers per client id.
    sockets: HashMap<String, mpsc::UnboundedSender<Message>>,
    /// Clients that asked for preview metadata.
    flags: HashSet<String>,
    /// Scripted recordings for the next prompts.
    scripted: VecDeque<(Recording, Option<Fault>)>,
    /// Running prompt: id, client, queue number, node now executing.
    running: Option<(String, String, u64, Option<String>)>,
    /// Stored history bodies by prompt id.
    history: HashMap<String, String>,
    /// Workflows seen (for the cache).
    seen: HashSet<String>,
    /// Every request: method, path and query, body.
    requests: Vec<(String, String, String)>,
    interrupted: bool,
    down_until: Option<tokio::time::Instant>,
    number: u64,
}

#[derive(Debug)]
struct Shared {
    inner: Mutex<Inner>,
    interrupt: Notify,
    pacing: Pacing,
}

/// The running replay server.
#[derive(Debug)]
pub struct ReplayComfy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ReplayComfy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ReplayComfy {
    /// Starts on a random loopback port.
    pub async fn start(pacing: Pacing) -> Self {
        let shared = Arc::new(Shared { inner: Mutex::default(), interrupt: Notify::new(), pacing });
        let app = Router::new()
            .route("/ws", get(ws))
            .route("/prompt", post(prompt))
            .route("/history/{id}", get(history))
            .route("/queue", get(queue).post(queue_op))
            .route("/interrupt", post(interrupt))
            .route("/view", get(view))
            .route("/object_info/{class}", get(object_info))
            .route("/system_stats", get(system_stats))
            .route("/free", post(empty_ok))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, shared, task }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The next prompt plays `recording`, with `fault` if given.
    pub fn script(&self, recording: Recording, fault: Option<Fault>) {
        self.shared.inner.lock().unwrap().scripted.push_back((recording, fault));
    }

    /// Requests received so far: (method, path with query, body).
    pub fn requests(&self) -> Vec<(String, String, String)> {
        self.shared.inner.lock().unwrap().requests.clone()
    }

    /// How many requests had this method and path prefix.
    pub fn count(&self, method: &str, path_prefix: &str) -> usize {
        self.requests().iter().filter(|(m, p, _)| m == method && p.starts_with(path_prefix)).count()
    }
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
fn invalid_answer(workflow: &Value) -> Option<String> {
    let recorded = load("12_invalid_prompts.json");
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
    if let Some(answer) = invalid_answer(&workflow) {
        return json_response(StatusCode::BAD_REQUEST, answer);
    }
    let client_id = req["client_id"].as_str().unwrap_or_default().to_owned();
    let prompt_id = req["prompt_id"].as_str().map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned);
    let (recording, fault, number) = {
        let mut inner = shared.inner.lock().unwrap();
        let key = workflow.to_string();
        let cached = !inner.seen.insert(key);
        let by_content = {
            let nodes = classes(&workflow);
            let has = |c: &str| nodes.iter().find(|(n, _)| n == c).map(|(_, i)| i.clone());
            if has("FailingNode").is_some() {
                Recording::FailingNode
            } else if let Some(inputs) = has("FakeSampler") {
                if inputs["steps"].as_u64().unwrap_or(0) >= 200 {
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
        inner.running = Some((prompt_id.clone(), client_id.clone(), inner.number, None));
        inner.interrupted = false;
        (recording, fault, inner.number)
    };
    let script = recording.load();
    let answer = script.prompt_response.replace(&script.prompt_id, &prompt_id);
    let answer = answer.replacen(
        &format!("\"number\": {}", number_of(&script.prompt_response)),
        &format!("\"number\": {number}"),
        1,
    );
    tokio::spawn(play(shared, script, prompt_id, client_id, fault));
    json_response(StatusCode::OK, answer)
}

fn number_of(body: &str) -> u64 {
    serde_json::from_str::<Value>(body).ok().and_then(|v| v["number"].as_u64()).unwrap_or(0)
}

/// Plays a recorded run to the client's socket (whichever is open when a frame is due).
async fn play(
    shared: Arc<Shared>,
    script: Script,
    prompt_id: String,
    client_id: String,
    fault: Option<Fault>,
) {
    let swap = |s: &str| s.replace(&script.prompt_id, &prompt_id).replace(&script.client_id, &client_id);
    let mut last_t: Option<f64> = None;
    for (i, frame) in script.frames.iter().enumerate() {
        match fault {
            Some(Fault::DropSocket(at)) if at == i => {
                let mut inner = shared.inner.lock().unwrap();
                if let Some(s) = inner.sockets.remove(&client_id) {
                    let _ = s.send(Message::Close(None));
                }
            }
            Some(Fault::Restart { at, down_ms }) if at == i => {
                let mut inner = shared.inner.lock().unwrap();
                for (_, s) in inner.sockets.drain() {
                    let _ = s.send(Message::Close(None));
                }
                inner.running = None;
                inner.history.clear();
                inner.down_until = Some(tokio::time::Instant::now() + Duration::from_millis(down_ms));
                return;
            }
            _ => {}
        }
        let (t, msg) = match frame {
            Frame::AwaitInterrupt => {
                loop {
                    let waiting = shared.interrupt.notified();
                    if shared.inner.lock().unwrap().interrupted {
                        break;
                    }
                    waiting.await;
                }
                last_t = None;
                continue;
            }
            Frame::Text(t, raw) => (*t, Message::text(swap(raw))),
            Frame::Binary(t, bytes) => {
                (*t, Message::binary(swap_metadata(bytes, &script.prompt_id, &prompt_id)))
            }
        };
        if shared.pacing == Pacing::Recorded
            && let Some(prev) = last_t
        {
            let gap = Duration::try_from_secs_f64((t - prev) / 1000.0).unwrap_or_default();
            tokio::time::sleep(gap.min(Duration::from_millis(500))).await;
        }
        last_t = Some(t);
        let mut inner = shared.inner.lock().unwrap();
        if let Message::Text(text) = &msg {
            let v: Value = serde_json::from_str(text.as_str()).unwrap_or(Value::Null);
            if v["type"] == "executing" {
                if v["data"]["node"].is_null() {
                    // The server stores the history right before this frame.
                    inner.history.insert(prompt_id.clone(), swap(&script.history));
                    inner.running = None;
                } else if let Some((_, _, _, node)) = inner.running.as_mut() {
                    *node = v["data"]["node"].as_str().map(str::to_owned);
                }
            }
        }
        if let Some(s) = inner.sockets.get(&client_id) {
            let _ = s.send(msg);
        }
    }
}

/// A type-4 preview frame names its prompt in the JSON metadata after the 8-byte header;
/// the ids have the same length, so the header's metadata length stays right.
fn swap_metadata(frame: &[u8], recorded: &str, ours: &str) -> Vec<u8> {
    let mut frame = frame.to_vec();
    if frame.get(..4) != Some(&[0, 0, 0, 4]) || recorded.len() != ours.len() {
        return frame;
    }
    let len = u32::from_be_bytes(frame[4..8].try_into().unwrap()) as usize;
    let meta = &mut frame[8..8 + len];
    if let Some(at) = meta.windows(recorded.len()).position(|w| w == recorded.as_bytes()) {
        meta[at..at + ours.len()].copy_from_slice(ours.as_bytes());
    }
    frame
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
    let running = shared.inner.lock().unwrap().running.clone();
    let running = running.map_or_else(
        || "[]".to_owned(),
        |(id, client, number, _)| format!(r#"[[{number}, "{id}", {{}}, {{"client_id": "{client}"}}, []]]"#),
    );
    json_response(StatusCode::OK, format!(r#"{{"queue_running": {running}, "queue_pending": []}}"#))
}

async fn queue_op(State(shared): St, body: Bytes) -> Response {
    log(&shared, "POST", "/queue".to_owned(), &body);
    empty_ok_for(&shared)
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
    let bytes = std::fs::read(fixtures_dir().join(file)).unwrap();
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
    json_response(StatusCode::OK, load(file)["response"]["body_raw"].as_str().unwrap().to_owned())
}

async fn system_stats(State(shared): St) -> Response {
    log(&shared, "GET", "/system_stats".to_owned(), b"");
    json_response(
        StatusCode::OK,
        load("01_system_stats.json")["response"]["body_raw"].as_str().unwrap().to_owned(),
    )
}
