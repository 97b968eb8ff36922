//! The `[comfyui]` settings: their defaults and their checks, which load the templates
//! (shipped and from `templates_dir`) so a broken one stops the service at start-up.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

use super::{error::ComfyError, template::Template};

/// `[comfyui]` settings of the generator.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ComfyConfig {
    /// ComfyUI servers (`http://host:port`); each is one slot.
    pub urls: Vec<String>,
    /// Prompts each server holds waiting in its own queue besides the running one, so it
    /// starts the next the moment the current one ends (0 to 8).
    pub over_queue: u32,
    /// Extra or replacement templates (`<name>.json`, API format); unset: the shipped ones.
    pub templates_dir: Option<PathBuf>,
    /// Template for image jobs.
    pub image_template: String,
    /// Template for video jobs.
    pub video_template: String,
    /// Checkpoint used when a job names no model (or "default").
    pub default_checkpoint: String,
    /// ComfyUI scheduler name filled into `{{scheduler}}`.
    pub scheduler: String,
    /// Checkpoints loaded at start-up by a tiny warm-up run on every server.
    pub preload_models: Vec<String>,
    /// Ask for previews with metadata (binary frame type 4) instead of bare JPEGs.
    pub preview_metadata: bool,
    /// Timeout of one HTTP request to ComfyUI.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// How long a job waits for the server's socket before failing as retryable.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// A server unreachable this long in the middle of a job fails it as retryable.
    #[serde(with = "humantime_serde")]
    pub lost_after: Duration,
    /// Longest a job may run in ComfyUI.
    #[serde(with = "humantime_serde")]
    pub job_timeout: Duration,
    /// Largest JSON answer read from ComfyUI (history, queue, object_info, errors).
    pub max_response_bytes: u64,
    /// Largest output file read from `/view`, whatever the job's size. Below it, a file may
    /// be at most twice the job's raw RGBA size (width × height × 4 × frames) plus 4 MiB.
    pub max_output_bytes: u64,
    /// Largest WebSocket message (and frame) read from ComfyUI; a larger one closes the
    /// socket and fails the running job's attempt.
    pub max_ws_message_bytes: u64,
    /// Longest side a preview may declare to be decoded; larger previews are skipped.
    pub max_preview_side: u32,
}

/// Most prompts a server may hold waiting (`comfyui.over_queue`).
const MAX_OVER_QUEUE: u32 = 8;

/// Longest preview side that may be configured (keeps the downscaler's arithmetic in u32).
const MAX_PREVIEW_SIDE_LIMIT: u32 = 8192;

impl Default for ComfyConfig {
    fn default() -> Self {
        Self {
            urls: vec!["http://127.0.0.1:8188".to_owned()],
            over_queue: 1,
            templates_dir: None,
            image_template: "txt2img".to_owned(),
            video_template: "animation".to_owned(),
            default_checkpoint: String::new(),
            scheduler: "normal".to_owned(),
            preload_models: Vec::new(),
            preview_metadata: true,
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            lost_after: Duration::from_mins(1),
            job_timeout: Duration::from_hours(1),
            max_response_bytes: 8 << 20,
            max_output_bytes: 512 << 20,
            max_ws_message_bytes: 16 << 20,
            max_preview_side: 2048,
        }
    }
}

impl ComfyConfig {
    /// Checks the settings and loads the templates; errors name the field.
    pub fn templates(&self) -> Result<BTreeMap<String, Template>, ComfyError> {
        self.server_urls()?;
        for (field, duration) in [
            ("comfyui.request_timeout", self.request_timeout),
            ("comfyui.connect_timeout", self.connect_timeout),
            ("comfyui.lost_after", self.lost_after),
            ("comfyui.job_timeout", self.job_timeout),
        ] {
            if duration.is_zero() {
                return Err(setting(field, "must be positive"));
            }
        }
        for (field, bytes) in [
            ("comfyui.max_response_bytes", self.max_response_bytes),
            ("comfyui.max_output_bytes", self.max_output_bytes),
            ("comfyui.max_ws_message_bytes", self.max_ws_message_bytes),
        ] {
            if bytes < 512 {
                return Err(setting(field, "must be at least 512"));
            }
        }
        if usize::try_from(self.max_ws_message_bytes).is_err() {
            return Err(setting("comfyui.max_ws_message_bytes", "too large for this platform"));
        }
        if self.over_queue > MAX_OVER_QUEUE {
            return Err(setting("comfyui.over_queue", format!("must be between 0 and {MAX_OVER_QUEUE}")));
        }
        if self.urls.len() > 64 || self.urls.len() * self.over_queue as usize > 64 {
            return Err(setting(
                "comfyui.urls",
                "at most 64 servers, and at most 64 prompts waiting over all servers (servers × comfyui.over_queue)",
            ));
        }
        if !(1..=MAX_PREVIEW_SIDE_LIMIT).contains(&self.max_preview_side) {
            return Err(setting(
                "comfyui.max_preview_side",
                format!("must be between 1 and {MAX_PREVIEW_SIDE_LIMIT}"),
            ));
        }
        let all = Template::load_all(self.templates_dir.as_deref())?;
        for (field, name) in [
            ("comfyui.image_template", &self.image_template),
            ("comfyui.video_template", &self.video_template),
        ] {
            if !all.contains_key(name) {
                return Err(setting(
                    field,
                    format!(
                        "no template named {name:?} (available: {})",
                        all.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                ));
            }
        }
        Ok(all)
    }

    /// The servers' base URLs, checked: at least one, each `http://host:port`.
    pub fn server_urls(&self) -> Result<Vec<reqwest::Url>, ComfyError> {
        if self.urls.is_empty() {
            return Err(setting("comfyui.urls", "must name at least one ComfyUI server"));
        }
        self.urls
            .iter()
            .map(|url| match reqwest::Url::parse(url) {
                Ok(u) if u.scheme() == "http" && u.host_str().is_some() => Ok(u),
                Ok(u) if u.scheme() == "https" => Err(setting(
                    "comfyui.urls",
                    format!("{url:?}: only http:// is supported; reach ComfyUI over the pod network"),
                )),
                _ => Err(setting("comfyui.urls", format!("{url:?} is not an http://host:port URL"))),
            })
            .collect()
    }
}

fn setting(field: &'static str, reason: impl Into<String>) -> ComfyError {
    ComfyError::Setting { field, reason: reason.into() }
}
