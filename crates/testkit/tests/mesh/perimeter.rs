//! The security perimeter against the prototype's audit findings: no RPC without valid
//! credentials, ownership everywhere, rate limits, refresh-token rotation, API keys,
//! disabled users, admin-only RPCs, audit rows — and no path, SQL or secret in any answer.

use std::str::FromStr as _;

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use sakuga_mesh::auth::{AUDIENCE, Access, Claims, ISSUER, RULES, Role};
use sakuga_proto::v1::{
    CancelJobRequest, CreateApiKeyRequest, CreateUserRequest, GetFileRequest, GetJobRequest,
    ListAuditEventsRequest, ListFilesRequest, ListJobsRequest, ListUsersRequest, LoginRequest, LogoutRequest,
    ReadFileRequest, RefreshRequest, RetryJobRequest, RevokeApiKeyRequest, SetUserDisabledRequest,
    WatchJobRequest, auth_service_client::AuthServiceClient,
};
use tokio_stream::StreamExt as _;
use tonic::{Code, Status, transport::Channel};

use crate::common::{INJECTIONS, Mesh, image_request};

/// Calls `path` with an empty message: the guard answers before any handler decodes it.
async fn raw_call(channel: Channel, path: &str, bearer: Option<&str>) -> Status {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let mut req = tonic::Request::new(());
    if let Some(b) = bearer {
        req.metadata_mut().insert("authorization", format!("Bearer {b}").parse().unwrap());
    }
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    match grpc.unary(req, http::uri::PathAndQuery::from_str(path).unwrap(), codec).await {
        Ok(_) => Status::ok("call went through"),
        Err(s) => s,
    }
}

fn token(key_pem: &str, kid: &str, claims: &Claims) -> String {
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_ed_pem(key_pem.as_bytes()).unwrap()).unwrap()
}

fn claims(sub: &str, aud: &str, exp_in: i64) -> Claims {
    let now = chrono::Utc::now().timestamp();
    Claims {
        iss: ISSUER.to_owned(),
        aud: aud.to_owned(),
        sub: sub.to_owned(),
        role: Role::Admin,
        iat: now - 10,
        exp: now + exp_in,
        jti: uuid::Uuid::new_v4().to_string(),
    }
}

