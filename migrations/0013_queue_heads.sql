-- Fair share without walking every owner. The claim found each owner with queued jobs by a
-- skip scan of jobs_queue_by_owner and ranked their first jobs, so one claim cost grew with
-- the owners waiting: 93 ms per dispatched job with 10,000 owners, 696 ms at 10^6 jobs.
--
-- queue_heads holds one row per (owner, priority, backend) that has queued jobs, with the
-- time of its oldest: the line of owners. A claim locks the first few rows of the line it
-- can serve (FOR UPDATE SKIP LOCKED), then, in a second statement whose snapshot is taken
-- after the locks, claims their jobs and moves each row to its next job or deletes it.
--
-- A job joins the line in the trigger below, in the transaction that queues it. That
-- upsert waits for a claim holding the row, so a claim never removes a row under a job
-- it could not see. A row may be left behind without queued jobs (a canceled job): claims
-- pass over it, and the scheduler's sweep deletes it under the same lock discipline.
CREATE TABLE queue_heads (
    owner_id text        NOT NULL,
    priority integer     NOT NULL,
    backend  text        NOT NULL,
    head_at  timestamptz NOT NULL,
    PRIMARY KEY (owner_id, priority, backend)
);
CREATE INDEX queue_heads_in_line ON queue_heads (priority DESC, head_at, owner_id, backend);

CREATE FUNCTION sakuga_queue_head() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO queue_heads (owner_id, priority, backend, head_at)
    VALUES (NEW.owner_id, NEW.priority, NEW.backend, NEW.created_at)
    ON CONFLICT (owner_id, priority, backend)
    DO UPDATE SET head_at = least(queue_heads.head_at, EXCLUDED.head_at);
    RETURN NULL;
END;
$$;

CREATE TRIGGER jobs_queue_head
    AFTER INSERT OR UPDATE OF status ON jobs
    FOR EACH ROW WHEN (NEW.status = 'queued')
    EXECUTE FUNCTION sakuga_queue_head();

INSERT INTO queue_heads (owner_id, priority, backend, head_at)
SELECT owner_id, priority, backend, min(created_at) FROM jobs WHERE status = 'queued'
GROUP BY owner_id, priority, backend;

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'sakuga_scheduler') THEN
        GRANT SELECT, INSERT, UPDATE, DELETE ON queue_heads TO sakuga_scheduler;
    END IF;
END
$$;
