-- The claim ranks queued jobs for fair share: each owner's oldest before anyone's second.
-- It used to rank every queued job on every claim, so a claim's cost grew with the queue
-- (6.7 ms at 2,000 queued jobs, 11 ms at 5,000). With this index it reads only the first
-- few queued jobs of each owner.
CREATE INDEX jobs_queue_by_owner ON jobs (owner_id, priority DESC, created_at, id) WHERE status = 'queued';
