//! Start-up: secrets from Vault or a clear refusal; migrations applied once.

use sakuga_mesh::{MeshError, service::Service as _};

#[tokio::test]
async fn a_service_without_vault_gives_up_with_one_message_naming_vault() {
    let env = sakuga_testkit::TestEnv::new().await.unwrap();
    let unused = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let auth = sakuga_testkit::Spawned::unused();
    let mut cfg = sakuga_testkit::scheduler_config(&env, &auth);
    cfg.vault.addr = format!("http://{unused}");
    cfg.vault.connect_attempts = 3;
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
    cfg.vault.token_file = Some(bad);
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
