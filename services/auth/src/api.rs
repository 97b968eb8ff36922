//! AuthService: password login, access JWTs, rotating refresh tokens, API keys, users,
//! audit — and the proto <-> domain conversions.

use std::{sync::Arc, time::Duration};

use base64::Engine as _;
use chrono::Utc;
use jsonwebtoken::{Algorithm, Header};
use rand::RngCore as _;
use sakuga_mesh::{
    api::{Page, from_timestamp, timestamp},
    auth::{self as mesh_auth, Audit, AuditEvent, AuditTarget, Caller, Claims, Role},
    metrics::Metrics,
    ratelimit::{Class, LoginDecision, RateLimiter},
    redis::Redis,
};
use sakuga_proto::v1::{self as pb, auth_service_server::AuthService};
use tonic::{Request, Response, Status};
use tracing::{info, warn};
use uuid::Uuid;

use crate::{
    Config,
    error::AuthError,
    keys::SigningKeys,
    password::Passwords,
    store::{ApiKey, LiveAccess, NewRefresh, Redeemed, Store, User},
};

/// Everything the handlers need.
#[derive(Debug, Clone)]
pub struct Api {
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

/// Tokens about to be issued: the access token's id and expiry are fixed before the
/// refresh token is stored, so the row records them.
struct Pending {
    access: LiveAccess,
    iat: i64,
    refresh: String,
    next: NewRefresh,
}

fn random_token(prefix: &str, bytes: usize) -> String {
    let mut buf = vec![0_u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    format!("{prefix}{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf))
}

/// A hash that no password matches, verified when the user does not exist so a wrong
/// username costs the same time as a wrong password.
const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c2FrdWdhLWR1bW15LXNhbHQ$Qm9ndXNCb2d1c0JvZ3VzQm9ndXNCb2d1c0JvZ3VzQm8";

/// Characters that print nothing or change how text around them is shown: soft hyphen,
/// combining grapheme joiner, Arabic letter mark, Hangul fillers, Mongolian selectors,
/// zero-width and bidirectional controls, word joiner and invisible operators, variation
/// selectors, byte order mark, interlinear annotations, shorthand format controls, musical
/// symbol formatting, tags and private use.
fn is_invisible(c: char) -> bool {
    matches!(
        u32::from(c),
        0xAD | 0x34F
            | 0x61C
            | 0x115F
            | 0x1160
            | 0x17B4
            | 0x17B5
            | 0x180B..=0x180F
            | 0x200B..=0x200F
            | 0x202A..=0x202E
            | 0x2060..=0x206F
            | 0x3164
            | 0xE000..=0xF8FF
            | 0xFE00..=0xFE0F
            | 0xFEFF
            | 0xFFA0
            | 0xFFF0..=0xFFFB
            | 0x1_BCA0..=0x1_BCA3
            | 0x1_D173..=0x1_D17A
            | 0xE_0000..=0xE_0FFF
            | 0xF_0000..=0x10_FFFF
    )
}

/// A username as typed at login (surrounding whitespace trimmed): 1..=64 characters, each
/// printable (no control, format, whitespace or invisible character), so nothing that
/// could not be a username reaches the rate limiter, the audit log or the logs.
fn check_login_username(raw: &str) -> Result<String, AuthError> {
    let u = raw.trim();
    if u.is_empty() || u.chars().count() > 64 {
        return Err(AuthError::invalid("username", "must be 1..=64 characters"));
    }
    if u.chars().any(|c| c.is_control() || c.is_whitespace() || is_invisible(c)) {
        return Err(AuthError::invalid(
            "username",
            "must be printable: no control, format, whitespace or invisible characters",
        ));
    }
    Ok(u.to_owned())
}

/// The metric label of a login limit.
fn login_ceiling(class: Class) -> &'static str {
    match class {
        Class::LoginAddress => "login_address",
        Class::LoginUsername => "login_username",
        _ => "login_pair",
    }
}

/// A new username (created users, the bootstrap admin): what the `users` table accepts.
pub fn check_username(u: &str) -> Result<(), AuthError> {
    let ok = (3..=64).contains(&u.len())
        && u.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || ".-_".contains(c));
    if ok {
        Ok(())
    } else {
        Err(AuthError::invalid("username", "must be 3..=64 characters of a-z, 0-9, '.', '_', '-'"))
    }
}

fn check_new_password(p: &str) -> Result<(), AuthError> {
    let n = p.chars().count();
    if (12..=1024).contains(&n) {
        Ok(())
    } else {
        Err(AuthError::invalid("password", "must be 12..=1024 characters"))
    }
}

fn role_from_pb(r: i32, field: &'static str) -> Result<Role, AuthError> {
    match pb::Role::try_from(r) {
        Ok(pb::Role::User) => Ok(Role::User),
        Ok(pb::Role::Admin) => Ok(Role::Admin),
        _ => Err(AuthError::invalid(field, "must be ROLE_USER or ROLE_ADMIN")),
    }
}

fn user_to_pb(u: &User) -> pb::User {
    pb::User {
        id: u.id.to_string(),
        username: u.username.clone(),
        role: match u.role {
            Role::User => pb::Role::User,
            Role::Admin => pb::Role::Admin,
        }
        .into(),
        disabled: u.disabled,
        create_time: Some(timestamp(u.created_at)),
    }
}

fn key_to_pb(k: &ApiKey) -> pb::ApiKey {
    pb::ApiKey {
        id: k.id.to_string(),
        user_id: k.user_id.to_string(),
        name: k.name.clone(),
        prefix: k.prefix.clone(),
        create_time: Some(timestamp(k.created_at)),
        expire_time: k.expires_at.map(timestamp),
        last_used_time: k.last_used_at.map(timestamp),
        revoked: k.revoked_at.is_some(),
    }
}

fn parse_id(field: &'static str, s: &str) -> Result<Uuid, AuthError> {
    Uuid::parse_str(s).map_err(|_| AuthError::invalid(field, "must be a UUID"))
}

fn with_target<T>(msg: T, target: impl Into<String>) -> Response<T> {
    let mut resp = Response::new(msg);
    resp.extensions_mut().insert(AuditTarget(target.into()));
    resp
}

impl Api {
    async fn event<T>(&self, req: &Request<T>, actor: &str, action: &str, target: &str, result: &str) {
        self.audit
            .record(AuditEvent {
                actor: actor.to_owned(),
                action: action.to_owned(),
                target: target.to_owned(),
                result: result.to_owned(),
                peer: mesh_auth::peer_addr(req),
                request_id: mesh_auth::request_id(req),
            })
            .await;
    }

