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

/// Opens a transaction in which prepared statements run with their generic plan, made of
/// index probes only.
///
/// Left to choose, PostgreSQL kept planning the submit, the claim and the completion anew
/// on every call (their generic plans are estimated dearer, not knowing the `LIMIT` or the
/// array lengths): 0.3 to 1.5 ms of planning a call, against 0.02 ms for a generic plan.
///
/// A generic plan is made once per connection, at the statement's first run, for the
/// tables as they are then, and kept until something invalidates it (an `ANALYZE`, which
/// autovacuum runs at most once a minute). Made while `jobs` was nearly empty, the claim
/// found its jobs by a sequential scan, and the completion read every leased job, and they
/// kept doing so as the table grew: on a fresh database, at 10 clients' 532 submits a
/// second, PostgreSQL spent 2.3 ms of CPU per job, about half of it in those scans. So the
/// planner is given no sequential scan, hash or merge join or materialized inner side to
/// choose from: every read of a table is an index or address probe with its condition,
/// which is the plan these statements want at any size (checked on an empty and on a
/// full table; `plans::` in the tests checks the plans a connection keeps).
const BEGIN_GENERIC: &str = "BEGIN; SET LOCAL plan_cache_mode = force_generic_plan; \
    SET LOCAL enable_seqscan = off; SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off; \
    SET LOCAL enable_material = off";

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
    Ok(statements_in_tx(client, lock, &[(stmt, params)]).await?.into_iter().next().unwrap_or_default())
}

/// [`query_in_tx`] with any number of statements (at most 30), in turn, in the same
/// transaction and round trip; each sees what those before it wrote. The rows of each.
pub(super) async fn statements_in_tx(
    client: &deadpool_postgres::Object,
    lock: Option<(&tokio_postgres::Statement, &str)>,
    statements: &[(&tokio_postgres::Statement, Params<'_>)],
) -> Result<Vec<Vec<Row>>, SchedulerError> {
    // join! polls in order, as join_all does a list of up to 30, and each call sends on
    // its first poll: they go out in turn.
    debug_assert!(statements.len() <= 30, "join_all polls longer lists in no set order");
    let locked = async {
        match lock {
            Some((lock, key)) => client.execute(lock, &[&key]).await.map(drop),
            None => Ok(()),
        }
    };
    let queries = futures_util::future::join_all(statements.iter().map(|(s, p)| client.query(*s, p)));
    let (begin, locked, rows, commit) =
        tokio::join!(client.batch_execute(BEGIN_GENERIC), locked, queries, client.batch_execute("COMMIT"));
    begin?;
    locked?;
    let rows = rows.into_iter().collect::<Result<Vec<_>, _>>()?;
    commit?;
    Ok(rows)
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