fn b64(v: &serde_json::Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

/// Messages must never carry what only the server should know.
fn assert_clean(what: &str, message: &str, secrets: &[&str]) {
    for needle in ["SELECT ", "INSERT ", "UPDATE ", "/root", "/tmp/", ".dev/", "/home/", "storage_key"] {
        assert!(!message.contains(needle), "{what}: message leaks {needle:?}: {message}");
    }
    for secret in secrets {
        assert!(!message.contains(secret), "{what}: message leaks a secret: {message}");
    }
}

#[tokio::test]
async fn every_protected_rpc_refuses_missing_expired_forged_and_revoked_credentials() {
    let mesh = Mesh::start().await;
    let alice = mesh.person("alice").await;
    // Revoked: a real token, logged out.
    let mut auth = mesh.auth_client(&alice.token);
    auth.logout(LogoutRequest::default()).await.unwrap();
    let active = mesh.env.signing_key_pem("k2").await.unwrap();
    let other_key = sakuga_testkit::signing_keys(&["k2"], "k2").unwrap().remove("k2").unwrap();
    let none_header = serde_json::json!({"alg": "none", "typ": "JWT", "kid": "k2"});
    let none_claims = serde_json::to_value(claims(&alice.id, AUDIENCE, 600)).unwrap();
    let bad: Vec<(&str, Option<String>)> = vec![
        ("no token", None),
        ("expired", Some(token(&active, "k2", &claims(&alice.id, AUDIENCE, -3600)))),
        ("signed by another key", Some(token(&other_key, "k2", &claims(&alice.id, AUDIENCE, 600)))),
        ("alg none", Some(format!("{}.{}.", b64(&none_header), b64(&none_claims)))),
        ("another audience", Some(token(&active, "k2", &claims(&alice.id, "someone-else", 600)))),
        ("revoked", Some(alice.token.clone())),
        ("garbage", Some("not-a-token".to_owned())),
        ("unknown API key", Some("sk_00000000_nothing-like-this-exists".to_owned())),
    ];
    // A well-formed token for the active key does get through (so the refusals are about
    // the credential, not the plumbing).
    let good = token(&active, "k2", &claims(&alice.id, AUDIENCE, 600));
    let secrets = [mesh.env.admin_password.as_str(), good.as_str(), active.as_str()];
    let mut checked = 0;
    for (path, rule) in RULES {
        let addr = match path.split('/').nth(1).unwrap_or("") {
            "sakuga.v1.AuthService" => mesh.auth.addr_string(),
            "sakuga.v1.FileService" => mesh.organizer.addr_string(),
            "sakuga.v1.JobService"
            | "sakuga.v1.ProjectService"
            | "sakuga.v1.WebhookService"
            | "sakuga.v1.WorkerService" => mesh.scheduler.addr_string(),
            _ => continue, // health and reflection: open to every mesh certificate
        };
        match rule.access {
            Access::Public => continue,
            Access::Services(_) => {
                // Service-only RPCs refuse the operator certificate (a person's, naming no
                // service), token or not.
                for bearer in [None, Some(good.as_str())] {
                    let s = raw_call(mesh.channel(&addr), path, bearer).await;
                    let refused = [Code::PermissionDenied, Code::Unauthenticated];
                    assert!(refused.contains(&s.code()), "{path} with {bearer:?}: {s:?}");
                }
            }
            Access::Authenticated | Access::User | Access::Admin => {
                for (what, bearer) in &bad {
                    let s = raw_call(mesh.channel(&addr), path, bearer.as_deref()).await;
                    assert_eq!(s.code(), Code::Unauthenticated, "{path} with {what}: {s:?}");
                    assert_clean(path, s.message(), &secrets);
                }
                // A fresh one each time: the Logout call revokes the token it carries.
                let fresh = token(&active, "k2", &claims(&alice.id, AUDIENCE, 600));
                let s = raw_call(mesh.channel(&addr), path, Some(&fresh)).await;
                assert_ne!(s.code(), Code::Unauthenticated, "{path} with a valid token: {s:?}");
                assert_clean(path, s.message(), &secrets);
            }
        }
        checked += 1;
    }
    assert!(checked >= 30, "checked {checked} RPCs");
    mesh.stop().await;
}

#[tokio::test]
async fn submits_at_once_each_leave_their_own_audit_row_before_they_answer() {
    // The rows of calls that finish together share a statement; each call still answers
    // only once its own row is committed.
    let mesh = Mesh::start().await;
    let alice = mesh.person("alice").await;
    let calls = (0..40).map(|i| {
        let mut jobs = mesh.jobs(&alice.token);
        async move { jobs.submit_job(image_request(&format!("audited {i}"), 1)).await.unwrap().into_inner() }
    });
    let submitted = futures_util::future::join_all(calls).await;
    let targets: Vec<String> =
        submitted.iter().map(|r| format!("job:{}", r.job.as_ref().unwrap().id)).collect();
    let rows = mesh
        .env
        .db()
        .await
        .unwrap()
        .query(
            "SELECT target, actor, result, request_id FROM audit_events \
             WHERE action = 'JobService.SubmitJob' AND target = ANY($1)",
            &[&targets],
        )
        .await
        .unwrap();
    let mut seen: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    seen.sort();
    let mut want = targets.clone();
    want.sort();
    assert_eq!(seen, want, "one row per submit, each naming its job");
    for r in &rows {
        assert_eq!(r.get::<_, String>(1), alice.id);
        assert_eq!(r.get::<_, String>(2), "OK");
    }
    let requests: std::collections::HashSet<String> = rows.iter().map(|r| r.get(3)).collect();
    assert_eq!(requests.len(), 40, "each row carries its own request id");
    mesh.stop().await;
}

#[tokio::test]
async fn a_token_accepted_before_is_refused_once_it_expires_or_is_revoked() {
    // Each service remembers a token whose signature checked out; what it remembers must
    // not outlive the token's expiry nor outvote its revocation.
    let mesh = Mesh::start().await;
    let alice = mesh.person("alice").await;
    let active = mesh.env.signing_key_pem("k2").await.unwrap();
    let list = |bearer: String| {
        let mut jobs = mesh.jobs(&bearer);
        async move { jobs.list_jobs(ListJobsRequest::default()).await.map(|_| ()) }
    };
    let short = token(&active, "k2", &claims(&alice.id, AUDIENCE, 1));
    for _ in 0..3 {
        list(short.clone()).await.unwrap();
    }
    let lasting = alice.token.clone();
    list(lasting.clone()).await.unwrap();
    list(lasting.clone()).await.unwrap();
    mesh.auth_client(&lasting).logout(LogoutRequest::default()).await.unwrap();
    let e = list(lasting).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "revoked after two accepted calls: {e:?}");
    // One second of validity and five of leeway for clock skew, then refused.
    tokio::time::sleep(std::time::Duration::from_secs(8)).await;
    let e = list(short).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "expired after three accepted calls: {e:?}");
    assert!(e.message().contains("expired"), "{}", e.message());
    mesh.stop().await;
}

