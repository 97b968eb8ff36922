-- The line's rows become cursors. A claim found an owner's first queued job by an index
-- scan from the start of the owner's jobs in jobs_queue_by_owner, which steps over the
-- entry of every job claimed since the last vacuum: with 20,000 jobs of one owner queued,
-- a claim of 10 cost 2.8 ms at the start of the drain and 10.7 ms after 10,000 (the drain
-- got slower the further it went). Each row now also holds the id of its oldest queued job,
-- so (head_at, head_id) is a position in that index: no queued job of the row's owner,
-- priority and backend sorts before it (the trigger below keeps it so when a job is
-- queued; a claim moves it to the next queued job), and a claim starts its scans there.
ALTER TABLE queue_heads ADD COLUMN head_id uuid;

UPDATE queue_heads h SET (head_at, head_id) = (
    SELECT q.created_at, q.id FROM jobs q
    WHERE q.owner_id = h.owner_id AND q.priority = h.priority AND q.backend = h.backend AND q.status = 'queued'
    ORDER BY q.created_at, q.id LIMIT 1);
DELETE FROM queue_heads WHERE head_id IS NULL;
ALTER TABLE queue_heads ALTER COLUMN head_id SET NOT NULL;

CREATE OR REPLACE FUNCTION sakuga_queue_head() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO queue_heads (owner_id, priority, backend, head_at, head_id)
    VALUES (NEW.owner_id, NEW.priority, NEW.backend, NEW.created_at, NEW.id)
    ON CONFLICT (owner_id, priority, backend) DO UPDATE SET
        head_at = CASE WHEN (EXCLUDED.head_at, EXCLUDED.head_id) < (queue_heads.head_at, queue_heads.head_id)
                       THEN EXCLUDED.head_at ELSE queue_heads.head_at END,
        head_id = CASE WHEN (EXCLUDED.head_at, EXCLUDED.head_id) < (queue_heads.head_at, queue_heads.head_id)
                       THEN EXCLUDED.head_id ELSE queue_heads.head_id END;
    RETURN NULL;
END;
$$;
