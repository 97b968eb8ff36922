//! Webhook endpoints: their rows, scoped to owners, and their sealed secrets (the
//! deliveries are in `store::deliveries`).

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_postgres::{Row, types::ToSql};
use uuid::Uuid;

use super::rows::{Store, i32_of, millis, query_in_tx, u32_of};
use crate::{error::SchedulerError, webhook::Endpoint};

const ENDPOINT_COLUMNS: &str = "id, owner_id, url, events, project_id, only_named_jobs, enabled, description, \
    max_concurrency, timeout_ms, disabled_reason, consecutive_failures, failing_since, \
    previous_secret_expires_at, created_at, updated_at";

fn endpoint_from_row(r: &Row) -> Endpoint {
    Endpoint {
        id: r.get("id"),
        owner_id: r.get("owner_id"),
        url: r.get("url"),
        events: r.get("events"),
        project_id: r.get("project_id"),
        only_named_jobs: r.get("only_named_jobs"),
        enabled: r.get("enabled"),
        description: r.get("description"),
        max_concurrency: u32_of(r, "max_concurrency"),
        timeout_ms: u32_of(r, "timeout_ms"),
        disabled_reason: r.get("disabled_reason"),
        consecutive_failures: u32_of(r, "consecutive_failures"),
        failing_since: r.get("failing_since"),
        previous_secret_expires_at: r.get("previous_secret_expires_at"),
        created_at: r.get("created_at"),
        updated_at: r.get("updated_at"),
    }
}

/// An endpoint's row as written: everything the owner set, checked.
#[derive(Debug)]
pub struct EndpointRow<'a> {
    /// Target URL.
    pub url: &'a str,
    /// Event names.
    pub events: &'a [String],
    /// Project filter.
    pub project_id: Option<Uuid>,
    /// Only jobs that name it.
    pub only_named_jobs: bool,
    /// Free text.
    pub description: &'a str,
    /// Concurrency.
    pub max_concurrency: u32,
    /// Timeout.
    pub timeout_ms: u32,
}
impl Store {
    /// Inserts an endpoint whose secret `sealed` was sealed for `id`, unless `owner` already
    /// has `cap` endpoints (counted under a per-owner lock, so concurrent creates cannot
    /// overshoot together).
    pub async fn insert_endpoint(
        &self,
        id: Uuid,
        owner: &str,
        row: &EndpointRow<'_>,
        sealed: &[u8],
        cap: u32,
    ) -> Result<Endpoint, SchedulerError> {
        let sql = format!(
            "INSERT INTO webhook_endpoints (id, owner_id, url, events, project_id, only_named_jobs, description, \
               max_concurrency, timeout_ms, secret) \
             SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10 \
             WHERE (SELECT count(*) FROM webhook_endpoints WHERE owner_id = $2) < $11 \
             RETURNING {ENDPOINT_COLUMNS}"
        );
        let cap_param = i64::from(cap);
        self.write_endpoint(&sql, id, &owner, row, &[&sealed, &cap_param], Some(owner))
            .await?
            .ok_or(SchedulerError::TooManyWebhooks { cap })
    }

    /// Runs `sql` with `$1` the id, `$2` the owner, `$3`..`$9` the fields of `row` and then
    /// `extra`, in a transaction holding `lock_owner`'s endpoint lock when given (one round
    /// trip either way); the endpoint it returns, if any.
    async fn write_endpoint(
        &self,
        sql: &str,
        id: Uuid,
        owner: &(dyn ToSql + Sync),
        row: &EndpointRow<'_>,
        extra: &[&(dyn ToSql + Sync)],
        lock_owner: Option<&str>,
    ) -> Result<Option<Endpoint>, SchedulerError> {
        let (concurrency, timeout) = (i32_of(row.max_concurrency), i32_of(row.timeout_ms));
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![
            &id,
            owner,
            &row.url,
            &row.events,
            &row.project_id,
            &row.only_named_jobs,
            &row.description,
            &concurrency,
            &timeout,
        ];
        params.extend_from_slice(extra);
        let client = self.pool.get().await?;
        let Some(lock_owner) = lock_owner else {
            return Ok(client.query_opt(sql, &params).await?.map(|r| endpoint_from_row(&r)));
        };
        let (lock, stmt) = tokio::try_join!(
            client.prepare_cached("SELECT pg_advisory_xact_lock(hashtextextended($1, 14))"),
            client.prepare_cached(sql),
        )?;
        // The statement starts after the lock is held, so its count sees every create of the
        // owner that committed before.
        let rows = query_in_tx(&client, Some((&lock, lock_owner)), &stmt, &params).await?;
        Ok(rows.first().map(endpoint_from_row))
    }

    /// An endpoint visible to `owner` (`None`: any).
    pub async fn endpoint(&self, id: Uuid, owner: Option<&str>) -> Result<Endpoint, SchedulerError> {
        let client = self.pool.get().await?;
        let sql = format!(
            "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = $1 AND ($2::text IS NULL OR owner_id = $2)"
        );
        client
            .query_opt(&sql, &[&id, &owner])
            .await?
            .map(|r| endpoint_from_row(&r))
            .ok_or_else(|| SchedulerError::NotFound(format!("webhook {id}")))
    }

