//! SQL of the auth service: users, refresh tokens, API keys, audit reads. Parameterized and
//! prepared; secrets are stored only as hashes.

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use sakuga_mesh::auth::Role;
use tokio_postgres::Row;
use uuid::Uuid;

use crate::error::AuthError;

/// A user row.
#[derive(Debug, Clone)]
pub struct User {
    /// Id.
    pub id: Uuid,
    /// Username.
    pub username: String,
    /// argon2id PHC string.
    pub password_hash: String,
    /// Role.
    pub role: Role,
    /// Disabled.
    pub disabled: bool,
    /// Created.
    pub created_at: DateTime<Utc>,
}

fn user(row: &Row) -> User {
    let role: String = row.get("role");
    User {
        id: row.get("id"),
        username: row.get("username"),
        password_hash: row.get("password_hash"),
        role: Role::parse(&role).unwrap_or(Role::User),
        disabled: row.get("disabled"),
        created_at: row.get("created_at"),
    }
}

/// An API key row (never the secret).
#[derive(Debug, Clone)]
pub struct ApiKey {
    /// Id.
    pub id: Uuid,
    /// Owner.
    pub user_id: Uuid,
    /// Label.
    pub name: String,
    /// Recognisable prefix.
    pub prefix: String,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Expiry.
    pub expires_at: Option<DateTime<Utc>>,
    /// Last use.
    pub last_used_at: Option<DateTime<Utc>>,
    /// Revoked.
    pub revoked_at: Option<DateTime<Utc>>,
}

fn api_key(row: &Row) -> ApiKey {
    ApiKey {
        id: row.get("id"),
        user_id: row.get("user_id"),
        name: row.get("name"),
        prefix: row.get("prefix"),
        created_at: row.get("created_at"),
        expires_at: row.get("expires_at"),
        last_used_at: row.get("last_used_at"),
        revoked_at: row.get("revoked_at"),
    }
}

/// An audit row: the event as written, with its sequence number and time.
#[derive(Debug, Clone)]
pub struct AuditRow {
    /// Sequence.
    pub id: i64,
    /// When.
    pub time: DateTime<Utc>,
    /// Who, what, on what, outcome, peer, request id.
    pub event: sakuga_mesh::auth::AuditEvent,
}

/// What presenting a refresh token found.
#[derive(Debug)]
pub enum Redeemed {
    /// Valid: spent now; issue the next one in `family`.
    Fresh {
        /// The user.
        user: Box<User>,
        /// Family to continue.
        family: Uuid,
    },
    /// Already used or revoked: the family has just been revoked.
    Reused {
        /// The user whose family was revoked.
        user_id: Uuid,
    },
    /// Unknown or expired.
    Invalid,
}

const USER_COLUMNS: &str = "id, username, password_hash, role, disabled, created_at";
const KEY_COLUMNS: &str = "id, user_id, name, prefix, created_at, expires_at, last_used_at, revoked_at";

/// PostgreSQL access of the auth service.
#[derive(Debug, Clone)]
pub struct Store {
    pool: Pool,
}

impl Store {
    /// Wraps a pool.
    pub fn new(pool: Pool) -> Self {
        Self { pool }
    }

    /// The pool.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// A user by name.
    pub async fn user_by_name(&self, username: &str) -> Result<Option<User>, AuthError> {
        let c = self.pool.get().await?;
        let stmt = c.prepare_cached(&format!("SELECT {USER_COLUMNS} FROM users WHERE username = $1")).await?;
        Ok(c.query_opt(&stmt, &[&username]).await?.map(|r| user(&r)))
    }

