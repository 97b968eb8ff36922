//! The submit statement and the client's reads and changes of jobs: reuse, get, list,
//! cancel, retry.

use uuid::Uuid;

use super::{
    leases::Claimed,
    rows::{JOB_COLUMNS, Store, job_from_row},
};
use crate::{
    error::SchedulerError,
    job::{Job, Status},
};

/// Serializes the active-job accounting of one owner until the transaction ends, so
/// concurrent submits and retries cannot overshoot the cap together.
pub(super) const LOCK_OWNER: &str = "SELECT pg_advisory_xact_lock(hashtextextended($1, 7))";

/// Takes [`LOCK_OWNER`] in `tx`.
async fn lock_owner(tx: &deadpool_postgres::Transaction<'_>, owner: &str) -> Result<(), SchedulerError> {
    tx.execute(LOCK_OWNER, &[&owner]).await?;
    Ok(())
}

/// A submit as one statement (run under [`LOCK_OWNER`]): the owner's job with the same
/// idempotency key if there is one (`inserted` false), else the new job if the owner has
/// fewer than `$26` jobs queued or running (`inserted` true), else no row. With an actor in
/// `$28`, the call's audit row (action `$29`, result `$30`, peer `$31`, request `$32`)
/// naming the job answered goes in with it.
///
/// Given a free slot of worker `$33` (offering backends `$34`), the new job goes in already
/// assigned to it, under a lease of `$35` ms, when nothing of those backends waits in the
/// line of owners: it is then what a claim for that slot would take, and it is never queued
/// (no row in the line, no wake-up of the dispatchers, no second write of the job). When
/// something waits, it goes in queued and the slot is left to a claim.
///
/// Every parameter is cast, as `INSERT ... SELECT` does not take its column types for them.
pub(super) static SUBMIT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "WITH existing AS ( \
           SELECT {JOB_COLUMNS} FROM jobs \
           WHERE owner_id = $2::text AND $19::text IS NOT NULL AND idempotency_key = $19::text), \
         active AS ( \
           SELECT count(*) AS n FROM (SELECT 1 FROM jobs WHERE owner_id = $2::text \
             AND status IN ('queued', 'assigned', 'running') LIMIT $26::int8) a), \
         hand AS ( \
           SELECT CASE WHEN $33::text IS NOT NULL AND NOT EXISTS \
             (SELECT 1 FROM queue_heads WHERE backend = ANY($34::text[])) THEN $33::text END AS worker_id), \
         ins AS ( \
           INSERT INTO jobs (id, owner_id, kind, backend, model, prompt, negative_prompt, composed_prompt, \
             width, height, steps, batch_size, frames, fps, seed, cfg_scale, sampler, priority, \
             idempotency_key, max_attempts, spec_hash, project_id, character_ids, composed_negative, \
             trace_context, webhook_endpoint_id, status, worker_id, lease_token, lease_expires_at, attempts) \
           SELECT $1::uuid, $2::text, $3::text, $4::text, $5::text, $6::text, $7::text, $8::text, \
             $9::int4, $10::int4, $11::int4, $12::int4, $13::int4, $14::int4, $15::int8, $16::float4, \
             $17::text, $18::int4, $19::text, $20::int4, $21::text, $22::uuid, $23::uuid[], $24::text, \
             $25::jsonb, $27::uuid, \
             CASE WHEN h.worker_id IS NULL THEN 'queued' ELSE 'assigned' END, h.worker_id, \
             CASE WHEN h.worker_id IS NOT NULL THEN gen_random_uuid() END, \
             CASE WHEN h.worker_id IS NOT NULL THEN now() + $35::float8 * interval '1 millisecond' END, \
             CASE WHEN h.worker_id IS NULL THEN 0 ELSE 1 END \
           FROM hand h \
           WHERE NOT EXISTS (SELECT 1 FROM existing) AND (SELECT n FROM active) < $26::int8 \
           RETURNING {JOB_COLUMNS}), \
         audit AS ( \
           INSERT INTO audit_events (actor, action, target, result, peer, request_id) \
           SELECT $28::text, $29::text, 'job:' || r.id, $30::text, $31::text, $32::text \
           FROM (SELECT id FROM ins UNION ALL SELECT id FROM existing) r WHERE $28::text IS NOT NULL) \
         SELECT true AS inserted, ins.* FROM ins \
         UNION ALL SELECT false AS inserted, existing.* FROM existing"
    )
});

