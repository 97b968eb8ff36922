//! mTLS on every hop with rustls (ring provider): a server config that requires a client
//! certificate from the mesh CA, a client connector that presents this service's
//! certificate, and certificate rotation without a restart.
//!
//! tonic's `ServerTlsConfig`/`ClientTlsConfig` hold a fixed identity, so both sides use our
//! own rustls configs whose certificate resolvers read the current key pair: a renewed
//! certificate is used by the next handshake while open connections keep working.

#[cfg(feature = "server")]
use std::time::{SystemTime, UNIX_EPOCH};
use std::{
    io,
    sync::{Arc, RwLock},
    time::Duration,
};

use hyper_util::rt::TokioIo;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, OtherError, RootCertStore, ServerConfig,
    SignatureScheme,
    client::{
        ResolvesClientCert, WebPkiServerVerifier,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    },
    crypto::CryptoProvider,
    server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier},
    sign::CertifiedKey,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime, pem::PemObject as _};
#[cfg(feature = "server")]
use secrecy::ExposeSecret as _;
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};
#[cfg(feature = "server")]
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};
#[cfg(feature = "server")]
use tracing::{debug, info, warn};

use crate::error::MeshError;
#[cfg(feature = "server")]
use crate::{
    config::TlsConfig,
    retry::Backoff,
    vault::{IssuedCert, Vault},
};

/// Installs ring as the process-wide rustls provider. Call first thing in `main`;
/// calling it again is harmless.
pub fn install_crypto_provider() {
    // Err means a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The key pair currently in use; shared by the server and client resolvers.
#[derive(Debug)]
struct CurrentKey(RwLock<Arc<CertifiedKey>>);

impl CurrentKey {
    fn get(&self) -> Arc<CertifiedKey> {
        // A poisoned lock still holds a valid key: keep serving it.
        match self.0.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    #[cfg(feature = "server")]
    fn set(&self, key: Arc<CertifiedKey>) {
        match self.0.write() {
            Ok(mut guard) => *guard = key,
            Err(poisoned) => *poisoned.into_inner() = key,
        }
    }
}

impl ResolvesServerCert for CurrentKey {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }
}

impl ResolvesClientCert for CurrentKey {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Parses a PEM chain and key into a rustls key pair.
pub fn certified_key(chain_pem: &str, key_pem: &str) -> Result<CertifiedKey, MeshError> {
    let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| MeshError::Tls(format!("certificate chain: {e}")))?;
    if chain.is_empty() {
        return Err(MeshError::Tls("certificate chain: no certificate in PEM".to_owned()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| MeshError::Tls(format!("private key: {e}")))?;
    CertifiedKey::from_der(chain, key, &provider()).map_err(|e| MeshError::Tls(format!("key pair: {e}")))
}

/// Parses PEM CA certificates into a root store.
pub fn root_store(ca_pem: &str) -> Result<RootCertStore, MeshError> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let cert = cert.map_err(|e| MeshError::Tls(format!("ca certificate: {e}")))?;
        roots.add(cert).map_err(|e| MeshError::Tls(format!("ca certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(MeshError::Tls("ca: no certificate in PEM".to_owned()));
    }
    Ok(roots)
}

/// Verifies a server as WebPKI does (mesh CA, name, validity), then pins its identity: the
/// leaf must carry exactly one SPIFFE URI, the one of the service the client meant to
/// call. Any certificate of the mesh CA passes WebPKI for `localhost`, so without the pin
/// a service could answer for another.
#[derive(Debug)]
struct PinnedServerVerifier {
    inner: Arc<WebPkiServerVerifier>,
    expected: String,
}

impl ServerCertVerifier for PinnedServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified =
            self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)?;
        let found = crate::identity::spiffe_uris(end_entity.as_ref());
        if found.len() == 1 && found[0] == self.expected {
            return Ok(verified);
        }
        let named = if found.is_empty() { "no spiffe id".to_owned() } else { found.join(", ") };
        Err(rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(MeshError::Tls(
            format!("server certificate names {named}, expected {}", self.expected),
        ))))))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// This service's mTLS material: its current certificate and the mesh CA.
#[derive(Debug)]
pub struct MeshTls {
    #[cfg_attr(
        not(feature = "server"),
        expect(dead_code, reason = "named in the logs of certificate issue and renewal, a server's")
    )]
    service: String,
    current: Arc<CurrentKey>,
    roots: Arc<RootCertStore>,
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    expires_at: RwLock<u64>,
}

