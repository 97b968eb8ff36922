//! TLS to `https://` ComfyUI servers (typically behind a reverse proxy on another network):
//! one rustls client configuration, verifying against `comfyui.ca_file` or else the
//! system's roots, shared by the HTTP client and the WebSocket; and the socket's connect,
//! which sends the server's extra headers on the upgrade request.

use std::{io, path::Path, sync::Arc, time::Duration};

use reqwest::header::HeaderMap;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::{CertificateDer, ServerName, pem::PemObject as _};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
};
use tokio_rustls::TlsConnector;
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{self, client::IntoClientRequest as _, error::UrlError, protocol::WebSocketConfig},
};
use tracing::warn;

use super::error::{ComfyError, setting};

/// The setting every CA problem is reported under.
const CA_FIELD: &str = "comfyui.ca_file";

/// Reads a PEM bundle of CA certificates; an unreadable file, a malformed one or one
/// without a certificate is an error naming `comfyui.ca_file`.
pub(super) fn load_ca(path: &Path) -> Result<RootCertStore, ComfyError> {
    let shown = path.display();
    let pem = std::fs::read(path).map_err(|e| setting(CA_FIELD, format!("{shown}: {e}")))?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert =
            cert.map_err(|e| setting(CA_FIELD, format!("{shown}: not a PEM certificate bundle: {e}")))?;
        roots.add(cert).map_err(|e| setting(CA_FIELD, format!("{shown}: unusable CA certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(setting(CA_FIELD, format!("{shown}: holds no PEM certificate")));
    }
    Ok(roots)
}

/// The system's root certificates (the platform's trust store, as OpenSSL would find it).
fn system_roots() -> Result<RootCertStore, ComfyError> {
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        warn!(error = %e, "some system root certificates could not be read");
    }
    let mut roots = RootCertStore::empty();
    let (_, unusable) = roots.add_parsable_certificates(found.certs);
    if unusable > 0 {
        warn!(count = unusable, "system root certificates skipped as unusable");
    }
    if roots.is_empty() {
        return Err(setting(
            CA_FIELD,
            "unset, and no system root certificates were found; name the CA bundle of the ComfyUI servers",
        ));
    }
    Ok(roots)
}

/// The client configuration for `https://` servers: verified against the bundle at
/// `ca_file`, else against the system's roots; TLS 1.2 and 1.3 with the ring provider the
/// rest of the process uses.
pub(super) fn client_config(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, ComfyError> {
    let roots = match ca_file {
        Some(path) => load_ca(path)?,
        None => system_roots()?,
    };
    let config = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| setting(CA_FIELD, format!("TLS client configuration: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A plain or TLS byte stream under the WebSocket.
pub(super) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// The open socket.
pub(super) type Socket = WebSocketStream<Box<dyn Io>>;

/// How the socket to one server is opened: the extra headers of its upgrade request, the
/// TLS configuration for `wss://`, and how long one attempt may take.
#[derive(Debug, Clone)]
pub(super) struct Dial {
    /// Sent on the upgrade request (values marked sensitive).
    pub(super) headers: HeaderMap,
    /// For `wss://`.
    pub(super) tls: Option<Arc<ClientConfig>>,
    /// Longest one attempt (TCP, TLS and upgrade) may take; a silent remote host would
    /// otherwise hold the attempt until the system's TCP timeout.
    pub(super) timeout: Duration,
}

impl Dial {
    /// Opens the WebSocket at `url` (`ws://` or `wss://`). A refused upgrade is
    /// `Error::Http` (its status, e.g. 401); a failed verification an `Error::Io` naming
    /// rustls' reason (`UnknownIssuer`).
    pub(super) async fn connect(
        &self,
        url: &str,
        config: WebSocketConfig,
    ) -> Result<Socket, tungstenite::Error> {
        tokio::time::timeout(self.timeout, self.open(url, config)).await.unwrap_or_else(|_| {
            Err(tungstenite::Error::Io(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no open socket within {:?}", self.timeout),
            )))
        })
    }

    async fn open(&self, url: &str, config: WebSocketConfig) -> Result<Socket, tungstenite::Error> {
        let mut request = url.into_client_request()?;
        request.headers_mut().extend(self.headers.clone());
        let uri = request.uri();
        let secure = match uri.scheme_str() {
            Some("wss") => true,
            Some("ws") => false,
            _ => return Err(tungstenite::Error::Url(UrlError::UnsupportedUrlScheme)),
        };
        // IPv6 literals come bracketed in a URI.
        let host = uri
            .host()
            .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_owned())
            .ok_or(tungstenite::Error::Url(UrlError::NoHostName))?;
        let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
        let tcp = TcpStream::connect((host.as_str(), port)).await?;
        let stream: Box<dyn Io> = if secure {
            let tls = self.tls.as_ref().ok_or(tungstenite::Error::Url(UrlError::TlsFeatureNotEnabled))?;
            let name =
                ServerName::try_from(host).map_err(|_| tungstenite::Error::Url(UrlError::NoHostName))?;
            Box::new(TlsConnector::from(tls.clone()).connect(name, tcp).await?)
        } else {
            Box::new(tcp)
        };
        let (socket, _) = tokio_tungstenite::client_async_with_config(request, stream, Some(config)).await?;
        Ok(socket)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_server_that_never_answers_the_handshake_fails_the_attempt_in_time() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // Accepts, then says nothing (a stalled proxy or a black-holed route).
        let held = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((tcp, _)) = listener.accept().await {
                open.push(tcp);
            }
        });
        let tls = client_config(None).unwrap();
        let dial = Dial { headers: HeaderMap::new(), tls: Some(tls), timeout: Duration::from_millis(300) };
        for url in [format!("wss://{addr}/ws"), format!("ws://{addr}/ws")] {
            let started = std::time::Instant::now();
            let Err(err) = dial.connect(&url, WebSocketConfig::default()).await else {
                panic!("{url}: a socket opened on a silent server");
            };
            assert!(
                matches!(&err, tungstenite::Error::Io(e) if e.kind() == io::ErrorKind::TimedOut),
                "{url}: {err}"
            );
            assert!(started.elapsed() < Duration::from_secs(3), "{url}: {:?}", started.elapsed());
        }
        held.abort();
    }
}
