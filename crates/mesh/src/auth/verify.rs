//! Bearer credentials checked locally: access JWTs (EdDSA) against the auth service's
//! published keys, API keys against their stored hashes, and both against the Redis
//! revocation list. Refusals are typed ([`Refusal`]).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant},
};

use deadpool_postgres::Pool;
use futures_util::future::BoxFuture;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tracing::{debug, warn};
use uuid::Uuid;

use super::{
    API_KEY_PREFIX, AUDIENCE, Caller, ISSUER, Refusal, Role, revoked_jti_key, revoked_user_key, secret_hash,
};
use crate::redis::Redis;

/// Claims of an access token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// Issuer.
    pub iss: String,
    /// Audience.
    pub aud: String,
    /// User id.
    pub sub: String,
    /// Role.
    pub role: Role,
    /// Issued at (seconds since the epoch).
    pub iat: i64,
    /// Expires at.
    pub exp: i64,
    /// Token id (for revocation).
    pub jti: String,
}

/// Public keys that verify access tokens, by `kid`.
pub type KeySet = HashMap<String, DecodingKey>;

type Fetch = Arc<dyn Fn() -> BoxFuture<'static, Result<KeySet, KeysError>> + Send + Sync>;

/// Why the verification keys could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    /// The auth service did not answer `GetJwks`.
    #[error("{:?}: {}", .0.code(), .0.message())]
    Fetch(Box<tonic::Status>),
    /// A published key is not an Ed25519 key.
    #[error("key {kid}: unsupported key type {kty}/{crv}")]
    Unsupported {
        /// Key id.
        kid: String,
        /// The key's `kty`.
        kty: String,
        /// The key's `crv`.
        crv: String,
    },
    /// A key's public part does not decode.
    #[error("key {kid}: {source}")]
    Invalid {
        /// Key id.
        kid: String,
        /// Why it does not decode.
        #[source]
        source: jsonwebtoken::errors::Error,
    },
}

const KEYS_REFRESH: Duration = Duration::from_mins(5);
const KEYS_MIN_REFETCH: Duration = Duration::from_secs(10);
/// How long an API key lookup is reused: a revoked key stops working within this time.
const API_KEY_CACHE: Duration = Duration::from_secs(2);
/// Most API key lookups cached at once (a flood of made-up keys is looked up uncached).
const API_KEY_CACHE_ENTRIES: usize = 10_000;
/// Most verified access tokens remembered at once (only tokens whose signature checked
/// out get in, so callers cannot fill it with made-up ones).
const TOKEN_CACHE_ENTRIES: usize = 10_000;
/// Seconds a token is accepted past its `exp` (clock skew between services).
const LEEWAY_SECS: u64 = 5;

/// An access token whose signature and claims checked out: its claims and the key that
/// signed it.
#[derive(Clone)]
struct Verified {
    kid: String,
    claims: Claims,
}

/// Verifies bearer credentials locally.
pub struct Verifier {
    keys: RwLock<KeySet>,
    fetch: Option<Fetch>,
    last_fetch: Mutex<Option<Instant>>,
    redis: Option<Redis>,
    db: Option<Pool>,
    api_keys: Mutex<HashMap<String, (Instant, Option<Caller>)>>,
    /// Verified access tokens by the SHA-256 of the whole token, until they expire: a
    /// token's signature is checked at its first call, not at every one.
    tokens: Mutex<HashMap<[u8; 32], Verified>>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kids: Vec<String> = self.keys.read().map(|k| k.keys().cloned().collect()).unwrap_or_default();
        f.debug_struct("Verifier").field("kids", &kids).finish_non_exhaustive()
    }
}

impl Verifier {
    /// A verifier with a fixed key set (the auth service verifies with its own keys).
    pub fn with_keys(keys: KeySet, redis: Option<Redis>, db: Option<Pool>) -> Self {
        Self {
            keys: RwLock::new(keys),
            fetch: None,
            last_fetch: Mutex::new(None),
            redis,
            db,
            api_keys: Mutex::new(HashMap::new()),
            tokens: Mutex::new(HashMap::new()),
        }
    }

    /// A verifier that fetches the keys from the auth service's `GetJwks` (now, every five
    /// minutes, and when a token names an unknown key) over mTLS.
    pub fn remote(auth: tonic::transport::Channel, redis: Option<Redis>, db: Option<Pool>) -> Self {
        let fetch: Fetch = Arc::new(move || {
            let channel = auth.clone();
            Box::pin(async move {
                let mut client = sakuga_proto::v1::auth_service_client::AuthServiceClient::new(channel);
                let jwks = client
                    .get_jwks(sakuga_proto::v1::GetJwksRequest {})
                    .await
                    .map_err(|s| KeysError::Fetch(Box::new(s)))?
                    .into_inner();
                keyset_from_jwks(&jwks.keys)
            })
        });
        Self {
            keys: RwLock::new(HashMap::new()),
            fetch: Some(fetch),
            last_fetch: Mutex::new(None),
            redis,
            db,
            api_keys: Mutex::new(HashMap::new()),
            tokens: Mutex::new(HashMap::new()),
        }
    }

