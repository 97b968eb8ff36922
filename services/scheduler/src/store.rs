//! SQL of the scheduler. Every statement is parameterized and prepared (cached per
//! connection); every state change is one guarded UPDATE.

use std::time::Duration;

use deadpool_postgres::Pool;
use tokio_postgres::Row;
use uuid::Uuid;

use crate::{
    error::SchedulerError,
    job::{Job, Kind, NewJob, Spec, Status},
};

const JOB_COLUMNS: &str = "id, owner_id, project_id, kind, backend, model, prompt, negative_prompt, \
    composed_prompt, width, height, steps, batch_size, frames, fps, seed, cfg_scale, sampler, \
    priority, status, attempts, max_attempts, lease_token, worker_id, progress_step, progress_total, \
    progress_stage, progress_item, error, file_ids, created_at, updated_at, started_at, finished_at, \
    character_ids, composed_negative, trace_context";

fn u32_of(row: &Row, col: &str) -> u32 {
    u32::try_from(row.get::<_, i32>(col)).unwrap_or(0)
}

fn job_from_row(row: &Row) -> Job {
    let kind: String = row.get("kind");
    let status: String = row.get("status");
    let seed: i64 = row.get("seed");
    Job {
        id: row.get("id"),
        owner_id: row.get("owner_id"),
        project_id: row.get("project_id"),
        spec: Spec {
            // The CHECK constraints only admit known spellings.
            kind: Kind::parse(&kind).unwrap_or(Kind::Image),
            prompt: row.get("prompt"),
            negative_prompt: row.get("negative_prompt"),
            width: u32_of(row, "width"),
            height: u32_of(row, "height"),
            steps: u32_of(row, "steps"),
            batch_size: u32_of(row, "batch_size"),
            frames: u32_of(row, "frames"),
            fps: u32_of(row, "fps"),
            seed: u64::try_from(seed).unwrap_or(0),
            cfg_scale: row.get("cfg_scale"),
            sampler: row.get("sampler"),
            backend: row.get("backend"),
            model: row.get("model"),
        },
        composed_prompt: row.get("composed_prompt"),
        composed_negative: row.get("composed_negative"),
        character_ids: row.get("character_ids"),
        trace_context: serde_json::from_value(row.get::<_, serde_json::Value>("trace_context"))
            .unwrap_or_default(),
        status: Status::parse(&status).unwrap_or(Status::Failed),
        priority: row.get("priority"),
        attempts: u32_of(row, "attempts"),
        max_attempts: u32_of(row, "max_attempts"),
        lease_token: row.get("lease_token"),
        worker_id: row.get("worker_id"),
        progress_step: u32_of(row, "progress_step"),
        progress_total: u32_of(row, "progress_total"),
        progress_stage: row.get("progress_stage"),
        progress_item: u32_of(row, "progress_item"),
        error: row.get("error"),
        file_ids: row.get("file_ids"),
        created_at: row.get("created_at"),
        updated_at: row.get("updated_at"),
        started_at: row.get("started_at"),
        finished_at: row.get("finished_at"),
    }
}

/// Fails the attempt under lease `$2` of job `$1` with error `$3`: back to the queue
/// after a backoff while `$4` (retryable) and attempts remain, failed otherwise.
fn fail_sql() -> String {
    format!(
        "UPDATE jobs SET \
           status = CASE WHEN $4 AND attempts < max_attempts THEN 'queued' ELSE 'failed' END, \
           finished_at = CASE WHEN $4 AND attempts < max_attempts THEN NULL ELSE now() END, \
           not_before = now() + least(power(2, attempts), 60) * interval '1 second', \
           error = $3, lease_token = NULL, lease_expires_at = NULL, worker_id = NULL, updated_at = now() \
         WHERE id = $1 AND lease_token = $2 AND status IN ('assigned', 'running') RETURNING {JOB_COLUMNS}"
    )
}

fn i32_of(v: u32) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Serializes the active-job accounting of one owner until the transaction ends, so
/// concurrent submits and retries cannot overshoot the cap together.
async fn lock_owner(tx: &deadpool_postgres::Transaction<'_>, owner: &str) -> Result<(), SchedulerError> {
    tx.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 7))", &[&owner]).await?;
    Ok(())
}

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

/// What became of a completion.
#[derive(Debug)]
pub enum Completion {
    /// The job succeeded with the named files.
    Succeeded(Job),
    /// The completion named files not recorded for this job: refused, and the attempt
    /// failed instead (the job is queued again while attempts remain).
    ForeignFiles {
        /// The job after the failed attempt.
        job: Job,
        /// The ids that are not this job's.
        foreign: Vec<Uuid>,
    },
    /// The lease is no longer held (expired, finished, canceled, another worker's):
    /// nothing changed.
    LeaseLost,
}

