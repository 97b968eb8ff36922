//! The webhook HTTP client: follows no redirect (a 3xx is a failed attempt), uses no proxy,
//! reads at most `webhooks.max_response_bytes` of an answer, and connects only to addresses
//! the [`super::target::Policy`] allows, checked on every connection.

use std::{
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use sakuga_mesh::MeshError;

use super::target::{Policy, PolicyResolver};

/// What one POST got.
#[derive(Debug, Clone)]
pub struct Sent {
    /// HTTP status; 0 when no response came.
    pub status: u16,
    /// Why it failed; empty on a 2xx.
    pub error: String,
    /// Until the end of the response (or the failure).
    pub elapsed: Duration,
}

impl Sent {
    /// A 2xx.
    pub fn delivered(&self) -> bool {
        self.error.is_empty()
    }
}

/// The webhook HTTP client.
#[derive(Debug)]
pub struct Sender {
    http: reqwest::Client,
    policy: Arc<Policy>,
    max_response_bytes: u32,
}

/// The TLS client configuration for `https://` endpoints: `ca_file`'s certificates, else the
/// system's roots.
fn tls(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, MeshError> {
    use rustls_pki_types::{CertificateDer, pem::PemObject as _};
    let bad = |why: String| MeshError::Config(format!("webhooks.ca_file: {why}"));
    let mut roots = rustls::RootCertStore::empty();
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).map_err(|e| bad(format!("{}: {e}", path.display())))?;
        for cert in CertificateDer::pem_slice_iter(&pem) {
            roots.add(cert.map_err(|e| bad(e.to_string()))?).map_err(|e| bad(e.to_string()))?;
        }
    } else {
        // An empty store only means https:// endpoints fail to verify (each attempt says so);
        // http:// endpoints and the rest of the scheduler are unaffected.
        roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    }
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// `error` with its causes (reqwest's own text names only the URL).
fn chain(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut cause = std::error::Error::source(error);
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

impl Sender {
    /// A client that obeys `policy`.
    pub fn new(
        policy: Arc<Policy>,
        ca_file: Option<&Path>,
        max_response_bytes: u32,
    ) -> Result<Self, MeshError> {
        sakuga_mesh::tls::install_crypto_provider();
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(PolicyResolver(policy.clone()))
            .user_agent(concat!("Sakuga-Webhooks/", env!("CARGO_PKG_VERSION")))
            .tls_backend_preconfigured(tls(ca_file)?)
            .build()
            .map_err(|e| MeshError::Config(format!("webhooks: HTTP client: {e}")))?;
        Ok(Self { http, policy, max_response_bytes })
    }

    /// POSTs `body` to `url`, signed with `keys`, within `timeout`.
    pub async fn send(
        &self,
        url: &str,
        message_id: &str,
        body: &[u8],
        keys: &[Vec<u8>],
        timeout: Duration,
    ) -> Sent {
        let started = Instant::now();
        let failed = |status: u16, error: String| Sent { status, error, elapsed: started.elapsed() };
        // Addresses written as such never reach the resolver: checked here.
        let url = match self.policy.parse(url) {
            Ok(u) => u,
            Err(e) => return failed(0, format!("refused address: {e}")),
        };
        let now = chrono::Utc::now().timestamp();
        let request = self
            .http
            .post(url)
            .timeout(timeout)
            .header("content-type", "application/json")
            .header("webhook-id", message_id)
            .header("webhook-timestamp", now.to_string())
            .header("webhook-signature", super::secret::signature(keys, message_id, now, body))
            .body(body.to_vec());
        let mut resp = match request.send().await {
            Ok(r) => r,
            Err(e) if e.is_timeout() => {
                return failed(0, format!("timed out after {} ms", timeout.as_millis()));
            }
            Err(e) => return failed(0, chain(&e)),
        };
        let status = resp.status();
        // The answer is read (up to the cap) so the connection can be reused; a body past
        // the cap is cut off, not an error.
        let mut read = 0usize;
        let cap = self.max_response_bytes as usize;
        while read < cap {
            match resp.chunk().await {
                Ok(Some(chunk)) => read += chunk.len(),
                Err(e) if status.is_success() => {
                    return failed(status.as_u16(), format!("reading the answer: {}", chain(&e)));
                }
                Ok(None) | Err(_) => break,
            }
        }
        if status.is_success() {
            Sent { status: status.as_u16(), error: String::new(), elapsed: started.elapsed() }
        } else if status.is_redirection() {
            failed(status.as_u16(), format!("HTTP {status}: redirects are not followed"))
        } else {
            failed(status.as_u16(), format!("HTTP {status}"))
        }
    }
}