/// Refuses when `owner` already has `cap` jobs queued or running (call under
/// [`lock_owner`]).
async fn ensure_room(
    tx: &deadpool_postgres::Transaction<'_>,
    owner: &str,
    cap: u32,
) -> Result<(), SchedulerError> {
    // Counting stops at the cap: whether the owner is at it is all that matters.
    let count = tx
        .prepare_cached(
            "SELECT count(*) FROM (SELECT 1 FROM jobs WHERE owner_id = $1 \
             AND status IN ('queued', 'assigned', 'running') LIMIT $2) active",
        )
        .await?;
    let active: i64 = tx.query_one(&count, &[&owner, &i64::from(cap)]).await?.get(0);
    if active >= i64::from(cap) {
        return Err(SchedulerError::QueueFull { active, cap });
    }
    Ok(())
}

/// Result of an insert.
#[derive(Debug)]
pub struct Inserted {
    /// The job (new, or the earlier one with the same idempotency key).
    pub job: Job,
    /// True when the idempotency key matched an existing job.
    pub deduplicated: bool,
}

/// What a submit did: the job, or `None` when the owner is at the cap (counting stops at
/// it, so an owner refused is exactly at it), and whether it went to the free slot.
#[derive(Debug)]
pub struct Submitted {
    /// The new job, or the earlier one with the same idempotency key; `None` at the cap.
    pub inserted: Option<Inserted>,
    /// The new job with its lease, when it went in assigned to the free slot handed off
    /// (see [`super::Submits::insert`]): the caller sends it to the worker.
    pub assigned: Option<Claimed>,
}

/// Filters of ListJobs.
#[derive(Debug, Default)]
pub struct ListFilter {
    /// Only this state.
    pub status: Option<Status>,
    /// Keyset cursor: (created_at, id) of the last row of the previous page.
    pub cursor: Option<(chrono::DateTime<chrono::Utc>, Uuid)>,
    /// Submitted at or after.
    pub created_after: Option<chrono::DateTime<chrono::Utc>>,
    /// Submitted before.
    pub created_before: Option<chrono::DateTime<chrono::Utc>>,
    /// Prompt substring, case-insensitive.
    pub prompt_contains: Option<String>,
    /// Only this project's jobs.
    pub project_id: Option<Uuid>,
}

