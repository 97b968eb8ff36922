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
        /// The family's access tokens that have not expired yet, to put on the denylist.
        live_access: Vec<LiveAccess>,
    },
    /// Unknown or expired.
    Invalid,
}

/// An access token issued with a refresh token, recorded so revoking the family can void it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveAccess {
    /// Its `jti` claim.
    pub jti: String,
    /// Its `exp` claim.
    pub expires_at: DateTime<Utc>,
}

/// A refresh token to store, with the access token issued beside it.
#[derive(Debug, Clone)]
pub struct NewRefresh {
    /// sha256 of the token.
    pub hash: String,
    /// Expiry of the refresh token.
    pub expires_at: DateTime<Utc>,
    /// The access token issued with it.
    pub access: LiveAccess,
}

const INSERT_REFRESH: &str = "INSERT INTO refresh_tokens \
     (id, family_id, user_id, token_hash, expires_at, access_jti, access_expires_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7)";

/// Revokes a family's tokens and returns its access tokens still live.
const REVOKE_FAMILY: &str = "WITH revoked AS (UPDATE refresh_tokens SET revoked_at = COALESCE(revoked_at, now()) \
     WHERE family_id = $1 RETURNING access_jti, access_expires_at) \
     SELECT access_jti, access_expires_at FROM revoked \
     WHERE access_jti IS NOT NULL AND access_expires_at > now()";

fn live_access(rows: &[Row]) -> Vec<LiveAccess> {
    rows.iter().map(|r| LiveAccess { jti: r.get(0), expires_at: r.get(1) }).collect()
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

    /// Creates the bootstrap admin unless a user of that name exists; `None` if one did
    /// (it is left exactly as it is: an operator may have disabled, demoted or
    /// re-passworded it).
    pub async fn create_admin_once(&self, username: &str, hash: &str) -> Result<Option<User>, AuthError> {
        self.create_user(username, hash, Role::Admin).await
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

    /// Replaces a user's password hash (the bootstrap admin's, from its secret).
    pub async fn set_password_hash(&self, id: Uuid, hash: &str) -> Result<(), AuthError> {
        let c = self.pool.get().await?;
        let stmt = c.prepare_cached("UPDATE users SET password_hash = $2 WHERE id = $1").await?;
        c.execute(&stmt, &[&id, &hash]).await?;
        Ok(())
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

    /// Disables or enables a user; disabling revokes their refresh tokens. `before_commit`
    /// runs inside the transaction with the changed user (the denylist write): if it
    /// fails, the transaction is rolled back and nothing changes.
    pub async fn set_disabled<F, Fut>(
        &self,
        id: Uuid,
        disabled: bool,
        before_commit: F,
    ) -> Result<User, AuthError>
    where
        F: FnOnce(User) -> Fut + Send,
        Fut: Future<Output = Result<(), AuthError>> + Send,
    {
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
        let changed = user(&row);
        // Dropping `tx` on error rolls it back.
        before_commit(changed.clone()).await?;
        tx.commit().await?;
        Ok(changed)
    }

    /// Stores a refresh token (its hash) starting or continuing `family`.
    pub async fn insert_refresh(
        &self,
        user_id: Uuid,
        family: Uuid,
        new: &NewRefresh,
    ) -> Result<(), AuthError> {
        let c = self.pool.get().await?;
        let stmt = c.prepare_cached(INSERT_REFRESH).await?;
        c.execute(
            &stmt,
            &[
                &Uuid::now_v7(),
                &family,
                &user_id,
                &new.hash,
                &new.expires_at,
                &new.access.jti,
                &new.access.expires_at,
            ],
        )
        .await?;
        Ok(())
    }

    /// Spends the refresh token `hash` and stores its successor `next` in the same
    /// transaction. A token presented a second time (or after its family was revoked)
    /// revokes the whole family, successors included: whoever holds a copy is locked out.
    ///
    /// Two concurrent calls with one token: the first locks and spends the row, inserts
    /// the successor and commits; the second waits on the row lock, then finds it spent and
    /// revokes the family, which by then holds the first call's successor. At most one
    /// succeeds, and its tokens die with the family.
    pub async fn redeem_refresh(&self, hash: &str, next: &NewRefresh) -> Result<Redeemed, AuthError> {
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
            let u = user(
                &tx.query_one(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1"), &[&user_id])
                    .await?,
            );
            if u.disabled {
                tx.commit().await?;
                return Ok(Redeemed::Invalid);
            }
            tx.execute(
                INSERT_REFRESH,
                &[
                    &Uuid::now_v7(),
                    &family,
                    &user_id,
                    &next.hash,
                    &next.expires_at,
                    &next.access.jti,
                    &next.access.expires_at,
                ],
            )
            .await?;
            tx.commit().await?;
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
                let live = tx.query(REVOKE_FAMILY, &[&family]).await?;
                Redeemed::Reused { user_id: row.get(1), live_access: live_access(&live) }
            }
            _ => Redeemed::Invalid,
        };
        tx.commit().await?;
        Ok(outcome)
    }

    /// Revokes the family of a refresh token if it belongs to `user_id`; returns the
    /// family's access tokens still live (none if the token is unknown or another's).
    pub async fn revoke_family_of(&self, hash: &str, user_id: Uuid) -> Result<Vec<LiveAccess>, AuthError> {
        let c = self.pool.get().await?;
        let family: Option<Uuid> = c
            .query_opt(
                "SELECT family_id FROM refresh_tokens WHERE token_hash = $1 AND user_id = $2",
                &[&hash, &user_id],
            )
            .await?
            .map(|r| r.get(0));
        let Some(family) = family else { return Ok(Vec::new()) };
        Ok(live_access(&c.query(REVOKE_FAMILY, &[&family]).await?))
    }

    /// Deletes up to `batch` audit events older than `days` days; returns how many.
    pub async fn prune_audit(&self, days: u32, batch: i64) -> Result<u64, AuthError> {
        let c = self.pool.get().await?;
        let stmt = c
            .prepare_cached(
                "DELETE FROM audit_events WHERE id IN (SELECT id FROM audit_events \
                 WHERE time < now() - $1 * interval '1 day' ORDER BY time LIMIT $2)",
            )
            .await?;
        Ok(c.execute(&stmt, &[&f64::from(days), &batch]).await?)
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
