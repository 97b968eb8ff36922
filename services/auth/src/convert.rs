//! Proto <-> domain conversions of the auth service.

use sakuga_mesh::{api::timestamp, auth::Role};
use sakuga_proto::v1 as pb;
use uuid::Uuid;

use crate::{
    error::AuthError,
    keys::PublicKey,
    store::{ApiKey, AuditRow, User},
    tokens::Tokens,
};

/// The role a request names in `field`.
pub fn role_from_pb(r: i32, field: &'static str) -> Result<Role, AuthError> {
    match pb::Role::try_from(r) {
        Ok(pb::Role::User) => Ok(Role::User),
        Ok(pb::Role::Admin) => Ok(Role::Admin),
        _ => Err(AuthError::invalid(field, "must be ROLE_USER or ROLE_ADMIN")),
    }
}

/// The API view of a user (never the password hash).
pub fn user_to_pb(u: &User) -> pb::User {
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

/// The API view of an API key (never its hash).
pub fn key_to_pb(k: &ApiKey) -> pb::ApiKey {
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

/// A token pair as sent.
pub fn tokens_to_pb(t: Tokens) -> pb::TokenPair {
    pb::TokenPair {
        access_token: t.access_token,
        access_expire_time: t.access_expires_at.map(timestamp),
        refresh_token: t.refresh_token,
        refresh_expire_time: Some(timestamp(t.refresh_expires_at)),
    }
}

/// An audit row as listed.
pub fn audit_to_pb(e: AuditRow) -> pb::AuditEvent {
    pb::AuditEvent {
        id: u64::try_from(e.id).unwrap_or(0),
        time: Some(timestamp(e.time)),
        actor: e.event.actor,
        action: e.event.action,
        target: e.event.target,
        result: e.event.result,
        request_id: e.event.request_id,
    }
}

/// A verification key as GetJwks publishes it (RFC 8037: an Ed25519 key is `OKP`).
pub fn jwk_to_pb(k: &PublicKey) -> pb::Jwk {
    pb::Jwk {
        kid: k.kid.clone(),
        kty: "OKP".into(),
        crv: "Ed25519".into(),
        x: k.x.clone(),
        alg: "EdDSA".into(),
        r#use: "sig".into(),
    }
}

/// A UUID field of a request.
pub fn parse_id(field: &'static str, s: &str) -> Result<Uuid, AuthError> {
    Uuid::parse_str(s).map_err(|_| AuthError::invalid(field, "must be a UUID"))
}
