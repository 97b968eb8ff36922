//! Webhook endpoints and the delivery outbox. Deliveries are written by the trigger of
//! migration 14, in the transaction of the job's change; here they are claimed, recorded,
//! listed, sent again and swept.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_postgres::Row;
use uuid::Uuid;

use super::rows::{JOB_COLUMNS, Store, job_from_row};
use crate::{
    error::SchedulerError,
    job::Job,
    webhook::{Delivery, DeliveryFilter, DeliveryState, Endpoint},
};

const ENDPOINT_COLUMNS: &str = "id, owner_id, url, events, project_id, only_named_jobs, enabled, description, \
    max_concurrency, timeout_ms, disabled_reason, consecutive_failures, failing_since, \
    previous_secret_expires_at, created_at, updated_at";

const DELIVERY_COLUMNS: &str = "id, endpoint_id, job_id, event, state, attempts, last_status_code, last_error, \
    created_at, next_attempt_at, last_attempt_at, delivered_at";

fn u32_of(row: &Row, col: &str) -> u32 {
    u32::try_from(row.get::<_, i32>(col)).unwrap_or(0)
}

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

fn delivery_from_row(r: &Row) -> Delivery {
    let state: String = r.get("state");
    let state = DeliveryState::parse(&state).unwrap_or(DeliveryState::Failed);
    Delivery {
        id: r.get("id"),
        endpoint_id: r.get("endpoint_id"),
        job_id: r.get("job_id"),
        event: r.get("event"),
        state,
        attempts: u32_of(r, "attempts"),
        last_status_code: u32_of(r, "last_status_code"),
        last_error: r.get("last_error"),
        created_at: r.get("created_at"),
        next_attempt_at: (state == DeliveryState::Pending).then(|| r.get("next_attempt_at")),
        last_attempt_at: r.get("last_attempt_at"),
        delivered_at: r.get("delivered_at"),
    }
}

fn i32_of(v: u32) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
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

/// A delivery claimed for one attempt, with what it takes to make it.
#[derive(Debug)]
pub struct ClaimedDelivery {
    /// Id (the `webhook-id` comes from it).
    pub id: Uuid,
    /// Event name.
    pub event: String,
    /// The job as it was at the change.
    pub job: Job,
    /// When the change happened.
    pub created_at: DateTime<Utc>,
    /// The attempt's number (1 for the first).
    pub attempt: u32,
    /// The endpoint.
    pub endpoint_id: Uuid,
    /// Its URL.
    pub url: String,
    /// Per-attempt timeout.
    pub timeout_ms: u32,
    /// Its sealed current secret.
    pub secret: Vec<u8>,
    /// Its sealed previous secret while it still signs.
    pub previous_secret: Option<Vec<u8>>,
}

/// What became of one attempt.
#[derive(Debug, Clone)]
pub struct AttemptOutcome {
    /// 2xx from the endpoint.
    pub delivered: bool,
    /// HTTP status (0: no response).
    pub status_code: u16,
    /// Why it failed; empty when delivered.
    pub error: String,
    /// When to try again if it failed (the caller's backoff with jitter).
    pub retry_in: Duration,
}

/// What [`Store::record_attempt`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// Accepted by the endpoint.
    Delivered,
    /// Failed; tried again later.
    Retrying,
    /// Failed, and the retry period is over: kept as failed.
    GaveUp,
    /// The delivery was no longer this attempt's (swept, redelivered or deleted).
    Lost,
}

/// When an endpoint that keeps failing is disabled: after `failures` failed attempts in a
/// row that span at least `period`.
#[derive(Debug, Clone, Copy)]
pub struct DisableRule {
    /// Failed attempts in a row.
    pub failures: u32,
    /// Since the first of them.
    pub period: Duration,
}