/// Unfinished jobs counted per metrics scrape at most; a state at this value has at least
/// that many (the help text of `sakuga_jobs` quotes the number).
pub const UNFINISHED_COUNT_LIMIT: i64 = 100_000;

/// PostgreSQL access for jobs.
#[derive(Debug, Clone)]
pub struct Store {
    pool: Pool,
}

/// Result of an insert.
#[derive(Debug)]
pub struct Inserted {
    /// The job (new, or the earlier one with the same idempotency key).
    pub job: Job,
    /// True when the idempotency key matched an existing job.
    pub deduplicated: bool,
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

/// A claimed job with its fresh lease.
#[derive(Debug)]
pub struct Claimed {
    /// The job, status assigned.
    pub job: Job,
    /// Its lease token.
    pub lease_token: Uuid,
}

/// What an expired lease turned into.
#[derive(Debug)]
pub struct Expired {
    /// Job id.
    pub id: Uuid,
    /// Queued again or failed.
    pub status: Status,
    /// Error recorded.
    pub error: String,
}

impl Store {
    /// Wraps a pool.
    pub fn new(pool: Pool) -> Self {
        Self { pool }
    }

    /// The pool (for health).
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Inserts a queued job; with an idempotency key already used by this owner, returns
    /// the first job instead. Refuses when the owner already has `cap` jobs queued or
    /// running (checked under a per-owner lock, so concurrent submits cannot overshoot).
    pub async fn insert(&self, new: &NewJob, cap: u32) -> Result<Inserted, SchedulerError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        lock_owner(&tx, &new.owner_id).await?;
        if let Some(key) = &new.idempotency_key {
            let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE owner_id = $1 AND idempotency_key = $2");
            if let Some(row) = tx.query_opt(&sql, &[&new.owner_id, key]).await? {
                tx.commit().await?;
                return Ok(Inserted { job: job_from_row(&row), deduplicated: true });
            }
        }
        ensure_room(&tx, &new.owner_id, cap).await?;
        let sql = format!(
            "INSERT INTO jobs (id, owner_id, kind, backend, model, prompt, negative_prompt, composed_prompt, \
             width, height, steps, batch_size, frames, fps, seed, cfg_scale, sampler, priority, \
             idempotency_key, max_attempts, spec_hash, project_id, character_ids, composed_negative, \
             trace_context) \
             VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17,$18,$19,$20,$21,$22,$23,$24,$25) \
             ON CONFLICT (owner_id, idempotency_key) DO NOTHING RETURNING {JOB_COLUMNS}"
        );
        let stmt = tx.prepare_cached(&sql).await?;
        let s = &new.spec;
        let seed = i64::try_from(s.seed).unwrap_or(i64::MAX);
        let row = tx
            .query_opt(
                &stmt,
                &[
                    &new.id,
                    &new.owner_id,
                    &s.kind.as_str(),
                    &s.backend,
                    &s.model,
                    &s.prompt,
                    &s.negative_prompt,
                    &new.composed_prompt,
                    &i32_of(s.width),
                    &i32_of(s.height),
                    &i32_of(s.steps),
                    &i32_of(s.batch_size),
                    &i32_of(s.frames),
                    &i32_of(s.fps),
                    &seed,
                    &s.cfg_scale,
                    &s.sampler,
                    &new.priority,
                    &new.idempotency_key,
                    &i32_of(new.max_attempts),
                    &s.hash(),
                    &new.project_id,
                    &new.character_ids,
                    &new.composed_negative,
                    &serde_json::to_value(&new.trace_context).unwrap_or_default(),
                ],
            )
            .await?;
        let row =
            row.ok_or_else(|| SchedulerError::FailedPrecondition("idempotency key conflict".to_owned()))?;
        tx.commit().await?;
        Ok(Inserted { job: job_from_row(&row), deduplicated: false })
    }

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

