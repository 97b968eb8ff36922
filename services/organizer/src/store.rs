//! SQL of the organizer: file records. Parameterized and prepared, owner-scoped.

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use tokio_postgres::Row;
use uuid::Uuid;

use crate::error::OrganizerError;

const COLUMNS: &str = "id, job_id, owner_id, project_id, idx, kind, mime_type, width, height, frames, \
    size_bytes, sha256, storage_key, blob_key, checks, created_at";

/// The advisory lock one reconciler pass holds, so that of several organizers on one
/// database one reconciles at a time.
pub const RECONCILE_LOCK: i64 = 0x5341_4b55_4741_0001;

/// A file record.
#[derive(Debug, Clone)]
pub struct FileRecord {
    /// Id.
    pub id: Uuid,
    /// Job.
    pub job_id: Uuid,
    /// Owner.
    pub owner_id: String,
    /// Project.
    pub project_id: Option<Uuid>,
    /// Batch index.
    pub index: u32,
    /// "image" or "video".
    pub kind: String,
    /// Mime type.
    pub mime_type: String,
    /// Pixels.
    pub width: u32,
    /// Pixels.
    pub height: u32,
    /// Frames.
    pub frames: u32,
    /// Bytes.
    pub size_bytes: u64,
    /// Hex sha256.
    pub sha256: String,
    /// The human name: `<slug>/<YYYY>/<MM>/<DD>/<job>-<n>.<ext>` (never sent to clients).
    pub storage_key: String,
    /// Where the bytes are: `blobs/<sha256>`, shared by every record with the same bytes.
    /// `None` for records stored before bytes were content-addressed: theirs are at
    /// `storage_key`.
    pub blob_key: Option<String>,
    /// Checks passed.
    pub checks: Vec<String>,
    /// Stored at.
    pub created_at: DateTime<Utc>,
}

impl FileRecord {
    /// The storage key of the bytes.
    pub fn bytes_key(&self) -> &str {
        self.blob_key.as_deref().unwrap_or(&self.storage_key)
    }
}

fn u32_of(row: &Row, col: &str) -> u32 {
    u32::try_from(row.get::<_, i32>(col)).unwrap_or(0)
}

fn record(row: &Row) -> FileRecord {
    FileRecord {
        id: row.get("id"),
        job_id: row.get("job_id"),
        owner_id: row.get("owner_id"),
        project_id: row.get("project_id"),
        index: u32_of(row, "idx"),
        kind: row.get("kind"),
        mime_type: row.get("mime_type"),
        width: u32_of(row, "width"),
        height: u32_of(row, "height"),
        frames: u32_of(row, "frames"),
        size_bytes: u64::try_from(row.get::<_, i64>("size_bytes")).unwrap_or(0),
        sha256: row.get("sha256"),
        storage_key: row.get("storage_key"),
        blob_key: row.get("blob_key"),
        checks: row.get("checks"),
        created_at: row.get("created_at"),
    }
}

fn i32_of(v: u32) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

/// What the organizer reads of a job: who owns it, what it asked for, and its lease.
#[derive(Debug, Clone)]
pub struct JobLease {
    /// Owner.
    pub owner_id: String,
    /// Project.
    pub project_id: Option<Uuid>,
    /// "image" or "video".
    pub kind: String,
    /// Pixels.
    pub width: u32,
    /// Pixels.
    pub height: u32,
    /// Frames (0 for an image).
    pub frames: u32,
    /// Artifacts the job makes.
    pub batch_size: u32,
    /// Status.
    pub status: String,
    /// Current lease token, if leased.
    pub lease_token: Option<Uuid>,
    /// Whether the lease has not expired.
    pub lease_live: bool,
}

impl JobLease {
    /// Why an upload under `token` is not accepted, or `None` when the job is leased with
    /// it (status assigned or running, the same token, not expired).
    pub fn refusal(&self, token: Uuid) -> Option<&'static str> {
        if !matches!(self.status.as_str(), "assigned" | "running") {
            Some("the job is not assigned or running")
        } else if self.lease_token != Some(token) {
            Some("the job is leased with another token")
        } else if !self.lease_live {
            Some("the lease has expired")
        } else {
            None
        }
    }
}

/// Filters of ListFiles.
#[derive(Debug, Default)]
pub struct ListFilter {
    /// Only this job.
    pub job_id: Option<Uuid>,
    /// Only this kind.
    pub kind: Option<&'static str>,
    /// Created at or after.
    pub after: Option<DateTime<Utc>>,
    /// Created before.
    pub before: Option<DateTime<Utc>>,
    /// Prompt substring (case-insensitive).
    pub prompt_contains: Option<String>,
    /// Keyset cursor: (created_at, id) of the last row of the previous page.
    pub cursor: Option<(DateTime<Utc>, Uuid)>,
    /// Only this project.
    pub project_id: Option<Uuid>,
}

