//! The `[comfyui]` settings: their defaults and their checks, which load the templates
//! (shipped and from `templates_dir`) and the CA bundle (`ca_file`) so a broken one stops
//! the service at start-up.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use serde::{Deserialize, Serialize};

use super::{
    error::{ComfyError, setting},
    template::Template,
    tls,
};

/// `[comfyui]` settings of the generator.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ComfyConfig {
    /// ComfyUI servers (`http://host:port` or `https://host:port`); each is one slot.
    pub urls: Vec<String>,
    /// Prompts each server holds waiting in its own queue besides the running one, so it
    /// starts the next the moment the current one ends (0 to 8).
    pub over_queue: u32,
    /// CA bundle (PEM) that `https://` servers' certificates are verified against instead
    /// of the system's roots.
    pub ca_file: Option<PathBuf>,
    /// Extra headers sent to one server (every HTTP request and the WebSocket upgrade),
    /// their values read from Vault at start-up.
    pub headers: Vec<HeaderSetting>,
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
    /// How long a job waits for the server's socket before failing as retryable; also the
    /// longest one attempt to open the socket (TCP, TLS, upgrade) may take.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// A server unreachable this long in the middle of a job fails it as retryable.
    #[serde(with = "humantime_serde")]
    pub lost_after: Duration,
    /// Longest a job may run in ComfyUI, from when ComfyUI starts it; waiting in its queue
    /// may take `over_queue` times as long again.
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
/// One `[[comfyui.headers]]` entry: a header whose value is read from Vault, never from
/// the configuration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HeaderSetting {
    /// The server it is sent to; one of `comfyui.urls`.
    pub url: String,
    /// Header name (`Authorization`).
    pub name: String,
    /// KV path of the secret holding the value, read through the generator's Vault session.
    pub vault_path: String,
    /// Key of the value in that secret.
    pub vault_key: String,
    /// Put before the secret's value (`"Bearer "`).
    #[serde(default)]
    pub prefix: String,
}

/// Headers this backend sets itself, or that would break the request or the upgrade
/// (besides every `Sec-WebSocket-*`).
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "connection",
    "upgrade",
    "content-length",
    "content-type",
    "transfer-encoding",
    "te",
    "trailer",
    "keep-alive",
    "proxy-connection",
];

/// Longest preview side that may be configured (keeps the downscaler's arithmetic in u32).
const MAX_PREVIEW_SIDE_LIMIT: u32 = 8192;

