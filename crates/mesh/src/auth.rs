//! The security perimeter every server shares: one authorization table for every RPC of the
//! mesh, a verifier for bearer credentials (access JWTs checked locally against the auth
//! service's published keys, API keys checked against their stored hashes) with the Redis
//! revocation list, and a tower layer that enforces the table before any handler runs,
//! applies rate limits and writes the audit log.
//!
//! Handlers read who is calling from the request extensions ([`Caller`]); they never parse
//! credentials themselves.

use std::{
    collections::HashMap,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex, RwLock},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tonic::{Code, Status, body::Body, transport::server::TcpConnectInfo, transport::server::TlsConnectInfo};
use tracing::{debug, warn};
use uuid::Uuid;

use crate::{
    identity::{PeerIdentity, identity_from_der},
    ratelimit::{Class, Decision, RateLimiter, limited_status},
    redis::Redis,
};

/// Issuer (`iss`) of access tokens.
pub const ISSUER: &str = "sakuga-auth";
/// Audience (`aud`) of access tokens.
pub const AUDIENCE: &str = "sakuga";
/// Prefix of API key secrets; a bearer credential with it is an API key, not a JWT.
pub const API_KEY_PREFIX: &str = "sk_";
/// Services of the mesh (certificate identities that count as authenticated callers).
pub const MESH_SERVICES: &[&str] = &["auth", "scheduler", "organizer", "generator"];

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
pub fn request_id<T>(req: &tonic::Request<T>) -> String {
    req.extensions().get::<RequestId>().map(|r| r.0.clone()).unwrap_or_default()
}

/// The peer address of a request.
pub fn peer_addr<T>(req: &tonic::Request<T>) -> String {
    req.extensions().get::<Peer>().map(|p| p.0.clone()).unwrap_or_default()
}

#[derive(Debug, Clone)]
struct RequestId(String);
#[derive(Debug, Clone)]
struct Peer(String);

/// Set on a response to name what a mutating RPC acted on, for the audit row.
#[derive(Debug, Clone)]
pub struct AuditTarget(pub String);

/// Who may call an RPC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone holding a mesh certificate (health, reflection, and the RPCs that carry
    /// their own credentials: Login, Refresh, GetJwks).
    Public,
    /// A person (user or admin) or a mesh service.
    Authenticated,
    /// A person (user or admin).
    User,
    /// An admin.
    Admin,
    /// Only these mesh services, by certificate.
    Services(&'static [&'static str]),
}

/// One row of the authorization table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// Who may call.
    pub access: Access,
    /// Rate-limit class, if limited here (Login is limited by the auth service itself,
    /// per username and peer, since the username is in the body).
    pub class: Option<Class>,
    /// Written to the audit log.
    pub audit: bool,
}

const fn rule(access: Access, class: Option<Class>, audit: bool) -> Rule {
    Rule { access, class, audit }
}

const READ: Option<Class> = Some(Class::Read);
const WRITE: Option<Class> = Some(Class::Write);
const SUBMIT: Option<Class> = Some(Class::Submit);

