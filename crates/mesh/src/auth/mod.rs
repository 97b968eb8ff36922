//! The security perimeter every server shares, as a stack of tower layers that run before
//! any handler (see [`Guard`]):
//!
//! 1. [`context`]: request id, the caller's trace context, the peer's certificate
//!    identity and the method's row of the authorization table ([`rules`]); one span per
//!    call, named by the table (`unknown` for any other path);
//! 2. [`observe`]: RPC counts and latency by method and code, refusals by reason;
//! 3. [`audited`]: the audit log ([`audit`]), refusals aggregated;
//! 4. [`authn`]: who is calling: a person by bearer token or API key ([`verify`]), a
//!    service by its certificate;
//! 5. [`authz`]: the table's access rule for that caller;
//! 6. [`limit`]: rate limits per caller, role and class.
//!
//! Each refusal is a typed [`Refusal`] carried on the wire as `google.rpc.ErrorInfo`.
//! Handlers read who is calling from the request extensions ([`caller`]); they never
//! parse credentials themselves.

#[cfg(feature = "server")]
mod audit;
#[cfg(feature = "server")]
mod audited;
#[cfg(feature = "server")]
mod authn;
#[cfg(feature = "server")]
mod authz;
#[cfg(feature = "server")]
mod context;
#[cfg(feature = "server")]
mod guard;
#[cfg(feature = "server")]
mod layer;
#[cfg(feature = "server")]
mod limit;
#[cfg(feature = "server")]
mod observe;
mod refusal;
pub mod rules;
#[cfg(feature = "server")]
mod verify;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tonic::Status;
use uuid::Uuid;

#[cfg(feature = "server")]
pub use audit::{Audit, AuditEvent, RefusalAudit};
#[cfg(feature = "server")]
pub use audited::{AuditCommitted, AuditRow, Audited, audit_committed, audit_row};
#[cfg(feature = "server")]
pub use authn::Authn;
#[cfg(feature = "server")]
pub use authz::Authz;
#[cfg(feature = "server")]
pub use context::{Call, ContextLayer, WithContext};
#[cfg(feature = "server")]
pub use guard::{Guard, Guarded, REFUSAL_AUDIT_WINDOW};
#[cfg(feature = "server")]
pub use layer::{Step, StepLayer, Stepped};
#[cfg(feature = "server")]
pub use limit::Limit;
#[cfg(feature = "server")]
pub use observe::Observe;
pub use refusal::{
    DOMAIN, DOWNLOAD_URLS_UNSUPPORTED, Refusal, STORAGE_FULL, STORAGE_UNAVAILABLE, ceiling, fault, reason_of,
};
pub use rules::{Access, RULES, Rule, rule_for};
#[cfg(feature = "server")]
pub use verify::{Claims, KeySet, KeysError, Verifier, keyset_from_jwks};

pub use crate::identity::MESH_SERVICES;
#[cfg(feature = "server")]
use crate::redis::Redis;

/// Issuer (`iss`) of access tokens.
pub const ISSUER: &str = "sakuga-auth";
/// Audience (`aud`) of access tokens.
pub const AUDIENCE: &str = "sakuga";
/// Prefix of API key secrets; a bearer credential with it is an API key, not a JWT.
pub const API_KEY_PREFIX: &str = "sk_";

/// A person's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Sees only what they own.
    User,
    /// Sees everything, manages users.
    Admin,
}

impl Role {
    /// Database spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Admin => "admin",
        }
    }

    /// From the database spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "user" => Some(Self::User),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }
}

/// Who is calling, as established by the guard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A person, by access token or API key.
    User {
        /// User id.
        id: Uuid,
        /// Role.
        role: Role,
        /// The access token's id (`None` for API keys).
        jti: Option<String>,
        /// When the access token expires (seconds since the epoch).
        expires_at: Option<i64>,
        /// The API key used, if any.
        api_key: Option<Uuid>,
    },
    /// A mesh service, by its certificate.
    Service(String),
    /// Nobody in particular (public RPCs).
    Anonymous,
}

impl Caller {
    /// Text for audit rows and logs.
    pub fn actor(&self) -> String {
        match self {
            Self::User { id, .. } => id.to_string(),
            Self::Service(name) => crate::identity::spiffe_id(name),
            Self::Anonymous => "anonymous".to_owned(),
        }
    }

    /// The owner filter of queries: `Ok(None)` for admins (everything), `Ok(Some(user))`
    /// for users; services and anonymous callers own nothing.
    pub fn owner_scope(&self) -> Result<Option<String>, Status> {
        match self {
            Self::User { role: Role::Admin, .. } => Ok(None),
            Self::User { id, .. } => Ok(Some(id.to_string())),
            Self::Service(_) | Self::Anonymous => {
                Err(Status::permission_denied("only people own jobs and files"))
            }
        }
    }

    /// The user id (owner of what the caller creates).
    pub fn user_id(&self) -> Result<Uuid, Status> {
        match self {
            Self::User { id, .. } => Ok(*id),
            Self::Service(_) | Self::Anonymous => {
                Err(Status::permission_denied("only people own jobs and files"))
            }
        }
    }
}

/// The caller of a request, put there by the guard.
pub fn caller<T>(req: &tonic::Request<T>) -> Result<Caller, Status> {
    req.extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("no authenticated caller"))
}

/// The request id of a request (from `x-request-id`, or made up by the guard).
#[cfg(feature = "server")]
pub fn request_id<T>(req: &tonic::Request<T>) -> String {
    req.extensions().get::<context::Call>().map(|c| c.request_id.clone()).unwrap_or_default()
}

/// The peer address of a request (`ip:port`: one per connection).
#[cfg(feature = "server")]
pub fn peer_addr<T>(req: &tonic::Request<T>) -> String {
    req.extensions().get::<context::Call>().map(context::Call::remote_text).unwrap_or_default()
}

/// Set on a response to name what a mutating RPC acted on, for the audit row.
#[derive(Debug, Clone)]
pub struct AuditTarget(pub String);

/// A response naming what it acted on (`kind:id`), for the audit row.
pub fn audited<T>(msg: T, target: impl Into<String>) -> tonic::Response<T> {
    let mut resp = tonic::Response::new(msg);
    resp.extensions_mut().insert(AuditTarget(target.into()));
    resp
}

/// Redis key of a revoked token id.
#[cfg(feature = "server")]
pub fn revoked_jti_key(redis: &Redis, jti: &str) -> String {
    redis.key(&format!("revoked:jti:{jti}"))
}

/// Redis key holding the time before which a user's tokens are void (disabled users,
/// logout everywhere).
#[cfg(feature = "server")]
pub fn revoked_user_key(redis: &Redis, user: &str) -> String {
    redis.key(&format!("revoked:user:{user}"))
}

/// sha256 of an API key secret or refresh token, hex.
pub fn secret_hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Seconds since the epoch.
pub fn now_secs() -> i64 {
    Utc::now().timestamp()
}

/// chrono from seconds since the epoch.
pub fn from_secs(secs: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(secs, 0)
}