/// Lock the first `$1` endpoints (enabled, with a due delivery) no other replica is
/// claiming for; the claim's second statement then counts their deliveries in flight with
/// a snapshot taken after these locks, so two replicas never overshoot an endpoint's
/// concurrency together.
/// The endpoint waiting longest goes first, so none starves behind busier ones.
const LOCK_ENDPOINTS: &str = "SELECT e.id FROM webhook_endpoints e \
    WHERE e.enabled AND EXISTS (SELECT 1 FROM webhook_deliveries d WHERE d.endpoint_id = e.id \
        AND d.state = 'pending' AND d.next_attempt_at <= now()) \
    ORDER BY (SELECT min(d.next_attempt_at) FROM webhook_deliveries d \
        WHERE d.endpoint_id = e.id AND d.state = 'pending') \
    LIMIT $1 FOR UPDATE OF e SKIP LOCKED";

/// Claim up to `$2` due deliveries of the locked endpoints `$1`: per endpoint, in `seq`
/// order, never one whose job has an earlier delivery still pending for that endpoint (so
/// each job's events arrive in the order of its changes), and no more than its free
/// concurrency. Each claimed row is leased until `$3` ms after its endpoint's timeout.
static CLAIM: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "WITH flying AS ( \
           SELECT endpoint_id, count(*) AS n FROM webhook_deliveries \
           WHERE endpoint_id = ANY($1) AND state = 'pending' AND in_flight_until > now() \
           GROUP BY endpoint_id), \
         due AS ( \
           SELECT d.id, d.endpoint_id, row_number() OVER (PARTITION BY d.endpoint_id ORDER BY d.seq) AS rank \
           FROM webhook_deliveries d \
           WHERE d.endpoint_id = ANY($1) AND d.state = 'pending' AND d.next_attempt_at <= now() \
             AND NOT EXISTS (SELECT 1 FROM webhook_deliveries p WHERE p.endpoint_id = d.endpoint_id \
               AND p.job_id = d.job_id AND p.state = 'pending' AND p.seq < d.seq)), \
         picked AS ( \
           SELECT due.id FROM due JOIN webhook_endpoints e ON e.id = due.endpoint_id \
           LEFT JOIN flying f ON f.endpoint_id = due.endpoint_id \
           WHERE due.rank <= e.max_concurrency - coalesce(f.n, 0) \
           ORDER BY due.rank LIMIT $2), \
         claimed AS ( \
           UPDATE webhook_deliveries d SET attempts = d.attempts + 1, last_attempt_at = now(), \
             in_flight_until = now() + (e.timeout_ms + $3::float8) * interval '1 millisecond', \
             next_attempt_at = now() + (e.timeout_ms + $3::float8) * interval '1 millisecond' \
           FROM picked p, webhook_endpoints e WHERE d.id = p.id AND e.id = d.endpoint_id \
           RETURNING d.id AS d_id, d.event AS d_event, d.created_at AS d_created_at, d.attempts AS d_attempt, \
             d.job AS d_job, e.id AS e_id, e.url AS e_url, e.timeout_ms AS e_timeout_ms, e.secret AS e_secret, \
             CASE WHEN e.previous_secret_expires_at > now() THEN e.previous_secret END AS e_previous) \
         SELECT c.*, {} FROM claimed c, jsonb_populate_record(NULL::jobs, c.d_job) j",
        JOB_COLUMNS.split(", ").map(|c| format!("j.{c}")).collect::<Vec<_>>().join(", ")
    )
});