/// The authorization table: every RPC of every server in the mesh. A method that is not
/// here is refused. (A test walks the descriptor sets and fails on any RPC without a row.)
pub const RULES: &[(&str, Rule)] = &[
    ("/grpc.health.v1.Health/Check", rule(Access::Public, None, false)),
    ("/grpc.health.v1.Health/Watch", rule(Access::Public, None, false)),
    // Reflection describes the API (public in the repository anyway) and is what grpcurl
    // needs before any call, health checks included: open to every mesh certificate.
    ("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", rule(Access::Public, None, false)),
    ("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", rule(Access::Public, None, false)),
    ("/sakuga.v1.AuthService/Login", rule(Access::Public, None, true)),
    ("/sakuga.v1.AuthService/Refresh", rule(Access::Public, None, true)),
    ("/sakuga.v1.AuthService/GetJwks", rule(Access::Public, None, false)),
    ("/sakuga.v1.AuthService/Logout", rule(Access::User, WRITE, true)),
    ("/sakuga.v1.AuthService/WhoAmI", rule(Access::Authenticated, READ, false)),
    ("/sakuga.v1.AuthService/CreateUser", rule(Access::Admin, WRITE, true)),
    ("/sakuga.v1.AuthService/ListUsers", rule(Access::Admin, READ, false)),
    ("/sakuga.v1.AuthService/SetUserRole", rule(Access::Admin, WRITE, true)),
    ("/sakuga.v1.AuthService/SetUserDisabled", rule(Access::Admin, WRITE, true)),
    ("/sakuga.v1.AuthService/CreateApiKey", rule(Access::User, WRITE, true)),
    ("/sakuga.v1.AuthService/ListApiKeys", rule(Access::User, READ, false)),
    ("/sakuga.v1.AuthService/RevokeApiKey", rule(Access::User, WRITE, true)),
    ("/sakuga.v1.AuthService/ListAuditEvents", rule(Access::Admin, READ, false)),
    ("/sakuga.v1.JobService/SubmitJob", rule(Access::User, SUBMIT, true)),
    ("/sakuga.v1.JobService/GetJob", rule(Access::User, READ, false)),
    ("/sakuga.v1.JobService/ListJobs", rule(Access::User, READ, false)),
    ("/sakuga.v1.JobService/WatchJob", rule(Access::User, READ, false)),
    ("/sakuga.v1.JobService/CancelJob", rule(Access::User, WRITE, true)),
    ("/sakuga.v1.JobService/RetryJob", rule(Access::User, SUBMIT, true)),
    ("/sakuga.v1.ProjectService/CreateProject", rule(Access::User, WRITE, true)),
    ("/sakuga.v1.ProjectService/GetProject", rule(Access::User, READ, false)),
    ("/sakuga.v1.ProjectService/ListProjects", rule(Access::User, READ, false)),
    ("/sakuga.v1.ProjectService/UpdateProject", rule(Access::User, WRITE, true)),
    ("/sakuga.v1.ProjectService/CreateCharacter", rule(Access::User, WRITE, true)),
    ("/sakuga.v1.ProjectService/ListCharacters", rule(Access::User, READ, false)),
    ("/sakuga.v1.ProjectService/UpdateCharacter", rule(Access::User, WRITE, true)),
    ("/sakuga.v1.ProjectService/DeleteCharacter", rule(Access::User, WRITE, true)),
    ("/sakuga.v1.WorkerService/Attach", rule(Access::Services(&["generator"]), None, false)),
    ("/sakuga.v1.FileService/StoreArtifact", rule(Access::Services(&["generator"]), None, true)),
    ("/sakuga.v1.FileService/GetFile", rule(Access::User, READ, false)),
    ("/sakuga.v1.FileService/ListFiles", rule(Access::User, READ, false)),
    ("/sakuga.v1.FileService/ReadFile", rule(Access::User, READ, false)),
    ("/sakuga.v1.FileService/GetThumbnail", rule(Access::User, READ, false)),
    ("/sakuga.v1.FileService/DeleteFile", rule(Access::User, WRITE, true)),
];

/// The rule of a method path (`/package.Service/Method`).
pub fn rule_for(path: &str) -> Option<Rule> {
    RULES.iter().find(|(p, _)| *p == path).map(|(_, r)| *r)
}

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

/// Redis key of a revoked token id.
pub fn revoked_jti_key(redis: &Redis, jti: &str) -> String {
    redis.key(&format!("revoked:jti:{jti}"))
}

/// Redis key holding the time before which a user's tokens are void (disabled users,
/// logout everywhere).
pub fn revoked_user_key(redis: &Redis, user: &str) -> String {
    redis.key(&format!("revoked:user:{user}"))
}

/// sha256 of an API key secret or refresh token, hex.
pub fn secret_hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Public keys that verify access tokens, by `kid`.
pub type KeySet = HashMap<String, DecodingKey>;

type Fetch = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<KeySet, String>> + Send>> + Send + Sync>;

const KEYS_REFRESH: Duration = Duration::from_mins(5);
const KEYS_MIN_REFETCH: Duration = Duration::from_secs(10);
/// How long an API key lookup is reused: a revoked key stops working within this time.
const API_KEY_CACHE: Duration = Duration::from_secs(2);

