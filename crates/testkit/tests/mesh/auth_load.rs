//! The auth service under hostile load and its review items: Argon2 behind a semaphore
//! (the auth process as a child, its resident size read from /proc), login limits per
//! address, username and pair, the bootstrap admin created once, the refresh race, family
//! revocation voiding access tokens, printable usernames and audit retention.

use sakuga_proto::v1::{
    LoginRequest, LogoutRequest, RefreshRequest, TokenPair, WhoAmIRequest,
    auth_service_client::AuthServiceClient,
};
use sakuga_testkit::{ServiceProcess, TestEnv};
use tonic::{Code, transport::Channel};

use crate::common::Mesh;

const MIB: u64 = 1024 * 1024;

fn anon(mesh: &Mesh) -> AuthServiceClient<Channel> {
    AuthServiceClient::new(mesh.channel(&mesh.auth.addr_string()))
}

async fn login(mesh: &Mesh, user: &str) -> TokenPair {
    anon(mesh)
        .login(LoginRequest { username: user.into(), password: format!("{user}-correct-horse-battery") })
        .await
        .unwrap()
        .into_inner()
        .tokens
        .unwrap()
}

async fn who_am_i(mesh: &Mesh, token: &str) -> Result<(), tonic::Status> {
    mesh.auth_client(token).who_am_i(WhoAmIRequest {}).await.map(|_| ())
}

#[tokio::test]
async fn sixty_concurrent_logins_with_made_up_names_leave_the_auth_process_under_150_mib() {
    let env = TestEnv::new().await.unwrap();
    // Limits out of the way: the semaphore alone must hold the memory.
    let auth = ServiceProcess::start(sakuga_testkit::auth_config(&env)).await.unwrap();
    let operator = env.identity("operator").await.unwrap();
    let channel = operator.channel(&auth.addr_string()).unwrap();
    let before = auth.rss_bytes().unwrap();
    let calls = (0..60).map(|i| {
        let mut client = AuthServiceClient::new(channel.clone());
        async move {
            client
                .login(LoginRequest {
                    username: format!("made-up-{i}-{}", uuid::Uuid::new_v4().simple()),
                    password: "not-the-password-at-all".into(), // secret-scan: allow (test fixture)
                })
                .await
                .unwrap_err()
        }
    });
    let refusals = futures_util::future::join_all(calls).await;
    let after = auth.rss_bytes().unwrap();
    let wrong = refusals.iter().filter(|s| s.code() == Code::Unauthenticated).count();
    let busy: Vec<_> = refusals.iter().filter(|s| s.code() == Code::ResourceExhausted).collect();
    println!(
        "auth VmRSS before {} KiB, after 60 concurrent logins {} KiB; {wrong} verified and refused, \
         {} refused as argon2_busy",
        before / 1024,
        after / 1024,
        busy.len()
    );
    assert_eq!(wrong + busy.len(), 60, "{refusals:?}");
    assert!(wrong > 0, "some logins were verified");
    for s in &busy {
        assert!(s.message().contains("argon2_busy"), "{s:?}");
        assert!(s.metadata().get("retry-after").is_some(), "{s:?}");
    }
    assert!(after < 150 * MIB, "auth grew to {} MiB", after / MIB);
    drop(auth);
    env.cleanup().await;
}

#[tokio::test]
async fn logins_are_refused_per_pair_and_per_address_naming_the_limit() {
    use sakuga_mesh::ratelimit::Limit;
    let mesh = Mesh::with_config(|_, auth, _| {
        auth.rate_limits.login = Limit { per_minute: 1, burst: 2 };
        auth.rate_limits.login_username = Limit { per_minute: 1, burst: 3 };
        // The admin's own login in Mesh::with_config takes one.
        auth.rate_limits.login_address = Limit { per_minute: 1, burst: 7 };
    })
    .await;
    let mut anon = anon(&mesh);
    let attempt = |user: &str| LoginRequest { username: user.into(), password: "wrong-password-123".into() }; // secret-scan: allow (test fixture)
    for _ in 0..2 {
        assert_eq!(anon.login(attempt("alice")).await.unwrap_err().code(), Code::Unauthenticated);
    }
    let e = anon.login(attempt("alice")).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "the pair's burst is spent: {e:?}");
    assert!(e.message().starts_with("rate limit exceeded for login;"), "{}", e.message());
    assert!(e.metadata().get("retry-after").is_some());
    // Made-up names from the same address: fresh pairs and usernames, but the address is
    // spent after 7 attempts in all (1 admin, 3 alice, 3 here).
    for i in 0..3 {
        let e = anon.login(attempt(&format!("spray-{i}"))).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    }
    let e = anon.login(attempt("spray-3")).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().starts_with("rate limit exceeded for login_address;"), "{}", e.message());
    let metrics = reqwest_metrics(&mesh).await;
    for line in [
        r#"sakuga_limit_refusals_total{ceiling="login_pair"} 1"#,
        r#"sakuga_limit_refusals_total{ceiling="login_address"} 1"#,
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
    mesh.stop().await;
}