/// The keys of one record, as the reconciler sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredKeys {
    /// The record.
    pub id: Uuid,
    /// Where its bytes are ([`FileRecord::bytes_key`]).
    pub bytes: String,
    /// Whether it is flagged as missing its bytes.
    pub flagged: bool,
    /// Its export-view key (`None`: a record from before content addressing).
    pub export: Option<String>,
}

/// PostgreSQL access for files.
#[derive(Debug, Clone)]
pub struct Store {
    pool: Pool,
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

    /// The record of a job's artifact, if it was stored before.
    pub async fn by_job_index(&self, job_id: Uuid, index: u32) -> Result<Option<FileRecord>, OrganizerError> {
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached(&format!("SELECT {COLUMNS} FROM files WHERE job_id = $1 AND idx = $2"))
            .await?;
        Ok(client.query_opt(&stmt, &[&job_id, &i32_of(index)]).await?.map(|r| record(&r)))
    }

    /// A job's owner, request and lease (`None`: no such job). Reads the columns `id`,
    /// `owner_id`, `project_id`, `kind`, `width`, `height`, `frames`, `batch_size`,
    /// `status`, `lease_token` and `lease_expires_at` of `jobs`.
    pub async fn job_lease(&self, job_id: Uuid) -> Result<Option<JobLease>, OrganizerError> {
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached(
                "SELECT owner_id, project_id, kind, width, height, frames, batch_size, status, lease_token, \
                 coalesce(lease_expires_at > now(), false) AS lease_live FROM jobs WHERE id = $1",
            )
            .await?;
        Ok(client.query_opt(&stmt, &[&job_id]).await?.map(|r| JobLease {
            owner_id: r.get("owner_id"),
            project_id: r.get("project_id"),
            kind: r.get("kind"),
            width: u32_of(&r, "width"),
            height: u32_of(&r, "height"),
            frames: u32_of(&r, "frames"),
            batch_size: u32_of(&r, "batch_size"),
            status: r.get("status"),
            lease_token: r.get("lease_token"),
            lease_live: r.get("lease_live"),
        }))
    }

    /// Inserts a record while its job is still leased with `lease` (checked in the same
    /// statement). If one exists for (job, index), returns that one; `None` when the lease
    /// is no longer live and nothing was recorded.
    pub async fn insert(&self, f: &FileRecord, lease: Uuid) -> Result<Option<FileRecord>, OrganizerError> {
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached(&format!(
                "INSERT INTO files (id, job_id, owner_id, project_id, idx, kind, mime_type, width, height, frames, \
                 size_bytes, sha256, storage_key, checks, created_at, blob_key) \
                 SELECT $1::uuid, $2::uuid, $3::text, $4::uuid, $5::integer, $6::text, $7::text, $8::integer, \
                 $9::integer, $10::integer, $11::bigint, $12::text, $13::text, $14::text[], $15::timestamptz, \
                 $17::text \
                 WHERE EXISTS (SELECT 1 FROM jobs WHERE id = $2 AND lease_token = $16 \
                   AND status IN ('assigned', 'running') AND lease_expires_at > now()) \
                 ON CONFLICT (job_id, idx) DO NOTHING RETURNING {COLUMNS}"
            ))
            .await?;
        let size = i64::try_from(f.size_bytes).unwrap_or(i64::MAX);
        let row = client
            .query_opt(
                &stmt,
                &[
                    &f.id,
                    &f.job_id,
                    &f.owner_id,
                    &f.project_id,
                    &i32_of(f.index),
                    &f.kind,
                    &f.mime_type,
                    &i32_of(f.width),
                    &i32_of(f.height),
                    &i32_of(f.frames),
                    &size,
                    &f.sha256,
                    &f.storage_key,
                    &f.checks,
                    &f.created_at,
                    &lease,
                    &f.blob_key,
                ],
            )
            .await?;
        match row {
            Some(r) => Ok(Some(record(&r))),
            None => self.by_job_index(f.job_id, f.index).await,
        }
    }