impl Store {
    /// The owner's latest succeeded job with exactly these parameters, if any.
    pub async fn reusable(&self, owner: &str, spec_hash: &str) -> Result<Option<Job>, SchedulerError> {
        let client = self.pool.get().await?;
        let sql = format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE owner_id = $1 AND spec_hash = $2 AND status = 'succeeded' \
             ORDER BY finished_at DESC LIMIT 1"
        );
        let stmt = client.prepare_cached(&sql).await?;
        Ok(client.query_opt(&stmt, &[&owner, &spec_hash]).await?.map(|r| job_from_row(&r)))
    }

    /// A job visible to `owner` (`None`: any owner, for internal use and admins).
    pub async fn get(&self, id: Uuid, owner: Option<&str>) -> Result<Job, SchedulerError> {
        let client = self.pool.get().await?;
        let sql =
            format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1 AND ($2::text IS NULL OR owner_id = $2)");
        let stmt = client.prepare_cached(&sql).await?;
        client
            .query_opt(&stmt, &[&id, &owner])
            .await?
            .map(|r| job_from_row(&r))
            .ok_or_else(|| SchedulerError::NotFound(format!("job {id}")))
    }

    /// A page of jobs visible to `owner` (`None`: all), newest first, after the keyset
    /// cursor, filtered.
    pub async fn list(
        &self,
        owner: Option<&str>,
        filter: &ListFilter,
        limit: u32,
    ) -> Result<Vec<Job>, SchedulerError> {
        let client = self.pool.get().await?;
        let sql = format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE ($1::text IS NULL OR owner_id = $1) \
             AND ($2::text IS NULL OR status = $2) \
             AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4)) \
             AND ($5::timestamptz IS NULL OR created_at >= $5) \
             AND ($6::timestamptz IS NULL OR created_at < $6) \
             AND ($7::text IS NULL OR strpos(lower(prompt), lower($7)) > 0) \
             AND ($9::uuid IS NULL OR project_id = $9) \
             ORDER BY created_at DESC, id DESC LIMIT $8"
        );
        let stmt = client.prepare_cached(&sql).await?;
        let (after_ts, after_id) = filter.cursor.map_or((None, None), |(t, i)| (Some(t), Some(i)));
        let rows = client
            .query(
                &stmt,
                &[
                    &owner,
                    &filter.status.map(Status::as_str),
                    &after_ts,
                    &after_id,
                    &filter.created_after,
                    &filter.created_before,
                    &filter.prompt_contains,
                    &i64::from(limit),
                    &filter.project_id,
                ],
            )
            .await?;
        Ok(rows.iter().map(job_from_row).collect())
    }

    /// Cancels a job that has not finished. Returns the job as it was before (so the
    /// caller knows whether a worker must be told) and after, or `None` if it had finished.
    pub async fn cancel(
        &self,
        id: Uuid,
        owner: Option<&str>,
    ) -> Result<Option<(Status, Option<String>, Job)>, SchedulerError> {
        let client = self.pool.get().await?;
        let sql = format!(
            "WITH before AS (SELECT id, status, worker_id FROM jobs WHERE id = $1 \
                AND ($2::text IS NULL OR owner_id = $2) FOR UPDATE) \
             UPDATE jobs j SET status = 'canceled', lease_token = NULL, lease_expires_at = NULL, \
                finished_at = now(), updated_at = now() \
             FROM before WHERE j.id = before.id AND before.status IN ('queued', 'assigned', 'running') \
             RETURNING before.status AS before_status, before.worker_id AS before_worker, {}",
            JOB_COLUMNS.split(", ").map(|c| format!("j.{c}")).collect::<Vec<_>>().join(", ")
        );
        let stmt = client.prepare_cached(&sql).await?;
        Ok(client.query_opt(&stmt, &[&id, &owner]).await?.map(|r| {
            let before: String = r.get("before_status");
            (Status::parse(&before).unwrap_or(Status::Queued), r.get("before_worker"), job_from_row(&r))
        }))
    }

    /// Queues a failed or canceled job again with fresh attempts, unless its owner already
    /// has `cap` jobs queued or running (counted and locked exactly as for a new job).
    /// `None`: no such job visible to `owner`, or not failed or canceled.
    pub async fn retry(
        &self,
        id: Uuid,
        owner: Option<&str>,
        cap: u32,
    ) -> Result<Option<Job>, SchedulerError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let retryable = tx
            .prepare_cached(
                "SELECT owner_id FROM jobs WHERE id = $1 AND ($2::text IS NULL OR owner_id = $2) \
                 AND status IN ('failed', 'canceled')",
            )
            .await?;
        let Some(row) = tx.query_opt(&retryable, &[&id, &owner]).await? else {
            return Ok(None);
        };
        let job_owner: String = row.get(0);
        lock_owner(&tx, &job_owner).await?;
        ensure_room(&tx, &job_owner, cap).await?;
        let sql = format!(
            "UPDATE jobs SET status = 'queued', attempts = 0, error = '', file_ids = '{{}}', worker_id = NULL, not_before = NULL, \
             progress_step = 0, progress_total = 0, progress_stage = '', progress_item = 0, \
             started_at = NULL, finished_at = NULL, updated_at = now() \
             WHERE id = $1 AND status IN ('failed', 'canceled') \
             RETURNING {JOB_COLUMNS}"
        );
        let stmt = tx.prepare_cached(&sql).await?;
        let job = tx.query_opt(&stmt, &[&id]).await?.map(|r| job_from_row(&r));
        tx.commit().await?;
        Ok(job)
    }
}