impl MeshTls {
    /// Builds the configs from PEM material. `service` names this service in logs.
    pub fn from_pem(service: &str, chain_pem: &str, key_pem: &str, ca_pem: &str) -> Result<Self, MeshError> {
        let current = Arc::new(CurrentKey(RwLock::new(Arc::new(certified_key(chain_pem, key_pem)?))));
        let roots = Arc::new(root_store(ca_pem)?);
        let provider = provider();

        let client_verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| MeshError::Tls(format!("client verifier: {e}")))?;
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| MeshError::Tls(e.to_string()))?
            .with_client_cert_verifier(client_verifier)
            .with_cert_resolver(current.clone());
        server.alpn_protocols = vec![b"h2".to_vec()];

        let server_verifier = WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| MeshError::Tls(format!("server verifier: {e}")))?;
        let mut client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| MeshError::Tls(e.to_string()))?
            .with_webpki_verifier(server_verifier)
            .with_client_cert_resolver(current.clone());
        client.alpn_protocols = vec![b"h2".to_vec()];

        Ok(Self {
            service: service.to_owned(),
            current,
            roots,
            server: Arc::new(server),
            client: Arc::new(client),
            expires_at: RwLock::new(0),
        })
    }

    /// Logs in to Vault and issues this service's certificate: the first thing every
    /// service does. The Vault client is kept for secrets and certificate renewal.
    #[cfg(feature = "server")]
    pub async fn bootstrap(
        service: &str,
        vault_cfg: &crate::config::VaultConfig,
        tls_cfg: &TlsConfig,
    ) -> Result<(Vault, Arc<Self>), MeshError> {
        let vault = Vault::connect(vault_cfg).await?;
        let tls = Arc::new(Self::issue(&vault, service, tls_cfg).await?);
        Ok((vault, tls))
    }

    /// Issues this service's certificate from Vault and builds the configs.
    #[cfg(feature = "server")]
    pub async fn issue(vault: &Vault, service: &str, cfg: &TlsConfig) -> Result<Self, MeshError> {
        let cert = vault.issue_certificate(service, &cfg.dns_names, &cfg.ip_addresses).await?;
        let tls = Self::from_pem(service, &cert.chain_pem, cert.key_pem.expose_secret(), &cert.ca_pem)?;
        tls.note_expiry(cert.expires_at);
        info!(service, serial = %cert.serial, expires_at = cert.expires_at, "service certificate issued");
        Ok(tls)
    }

    #[cfg(feature = "server")]
    fn note_expiry(&self, expires_at: u64) {
        match self.expires_at.write() {
            Ok(mut g) => *g = expires_at,
            Err(p) => *p.into_inner() = expires_at,
        }
    }

    /// Seconds since the epoch when the current certificate expires (0 when unknown).
    pub fn expires_at(&self) -> u64 {
        match self.expires_at.read() {
            Ok(g) => *g,
            Err(p) => *p.into_inner(),
        }
    }

    /// Replaces the certificate; the next handshake (either side) uses it.
    #[cfg(feature = "server")]
    pub fn rotate(&self, cert: &IssuedCert) -> Result<(), MeshError> {
        let key = certified_key(&cert.chain_pem, cert.key_pem.expose_secret())?;
        self.current.set(Arc::new(key));
        self.note_expiry(cert.expires_at);
        info!(service = %self.service, serial = %cert.serial, expires_at = cert.expires_at, "service certificate rotated");
        Ok(())
    }

    /// The DER leaf certificate in use now.
    pub fn current_leaf(&self) -> CertificateDer<'static> {
        self.current.get().cert[0].clone()
    }

    /// A TLS acceptor for servers.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.server.clone())
    }

    /// The client config (presents this service's certificate, trusts the mesh CA).
    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.client.clone()
    }

    /// A client config that presents this service's certificate and accepts only a server
    /// certificate of the mesh CA carrying exactly `spiffe://sakuga/<peer>`.
    pub fn client_config_for(&self, peer: &str) -> Result<Arc<ClientConfig>, MeshError> {
        let provider = provider();
        let inner = WebPkiServerVerifier::builder_with_provider(self.roots.clone(), provider.clone())
            .build()
            .map_err(|e| MeshError::Tls(format!("server verifier: {e}")))?;
        let verifier = PinnedServerVerifier { inner, expected: crate::identity::spiffe_id(peer) };
        let mut client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| MeshError::Tls(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_cert_resolver(self.current.clone());
        client.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(client))
    }

    /// A lazily connecting channel to `addr` (`host:port`). The server certificate must
    /// carry `host` as a DNS or IP SAN. For people's tools, which may call any service;
    /// services call each other with [`MeshTls::channel_to`].
    pub fn channel(&self, addr: &str) -> Result<Channel, MeshError> {
        channel_with(self.client.clone(), addr)
    }

    /// A lazily connecting channel to the service `peer` at `addr`: the handshake fails
    /// unless the server's certificate carries `host` and exactly `spiffe://sakuga/<peer>`.
    pub fn channel_to(&self, addr: &str, peer: &str) -> Result<Channel, MeshError> {
        channel_with(self.client_config_for(peer)?, addr)
    }

    /// Re-issues the certificate at two thirds of its lifetime until `shutdown`. Failures
    /// are retried with backoff; the old certificate stays in use meanwhile.
    #[cfg(feature = "server")]
    pub fn spawn_renewal(
        self: &Arc<Self>,
        mut vault: Vault,
        cfg: TlsConfig,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let tls = self.clone();
        tokio::spawn(async move {
            let mut retry = Backoff::new(Duration::from_secs(1), Duration::from_mins(1));
            loop {
                let wait = renew_after(tls.expires_at(), now_secs());
                debug!(service = %tls.service, wait_secs = wait.as_secs(), "next certificate renewal");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(wait) => {}
                }
                let result = async {
                    vault.relogin().await?;
                    let cert =
                        vault.issue_certificate(&tls.service, &cfg.dns_names, &cfg.ip_addresses).await?;
                    tls.rotate(&cert)
                }
                .await;
                match result {
                    Ok(()) => retry.reset(),
                    Err(e) => {
                        warn!(service = %tls.service, error = %e, "certificate renewal failed, retrying");
                        if !retry.wait(&shutdown).await {
                            return;
                        }
                    }
                }
            }
        })
    }
}