    /// Claims up to `limit` queued jobs for a worker offering `backends` (and, when
    /// `models` is given, only jobs for those models), highest priority then oldest first. `SKIP LOCKED` keeps concurrent dispatchers (other replicas) from
    /// claiming the same row; each claim gets a fresh lease token.
    pub async fn claim(
        &self,
        worker_id: &str,
        backends: &[String],
        models: Option<&[String]>,
        limit: u32,
        lease: Duration,
    ) -> Result<Vec<Claimed>, SchedulerError> {
        let client = self.pool.get().await?;
        let sql = format!(
            // Fair share: within a priority, each owner's oldest queued job comes before
            // anyone's second, so one user's thousand queued jobs do not starve another's one.
            // Only each owner's first few queued jobs are ranked (no more can be picked, plus a
            // margin for rows other replicas hold), found through jobs_queue_by_owner, and the
            // owners by a skip scan of it: a claim costs the same with 10 or 10,000 queued.
            "WITH RECURSIVE owners AS ( \
                (SELECT owner_id FROM jobs WHERE status = 'queued' ORDER BY owner_id LIMIT 1) \
                UNION ALL \
                SELECT (SELECT n.owner_id FROM jobs n WHERE n.status = 'queued' AND n.owner_id > o.owner_id \
                        ORDER BY n.owner_id LIMIT 1) \
                FROM owners o WHERE o.owner_id IS NOT NULL), \
             ranked AS ( \
                SELECT c.id, c.priority, c.created_at, \
                       row_number() OVER (PARTITION BY c.owner_id ORDER BY c.priority DESC, c.created_at, c.id) AS turn \
                FROM owners o CROSS JOIN LATERAL ( \
                    SELECT id, owner_id, priority, created_at FROM jobs \
                    WHERE owner_id = o.owner_id AND status = 'queued' AND backend = ANY($1) \
                      AND ($5::text[] IS NULL OR model = ANY($5)) \
                      AND (not_before IS NULL OR not_before <= now()) \
                    ORDER BY priority DESC, created_at, id LIMIT $2::bigint + 16) c), \
             ordered AS ( \
                SELECT id, priority, turn, created_at FROM ranked \
                ORDER BY priority DESC, turn, created_at, id LIMIT $2::bigint + 16), \
             picked AS ( \
                SELECT q.id FROM ordered r JOIN jobs q ON q.id = r.id WHERE q.status = 'queued' \
                ORDER BY r.priority DESC, r.turn, r.created_at, r.id \
                FOR UPDATE OF q SKIP LOCKED LIMIT $2) \
             UPDATE jobs j SET status = 'assigned', worker_id = $3, lease_token = gen_random_uuid(), \
                lease_expires_at = now() + $4 * interval '1 millisecond', attempts = attempts + 1, \
                progress_step = 0, progress_total = 0, progress_stage = '', progress_item = 0, \
                not_before = NULL, updated_at = now() \
             FROM picked WHERE j.id = picked.id \
             RETURNING {}",
            JOB_COLUMNS.split(", ").map(|c| format!("j.{c}")).collect::<Vec<_>>().join(", ")
        );
        let stmt = client.prepare_cached(&sql).await?;
        let rows =
            client.query(&stmt, &[&backends, &i64::from(limit), &worker_id, &millis(lease), &models]).await?;
        Ok(rows
            .iter()
            .map(|r| {
                let job = job_from_row(r);
                let lease_token = job.lease_token.unwrap_or_default();
                Claimed { job, lease_token }
            })
            .collect())
    }

    /// Hands an assignment that could not be delivered back to the queue, undoing the
    /// attempt. Guarded by the lease.
    pub async fn unclaim(&self, id: Uuid, lease: Uuid) -> Result<bool, SchedulerError> {
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached(
                "UPDATE jobs SET status = 'queued', worker_id = NULL, lease_token = NULL, \
                 lease_expires_at = NULL, attempts = attempts - 1, updated_at = now() \
                 WHERE id = $1 AND lease_token = $2 AND status = 'assigned'",
            )
            .await?;
        Ok(client.execute(&stmt, &[&id, &lease]).await? == 1)
    }

