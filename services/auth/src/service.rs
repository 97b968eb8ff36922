//! The auth service's domain: what login, refresh, logout, users and API keys need, with
//! no wire type. The gRPC handlers (`api`) translate requests to the methods of [`Auth`]
//! (in `login`, `tokens`, `users`, `api_keys`) and their results back.

use std::sync::Arc;

use sakuga_mesh::{
    auth::{Audit, AuditEvent},
    metrics::Metrics,
    ratelimit::RateLimiter,
    redis::Redis,
};

use crate::{Config, keys::SigningKeys, password::Passwords, store::Store};

/// Everything the use cases need.
#[derive(Debug, Clone)]
pub struct Auth {
    /// Users, tokens, keys.
    pub store: Store,
    /// Signing keys.
    pub keys: Arc<SigningKeys>,
    /// Revocation list.
    pub redis: Redis,
    /// Login attempts per username and peer.
    pub limiter: RateLimiter,
    /// Auth events.
    pub audit: Audit,
    /// Lifetimes.
    pub config: Arc<Config>,
    /// Argon2id work, bounded.
    pub passwords: Passwords,
    /// Refusals by resource ceiling.
    pub metrics: Arc<Metrics>,
}

/// Where a call came from, as the audit log records it.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    /// The peer's address.
    pub peer: String,
    /// The request id.
    pub request_id: String,
}

impl Auth {
    /// Records an auth event of a call from `origin`.
    pub(crate) async fn event(&self, origin: &Origin, actor: &str, action: &str, target: &str, result: &str) {
        self.audit
            .record(AuditEvent {
                actor: actor.to_owned(),
                action: action.to_owned(),
                target: target.to_owned(),
                result: result.to_owned(),
                peer: origin.peer.clone(),
                request_id: origin.request_id.clone(),
            })
            .await;
    }
}
