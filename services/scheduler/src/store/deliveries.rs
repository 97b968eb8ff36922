//! The delivery outbox. Deliveries are written by the trigger of migration 14, in the
//! transaction of the job's change; here they are claimed, recorded, handed on to the next
//! event of their job, listed, sent again and swept.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_postgres::Row;
use uuid::Uuid;

use super::rows::{JOB_COLUMNS, Store, i32_of, job_from_row, millis, u32_of};
use crate::{
    error::SchedulerError,
    job::Job,
    webhook::{Delivery, DeliveryFilter, DeliveryState},
};

const DELIVERY_COLUMNS: &str = "id, endpoint_id, job_id, event, state, attempts, last_status_code, last_error, \
    created_at, next_attempt_at, last_attempt_at, delivered_at";

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

/// Lock the first `$1` endpoints (enabled, with a due delivery and room for it) no other
/// replica is claiming for; the claim's second statement then counts their deliveries in
/// flight with a snapshot taken after these locks, so two replicas never overshoot an
/// endpoint's concurrency together. The endpoint waiting longest goes first, and one at its
/// concurrency is passed over, so none starves behind busier ones. The probes per endpoint
/// are a step down `webhook_deliveries_due` and a count of `webhook_deliveries_in_flight`.
const LOCK_ENDPOINTS: &str = "SELECT e.id FROM webhook_endpoints e \
    WHERE e.enabled AND EXISTS (SELECT 1 FROM webhook_deliveries d WHERE d.endpoint_id = e.id \
        AND d.state = 'pending' AND d.next_attempt_at <= now()) \
      AND (SELECT count(*) FROM webhook_deliveries f WHERE f.endpoint_id = e.id \
        AND f.in_flight_until > now()) < e.max_concurrency \
    ORDER BY (SELECT min(d.next_attempt_at) FROM webhook_deliveries d \
        WHERE d.endpoint_id = e.id AND d.state = 'pending') \
    LIMIT $1 FOR UPDATE OF e SKIP LOCKED";

