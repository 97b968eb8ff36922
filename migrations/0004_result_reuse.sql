-- Result reuse: identical normalized requests with a fixed seed give identical outputs, so
-- a submit that asks for it is answered with the owner's earlier succeeded job.
ALTER TABLE jobs ADD COLUMN spec_hash text;
CREATE INDEX jobs_reuse ON jobs (owner_id, spec_hash, finished_at DESC) WHERE status = 'succeeded';
