-- Set by the reconciler when a record's bytes are gone (ReadFile then answers DATA_LOSS);
-- cleared if they come back.
ALTER TABLE files ADD COLUMN missing_at timestamptz;
-- Identical bytes are stored once: a new file with a known sha256 links to the old bytes.
CREATE INDEX files_sha256 ON files (sha256);
CREATE INDEX files_project_created ON files (project_id, created_at DESC, id DESC) WHERE project_id IS NOT NULL;