    /// Ids and expiries of the next token pair (nothing stored or signed yet).
    fn pending(&self) -> Pending {
        let now = Utc::now();
        let access_ttl = i64::try_from(self.config.access_token_ttl_secs).unwrap_or(900);
        let refresh = random_token("rt_", 32);
        let refresh_ttl =
            chrono::Duration::seconds(i64::try_from(self.config.refresh_token_ttl_secs).unwrap_or(0));
        let access = LiveAccess {
            jti: Uuid::new_v4().to_string(),
            expires_at: now + chrono::Duration::seconds(access_ttl),
        };
        let next = NewRefresh {
            hash: mesh_auth::secret_hash(&refresh),
            expires_at: now + refresh_ttl,
            access: access.clone(),
        };
        Pending { access, iat: now.timestamp(), refresh, next }
    }

    /// Signs the access token of `pending` for `user` (its refresh token is stored).
    fn sign(&self, user: &User, pending: Pending) -> Result<pb::TokenPair, AuthError> {
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
        Ok(pb::TokenPair {
            access_token: access,
            access_expire_time: mesh_auth::from_secs(claims.exp).map(timestamp),
            refresh_token: pending.refresh,
            refresh_expire_time: Some(timestamp(pending.next.expires_at)),
        })
    }

    /// An access token and a refresh token starting a new family.
    async fn issue(&self, user: &User) -> Result<pb::TokenPair, AuthError> {
        let pending = self.pending();
        self.store.insert_refresh(user.id, Uuid::now_v7(), &pending.next).await?;
        self.sign(user, pending)
    }

