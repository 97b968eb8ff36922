//! ComfyUI's HTTP API for one server: the calls this backend makes, each answer read only
//! up to its ceiling, and failures as [`HttpError`]s that say what a job's user may see.

use std::{sync::Arc, time::Duration};

use reqwest::header::HeaderMap;
use sakuga_mesh::metrics::Metrics;
use serde_json::{Value, json};

use super::{
    error::ComfyError,
    wire::{Finished, OutputFile, parse_history},
};

/// Why an HTTP call to ComfyUI failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// Not reachable, timed out, or a 5xx. The text names the server and is for logs.
    #[error("{0}")]
    Unavailable(String),
    /// A 4xx with its body.
    #[error("HTTP {status}")]
    Refused {
        /// Status code.
        status: u16,
        /// Body parsed as JSON, or `null`.
        body: Value,
    },
    /// The answer was larger than a ceiling; nothing more of it was read.
    #[error("ComfyUI {what} exceeds {setting} ({limit} bytes)")]
    TooLarge {
        /// What was being read ("response", "output file").
        what: &'static str,
        /// The setting (or rule) that sets the ceiling.
        setting: &'static str,
        /// The ceiling, in bytes.
        limit: u64,
    },
}

impl HttpError {
    /// A short reason fit for a job's visible error: no URL, no server text.
    pub fn public(&self) -> String {
        match self {
            Self::Unavailable(_) => {
                "ComfyUI request failed (unreachable, timed out or a server error)".to_owned()
            }
            Self::Refused { status, .. } => format!("ComfyUI answered HTTP {status}"),
            Self::TooLarge { .. } => self.to_string(),
        }
    }
}

/// A ceiling on how much of one answer is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyLimit {
    /// What is read ("response", "output file").
    pub what: &'static str,
    /// The setting (or rule) that sets the ceiling.
    pub setting: &'static str,
    /// Metric label of the ceiling.
    pub ceiling: &'static str,
    /// Most bytes accepted.
    pub bytes: u64,
}

/// Counts a refusal by a ComfyUI input ceiling.
pub fn count_refusal(metrics: &Metrics, ceiling: &'static str) {
    metrics.ceiling_refused(ceiling);
}

/// ComfyUI's HTTP API, for one server.
#[derive(Debug, Clone)]
pub struct Api {
    base: reqwest::Url,
    http: reqwest::Client,
    max_response_bytes: u64,
    metrics: Arc<Metrics>,
}

impl Api {
    /// A client for `base` (`http://host:port` or `https://host:port`) that reads at most
    /// `max_response_bytes` of any JSON answer, counts refusals in `metrics`, verifies an
    /// `https://` server with `tls` and sends `headers` with every request.
    pub fn new(
        base: reqwest::Url,
        timeout: Duration,
        max_response_bytes: u64,
        metrics: Arc<Metrics>,
        tls: Option<&Arc<rustls::ClientConfig>>,
        headers: HeaderMap,
    ) -> Result<Self, ComfyError> {
        // reqwest's TLS layer needs the process-wide provider even for plain HTTP.
        sakuga_mesh::tls::install_crypto_provider();
        let mut builder = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            // ComfyUI's API does not redirect; following one could carry the extra headers
            // (a proxy's token) to another host.
            .redirect(reqwest::redirect::Policy::none())
            .default_headers(headers);
        if let Some(tls) = tls {
            builder = builder.tls_backend_preconfigured(rustls::ClientConfig::clone(tls));
        }
        let http = builder.build().map_err(ComfyError::Client)?;
        Ok(Self { base, http, max_response_bytes, metrics })
    }

    /// The server's base URL.
    pub fn base(&self) -> &reqwest::Url {
        &self.base
    }

    /// The WebSocket URL for `client_id`.
    pub fn ws_url(&self, client_id: &str) -> String {
        let mut url = self.base.clone();
        let _ = url.set_scheme(if self.base.scheme() == "https" { "wss" } else { "ws" });
        url.set_path("/ws");
        url.query_pairs_mut().clear().append_pair("clientId", client_id);
        url.to_string()
    }

    fn json_limit(&self) -> BodyLimit {
        BodyLimit {
            what: "response",
            setting: "comfyui.max_response_bytes",
            ceiling: "comfyui_response_bytes",
            bytes: self.max_response_bytes,
        }
    }

    /// `error` with its causes (reqwest's own text names only the URL; the reason, such as
    /// a certificate from an unknown issuer, is in the chain).
    fn unavailable(&self, error: &reqwest::Error) -> HttpError {
        let mut text = format!("{}: {error}", self.base);
        let mut cause = std::error::Error::source(error);
        while let Some(c) = cause {
            text.push_str(": ");
            text.push_str(&c.to_string());
            cause = c.source();
        }
        HttpError::Unavailable(text)
    }

