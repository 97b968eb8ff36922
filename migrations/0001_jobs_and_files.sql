-- Jobs (owned by the scheduler) and stored files (owned by the file organizer).
-- Every state change of a job is a single guarded UPDATE (WHERE status = ... AND
-- lease_token = ...), so a late or duplicate message cannot move a finished job.

CREATE TABLE jobs (
    id               uuid PRIMARY KEY,
    owner_id         text        NOT NULL,
    project_id       uuid,
    kind             text        NOT NULL CHECK (kind IN ('image', 'video')),
    backend          text        NOT NULL,
    model            text        NOT NULL,
    prompt           text        NOT NULL,
    negative_prompt  text        NOT NULL DEFAULT '',
    composed_prompt  text        NOT NULL,
    width            integer     NOT NULL CHECK (width BETWEEN 64 AND 2048 AND width % 8 = 0),
    height           integer     NOT NULL CHECK (height BETWEEN 64 AND 2048 AND height % 8 = 0),
    steps            integer     NOT NULL CHECK (steps BETWEEN 1 AND 150),
    batch_size       integer     NOT NULL CHECK (batch_size BETWEEN 1 AND 8),
    frames           integer     NOT NULL CHECK (frames BETWEEN 0 AND 120),
    fps              integer     NOT NULL CHECK (fps BETWEEN 0 AND 60),
    seed             bigint      NOT NULL,
    cfg_scale        real        NOT NULL,
    sampler          text        NOT NULL,
    priority         integer     NOT NULL DEFAULT 0,
    idempotency_key  text,
    status           text        NOT NULL DEFAULT 'queued'
                     CHECK (status IN ('queued', 'assigned', 'running', 'succeeded', 'failed', 'canceled')),
    attempts         integer     NOT NULL DEFAULT 0,
    max_attempts     integer     NOT NULL DEFAULT 3,
    lease_token      uuid,
    lease_expires_at timestamptz,
    worker_id        text,
    progress_step    integer     NOT NULL DEFAULT 0,
    progress_total   integer     NOT NULL DEFAULT 0,
    progress_stage   text        NOT NULL DEFAULT '',
    progress_item    integer     NOT NULL DEFAULT 0,
    error            text        NOT NULL DEFAULT '',
    file_ids         uuid[]      NOT NULL DEFAULT '{}',
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz,
    CONSTRAINT jobs_owner_idempotency UNIQUE (owner_id, idempotency_key)
);

-- The dispatcher's claim: queued jobs by priority, then age.
CREATE INDEX jobs_queue ON jobs (priority DESC, created_at) WHERE status = 'queued';
-- Lease expiry sweep.
CREATE INDEX jobs_leases ON jobs (lease_expires_at) WHERE status IN ('assigned', 'running');
-- A caller's jobs, newest first.
CREATE INDEX jobs_owner_created ON jobs (owner_id, created_at DESC, id DESC);

CREATE TABLE files (
    id          uuid PRIMARY KEY,
    job_id      uuid        NOT NULL,
    owner_id    text        NOT NULL,
    project_id  uuid,
    idx         integer     NOT NULL CHECK (idx BETWEEN 0 AND 7),
    kind        text        NOT NULL CHECK (kind IN ('image', 'video')),
    mime_type   text        NOT NULL,
    width       integer     NOT NULL,
    height      integer     NOT NULL,
    frames      integer     NOT NULL,
    size_bytes  bigint      NOT NULL,
    sha256      text        NOT NULL,
    -- Location relative to the storage root; never shown to clients.
    storage_key text        NOT NULL,
    checks      text[]      NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now(),
    -- One record per (job, batch index): a re-upload after a crash finds the first.
    CONSTRAINT files_job_index UNIQUE (job_id, idx)
);

CREATE INDEX files_owner_created ON files (owner_id, created_at DESC, id DESC);
