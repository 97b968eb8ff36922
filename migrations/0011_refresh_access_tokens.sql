-- Each refresh token row records the access token issued with it (its jti and expiry), so
-- that revoking a family (reuse detected, logout) can put the family's still-live access
-- tokens on the revocation list too.
ALTER TABLE refresh_tokens
    ADD COLUMN access_jti        text,
    ADD COLUMN access_expires_at timestamptz;

-- The audit retention sweep deletes the oldest rows by time.
CREATE INDEX audit_events_time ON audit_events (time);
