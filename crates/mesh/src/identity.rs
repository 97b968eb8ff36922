//! Identity from the verified peer certificate of the mTLS connection. Two kinds, told
//! apart by the shape of the certificate's SPIFFE URI:
//!
//! - a **service**: `spiffe://sakuga/<service>` with `<service>` one of [`MESH_SERVICES`],
//!   issued only by that service's own PKI role;
//! - a **person** (or script): `spiffe://sakuga/user/<name>`, issued by the client-only
//!   role. A person's certificate only opens the TLS connection; what a person may do is
//!   decided by their bearer token, and no service-only RPC accepts it.
//!
//! Any other URI (another trust domain, an unknown service name, nested paths) is no
//! mesh identity at all.

use tonic::Request;
use x509_parser::{extensions::GeneralName, prelude::FromDer as _};

/// Trust domain of the mesh.
pub const TRUST_DOMAIN: &str = "sakuga";

/// Services of the mesh: the only names a service identity may carry.
pub const MESH_SERVICES: &[&str] = &["auth", "scheduler", "organizer", "generator"];

/// `spiffe://sakuga/<service>`.
pub fn spiffe_id(service: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/{service}")
}

/// `spiffe://sakuga/user/<name>`.
pub fn person_spiffe_id(name: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/user/{name}")
}

/// The caller's identity as proven by its certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerIdentity {
    /// A mesh service (`generator`, `scheduler`, ...).
    Service(String),
    /// A person's or script's client certificate (`operator`, `alice`).
    Person(String),
}

impl PeerIdentity {
    /// The SPIFFE URI.
    pub fn uri(&self) -> String {
        match self {
            Self::Service(name) => spiffe_id(name),
            Self::Person(name) => person_spiffe_id(name),
        }
    }

    /// The service name, for service identities only.
    pub fn service(&self) -> Option<&str> {
        match self {
            Self::Service(name) => Some(name),
            Self::Person(_) => None,
        }
    }
}

/// The SPIFFE URIs (`spiffe://…`) among the URI SANs of a DER certificate.
pub fn spiffe_uris(der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::certificate::X509Certificate::from_der(der) else { return Vec::new() };
    let Ok(Some(san)) = cert.subject_alternative_name() else { return Vec::new() };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) if uri.starts_with("spiffe://") => Some((*uri).to_owned()),
            _ => None,
        })
        .collect()
}

/// Reads the identity from the URI SANs of a DER certificate. A certificate carrying more
/// than one mesh identity is refused as ambiguous.
pub fn identity_from_der(der: &[u8]) -> Option<PeerIdentity> {
    let found: Vec<PeerIdentity> = spiffe_uris(der).iter().filter_map(|uri| parse(uri)).collect();
    match found.as_slice() {
        [one] => Some(one.clone()),
        _ => None,
    }
}

/// Parses one SPIFFE URI of this trust domain.
pub fn parse(uri: &str) -> Option<PeerIdentity> {
    let rest = uri.strip_prefix("spiffe://")?.strip_prefix(TRUST_DOMAIN)?.strip_prefix('/')?;
    let valid = |s: &str| {
        !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    };
    match rest.split_once('/') {
        Some(("user", name)) if valid(name) => Some(PeerIdentity::Person(name.to_owned())),
        None if MESH_SERVICES.contains(&rest) => Some(PeerIdentity::Service(rest.to_owned())),
        _ => None,
    }
}

/// The verified peer identity of a request (the leaf certificate's SPIFFE URI).
pub fn peer_identity<T>(req: &Request<T>) -> Option<PeerIdentity> {
    let certs = req.peer_certs()?;
    certs.first().and_then(|leaf| identity_from_der(leaf.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_and_people_are_told_apart() {
        assert_eq!(parse("spiffe://sakuga/generator"), Some(PeerIdentity::Service("generator".into())));
        assert_eq!(parse("spiffe://sakuga/user/alice"), Some(PeerIdentity::Person("alice".into())));
        assert_eq!(
            parse("spiffe://sakuga/user/generator").and_then(|p| p.service().map(str::to_owned)),
            None
        );
        for bad in [
            "spiffe://sakuga/operator",
            "spiffe://sakuga/user/",
            "spiffe://sakuga/user/a/b",
            "spiffe://other/generator",
            "spiffe://sakugax/generator",
            "spiffe://sakuga/generator/x",
            "https://sakuga/generator",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }
}
