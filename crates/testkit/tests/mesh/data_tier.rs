//! Least privilege in the data tier: each service's PostgreSQL group role (migration 0010)
//! and Redis ACL user (deploy/redis/acl.conf) reach only what that service uses.

use sakuga_mesh::ratelimit::{Class, Decision, RateLimiter};
use sakuga_testkit::TestEnv;
use tokio_postgres::{Client, error::SqlState};

/// Runs `sql`; true when PostgreSQL refused it for lack of privilege, false when it ran,
/// a panic on any other error.
async fn refused(db: &Client, sql: &str) -> bool {
    match db.batch_execute(sql).await {
        Ok(()) => false,
        Err(e) if e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) => true,
        Err(e) => panic!("{sql}: {e:?}"),
    }
}

async fn assert_refused(db: &Client, who: &str, sql: &str) {
    assert!(refused(db, sql).await, "{who} may run {sql}");
}

async fn assert_allowed(db: &Client, who: &str, sql: &str) {
    assert!(!refused(db, sql).await, "{who} may not run {sql}");
}

#[tokio::test]
async fn each_service_database_role_reaches_only_its_own_tables() {
    let env = TestEnv::new().await.unwrap();
    let audit = "INSERT INTO audit_events (actor, action, result) VALUES ('t', 'test', 'ok')";

    let who = "organizer";
    let db = env.db_as("sakuga_organizer").await.unwrap();
    for sql in [
        "SELECT * FROM users",
        "SELECT id FROM users",
        "UPDATE users SET disabled = true",
        "DELETE FROM users",
        "SELECT * FROM api_keys",
        "SELECT * FROM refresh_tokens",
        "SELECT composed_prompt FROM jobs",
        "UPDATE jobs SET status = 'failed'",
        "SELECT * FROM characters",
        "SELECT description FROM projects",
        "SELECT * FROM audit_events",
        "UPDATE audit_events SET result = 'forged'",
        "DELETE FROM audit_events",
    ] {
        assert_refused(&db, who, sql).await;
    }
    for sql in [
        "SELECT * FROM files",
        "UPDATE files SET missing_at = NULL WHERE false",
        "DELETE FROM files WHERE false",
        "SELECT id, owner_id, project_id, status, lease_token, lease_expires_at, width, height, frames FROM jobs",
        "SELECT id, slug, retention_days FROM projects",
        audit,
    ] {
        assert_allowed(&db, who, sql).await;
    }

    let who = "scheduler";
    let db = env.db_as("sakuga_scheduler").await.unwrap();
    for sql in [
        "UPDATE audit_events SET result = 'forged'",
        "DELETE FROM audit_events",
        "SELECT * FROM audit_events",
        "SELECT * FROM users",
        "SELECT * FROM api_keys",
        "SELECT storage_key FROM files",
        "DELETE FROM files",
    ] {
        assert_refused(&db, who, sql).await;
    }
    for sql in [
        audit,
        "SELECT id, job_id FROM files",
        "SELECT * FROM jobs",
        "UPDATE jobs SET priority = 0 WHERE false",
        "SELECT * FROM projects",
        "SELECT * FROM characters",
    ] {
        assert_allowed(&db, who, sql).await;
    }

    let who = "auth";
    let db = env.db_as("sakuga_auth").await.unwrap();
    for sql in ["SELECT * FROM jobs", "SELECT * FROM files", "SELECT * FROM projects"] {
        assert_refused(&db, who, sql).await;
    }
    for sql in ["SELECT * FROM users", "SELECT * FROM api_keys", "SELECT * FROM refresh_tokens", audit] {
        assert_allowed(&db, who, sql).await;
    }
    // Retention: auth deletes audit rows.
    let deleted = db.execute("DELETE FROM audit_events WHERE actor = 't'", &[]).await.unwrap();
    assert_eq!(deleted, 3, "the rows the organizer, scheduler and auth appended");

    let who = "generator";
    let db = env.db_as("sakuga_generator").await.unwrap();
    for sql in ["SELECT 1 FROM jobs", "SELECT 1 FROM files", "SELECT 1 FROM users", audit] {
        assert_refused(&db, who, sql).await;
    }
    env.cleanup().await;
}

#[tokio::test]
async fn the_grants_migration_can_run_again_and_leaves_the_same_privileges() {
    let env = TestEnv::new().await.unwrap();
    let owner = env.db().await.unwrap();
    let grants = sakuga_mesh::db::MIGRATIONS.iter().find(|m| m.name == "service_roles").unwrap();
    // A privilege granted by hand is revoked by the re-run: the migration states them all.
    owner.batch_execute("GRANT SELECT ON users TO sakuga_organizer").await.unwrap();
    owner.batch_execute(grants.sql).await.unwrap();
    owner.batch_execute(grants.sql).await.unwrap();
    let db = env.db_as("sakuga_organizer").await.unwrap();
    assert_refused(&db, "organizer", "SELECT id FROM users").await;
    assert_allowed(&db, "organizer", "SELECT id FROM files").await;
    let db = env.db_as("sakuga_scheduler").await.unwrap();
    assert_refused(&db, "scheduler", "DELETE FROM audit_events").await;
    assert_allowed(&db, "scheduler", "SELECT id FROM jobs").await;
    env.cleanup().await;
}