    /// Puts the access tokens of a revoked family on the revocation list (each until it
    /// expires), so revoking a family also ends its sessions now, not at expiry.
    async fn deny_access(&self, live: &[LiveAccess]) -> Result<(), AuthError> {
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
        let mut conn = self.redis.manager.clone();
        pipe.query_async::<()>(&mut conn).await.map_err(|e| {
            warn!(error = %e, "revocation list unreachable");
            AuthError::Unavailable("revocation list unavailable, retry later")
        })
    }

    /// Puts a key into the revocation list for `ttl`.
    async fn deny(&self, key: String, value: i64, ttl: Duration) -> Result<(), AuthError> {
        let mut conn = self.redis.manager.clone();
        let secs = ttl.as_secs().max(1);
        redis::cmd("SET").arg(&key).arg(value).arg("EX").arg(secs).query_async::<()>(&mut conn).await.map_err(
            |e| {
                warn!(error = %e, "revocation list unreachable");
                AuthError::Unavailable("revocation list unavailable, retry later")
            },
        )
    }
}

#[tonic::async_trait]
impl AuthService for Api {
    async fn login(&self, req: Request<pb::LoginRequest>) -> Result<Response<pb::LoginResponse>, Status> {
        let peer = mesh_auth::peer_addr(&req);
        let r = req.get_ref();
        let username = check_login_username(&r.username)?;
        if r.password.is_empty() || r.password.chars().count() > 1024 {
            return Err(AuthError::invalid("password", "must be 1..=1024 characters").into());
        }
        // Attempts per peer address (without the port), per pair and per username.
        let host = peer.rsplit_once(':').map_or(peer.as_str(), |(h, _)| h);
        match self.limiter.check_login(&username, host).await {
            Ok(LoginDecision::Allowed) => {}
            Ok(LoginDecision::Limited { class, retry_after }) => {
                self.metrics.ceiling_refused(login_ceiling(class));
                self.event(&req, &username, "auth.login.limited", &username, "RESOURCE_EXHAUSTED").await;
                return Err(mesh_auth::Refusal::RateLimited { class, retry_after }.into());
            }
            Err(e) => {
                warn!(error = %e, "login refused: rate limiter unavailable");
                return Err(AuthError::Unavailable("login temporarily unavailable, retry later").into());
            }
        }
        let user = self.store.user_by_name(&username).await?;
        let hash = user.as_ref().map_or_else(|| DUMMY_HASH.to_owned(), |u| u.password_hash.clone());
        let matches = self.passwords.verify(r.password.clone(), hash).await?;
        let user = match user {
            Some(u) if matches && !u.disabled => u,
            _ => {
                self.event(&req, &username, "auth.login.failed", &username, "UNAUTHENTICATED").await;
                return Err(AuthError::Unauthenticated("wrong username or password").into());
            }
        };
        let tokens = self.issue(&user).await?;
        info!(user_id = %user.id, "login");
        self.event(&req, &user.id.to_string(), "auth.login.ok", &username, "OK").await;
        Ok(with_target(
            pb::LoginResponse { tokens: Some(tokens), user: Some(user_to_pb(&user)) },
            user.id.to_string(),
        ))
    }

