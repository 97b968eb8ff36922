//! Why a call was refused, as a typed value. On the wire a refusal is a `tonic::Status`
//! with the right code, a message for people, and a `google.rpc.ErrorInfo` detail whose
//! `reason` (stable, `SCREAMING_SNAKE_CASE`) and `domain` ([`DOMAIN`]) are for programs:
//! the CLI's exit codes and the guard's metrics read the reason, never the message.

use std::{collections::HashMap, time::Duration};

use tonic::{Code, Status, metadata::MetadataValue};
use tonic_types::{ErrorDetails, StatusExt as _};

use crate::ratelimit::Class;

/// `ErrorInfo.domain` of every refusal the mesh gives.
pub const DOMAIN: &str = "sakuga.dev";

/// A refusal of the guard, or of a service's own ceiling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The path is not in the authorization table.
    UnknownMethod,
    /// No `authorization` header where a person's credential is required.
    MissingCredentials,
    /// The `authorization` header is not `Bearer <credential>`.
    MalformedAuthorization,
    /// The bearer credential is not a well-formed token.
    MalformedToken,
    /// The token is signed with an algorithm other than EdDSA, or names no key.
    TokenAlgorithm,
    /// The token names a signing key this service does not know.
    UnknownSigningKey,
    /// The verification keys are not loaded yet (start-up).
    KeysNotLoaded,
    /// The token has expired.
    TokenExpired,
    /// Wrong audience, issuer or subject, or a bad signature.
    TokenInvalid,
    /// The token, its family or all of its user's tokens were revoked.
    TokenRevoked,
    /// The revocation list cannot be read and the caller is an admin (fails closed).
    RevocationUnavailable,
    /// Unknown, expired or revoked API key.
    ApiKeyInvalid,
    /// This service has no way to check this kind of credential.
    CredentialsNotAccepted,
    /// The credential store (database) cannot be read.
    CredentialStoreUnavailable,
    /// The client certificate carries no mesh identity where one is required.
    NoMeshIdentity,
    /// The certificate's identity may not call this method.
    WrongIdentity {
        /// The identity presented (`spiffe://sakuga/...`).
        presented: String,
    },
    /// Only people (tokens or API keys) may call this method.
    PersonRequired,
    /// Only admins may call this method.
    AdminRequired,
    /// A rate limit of `class` refused the call.
    RateLimited {
        /// Which limit.
        class: Class,
        /// When to retry.
        retry_after: Duration,
    },
    /// The rate limiter cannot decide (Redis down) and this class fails closed.
    LimiterUnavailable,
    /// A resource ceiling of the service (streams, watchers, uploads, blocking work) is full.
    Ceiling {
        /// The ceiling's name (`watchers_per_user`); a metric label too.
        name: &'static str,
        /// What people read.
        message: String,
        /// When to retry, when waiting helps.
        retry_after: Option<Duration>,
    },
}

impl Refusal {
    /// The gRPC code.
    pub fn code(&self) -> Code {
        match self {
            Self::UnknownMethod => Code::Unimplemented,
            Self::MissingCredentials
            | Self::MalformedAuthorization
            | Self::MalformedToken
            | Self::TokenAlgorithm
            | Self::UnknownSigningKey
            | Self::TokenExpired
            | Self::TokenInvalid
            | Self::TokenRevoked
            | Self::ApiKeyInvalid
            | Self::CredentialsNotAccepted
            | Self::NoMeshIdentity => Code::Unauthenticated,
            Self::KeysNotLoaded
            | Self::RevocationUnavailable
            | Self::CredentialStoreUnavailable
            | Self::LimiterUnavailable => Code::Unavailable,
            Self::WrongIdentity { .. } | Self::PersonRequired | Self::AdminRequired => Code::PermissionDenied,
            Self::RateLimited { .. } | Self::Ceiling { .. } => Code::ResourceExhausted,
        }
    }