impl Default for ComfyConfig {
    fn default() -> Self {
        Self {
            urls: vec!["http://127.0.0.1:8188".to_owned()],
            over_queue: 1,
            ca_file: None,
            headers: Vec::new(),
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
        self.header_settings()?;
        if let Some(path) = &self.ca_file {
            tls::load_ca(path)?;
        }
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

    /// The servers' base URLs, checked: at least one, each `http://host:port` or
    /// `https://host:port`.
    pub fn server_urls(&self) -> Result<Vec<reqwest::Url>, ComfyError> {
        if self.urls.is_empty() {
            return Err(setting("comfyui.urls", "must name at least one ComfyUI server"));
        }
        self.urls
            .iter()
            .map(|url| match reqwest::Url::parse(url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => Ok(u),
                _ => Err(setting(
                    "comfyui.urls",
                    format!("{url:?} is not an http://host:port or https://host:port URL"),
                )),
            })
            .collect()
    }

    /// The TLS client configuration for the `https://` servers (verified against
    /// `ca_file`, else the system's roots); `None` when every server is `http://`.
    pub fn client_tls(&self) -> Result<Option<Arc<rustls::ClientConfig>>, ComfyError> {
        if self.server_urls()?.iter().any(|u| u.scheme() == "https") {
            tls::client_config(self.ca_file.as_deref()).map(Some)
        } else {
            Ok(None)
        }
    }

    /// The `[[comfyui.headers]]` entries, checked: each names one of `comfyui.urls`, a
    /// header name this backend does not set itself (once per server), a Vault path and key,
    /// and a prefix that may start a header value. Returns each entry's server URL.
    pub fn header_settings(&self) -> Result<Vec<(reqwest::Url, &HeaderSetting)>, ComfyError> {
        let urls = self.server_urls()?;
        let mut seen = BTreeSet::new();
        let mut out = Vec::with_capacity(self.headers.len());
        for (i, h) in self.headers.iter().enumerate() {
            let entry = |reason: String| format!("entry {} ({:?}): {reason}", i + 1, h.name);
            let url = reqwest::Url::parse(&h.url).ok().filter(|u| urls.contains(u)).ok_or_else(|| {
                setting("comfyui.headers.url", entry(format!("{:?} is not one of comfyui.urls", h.url)))
            })?;
            let name = reqwest::header::HeaderName::from_bytes(h.name.as_bytes())
                .map_err(|_| setting("comfyui.headers.name", entry("not a valid header name".to_owned())))?;
            if RESERVED_HEADERS.contains(&name.as_str()) || name.as_str().starts_with("sec-websocket-") {
                return Err(setting(
                    "comfyui.headers.name",
                    entry("set by the ComfyUI client itself; it cannot be configured".to_owned()),
                ));
            }
            if !seen.insert((url.clone(), name.as_str().to_owned())) {
                return Err(setting("comfyui.headers.name", entry(format!("given twice for {url}"))));
            }
            if h.vault_path.trim().is_empty() {
                return Err(setting("comfyui.headers.vault_path", entry("must not be empty".to_owned())));
            }
            if h.vault_key.is_empty() {
                return Err(setting("comfyui.headers.vault_key", entry("must not be empty".to_owned())));
            }
            if reqwest::header::HeaderValue::from_str(&h.prefix).is_err() {
                return Err(setting(
                    "comfyui.headers.prefix",
                    entry("may hold only visible ASCII and spaces".to_owned()),
                ));
            }
            out.push((url, h));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(url: &str, name: &str) -> HeaderSetting {
        HeaderSetting {
            url: url.to_owned(),
            name: name.to_owned(),
            vault_path: "sakuga/comfyui/gpu-1".to_owned(),
            vault_key: "token".to_owned(),
            prefix: "Bearer ".to_owned(),
        }
    }

    fn remote() -> ComfyConfig {
        ComfyConfig {
            urls: vec!["https://gpu-1.example:8443".to_owned(), "http://10.0.0.5:8188".to_owned()],
            headers: vec![header("https://gpu-1.example:8443", "Authorization")],
            ..ComfyConfig::default()
        }
    }

    fn refusal(config: &ComfyConfig) -> (&'static str, String) {
        match config.templates().unwrap_err() {
            ComfyError::Setting { field, reason } => (field, reason),
            other => panic!("not a setting error: {other}"),
        }
    }

    #[test]
    fn https_urls_and_headers_for_them_are_accepted() {
        let config = remote();
        config.templates().unwrap();
        let urls = config.server_urls().unwrap();
        assert_eq!(urls[0].scheme(), "https");
        let headers = config.header_settings().unwrap();
        assert_eq!(headers.len(), 1);
        assert_eq!(headers[0].0, urls[0], "the header belongs to the https server");
        // The same URL written without the trailing slash or with it is the same server.
        let mut slash = remote();
        slash.headers[0].url = "https://gpu-1.example:8443/".to_owned();
        slash.templates().unwrap();
    }

    #[test]
    fn the_config_file_shape_parses_and_unknown_keys_are_refused() {
        let text = r#"
urls = ["https://gpu-1.example:8443"]
ca_file = "/etc/sakuga/comfyui-ca.pem"

[[headers]]
url = "https://gpu-1.example:8443"
name = "Authorization"
vault_path = "sakuga/comfyui/gpu-1"
vault_key = "token"
prefix = "Bearer "
"#;
        let config: ComfyConfig = toml::from_str(text).unwrap();
        assert_eq!(config.ca_file.as_deref(), Some(std::path::Path::new("/etc/sakuga/comfyui-ca.pem")));
        assert_eq!(config.headers, [header("https://gpu-1.example:8443", "Authorization")]);
        // A value in the file itself is not a setting.
        let inline = text.replace("prefix = \"Bearer \"", "value = \"Bearer abc\"");
        let err = toml::from_str::<ComfyConfig>(&inline).unwrap_err().to_string();
        assert!(err.contains("unknown field `value`"), "{err}");
    }

    #[test]
    fn other_schemes_are_refused_naming_the_field() {
        let config = ComfyConfig { urls: vec!["ftp://gpu-1:21".to_owned()], ..ComfyConfig::default() };
        let (field, reason) = refusal(&config);
        assert_eq!(field, "comfyui.urls");
        assert!(reason.contains("ftp://gpu-1:21"), "{reason}");
    }

    #[test]
    fn an_unreadable_or_empty_ca_file_is_refused_naming_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = remote();
        config.ca_file = Some(dir.path().join("missing.pem"));
        let (field, reason) = refusal(&config);
        assert_eq!(field, "comfyui.ca_file");
        assert!(reason.contains("missing.pem"), "{reason}");

        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a certificate\n").unwrap();
        config.ca_file = Some(garbage);
        let (field, reason) = refusal(&config);
        assert_eq!(field, "comfyui.ca_file");
        assert!(reason.contains("no PEM certificate"), "{reason}");

        let broken = dir.path().join("broken.pem");
        std::fs::write(&broken, "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n")
            .unwrap();
        config.ca_file = Some(broken);
        assert_eq!(refusal(&config).0, "comfyui.ca_file");
        assert_eq!(config.client_tls().unwrap_err().to_string().split(':').next(), Some("comfyui.ca_file"));
    }

    #[test]
    fn header_settings_are_checked_naming_the_field() {
        let mut config = remote();
        config.headers[0].url = "https://gpu-2.example:8443".to_owned();
        let (field, reason) = refusal(&config);
        assert_eq!(field, "comfyui.headers.url");
        assert!(reason.contains("gpu-2.example") && reason.contains("not one of comfyui.urls"), "{reason}");

        for (name, why) in [
            ("bad name", "not a valid header name"),
            ("Host", "set by the ComfyUI client"),
            ("Sec-WebSocket-Accept", "set by the ComfyUI client"),
        ] {
            let mut config = remote();
            config.headers[0].name = name.to_owned();
            let (field, reason) = refusal(&config);
            assert_eq!(field, "comfyui.headers.name");
            assert!(reason.contains(why), "{reason}");
        }

        let mut twice = remote();
        twice.headers.push(header("https://gpu-1.example:8443/", "authorization"));
        assert_eq!(refusal(&twice).0, "comfyui.headers.name");

        let mut no_path = remote();
        no_path.headers[0].vault_path = " ".to_owned();
        assert_eq!(refusal(&no_path).0, "comfyui.headers.vault_path");
        let mut no_key = remote();
        no_key.headers[0].vault_key = String::new();
        assert_eq!(refusal(&no_key).0, "comfyui.headers.vault_key");
        let mut bad_prefix = remote();
        bad_prefix.headers[0].prefix = "Bearer\n".to_owned();
        assert_eq!(refusal(&bad_prefix).0, "comfyui.headers.prefix");
    }
}