#[tokio::test]
async fn services_without_access_to_users_verify_api_keys_through_the_owner_function() {
    let env = TestEnv::new().await.unwrap();
    let owner = env.db().await.unwrap();
    let user = uuid::Uuid::new_v4();
    let key = uuid::Uuid::new_v4();
    owner
        .execute(
            "INSERT INTO users (id, username, password_hash, role) VALUES ($1, 'keyholder', 'x', 'user')",
            &[&user],
        )
        .await
        .unwrap();
    owner
        .execute(
            "INSERT INTO api_keys (id, user_id, name, prefix, key_hash) VALUES ($1, $2, 'k', 'p', 'hash-1')",
            &[&key, &user],
        )
        .await
        .unwrap();
    let call = "SELECT key_id, user_id, role FROM sakuga_use_api_key($1)";
    for group in ["sakuga_organizer", "sakuga_scheduler", "sakuga_auth"] {
        let db = env.db_as(group).await.unwrap();
        let row = db.query_one(call, &[&"hash-1"]).await.unwrap();
        assert_eq!((row.get::<_, uuid::Uuid>(0), row.get::<_, uuid::Uuid>(1)), (key, user), "{group}");
        assert_eq!(row.get::<_, String>(2), "user");
        assert!(db.query_opt(call, &[&"unknown"]).await.unwrap().is_none(), "{group}");
    }
    let last_used: Option<chrono::DateTime<chrono::Utc>> =
        owner.query_one("SELECT last_used_at FROM api_keys WHERE id = $1", &[&key]).await.unwrap().get(0);
    assert!(last_used.is_some(), "the function marks the key used");
    let generator = env.db_as("sakuga_generator").await.unwrap();
    let err = generator.query_one(call, &[&"hash-1"]).await.unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::INSUFFICIENT_PRIVILEGE), "{err:?}");
    env.cleanup().await;
}

/// Runs one Redis command; `Err` with Redis's answer when it was refused.
async fn redis_cmd(redis: &sakuga_mesh::redis::Redis, cmd: &mut redis::Cmd) -> Result<(), String> {
    let mut conn = redis.conn();
    cmd.query_async::<redis::Value>(&mut conn).await.map(drop).map_err(|e| e.to_string())
}

fn assert_noperm(result: Result<(), String>, what: &str) {
    let err = result.expect_err(what);
    assert!(err.to_lowercase().contains("noperm"), "{what}: {err}");
}

#[tokio::test]
async fn each_service_redis_user_reaches_only_its_own_keys_and_channels() {
    let env = TestEnv::new().await.unwrap();
    let limits = sakuga_testkit::test_rate_limits();
    for service in ["auth", "scheduler", "organizer"] {
        let redis = env.redis_as(service).await.unwrap();
        // Every guard rate-limits and reads the revocation list.
        let limiter = RateLimiter::new(redis.clone(), limits.clone());
        let decision = limiter.check(Class::Submit, "someone").await.unwrap();
        assert!(matches!(decision, Decision::Allowed { .. }), "{service}: {decision:?}");
        redis.ping().await.unwrap();
        let revoked = redis.key("revoked:jti:some-token");
        redis_cmd(&redis, redis::cmd("MGET").arg(&revoked).arg(redis.key("revoked:user:x"))).await.unwrap();
        // Only auth writes revocations.
        let write = redis_cmd(&redis, redis::cmd("SET").arg(&revoked).arg(1).arg("EX").arg(60)).await;
        if service == "auth" {
            write.unwrap();
        } else {
            assert_noperm(write, &format!("{service} SET {revoked}"));
        }
        // Only the scheduler publishes job events.
        let channel = redis.key(&format!("job:{}", uuid::Uuid::new_v4()));
        let publish = redis_cmd(&redis, redis::cmd("PUBLISH").arg(&channel).arg("x")).await;
        if service == "scheduler" {
            publish.unwrap();
        } else {
            assert_noperm(publish, &format!("{service} PUBLISH {channel}"));
        }
        // Nothing outside its key patterns, nor another prefix, nor administration.
        assert_noperm(redis_cmd(&redis, redis::cmd("SET").arg(redis.key("other")).arg(1)).await, "other key");
        assert_noperm(redis_cmd(&redis, redis::cmd("GET").arg("elsewhere:rl:x")).await, "other prefix");
        assert_noperm(redis_cmd(&redis, redis::cmd("KEYS").arg("*")).await, "KEYS");
        assert_noperm(redis_cmd(&redis, &mut redis::cmd("FLUSHALL")).await, "FLUSHALL");
        assert_noperm(redis_cmd(&redis, redis::cmd("ACL").arg("LIST")).await, "ACL LIST");
    }
    // The scheduler's pattern subscription (WatchJob on any replica) is allowed.
    let scheduler = env.redis_as("scheduler").await.unwrap();
    let mut pubsub = scheduler.client.get_async_pubsub().await.unwrap();
    pubsub.psubscribe(scheduler.key("job:*")).await.unwrap();
    let organizer = env.redis_as("organizer").await.unwrap();
    let mut pubsub = organizer.client.get_async_pubsub().await.unwrap();
    let err = pubsub.psubscribe(organizer.key("job:*")).await.unwrap_err();
    assert!(err.to_string().to_lowercase().contains("noperm"), "{err}");
    env.cleanup().await;
}
