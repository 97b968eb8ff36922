//! Tokens: access JWTs signed with the active key, refresh tokens stored by hash, and the
//! revocation list that voids access tokens before they expire.

use std::time::Duration;

use base64::Engine as _;
use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, Header};
use rand::RngCore as _;
use sakuga_mesh::auth::{self as mesh_auth, Claims};
use tracing::warn;
use uuid::Uuid;

use crate::{
    error::AuthError,
    service::Auth,
    store::{LiveAccess, NewRefresh, User},
};

/// A token pair as issued.
#[derive(Debug, Clone)]
pub struct Tokens {
    /// The signed access JWT.
    pub access_token: String,
    /// When it expires.
    pub access_expires_at: Option<DateTime<Utc>>,
    /// The refresh token (stored only by hash).
    pub refresh_token: String,
    /// When it expires.
    pub refresh_expires_at: DateTime<Utc>,
}

/// Tokens about to be issued: the access token's id and expiry are fixed before the
/// refresh token is stored, so the row records them.
pub(crate) struct Pending {
    access: LiveAccess,
    iat: i64,
    refresh: String,
    pub(crate) next: NewRefresh,
}

/// `prefix` followed by `bytes` random bytes, base64url.
pub(crate) fn random_token(prefix: &str, bytes: usize) -> String {
    let mut buf = vec![0_u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    format!("{prefix}{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf))
}

impl Auth {
    /// Ids and expiries of the next token pair (nothing stored or signed yet).
    pub(crate) fn pending(&self) -> Pending {
        let now = Utc::now();
        // Both are validated at start-up (at most a day and a few years), far inside range.
        let access_ttl = chrono::Duration::from_std(self.config.access_token_ttl)
            .unwrap_or(chrono::Duration::seconds(900));
        let refresh = random_token("rt_", 32);
        let refresh_ttl = chrono::Duration::from_std(self.config.refresh_token_ttl).unwrap_or(access_ttl);
        let access = LiveAccess { jti: Uuid::new_v4().to_string(), expires_at: now + access_ttl };
        let next = NewRefresh {
            hash: mesh_auth::secret_hash(&refresh),
            expires_at: now + refresh_ttl,
            access: access.clone(),
        };
        Pending { access, iat: now.timestamp(), refresh, next }
    }

    /// Signs the access token of `pending` for `user` (its refresh token is stored).
    pub(crate) fn sign(&self, user: &User, pending: Pending) -> Result<Tokens, AuthError> {
        let claims = Claims {
            iss: mesh_auth::ISSUER.to_owned(),
            aud: mesh_auth::AUDIENCE.to_owned(),
            sub: user.id.to_string(),
            role: user.role,
            iat: pending.iat,
            exp: pending.access.expires_at.timestamp(),
            jti: pending.access.jti,
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.keys.active.clone());
        let access = jsonwebtoken::encode(&header, &claims, self.keys.encoding())
            .map_err(|e| AuthError::Signing(e.to_string()))?;
        Ok(Tokens {
            access_token: access,
            access_expires_at: mesh_auth::from_secs(claims.exp),
            refresh_token: pending.refresh,
            refresh_expires_at: pending.next.expires_at,
        })
    }

    /// An access token and a refresh token starting a new family.
    pub(crate) async fn issue(&self, user: &User) -> Result<Tokens, AuthError> {
        let pending = self.pending();
        self.store.insert_refresh(user.id, Uuid::now_v7(), &pending.next).await?;
        self.sign(user, pending)
    }

    /// Puts the access tokens of a revoked family on the revocation list (each until it
    /// expires), so revoking a family also ends its sessions now, not at expiry.
    pub(crate) async fn deny_access(&self, live: &[LiveAccess]) -> Result<(), AuthError> {
        if live.is_empty() {
            return Ok(());
        }
        let now = Utc::now();
        let mut pipe = redis::pipe();
        for a in live {
            let left = u64::try_from((a.expires_at - now).num_seconds()).unwrap_or(0) + 5;
            pipe.cmd("SET")
                .arg(mesh_auth::revoked_jti_key(&self.redis, &a.jti))
                .arg(1)
                .arg("EX")
                .arg(left)
                .ignore();
        }
        let mut conn = self.redis.conn();
        pipe.query_async::<()>(&mut conn).await.map_err(|e| {
            warn!(error = %e, "revocation list unreachable");
            AuthError::Unavailable("revocation list unavailable, retry later")
        })
    }

    /// Puts a key into the revocation list for `ttl`.
    pub(crate) async fn deny(&self, key: String, value: i64, ttl: Duration) -> Result<(), AuthError> {
        let mut conn = self.redis.conn();
        let secs = ttl.as_secs().max(1);
        redis::cmd("SET").arg(&key).arg(value).arg("EX").arg(secs).query_async::<()>(&mut conn).await.map_err(
            |e| {
                warn!(error = %e, "revocation list unreachable");
                AuthError::Unavailable("revocation list unavailable, retry later")
            },
        )
    }

    /// Voids every access token of user `id` issued until now (its role or its access
    /// changed).
    pub(crate) async fn deny_user(&self, id: Uuid) -> Result<(), AuthError> {
        self.deny(
            mesh_auth::revoked_user_key(&self.redis, &id.to_string()),
            mesh_auth::now_secs(),
            self.config.access_token_ttl + Duration::from_mins(1),
        )
        .await
    }
}