impl Store {
    /// Inserts an endpoint whose secret `sealed` was sealed for `id`.
    pub async fn insert_endpoint(
        &self,
        id: Uuid,
        owner: &str,
        row: &EndpointRow<'_>,
        sealed: &[u8],
    ) -> Result<Endpoint, SchedulerError> {
        let client = self.pool.get().await?;
        let sql = format!(
            "INSERT INTO webhook_endpoints (id, owner_id, url, events, project_id, only_named_jobs, description, \
               max_concurrency, timeout_ms, secret) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING {ENDPOINT_COLUMNS}"
        );
        let r = client
            .query_one(
                &sql,
                &[
                    &id,
                    &owner,
                    &row.url,
                    &row.events,
                    &row.project_id,
                    &row.only_named_jobs,
                    &row.description,
                    &i32_of(row.max_concurrency),
                    &i32_of(row.timeout_ms),
                    &sealed,
                ],
            )
            .await?;
        Ok(endpoint_from_row(&r))
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
        let client = self.pool.get().await?;
        let sql = format!(
            "UPDATE webhook_endpoints SET url = $3, events = $4, project_id = $5, only_named_jobs = $6, \
               description = $7, max_concurrency = $8, timeout_ms = $9, \
               disabled_reason = CASE WHEN $10 THEN '' ELSE disabled_reason END, \
               consecutive_failures = CASE WHEN $10 AND NOT enabled THEN 0 ELSE consecutive_failures END, \
               failing_since = CASE WHEN $10 AND NOT enabled THEN NULL ELSE failing_since END, \
               enabled = $10, updated_at = now() \
             WHERE id = $1 AND ($2::text IS NULL OR owner_id = $2) RETURNING {ENDPOINT_COLUMNS}"
        );
        client
            .query_opt(
                &sql,
                &[
                    &id,
                    &owner,
                    &row.url,
                    &row.events,
                    &row.project_id,
                    &row.only_named_jobs,
                    &row.description,
                    &i32_of(row.max_concurrency),
                    &i32_of(row.timeout_ms),
                    &enabled,
                ],
            )
            .await?
            .map(|r| endpoint_from_row(&r))
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

    /// Claims up to `limit` due deliveries for this replica (see [`CLAIM`]). Two statements
    /// in one transaction: lock endpoints, then claim within them.
    pub async fn claim_deliveries(
        &self,
        limit: u32,
        lease_grace: Duration,
    ) -> Result<Vec<ClaimedDelivery>, SchedulerError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let lock = tx.prepare_cached(LOCK_ENDPOINTS).await?;
        let locked: Vec<Uuid> =
            tx.query(&lock, &[&i64::from(limit)]).await?.iter().map(|r| r.get(0)).collect();
        if locked.is_empty() {
            return Ok(Vec::new());
        }
        let claim = tx.prepare_cached(&CLAIM).await?;
        let rows = tx.query(&claim, &[&locked, &i64::from(limit), &millis(lease_grace)]).await?;
        tx.commit().await?;
        Ok(rows
            .iter()
            .map(|r| ClaimedDelivery {
                id: r.get("d_id"),
                event: r.get("d_event"),
                job: job_from_row(r),
                created_at: r.get("d_created_at"),
                attempt: u32_of(r, "d_attempt"),
                endpoint_id: r.get("e_id"),
                url: r.get("e_url"),
                timeout_ms: u32_of(r, "e_timeout_ms"),
                secret: r.get("e_secret"),
                previous_secret: r.get("e_previous"),
            })
            .collect())
    }

