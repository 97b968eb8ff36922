//! Service identity: every mesh certificate carries a URI SAN `spiffe://sakuga/<service>`.
//! Callers that are services are authorized by that identity, read from the verified peer
//! certificate of the mTLS connection.

use tonic::Request;
use x509_parser::{extensions::GeneralName, prelude::FromDer as _};

/// Trust domain of the mesh.
pub const TRUST_DOMAIN: &str = "sakuga";

/// `spiffe://sakuga/<service>`.
pub fn spiffe_id(service: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/{service}")
}

/// The caller's identity as proven by its certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The service name after `spiffe://sakuga/` (`generator`, `operator`, ...).
    pub name: String,
}

impl PeerIdentity {
    /// `spiffe://sakuga/<name>`.
    pub fn uri(&self) -> String {
        spiffe_id(&self.name)
    }
}

/// Reads the identity from the URI SANs of a DER certificate.
pub fn identity_from_der(der: &[u8]) -> Option<PeerIdentity> {
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    let prefix = format!("spiffe://{TRUST_DOMAIN}/");
    san.value.general_names.iter().find_map(|name| match name {
        GeneralName::URI(uri) => uri
            .strip_prefix(&prefix)
            .filter(|rest| !rest.is_empty() && !rest.contains('/'))
            .map(|rest| PeerIdentity { name: rest.to_owned() }),
        _ => None,
    })
}

/// The verified peer identity of a request (the leaf certificate's SPIFFE URI).
pub fn peer_identity<T>(req: &Request<T>) -> Option<PeerIdentity> {
    let certs = req.peer_certs()?;
    certs.first().and_then(|leaf| identity_from_der(leaf.as_ref()))
}
