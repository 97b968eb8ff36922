//! mTLS on every port: plaintext and certificates from another CA are refused, the mesh
//! operator certificate is accepted; certificates rotate without a restart.

use std::time::Duration;

use sakuga_mesh::tls::MeshTls;
use tonic::transport::Endpoint;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::common::Mesh;

async fn health(channel: tonic::transport::Channel) -> Result<i32, tonic::Status> {
    let mut client = HealthClient::new(channel);
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        client.check(HealthCheckRequest { service: String::new() }),
    )
    .await
    .map_err(|_| tonic::Status::deadline_exceeded("timeout"))??;
    Ok(r.into_inner().status)
}

async fn serving(channel: tonic::transport::Channel) -> bool {
    for _ in 0..100 {
        if health(channel.clone()).await.is_ok_and(|s| s == ServingStatus::Serving as i32) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test]
async fn every_port_refuses_plaintext_and_foreign_certificates() {
    let mesh = Mesh::start().await;
    let foreign = sakuga_testkit::foreign_identity("operator").unwrap();
    for (name, addr) in [
        ("auth", mesh.auth.addr_string()),
        ("scheduler", mesh.scheduler.addr_string()),
        ("organizer", mesh.organizer.addr_string()),
        ("generator", mesh.generator.as_ref().unwrap().addr_string()),
    ] {
        assert!(serving(mesh.channel(&addr)).await, "{name} serves the operator");
        let plain = Endpoint::from_shared(format!("http://{addr}")).unwrap().connect_lazy();
        assert!(health(plain).await.is_err(), "{name} refuses plaintext");
        assert!(health(foreign.channel(&addr).unwrap()).await.is_err(), "{name} refuses a foreign CA");
    }
    mesh.stop().await;
}

#[tokio::test]
async fn a_rotated_certificate_is_used_by_new_connections() {
    use rustls_pki_types::ServerName;
    let env = sakuga_testkit::TestEnv::new().await.unwrap();
    let vault = sakuga_mesh::vault::Vault::connect(&env.vault_config()).await.unwrap();
    let server = std::sync::Arc::new(MeshTls::issue(&vault, "scheduler", &env.tls_config()).await.unwrap());
    let client = env.identity("operator").await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = server.acceptor();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(tcp).await {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    drop(tls);
                }
            });
        }
    });
    let leaf_seen = || async {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let connector = tokio_rustls::TlsConnector::from(client.client_config());
        let tls = connector.connect(ServerName::try_from("127.0.0.1").unwrap(), tcp).await.unwrap();
        tls.get_ref().1.peer_certificates().unwrap()[0].clone()
    };
    let before = leaf_seen().await;
    assert_eq!(before, server.current_leaf());
    let renewed =
        vault.issue_certificate("scheduler", &["localhost".into()], &["127.0.0.1".into()]).await.unwrap();
    server.rotate(&renewed).unwrap();
    let after = leaf_seen().await;
    assert_ne!(before, after, "new handshakes see the new certificate");
    assert_eq!(after, server.current_leaf());
    env.cleanup().await;
}

/// The leaf certificate a fresh handshake with `addr` presents.
async fn leaf_of(client: &MeshTls, addr: std::net::SocketAddr) -> Vec<u8> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(client.client_config());
    let server_name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = connector.connect(server_name, tcp).await.unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

#[tokio::test]
async fn a_service_with_a_thirty_second_certificate_keeps_serving_two_minutes_later() {
    use tokio_stream::StreamExt as _;
    let env = sakuga_testkit::TestEnv::new().await.unwrap();
    let mut cfg = sakuga_testkit::auth_config(&env);
    cfg.server.vault.cert_ttl = Duration::from_secs(30);
    let auth = sakuga_testkit::spawn_auth(cfg).await.unwrap();
    let operator = env.identity("operator").await.unwrap();
    let first = leaf_of(&operator, auth.addr).await;
    // One connection and one stream opened now must survive every renewal.
    let channel = operator.channel(&auth.addr_string()).unwrap();
    assert!(serving(channel.clone()).await);
    let mut watch = HealthClient::new(channel.clone())
        .watch(HealthCheckRequest { service: String::new() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(watch.next().await.unwrap().unwrap().status, ServingStatus::Serving as i32);
    let start = std::time::Instant::now();
    let mut leaves = vec![first.clone()];
    while start.elapsed() < Duration::from_mins(2) {
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(
            health(channel.clone()).await.unwrap(),
            ServingStatus::Serving as i32,
            "the open connection still answers"
        );
        let leaf = leaf_of(&operator, auth.addr).await;
        if leaves.last() != Some(&leaf) {
            leaves.push(leaf);
        }
    }
    // Nothing arrived on the stream and it did not end: it is still open.
    assert!(
        tokio::time::timeout(Duration::from_millis(200), watch.next()).await.is_err(),
        "the Watch stream is intact"
    );
    assert!(
        leaves.len() >= 4,
        "renewed about every 20 s: {} distinct certificates in two minutes",
        leaves.len()
    );
    assert_ne!(leaf_of(&operator, auth.addr).await, first, "new handshakes present a newer certificate");
    auth.stop().await.unwrap();
    env.cleanup().await;
}