    /// Records attempt `attempt` of delivery `id` and its endpoint's health, in one
    /// statement: delivered; or failed, tried again after `outcome.retry_in` unless that
    /// is past `retry_period` since the change (then kept as failed). An endpoint whose
    /// failures in a row reach `disable` is disabled, with the reason.
    pub async fn record_attempt(
        &self,
        id: Uuid,
        attempt: u32,
        outcome: &AttemptOutcome,
        retry_period: Duration,
        disable: DisableRule,
    ) -> Result<Recorded, SchedulerError> {
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached(
                "WITH d AS ( \
                   UPDATE webhook_deliveries SET \
                     state = CASE WHEN $3 THEN 'delivered' \
                       WHEN created_at + $7 * interval '1 millisecond' < now() + $6 * interval '1 millisecond' \
                         THEN 'failed' ELSE 'pending' END, \
                     delivered_at = CASE WHEN $3 THEN now() END, \
                     next_attempt_at = now() + $6 * interval '1 millisecond', \
                     in_flight_until = NULL, last_status_code = $4, last_error = $5 \
                   WHERE id = $1 AND attempts = $2 AND state = 'pending' \
                   RETURNING endpoint_id, state), \
                 e AS ( \
                   UPDATE webhook_endpoints w SET \
                     consecutive_failures = CASE WHEN $3 THEN 0 ELSE w.consecutive_failures + 1 END, \
                     failing_since = CASE WHEN $3 THEN NULL ELSE coalesce(w.failing_since, now()) END, \
                     enabled = w.enabled AND ($3 OR w.consecutive_failures + 1 < $8 \
                       OR coalesce(w.failing_since, now()) > now() - $9 * interval '1 millisecond'), \
                     disabled_reason = CASE WHEN w.enabled AND NOT $3 AND w.consecutive_failures + 1 >= $8 \
                       AND coalesce(w.failing_since, now()) <= now() - $9 * interval '1 millisecond' \
                       THEN format('disabled at %s after %s failed attempts in a row since %s; last: %s', \
                         now(), w.consecutive_failures + 1, w.failing_since, $5) \
                       ELSE w.disabled_reason END \
                   FROM d WHERE w.id = d.endpoint_id RETURNING w.id) \
                 SELECT d.state FROM d",
            )
            .await?;
        let row = client
            .query_opt(
                &stmt,
                &[
                    &id,
                    &i32_of(attempt),
                    &outcome.delivered,
                    &i32::from(outcome.status_code),
                    &outcome.error,
                    &millis(outcome.retry_in),
                    &millis(retry_period),
                    &i32_of(disable.failures),
                    &millis(disable.period),
                ],
            )
            .await?;
        Ok(match row.map(|r| r.get::<_, String>(0)).as_deref() {
            Some("delivered") => Recorded::Delivered,
            Some("pending") => Recorded::Retrying,
            Some(_) => Recorded::GaveUp,
            None => Recorded::Lost,
        })
    }

    /// Hands deliveries claimed by a replica that is stopping back at once (their attempt
    /// not counted), so another replica need not wait for the lease.
    pub async fn release_deliveries(&self, claimed: &[(Uuid, u32)]) -> Result<(), SchedulerError> {
        if claimed.is_empty() {
            return Ok(());
        }
        let (ids, attempts): (Vec<Uuid>, Vec<i32>) = claimed.iter().map(|(id, a)| (*id, i32_of(*a))).unzip();
        let client = self.pool.get().await?;
        client
            .execute(
                "UPDATE webhook_deliveries d SET attempts = d.attempts - 1, in_flight_until = NULL, \
                   next_attempt_at = now() \
                 FROM unnest($1::uuid[], $2::int4[]) AS c(id, attempt) \
                 WHERE d.id = c.id AND d.attempts = c.attempt AND d.state = 'pending'",
                &[&ids, &attempts],
            )
            .await?;
        Ok(())
    }

    /// Whether `owner` has an endpoint `id` (for SubmitJob's webhook_id).
    pub async fn owns_endpoint(&self, id: Uuid, owner: &str) -> Result<bool, SchedulerError> {
        let client = self.pool.get().await?;
        let stmt =
            client.prepare_cached("SELECT 1 FROM webhook_endpoints WHERE id = $1 AND owner_id = $2").await?;
        Ok(client.query_opt(&stmt, &[&id, &owner]).await?.is_some())
    }