    /// Confirms a lease at (re)connect or heartbeat and extends it. Returns the ids whose
    /// lease is still held; the others were lost (expired, finished, canceled).
    pub async fn extend_leases(
        &self,
        worker_id: &str,
        leases: &[(Uuid, Uuid)],
        lease: Duration,
    ) -> Result<Vec<Uuid>, SchedulerError> {
        if leases.is_empty() {
            return Ok(Vec::new());
        }
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached(
                "UPDATE jobs j SET lease_expires_at = now() + $3 * interval '1 millisecond', worker_id = $4 \
                 FROM unnest($1::uuid[], $2::uuid[]) AS l(id, token) \
                 WHERE j.id = l.id AND j.lease_token = l.token AND j.status IN ('assigned', 'running') \
                 RETURNING j.id",
            )
            .await?;
        let ids: Vec<Uuid> = leases.iter().map(|l| l.0).collect();
        let tokens: Vec<Uuid> = leases.iter().map(|l| l.1).collect();
        let rows = client.query(&stmt, &[&ids, &tokens, &millis(lease), &worker_id]).await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// The worker started the job: assigned -> running.
    pub async fn mark_running(&self, id: Uuid, lease: Uuid, ttl: Duration) -> Result<bool, SchedulerError> {
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached(
                "UPDATE jobs SET status = 'running', started_at = now(), updated_at = now(), \
                 lease_expires_at = now() + $3 * interval '1 millisecond' \
                 WHERE id = $1 AND lease_token = $2 AND status = 'assigned'",
            )
            .await?;
        Ok(client.execute(&stmt, &[&id, &lease, &millis(ttl)]).await? == 1)
    }

    /// Records progress (and extends the lease); also moves assigned -> running.
    pub async fn record_progress(
        &self,
        id: Uuid,
        lease: Uuid,
        progress: (u32, u32, &str, u32),
        ttl: Duration,
    ) -> Result<bool, SchedulerError> {
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached(
                "UPDATE jobs SET status = 'running', started_at = COALESCE(started_at, now()), \
                 progress_step = $3, progress_total = $4, progress_stage = $5, progress_item = $6, \
                 lease_expires_at = now() + $7 * interval '1 millisecond', updated_at = now() \
                 WHERE id = $1 AND lease_token = $2 AND status IN ('assigned', 'running')",
            )
            .await?;
        let (step, total, stage, item) = progress;
        let n = client
            .execute(
                &stmt,
                &[&id, &lease, &i32_of(step), &i32_of(total), &stage, &i32_of(item), &millis(ttl)],
            )
            .await?;
        Ok(n == 1)
    }

    /// Lease still held? (For progress messages that are not written to the database.)
    pub async fn lease_held(&self, id: Uuid, lease: Uuid) -> Result<bool, SchedulerError> {
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached(
                "SELECT 1 FROM jobs WHERE id = $1 AND lease_token = $2 AND status IN ('assigned', 'running')",
            )
            .await?;
        Ok(client.query_opt(&stmt, &[&id, &lease]).await?.is_some())
    }

    /// The attempt succeeded: running -> succeeded with the stored files.
    ///
    /// A worker's word on which files are the job's is not taken: every id must be a file
    /// the organizer recorded for this very job (`files.job_id`), checked in the same
    /// transaction that completes the job, under the job row's lock. A completion naming
    /// any other id (another job's file, a made-up one) is refused as a whole and the
    /// attempt counts as failed (retryable: the job is sound, the worker is not), so a
    /// generator cannot attach someone else's files to a job, nor finish a job with files
    /// it never stored.
    pub async fn complete(
        &self,
        id: Uuid,
        lease: Uuid,
        file_ids: &[Uuid],
    ) -> Result<Completion, SchedulerError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let held = tx
            .prepare_cached(
                "SELECT 1 FROM jobs WHERE id = $1 AND lease_token = $2 AND status IN ('assigned', 'running') \
                 FOR UPDATE",
            )
            .await?;
        if tx.query_opt(&held, &[&id, &lease]).await?.is_none() {
            return Ok(Completion::LeaseLost);
        }
        let foreign = tx
            .prepare_cached(
                "SELECT DISTINCT f.id FROM unnest($2::uuid[]) AS f(id) \
                 WHERE NOT EXISTS (SELECT 1 FROM files WHERE files.id = f.id AND files.job_id = $1)",
            )
            .await?;
        let foreign: Vec<Uuid> =
            tx.query(&foreign, &[&id, &file_ids]).await?.iter().map(|r| r.get(0)).collect();
        let outcome = if foreign.is_empty() {
            let sql = format!(
                "UPDATE jobs SET status = 'succeeded', file_ids = $3, lease_token = NULL, lease_expires_at = NULL, \
                 progress_step = GREATEST(progress_step, progress_total), error = '', \
                 finished_at = now(), updated_at = now() \
                 WHERE id = $1 AND lease_token = $2 AND status IN ('assigned', 'running') RETURNING {JOB_COLUMNS}"
            );
            let stmt = tx.prepare_cached(&sql).await?;
            tx.query_opt(&stmt, &[&id, &lease, &file_ids])
                .await?
                .map(|r| Completion::Succeeded(job_from_row(&r)))
        } else {
            let stmt = tx.prepare_cached(&fail_sql()).await?;
            let error = "the completion named files not stored for this job";
            tx.query_opt(&stmt, &[&id, &lease, &error, &true])
                .await?
                .map(|r| Completion::ForeignFiles { job: job_from_row(&r), foreign })
        };
        tx.commit().await?;
        // The row is locked and held under this lease, so each UPDATE finds it.
        Ok(outcome.unwrap_or(Completion::LeaseLost))
    }