    async fn refresh(
        &self,
        req: Request<pb::RefreshRequest>,
    ) -> Result<Response<pb::RefreshResponse>, Status> {
        let token = req.get_ref().refresh_token.trim().to_owned();
        if token.is_empty() || token.len() > 256 {
            return Err(AuthError::invalid("refresh_token", "required").into());
        }
        let pending = self.pending();
        match self.store.redeem_refresh(&mesh_auth::secret_hash(&token), &pending.next).await? {
            Redeemed::Fresh { user, family } => {
                let tokens = self.sign(&user, pending)?;
                self.event(&req, &user.id.to_string(), "auth.refresh", &family.to_string(), "OK").await;
                Ok(with_target(pb::RefreshResponse { tokens: Some(tokens) }, user.id.to_string()))
            }
            Redeemed::Reused { user_id, live_access } => {
                warn!(%user_id, "refresh token reused: its family is revoked");
                // The family's refresh tokens are already revoked; its access tokens too
                // if the revocation list takes them (else they live out their few minutes).
                if let Err(e) = self.deny_access(&live_access).await {
                    warn!(%user_id, error = %e, "access tokens of a revoked family stay valid until expiry");
                }
                self.event(&req, &user_id.to_string(), "auth.refresh.reuse_detected", "", "UNAUTHENTICATED")
                    .await;
                Err(AuthError::Unauthenticated(
                    "refresh token already used; that session is revoked, log in again",
                )
                .into())
            }
            Redeemed::Invalid => Err(AuthError::Unauthenticated("invalid or expired refresh token").into()),
        }
    }

    async fn logout(&self, req: Request<pb::LogoutRequest>) -> Result<Response<pb::LogoutResponse>, Status> {
        let caller = mesh_auth::caller(&req)?;
        let user_id = caller.user_id()?;
        if let Caller::User { jti: Some(jti), expires_at: Some(exp), .. } = &caller {
            let left = u64::try_from(exp - mesh_auth::now_secs()).unwrap_or(0) + 5;
            self.deny(mesh_auth::revoked_jti_key(&self.redis, jti), 1, Duration::from_secs(left)).await?;
        }
        let refresh = req.get_ref().refresh_token.trim();
        if !refresh.is_empty() {
            let live = self.store.revoke_family_of(&mesh_auth::secret_hash(refresh), user_id).await?;
            self.deny_access(&live).await?;
        }
        Ok(with_target(pb::LogoutResponse {}, user_id.to_string()))
    }

    async fn get_jwks(
        &self,
        _req: Request<pb::GetJwksRequest>,
    ) -> Result<Response<pb::GetJwksResponse>, Status> {
        Ok(Response::new(pb::GetJwksResponse {
            keys: self.keys.jwks.clone(),
            issuer: mesh_auth::ISSUER.to_owned(),
            audience: mesh_auth::AUDIENCE.to_owned(),
        }))
    }

    async fn who_am_i(
        &self,
        req: Request<pb::WhoAmIRequest>,
    ) -> Result<Response<pb::WhoAmIResponse>, Status> {
        match mesh_auth::caller(&req)? {
            Caller::User { id, .. } => {
                let user = self.store.user(id).await?;
                Ok(Response::new(pb::WhoAmIResponse {
                    user: Some(user_to_pb(&user)),
                    service_identity: String::new(),
                }))
            }
            Caller::Service(name) => Ok(Response::new(pb::WhoAmIResponse {
                user: None,
                service_identity: sakuga_mesh::identity::spiffe_id(&name),
            })),
            Caller::Anonymous => Err(Status::unauthenticated("no authenticated caller")),
        }
    }

    async fn create_user(
        &self,
        req: Request<pb::CreateUserRequest>,
    ) -> Result<Response<pb::CreateUserResponse>, Status> {
        let r = req.into_inner();
        check_username(&r.username)?;
        check_new_password(&r.password)?;
        let role = if r.role == 0 { Role::User } else { role_from_pb(r.role, "role")? };
        let hash = self.passwords.hash(r.password).await?;
        let user = self
            .store
            .create_user(&r.username, &hash, role)
            .await?
            .ok_or_else(|| AuthError::AlreadyExists(format!("username {} is taken", r.username)))?;
        Ok(with_target(pb::CreateUserResponse { user: Some(user_to_pb(&user)) }, user.id.to_string()))
    }

