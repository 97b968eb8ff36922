//! A TLS-terminating reverse proxy with bearer-token auth, as operators put in front of a
//! remote ComfyUI: it listens on `127.0.0.1:0` with a certificate (for `127.0.0.1` and
//! `localhost`) from a CA of its own, generated at start, answers 401 to any request
//! without `Authorization: Bearer <token>` (plain HTTP and WebSocket upgrades alike) and
//! forwards the others to a plain-HTTP upstream, bytes both ways (so an upgraded socket
//! keeps flowing). Each connection carries one request (the proxy adds `connection: close`
//! upstream), so every request is checked, as with a real proxy.

use std::{
    fmt::Write as _,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
};

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};
use tokio_rustls::TlsAcceptor;

/// Longest request head the proxy reads.
const MAX_HEAD_BYTES: usize = 64 << 10;

/// One request as the proxy saw it (never the credential itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxiedRequest {
    /// Method.
    pub method: String,
    /// Path with query.
    pub path: String,
    /// Whether it asked for a WebSocket upgrade.
    pub upgrade: bool,
    /// Whether it carried the expected bearer token (and was forwarded).
    pub authorized: bool,
}

/// The running proxy; stops when dropped.
#[derive(Debug)]
pub struct TlsProxy {
    addr: SocketAddr,
    ca_pem: String,
    requests: Arc<Mutex<Vec<ProxiedRequest>>>,
    failed_handshakes: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TlsProxy {
    /// Starts a proxy to `upstream` (`http://host:port`) that lets through requests
    /// carrying `Authorization: Bearer <token>`.
    pub async fn start(upstream: &str, token: &str) -> anyhow::Result<Self> {
        sakuga_mesh::tls::install_crypto_provider();
        let upstream = upstream.strip_prefix("http://").unwrap_or(upstream).trim_end_matches('/').to_owned();
        let (ca_pem, config) = server_config()?;
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let requests = Arc::new(Mutex::new(Vec::new()));
        let failed_handshakes = Arc::new(AtomicUsize::new(0));
        let expected: Arc<str> = format!("Bearer {token}").into();
        let task = {
            let (requests, failed) = (requests.clone(), failed_handshakes.clone());
            tokio::spawn(async move {
                while let Ok((tcp, _)) = listener.accept().await {
                    let (acceptor, upstream, expected, requests, failed) = (
                        acceptor.clone(),
                        upstream.clone(),
                        expected.clone(),
                        requests.clone(),
                        failed.clone(),
                    );
                    tokio::spawn(async move {
                        match acceptor.accept(tcp).await {
                            Ok(tls) => {
                                let _ = serve(tls, &upstream, &expected, &requests).await;
                            }
                            Err(_) => {
                                failed.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                    });
                }
            })
        };
        Ok(Self { addr, ca_pem, requests, failed_handshakes, task })
    }

    /// `https://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The proxy's CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Writes the CA certificate to `dir/<name>` and returns the path.
    pub fn write_ca(&self, dir: &std::path::Path, name: &str) -> anyhow::Result<std::path::PathBuf> {
        let path = dir.join(name);
        std::fs::write(&path, &self.ca_pem)?;
        Ok(path)
    }

    /// Requests received so far, in order.
    pub fn requests(&self) -> Vec<ProxiedRequest> {
        self.requests.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// TLS handshakes that failed (a client that does not trust the CA aborts them).
    pub fn failed_handshakes(&self) -> usize {
        self.failed_handshakes.load(Ordering::SeqCst)
    }
}

/// A fresh CA and a leaf for `127.0.0.1` / `localhost` signed by it: (CA PEM, config).
fn server_config() -> anyhow::Result<(String, rustls::ServerConfig)> {
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // A name of its own: another proxy's CA must not look like this one's issuer.
    let name = format!("sakuga test proxy CA {}", uuid::Uuid::new_v4().simple());
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, name);
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec!["localhost".to_owned()])?;
    params.subject_alt_names.push(SanType::IpAddress(std::net::IpAddr::from([127, 0, 0, 1])));
    let leaf = params.signed_by(&key, &issuer)?;
    let config =
        rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone(), ca_cert.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )?;
    Ok((ca_cert.pem(), config))
}

/// Reads up to the end of the request head: (head without its blank line, bytes after it).
async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> anyhow::Result<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0_u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            buf.truncate(end);
            return Ok((String::from_utf8(buf)?, rest));
        }
        anyhow::ensure!(buf.len() <= MAX_HEAD_BYTES, "request head too large");
        let n = stream.read(&mut chunk).await?;
        anyhow::ensure!(n > 0, "connection closed before the request head ended");
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    mut client: S,
    upstream: &str,
    expected: &str,
    requests: &Mutex<Vec<ProxiedRequest>>,
) -> anyhow::Result<()> {
    let (head, rest) = read_head(&mut client).await?;
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default().to_owned();
    let mut parts = request_line.split(' ');
    let (method, path) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    let headers: Vec<(&str, &str)> =
        lines.filter_map(|l| l.split_once(':')).map(|(n, v)| (n.trim(), v.trim())).collect();
    let has = |name: &str, want: &dyn Fn(&str) -> bool| {
        headers.iter().any(|(n, v)| n.eq_ignore_ascii_case(name) && want(v))
    };
    let authorized = has("authorization", &|v| v == expected);
    let upgrade = has("upgrade", &|v| v.eq_ignore_ascii_case("websocket"));
    requests.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(ProxiedRequest {
        method: method.to_owned(),
        path: path.to_owned(),
        upgrade,
        authorized,
    });
    if !authorized {
        let body = "missing or wrong bearer token\n";
        let answer = format!(
            "HTTP/1.1 401 Unauthorized\r\nwww-authenticate: Bearer\r\ncontent-type: text/plain\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        client.write_all(answer.as_bytes()).await?;
        client.shutdown().await?;
        return Ok(());
    }
    // The credential is for the proxy; the upstream never sees it.
    let mut forwarded = format!("{request_line}\r\n");
    for (n, v) in &headers {
        let hop = ["connection", "keep-alive", "proxy-connection"].iter().any(|h| n.eq_ignore_ascii_case(h));
        if n.eq_ignore_ascii_case("authorization") || (hop && !upgrade) {
            continue;
        }
        let _ = write!(forwarded, "{n}: {v}\r\n");
    }
    if !upgrade {
        forwarded.push_str("connection: close\r\n");
    }
    forwarded.push_str("\r\n");
    let mut up = TcpStream::connect(upstream).await?;
    up.write_all(forwarded.as_bytes()).await?;
    up.write_all(&rest).await?;
    tokio::io::copy_bidirectional(&mut client, &mut up).await?;
    Ok(())
}