    /// The attempt failed: back to the queue while attempts remain and the error is
    /// retryable, failed otherwise.
    pub async fn fail(
        &self,
        id: Uuid,
        lease: Uuid,
        error: &str,
        retryable: bool,
    ) -> Result<Option<Job>, SchedulerError> {
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(&fail_sql()).await?;
        Ok(client.query_opt(&stmt, &[&id, &lease, &error, &retryable]).await?.map(|r| job_from_row(&r)))
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

    /// Leases that ran out (worker killed, network cut): queued again with the attempt
    /// counted, or failed after the last attempt.
    pub async fn expire_leases(&self) -> Result<Vec<Expired>, SchedulerError> {
        self.hand_back(
            "'lease expired: worker ' || COALESCE(worker_id, '?') || ' stopped responding'",
            "lease_expires_at < now()",
            &[],
        )
        .await
    }

    /// Hands back, at once, the jobs leased to `worker_id` that it did not announce when it
    /// attached: a worker that restarted lost them, so waiting for their leases to expire
    /// would only delay them. Same accounting as an expired lease.
    pub async fn release_unannounced(
        &self,
        worker_id: &str,
        kept: &[Uuid],
    ) -> Result<Vec<Expired>, SchedulerError> {
        self.hand_back(
            "'worker ' || worker_id || ' restarted without it'",
            "worker_id = $1 AND NOT (id = ANY($2))",
            &[&worker_id, &kept],
        )
        .await
    }

    /// Requeues the leased jobs matching `filter` (after a backoff, attempt counted), or
    /// fails those out of attempts, recording `error` (an SQL expression).
    async fn hand_back(
        &self,
        error: &str,
        filter: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<Expired>, SchedulerError> {
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached(&format!(
                "UPDATE jobs SET \
                   status = CASE WHEN attempts < max_attempts THEN 'queued' ELSE 'failed' END, \
                   finished_at = CASE WHEN attempts < max_attempts THEN NULL ELSE now() END, \
                   not_before = now() + least(power(2, attempts), 60) * interval '1 second', \
                   error = {error}, \
                   lease_token = NULL, lease_expires_at = NULL, worker_id = NULL, updated_at = now() \
                 WHERE status IN ('assigned', 'running') AND {filter} \
                 RETURNING id, status, error"
            ))
            .await?;
        let rows = client.query(&stmt, params).await?;
        Ok(rows
            .iter()
            .map(|r| {
                let status: String = r.get(1);
                Expired {
                    id: r.get(0),
                    status: Status::parse(&status).unwrap_or(Status::Queued),
                    error: r.get(2),
                }
            })
            .collect())
    }

    /// Deletes up to `batch` finished jobs that finished more than `days` days ago;
    /// returns how many went. Their file records stay (files outlive job history).
    pub async fn prune_finished(&self, days: u32, batch: i64) -> Result<u64, SchedulerError> {
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached(
                "DELETE FROM jobs WHERE id IN (SELECT id FROM jobs \
                 WHERE status IN ('succeeded', 'failed', 'canceled') \
                 AND finished_at < now() - $1 * interval '1 day' LIMIT $2)",
            )
            .await?;
        Ok(client.execute(&stmt, &[&f64::from(days), &batch]).await?)
    }

    /// Unfinished jobs (queued, assigned, running) by state, all replicas, for the metrics
    /// scrape. Finished jobs are not counted at all (their history grows without bound;
    /// `sakuga_jobs_finished_total` counts them as they finish). The predicate is that of
    /// the partial index `jobs_owner_active`, so PostgreSQL can read the few unfinished rows
    /// through it instead of the table, and the scan stops at [`UNFINISHED_COUNT_LIMIT`]
    /// rows: a scrape's cost does not grow with the history, and is bounded however long
    /// the queue.
    pub async fn count_unfinished(&self) -> Result<Vec<(String, i64)>, SchedulerError> {
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached(
                "SELECT status, count(*) FROM (SELECT status FROM jobs \
                 WHERE status IN ('queued', 'assigned', 'running') LIMIT $1) unfinished GROUP BY status",
            )
            .await?;
        let rows = client.query(&stmt, &[&UNFINISHED_COUNT_LIMIT]).await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }
}