    async fn call(&self, req: reqwest::RequestBuilder, limit: BodyLimit) -> Result<Vec<u8>, HttpError> {
        let mut resp = req.send().await.map_err(|e| self.unavailable(&e))?;
        let status = resp.status();
        if status.is_success() {
            return self.read_capped(&mut resp, limit).await;
        }
        if status.is_client_error() {
            // Error bodies are JSON too, read under the JSON ceiling; past it (a proxy's
            // page, say) the status alone is the answer and the rest is not read.
            let body = match self.read_capped(&mut resp, self.json_limit()).await {
                Ok(body) => serde_json::from_slice(&body).unwrap_or(Value::Null),
                Err(HttpError::TooLarge { .. }) => Value::Null,
                Err(e) => return Err(e),
            };
            return Err(HttpError::Refused { status: status.as_u16(), body });
        }
        // A server error's body is of no use: not read at all.
        Err(HttpError::Unavailable(format!("{} answered HTTP {}", self.base, status.as_u16())))
    }

    /// Reads the body chunk by chunk, refusing it as soon as it would pass `limit` (at
    /// once when its declared length already does).
    async fn read_capped(
        &self,
        resp: &mut reqwest::Response,
        limit: BodyLimit,
    ) -> Result<Vec<u8>, HttpError> {
        let too_large = || {
            count_refusal(&self.metrics, limit.ceiling);
            tracing::warn!(url = %self.base, what = limit.what, setting = limit.setting, limit = limit.bytes,
                           "ComfyUI answer over its ceiling, refused");
            HttpError::TooLarge { what: limit.what, setting: limit.setting, limit: limit.bytes }
        };
        if resp.content_length().is_some_and(|n| n > limit.bytes) {
            return Err(too_large());
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| self.unavailable(&e))? {
            if (body.len() + chunk.len()) as u64 > limit.bytes {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    fn url(&self, path: &str) -> reqwest::Url {
        let mut url = self.base.clone();
        url.set_path(path);
        url
    }

    async fn get_json(&self, url: reqwest::Url) -> Result<Value, HttpError> {
        let body = self.call(self.http.get(url), self.json_limit()).await?;
        serde_json::from_slice(&body)
            .map_err(|e| HttpError::Unavailable(format!("{}: bad JSON: {e}", self.base)))
    }

    async fn post_json(&self, path: &str, body: &Value) -> Result<Vec<u8>, HttpError> {
        let req = self
            .http
            .post(self.url(path))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string());
        self.call(req, self.json_limit()).await
    }

    /// POST /prompt with our prompt id; returns the queue number.
    pub async fn submit(&self, workflow: &Value, client_id: &str, prompt_id: &str) -> Result<(), HttpError> {
        self.post_json(
            "/prompt",
            &json!({"prompt": workflow, "client_id": client_id, "prompt_id": prompt_id}),
        )
        .await
        .map(|_| ())
    }

    /// GET /history/{id}: the finished prompt, or `None` when there is no entry (yet).
    pub async fn history(&self, prompt_id: &str) -> Result<Option<Finished>, HttpError> {
        let mut url = self.url("/history/");
        url.path_segments_mut()
            .map_err(|()| HttpError::Unavailable("bad base URL".into()))?
            .pop_if_empty()
            .push(prompt_id);
        Ok(parse_history(&self.get_json(url).await?, prompt_id))
    }

    /// Whether GET /queue lists the prompt as running or pending.
    pub async fn queued(&self, prompt_id: &str) -> Result<bool, HttpError> {
        let q = self.get_json(self.url("/queue")).await?;
        Ok(["queue_running", "queue_pending"].iter().any(|k| {
            q.get(*k).and_then(Value::as_array).is_some_and(|items| {
                items.iter().any(|i| i.get(1).and_then(Value::as_str) == Some(prompt_id))
            })
        }))
    }

    /// POST /interrupt naming the prompt (only that prompt is interrupted).
    pub async fn interrupt(&self, prompt_id: &str) -> Result<(), HttpError> {
        self.post_json("/interrupt", &json!({"prompt_id": prompt_id})).await.map(|_| ())
    }

    /// POST /api/jobs/{id}/cancel (ComfyUI 0.26 and later): interrupts the prompt when it
    /// runs, removes it from the queue when it waits. `Ok(Some(cancelled))` with the
    /// server's answer (false: already finished or unknown); `Ok(None)` when the server has
    /// no such endpoint (404 or 405: an older ComfyUI).
    pub async fn cancel_job(&self, prompt_id: &str) -> Result<Option<bool>, HttpError> {
        let mut url = self.url("/api/jobs/");
        url.path_segments_mut()
            .map_err(|()| HttpError::Unavailable("bad base URL".into()))?
            .pop_if_empty()
            .push(prompt_id)
            .push("cancel");
        match self.call(self.http.post(url), self.json_limit()).await {
            Ok(body) => {
                let answer: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                Ok(Some(answer.get("cancelled").and_then(Value::as_bool).unwrap_or(false)))
            }
            Err(HttpError::Refused { status: 404 | 405, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// POST /queue `{"delete": [id]}`: removes a prompt that has not started.
    pub async fn dequeue(&self, prompt_id: &str) -> Result<(), HttpError> {
        self.post_json("/queue", &json!({"delete": [prompt_id]})).await.map(|_| ())
    }

    /// GET /view for an output file, read up to `limit`.
    pub async fn view(&self, file: &OutputFile, limit: BodyLimit) -> Result<Vec<u8>, HttpError> {
        let mut url = self.url("/view");
        url.query_pairs_mut()
            .append_pair("filename", &file.filename)
            .append_pair("subfolder", &file.subfolder)
            .append_pair("type", "output");
        self.call(self.http.get(url), limit).await
    }

    /// GET /object_info/{class}: whether the node class is installed (`{}` when not).
    pub async fn has_node(&self, class: &str) -> Result<bool, HttpError> {
        let mut url = self.url("/object_info/");
        url.path_segments_mut()
            .map_err(|()| HttpError::Unavailable("bad base URL".into()))?
            .pop_if_empty()
            .push(class);
        Ok(self.get_json(url).await?.get(class).is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_errors_show_users_no_url() {
        let e = HttpError::Unavailable("http://10.1.2.3:8188/: connection refused".into());
        assert!(!e.public().contains("10.1.2.3"), "{}", e.public());
        let e = HttpError::TooLarge { what: "response", setting: "comfyui.max_response_bytes", limit: 2048 };
        assert_eq!(e.public(), "ComfyUI response exceeds comfyui.max_response_bytes (2048 bytes)");
    }

    /// A server that answers every connection with `head` and then body bytes without end
    /// (no length: the body ends only when the connection does). Returns its URL.
    async fn endless(head: &'static str) -> reqwest::Url {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = reqwest::Url::parse(&format!("http://{}", listener.local_addr().unwrap())).unwrap();
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut request = [0_u8; 4096];
                    let _ = tcp.read(&mut request).await;
                    let _ = tcp.write_all(head.as_bytes()).await;
                    let filler = vec![b'x'; 64 << 10];
                    while tcp.write_all(&filler).await.is_ok() {}
                });
            }
        });
        url
    }

    fn api(url: reqwest::Url, metrics: &Arc<Metrics>) -> Api {
        Api::new(url, Duration::from_secs(10), 4096, metrics.clone(), None, HeaderMap::new()).unwrap()
    }

    #[tokio::test]
    async fn an_endless_error_body_is_not_read_past_the_json_ceiling() {
        let metrics = Metrics::new();
        // A proxy's 401 page: the status is the answer, the body is read only up to the
        // ceiling (else this call would run into the 10 s timeout).
        let url =
            endless("HTTP/1.1 401 Unauthorized\r\ncontent-type: text/html\r\nconnection: close\r\n\r\n")
                .await;
        let started = std::time::Instant::now();
        match api(url, &metrics).has_node("SaveImage").await {
            Err(HttpError::Refused { status: 401, body: Value::Null }) => {}
            other => panic!("expected a 401 refusal, got {other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(5), "body read to the end: {:?}", started.elapsed());
        // A server error's body is not read at all: it stays a retryable failure instead of
        // becoming a ceiling refusal.
        let url = endless("HTTP/1.1 502 Bad Gateway\r\nconnection: close\r\n\r\n").await;
        match api(url, &metrics).has_node("SaveImage").await {
            Err(HttpError::Unavailable(text)) => assert!(text.ends_with("answered HTTP 502"), "{text}"),
            other => panic!("expected unavailable, got {other:?}"),
        }
        // A success body over the ceiling is refused as before.
        let url =
            endless("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n").await;
        match api(url, &metrics).has_node("SaveImage").await {
            Err(HttpError::TooLarge { setting: "comfyui.max_response_bytes", limit: 4096, .. }) => {}
            other => panic!("expected a ceiling refusal, got {other:?}"),
        }
    }
}
