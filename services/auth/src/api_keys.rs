//! API keys: long-lived secrets a user creates for scripts, stored by hash and shown once.

use chrono::{DateTime, Utc};
use rand::RngCore as _;
use sakuga_mesh::auth as mesh_auth;
use uuid::Uuid;

use crate::{error::AuthError, service::Auth, store::ApiKey, tokens::random_token};

/// A key's name: 1..=64 characters, none of them a control character.
pub fn check_key_name(name: &str) -> Result<&str, AuthError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
        return Err(AuthError::invalid("name", "must be 1..=64 characters without control characters"));
    }
    Ok(name)
}

impl Auth {
    /// Creates a key named `name` for `user_id`, valid until `expires` (none: until
    /// revoked). Returns it with its secret, which is not stored.
    pub async fn create_api_key(
        &self,
        user_id: Uuid,
        name: &str,
        expires: Option<DateTime<Utc>>,
    ) -> Result<(ApiKey, String), AuthError> {
        let name = check_key_name(name)?;
        if expires.is_some_and(|e| e <= Utc::now()) {
            return Err(AuthError::invalid("expire_time", "must be in the future"));
        }
        let mut id = [0_u8; 4];
        rand::rng().fill_bytes(&mut id);
        let prefix = format!("{}{}", mesh_auth::API_KEY_PREFIX, hex::encode(id));
        let secret = random_token(&format!("{prefix}_"), 32);
        let key = self
            .store
            .insert_api_key(user_id, name, &prefix, &mesh_auth::secret_hash(&secret), expires)
            .await?;
        Ok((key, secret))
    }
}
