//! Redis going away: logins and submits fail closed with UNAVAILABLE, reads go on, and no
//! job is lost. Login attempts are limited per username and address.

use std::{process::Stdio, time::Duration};

use sakuga_proto::v1::{
    GetJobRequest, ListJobsRequest, LoginRequest, auth_service_client::AuthServiceClient,
};
use tokio_stream::StreamExt as _;
use tonic::Code;

use crate::common::{Mesh, image_request};

/// A private redis-server the test may kill.
struct PrivateRedis {
    child: std::process::Child,
    port: u16,
}

impl PrivateRedis {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (make test installs it)");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, port }
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test]
async fn without_redis_logins_and_submits_fail_closed_and_reads_go_on() {
    let mut redis = PrivateRedis::start();
    let port = redis.port;
    let mut mesh = Mesh::with_config(|env, auth, scheduler| {
        let secret = env.redis_secret.replace("/redis", "/redis-private");
        auth.redis.port = port;
        auth.redis.vault_path.clone_from(&secret);
        scheduler.redis.port = port;
        scheduler.redis.vault_path = secret;
    })
    .await;
    mesh.attach_generator().await;
    let alice = mesh.person("alice").await;
    let mut jobs = mesh.jobs(&alice.token);
    let mut long = image_request("before the outage", 40);
    let spec = long.spec.as_mut().unwrap();
    (spec.width, spec.height) = (256, 256);
    let job = jobs.submit_job(long).await.unwrap().into_inner().job.unwrap();
    let mut watch = jobs
        .watch_job(sakuga_proto::v1::WatchJobRequest { job_id: job.id.clone() })
        .await
        .unwrap()
        .into_inner();

    redis.stop();
    let e = jobs.submit_job(image_request("during the outage", 2)).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "submits fail closed: {e:?}");
    let mut anon = AuthServiceClient::new(mesh.channel(&mesh.auth.addr_string()));
    let e = anon
        .login(LoginRequest { username: "alice".into(), password: "alice-correct-horse-battery".into() }) // secret-scan: allow (test fixture)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "logins fail closed: {e:?}");
    // Admin tokens fail closed too: a revoked or disabled admin keeps no admin power through
    // an outage of the revocation list. People's reads go on (below).
    let e = mesh.jobs(&mesh.admin_token).list_jobs(ListJobsRequest::default()).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "admin tokens fail closed: {e:?}");
    assert_eq!(sakuga_mesh::auth::reason_of(&e).as_deref(), Some("REVOCATION_UNAVAILABLE"));
    // Reads go on, and the job submitted before still finishes (progress fan-out is gone,
    // PostgreSQL is the source of truth).
    let mut done = None;
    for _ in 0..100 {
        let j =
            jobs.get_job(GetJobRequest { job_id: job.id.clone() }).await.unwrap().into_inner().job.unwrap();
        if j.status == sakuga_proto::v1::JobStatus::Succeeded as i32 {
            done = Some(j);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(done.is_some(), "the job finished without Redis");
    // The watcher falls back to the database and still ends with the terminal event.
    let mut last = None;
    while let Some(ev) = tokio::time::timeout(Duration::from_secs(30), watch.next()).await.unwrap() {
        last = ev.unwrap().event.unwrap().kind;
    }
    let Some(sakuga_proto::v1::job_event::Kind::StatusChange(end)) = last else {
        panic!("ended without a status change")
    };
    assert_eq!(end.status, sakuga_proto::v1::JobStatus::Succeeded as i32);
    assert_eq!(jobs.list_jobs(ListJobsRequest::default()).await.unwrap().into_inner().jobs.len(), 1);
    mesh.stop().await;
}

#[tokio::test]
async fn login_attempts_are_limited_per_username_and_address() {
    let mesh = Mesh::with_config(|_, auth, _| {
        auth.rate_limits.login = sakuga_mesh::ratelimit::Limit { per_minute: 1, burst: 3 };
    })
    .await;
    let mut anon = AuthServiceClient::new(mesh.channel(&mesh.auth.addr_string()));
    let mut codes = Vec::new();
    for _ in 0..5 {
        let e = anon
            .login(LoginRequest { username: "ghost".into(), password: "not-the-password".into() }) // secret-scan: allow (test fixture)
            .await
            .unwrap_err();
        codes.push(e.code());
    }
    assert_eq!(&codes[..3], &[Code::Unauthenticated; 3]);
    assert_eq!(&codes[3..], &[Code::ResourceExhausted; 2], "{codes:?}");
    // Another username from the same address has its own budget.
    let e = anon
        .login(LoginRequest { username: "someone".into(), password: "not-the-password".into() }) // secret-scan: allow (test fixture)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    mesh.stop().await;
}

/// Runs a redis-cli style command on the private Redis.
async fn private_redis(port: u16, args: &[&str]) {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query_async::<()>(&mut conn).await.unwrap();
}

#[tokio::test]
async fn disabling_a_user_fails_and_changes_nothing_when_the_denylist_cannot_be_written() {
    let redis = PrivateRedis::start();
    let port = redis.port;
    let mesh = Mesh::with_config(|env, auth, _| {
        auth.redis.port = port;
        auth.redis.vault_path = env.redis_secret.replace("/redis", "/redis-private");
    })
    .await;
    let bob = mesh.person("bob").await;
    // Redis answers (rate limits go on) but refuses every write outside the limiter's keys,
    // as it does when it is out of memory or read-only.
    let prefix = mesh.env.redis_prefix.clone();
    private_redis(port, &["ACL", "SETUSER", "default", "resetkeys", "%R~*", &format!("~{prefix}rl:*")]).await;
    let mut admin = mesh.auth_client(&mesh.admin_token);
    let disable = sakuga_proto::v1::SetUserDisabledRequest { user_id: bob.id.clone(), disabled: true };
    let e = admin.set_user_disabled(disable.clone()).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    let db = mesh.env.db().await.unwrap();
    let id = uuid::Uuid::parse_str(&bob.id).unwrap();
    let disabled: bool =
        db.query_one("SELECT disabled FROM users WHERE id = $1", &[&id]).await.unwrap().get(0);
    assert!(!disabled, "the change was rolled back");
    let revoked: i64 = db
        .query_one(
            "SELECT count(*) FROM refresh_tokens WHERE user_id = $1 AND revoked_at IS NOT NULL",
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(revoked, 0, "no refresh token was revoked");
    let whoami = sakuga_proto::v1::WhoAmIRequest {};
    mesh.auth_client(&bob.token).who_am_i(whoami).await.unwrap();

    // Writable again: the same call succeeds and bob's token is void.
    private_redis(port, &["ACL", "SETUSER", "default", "allkeys"]).await;
    admin.set_user_disabled(disable).await.unwrap();
    let e = mesh.auth_client(&bob.token).who_am_i(whoami).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    drop(redis);
    mesh.stop().await;
}

#[tokio::test]
async fn a_restarted_redis_whose_users_come_back_late_is_used_again() {
    // The shape of a Redis restarted without its ACL: the connection is dropped, the
    // reconnection is refused (the user does not exist yet), then the user is back.
    let redis_server = PrivateRedis::start();
    let port = redis_server.port;
    let password = "late-user-password"; // secret-scan: allow (test fixture)
    private_redis(port, &["ACL", "SETUSER", "late", "on", &format!(">{password}"), "~*", "+@all"]).await;
    let cfg = sakuga_mesh::config::RedisConfig { port, ..sakuga_mesh::config::RedisConfig::default() };
    let creds = sakuga_mesh::vault::Credentials {
        username: Some("late".to_owned()),
        password: Some(secrecy::SecretString::from(password.to_owned())),
    };
    let redis = sakuga_mesh::redis::Redis::connect(&cfg, &creds).await.unwrap();
    redis.ping().await.unwrap();
    private_redis(port, &["ACL", "DELUSER", "late"]).await;
    // Deleting a user closes its connections: the manager reconnects and is refused.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while redis.ping().await.is_ok() {
        assert!(tokio::time::Instant::now() < deadline, "the connection outlived its user");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The user stays away until Redis has refused the reconnection itself, and longer than
    // the manager's own retries last: the refusal is what the connection now holds.
    let mut refused = 0;
    while refused < 10 {
        assert!(tokio::time::Instant::now() < deadline, "the login was never refused");
        match redis.ping().await {
            Err(e) if e.to_string().contains("uthentication") => refused += 1,
            Err(_) => {}
            Ok(()) => panic!("a deleted user's login was accepted"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    private_redis(port, &["ACL", "SETUSER", "late", "on", &format!(">{password}"), "~*", "+@all"]).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while let Err(e) = redis.ping().await {
        assert!(tokio::time::Instant::now() < deadline, "still refused after the user came back: {e}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