    /// An endpoint visible to `owner` with its sealed current secret and, while it still
    /// signs, its previous one.
    pub async fn endpoint_secrets(
        &self,
        id: Uuid,
        owner: Option<&str>,
    ) -> Result<(Endpoint, Vec<u8>, Option<Vec<u8>>), SchedulerError> {
        let client = self.pool.get().await?;
        let sql = format!(
            "SELECT {ENDPOINT_COLUMNS}, secret, \
               CASE WHEN previous_secret_expires_at > now() THEN previous_secret END AS previous \
             FROM webhook_endpoints WHERE id = $1 AND ($2::text IS NULL OR owner_id = $2)"
        );
        let r = client
            .query_opt(&sql, &[&id, &owner])
            .await?
            .ok_or_else(|| SchedulerError::NotFound(format!("webhook {id}")))?;
        Ok((endpoint_from_row(&r), r.get("secret"), r.get("previous")))
    }

    /// Up to `limit` endpoints visible to `owner`, newest first, after the keyset cursor.
    pub async fn endpoints(
        &self,
        owner: Option<&str>,
        after: Option<(DateTime<Utc>, Uuid)>,
        limit: u32,
    ) -> Result<Vec<Endpoint>, SchedulerError> {
        let (after_ts, after_id) = after.map_or((None, None), |(t, i)| (Some(t), Some(i)));
        let client = self.pool.get().await?;
        let sql = format!(
            "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE ($1::text IS NULL OR owner_id = $1) \
             AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3)) \
             ORDER BY created_at DESC, id DESC LIMIT $4"
        );
        let rows = client.query(&sql, &[&owner, &after_ts, &after_id, &i64::from(limit)]).await?;
        Ok(rows.iter().map(endpoint_from_row).collect())
    }

    /// Writes an endpoint's fields (already merged with its current ones and checked);
    /// `enabled` true clears why it was disabled and its run of failures.
    pub async fn update_endpoint(
        &self,
        id: Uuid,
        owner: Option<&str>,
        row: &EndpointRow<'_>,
        enabled: bool,
    ) -> Result<Endpoint, SchedulerError> {
        let sql = format!(
            "UPDATE webhook_endpoints SET url = $3, events = $4, project_id = $5, only_named_jobs = $6, \
               description = $7, max_concurrency = $8, timeout_ms = $9, \
               disabled_reason = CASE WHEN $10 THEN '' ELSE disabled_reason END, \
               consecutive_failures = CASE WHEN $10 AND NOT enabled THEN 0 ELSE consecutive_failures END, \
               failing_since = CASE WHEN $10 AND NOT enabled THEN NULL ELSE failing_since END, \
               enabled = $10, updated_at = now() \
             WHERE id = $1 AND ($2::text IS NULL OR owner_id = $2) RETURNING {ENDPOINT_COLUMNS}"
        );
        self.write_endpoint(&sql, id, &owner, row, &[&enabled], None)
            .await?
            .ok_or_else(|| SchedulerError::NotFound(format!("webhook {id}")))
    }

    /// Deletes an endpoint visible to `owner` and its deliveries.
    pub async fn delete_endpoint(&self, id: Uuid, owner: Option<&str>) -> Result<(), SchedulerError> {
        let client = self.pool.get().await?;
        let n = client
            .execute(
                "DELETE FROM webhook_endpoints WHERE id = $1 AND ($2::text IS NULL OR owner_id = $2)",
                &[&id, &owner],
            )
            .await?;
        if n == 0 {
            return Err(SchedulerError::NotFound(format!("webhook {id}")));
        }
        Ok(())
    }

    /// Makes `sealed` the current secret; the one it replaces signs beside it for
    /// `overlap` (not at all when zero).
    pub async fn rotate_secret(
        &self,
        id: Uuid,
        owner: Option<&str>,
        sealed: &[u8],
        overlap: Duration,
    ) -> Result<Endpoint, SchedulerError> {
        let client = self.pool.get().await?;
        let sql = format!(
            "UPDATE webhook_endpoints SET previous_secret = CASE WHEN $4::float8 > 0 THEN secret END, \
               previous_secret_expires_at = CASE WHEN $4::float8 > 0 THEN now() + $4 * interval '1 millisecond' END, \
               secret = $3, updated_at = now() \
             WHERE id = $1 AND ($2::text IS NULL OR owner_id = $2) RETURNING {ENDPOINT_COLUMNS}"
        );
        client
            .query_opt(&sql, &[&id, &owner, &sealed, &millis(overlap)])
            .await?
            .map(|r| endpoint_from_row(&r))
            .ok_or_else(|| SchedulerError::NotFound(format!("webhook {id}")))
    }

    /// Whether `owner` has an endpoint `id` (for SubmitJob's webhook_id).
    pub async fn owns_endpoint(&self, id: Uuid, owner: &str) -> Result<bool, SchedulerError> {
        let client = self.pool.get().await?;
        let stmt =
            client.prepare_cached("SELECT 1 FROM webhook_endpoints WHERE id = $1 AND owner_id = $2").await?;
        Ok(client.query_opt(&stmt, &[&id, &owner]).await?.is_some())
    }
}
