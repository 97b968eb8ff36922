-- Least privilege in the data tier: one NOLOGIN group role per service, holding exactly the
-- privileges that service's queries need. Each service logs in with its own LOGIN role
-- (created by the deployment, credentials in the service's own Vault path), a member of
-- its group. The tables stay owned by the role that runs the migrations.
--
-- Idempotent, and harmless where the group roles cannot be created (the migrating role
-- lacks CREATEROLE and nobody created them beforehand): the grants of a missing role are
-- skipped with a notice. Every grant is stated in full here: the group's privileges on the
-- schema's tables are revoked first, so re-running leaves exactly these.

DO $$
DECLARE
    grp text;
BEGIN
    FOREACH grp IN ARRAY ARRAY['sakuga_auth', 'sakuga_scheduler', 'sakuga_organizer', 'sakuga_generator'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = grp) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN', grp);
            EXCEPTION
                WHEN insufficient_privilege THEN
                    RAISE NOTICE 'role % does not exist and this role may not create it: its grants are skipped', grp;
                WHEN duplicate_object THEN
                    NULL;
            END;
        END IF;
    END LOOP;
END
$$;

-- API keys are verified by every service that accepts them, but only auth may read users
-- or api_keys: the others call this function, which runs as the tables' owner, marks the
-- key used and returns only what the guard needs.
CREATE OR REPLACE FUNCTION sakuga_use_api_key(p_key_hash text)
RETURNS TABLE (key_id uuid, user_id uuid, role text)
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public AS $$
    UPDATE api_keys k SET last_used_at = now() FROM users u
     WHERE k.key_hash = p_key_hash AND u.id = k.user_id AND k.revoked_at IS NULL
       AND (k.expires_at IS NULL OR k.expires_at > now()) AND NOT u.disabled
    RETURNING k.id, k.user_id, u.role
$$;
REVOKE ALL ON FUNCTION sakuga_use_api_key(text) FROM PUBLIC;

DO $$
DECLARE
    g record;
BEGIN
    FOR g IN
        SELECT t.grantee, t.stmt FROM (VALUES
            -- Start from nothing (table-level revokes take column privileges with them).
            ('sakuga_auth', 'REVOKE ALL ON ALL TABLES IN SCHEMA public FROM %1$I'),
            ('sakuga_scheduler', 'REVOKE ALL ON ALL TABLES IN SCHEMA public FROM %1$I'),
            ('sakuga_organizer', 'REVOKE ALL ON ALL TABLES IN SCHEMA public FROM %1$I'),
            ('sakuga_generator', 'REVOKE ALL ON ALL TABLES IN SCHEMA public FROM %1$I'),
            ('sakuga_auth', 'REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM %1$I'),
            ('sakuga_scheduler', 'REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM %1$I'),
            ('sakuga_organizer', 'REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM %1$I'),
            ('sakuga_generator', 'REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM %1$I'),
            -- The database: the three services with tables connect; the generator has none.
            ('sakuga_auth', 'GRANT CONNECT ON DATABASE %2$I TO %1$I'),
            ('sakuga_scheduler', 'GRANT CONNECT ON DATABASE %2$I TO %1$I'),
            ('sakuga_organizer', 'GRANT CONNECT ON DATABASE %2$I TO %1$I'),
            -- Start-up checks that the schema is current (read only).
            ('sakuga_auth', 'GRANT SELECT ON schema_migrations TO %1$I'),
            ('sakuga_scheduler', 'GRANT SELECT ON schema_migrations TO %1$I'),
            ('sakuga_organizer', 'GRANT SELECT ON schema_migrations TO %1$I'),
            -- Audit trail: everyone appends; only auth lists it and deletes for retention.
            ('sakuga_auth', 'GRANT SELECT, INSERT, DELETE ON audit_events TO %1$I'),
            ('sakuga_scheduler', 'GRANT INSERT ON audit_events TO %1$I'),
            ('sakuga_organizer', 'GRANT INSERT ON audit_events TO %1$I'),
            ('sakuga_auth', 'GRANT USAGE ON SEQUENCE audit_events_id_seq TO %1$I'),
            ('sakuga_scheduler', 'GRANT USAGE ON SEQUENCE audit_events_id_seq TO %1$I'),
            ('sakuga_organizer', 'GRANT USAGE ON SEQUENCE audit_events_id_seq TO %1$I'),
            -- auth: accounts, refresh tokens and API keys.
            ('sakuga_auth', 'GRANT SELECT, INSERT, UPDATE, DELETE ON users, refresh_tokens, api_keys TO %1$I'),
            ('sakuga_auth', 'GRANT EXECUTE ON FUNCTION sakuga_use_api_key(text) TO %1$I'),
            -- scheduler: the queue, projects and characters; of files only which job made them.
            ('sakuga_scheduler', 'GRANT SELECT, INSERT, UPDATE, DELETE ON jobs, projects, characters TO %1$I'),
            ('sakuga_scheduler', 'GRANT SELECT (id, job_id) ON files TO %1$I'),
            ('sakuga_scheduler', 'GRANT EXECUTE ON FUNCTION sakuga_use_api_key(text) TO %1$I'),
            -- organizer: the library; of jobs what checks an upload's lease and decodes it,
            -- and the prompt for search; of projects what names folders and keeps retention.
            ('sakuga_organizer', 'GRANT SELECT, INSERT, UPDATE, DELETE ON files TO %1$I'),
            ('sakuga_organizer', 'GRANT SELECT (id, owner_id, project_id, status, lease_token, lease_expires_at, '
                'worker_id, kind, width, height, frames, batch_size, prompt) ON jobs TO %1$I'),
            ('sakuga_organizer', 'GRANT SELECT (id, owner_id, slug, retention_days) ON projects TO %1$I'),
            ('sakuga_organizer', 'GRANT EXECUTE ON FUNCTION sakuga_use_api_key(text) TO %1$I')
        ) AS t(grantee, stmt)
    LOOP
        IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = g.grantee) THEN
            EXECUTE format(g.stmt, g.grantee, current_database());
        END IF;
    END LOOP;
END
$$;
