//! The recordings in `fixtures/comfyui/` (ComfyUI 0.3.64) and `fixtures/comfyui-0.26/`
//! (0.26.0), same scenarios under the same file names, and how a run's frames, answers and
//! ids are read from them.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde_json::Value;

/// Which ComfyUI's recordings are replayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Version {
    /// ComfyUI 0.3.64: no /api/jobs, any `prompt_id` string taken.
    V0_3_64,
    /// ComfyUI 0.26.0: /api/jobs and its cancel, canonical UUID prompt ids only,
    /// `missing_node_type`.
    V0_26,
}

impl Version {
    /// Both, oldest first.
    pub const ALL: [Self; 2] = [Self::V0_3_64, Self::V0_26];

    /// The folder of its recordings.
    pub fn fixtures_dir(self) -> PathBuf {
        let dir = match self {
            Self::V0_3_64 => "fixtures/comfyui",
            Self::V0_26 => "fixtures/comfyui-0.26",
        };
        Path::new(env!("CARGO_MANIFEST_DIR")).join(dir)
    }
}

/// The folder of recorded ComfyUI 0.3.64 traffic.
pub fn fixtures_dir() -> PathBuf {
    Version::V0_3_64.fixtures_dir()
}

pub(super) fn load(version: Version, name: &str) -> Value {
    let text = std::fs::read_to_string(version.fixtures_dir().join(name)).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn load_lines(version: Version, name: &str) -> Vec<Value> {
    std::fs::read_to_string(version.fixtures_dir().join(name))
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
    pub(super) fn load(self, version: Version) -> Script {
        let (ws, history) = self.files();
        let lines = load_lines(version, ws);
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
        let history = load(version, history)["response"]["body_raw"].as_str().unwrap().to_owned();
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
pub(super) enum Frame {
    Text(f64, String),
    Binary(f64, Vec<u8>),
    /// The recorder interrupted here; wait for the client's /interrupt.
    AwaitInterrupt,
}

#[derive(Debug, Clone)]
pub(super) struct Script {
    pub(super) frames: Vec<Frame>,
    pub(super) prompt_response: String,
    pub(super) history: String,
    pub(super) prompt_id: String,
    pub(super) client_id: String,
}