    /// The stable reason code (`ErrorInfo.reason`, and the metrics' `reason` label).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::UnknownMethod => "UNKNOWN_METHOD",
            Self::MissingCredentials => "CREDENTIALS_MISSING",
            Self::MalformedAuthorization => "AUTHORIZATION_MALFORMED",
            Self::MalformedToken => "TOKEN_MALFORMED",
            Self::TokenAlgorithm => "TOKEN_ALGORITHM",
            Self::UnknownSigningKey => "TOKEN_KEY_UNKNOWN",
            Self::KeysNotLoaded => "KEYS_NOT_LOADED",
            Self::TokenExpired => "TOKEN_EXPIRED",
            Self::TokenInvalid => "TOKEN_INVALID",
            Self::TokenRevoked => "TOKEN_REVOKED",
            Self::RevocationUnavailable => "REVOCATION_UNAVAILABLE",
            Self::ApiKeyInvalid => "API_KEY_INVALID",
            Self::CredentialsNotAccepted => "CREDENTIALS_NOT_ACCEPTED",
            Self::CredentialStoreUnavailable => "CREDENTIAL_STORE_UNAVAILABLE",
            Self::NoMeshIdentity => "IDENTITY_MISSING",
            Self::WrongIdentity { .. } => "IDENTITY_FORBIDDEN",
            Self::PersonRequired => "PERSON_REQUIRED",
            Self::AdminRequired => "ADMIN_REQUIRED",
            Self::RateLimited { .. } => "RATE_LIMITED",
            Self::LimiterUnavailable => "RATE_LIMITER_UNAVAILABLE",
            Self::Ceiling { .. } => "RESOURCE_CEILING",
        }
    }

    /// What people read.
    pub fn message(&self) -> String {
        match self {
            Self::UnknownMethod => "unknown method".to_owned(),
            Self::MissingCredentials => {
                "missing credentials: send `authorization: Bearer <token or API key>`".to_owned()
            }
            Self::MalformedAuthorization => "authorization must be `Bearer <credential>`".to_owned(),
            Self::MalformedToken => "malformed token".to_owned(),
            Self::TokenAlgorithm => "token algorithm or key id not accepted".to_owned(),
            Self::UnknownSigningKey => "token signed by an unknown key".to_owned(),
            Self::KeysNotLoaded => "token verification keys not loaded yet, retry".to_owned(),
            Self::TokenExpired => "token expired".to_owned(),
            Self::TokenInvalid => "invalid token".to_owned(),
            Self::TokenRevoked => "token revoked".to_owned(),
            Self::RevocationUnavailable => {
                "revocation list unavailable: admin credentials are refused until it is back, retry later"
                    .to_owned()
            }
            Self::ApiKeyInvalid => "unknown, expired or revoked API key".to_owned(),
            Self::CredentialsNotAccepted => "this service does not accept this kind of credential".to_owned(),
            Self::CredentialStoreUnavailable => "database unavailable, retry later".to_owned(),
            Self::NoMeshIdentity => "no mesh identity in the client certificate".to_owned(),
            Self::WrongIdentity { presented } => format!("{presented} may not call this method"),
            Self::PersonRequired => "only people (tokens or API keys) may call this method".to_owned(),
            Self::AdminRequired => "admin role required".to_owned(),
            Self::RateLimited { class, retry_after } => {
                format!("rate limit exceeded for {class}; retry after {} s", retry_secs(*retry_after))
            }
            Self::LimiterUnavailable => "rate limiter unavailable, retry later".to_owned(),
            Self::Ceiling { message, .. } => message.clone(),
        }
    }

    /// When to retry, if waiting helps.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited { retry_after, .. } => Some(*retry_after),
            Self::Ceiling { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The status on the wire: code, message, `ErrorInfo` and `retry-after` (whole seconds,
    /// rounded up, at least 1) where waiting helps.
    pub fn to_status(&self) -> Status {
        let mut metadata = HashMap::new();
        match self {
            Self::RateLimited { class, .. } => {
                metadata.insert("class".to_owned(), class.as_str().to_owned());
            }
            Self::Ceiling { name, .. } => {
                metadata.insert("ceiling".to_owned(), (*name).to_owned());
            }
            _ => {}
        }
        let details = ErrorDetails::with_error_info(self.reason(), DOMAIN, metadata);
        let mut status = Status::with_error_details(self.code(), self.message(), details);
        if let Some(after) = self.retry_after() {
            status.metadata_mut().insert("retry-after", MetadataValue::from(retry_secs(after)));
        }
        status
    }
}

impl From<Refusal> for Status {
    fn from(r: Refusal) -> Self {
        r.to_status()
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message())
    }
}