/// Verifies bearer credentials locally.
pub struct Verifier {
    keys: RwLock<KeySet>,
    fetch: Option<Fetch>,
    last_fetch: Mutex<Option<Instant>>,
    redis: Option<Redis>,
    db: Option<Pool>,
    api_keys: Mutex<HashMap<String, (Instant, Option<Caller>)>>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kids: Vec<String> = self.keys.read().map(|k| k.keys().cloned().collect()).unwrap_or_default();
        f.debug_struct("Verifier").field("kids", &kids).finish_non_exhaustive()
    }
}

fn unauthenticated(why: &str) -> Status {
    Status::unauthenticated(why.to_owned())
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
                    .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
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

    /// Verifies a bearer credential.
    pub async fn verify(&self, bearer: &str) -> Result<Caller, Status> {
        if bearer.starts_with(API_KEY_PREFIX) {
            return self.verify_api_key(bearer).await;
        }
        let header = jsonwebtoken::decode_header(bearer).map_err(|_| unauthenticated("malformed token"))?;
        if header.alg != Algorithm::EdDSA {
            return Err(unauthenticated("token algorithm not accepted"));
        }
        let kid = header.kid.ok_or_else(|| unauthenticated("token has no key id"))?;
        let key = if let Some(k) = self.key(&kid) {
            k
        } else {
            self.refresh(false).await;
            if !self.has_keys() {
                return Err(Status::unavailable("token verification keys not loaded yet, retry"));
            }
            self.key(&kid).ok_or_else(|| unauthenticated("token signed by an unknown key"))?
        };
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_audience(&[AUDIENCE]);
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
        validation.leeway = 5;
        let data = jsonwebtoken::decode::<Claims>(bearer, &key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            match e.kind() {
                ErrorKind::ExpiredSignature => unauthenticated("token expired"),
                ErrorKind::InvalidAudience => unauthenticated("token is for another audience"),
                ErrorKind::InvalidIssuer => unauthenticated("token from another issuer"),
                ErrorKind::InvalidSignature => unauthenticated("token signature does not verify"),
                _ => unauthenticated("invalid token"),
            }
        })?;
        let claims = data.claims;
        let id = Uuid::parse_str(&claims.sub).map_err(|_| unauthenticated("invalid token subject"))?;
        self.check_revoked(&claims).await?;
        Ok(Caller::User {
            id,
            role: claims.role,
            jti: Some(claims.jti),
            expires_at: Some(claims.exp),
            api_key: None,
        })
    }

    /// Refuses revoked tokens. Redis being unreachable does not stop reads: the check is
    /// skipped with a warning (logins and submits fail closed on the rate limiter instead).
    async fn check_revoked(&self, claims: &Claims) -> Result<(), Status> {
        let Some(redis) = self.redis.as_ref().filter(|r| !r.is_down()) else { return Ok(()) };
        let mut conn = redis.manager.clone();
        let keys = [revoked_jti_key(redis, &claims.jti), revoked_user_key(redis, &claims.sub)];
        let result: redis::RedisResult<(Option<String>, Option<i64>)> =
            redis::cmd("MGET").arg(&keys[..]).query_async(&mut conn).await;
        redis.note(&result);
        match result {
            Ok((Some(_), _)) => Err(unauthenticated("token revoked")),
            Ok((None, Some(not_before))) if claims.iat <= not_before => Err(unauthenticated("token revoked")),
            Ok(_) => Ok(()),
            Err(e) => {
                warn!(error = %e, "revocation list unreachable; accepting the token");
                Ok(())
            }
        }
    }

    async fn verify_api_key(&self, secret: &str) -> Result<Caller, Status> {
        let hash = secret_hash(secret);
        if let Some((at, cached)) =
            self.api_keys.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(&hash)
            && at.elapsed() < API_KEY_CACHE
        {
            return cached.clone().ok_or_else(|| unauthenticated("unknown, expired or revoked API key"));
        }
        let Some(db) = &self.db else {
            return Err(unauthenticated("API keys are not accepted by this service"));
        };
        let client = db.get().await.map_err(|_| Status::unavailable("database unavailable, retry later"))?;
        let row = client
            .query_opt(
                "UPDATE api_keys k SET last_used_at = now() FROM users u \
                 WHERE k.key_hash = $1 AND u.id = k.user_id AND k.revoked_at IS NULL \
                   AND (k.expires_at IS NULL OR k.expires_at > now()) AND NOT u.disabled \
                 RETURNING k.id, k.user_id, u.role",
                &[&hash],
            )
            .await
            .map_err(|e| {
                warn!(error = %e, "api key lookup failed");
                Status::unavailable("database unavailable, retry later")
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
        self.api_keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(hash, (Instant::now(), caller.clone()));
        caller.ok_or_else(|| unauthenticated("unknown, expired or revoked API key"))
    }
}

/// Decodes a JWK set (Ed25519 keys) into verification keys.
pub fn keyset_from_jwks(keys: &[sakuga_proto::v1::Jwk]) -> Result<KeySet, String> {
    keys.iter()
        .map(|k| {
            if k.kty != "OKP" || k.crv != "Ed25519" {
                return Err(format!("key {}: unsupported key type {}/{}", k.kid, k.kty, k.crv));
            }
            DecodingKey::from_ed_components(&k.x)
                .map(|d| (k.kid.clone(), d))
                .map_err(|e| format!("key {}: {e}", k.kid))
        })
        .collect()
}

/// Writes audit rows.
#[derive(Debug, Clone)]
pub struct Audit {
    pool: Pool,
}

/// One audit row.
#[derive(Debug, Clone, Default)]
pub struct AuditEvent {
    /// Who.
    pub actor: String,
    /// What (`JobService.SubmitJob`, `auth.login.failed`).
    pub action: String,
    /// On what.
    pub target: String,
    /// `ok` or the status code name.
    pub result: String,
    /// Peer address.
    pub peer: String,
    /// Request id.
    pub request_id: String,
}

impl Audit {
    /// Writes into `audit_events` of this pool's database.
    pub fn new(pool: Pool) -> Self {
        Self { pool }
    }

    /// Records an event; a failure is logged (the action itself already happened).
    pub async fn record(&self, e: AuditEvent) {
        let result = async {
            let client = self.pool.get().await.map_err(|e| e.to_string())?;
            let stmt = client
                .prepare_cached(
                    "INSERT INTO audit_events (actor, action, target, result, peer, request_id) \
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .await
                .map_err(|e| e.to_string())?;
            client
                .execute(&stmt, &[&e.actor, &e.action, &e.target, &e.result, &e.peer, &e.request_id])
                .await
                .map_err(|e| e.to_string())
        }
        .await;
        if let Err(err) = result {
            warn!(error = %err, action = %e.action, "audit row not written");
        }
    }
}

/// `Service.Method` of a path.
fn action_of(path: &str) -> String {
    let path = path.trim_start_matches('/');
    let (service, method) = path.split_once('/').unwrap_or((path, ""));
    let service = service.rsplit('.').next().unwrap_or(service);
    format!("{service}.{method}")
}

fn code_name(code: Code) -> String {
    format!("{code:?}").to_ascii_uppercase()
}

/// What the guard of one server uses.
#[derive(Debug, Clone, Default)]
pub struct Guard {
    verifier: Option<Arc<Verifier>>,
    limiter: Option<RateLimiter>,
    audit: Option<Audit>,
    metrics: Option<Arc<crate::metrics::Metrics>>,
    service: &'static str,
}

impl Guard {
    /// A guard that verifies with `verifier`, limits with `limiter` and audits into `audit`
    /// (each optional: a service without Redis has no limiter, one without a database
    /// writes no audit rows).
    pub fn new(verifier: Option<Arc<Verifier>>, limiter: Option<RateLimiter>, audit: Option<Audit>) -> Self {
        Self { verifier, limiter, audit, metrics: None, service: "" }
    }

    /// Counts every call (by method and code, with its latency), refused credentials (by
    /// reason) and rate-limit refusals (by class) in `metrics`, and names `service` on the
    /// span of every call.
    #[must_use]
    pub fn observed(mut self, service: &'static str, metrics: Arc<crate::metrics::Metrics>) -> Self {
        self.metrics = Some(metrics);
        self.service = service;
        self
    }

    /// The guard of a service with a database and Redis: verification with `verifier`,
    /// GCRA limits in `redis`, audit rows in `pool`'s database.
    pub fn for_service(
        verifier: &Arc<Verifier>,
        redis: &Redis,
        limits: &crate::ratelimit::RateLimits,
        pool: &Pool,
    ) -> Self {
        Self::new(
            Some(verifier.clone()),
            Some(RateLimiter::new(redis.clone(), limits.clone())),
            Some(Audit::new(pool.clone())),
        )
    }

    /// Establishes the caller of a request under `rule`, or refuses it.
    async fn admit(
        &self,
        rule: Rule,
        peer: Option<&PeerIdentity>,
        bearer: Option<&str>,
    ) -> Result<Caller, Status> {
        let service = peer.filter(|p| MESH_SERVICES.contains(&p.name.as_str()));
        match rule.access {
            Access::Public => Ok(Caller::Anonymous),
            Access::Services(allowed) => match peer {
                Some(p) if allowed.contains(&p.name.as_str()) => Ok(Caller::Service(p.name.clone())),
                Some(p) => Err(Status::permission_denied(format!("{} may not call this method", p.uri()))),
                None => Err(Status::unauthenticated("no mesh identity in the client certificate")),
            },
            Access::Authenticated if bearer.is_none() && service.is_some() => {
                Ok(Caller::Service(service.map(|s| s.name.clone()).unwrap_or_default()))
            }
            Access::Authenticated | Access::User | Access::Admin => {
                let bearer = bearer.ok_or_else(|| {
                    Status::unauthenticated(
                        "missing credentials: send `authorization: Bearer <token or API key>`",
                    )
                })?;
                let verifier = self
                    .verifier
                    .as_ref()
                    .ok_or_else(|| Status::unauthenticated("this service accepts no tokens"))?;
                let caller = verifier.verify(bearer).await?;
                if rule.access == Access::Admin && !matches!(caller, Caller::User { role: Role::Admin, .. }) {
                    return Err(Status::permission_denied("admin role required"));
                }
                Ok(caller)
            }
        }
    }

    async fn limit(&self, class: Class, caller: &Caller) -> Result<(), Status> {
        let Some(limiter) = &self.limiter else { return Ok(()) };
        let subject = caller.actor();
        match limiter.check(class, &subject).await {
            Ok(Decision::Allowed { .. }) => Ok(()),
            Ok(Decision::Limited { retry_after }) => Err(limited_status(class, retry_after)),
            // Submits (and writes) fail closed; reads go on without Redis.
            Err(e) if matches!(class, Class::Submit | Class::Login | Class::Write) => {
                warn!(error = %e, class = class.as_str(), "rate limiter unavailable: refusing");
                Err(Status::unavailable("rate limiter unavailable, retry later"))
            }
            Err(e) => {
                warn!(error = %e, class = class.as_str(), "rate limiter unavailable: allowing read");
                Ok(())
            }
        }
    }
}

/// Extracts `Bearer <credential>` from the authorization header.
fn bearer_of(headers: &http::HeaderMap) -> Result<Option<String>, Status> {
    let Some(value) = headers.get(http::header::AUTHORIZATION) else { return Ok(None) };
    let value = value.to_str().map_err(|_| unauthenticated("authorization header is not text"))?;
    let (scheme, credential) = value
        .split_once(' ')
        .ok_or_else(|| unauthenticated("authorization must be `Bearer <credential>`"))?;
    if !scheme.eq_ignore_ascii_case("bearer") || credential.trim().is_empty() {
        return Err(unauthenticated("authorization must be `Bearer <credential>`"));
    }
    Ok(Some(credential.trim().to_owned()))
}

impl<S> tower::Layer<S> for Guard {
    type Service = Guarded<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Guarded { inner, guard: self.clone() }
    }
}

/// A server wrapped by its [`Guard`].
#[derive(Debug, Clone)]
pub struct Guarded<S> {
    inner: S,
    guard: Guard,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S> tower::Service<http::Request<Body>> for Guarded<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        // The clone that was polled ready handles this request.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let guard = self.guard.clone();
        let metrics = guard.metrics.clone();
        let method = action_of(req.uri().path());
        let started = std::time::Instant::now();
        // One server span per call, child of the caller's trace context when it sent one.
        let span = tracing::info_span!(
            "rpc",
            otel.name = %method,
            otel.kind = "server",
            method = %method,
            service = guard.service,
            request_id = tracing::field::Empty,
            trace_id = tracing::field::Empty,
        );
        crate::telemetry::set_parent(&span, crate::telemetry::extract(req.headers()));
        let trace_id = crate::telemetry::trace_id(&span);
        if !trace_id.is_empty() {
            span.record("trace_id", trace_id.as_str());
        }
        let call = async move {
            let path = req.uri().path().to_owned();
            let request_id = req
                .headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .filter(|v| !v.is_empty() && v.len() <= 128)
                .map_or_else(|| Uuid::new_v4().to_string(), str::to_owned);
            tracing::Span::current().record("request_id", request_id.as_str());
            let (peer, remote) = peer_of(&req);
            let peer_text = remote.map(|a| a.to_string()).unwrap_or_default();
            let refuse = |status: Status| {
                let mut resp = status.into_http::<Body>();
                if let Ok(v) = http::HeaderValue::from_str(&request_id) {
                    resp.headers_mut().insert("x-request-id", v);
                }
                resp
            };
            let Some(rule) = rule_for(&path) else {
                return Ok(refuse(Status::unimplemented(format!("unknown method {path}"))));
            };
            let bearer = match bearer_of(req.headers()) {
                Ok(b) => b,
                Err(s) => return Ok(refuse(s)),
            };
            let caller = match guard.admit(rule, peer.as_ref(), bearer.as_deref()).await {
                Ok(c) => c,
                Err(status) => {
                    if let Some(m) = &guard.metrics {
                        m.inc(
                            "sakuga_auth_failures_total",
                            "Calls refused before reaching the service, by reason.",
                            &[("reason", refusal_reason(&status))],
                            1.0,
                        );
                    }
                    if status.code() == Code::PermissionDenied
                        && let Some(audit) = &guard.audit
                    {
                        let actor = peer.as_ref().map(PeerIdentity::uri).unwrap_or_default();
                        audit
                            .record(AuditEvent {
                                actor,
                                action: "auth.permission_denied".to_owned(),
                                target: action_of(&path),
                                result: code_name(status.code()),
                                peer: peer_text.clone(),
                                request_id: request_id.clone(),
                            })
                            .await;
                    }
                    return Ok(refuse(status));
                }
            };
            if let Some(class) = rule.class
                && let Err(status) = guard.limit(class, &caller).await
            {
                if let Some(m) = &guard.metrics
                    && status.code() == Code::ResourceExhausted
                {
                    m.inc(
                        "sakuga_rate_limited_total",
                        "Calls refused by a rate limit, by class.",
                        &[("class", class.as_str())],
                        1.0,
                    );
                }
                return Ok(refuse(status));
            }
            req.extensions_mut().insert(caller.clone());
            req.extensions_mut().insert(RequestId(request_id.clone()));
            req.extensions_mut().insert(Peer(peer_text.clone()));
            let mut resp = inner.call(req).await?;
            if let Ok(v) = http::HeaderValue::from_str(&request_id) {
                resp.headers_mut().insert("x-request-id", v);
            }
            if rule.audit
                && let Some(audit) = &guard.audit
            {
                let result = resp
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .map_or_else(|| "OK".to_owned(), |c| code_name(Code::from(c)));
                let target = resp.extensions().get::<AuditTarget>().map(|t| t.0.clone()).unwrap_or_default();
                audit
                    .record(AuditEvent {
                        actor: caller.actor(),
                        action: action_of(&path),
                        target,
                        result,
                        peer: peer_text,
                        request_id,
                    })
                    .await;
            }
            Ok(resp)
        };
        Box::pin(async move {
            let result = tracing::Instrument::instrument(call, span).await;
            if let (Some(m), Ok(resp)) = (&metrics, &result) {
                // Unary errors and refusals carry grpc-status in the headers; successes (and
                // streams) in the trailers, so a missing header is OK. A stream's latency is
                // the time to its first response headers.
                let code = resp
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .map_or_else(|| "OK".to_owned(), |c| code_name(Code::from(c)));
                m.inc(
                    "sakuga_rpc_requests_total",
                    "RPCs handled, by method and status code.",
                    &[("method", &method), ("code", &code)],
                    1.0,
                );
                m.observe(
                    "sakuga_rpc_duration_seconds",
                    "RPC latency to the response headers, by method and status code.",
                    &[("method", &method), ("code", &code)],
                    started.elapsed().as_secs_f64(),
                );
            }
            result
        })
    }
}

