//! The queue seen from the workers: claims with fresh leases, lease extension and
//! expiry, progress, completion and failure, each guarded by the lease token.

use std::time::Duration;

use uuid::Uuid;

use super::rows::{JOB_COLUMNS, Store, i32_of, job_from_row, millis, query_in_tx, statements_in_tx};
use crate::{
    error::SchedulerError,
    job::{Job, Status},
};

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

/// A claimed job with its fresh lease.
#[derive(Debug)]
pub struct Claimed {
    /// The job, status assigned.
    pub job: Job,
    /// Its lease token.
    pub lease_token: Uuid,
}

/// A claim for one worker: up to `limit` queued jobs of its `backends` (of `models`, when
/// given) under leases of `lease`.
#[derive(Debug, Clone, Copy)]
pub struct ClaimFor<'a> {
    /// The worker's own id.
    pub worker_id: &'a str,
    /// Backends it offers.
    pub backends: &'a [String],
    /// Only jobs of these models (the worker has them loaded), when given.
    pub models: Option<&'a [String]>,
    /// Most jobs to claim.
    pub limit: u32,
    /// How long each lease runs.
    pub lease: Duration,
}

impl ClaimFor<'_> {
    /// The parameters of [`CLAIM`], given the lease in milliseconds and the limit as `int8`.
    pub(super) fn params<'p>(
        &'p self,
        limit: &'p i64,
        lease_ms: &'p f64,
    ) -> [&'p (dyn tokio_postgres::types::ToSql + Sync); 5] {
        [&self.backends, limit, &self.models, &self.worker_id, lease_ms]
    }
}

/// The jobs a [`CLAIM`] returned, with their leases.
pub(super) fn claimed_from(rows: &[tokio_postgres::Row]) -> Vec<Claimed> {
    rows.iter()
        .map(|r| {
            let job = job_from_row(r);
            let lease_token = job.lease_token.unwrap_or_default();
            Claimed { job, lease_token }
        })
        .collect()
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

/// Fails the attempt under lease `$2` of job `$1` with error `$3`: back to the queue
/// after a backoff while `$4` (retryable) and attempts remain, failed otherwise. When `$5`
/// (the platform failed, not the job) the attempt is given back and the job queued again
/// after a minute, whatever attempts remain.
fn fail_sql() -> String {
    format!(
        "UPDATE jobs SET \
           status = CASE WHEN $5 OR ($4 AND attempts < max_attempts) THEN 'queued' ELSE 'failed' END, \
           finished_at = CASE WHEN $5 OR ($4 AND attempts < max_attempts) THEN NULL ELSE now() END, \
           attempts = CASE WHEN $5 THEN attempts - 1 ELSE attempts END, \
           not_before = now() + CASE WHEN $5 THEN interval '60 seconds' \
             ELSE least(power(2, attempts), 60) * interval '1 second' END, \
           error = $3, lease_token = NULL, lease_expires_at = NULL, worker_id = NULL, updated_at = now() \
         WHERE id = $1 AND lease_token = $2 AND status IN ('assigned', 'running') RETURNING {JOB_COLUMNS}"
    )
}

/// Completes the jobs `$1` under the leases `$2` (same order) with their files: file `$4[i]`
/// belongs to the job at 1-based position `$3[i]`, in the order given. A job changes only
/// while its lease is held and when every file it names is stored for it.
static COMPLETE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "WITH done AS (SELECT * FROM unnest($1::uuid[], $2::uuid[]) WITH ORDINALITY AS d(id, lease, ix)), \
         named AS (SELECT * FROM unnest($3::int8[], $4::uuid[]) WITH ORDINALITY AS n(ix, file_id, ord)), \
         checked AS ( \
           SELECT d.id, d.lease, \
             coalesce((SELECT array_agg(n.file_id ORDER BY n.ord) FROM named n WHERE n.ix = d.ix), '{{}}') AS file_ids, \
             NOT EXISTS (SELECT 1 FROM named n WHERE n.ix = d.ix AND NOT EXISTS \
               (SELECT 1 FROM files WHERE files.id = n.file_id AND files.job_id = d.id)) AS own \
           FROM done d) \
         UPDATE jobs j SET status = 'succeeded', file_ids = c.file_ids, lease_token = NULL, \
           lease_expires_at = NULL, progress_step = GREATEST(j.progress_step, j.progress_total), error = '', \
           finished_at = now(), updated_at = now() \
         FROM checked c \
         WHERE j.id = c.id AND j.lease_token = c.lease AND j.status IN ('assigned', 'running') AND c.own \
         RETURNING {}",
        JOB_COLUMNS.split(", ").map(|c| format!("j.{c}")).collect::<Vec<_>>().join(", ")
    )
});