    async fn list_users(
        &self,
        req: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        let r = req.into_inner();
        let page = Page::parse(r.page_size, &r.page_token)?;
        let mut users = self.store.list_users(&page).await?;
        let next_page_token = page.finish(&mut users, |u| (u.created_at, u.id));
        Ok(Response::new(pb::ListUsersResponse {
            users: users.iter().map(user_to_pb).collect(),
            next_page_token,
        }))
    }

    async fn set_user_role(
        &self,
        req: Request<pb::SetUserRoleRequest>,
    ) -> Result<Response<pb::SetUserRoleResponse>, Status> {
        let r = req.into_inner();
        let id = parse_id("user_id", &r.user_id)?;
        let role = role_from_pb(r.role, "role")?;
        let user = self.store.set_role(id, role).await?;
        // Tokens carry the role: void the ones issued before the change.
        self.deny(
            mesh_auth::revoked_user_key(&self.redis, &id.to_string()),
            mesh_auth::now_secs(),
            Duration::from_secs(self.config.access_token_ttl_secs + 60),
        )
        .await?;
        Ok(with_target(pb::SetUserRoleResponse { user: Some(user_to_pb(&user)) }, id.to_string()))
    }

    async fn set_user_disabled(
        &self,
        req: Request<pb::SetUserDisabledRequest>,
    ) -> Result<Response<pb::SetUserDisabledResponse>, Status> {
        let r = req.into_inner();
        let id = parse_id("user_id", &r.user_id)?;
        // The denylist entry is written inside the transaction, before the commit: if Redis
        // cannot take it, the change is rolled back and the call fails (UNAVAILABLE), so a
        // "disabled" answer always means the user's tokens are void.
        let disabled = r.disabled;
        let user = self
            .store
            .set_disabled(id, disabled, |_| async move {
                if !disabled {
                    return Ok(());
                }
                self.deny(
                    mesh_auth::revoked_user_key(&self.redis, &id.to_string()),
                    mesh_auth::now_secs(),
                    Duration::from_secs(self.config.access_token_ttl_secs + 60),
                )
                .await
            })
            .await?;
        Ok(with_target(pb::SetUserDisabledResponse { user: Some(user_to_pb(&user)) }, id.to_string()))
    }

    async fn create_api_key(
        &self,
        req: Request<pb::CreateApiKeyRequest>,
    ) -> Result<Response<pb::CreateApiKeyResponse>, Status> {
        let user_id = mesh_auth::caller(&req)?.user_id()?;
        let r = req.into_inner();
        let name = r.name.trim();
        if name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
            return Err(
                AuthError::invalid("name", "must be 1..=64 characters without control characters").into()
            );
        }
        let expires = from_timestamp("expire_time", r.expire_time)?;
        if expires.is_some_and(|e| e <= Utc::now()) {
            return Err(AuthError::invalid("expire_time", "must be in the future").into());
        }
        let mut id = [0_u8; 4];
        rand::rng().fill_bytes(&mut id);
        let prefix = format!("{}{}", mesh_auth::API_KEY_PREFIX, hex::encode(id));
        let secret = random_token(&format!("{prefix}_"), 32);
        let key = self
            .store
            .insert_api_key(user_id, name, &prefix, &mesh_auth::secret_hash(&secret), expires)
            .await?;
        Ok(with_target(pb::CreateApiKeyResponse { key: Some(key_to_pb(&key)), secret }, key.id.to_string()))
    }

    async fn list_api_keys(
        &self,
        req: Request<pb::ListApiKeysRequest>,
    ) -> Result<Response<pb::ListApiKeysResponse>, Status> {
        let caller = mesh_auth::caller(&req)?;
        let own = caller.user_id()?;
        let r = req.into_inner();
        let user = if r.user_id.is_empty() {
            own
        } else {
            let other = parse_id("user_id", &r.user_id)?;
            if other != own && caller.owner_scope()?.is_some() {
                return Err(AuthError::PermissionDenied("only admins list other users' keys").into());
            }
            other
        };
        let keys = self.store.list_api_keys(user).await?;
        Ok(Response::new(pb::ListApiKeysResponse { keys: keys.iter().map(key_to_pb).collect() }))
    }

