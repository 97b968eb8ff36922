//! Sessions: password login (rate limited, constant cost for unknown users), refresh-token
//! rotation with reuse detection, and logout.

use std::time::Duration;

use sakuga_mesh::{
    auth::{self as mesh_auth, Caller},
    ratelimit::{Class, LoginDecision},
};
use tracing::{info, warn};
use uuid::Uuid;

use crate::{
    error::AuthError,
    service::{Auth, Origin},
    store::{Redeemed, User},
    tokens::Tokens,
};

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

impl Auth {
    /// Logs `username` in with `password`: the user and a new token pair.
    pub async fn login(
        &self,
        origin: &Origin,
        username: &str,
        password: &str,
    ) -> Result<(User, Tokens), AuthError> {
        let username = check_login_username(username)?;
        if password.is_empty() || password.chars().count() > 1024 {
            return Err(AuthError::invalid("password", "must be 1..=1024 characters"));
        }
        // Attempts per peer address (without the port), per pair and per username.
        let peer = origin.peer.as_str();
        let host = peer.rsplit_once(':').map_or(peer, |(h, _)| h);
        match self.limiter.check_login(&username, host).await {
            Ok(LoginDecision::Allowed) => {}
            Ok(LoginDecision::Limited { class, retry_after }) => {
                self.metrics.ceiling_refused(login_ceiling(class));
                self.event(origin, &username, "auth.login.limited", &username, "RESOURCE_EXHAUSTED").await;
                return Err(AuthError::Refused(mesh_auth::Refusal::RateLimited { class, retry_after }));
            }
            Err(e) => {
                warn!(error = %e, "login refused: rate limiter unavailable");
                return Err(AuthError::Unavailable("login temporarily unavailable, retry later"));
            }
        }
        let user = self.store.user_by_name(&username).await?;
        let hash = user.as_ref().map_or_else(|| DUMMY_HASH.to_owned(), |u| u.password_hash.clone());
        let matches = self.passwords.verify(password.to_owned(), hash).await?;
        let user = match user {
            Some(u) if matches && !u.disabled => u,
            _ => {
                self.event(origin, &username, "auth.login.failed", &username, "UNAUTHENTICATED").await;
                return Err(AuthError::Unauthenticated("wrong username or password"));
            }
        };
        let tokens = self.issue(&user).await?;
        info!(user_id = %user.id, "login");
        self.event(origin, &user.id.to_string(), "auth.login.ok", &username, "OK").await;
        Ok((user, tokens))
    }

    /// Spends `token` for the next pair of its family: the user and the new pair. A token
    /// presented twice revokes its family.
    pub async fn refresh(&self, origin: &Origin, token: &str) -> Result<(User, Tokens), AuthError> {
        let token = token.trim();
        if token.is_empty() || token.len() > 256 {
            return Err(AuthError::invalid("refresh_token", "required"));
        }
        let pending = self.pending();
        match self.store.redeem_refresh(&mesh_auth::secret_hash(token), &pending.next).await? {
            Redeemed::Fresh { user, family } => {
                let tokens = self.sign(&user, pending)?;
                self.event(origin, &user.id.to_string(), "auth.refresh", &family.to_string(), "OK").await;
                Ok((*user, tokens))
            }
            Redeemed::Reused { user_id, live_access } => {
                warn!(%user_id, "refresh token reused: its family is revoked");
                // The family's refresh tokens are already revoked; its access tokens too
                // if the revocation list takes them (else they live out their few minutes).
                if let Err(e) = self.deny_access(&live_access).await {
                    warn!(%user_id, error = %e, "access tokens of a revoked family stay valid until expiry");
                }
                self.event(
                    origin,
                    &user_id.to_string(),
                    "auth.refresh.reuse_detected",
                    "",
                    "UNAUTHENTICATED",
                )
                .await;
                Err(AuthError::Unauthenticated(
                    "refresh token already used; that session is revoked, log in again",
                ))
            }
            Redeemed::Invalid => Err(AuthError::Unauthenticated("invalid or expired refresh token")),
        }
    }

    /// Ends a session of `user_id`: the caller's access token now (if it is one with an id
    /// and an expiry), and the family of `refresh_token` if one is given.
    pub async fn logout(&self, user_id: Uuid, caller: &Caller, refresh_token: &str) -> Result<(), AuthError> {
        if let Caller::User { jti: Some(jti), expires_at: Some(exp), .. } = caller {
            let left = u64::try_from(exp - mesh_auth::now_secs()).unwrap_or(0) + 5;
            self.deny(mesh_auth::revoked_jti_key(&self.redis, jti), 1, Duration::from_secs(left)).await?;
        }
        let refresh = refresh_token.trim();
        if !refresh.is_empty() {
            let live = self.store.revoke_family_of(&mesh_auth::secret_hash(refresh), user_id).await?;
            self.deny_access(&live).await?;
        }
        Ok(())
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
}
