//! Users: names and passwords a new account must have, creation, roles and disabling
//! (each change of access voids the user's tokens issued before it).

use sakuga_mesh::auth::Role;
use uuid::Uuid;

use crate::{error::AuthError, service::Auth, store::User};

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

/// A new password: 12..=1024 characters.
pub fn check_new_password(p: &str) -> Result<(), AuthError> {
    let n = p.chars().count();
    if (12..=1024).contains(&n) {
        Ok(())
    } else {
        Err(AuthError::invalid("password", "must be 12..=1024 characters"))
    }
}

impl Auth {
    /// Creates user `username` with `password` and `role`.
    pub async fn create_user(&self, username: &str, password: String, role: Role) -> Result<User, AuthError> {
        check_username(username)?;
        check_new_password(&password)?;
        let hash = self.passwords.hash(password).await?;
        self.store
            .create_user(username, &hash, role)
            .await?
            .ok_or_else(|| AuthError::AlreadyExists(format!("username {username} is taken")))
    }

    /// Gives user `id` `role`; the tokens issued before carry the old one and are voided.
    pub async fn set_role(&self, id: Uuid, role: Role) -> Result<User, AuthError> {
        let user = self.store.set_role(id, role).await?;
        self.deny_user(id).await?;
        Ok(user)
    }

    /// Disables (or enables) user `id`.
    pub async fn set_disabled(&self, id: Uuid, disabled: bool) -> Result<User, AuthError> {
        // The denylist entry is written inside the transaction, before the commit: if Redis
        // cannot take it, the change is rolled back and the call fails (UNAVAILABLE), so a
        // "disabled" answer always means the user's tokens are void.
        self.store
            .set_disabled(id, disabled, |_| async move {
                if !disabled {
                    return Ok(());
                }
                self.deny_user(id).await
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
