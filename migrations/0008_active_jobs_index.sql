-- SubmitJob counts the caller's unfinished jobs against max_active_jobs_per_user. The owner
-- index it used holds every job the caller ever had, so the count grew with their history;
-- this one holds only unfinished jobs.
CREATE INDEX jobs_owner_active ON jobs (owner_id) WHERE status IN ('queued', 'assigned', 'running');