    /// Refreshes the remote key set every five minutes until `shutdown`.
    pub fn spawn_refresh(
        self: &Arc<Self>,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            if this.fetch.is_none() {
                return;
            }
            loop {
                this.refresh(true).await;
                let wait = if this.has_keys() { KEYS_REFRESH } else { Duration::from_secs(1) };
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(wait) => {}
                }
            }
        })
    }

    fn has_keys(&self) -> bool {
        self.keys.read().is_ok_and(|k| !k.is_empty())
    }

    async fn refresh(&self, force: bool) {
        let Some(fetch) = &self.fetch else { return };
        {
            let mut last = self.last_fetch.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if !force && last.is_some_and(|t| t.elapsed() < KEYS_MIN_REFETCH) {
                return;
            }
            *last = Some(Instant::now());
        }
        match fetch().await {
            Ok(keys) => {
                debug!(kids = ?keys.keys().collect::<Vec<_>>(), "verification keys loaded");
                if let Ok(mut k) = self.keys.write() {
                    *k = keys;
                }
            }
            Err(e) => warn!(error = %e, "cannot fetch verification keys from the auth service"),
        }
    }

    fn key(&self, kid: &str) -> Option<DecodingKey> {
        self.keys.read().ok()?.get(kid).cloned()
    }

    /// Verifies a bearer credential. An access token's signature is checked once and
    /// remembered until the token expires (or its key is withdrawn); revocation is asked on
    /// every call.
    pub async fn verify(&self, bearer: &str) -> Result<Caller, Refusal> {
        self.verify_and(bearer, |_| std::future::ready(())).await.map(|(caller, ())| caller)
    }

    /// [`Self::verify`], running `alongside` (given the caller the credential names, before
    /// revocation is known) at the same time as the revocation check: a rate-limit decision
    /// asked there shares the revocation's Redis round trip. Its outcome is returned only
    /// for a caller who is let in.
    pub async fn verify_and<T, F>(
        &self,
        bearer: &str,
        alongside: impl FnOnce(&Caller) -> F,
    ) -> Result<(Caller, T), Refusal>
    where
        F: std::future::Future<Output = T>,
    {
        if bearer.starts_with(API_KEY_PREFIX) {
            let caller = self.verify_api_key(bearer).await?;
            let outcome = alongside(&caller).await;
            return Ok((caller, outcome));
        }
        let digest: [u8; 32] = Sha256::digest(bearer.as_bytes()).into();
        let remembered =
            self.tokens.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(&digest).cloned();
        let claims = match remembered {
            Some(v) if !expired(&v.claims) && self.key(&v.kid).is_some() => v.claims,
            _ => {
                let v = self.verify_signed(bearer).await?;
                let mut tokens = self.tokens.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                if tokens.len() >= TOKEN_CACHE_ENTRIES {
                    tokens.retain(|_, v| !expired(&v.claims));
                }
                if tokens.len() < TOKEN_CACHE_ENTRIES {
                    tokens.insert(digest, v.clone());
                }
                v.claims
            }
        };
        let id = Uuid::parse_str(&claims.sub).map_err(|_| Refusal::TokenInvalid)?;
        let caller = Caller::User {
            id,
            role: claims.role,
            jti: Some(claims.jti.clone()),
            expires_at: Some(claims.exp),
            api_key: None,
        };
        let (revoked, outcome) = tokio::join!(self.check_revoked(&claims), alongside(&caller));
        revoked?;
        Ok((caller, outcome))
    }

    /// Checks an access token's signature and claims.
    async fn verify_signed(&self, bearer: &str) -> Result<Verified, Refusal> {
        let header = jsonwebtoken::decode_header(bearer).map_err(|_| Refusal::MalformedToken)?;
        if header.alg != Algorithm::EdDSA {
            return Err(Refusal::TokenAlgorithm);
        }
        let kid = header.kid.ok_or(Refusal::TokenAlgorithm)?;
        let key = if let Some(k) = self.key(&kid) {
            k
        } else {
            self.refresh(false).await;
            if !self.has_keys() {
                return Err(Refusal::KeysNotLoaded);
            }
            self.key(&kid).ok_or(Refusal::UnknownSigningKey)?
        };
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_audience(&[AUDIENCE]);
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
        validation.leeway = LEEWAY_SECS;
        let data = jsonwebtoken::decode::<Claims>(bearer, &key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            match e.kind() {
                ErrorKind::ExpiredSignature => Refusal::TokenExpired,
                _ => Refusal::TokenInvalid,
            }
        })?;
        Ok(Verified { kid, claims: data.claims })
    }

    /// Refuses revoked tokens. Redis being unreachable does not stop people with the
    /// `user` role (the check is skipped with a warning; logins and submits fail closed on
    /// the rate limiter instead), but it stops admins: a revoked or disabled admin must not
    /// keep admin powers through a Redis outage.
    async fn check_revoked(&self, claims: &Claims) -> Result<(), Refusal> {
        let Some(redis) = self.redis.as_ref() else { return Ok(()) };
        let unreachable = |why: &str| {
            if claims.role == Role::Admin {
                warn!(error = %why, "revocation list unreachable; refusing an admin token");
                Err(Refusal::RevocationUnavailable)
            } else {
                warn!(error = %why, "revocation list unreachable; accepting the token");
                Ok(())
            }
        };
        if redis.is_down() {
            return unreachable("redis is down (breaker open)");
        }
        let mut conn = redis.conn();
        let keys = [revoked_jti_key(redis, &claims.jti), revoked_user_key(redis, &claims.sub)];
        let result: redis::RedisResult<(Option<String>, Option<i64>)> =
            redis::cmd("MGET").arg(&keys[..]).query_async(&mut conn).await;
        redis.note(&result);
        match result {
            Ok((Some(_), _)) => Err(Refusal::TokenRevoked),
            Ok((None, Some(not_before))) if claims.iat <= not_before => Err(Refusal::TokenRevoked),
            Ok(_) => Ok(()),
            Err(e) => unreachable(&e.to_string()),
        }
    }

    async fn verify_api_key(&self, secret: &str) -> Result<Caller, Refusal> {
        let hash = secret_hash(secret);
        if let Some((at, cached)) =
            self.api_keys.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(&hash)
            && at.elapsed() < API_KEY_CACHE
        {
            return cached.clone().ok_or(Refusal::ApiKeyInvalid);
        }
        let Some(db) = &self.db else {
            return Err(Refusal::CredentialsNotAccepted);
        };
        let client = db.get().await.map_err(|_| Refusal::CredentialStoreUnavailable)?;
        let row = client
            .query_opt(
                // A function owned by the tables' owner: services whose database role may
                // not read `users` or `api_keys` still verify keys (migration 0010).
                "SELECT key_id, user_id, role FROM sakuga_use_api_key($1)",
                &[&hash],
            )
            .await
            .map_err(|e| {
                warn!(error = %e, "api key lookup failed");
                Refusal::CredentialStoreUnavailable
            })?;
        let caller = row.map(|r| {
            let role: String = r.get(2);
            Caller::User {
                id: r.get(1),
                role: Role::parse(&role).unwrap_or(Role::User),
                jti: None,
                expires_at: None,
                api_key: Some(r.get(0)),
            }
        });
        {
            let mut cache = self.api_keys.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            // Keyed by what callers send (unknown keys are cached too): entries past their
            // lifetime go once the cache is full, so made-up keys cannot grow it for good.
            if cache.len() >= API_KEY_CACHE_ENTRIES {
                cache.retain(|_, (at, _)| at.elapsed() < API_KEY_CACHE);
            }
            if cache.len() < API_KEY_CACHE_ENTRIES {
                cache.insert(hash, (Instant::now(), caller.clone()));
            }
        }
        caller.ok_or(Refusal::ApiKeyInvalid)
    }
}

/// Past `exp` and the leeway: what the signature check would refuse as expired.
fn expired(claims: &Claims) -> bool {
    claims.exp.saturating_add(LEEWAY_SECS.cast_signed()) < super::now_secs()
}

/// Decodes a JWK set (Ed25519 keys) into verification keys.
pub fn keyset_from_jwks(keys: &[sakuga_proto::v1::Jwk]) -> Result<KeySet, KeysError> {
    keys.iter()
        .map(|k| {
            if k.kty != "OKP" || k.crv != "Ed25519" {
                return Err(KeysError::Unsupported {
                    kid: k.kid.clone(),
                    kty: k.kty.clone(),
                    crv: k.crv.clone(),
                });
            }
            DecodingKey::from_ed_components(&k.x)
                .map(|d| (k.kid.clone(), d))
                .map_err(|source| KeysError::Invalid { kid: k.kid.clone(), source })
        })
        .collect()
}
