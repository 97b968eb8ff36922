//! Retention of finished jobs and the counts the metrics scrape reads.

use super::rows::Store;
use crate::error::SchedulerError;

/// Unfinished jobs counted per metrics scrape at most; a state at this value has at least
/// that many (the help text of `sakuga_jobs` quotes the number).
pub const UNFINISHED_COUNT_LIMIT: i64 = 100_000;

impl Store {
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