#[cfg(feature = "server")]
fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// How long to wait before renewing a certificate expiring at `expires_at`: until two
/// thirds of the remaining lifetime have passed (at least one second).
#[cfg(feature = "server")]
fn renew_after(expires_at: u64, now: u64) -> Duration {
    let remaining = expires_at.saturating_sub(now);
    Duration::from_secs((remaining * 2 / 3).max(1))
}

/// A lazily connecting channel over our own rustls client config.
pub fn channel_with(config: Arc<ClientConfig>, addr: &str) -> Result<Channel, MeshError> {
    let (host, _port) = split_host_port(addr)?;
    let server_name = ServerName::try_from(host.to_owned())
        .map_err(|e| MeshError::Config(format!("address {addr:?}: bad host name: {e}")))?;
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| MeshError::Config(format!("address {addr:?}: {e}")))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(15))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true);
    let addr = addr.to_owned();
    let connector = tower::service_fn(move |_uri: http::Uri| {
        let connector = TlsConnector::from(config.clone());
        let server_name = server_name.clone();
        let addr = addr.clone();
        async move {
            let tcp = TcpStream::connect(&addr).await?;
            tcp.set_nodelay(true)?;
            let tls = connector.connect(server_name, tcp).await?;
            Ok::<_, io::Error>(TokioIo::new(tls))
        }
    });
    Ok(endpoint.connect_with_connector_lazy(connector))
}

fn split_host_port(addr: &str) -> Result<(&str, u16), MeshError> {
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| MeshError::Config(format!("address {addr:?}: expected host:port")))?;
    let port = port.parse().map_err(|_| MeshError::Config(format!("address {addr:?}: bad port")))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(MeshError::Config(format!("address {addr:?}: empty host")));
    }
    Ok((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "server")]
    #[test]
    fn renewal_waits_two_thirds_of_what_is_left() {
        assert_eq!(renew_after(1_000 + 90, 1_000), Duration::from_mins(1));
        assert_eq!(renew_after(10, 1_000), Duration::from_secs(1));
    }

    #[test]
    fn host_port_parsing_names_the_problem() {
        assert_eq!(split_host_port("127.0.0.1:50052").unwrap(), ("127.0.0.1", 50052));
        assert_eq!(split_host_port("[::1]:1").unwrap(), ("::1", 1));
        assert!(split_host_port("nohost").unwrap_err().to_string().contains("host:port"));
    }
}
