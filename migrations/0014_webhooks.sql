-- Webhooks: endpoints that want a signed POST when a job changes state, and the outbox of
-- deliveries to them.
--
-- The outbox is written by the trigger below, inside the transaction that changes the job's
-- status: no event without its change, no change without its event, whichever statement
-- made the change. Each delivery keeps the job row as it was at that change (`job`), so a
-- late or repeated delivery still says what happened then.
--
-- Deliveries of one endpoint and one job are sent in `seq` order (the job's row lock orders
-- its changes, so their rows get increasing `seq`): only the first pending one of a job
-- (its head) has a `next_attempt_at`; the others wait with NULL until the head is
-- delivered or given up, which sets the next one's. So every due row may be sent, and a
-- claim reads only as many rows as it claims, however long the backlog of an endpoint
-- that was down.
CREATE TABLE webhook_endpoints (
    id                          uuid        PRIMARY KEY,
    owner_id                    text        NOT NULL,
    url                         text        NOT NULL,
    events                      text[]      NOT NULL,
    project_id                  uuid,
    only_named_jobs             boolean     NOT NULL DEFAULT false,
    enabled                     boolean     NOT NULL DEFAULT true,
    description                 text        NOT NULL DEFAULT '',
    max_concurrency             integer     NOT NULL CHECK (max_concurrency BETWEEN 1 AND 64),
    timeout_ms                  integer     NOT NULL CHECK (timeout_ms BETWEEN 1000 AND 60000),
    -- The signing key, sealed with the scheduler's key from Vault (nonce, then ciphertext
    -- and tag); never stored in the clear.
    secret                      bytea       NOT NULL,
    -- The key before the last rotation, signing beside the current one until it expires.
    previous_secret             bytea,
    previous_secret_expires_at  timestamptz,
    consecutive_failures        integer     NOT NULL DEFAULT 0,
    failing_since               timestamptz,
    disabled_reason             text        NOT NULL DEFAULT '',
    created_at                  timestamptz NOT NULL DEFAULT now(),
    updated_at                  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_endpoints_by_owner ON webhook_endpoints (owner_id, created_at DESC, id DESC);

CREATE TABLE webhook_deliveries (
    id               uuid        PRIMARY KEY,
    seq              bigint      GENERATED ALWAYS AS IDENTITY,
    endpoint_id      uuid        NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    owner_id         text        NOT NULL,
    job_id           uuid        NOT NULL,
    event            text        NOT NULL,
    -- The job row at the change, without its lease token. The scheduler reads it back as a
    -- row with jsonb_populate_record(NULL::jobs, job): a column added to jobs later is NULL
    -- in older snapshots, so the row reader must give such a column a default.
    job              jsonb       NOT NULL,
    state            text        NOT NULL DEFAULT 'pending'
                                 CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts         integer     NOT NULL DEFAULT 0,
    -- Pending: when it may be tried next (while an attempt is in flight, when that
    -- attempt's lease ends, so a replica that died mid-delivery hands it on); NULL while
    -- an earlier delivery of the same job to the same endpoint is pending.
    next_attempt_at  timestamptz,
    -- Set while an attempt is in flight (counts against the endpoint's concurrency).
    in_flight_until  timestamptz,
    last_attempt_at  timestamptz,
    last_status_code integer     NOT NULL DEFAULT 0,
    last_error       text        NOT NULL DEFAULT '',
    delivered_at     timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (endpoint_id, next_attempt_at)
    WHERE state = 'pending';
CREATE INDEX webhook_deliveries_pending ON webhook_deliveries (endpoint_id, job_id, seq)
    WHERE state = 'pending';
CREATE INDEX webhook_deliveries_in_flight ON webhook_deliveries (endpoint_id)
    WHERE in_flight_until IS NOT NULL;
CREATE INDEX webhook_deliveries_age ON webhook_deliveries (created_at);
CREATE INDEX webhook_deliveries_by_owner ON webhook_deliveries (owner_id, created_at DESC, id DESC);
CREATE INDEX webhook_deliveries_by_endpoint ON webhook_deliveries (endpoint_id, created_at DESC, id DESC);
CREATE INDEX webhook_deliveries_by_job ON webhook_deliveries (job_id, created_at DESC, id DESC);

-- The endpoint a job names in SubmitJob (no foreign key: a deleted endpoint simply matches
-- nothing, and deleting one never scans the jobs).
ALTER TABLE jobs ADD COLUMN webhook_endpoint_id uuid;

CREATE FUNCTION sakuga_webhook_outbox() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    ev text := CASE NEW.status
        WHEN 'running' THEN 'job.started'
        WHEN 'succeeded' THEN 'job.succeeded'
        WHEN 'failed' THEN 'job.failed'
        WHEN 'canceled' THEN 'job.canceled'
    END;
BEGIN
    INSERT INTO webhook_deliveries (id, endpoint_id, owner_id, job_id, event, job, next_attempt_at)
    SELECT gen_random_uuid(), e.id, NEW.owner_id, NEW.id, ev, to_jsonb(NEW) - 'lease_token',
           CASE WHEN EXISTS (SELECT 1 FROM webhook_deliveries p WHERE p.endpoint_id = e.id
                             AND p.job_id = NEW.id AND p.state = 'pending') THEN NULL ELSE now() END
    FROM webhook_endpoints e
    WHERE e.owner_id = NEW.owner_id AND e.enabled AND ev = ANY (e.events)
      AND (e.id = NEW.webhook_endpoint_id
           OR (NOT e.only_named_jobs AND (e.project_id IS NULL OR e.project_id = NEW.project_id)));
    IF FOUND THEN
        PERFORM pg_notify('sakuga_webhooks', '');
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER jobs_webhook_outbox
    AFTER UPDATE OF status ON jobs
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status
                       AND NEW.status IN ('running', 'succeeded', 'failed', 'canceled'))
    EXECUTE FUNCTION sakuga_webhook_outbox();

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'sakuga_scheduler') THEN
        GRANT SELECT, INSERT, UPDATE, DELETE ON webhook_endpoints, webhook_deliveries TO sakuga_scheduler;
    END IF;
END
$$;
