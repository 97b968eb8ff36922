//! ComfyUI's wire protocol, as recorded from a real server: WebSocket text frames
//! (`{"type", "data"}`), binary preview frames, and the JSON answers of the HTTP endpoints
//! this backend uses (the calls themselves are in `http`).

use std::fmt::Write as _;

use serde_json::Value;

/// Longest piece of ComfyUI-supplied text (node id, class, exception type, validation
/// message) put into a message users see.
pub const MAX_VISIBLE_CHARS: usize = 120;

/// `text` cut to `max` characters, control characters replaced by spaces: ComfyUI's words
/// in a job's visible error stay short and on one line.
pub fn visible(text: &str, max: usize) -> String {
    let mut out: String =
        text.trim().chars().take(max).map(|c| if c.is_control() { ' ' } else { c }).collect();
    if text.trim().chars().count() > max {
        out.push('…');
    }
    out
}

/// One WebSocket message, reduced to what the backend acts on.
#[derive(Debug, Clone, PartialEq)]
pub enum WsEvent {
    /// `status`: the server's queue length.
    Status,
    /// `execution_start`.
    Started { prompt_id: String },
    /// `execution_cached`: nodes served from the cache (done without running).
    Cached { prompt_id: String, nodes: Vec<String> },
    /// `executing`: node now running; `node: None` means the prompt is finished and its
    /// history stored. After a socket reconnect it comes without a prompt id.
    Executing { prompt_id: Option<String>, node: Option<String> },
    /// `progress`: `value` of `max` in `node`.
    Progress { prompt_id: Option<String>, node: Option<String>, value: u64, max: u64 },
    /// `executed`: an output node finished.
    Executed { prompt_id: String, node: String },
    /// `execution_success`.
    Success { prompt_id: String },
    /// `execution_error`: a node raised.
    Error { prompt_id: String, failure: NodeFailure },
    /// `execution_interrupted`.
    Interrupted { prompt_id: String, node_id: String, node_type: String },
    /// A preview image (binary frame type 1, or type 4 with metadata naming the prompt).
    Preview { prompt_id: Option<String>, mime: &'static str, image: Vec<u8> },
    /// Anything else (`progress_state`, `feature_flags`, `executed` of non-output nodes...).
    Other,
}

/// A node's run-time failure, from `execution_error` or the history's status messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFailure {
    /// Node id.
    pub node_id: String,
    /// Node class.
    pub node_type: String,
    /// Python exception type.
    pub exception_type: String,
    /// Exception message.
    pub exception_message: String,
    /// Python traceback lines (logged, never shown to users).
    pub traceback: Vec<String>,
}

impl NodeFailure {
    fn from_data(d: &Value) -> Self {
        Self {
            node_id: text(d, "node_id"),
            node_type: text(d, "node_type"),
            exception_type: text(d, "exception_type"),
            exception_message: text(d, "exception_message").trim().to_owned(),
            traceback: d
                .get("traceback")
                .and_then(Value::as_array)
                .map(|t| t.iter().filter_map(Value::as_str).map(str::to_owned).collect())
                .unwrap_or_default(),
        }
    }

    /// The message users see: node, class and the exception type. The exception message
    /// and the traceback may quote server paths, URLs or prompt internals: they go to the
    /// generator's log, never into the job.
    pub fn describe(&self) -> String {
        let mut s = if self.node_id.is_empty() && self.node_type.is_empty() {
            "ComfyUI prompt failed".to_owned()
        } else {
            format!(
                "ComfyUI node {} ({}) failed",
                visible(&self.node_id, MAX_VISIBLE_CHARS),
                visible(&self.node_type, MAX_VISIBLE_CHARS)
            )
        };
        if !self.exception_type.trim().is_empty() {
            let _ = write!(s, ": {}", visible(&self.exception_type, MAX_VISIBLE_CHARS));
        }
        s
    }

    /// Out of memory is worth another attempt (perhaps elsewhere); other node errors are not.
    /// Decided by the exception's type alone, never by its message text.
    pub fn retryable(&self) -> bool {
        OUT_OF_MEMORY_TYPES.contains(&self.exception_type.trim())
    }
}

/// The exception types ComfyUI reports (its `full_type_name` of the exception) when a GPU
/// runs out of memory: `torch.OutOfMemoryError` in current torch, `torch.cuda.OutOfMemoryError`
/// (the same class) in older releases.
const OUT_OF_MEMORY_TYPES: &[&str] = &["torch.OutOfMemoryError", "torch.cuda.OutOfMemoryError"];

fn text(d: &Value, key: &str) -> String {
    d.get(key).and_then(Value::as_str).unwrap_or_default().to_owned()
}

fn opt_text(d: &Value, key: &str) -> Option<String> {
    d.get(key).and_then(Value::as_str).map(str::to_owned)
}