    /// One record visible to `owner`.
    pub async fn get(&self, id: Uuid, owner: Option<&str>) -> Result<FileRecord, OrganizerError> {
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM files WHERE id = $1 AND ($2::text IS NULL OR owner_id = $2)"
            ))
            .await?;
        client
            .query_opt(&stmt, &[&id, &owner])
            .await?
            .map(|r| record(&r))
            .ok_or_else(|| OrganizerError::NotFound(format!("file {id}")))
    }

    /// A page of `owner`'s records, newest first.
    pub async fn list(
        &self,
        owner: Option<&str>,
        filter: &ListFilter,
        limit: u32,
    ) -> Result<Vec<FileRecord>, OrganizerError> {
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM files f WHERE ($1::text IS NULL OR owner_id = $1) \
                 AND ($2::uuid IS NULL OR job_id = $2) \
                 AND ($3::text IS NULL OR kind = $3) \
                 AND ($4::timestamptz IS NULL OR created_at >= $4) \
                 AND ($5::timestamptz IS NULL OR created_at < $5) \
                 AND ($6::text IS NULL OR EXISTS (SELECT 1 FROM jobs j WHERE j.id = f.job_id \
                      AND strpos(lower(j.prompt), lower($6)) > 0)) \
                 AND ($7::timestamptz IS NULL OR (created_at, id) < ($7, $8)) \
                 AND ($10::uuid IS NULL OR project_id = $10) \
                 ORDER BY created_at DESC, id DESC LIMIT $9"
            ))
            .await?;
        let (cursor_at, cursor_id) = filter.cursor.map_or((None, None), |(t, i)| (Some(t), Some(i)));
        let rows = client
            .query(
                &stmt,
                &[
                    &owner,
                    &filter.job_id,
                    &filter.kind,
                    &filter.after,
                    &filter.before,
                    &filter.prompt_contains,
                    &cursor_at,
                    &cursor_id,
                    &i64::from(limit),
                    &filter.project_id,
                ],
            )
            .await?;
        Ok(rows.iter().map(record).collect())
    }

    /// Deletes `owner`'s record; returns it so the bytes can be removed.
    pub async fn delete(&self, id: Uuid, owner: Option<&str>) -> Result<FileRecord, OrganizerError> {
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached(&format!(
                "DELETE FROM files WHERE id = $1 AND ($2::text IS NULL OR owner_id = $2) RETURNING {COLUMNS}"
            ))
            .await?;
        client
            .query_opt(&stmt, &[&id, &owner])
            .await?
            .map(|r| record(&r))
            .ok_or_else(|| OrganizerError::NotFound(format!("file {id}")))
    }

    /// The slug of `owner`'s project (`None`: no such project of theirs).
    pub async fn project_slug(&self, project: Uuid, owner: &str) -> Result<Option<String>, OrganizerError> {
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached("SELECT slug FROM projects WHERE id = $1 AND owner_id = $2").await?;
        Ok(client.query_opt(&stmt, &[&project, &owner]).await?.map(|r| r.get(0)))
    }

    /// Whether a record points at the bytes at `key`.
    pub async fn bytes_referenced(&self, key: &str) -> Result<bool, OrganizerError> {
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM files WHERE coalesce(blob_key, storage_key) = $1)")
            .await?;
        Ok(client.query_one(&stmt, &[&key]).await?.get(0))
    }

    /// Runs `pass` under the reconciler's advisory lock, held by a transaction for as long
    /// as the pass runs (released when it ends, fails or is dropped, and if the connection
    /// is lost). `None`: another organizer holds it; nothing ran.
    pub async fn with_reconcile_lock<T, F>(&self, pass: F) -> Result<Option<T>, OrganizerError>
    where
        F: std::future::Future<Output = Result<T, OrganizerError>>,
    {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let locked: bool =
            tx.query_one("SELECT pg_try_advisory_xact_lock($1)", &[&RECONCILE_LOCK]).await?.get(0);
        if !locked {
            return Ok(None);
        }
        let out = pass.await?;
        tx.commit().await?;
        Ok(Some(out))
    }

    /// Every record's keys: its bytes, its export entry and whether it is flagged missing.
    pub async fn all_keys(&self) -> Result<Vec<StoredKeys>, OrganizerError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT id, coalesce(blob_key, storage_key), missing_at IS NOT NULL, \
                 CASE WHEN blob_key IS NOT NULL THEN storage_key END FROM files",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| StoredKeys {
                id: r.get(0),
                bytes: r.get(1),
                flagged: r.get(2),
                export: r.get::<_, Option<String>>(3).as_deref().map(crate::storage::export_key),
            })
            .collect())
    }

    /// Flags (or clears the flag of) a record whose bytes are gone.
    pub async fn set_missing(&self, id: Uuid, missing: bool) -> Result<(), OrganizerError> {
        let client = self.pool.get().await?;
        client
            .execute(
                "UPDATE files SET missing_at = CASE WHEN $2 THEN COALESCE(missing_at, now()) END WHERE id = $1",
                &[&id, &missing],
            )
            .await?;
        Ok(())
    }

    /// Deletes up to `limit` records of projects with a retention period whose files are
    /// older than it; returns them so their bytes can be removed.
    pub async fn delete_expired(&self, limit: i64) -> Result<Vec<FileRecord>, OrganizerError> {
        let client = self.pool.get().await?;
        let sql = format!(
            "DELETE FROM files WHERE id IN (SELECT f.id FROM files f JOIN projects p ON p.id = f.project_id \
             WHERE p.retention_days > 0 AND f.created_at < now() - make_interval(days => p.retention_days) \
             LIMIT $1) RETURNING {COLUMNS}"
        );
        let rows = client.query(&sql, &[&limit]).await?;
        Ok(rows.iter().map(record).collect())
    }
}