#[tokio::test]
async fn users_see_only_their_own_jobs_and_files_and_admins_see_all() {
    let mesh = Mesh::start().await;
    let alice = mesh.person("alice").await;
    let bob = mesh.person("bob").await;
    let mut jobs_a = mesh.jobs(&alice.token);
    let job =
        jobs_a.submit_job(image_request("alice's private shot", 2)).await.unwrap().into_inner().job.unwrap();
    let mut watch = jobs_a.watch_job(WatchJobRequest { job_id: job.id.clone() }).await.unwrap().into_inner();
    while watch.next().await.is_some() {}
    let done =
        jobs_a.get_job(GetJobRequest { job_id: job.id.clone() }).await.unwrap().into_inner().job.unwrap();
    let file_id = done.file_ids[0].clone();

    let mut jobs_b = mesh.jobs(&bob.token);
    let not_found = |r: Result<tonic::Response<_>, Status>| match r {
        Err(s) => assert_eq!(s.code(), Code::NotFound, "{s:?}"),
        Ok(_) => panic!("bob reached alice's object"),
    };
    not_found(
        jobs_b.get_job(GetJobRequest { job_id: job.id.clone() }).await.map(|_| ()).map(tonic::Response::new),
    );
    not_found(
        jobs_b
            .watch_job(WatchJobRequest { job_id: job.id.clone() })
            .await
            .map(|_| ())
            .map(tonic::Response::new),
    );
    not_found(
        jobs_b
            .cancel_job(CancelJobRequest { job_id: job.id.clone() })
            .await
            .map(|_| ())
            .map(tonic::Response::new),
    );
    not_found(
        jobs_b
            .retry_job(RetryJobRequest { job_id: job.id.clone() })
            .await
            .map(|_| ())
            .map(tonic::Response::new),
    );
    assert!(jobs_b.list_jobs(ListJobsRequest::default()).await.unwrap().into_inner().jobs.is_empty());
    let mut files_b = mesh.files(&bob.token);
    not_found(
        files_b
            .get_file(GetFileRequest { file_id: file_id.clone() })
            .await
            .map(|_| ())
            .map(tonic::Response::new),
    );
    not_found(
        files_b
            .read_file(ReadFileRequest { file_id: file_id.clone(), offset: 0, length: 0 })
            .await
            .map(|_| ())
            .map(tonic::Response::new),
    );
    not_found(
        files_b
            .get_thumbnail(sakuga_proto::v1::GetThumbnailRequest { file_id: file_id.clone() })
            .await
            .map(|_| ())
            .map(tonic::Response::new),
    );
    not_found(
        files_b
            .get_download_url(sakuga_proto::v1::GetDownloadUrlRequest { file_id: file_id.clone(), ttl: None })
            .await
            .map(|_| ())
            .map(tonic::Response::new),
    );
    not_found(
        files_b
            .delete_file(sakuga_proto::v1::DeleteFileRequest { file_id: file_id.clone() })
            .await
            .map(|_| ())
            .map(tonic::Response::new),
    );
    assert!(files_b.list_files(ListFilesRequest::default()).await.unwrap().into_inner().files.is_empty());

    // Alice and the admin see it.
    assert_eq!(jobs_a.list_jobs(ListJobsRequest::default()).await.unwrap().into_inner().jobs.len(), 1);
    let mut jobs_admin = mesh.jobs(&mesh.admin_token);
    assert_eq!(
        jobs_admin
            .get_job(GetJobRequest { job_id: job.id })
            .await
            .unwrap()
            .into_inner()
            .job
            .unwrap()
            .owner_id,
        alice.id
    );
    let mut files_admin = mesh.files(&mesh.admin_token);
    assert_eq!(
        files_admin.get_file(GetFileRequest { file_id }).await.unwrap().into_inner().file.unwrap().owner_id,
        alice.id
    );
    mesh.stop().await;
}