    async fn revoke_api_key(
        &self,
        req: Request<pb::RevokeApiKeyRequest>,
    ) -> Result<Response<pb::RevokeApiKeyResponse>, Status> {
        let caller = mesh_auth::caller(&req)?;
        let id = parse_id("key_id", &req.get_ref().key_id)?;
        let owner = caller
            .owner_scope()?
            .map(|o| Uuid::parse_str(&o))
            .transpose()
            .map_err(|_| Status::internal("internal error"))?;
        self.store.revoke_api_key(id, owner).await?;
        Ok(with_target(pb::RevokeApiKeyResponse {}, id.to_string()))
    }

    async fn list_audit_events(
        &self,
        req: Request<pb::ListAuditEventsRequest>,
    ) -> Result<Response<pb::ListAuditEventsResponse>, Status> {
        let r = req.into_inner();
        let size = Page::parse(r.page_size, "")?.size;
        let before = if r.page_token.is_empty() {
            None
        } else {
            Some(
                r.page_token
                    .parse::<i64>()
                    .map_err(|_| AuthError::invalid("page_token", "not a token from a previous response"))?,
            )
        };
        let actor = Some(r.actor.as_str()).filter(|s| !s.is_empty());
        let action = Some(r.action.as_str()).filter(|s| !s.is_empty());
        let mut rows = self.store.list_audit(actor, action, before, size + 1).await?;
        let more = rows.len() > size as usize;
        rows.truncate(size as usize);
        let next_page_token =
            if more { rows.last().map(|r| r.id.to_string()).unwrap_or_default() } else { String::new() };
        Ok(Response::new(pb::ListAuditEventsResponse {
            events: rows
                .into_iter()
                .map(|e| pb::AuditEvent {
                    id: u64::try_from(e.id).unwrap_or(0),
                    time: Some(timestamp(e.time)),
                    actor: e.event.actor,
                    action: e.event.action,
                    target: e.event.target,
                    result: e.event.result,
                    request_id: e.event.request_id,
                })
                .collect(),
            next_page_token,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dummy_hash_is_a_real_argon2id_hash_so_unknown_users_cost_a_verification() {
        use argon2::password_hash::{PasswordHash, PasswordVerifier as _};
        let parsed = PasswordHash::new(DUMMY_HASH).unwrap();
        assert_eq!(parsed.algorithm.as_str(), "argon2id");
        assert!(argon2::Argon2::default().verify_password(b"anything", &parsed).is_err());
    }

    #[test]
    fn login_usernames_must_be_printable_and_the_error_names_the_field() {
        assert_eq!(check_login_username("  alice ").unwrap(), "alice");
        assert_eq!(check_login_username("Zoë-ｱﾆﾒ").unwrap(), "Zoë-ｱﾆﾒ", "printable non-ASCII is fine");
        for bad in [
            "",
            "   ",
            "\u{3000}\u{3000}",
            "ali\nce",
            "ali\u{1b}[31mce",
            "alice\u{200b}",
            "\u{202e}ecila",
            "al\u{feff}ice",
            "al ice",
            "a\u{00ad}lice",
            "\u{e0061}lice",
            &"x".repeat(65),
        ] {
            let e = check_login_username(bad).unwrap_err().to_string();
            assert!(e.starts_with("username: "), "{bad:?}: {e}");
        }
    }

    #[test]
    fn usernames_and_passwords_are_checked() {
        assert!(check_username("alice.b-2_c").is_ok());
        for bad in ["ab", "Alice", "a b", "' OR '1'='1", &"x".repeat(65)] {
            assert!(check_username(bad).is_err(), "{bad}");
        }
        assert!(check_new_password("short").is_err());
        assert!(check_new_password("long enough password").is_ok());
    }
}