/// Whole seconds, rounded up, at least 1.
fn retry_secs(d: Duration) -> u64 {
    (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
}

/// The refusal status of a full ceiling (`RESOURCE_EXHAUSTED`, reason `RESOURCE_CEILING`,
/// `ErrorInfo.metadata.ceiling = name`).
pub fn ceiling(name: &'static str, message: impl Into<String>, retry_after: Option<Duration>) -> Status {
    Refusal::Ceiling { name, message: message.into(), retry_after }.to_status()
}

/// `ErrorInfo.reason` of a write refused because the store is full (`RESOURCE_EXHAUSTED`).
pub const STORAGE_FULL: &str = "STORAGE_FULL";
/// `ErrorInfo.reason` of a call that failed because the store cannot be reached or fails
/// (`UNAVAILABLE`).
pub const STORAGE_UNAVAILABLE: &str = "STORAGE_UNAVAILABLE";
/// `ErrorInfo.reason` of a `GetDownloadUrl` refused because the organizer's store has no
/// URLs (the local backend; `FAILED_PRECONDITION`): read the bytes with `ReadFile` instead.
pub const DOWNLOAD_URLS_UNSUPPORTED: &str = "DOWNLOAD_URLS_UNSUPPORTED";

/// A failure of the platform under a call (storage full, a store down), not a refusal of
/// the caller: `code`, a message for people and an `ErrorInfo` whose `reason` programs
/// tell it apart by.
pub fn fault(code: Code, reason: &'static str, message: impl Into<String>) -> Status {
    let details = ErrorDetails::with_error_info(reason, DOMAIN, HashMap::new());
    Status::with_error_details(code, message, details)
}

/// The `ErrorInfo.reason` of a status from the mesh, if it carries one of ours.
pub fn reason_of(status: &Status) -> Option<String> {
    status.get_error_details().error_info().filter(|i| i.domain == DOMAIN).map(|i| i.reason.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_travel_as_error_info() {
        let status = Refusal::TokenExpired.to_status();
        assert_eq!(status.code(), Code::Unauthenticated);
        assert_eq!(reason_of(&status).as_deref(), Some("TOKEN_EXPIRED"));
        // Through the wire encoding and back.
        let http = status.into_http::<tonic::body::Body>();
        let back = Status::from_header_map(http.headers()).unwrap();
        assert_eq!(reason_of(&back).as_deref(), Some("TOKEN_EXPIRED"));
        assert_eq!(back.message(), "token expired");
    }

    #[test]
    fn faults_carry_their_reason() {
        let status = fault(Code::ResourceExhausted, "STORAGE_FULL", "storage full");
        let http = status.into_http::<tonic::body::Body>();
        let back = Status::from_header_map(http.headers()).unwrap();
        assert_eq!(back.code(), Code::ResourceExhausted);
        assert_eq!(reason_of(&back).as_deref(), Some("STORAGE_FULL"));
    }

    #[test]
    fn rate_limits_say_when_to_retry() {
        let status = Refusal::RateLimited { class: Class::Submit, retry_after: Duration::from_millis(1500) }
            .to_status();
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(status.metadata().get("retry-after").unwrap(), "2");
        assert_eq!(reason_of(&status).as_deref(), Some("RATE_LIMITED"));
        for (wait, secs) in
            [(Duration::from_millis(1), 1), (Duration::from_secs(2), 2), (Duration::from_millis(2001), 3)]
        {
            let status = Refusal::RateLimited { class: Class::Submit, retry_after: wait }.to_status();
            let value: u64 = status.metadata().get("retry-after").unwrap().to_str().unwrap().parse().unwrap();
            assert_eq!(value, secs);
            assert_eq!(status.message(), format!("rate limit exceeded for submit; retry after {secs} s"));
        }
        let full = ceiling("watchers_per_user", "too many watchers", None);
        assert!(full.metadata().get("retry-after").is_none());
        let info = full.get_error_details().error_info().cloned().unwrap();
        assert_eq!(info.metadata.get("ceiling").map(String::as_str), Some("watchers_per_user"));
    }
}