/// Parses a text frame. Unknown types are `Other`; malformed JSON is `None`.
pub fn parse_text(raw: &str) -> Option<WsEvent> {
    let v: Value = serde_json::from_str(raw).ok()?;
    let d = v.get("data").unwrap_or(&Value::Null);
    let pid = || text(d, "prompt_id");
    Some(match v.get("type")?.as_str()? {
        "status" => WsEvent::Status,
        "execution_start" => WsEvent::Started { prompt_id: pid() },
        "execution_cached" => WsEvent::Cached {
            prompt_id: pid(),
            nodes: d
                .get("nodes")
                .and_then(Value::as_array)
                .map(|n| n.iter().filter_map(Value::as_str).map(str::to_owned).collect())
                .unwrap_or_default(),
        },
        "executing" => WsEvent::Executing { prompt_id: opt_text(d, "prompt_id"), node: opt_text(d, "node") },
        "progress" => WsEvent::Progress {
            prompt_id: opt_text(d, "prompt_id"),
            node: opt_text(d, "node"),
            value: d.get("value").and_then(Value::as_u64).unwrap_or(0),
            max: d.get("max").and_then(Value::as_u64).unwrap_or(0),
        },
        "executed" => WsEvent::Executed { prompt_id: pid(), node: text(d, "node") },
        "execution_success" => WsEvent::Success { prompt_id: pid() },
        "execution_error" => WsEvent::Error { prompt_id: pid(), failure: NodeFailure::from_data(d) },
        "execution_interrupted" => WsEvent::Interrupted {
            prompt_id: pid(),
            node_id: text(d, "node_id"),
            node_type: text(d, "node_type"),
        },
        _ => WsEvent::Other,
    })
}

/// Binary frame types: 1 = preview image (then a u32 image type: 1 JPEG, 2 PNG), 4 = preview
/// image with JSON metadata (then a u32 metadata length and the metadata).
pub fn parse_binary(frame: &[u8]) -> WsEvent {
    let u32_at =
        |at: usize| frame.get(at..at + 4).map_or(0, |b| u32::from_be_bytes(b.try_into().unwrap_or([0; 4])));
    match u32_at(0) {
        1 if frame.len() > 8 => {
            let mime = if u32_at(4) == 2 { "image/png" } else { "image/jpeg" };
            WsEvent::Preview { prompt_id: None, mime, image: frame[8..].to_vec() }
        }
        4 if frame.len() > 8 => {
            let len = u32_at(4) as usize;
            let Some(meta) = frame.get(8..8 + len) else { return WsEvent::Other };
            let meta: Value = serde_json::from_slice(meta).unwrap_or(Value::Null);
            let mime = if meta.get("image_type").and_then(Value::as_str) == Some("image/png") {
                "image/png"
            } else {
                "image/jpeg"
            };
            WsEvent::Preview {
                prompt_id: opt_text(&meta, "prompt_id"),
                mime,
                image: frame[8 + len..].to_vec(),
            }
        }
        _ => WsEvent::Other,
    }
}

/// An output file a node wrote, as listed in the history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputFile {
    /// Node that wrote it.
    pub node: String,
    /// File name.
    pub filename: String,
    /// Subfolder of the output directory.
    pub subfolder: String,
}

/// How a finished prompt ended, from its history entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finished {
    /// Every output written.
    Success(Vec<OutputFile>),
    /// A node failed.
    Failed(NodeFailure),
    /// Interrupted.
    Interrupted { node_id: String, node_type: String },
}

/// Reads `/history/{id}`'s answer: `None` while the entry is not stored yet (`{}`), which
/// happens between `execution_success` and `executing` with `node: null`.
pub fn parse_history(body: &Value, prompt_id: &str) -> Option<Finished> {
    let entry = body.get(prompt_id)?;
    let status = entry.get("status");
    let messages = status.and_then(|s| s.get("messages")).and_then(Value::as_array);
    let message = |kind: &str| {
        messages?.iter().find_map(|m| {
            let pair = m.as_array()?;
            (pair.first()?.as_str()? == kind).then(|| pair.get(1).cloned().unwrap_or(Value::Null))
        })
    };
    if let Some(d) = message("execution_error") {
        return Some(Finished::Failed(NodeFailure::from_data(&d)));
    }
    if let Some(d) = message("execution_interrupted") {
        return Some(Finished::Interrupted {
            node_id: text(&d, "node_id"),
            node_type: text(&d, "node_type"),
        });
    }
    match status.and_then(|s| s.get("status_str")).and_then(Value::as_str) {
        Some("success") | None => {
            Some(Finished::Success(outputs(entry.get("outputs").unwrap_or(&Value::Null))))
        }
        Some(other) => Some(Finished::Failed(NodeFailure {
            node_id: String::new(),
            node_type: String::new(),
            exception_type: format!("status {:?}", visible(other, MAX_VISIBLE_CHARS)),
            exception_message: format!("prompt ended with status {other:?}"),
            traceback: Vec::new(),
        })),
    }
}