/// The auth service's `/metrics` text.
async fn reqwest_metrics(mesh: &Mesh) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let addr = mesh.auth.metrics.unwrap();
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn login_usernames_with_invisible_or_control_characters_are_refused_naming_the_field() {
    let mesh = Mesh::without_generator().await;
    let mut anon = anon(&mesh);
    for bad in ["ad\u{202e}min", "admin\u{200b}", "ad\nmin", "ad min", "\u{feff}", &"a".repeat(65)] {
        let e = anon
            .login(LoginRequest { username: bad.into(), password: "whatever-password".into() }) // secret-scan: allow (test fixture)
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{bad:?}");
        assert!(e.message().starts_with("username: "), "{bad:?}: {}", e.message());
    }
    let db = mesh.env.db().await.unwrap();
    let rows: i64 = db
        .query_one("SELECT count(*) FROM audit_events WHERE action LIKE 'auth.login.%' AND action <> 'auth.login.ok'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 0, "nothing of them reaches the audit log");
    mesh.stop().await;
}

#[tokio::test]
async fn a_restart_keeps_a_disabled_demoted_bootstrap_admin_disabled_and_demoted() {
    let mut mesh = Mesh::without_generator().await;
    let db = mesh.env.db().await.unwrap();
    db.execute(
        "UPDATE users SET disabled = true, role = 'user', password_hash = 'operator-changed' WHERE username = 'admin'",
        &[],
    )
    .await
    .unwrap();
    let new = sakuga_testkit::spawn_auth(sakuga_testkit::auth_config(&mesh.env)).await.unwrap();
    std::mem::replace(&mut mesh.auth, new).stop().await.unwrap();
    let row = db
        .query_one("SELECT disabled, role, password_hash FROM users WHERE username = 'admin'", &[])
        .await
        .unwrap();
    let (disabled, role, hash): (bool, String, String) = (row.get(0), row.get(1), row.get(2));
    assert!(disabled, "still disabled");
    assert_eq!(role, "user", "still demoted");
    // The password follows the secret (the only way to set it), but the account stays shut.
    assert_ne!(hash, "operator-changed", "the password follows the bootstrap secret");
    let e = anon(&mesh)
        .login(LoginRequest { username: "admin".into(), password: mesh.env.admin_password.clone() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "a disabled admin cannot log in: {e:?}");
    mesh.stop().await;
}

#[tokio::test]
async fn concurrent_refreshes_with_one_token_let_at_most_one_through_and_revoke_the_family() {
    let mesh = Mesh::without_generator().await;
    let _alice = mesh.person("alice").await;
    let first = login(&mesh, "alice").await;
    let calls = (0..8).map(|_| {
        let mut client = anon(&mesh);
        let token = first.refresh_token.clone();
        async move { client.refresh(RefreshRequest { refresh_token: token }).await }
    });
    let results = futures_util::future::join_all(calls).await;
    let ok: Vec<TokenPair> =
        results.iter().filter_map(|r| r.as_ref().ok()).map(|r| r.get_ref().tokens.clone().unwrap()).collect();
    assert!(ok.len() <= 1, "{} refreshes succeeded", ok.len());
    for r in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(r.code(), Code::Unauthenticated, "{r:?}");
    }
    // The family is revoked, the winner's new refresh token included (it was inserted in
    // the redeeming transaction, so the losers' revocation saw it).
    let live: i64 = mesh
        .env
        .db()
        .await
        .unwrap()
        .query_one(
            "SELECT count(*) FROM refresh_tokens WHERE revoked_at IS NULL AND family_id = \
             (SELECT family_id FROM refresh_tokens WHERE token_hash = $1)",
            &[&sakuga_mesh::auth::secret_hash(&first.refresh_token)],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(live, 0, "no token of the family is left");
    for pair in &ok {
        let e = anon(&mesh).refresh(RefreshRequest { refresh_token: pair.refresh_token.clone() }).await;
        assert_eq!(e.unwrap_err().code(), Code::Unauthenticated);
        assert_eq!(who_am_i(&mesh, &pair.access_token).await.unwrap_err().code(), Code::Unauthenticated);
    }
    assert_eq!(who_am_i(&mesh, &first.access_token).await.unwrap_err().code(), Code::Unauthenticated);
    mesh.stop().await;
}

#[tokio::test]
async fn revoking_a_family_voids_its_live_access_tokens() {
    let mesh = Mesh::without_generator().await;
    let alice = mesh.person("alice").await;
    // Reuse: the family's access tokens, old and new, stop working at once.
    let first = login(&mesh, "alice").await;
    let second = anon(&mesh)
        .refresh(RefreshRequest { refresh_token: first.refresh_token.clone() })
        .await
        .unwrap()
        .into_inner()
        .tokens
        .unwrap();
    who_am_i(&mesh, &second.access_token).await.unwrap();
    let reuse = anon(&mesh).refresh(RefreshRequest { refresh_token: first.refresh_token.clone() }).await;
    assert_eq!(reuse.unwrap_err().code(), Code::Unauthenticated);
    for token in [&first.access_token, &second.access_token] {
        assert_eq!(who_am_i(&mesh, token).await.unwrap_err().code(), Code::Unauthenticated);
    }
    // Logout with another session's refresh token: that session's access token is void,
    // the person's other sessions are not.
    let laptop = login(&mesh, "alice").await;
    let phone = login(&mesh, "alice").await;
    mesh.auth_client(&phone.access_token)
        .logout(LogoutRequest { refresh_token: laptop.refresh_token.clone() })
        .await
        .unwrap();
    assert_eq!(who_am_i(&mesh, &laptop.access_token).await.unwrap_err().code(), Code::Unauthenticated);
    who_am_i(&mesh, &alice.token).await.unwrap();
    mesh.stop().await;
}

#[tokio::test]
async fn audit_events_past_retention_are_deleted_in_batches_and_recent_ones_kept() {
    let mesh = Mesh::with_config(|_, auth, _| auth.audit_retention_days = 30).await;
    let db = mesh.env.db().await.unwrap();
    db.execute(
        "INSERT INTO audit_events (time, actor, action, result) \
         SELECT now() - interval '31 days' - n * interval '1 minute', 'old', 'test.old', 'OK' \
         FROM generate_series(1, 2500) n",
        &[],
    )
    .await
    .unwrap();
    db.execute(
        "INSERT INTO audit_events (time, actor, action, result) VALUES (now() - interval '29 days', 'recent', 'test.recent', 'OK')",
        &[],
    )
    .await
    .unwrap();
    // The sweep runs at start-up: restart the service to run it now.
    let mut mesh = mesh;
    let mut cfg = sakuga_testkit::auth_config(&mesh.env);
    cfg.audit_retention_days = 30;
    let new = sakuga_testkit::spawn_auth(cfg).await.unwrap();
    std::mem::replace(&mut mesh.auth, new).stop().await.unwrap();
    let count = |action: &'static str| {
        let db = &db;
        async move {
            db.query_one("SELECT count(*) FROM audit_events WHERE action = $1", &[&action])
                .await
                .unwrap()
                .get::<_, i64>(0)
        }
    };
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while count("test.old").await > 0 {
        assert!(tokio::time::Instant::now() < deadline, "old audit rows were not deleted");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(count("test.recent").await, 1, "a 29-day-old row is kept");
    assert!(count("auth.login.ok").await >= 1, "today's rows are kept");
    mesh.stop().await;
}
