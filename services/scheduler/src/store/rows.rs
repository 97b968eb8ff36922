//! The `jobs` row and the store over the pool.

use deadpool_postgres::Pool;
use tokio_postgres::Row;

use crate::{
    error::SchedulerError,
    job::{Job, Kind, Spec, Status},
};

pub(super) const JOB_COLUMNS: &str = "id, owner_id, project_id, kind, backend, model, prompt, negative_prompt, \
    composed_prompt, width, height, steps, batch_size, frames, fps, seed, cfg_scale, sampler, \
    priority, status, attempts, max_attempts, lease_token, worker_id, progress_step, progress_total, \
    progress_stage, progress_item, error, file_ids, created_at, updated_at, started_at, finished_at, \
    character_ids, composed_negative, trace_context, webhook_endpoint_id";

/// A non-negative integer column as `u32`.
pub(super) fn u32_of(row: &Row, col: &str) -> u32 {
    u32::try_from(row.get::<_, i32>(col)).unwrap_or(0)
}

pub(super) fn job_from_row(row: &Row) -> Job {
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
        webhook_endpoint_id: row.get("webhook_endpoint_id"),
    }
}

/// Opens a transaction in which prepared statements run with their generic plan. Left to
/// choose, PostgreSQL kept planning the submit, the claim and the completion anew on every
/// call (their generic plans are estimated dearer, not knowing the `LIMIT` or the array
/// lengths): 0.3 to 1.5 ms of planning a call, against 0.02 ms for a generic plan. Those
/// generic plans read by index and address with any parameters (checked with `EXPLAIN` at
/// 20,000 jobs of one owner and at 10^5 jobs over 10,000 owners), so they are planned once
/// per connection.
const BEGIN_GENERIC: &str = "BEGIN; SET LOCAL plan_cache_mode = force_generic_plan";

/// Parameters of one statement.
pub(super) type Params<'a> = &'a [&'a (dyn tokio_postgres::types::ToSql + Sync)];

/// Runs `stmt` in a transaction of its own, all in one round trip: `BEGIN` with generic
/// plans ([`BEGIN_GENERIC`]); given `lock` (a statement taking a transaction-level advisory
/// lock on its one parameter) and its key, the lock, so that the statement starts once it
/// is held and its snapshot sees all that committed under it before; the statement; and
/// `COMMIT`. A failure anywhere aborts the transaction and the `COMMIT` rolls it back.
pub(super) async fn query_in_tx(
    client: &deadpool_postgres::Object,
    lock: Option<(&tokio_postgres::Statement, &str)>,
    stmt: &tokio_postgres::Statement,
    params: Params<'_>,
) -> Result<Vec<Row>, SchedulerError> {
    Ok(queries_in_tx(client, lock, (stmt, params), None).await?.0)
}

/// [`query_in_tx`] with a second statement after the first (`then`) in the same
/// transaction and round trip; it sees what the first wrote. The rows of each.
pub(super) async fn queries_in_tx(
    client: &deadpool_postgres::Object,
    lock: Option<(&tokio_postgres::Statement, &str)>,
    (stmt, params): (&tokio_postgres::Statement, Params<'_>),
    then: Option<(&tokio_postgres::Statement, Params<'_>)>,
) -> Result<(Vec<Row>, Vec<Row>), SchedulerError> {
    // join! polls in order, and each call sends on its first poll: they go out in turn.
    let locked = async {
        match lock {
            Some((lock, key)) => client.execute(lock, &[&key]).await.map(drop),
            None => Ok(()),
        }
    };
    let second = async {
        match then {
            Some((stmt, params)) => client.query(stmt, params).await,
            None => Ok(Vec::new()),
        }
    };
    let (begin, locked, rows, then_rows, commit) = tokio::join!(
        client.batch_execute(BEGIN_GENERIC),
        locked,
        client.query(stmt, params),
        second,
        client.batch_execute("COMMIT")
    );
    begin?;
    locked?;
    let rows = rows?;
    let then_rows = then_rows?;
    commit?;
    Ok((rows, then_rows))
}

/// A duration as the milliseconds SQL multiplies `interval '1 millisecond'` by.
pub(super) fn millis(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub(super) fn i32_of(v: u32) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

/// PostgreSQL access for jobs.
#[derive(Debug, Clone)]
pub struct Store {
    pub(super) pool: Pool,
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
}
