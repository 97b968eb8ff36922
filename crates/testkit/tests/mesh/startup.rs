//! Start-up: secrets from Vault or a clear refusal; migrations applied once.

use sakuga_mesh::{MeshError, service::Service as _};

#[tokio::test]
async fn a_service_without_vault_gives_up_with_one_message_naming_vault() {
    let env = sakuga_testkit::TestEnv::new().await.unwrap();
    let unused = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let auth = sakuga_testkit::Spawned::unused();
    let mut cfg = sakuga_testkit::scheduler_config(&env, &auth);
    cfg.server.vault.addr = format!("http://{unused}");
    cfg.server.vault.connect_attempts = 3;
    let err = sakuga_scheduler::Application::build(cfg).await.unwrap_err();
    assert!(matches!(err, MeshError::Vault(_)), "{err:?}");
    let msg = err.to_string();
    assert!(msg.starts_with("vault: vault at http://"), "{msg}");
    assert!(msg.contains(&unused.to_string()) && msg.contains("after 3 attempts"), "{msg}");
    env.cleanup().await;
}

#[tokio::test]
async fn a_wrong_vault_token_is_refused_at_once() {
    let env = sakuga_testkit::TestEnv::new().await.unwrap();
    let auth = sakuga_testkit::Spawned::unused();
    let mut cfg = sakuga_testkit::organizer_config(&env, &auth, env.dir.path().join("files"));
    let bad = env.dir.path().join("bad-token");
    std::fs::write(&bad, "not-a-token").unwrap();
    cfg.server.vault.token_file = Some(bad);
    let err = sakuga_organizer::Application::build(cfg).await.unwrap_err().to_string();
    assert!(err.contains("refused") && err.contains("403"), "{err}");
    assert!(!err.contains("not-a-token"), "the token is not echoed: {err}");
    env.cleanup().await;
}

#[tokio::test]
async fn migrations_are_recorded_and_not_applied_twice() {
    let env = sakuga_testkit::TestEnv::new().await.unwrap();
    let applied =
        sakuga_mesh::db::migrate_with_vault(&env.vault_config(), &env.database_config()).await.unwrap();
    assert!(applied.is_empty(), "the template already carries every migration: {applied:?}");
    let db = env.db().await.unwrap();
    let versions: Vec<i64> = db
        .query("SELECT version FROM schema_migrations ORDER BY version", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let expected: Vec<i64> = sakuga_mesh::db::MIGRATIONS.iter().map(|m| m.version).collect();
    assert_eq!(versions, expected);
    env.cleanup().await;
}

/// A Kubernetes API stand-in that answers TokenReview: `token` belongs to `sakuga/sakuga-scheduler`,
/// anything else is not authenticated.
async fn token_review_server(token: String) -> String {
    use axum::{Json, Router, routing::post};
    let app = Router::new().route(
        "/apis/authentication.k8s.io/v1/tokenreviews",
        post(move |Json(review): Json<serde_json::Value>| {
            let ok = review["spec"]["token"] == token.as_str();
            async move {
                let status = if ok {
                    serde_json::json!({"authenticated": true, "user": {
                        "username": "system:serviceaccount:sakuga:sakuga-scheduler",
                        "uid": "0b3c7d9e-uid",
                        "groups": ["system:serviceaccounts", "system:serviceaccounts:sakuga"]}})
                } else {
                    serde_json::json!({"authenticated": false, "error": "invalid bearer token"})
                };
                Json(serde_json::json!({
                    "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "status": status}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

/// A service account token as a pod sees it (the signature is the Kubernetes API's to
/// check, through TokenReview).
fn service_account_jwt(namespace: &str, account: &str) -> String {
    use base64::Engine as _;
    let b64 = |v: serde_json::Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let claims = serde_json::json!({
        "iss": "kubernetes/serviceaccount",
        "sub": format!("system:serviceaccount:{namespace}:{account}"),
        "kubernetes.io/serviceaccount/namespace": namespace,
        "kubernetes.io/serviceaccount/service-account.name": account,
        "kubernetes.io/serviceaccount/service-account.uid": "0b3c7d9e-uid",
        "kubernetes.io/serviceaccount/secret.name": format!("{account}-token"),
    });
    format!("{}.{}.c2lnbmF0dXJl", b64(serde_json::json!({"alg": "RS256", "typ": "JWT"})), b64(claims))
}

#[tokio::test]
async fn a_pod_logs_in_to_vault_with_its_service_account_token() {
    let env = sakuga_testkit::TestEnv::new().await.unwrap();
    let jwt = service_account_jwt("sakuga", "sakuga-scheduler");
    let host = token_review_server(jwt.clone()).await;
    let mount = env.kubernetes_auth(&host, "sakuga-scheduler", "sakuga", "sakuga-scheduler").await.unwrap();
    let token_file = env.dir.path().join("sa-token");
    std::fs::write(&token_file, &jwt).unwrap();
    let mut cfg = env.vault_config();
    cfg.auth = sakuga_mesh::config::VaultAuth::Kubernetes;
    cfg.kubernetes_role = "sakuga-scheduler".into();
    cfg.kubernetes_mount = mount;
    cfg.kubernetes_token_file = token_file.clone();
    cfg.connect_attempts = 1;
    cfg.validate().unwrap();
    sakuga_mesh::vault::Vault::connect(&cfg).await.unwrap();

    // Another service account's token is refused, clearly.
    std::fs::write(&token_file, service_account_jwt("sakuga", "intruder")).unwrap();
    let err = sakuga_mesh::vault::Vault::connect(&cfg).await.unwrap_err().to_string();
    assert!(err.starts_with("vault:"), "{err}");
    assert!(
        err.contains("refused") || err.contains("denied") || err.contains("403") || err.contains("not"),
        "{err}"
    );
    let mut missing = cfg.clone();
    missing.kubernetes_role = String::new();
    assert!(missing.validate().unwrap_err().to_string().contains("vault.kubernetes_role"));
    env.cleanup().await;
}

#[tokio::test]
async fn the_probe_port_answers_health_in_plaintext_and_nothing_else() {
    let env = sakuga_testkit::TestEnv::new().await.unwrap();
    let auth = sakuga_testkit::spawn_auth(sakuga_testkit::auth_config(&env)).await.unwrap();
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let mut cfg = sakuga_testkit::scheduler_config(&env, &auth);
    cfg.server.probe_listen = Some(probe);
    let scheduler = sakuga_testkit::spawn_scheduler(cfg).await.unwrap();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{probe}")).unwrap().connect_lazy();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let status = health
            .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
            .await
            .map(|r| r.into_inner().status);
        if status
            .as_ref()
            .is_ok_and(|s| *s == tonic_health::pb::health_check_response::ServingStatus::Serving as i32)
        {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "probe port never SERVING: {status:?}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // Liveness: SERVING while the process serves gRPC, whatever its dependencies do.
    let live = health
        .check(tonic_health::pb::HealthCheckRequest { service: sakuga_mesh::health::LIVENESS.to_owned() })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(live, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
    // Only health: the API is not reachable here.
    let mut jobs = sakuga_proto::v1::job_service_client::JobServiceClient::new(channel);
    let err = jobs.list_jobs(sakuga_proto::v1::ListJobsRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unimplemented, "{err:?}");
    scheduler.stop().await.unwrap();
    auth.stop().await.unwrap();
    env.cleanup().await;
}