#[tokio::test]
async fn a_burst_of_fifty_submits_gets_only_the_configured_burst_through() {
    let mut mesh = Mesh::with_scheduler_config(|c| {
        c.rate_limits.submit = sakuga_mesh::ratelimit::Limit { per_minute: 10, burst: 5 };
    })
    .await;
    mesh.attach_generator().await;
    let alice = mesh.person("alice").await;
    let calls = (0..50).map(|i| {
        let mut jobs = mesh.jobs(&alice.token);
        async move { jobs.submit_job(image_request(&format!("shot {i}"), 1)).await }
    });
    let results = futures_util::future::join_all(calls).await;
    let accepted = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(accepted, 5, "only the burst is accepted");
    for r in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(r.code(), Code::ResourceExhausted, "{r:?}");
        let retry: u64 = r.metadata().get("retry-after").unwrap().to_str().unwrap().parse().unwrap();
        assert!(retry >= 1, "retry-after in seconds: {retry}");
    }
    let rows: i64 =
        mesh.env.db().await.unwrap().query_one("SELECT count(*) FROM jobs", &[]).await.unwrap().get(0);
    assert_eq!(rows, 5);
    mesh.stop().await;
}

#[tokio::test]
async fn the_active_job_cap_refuses_the_next_submit_until_one_finishes() {
    let mesh = Mesh::with_scheduler_config(|c| c.max_active_jobs_per_user = 3).await;
    let alice = mesh.person("alice").await;
    let mut jobs = mesh.jobs(&alice.token);
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            jobs.submit_job(image_request(&format!("queued {i}"), 1))
                .await
                .unwrap()
                .into_inner()
                .job
                .unwrap()
                .id,
        );
    }
    let refused = jobs.submit_job(image_request("one too many", 1)).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("the limit is 3"), "{}", refused.message());
    jobs.cancel_job(CancelJobRequest { job_id: ids[0].clone() }).await.unwrap();
    jobs.submit_job(image_request("room again", 1)).await.unwrap();
    let rows: i64 =
        mesh.env.db().await.unwrap().query_one("SELECT count(*) FROM jobs", &[]).await.unwrap().get(0);
    assert_eq!(rows, 4, "the refused submit wrote nothing");
    mesh.stop().await;
}