/// Every file saved to the output directory, from every output key of every node (images,
/// gifs, ...), in node order. Temporary previews (`type: temp`) are not results.
pub fn outputs(outputs: &Value) -> Vec<OutputFile> {
    let Some(nodes) = outputs.as_object() else { return Vec::new() };
    let mut ids: Vec<&String> = nodes.keys().collect();
    ids.sort_by(|a, b| a.parse::<u64>().ok().cmp(&b.parse::<u64>().ok()).then(a.cmp(b)));
    let mut files = Vec::new();
    for id in ids {
        let Some(keys) = nodes[id].as_object() else { continue };
        for list in keys.values().filter_map(Value::as_array) {
            for f in list {
                let (Some(filename), kind) = (f.get("filename").and_then(Value::as_str), text(f, "type"))
                else {
                    continue;
                };
                if kind == "output" {
                    files.push(OutputFile {
                        node: id.clone(),
                        filename: filename.to_owned(),
                        subfolder: text(f, "subfolder"),
                    });
                }
            }
        }
    }
    files
}

/// Turns POST /prompt's 400 answer into a message naming the node, its class, the input at
/// fault and ComfyUI's short reason. The `details` (which may hold an exception's text or
/// the server's lists of files) stay out: the caller logs the whole answer.
pub fn describe_invalid_prompt(body: &Value) -> String {
    let error = body.get("error").unwrap_or(&Value::Null);
    let mut parts = Vec::new();
    if let Some(nodes) = body.get("node_errors").and_then(Value::as_object) {
        for (id, node) in nodes {
            let class = text(node, "class_type");
            for e in node.get("errors").and_then(Value::as_array).into_iter().flatten() {
                let mut s = format!(
                    "node {} ({})",
                    visible(id, MAX_VISIBLE_CHARS),
                    visible(&class, MAX_VISIBLE_CHARS)
                );
                if let Some(input) = e.pointer("/extra_info/input_name").and_then(Value::as_str) {
                    let _ = write!(s, " input {:?}", visible(input, MAX_VISIBLE_CHARS));
                }
                let _ = write!(s, ": {}", visible(&text(e, "message"), MAX_VISIBLE_CHARS));
                parts.push(s);
                if parts.len() == MAX_VISIBLE_ERRORS {
                    break;
                }
            }
            if parts.len() == MAX_VISIBLE_ERRORS {
                break;
            }
        }
    }
    if parts.is_empty() && text(error, "type") == "missing_node_type" {
        // ComfyUI 0.26 names the node in extra_info: its id, class (null when missing) and
        // title. The message already says whether the class is unknown or missing.
        let info = error.get("extra_info").unwrap_or(&Value::Null);
        let class = opt_text(info, "class_type").unwrap_or_else(|| "no class_type".to_owned());
        parts.push(format!(
            "node {} ({}): {}",
            visible(&text(info, "node_id"), MAX_VISIBLE_CHARS),
            visible(&class, MAX_VISIBLE_CHARS),
            visible(&text(error, "message"), MAX_VISIBLE_CHARS)
        ));
    }
    if parts.is_empty() {
        parts.push(visible(&text(error, "message"), MAX_VISIBLE_CHARS));
    }
    format!("ComfyUI refused the workflow: {}", parts.join("; "))
}