/// The claim, one statement. `heads` locks the first `$2` rows of the line of owners with a
/// job of the backends `$1` (and models `$3`, when given) that may start now, skipping rows
/// other claims hold, and notes each row's version (`xmin`) and place (`ctid`). Each row is
/// also a cursor: no queued job of its key sorts before (`head_at`, `head_id`), so every
/// scan of an owner's jobs starts there, past the index entries of the jobs claimed before
/// (until a vacuum removes them, a scan from the start steps over each one). `ranked`
/// locks up to `$2` queued jobs of each (skipping locked ones) and ranks them by priority,
/// then turn (an owner's first job before anyone's second), then age; the first `$2` go to
/// worker `$4` with a lease of `$5` ms. Each row of the line then moves to its owner's next
/// queued job (its cursor moves past the jobs claimed), or is deleted when none is left.
///
/// The statement reads the jobs with the snapshot it started with, which may be older than
/// a row's lock. A job queued by a transaction that committed in between is not seen, but
/// its trigger changed the row (a new version), so the row is moved or deleted only when
/// its version is still the one the snapshot saw; otherwise it stays for the next claim or
/// the reaper's prune. A job queued after the lock waits for it and puts the row back.
/// Rows are found again by `ctid` and jobs by `id = ANY`, so that even the generic plan of
/// the prepared statement (which cannot know how many rows `$2` allows) reads them by
/// address and index, never by a scan of the table.
pub(super) static CLAIM: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "WITH heads AS MATERIALIZED ( \
            SELECT h.owner_id, h.priority, h.backend, h.head_at, h.head_id, h.xmin AS version, h.ctid AS at \
            FROM queue_heads h \
            WHERE h.backend = ANY($1) AND EXISTS (SELECT 1 FROM jobs q \
                WHERE q.owner_id = h.owner_id AND q.priority = h.priority \
                  AND (q.created_at, q.id) >= (h.head_at, h.head_id) AND q.backend = h.backend \
                  AND q.status = 'queued' AND ($3::text[] IS NULL OR q.model = ANY($3)) \
                  AND (q.not_before IS NULL OR q.not_before <= now())) \
            ORDER BY h.priority DESC, h.head_at, h.owner_id, h.backend \
            LIMIT $2 FOR UPDATE OF h SKIP LOCKED), \
         ranked AS MATERIALIZED ( \
            SELECT c.id, c.priority, c.created_at, \
                   row_number() OVER (PARTITION BY c.owner_id ORDER BY c.priority DESC, c.created_at, c.id) AS turn \
            FROM heads h CROSS JOIN LATERAL ( \
                SELECT id, owner_id, priority, created_at FROM jobs \
                WHERE owner_id = h.owner_id AND priority = h.priority \
                  AND (created_at, id) >= (h.head_at, h.head_id) AND backend = h.backend \
                  AND status = 'queued' AND ($3::text[] IS NULL OR model = ANY($3)) \
                  AND (not_before IS NULL OR not_before <= now()) \
                ORDER BY created_at, id LIMIT $2 FOR UPDATE SKIP LOCKED) c), \
         picked AS MATERIALIZED ( \
            SELECT id FROM ranked ORDER BY priority DESC, turn, created_at, id LIMIT $2), \
         claimed AS ( \
            UPDATE jobs j SET status = 'assigned', worker_id = $4, lease_token = gen_random_uuid(), \
                lease_expires_at = now() + $5 * interval '1 millisecond', attempts = attempts + 1, \
                progress_step = 0, progress_total = 0, progress_stage = '', progress_item = 0, \
                not_before = NULL, updated_at = now() \
            WHERE j.id = ANY (ARRAY(SELECT id FROM picked)) \
            RETURNING {}), \
         next AS ( \
            SELECT h.at, h.version, nx.created_at AS head_at, nx.id AS head_id \
            FROM heads h LEFT JOIN LATERAL ( \
                SELECT q.created_at, q.id FROM jobs q \
                WHERE q.owner_id = h.owner_id AND q.priority = h.priority \
                  AND (q.created_at, q.id) >= (h.head_at, h.head_id) AND q.backend = h.backend \
                  AND q.status = 'queued' AND q.id <> ALL (ARRAY(SELECT id FROM picked)) \
                ORDER BY q.created_at, q.id LIMIT 1) nx ON true), \
         moved AS ( \
            UPDATE queue_heads l SET head_at = n.head_at, head_id = n.head_id FROM next n \
            WHERE l.ctid = ANY (ARRAY(SELECT at FROM next)) AND l.ctid = n.at AND l.xmin = n.version \
              AND n.head_at IS NOT NULL), \
         emptied AS ( \
            DELETE FROM queue_heads l USING next n \
            WHERE l.ctid = ANY (ARRAY(SELECT at FROM next)) AND l.ctid = n.at AND l.xmin = n.version \
              AND n.head_at IS NULL) \
         SELECT * FROM claimed",
        JOB_COLUMNS.split(", ").map(|c| format!("j.{c}")).collect::<Vec<_>>().join(", ")
    )
});