#[tokio::test]
async fn a_submit_is_audited_once_whether_it_queues_repeats_or_is_refused() {
    // A submit that answers with a job commits its audit row with the job; a refused one
    // is audited by the guard. Either way, one row per call.
    let mesh = Mesh::with_scheduler_config(|c| c.max_active_jobs_per_user = 1).await;
    let alice = mesh.person("alice").await;
    let mut jobs = mesh.jobs(&alice.token);
    let mut keyed = image_request("keyed", 1);
    keyed.idempotency_key = "shot-1".to_owned();
    let first = jobs.submit_job(keyed.clone()).await.unwrap().into_inner();
    let again = jobs.submit_job(keyed).await.unwrap().into_inner();
    assert!(again.deduplicated);
    let refused = jobs.submit_job(image_request("one too many", 1)).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    let rows = mesh
        .env
        .db()
        .await
        .unwrap()
        .query(
            "SELECT actor, target, result FROM audit_events WHERE action = 'JobService.SubmitJob' ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    let rows: Vec<(String, String, String)> = rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
    let job = format!("job:{}", first.job.unwrap().id);
    let ok = "OK".to_owned();
    assert_eq!(
        rows,
        [
            (alice.id.clone(), job.clone(), ok.clone()),
            (alice.id.clone(), job, ok),
            (alice.id.clone(), String::new(), "RESOURCE_EXHAUSTED".to_owned()),
        ],
        "the first submit and its repeat name the job; the refusal is audited by the guard"
    );
    // now() is the transaction's start: the same instant only within one transaction.
    let together: bool = mesh
        .env
        .db()
        .await
        .unwrap()
        .query_one(
            "SELECT a.time = j.created_at FROM audit_events a JOIN jobs j ON a.target = 'job:' || j.id \
             WHERE a.action = 'JobService.SubmitJob' ORDER BY a.id LIMIT 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(together, "the audit row was committed in the job's transaction");
    mesh.stop().await;
}

#[tokio::test]
async fn refresh_tokens_rotate_and_a_reused_one_revokes_its_family() {
    let mesh = Mesh::without_generator().await;
    let _alice = mesh.person("alice").await;
    let mut auth = AuthServiceClient::new(mesh.channel(&mesh.auth.addr_string()));
    let login = auth
        .login(LoginRequest { username: "alice".into(), password: "alice-correct-horse-battery".into() }) // secret-scan: allow (test fixture)
        .await
        .unwrap()
        .into_inner()
        .tokens
        .unwrap();
    let first = login.refresh_token.clone();
    let second = auth
        .refresh(RefreshRequest { refresh_token: first.clone() })
        .await
        .unwrap()
        .into_inner()
        .tokens
        .unwrap();
    assert_ne!(second.refresh_token, first, "rotated");
    assert!(!second.access_token.is_empty());
    // The first token again: reuse. The family, including the newest token, is revoked.
    let reuse = auth.refresh(RefreshRequest { refresh_token: first }).await.unwrap_err();
    assert_eq!(reuse.code(), Code::Unauthenticated);
    assert!(reuse.message().contains("already used"), "{}", reuse.message());
    let after = auth.refresh(RefreshRequest { refresh_token: second.refresh_token }).await.unwrap_err();
    assert_eq!(after.code(), Code::Unauthenticated, "the whole family is revoked");
    // Wrong passwords and unknown users get the same answer.
    for (u, p) in [("alice", "wrong-password-123"), ("nobody-here", "whatever-password")] {
        let e = auth.login(LoginRequest { username: u.into(), password: p.into() }).await.unwrap_err();
        assert_eq!((e.code(), e.message()), (Code::Unauthenticated, "wrong username or password"));
    }
    let audit = mesh
        .auth_client(&mesh.admin_token)
        .list_audit_events(ListAuditEventsRequest { page_size: 100, ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .events;
    let actions: Vec<&str> = audit.iter().map(|e| e.action.as_str()).collect();
    for expected in [
        "auth.login.ok",
        "auth.refresh",
        "auth.refresh.reuse_detected",
        "auth.login.failed",
        "AuthService.CreateUser",
    ] {
        assert!(actions.contains(&expected), "audit has {expected}: {actions:?}");
    }
    mesh.stop().await;
}

#[tokio::test]
async fn api_keys_authenticate_until_revoked_and_disabled_users_are_locked_out() {
    let mesh = Mesh::without_generator().await;
    let alice = mesh.person("alice").await;
    let mut auth = mesh.auth_client(&alice.token);
    let created = auth
        .create_api_key(CreateApiKeyRequest { name: "render farm".into(), expire_time: None })
        .await
        .unwrap()
        .into_inner();
    let key = created.key.unwrap();
    assert!(created.secret.starts_with(&key.prefix), "the secret starts with its listed prefix");
    let stored: i64 = mesh
        .env
        .db()
        .await
        .unwrap()
        .query_one(
            "SELECT count(*) FROM api_keys WHERE key_hash = $1",
            &[&sakuga_mesh::auth::secret_hash(&created.secret)],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, 1, "stored hashed");
    let mut jobs = mesh.jobs(&created.secret);
    let job = jobs.submit_job(image_request("by API key", 1)).await.unwrap().into_inner().job.unwrap();
    assert_eq!(job.owner_id, alice.id);
    auth.revoke_api_key(RevokeApiKeyRequest { key_id: key.id }).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(2_500)).await; // lookup cache
    let e = jobs.list_jobs(ListJobsRequest::default()).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);

    // Users may not use admin RPCs; admins disable users, whose tokens stop working.
    let bob = mesh.person("bob").await;
    let mut bob_auth = mesh.auth_client(&bob.token);
    let e = bob_auth.list_users(ListUsersRequest::default()).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let e = bob_auth
        .create_user(CreateUserRequest {
            username: "mallory".into(),
            password: "mallory-password-1".into(), // secret-scan: allow (test fixture)
            role: 2,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    mesh.auth_client(&mesh.admin_token)
        .set_user_disabled(SetUserDisabledRequest { user_id: bob.id, disabled: true })
        .await
        .unwrap();
    let e = mesh.jobs(&bob.token).list_jobs(ListJobsRequest::default()).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "a disabled user's token is void");
    let denied: i64 = mesh
        .env
        .db()
        .await
        .unwrap()
        .query_one("SELECT count(*) FROM audit_events WHERE action = 'auth.permission_denied'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(denied, 2, "both refused admin calls are audited");
    mesh.stop().await;
}

#[tokio::test]
async fn sql_payloads_as_usernames_and_api_keys_change_nothing() {
    let mesh = Mesh::without_generator().await;
    let db = mesh.env.db().await.unwrap();
    let users_before: i64 = db.query_one("SELECT count(*) FROM users", &[]).await.unwrap().get(0);
    let mut anon = AuthServiceClient::new(mesh.channel(&mesh.auth.addr_string()));
    let mut admin = mesh.auth_client(&mesh.admin_token);
    for payload in INJECTIONS {
        let e = anon
            .login(LoginRequest { username: payload.into(), password: payload.into() })
            .await
            .unwrap_err();
        assert!(matches!(e.code(), Code::Unauthenticated | Code::InvalidArgument), "{e:?}");
        let e = admin
            .create_user(CreateUserRequest {
                username: payload.into(),
                password: "a-long-enough-password".into(), // secret-scan: allow (test fixture)
                role: 1,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().starts_with("username:"), "{}", e.message());
        let key = format!("sk_{payload}");
        let s = raw_call(
            mesh.channel(&mesh.scheduler.addr_string()),
            "/sakuga.v1.JobService/ListJobs",
            Some(&key),
        )
        .await;
        assert_eq!(s.code(), Code::Unauthenticated);
    }
    let users_after: i64 = db.query_one("SELECT count(*) FROM users", &[]).await.unwrap().get(0);
    assert_eq!(users_before, users_after);
    let tables: i64 = db
        .query_one("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        tables, 12,
        "jobs, files, users, refresh_tokens, api_keys, audit_events, schema_migrations, projects, characters, \
         queue_heads, webhook_endpoints, webhook_deliveries"
    );
    mesh.stop().await;
}