/// Why a call was refused, for the auth failure counter.
fn refusal_reason(status: &Status) -> &'static str {
    let msg = status.message().to_ascii_lowercase();
    match status.code() {
        Code::PermissionDenied => "forbidden",
        Code::Unauthenticated if msg.contains("missing") || msg.contains("no mesh identity") => "missing",
        Code::Unauthenticated if msg.contains("expired") => "expired",
        Code::Unauthenticated if msg.contains("revoked") || msg.contains("disabled") => "revoked",
        Code::Unauthenticated => "invalid",
        Code::Unimplemented => "unknown_method",
        _ => "other",
    }
}

fn peer_of(req: &http::Request<Body>) -> (Option<PeerIdentity>, Option<SocketAddr>) {
    let Some(info) = req.extensions().get::<TlsConnectInfo<TcpConnectInfo>>() else { return (None, None) };
    let identity =
        info.peer_certs().and_then(|certs| certs.first().and_then(|leaf| identity_from_der(leaf.as_ref())));
    (identity, info.get_ref().remote_addr())
}

/// Seconds since the epoch.
pub fn now_secs() -> i64 {
    Utc::now().timestamp()
}

/// chrono from seconds since the epoch.
pub fn from_secs(secs: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(secs, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rpc_of_every_server_has_a_rule() {
        use prost::Message as _;
        let mut missing = Vec::new();
        let sets = [
            sakuga_proto::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ];
        let mut seen = 0;
        for bytes in sets {
            let fds = prost_types::FileDescriptorSet::decode(bytes).unwrap();
            for file in fds.file {
                for service in &file.service {
                    for method in &service.method {
                        let path = format!("/{}.{}/{}", file.package(), service.name(), method.name());
                        seen += 1;
                        if rule_for(&path).is_none() {
                            missing.push(path);
                        }
                    }
                }
            }
        }
        assert!(missing.is_empty(), "RPCs without an access rule: {missing:?}");
        assert_eq!(seen, RULES.len(), "every rule names an existing RPC");
    }

    #[test]
    fn only_generators_may_attach_or_store() {
        for (path, rule) in RULES {
            let generator_only = matches!(rule.access, Access::Services(s) if s == ["generator"]);
            let expected =
                *path == "/sakuga.v1.WorkerService/Attach" || *path == "/sakuga.v1.FileService/StoreArtifact";
            assert_eq!(generator_only, expected, "{path}");
        }
    }

    #[test]
    fn bearer_parsing() {
        let mut h = http::HeaderMap::new();
        assert_eq!(bearer_of(&h).unwrap(), None);
        h.insert("authorization", "Bearer abc".parse().unwrap());
        assert_eq!(bearer_of(&h).unwrap().as_deref(), Some("abc"));
        h.insert("authorization", "Basic abc".parse().unwrap());
        assert_eq!(bearer_of(&h).unwrap_err().code(), Code::Unauthenticated);
        assert_eq!(action_of("/sakuga.v1.JobService/SubmitJob"), "JobService.SubmitJob");
    }
}