/// Claim up to `$2` due deliveries of the locked endpoints `$1`, the longest waiting first,
/// no more per endpoint than its free concurrency. Every due row may go: a job's later
/// events wait without a `next_attempt_at` until its earlier one is done (migration 14),
/// so each job's events arrive in the order of its changes and the claim reads no more rows
/// than it takes. Each claimed row is leased until `$3` ms after its endpoint's timeout.
static CLAIM: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "WITH room AS ( \
           SELECT e.id, e.max_concurrency - (SELECT count(*) FROM webhook_deliveries f \
             WHERE f.endpoint_id = e.id AND f.in_flight_until > now()) AS free \
           FROM webhook_endpoints e WHERE e.id = ANY($1)), \
         picked AS ( \
           SELECT c.id FROM room r CROSS JOIN LATERAL ( \
             SELECT d.id FROM webhook_deliveries d WHERE d.endpoint_id = r.id AND d.state = 'pending' \
               AND d.next_attempt_at <= now() ORDER BY d.next_attempt_at LIMIT greatest(r.free, 0)) c \
           LIMIT $2), \
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
    ///
    /// A delivery that is done (delivered or given up) hands its job's next one, if any,
    /// a `next_attempt_at`. The job's row is share-locked first, so a change of the job
    /// committing meanwhile either sees this one done (and its delivery is due at once) or
    /// is seen by the hand-on; the endpoint's row is locked before the delivery's, in the
    /// claim's order, so the two never wait on each other in a cycle.
    pub async fn record_attempt(
        &self,
        d: &ClaimedDelivery,
        outcome: &AttemptOutcome,
        retry_period: Duration,
        disable: DisableRule,
    ) -> Result<Recorded, SchedulerError> {
        let (id, attempt) = (d.id, d.attempt);
        let client = self.pool.get().await?;
        let (lock_job, lock_endpoint) = tokio::try_join!(
            client.prepare_cached("SELECT 1 FROM jobs WHERE id = $1 FOR SHARE"),
            client.prepare_cached("SELECT 1 FROM webhook_endpoints WHERE id = $1 FOR UPDATE"),
        )?;
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
                   RETURNING endpoint_id, job_id, seq, state), \
                 next AS ( \
                   UPDATE webhook_deliveries n SET next_attempt_at = now() \
                   WHERE n.id = (SELECT p.id FROM webhook_deliveries p, d WHERE d.state <> 'pending' \
                     AND p.endpoint_id = d.endpoint_id AND p.job_id = d.job_id AND p.state = 'pending' \
                     AND p.seq > d.seq AND p.next_attempt_at IS NULL ORDER BY p.seq LIMIT 1) RETURNING n.id), \
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
        let (status_code, attempt) = (i32::from(outcome.status_code), i32_of(attempt));
        let (retry_in, period) = (millis(outcome.retry_in), millis(retry_period));
        let (failures, disable_period) = (i32_of(disable.failures), millis(disable.period));
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 9] = [
            &id,
            &attempt,
            &outcome.delivered,
            &status_code,
            &outcome.error,
            &retry_in,
            &period,
            &failures,
            &disable_period,
        ];
        // One round trip: the statements go out together, and a failure anywhere aborts
        // the transaction, which the COMMIT then rolls back.
        let job_key: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&d.job.id];
        let endpoint_key: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&d.endpoint_id];
        let (begin, job, endpoint, rows, commit) = tokio::join!(
            client.batch_execute("BEGIN"),
            client.query(&lock_job, &job_key),
            client.query(&lock_endpoint, &endpoint_key),
            client.query(&stmt, &params),
            client.batch_execute("COMMIT"),
        );
        begin?;
        job?;
        endpoint?;
        let rows = rows?;
        commit?;
        Ok(match rows.first().map(|r| r.get::<_, String>(0)).as_deref() {
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
        // Only heads are given up here; their next deliveries get a time (and are given up
        // at a later sweep if they are as old).
        let gave_up: i64 = client
            .query_one(
                "WITH gave AS ( \
                   UPDATE webhook_deliveries SET state = 'failed', \
                     last_error = CASE WHEN last_error = '' THEN 'retry period ended before an attempt succeeded' \
                       ELSE last_error END \
                   WHERE state = 'pending' AND created_at < now() - $1 * interval '1 millisecond' \
                     AND next_attempt_at IS NOT NULL AND (in_flight_until IS NULL OR in_flight_until < now()) \
                   RETURNING endpoint_id, job_id, seq), \
                 handed_on AS ( \
                   UPDATE webhook_deliveries n SET next_attempt_at = now() FROM ( \
                     SELECT DISTINCT ON (p.endpoint_id, p.job_id) p.id FROM webhook_deliveries p \
                     JOIN gave g ON p.endpoint_id = g.endpoint_id AND p.job_id = g.job_id AND p.seq > g.seq \
                     WHERE p.state = 'pending' AND p.next_attempt_at IS NULL \
                     ORDER BY p.endpoint_id, p.job_id, p.seq) h WHERE n.id = h.id RETURNING n.id) \
                 SELECT count(*) FROM gave",
                &[&millis(retry_period)],
            )
            .await?
            .get(0);
        // The net under the hand-on: a waiting delivery whose job has no other pending one
        // before it goes (a give-up above racing a new change of the job could leave one).
        client
            .execute(
                "UPDATE webhook_deliveries d SET next_attempt_at = now() \
                 WHERE d.state = 'pending' AND d.next_attempt_at IS NULL AND NOT EXISTS ( \
                   SELECT 1 FROM webhook_deliveries p WHERE p.endpoint_id = d.endpoint_id AND p.job_id = d.job_id \
                     AND p.state = 'pending' AND (p.next_attempt_at IS NOT NULL OR p.seq < d.seq))",
                &[],
            )
            .await?;
        let deleted = client
            .execute(
                "DELETE FROM webhook_deliveries WHERE id IN (SELECT id FROM webhook_deliveries \
                   WHERE state <> 'pending' AND created_at < now() - $1 * interval '1 millisecond' LIMIT $2)",
                &[&millis(keep), &limit],
            )
            .await?;
        Ok((u64::try_from(gave_up).unwrap_or(0), deleted))
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