    /// A page of deliveries of endpoints visible to `owner`, newest first.
    pub async fn deliveries(
        &self,
        owner: Option<&str>,
        filter: &DeliveryFilter,
        limit: u32,
    ) -> Result<Vec<Delivery>, SchedulerError> {
        let (after_ts, after_id) = filter.cursor.map_or((None, None), |(t, i)| (Some(t), Some(i)));
        let client = self.pool.get().await?;
        let sql = format!(
            "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE ($1::text IS NULL OR owner_id = $1) \
             AND ($2::uuid IS NULL OR endpoint_id = $2) AND ($3::uuid IS NULL OR job_id = $3) \
             AND ($4::text IS NULL OR state = $4) \
             AND ($5::timestamptz IS NULL OR (created_at, id) < ($5, $6)) \
             ORDER BY created_at DESC, id DESC LIMIT $7"
        );
        let rows = client
            .query(
                &sql,
                &[
                    &owner,
                    &filter.endpoint_id,
                    &filter.job_id,
                    &filter.state.map(DeliveryState::as_str),
                    &after_ts,
                    &after_id,
                    &i64::from(limit),
                ],
            )
            .await?;
        Ok(rows.iter().map(delivery_from_row).collect())
    }

    /// Makes a delivered or failed delivery visible to `owner` pending again, due now.
    pub async fn redeliver(&self, id: Uuid, owner: Option<&str>) -> Result<Delivery, SchedulerError> {
        let client = self.pool.get().await?;
        let sql = format!(
            "WITH before AS (SELECT id, state FROM webhook_deliveries WHERE id = $1 \
               AND ($2::text IS NULL OR owner_id = $2) FOR UPDATE) \
             UPDATE webhook_deliveries d SET state = 'pending', next_attempt_at = now(), in_flight_until = NULL, \
               delivered_at = NULL \
             FROM before WHERE d.id = before.id AND before.state <> 'pending' RETURNING {}",
            DELIVERY_COLUMNS.split(", ").map(|c| format!("d.{c}")).collect::<Vec<_>>().join(", ")
        );
        if let Some(r) = client.query_opt(&sql, &[&id, &owner]).await? {
            return Ok(delivery_from_row(&r));
        }
        let exists = client
            .query_opt(
                "SELECT 1 FROM webhook_deliveries WHERE id = $1 AND ($2::text IS NULL OR owner_id = $2)",
                &[&id, &owner],
            )
            .await?;
        Err(match exists {
            Some(_) => SchedulerError::FailedPrecondition(format!("delivery {id} is still pending")),
            None => SchedulerError::NotFound(format!("delivery {id}")),
        })
    }

    /// Gives up on pending deliveries older than `retry_period` that are not in flight
    /// (those of disabled endpoints, which no claim reaches), and deletes up to `limit`
    /// finished ones older than `keep`. Returns (given up, deleted).
    pub async fn sweep_deliveries(
        &self,
        retry_period: Duration,
        keep: Duration,
        limit: i64,
    ) -> Result<(u64, u64), SchedulerError> {
        let client = self.pool.get().await?;
        let gave_up = client
            .execute(
                "UPDATE webhook_deliveries SET state = 'failed', \
                   last_error = CASE WHEN last_error = '' THEN 'retry period ended before an attempt succeeded' \
                     ELSE last_error END \
                 WHERE state = 'pending' AND created_at < now() - $1 * interval '1 millisecond' \
                   AND (in_flight_until IS NULL OR in_flight_until < now())",
                &[&millis(retry_period)],
            )
            .await?;
        let deleted = client
            .execute(
                "DELETE FROM webhook_deliveries WHERE id IN (SELECT id FROM webhook_deliveries \
                   WHERE state <> 'pending' AND created_at < now() - $1 * interval '1 millisecond' LIMIT $2)",
                &[&millis(keep), &limit],
            )
            .await?;
        Ok((gave_up, deleted))
    }

    /// Pending deliveries, all replicas (for the metrics; counted up to `cap`).
    pub async fn count_pending_deliveries(&self, cap: i64) -> Result<i64, SchedulerError> {
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached(
                "SELECT count(*) FROM (SELECT 1 FROM webhook_deliveries WHERE state = 'pending' LIMIT $1) p",
            )
            .await?;
        Ok(client.query_one(&stmt, &[&cap]).await?.get(0))
    }
}