/// Locks up to `$1` rows of the line of owners that have no queued job, skipping held rows.
const LOCK_EMPTY_HEADS: &str = "SELECT h.owner_id, h.priority, h.backend FROM queue_heads h \
    WHERE NOT EXISTS (SELECT 1 FROM jobs q WHERE q.owner_id = h.owner_id AND q.priority = h.priority \
        AND q.backend = h.backend AND q.status = 'queued') \
    LIMIT $1 FOR UPDATE OF h SKIP LOCKED";

/// Deletes the locked line rows (`$1` owners, `$2` priorities, `$3` backends) that still
/// have no queued job.
const PRUNE_HEADS: &str = "DELETE FROM queue_heads h \
    USING unnest($1::text[], $2::int4[], $3::text[]) AS l(owner_id, priority, backend) \
    WHERE h.owner_id = l.owner_id AND h.priority = l.priority AND h.backend = l.backend \
      AND NOT EXISTS (SELECT 1 FROM jobs q WHERE q.owner_id = h.owner_id AND q.priority = h.priority \
        AND q.backend = h.backend AND q.status = 'queued')";

/// Keys of rows of the line of owners: owners, priorities, backends (same order).
type LineKeys = (Vec<String>, Vec<i32>, Vec<String>);

/// Opens a transaction on `client` and runs `lock` (a statement locking rows of the line
/// and returning their keys), both in one round trip. On failure nothing changed and the
/// connection goes back to the pool outside a transaction.
async fn lock_line(
    client: &deadpool_postgres::Object,
    lock: &tokio_postgres::Statement,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<LineKeys, SchedulerError> {
    let (begin, rows) = tokio::join!(client.batch_execute("BEGIN"), client.query(lock, params));
    match begin.and(rows) {
        Ok(rows) => Ok((
            rows.iter().map(|r| r.get(0)).collect(),
            rows.iter().map(|r| r.get(1)).collect(),
            rows.iter().map(|r| r.get(2)).collect(),
        )),
        Err(e) => {
            let _ = client.batch_execute("ROLLBACK").await;
            Err(e.into())
        }
    }
}

impl Store {
    /// Claims up to `limit` queued jobs for a worker offering `backends` (and, when
    /// `models` is given, only jobs for those models): highest priority first, then fair
    /// share across owners (each owner's oldest job before anyone's second), then age. Each
    /// claim gets a fresh lease token.
    ///
    /// One statement ([`CLAIM`]) with its generic plan, one round trip. It locks the first `limit` rows of the
    /// line of owners (`queue_heads`) that have a job for this worker, skipping rows another
    /// claim holds, so concurrent dispatchers (other replicas) never wait for each other;
    /// claims from those owners only and moves each row to its owner's next queued job. A
    /// claim reads `limit` rows of the line, however many owners and jobs are queued.
    pub async fn claim(
        &self,
        worker_id: &str,
        backends: &[String],
        models: Option<&[String]>,
        limit: u32,
        lease: Duration,
    ) -> Result<Vec<Claimed>, SchedulerError> {
        let claim = ClaimFor { worker_id, backends, models, limit, lease };
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(&CLAIM).await?;
        let (limit, lease_ms) = (i64::from(claim.limit), millis(claim.lease));
        Ok(claimed_from(&query_in_tx(&client, None, &stmt, &claim.params(&limit, &lease_ms)).await?))
    }

    /// Deletes up to `limit` rows of the line of owners that have no queued job left (their
    /// last one was canceled). Locked first, then checked with a snapshot taken after the
    /// locks, as a claim does: a job being queued meanwhile waits for the lock and puts its
    /// row back. How many were deleted.
    pub async fn prune_queue_heads(&self, limit: i64) -> Result<u64, SchedulerError> {
        let client = self.pool.get().await?;
        let (lock, prune) =
            tokio::try_join!(client.prepare_cached(LOCK_EMPTY_HEADS), client.prepare_cached(PRUNE_HEADS))?;
        let (owners, priorities, of) = lock_line(&client, &lock, &[&limit]).await?;
        let prune_params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] = [&owners, &priorities, &of];
        let (deleted, commit) =
            tokio::join!(client.execute(&prune, &prune_params), client.batch_execute("COMMIT"));
        let deleted = deleted?;
        commit?;
        Ok(deleted)
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

    /// The attempts succeeded: running -> succeeded with the stored files, for each
    /// `(job, lease, files)` of `done`, answered in the same order.
    ///
    /// A worker's word on which files are the job's is not taken: every id must be a file
    /// the organizer recorded for this very job (`files.job_id`), checked in the same
    /// statement that completes the job, under the job row's lock. A completion naming
    /// any other id (another job's file, a made-up one) is refused as a whole and the
    /// attempt counts as failed (retryable: the job is sound, the worker is not), so a
    /// generator cannot attach someone else's files to a job, nor finish a job with files
    /// it never stored.
    ///
    /// The usual completions (held lease, every file the job's) are one statement and one
    /// commit however many there are (a worker finishing several jobs at once shares the
    /// commit); each the statement left unchanged then finds out why on its own.
    ///
    /// With `refill` (a claim for the slots these attempts held), the claim runs in the
    /// same transaction and round trip, right after the completions: the worker's next jobs
    /// cost no commit of their own. The jobs it took come second.
    pub async fn complete_all(
        &self,
        done: &[(Uuid, Uuid, Vec<Uuid>)],
        refill: Option<&ClaimFor<'_>>,
    ) -> Result<(Vec<Completion>, Vec<Claimed>), SchedulerError> {
        let mut client = self.pool.get().await?;
        let (ids, leases): (Vec<Uuid>, Vec<Uuid>) = done.iter().map(|(id, lease, _)| (*id, *lease)).unzip();
        let (owners, files): (Vec<i64>, Vec<Uuid>) = done
            .iter()
            .zip(1_i64..)
            .flat_map(|((_, _, files), ix)| files.iter().map(move |f| (ix, *f)))
            .unzip();
        let stmt = client.prepare_cached(&COMPLETE).await?;
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] = [&ids, &leases, &owners, &files];
        let (rows, claimed) = match refill {
            None => (query_in_tx(&client, None, &stmt, &params).await?, Vec::new()),
            Some(claim) => {
                let claim_stmt = client.prepare_cached(&CLAIM).await?;
                let (limit, lease_ms) = (i64::from(claim.limit), millis(claim.lease));
                let claim_params = claim.params(&limit, &lease_ms);
                let mut rows =
                    statements_in_tx(&client, None, &[(&stmt, &params), (&claim_stmt, &claim_params)])
                        .await?
                        .into_iter();
                let completed = rows.next().unwrap_or_default();
                (completed, claimed_from(&rows.next().unwrap_or_default()))
            }
        };
        let mut succeeded: std::collections::HashMap<Uuid, Job> =
            rows.iter().map(job_from_row).map(|j| (j.id, j)).collect();
        let mut out = Vec::with_capacity(done.len());
        for (id, lease, files) in done {
            out.push(match succeeded.remove(id) {
                Some(job) => Completion::Succeeded(job),
                None => Self::complete_checked(&mut client, *id, *lease, files).await?,
            });
        }
        Ok((out, claimed))
    }

    /// Why a completion [`COMPLETE`] left unchanged did not go through: the lease is
    /// lost, or the files are not the job's (the attempt fails), or they were stored since
    /// (it succeeds now).
    async fn complete_checked(
        client: &mut deadpool_postgres::Object,
        id: Uuid,
        lease: Uuid,
        file_ids: &[Uuid],
    ) -> Result<Completion, SchedulerError> {
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
            // Stored meanwhile (the organizer's commit landed between the two reads).
            let stmt = tx.prepare_cached(&COMPLETE).await?;
            let owners = vec![1_i64; file_ids.len()];
            tx.query_opt(&stmt, &[&[id].as_slice(), &[lease].as_slice(), &owners, &file_ids])
                .await?
                .map(|r| Completion::Succeeded(job_from_row(&r)))
        } else {
            let stmt = tx.prepare_cached(&fail_sql()).await?;
            let error = "the completion named files not stored for this job";
            tx.query_opt(&stmt, &[&id, &lease, &error, &true, &false])
                .await?
                .map(|r| Completion::ForeignFiles { job: job_from_row(&r), foreign })
        };
        tx.commit().await?;
        // The row is locked and held under this lease, so each UPDATE finds it.
        Ok(outcome.unwrap_or(Completion::LeaseLost))
    }

    /// The attempt failed: back to the queue while attempts remain and the error is
    /// retryable, failed otherwise; a `platform` failure (not the job's) is not counted and
    /// the job is queued again.
    pub async fn fail(
        &self,
        id: Uuid,
        lease: Uuid,
        error: &str,
        retryable: bool,
        platform: bool,
    ) -> Result<Option<Job>, SchedulerError> {
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(&fail_sql()).await?;
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 5] =
            [&id, &lease, &error, &retryable, &platform];
        Ok(client.query_opt(&stmt, &params).await?.map(|r| job_from_row(&r)))
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
}