/// Node errors named in [`describe_invalid_prompt`]'s message (the rest are in the log).
pub const MAX_VISIBLE_ERRORS: usize = 5;

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn binary_frames_of_both_kinds_are_read() {
        let mut legacy = vec![0, 0, 0, 1, 0, 0, 0, 1];
        legacy.extend([0xff, 0xd8, 0xff, 0xe0]);
        assert_eq!(
            parse_binary(&legacy),
            WsEvent::Preview { prompt_id: None, mime: "image/jpeg", image: vec![0xff, 0xd8, 0xff, 0xe0] }
        );
        let meta = br#"{"prompt_id": "p1", "image_type": "image/png"}"#;
        let mut with_meta = vec![0, 0, 0, 4];
        with_meta.extend(u32::try_from(meta.len()).unwrap().to_be_bytes());
        with_meta.extend(meta);
        with_meta.extend([0x89, b'P']);
        assert_eq!(
            parse_binary(&with_meta),
            WsEvent::Preview { prompt_id: Some("p1".into()), mime: "image/png", image: vec![0x89, b'P'] }
        );
        assert_eq!(
            parse_binary(&[0, 0, 0, 4, 0, 0, 1, 0, 1]),
            WsEvent::Other,
            "metadata longer than the frame"
        );
        assert_eq!(parse_binary(&[0, 0, 0, 9]), WsEvent::Other);
    }

    #[test]
    fn users_see_node_class_and_exception_type_but_not_the_exception_text() {
        let failure = NodeFailure {
            node_id: "7".into(),
            node_type: "KSampler".into(),
            exception_type: "torch.OutOfMemoryError".into(),
            exception_message:
                "CUDA out of memory at /opt/comfy/models/x.safetensors via http://10.0.0.5:8188".into(),
            traceback: vec!["File \"/opt/comfy/execution.py\", line 3\n".into()],
        };
        assert_eq!(failure.describe(), "ComfyUI node 7 (KSampler) failed: torch.OutOfMemoryError");
        assert!(failure.retryable(), "out of memory is recognised by its exception type");
        let cuda = NodeFailure { exception_type: "torch.cuda.OutOfMemoryError".into(), ..failure.clone() };
        assert!(cuda.retryable());
        let other = NodeFailure {
            exception_type: "RuntimeError".into(),
            exception_message: "out of memory".into(),
            ..failure.clone()
        };
        assert!(!other.retryable(), "the message text decides nothing");
        let long = NodeFailure { node_type: "N\nx".repeat(100), ..failure };
        let shown = long.describe();
        assert!(!shown.contains('\n') && shown.chars().count() < 200, "{shown}");
        let whole = parse_history(
            &json!({"p": {"status": {"status_str": "error", "messages": []}, "outputs": {}}}),
            "p",
        );
        let Some(Finished::Failed(f)) = whole else { panic!("{whole:?}") };
        assert_eq!(f.describe(), "ComfyUI prompt failed: status \"error\"");
    }

    #[test]
    fn invalid_prompt_details_stay_out_of_the_visible_error() {
        let body = json!({
            "error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation",
                      "details": "", "extra_info": {}},
            "node_errors": {"4": {"class_type": "CheckpointLoaderSimple", "errors": [{
                "type": "value_not_in_list", "message": "Value not in list",
                "details": "ckpt_name: 'x' not in ['secret-internal-model.safetensors']",
                "extra_info": {"input_name": "ckpt_name"}}]}}
        });
        assert_eq!(
            describe_invalid_prompt(&body),
            "ComfyUI refused the workflow: node 4 (CheckpointLoaderSimple) input \"ckpt_name\": Value not in list"
        );
        let global = json!({"error": {"message": "Cannot execute", "details": "Traceback: /opt/comfy/x.py"}});
        assert_eq!(describe_invalid_prompt(&global), "ComfyUI refused the workflow: Cannot execute");
        // As ComfyUI 0.26 answers an unknown class and a node without one.
        let unknown = json!({"error": {"type": "missing_node_type", "message": "Node 'My Missing Node' not found. The custom node may not be installed.",
            "details": "Node ID '#1'", "extra_info": {"node_id": "1", "class_type": "NoSuchNodeType", "node_title": "My Missing Node"}}, "node_errors": {}});
        assert_eq!(
            describe_invalid_prompt(&unknown),
            "ComfyUI refused the workflow: node 1 (NoSuchNodeType): Node 'My Missing Node' not found. The custom node may not be installed."
        );
        let untyped = json!({"error": {"type": "missing_node_type", "message": "Node 'ID #1' has no class_type. The workflow may be corrupted or a custom node is missing.",
            "details": "Node ID '#1'", "extra_info": {"node_id": "1", "class_type": null, "node_title": null}}, "node_errors": {}});
        assert!(
            describe_invalid_prompt(&untyped).starts_with(
                "ComfyUI refused the workflow: node 1 (no class_type): Node 'ID #1' has no class_type."
            ),
            "{}",
            describe_invalid_prompt(&untyped)
        );
        let errors: Vec<Value> =
            (0..50).map(|i| json!({"message": format!("m{i}"), "extra_info": {"input_name": "a"}})).collect();
        let many = json!({"node_errors": {"1": {"class_type": "X", "errors": errors}}});
        assert_eq!(describe_invalid_prompt(&many).matches("node 1 (X)").count(), MAX_VISIBLE_ERRORS);
    }

    #[test]
    fn outputs_come_from_every_key_and_skip_temp_files() {
        let o = json!({
            "12": {"images": [{"filename": "b.png", "subfolder": "s", "type": "output"}], "animated": [true]},
            "9": {"gifs": [{"filename": "a.gif", "subfolder": "", "type": "output"}]},
            "3": {"images": [{"filename": "t.png", "subfolder": "", "type": "temp"}]}
        });
        let names: Vec<_> = outputs(&o).into_iter().map(|f| (f.node, f.filename)).collect();
        assert_eq!(names, [("9".to_owned(), "a.gif".to_owned()), ("12".to_owned(), "b.png".to_owned())]);
    }
}