    /// A user by id.
    pub async fn user(&self, id: Uuid) -> Result<User, AuthError> {
        let c = self.pool.get().await?;
        let stmt = c.prepare_cached(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1")).await?;
        c.query_opt(&stmt, &[&id])
            .await?
            .map(|r| user(&r))
            .ok_or_else(|| AuthError::NotFound(format!("user {id}")))
    }

    /// Creates a user; `None` if the name is taken.
    pub async fn create_user(
        &self,
        username: &str,
        hash: &str,
        role: Role,
    ) -> Result<Option<User>, AuthError> {
        let c = self.pool.get().await?;
        let stmt = c
            .prepare_cached(&format!(
                "INSERT INTO users (id, username, password_hash, role) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (username) DO NOTHING RETURNING {USER_COLUMNS}"
            ))
            .await?;
        Ok(c.query_opt(&stmt, &[&Uuid::now_v7(), &username, &hash, &role.as_str()]).await?.map(|r| user(&r)))
    }

    /// Creates the bootstrap admin, or sets its password and admin role if it exists.
    pub async fn upsert_admin(&self, username: &str, hash: &str) -> Result<User, AuthError> {
        let c = self.pool.get().await?;
        let stmt = c
            .prepare_cached(&format!(
                "INSERT INTO users (id, username, password_hash, role) VALUES ($1, $2, $3, 'admin') \
                 ON CONFLICT (username) DO UPDATE SET password_hash = EXCLUDED.password_hash, role = 'admin', \
                 disabled = false RETURNING {USER_COLUMNS}"
            ))
            .await?;
        Ok(user(&c.query_one(&stmt, &[&Uuid::now_v7(), &username, &hash]).await?))
    }

    /// A page of users, newest first.
    pub async fn list_users(&self, page: &sakuga_mesh::api::Page) -> Result<Vec<User>, AuthError> {
        let c = self.pool.get().await?;
        let stmt = c
            .prepare_cached(&format!(
                "SELECT {USER_COLUMNS} FROM users WHERE ($1::timestamptz IS NULL OR (created_at, id) < ($1, $2)) \
                 ORDER BY created_at DESC, id DESC LIMIT $3"
            ))
            .await?;
        let (at, id) = page.after.map_or((None, None), |(t, i)| (Some(t), Some(i)));
        Ok(c.query(&stmt, &[&at, &id, &i64::from(page.fetch())]).await?.iter().map(user).collect())
    }

    /// Changes a user's role.
    pub async fn set_role(&self, id: Uuid, role: Role) -> Result<User, AuthError> {
        let c = self.pool.get().await?;
        let stmt = c
            .prepare_cached(&format!("UPDATE users SET role = $2 WHERE id = $1 RETURNING {USER_COLUMNS}"))
            .await?;
        c.query_opt(&stmt, &[&id, &role.as_str()])
            .await?
            .map(|r| user(&r))
            .ok_or_else(|| AuthError::NotFound(format!("user {id}")))
    }

    /// Disables or enables a user; disabling revokes their refresh tokens.
    pub async fn set_disabled(&self, id: Uuid, disabled: bool) -> Result<User, AuthError> {
        let mut c = self.pool.get().await?;
        let tx = c.transaction().await?;
        let row = tx
            .query_opt(
                &format!("UPDATE users SET disabled = $2 WHERE id = $1 RETURNING {USER_COLUMNS}"),
                &[&id, &disabled],
            )
            .await?
            .ok_or_else(|| AuthError::NotFound(format!("user {id}")))?;
        if disabled {
            tx.execute(
                "UPDATE refresh_tokens SET revoked_at = now() WHERE user_id = $1 AND revoked_at IS NULL",
                &[&id],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(user(&row))
    }

    /// Stores a refresh token (its hash).
    pub async fn insert_refresh(
        &self,
        user_id: Uuid,
        family: Uuid,
        hash: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<(), AuthError> {
        let c = self.pool.get().await?;
        let stmt = c
            .prepare_cached(
                "INSERT INTO refresh_tokens (id, family_id, user_id, token_hash, expires_at) VALUES ($1, $2, $3, $4, $5)",
            )
            .await?;
        c.execute(&stmt, &[&Uuid::now_v7(), &family, &user_id, &hash, &expires_at]).await?;
        Ok(())
    }

    /// Spends a refresh token. A token presented a second time (or after its family was
    /// revoked) revokes the whole family: whoever holds a copy is locked out.
    pub async fn redeem_refresh(&self, hash: &str) -> Result<Redeemed, AuthError> {
        let mut c = self.pool.get().await?;
        let tx = c.transaction().await?;
        let spent = tx
            .query_opt(
                "UPDATE refresh_tokens SET used_at = now() WHERE token_hash = $1 AND used_at IS NULL \
                 AND revoked_at IS NULL AND expires_at > now() RETURNING family_id, user_id",
                &[&hash],
            )
            .await?;
        if let Some(row) = spent {
            let family: Uuid = row.get(0);
            let user_id: Uuid = row.get(1);
            let u =
                tx.query_one(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1"), &[&user_id]).await?;
            tx.commit().await?;
            let u = user(&u);
            if u.disabled {
                return Ok(Redeemed::Invalid);
            }
            return Ok(Redeemed::Fresh { user: Box::new(u), family });
        }
        let seen = tx
            .query_opt(
                "SELECT family_id, user_id, (used_at IS NOT NULL OR revoked_at IS NOT NULL) AND expires_at > now() \
                 FROM refresh_tokens WHERE token_hash = $1",
                &[&hash],
            )
            .await?;
        let outcome = match seen {
            Some(row) if row.get::<_, bool>(2) => {
                let family: Uuid = row.get(0);
                tx.execute(
                    "UPDATE refresh_tokens SET revoked_at = now() WHERE family_id = $1 AND revoked_at IS NULL",
                    &[&family],
                )
                .await?;
                Redeemed::Reused { user_id: row.get(1) }
            }
            _ => Redeemed::Invalid,
        };
        tx.commit().await?;
        Ok(outcome)
    }

    /// Revokes the family of a refresh token if it belongs to `user_id`.
    pub async fn revoke_family_of(&self, hash: &str, user_id: Uuid) -> Result<u64, AuthError> {
        let c = self.pool.get().await?;
        Ok(c.execute(
            "UPDATE refresh_tokens SET revoked_at = now() WHERE revoked_at IS NULL AND family_id IN \
             (SELECT family_id FROM refresh_tokens WHERE token_hash = $1 AND user_id = $2)",
            &[&hash, &user_id],
        )
        .await?)
    }

    /// Stores an API key (its hash).
    pub async fn insert_api_key(
        &self,
        user_id: Uuid,
        name: &str,
        prefix: &str,
        hash: &str,
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<ApiKey, AuthError> {
        let c = self.pool.get().await?;
        let stmt = c
            .prepare_cached(&format!(
                "INSERT INTO api_keys (id, user_id, name, prefix, key_hash, expires_at) VALUES ($1, $2, $3, $4, $5, $6) \
                 RETURNING {KEY_COLUMNS}"
            ))
            .await?;
        Ok(api_key(
            &c.query_one(&stmt, &[&Uuid::now_v7(), &user_id, &name, &prefix, &hash, &expires_at]).await?,
        ))
    }

    /// A user's keys, newest first.
    pub async fn list_api_keys(&self, user_id: Uuid) -> Result<Vec<ApiKey>, AuthError> {
        let c = self.pool.get().await?;
        let stmt = c
            .prepare_cached(&format!(
                "SELECT {KEY_COLUMNS} FROM api_keys WHERE user_id = $1 ORDER BY created_at DESC, id DESC LIMIT 1000"
            ))
            .await?;
        Ok(c.query(&stmt, &[&user_id]).await?.iter().map(api_key).collect())
    }

    /// Revokes a key of `owner` (`None`: any owner, for admins).
    pub async fn revoke_api_key(&self, id: Uuid, owner: Option<Uuid>) -> Result<ApiKey, AuthError> {
        let c = self.pool.get().await?;
        let stmt = c
            .prepare_cached(&format!(
                "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, now()) \
                 WHERE id = $1 AND ($2::uuid IS NULL OR user_id = $2) RETURNING {KEY_COLUMNS}"
            ))
            .await?;
        c.query_opt(&stmt, &[&id, &owner])
            .await?
            .map(|r| api_key(&r))
            .ok_or_else(|| AuthError::NotFound(format!("API key {id}")))
    }

    /// A page of audit rows, newest first, after row `before`.
    pub async fn list_audit(
        &self,
        actor: Option<&str>,
        action: Option<&str>,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<AuditRow>, AuthError> {
        let c = self.pool.get().await?;
        let stmt = c
            .prepare_cached(
                "SELECT id, time, actor, action, target, result, peer, request_id FROM audit_events \
                 WHERE ($1::text IS NULL OR actor = $1) AND ($2::text IS NULL OR action = $2) \
                 AND ($3::bigint IS NULL OR id < $3) ORDER BY id DESC LIMIT $4",
            )
            .await?;
        let rows = c.query(&stmt, &[&actor, &action, &before, &i64::from(limit)]).await?;
        Ok(rows
            .iter()
            .map(|r| AuditRow {
                id: r.get(0),
                time: r.get(1),
                event: sakuga_mesh::auth::AuditEvent {
                    actor: r.get(2),
                    action: r.get(3),
                    target: r.get(4),
                    result: r.get(5),
                    peer: r.get(6),
                    request_id: r.get(7),
                },
            })
            .collect())
    }
}
