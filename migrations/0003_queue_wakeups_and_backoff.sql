-- Wake every scheduler replica when a job becomes queued (insert, retry, lease expiry,
-- retryable failure): the trigger fires inside the same transaction, so the notification is
-- delivered exactly when the row is visible. Identical notifications of one transaction are
-- folded into one by PostgreSQL.
CREATE FUNCTION sakuga_notify_queued() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('sakuga_jobs_queued', '');
    RETURN NULL;
END;
$$;

CREATE TRIGGER jobs_notify_queued
    AFTER INSERT OR UPDATE OF status ON jobs
    FOR EACH ROW WHEN (NEW.status = 'queued')
    EXECUTE FUNCTION sakuga_notify_queued();

-- A job handed back after a failed attempt waits this long before the next one
-- (exponential in the attempts, capped), so a job that kills its worker cannot spin.
ALTER TABLE jobs ADD COLUMN not_before timestamptz;
