//! Identity that cannot be borrowed: each service's Vault login issues only its own
//! certificate, people's certificates are client-only and never name a service, clients
//! pin the identity of the server they call, and only a generator may attach as a worker.

use std::sync::Arc;

use rustls_pki_types::ServerName;
use sakuga_mesh::{config::USER_PKI_ROLE, tls::MeshTls, vault::Vault};
use sakuga_proto::v1::{
    AttachRequest, WorkerHello, attach_request::Msg, worker_service_client::WorkerServiceClient,
};
use sakuga_testkit::TestEnv;
use tonic::Code;
use x509_parser::prelude::FromDer as _;

use crate::common::Mesh;

const SERVICES: [&str; 4] = ["auth", "scheduler", "organizer", "generator"];

/// Vault's reason for a refused issue, or a panic when it issued.
fn refused<T>(result: Result<T, impl std::fmt::Display>, what: &str) -> String {
    match result {
        Ok(_) => panic!("{what}: vault issued it"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn a_service_login_issues_its_own_certificate_and_no_other() {
    let env = TestEnv::new().await.unwrap();
    for own in SERVICES {
        let vault = Vault::connect(&env.service_vault_config(own).await.unwrap()).await.unwrap();
        let names = ["localhost".to_owned()];
        let ips = ["127.0.0.1".to_owned()];
        let cert = vault.issue_certificate(own, &names, &ips).await.unwrap();
        let leaf = leaf_der(&cert.chain_pem);
        assert_eq!(sakuga_mesh::identity::spiffe_uris(&leaf), vec![format!("spiffe://sakuga/{own}")]);
        for other in SERVICES.iter().filter(|s| **s != own) {
            // Through the other service's role: the policy refuses.
            let why = refused(vault.issue_certificate(other, &names, &ips).await, other);
            assert!(why.contains("403") || why.contains("permission denied"), "{own} as {other}: {why}");
            // Through its own role, naming the other: the role refuses.
            let mut cfg = env.service_vault_config(own).await.unwrap();
            cfg.pki_role = sakuga_mesh::config::pki_role_of(own);
            let own_role = Vault::connect(&cfg).await.unwrap();
            let why = refused(own_role.issue_certificate(other, &names, &ips).await, other);
            assert!(why.contains("400") || why.contains("not allowed"), "{own} naming {other}: {why}");
        }
    }
    env.cleanup().await;
}

/// The DER of the first certificate of a PEM chain (the leaf).
fn leaf_der(pem: &str) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject as _;
    rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()).next().unwrap().unwrap().to_vec()
}

#[tokio::test]
async fn the_people_role_issues_client_certificates_for_user_ids_only() {
    let env = TestEnv::new().await.unwrap();
    for service in SERVICES {
        let uri = format!("spiffe://sakuga/{service}");
        let why = refused(env.issue_with_role(USER_PKI_ROLE, "mallory.user.sakuga", &[], &uri).await, &uri);
        assert!(why.contains("not allowed") || why.contains("400"), "{why}");
        let name = format!("{service}.sakuga");
        let why = refused(
            env.issue_with_role(USER_PKI_ROLE, &name, &[], "spiffe://sakuga/user/mallory").await,
            &name,
        );
        assert!(why.contains("not allowed") || why.contains("400"), "{why}");
    }
    let why = refused(
        env.issue_with_role(
            USER_PKI_ROLE,
            "mallory.user.sakuga",
            &["localhost"],
            "spiffe://sakuga/user/mallory",
        )
        .await,
        "localhost",
    );
    assert!(why.contains("not allowed") || why.contains("400"), "{why}");

    // What it does issue is for clients only: no server may present it.
    let alice =
        env.issue_with_role(USER_PKI_ROLE, "alice.user.sakuga", &[], "spiffe://sakuga/user/alice").await;
    let alice = alice.unwrap();
    let der = leaf_der(&alice.chain_pem);
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(&der).unwrap();
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth && !eku.server_auth, "client-only: {eku:?}");
    assert_eq!(sakuga_mesh::identity::spiffe_uris(&der), vec!["spiffe://sakuga/user/alice".to_owned()]);
    let server = MeshTls::from_pem("alice", &alice.chain_pem, &alice.key_pem, &alice.ca_pem).unwrap();
    let client = env.identity("generator").await.unwrap();
    let err = handshake(&server, client.client_config()).await.unwrap_err();
    assert!(err.to_string().to_lowercase().contains("usage") || err.to_string().contains("Purpose"), "{err}");
    env.cleanup().await;
}

/// Serves one TLS handshake with `server`'s certificate and runs the client side with
/// `client`; the client's result.
async fn handshake(server: &MeshTls, client: Arc<rustls::ClientConfig>) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = server.acceptor();
    let server_side = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let _ = acceptor.accept(tcp).await;
    });
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let result = tokio_rustls::TlsConnector::from(client)
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .map(drop);
    server_side.abort();
    result
}

#[tokio::test]
async fn a_client_that_expects_the_organizer_refuses_the_scheduler() {
    let env = TestEnv::new().await.unwrap();
    let scheduler = env.identity("scheduler").await.unwrap();
    let generator = env.identity("generator").await.unwrap();
    let err = handshake(&scheduler, generator.client_config_for("organizer").unwrap()).await.unwrap_err();
    assert!(
        err.to_string().contains("spiffe://sakuga/scheduler, expected spiffe://sakuga/organizer"),
        "{err}"
    );
    // The same certificate passes when the client meant to call the scheduler.
    handshake(&scheduler, generator.client_config_for("scheduler").unwrap()).await.unwrap();
    let organizer = env.identity("organizer").await.unwrap();
    handshake(&organizer, generator.client_config_for("organizer").unwrap()).await.unwrap();
    env.cleanup().await;
}

/// Opens `WorkerService.Attach` with `tls` and sends a hello; the status of the call.
async fn attach_as(mesh: &Mesh, tls: &MeshTls) -> Result<(), tonic::Status> {
    let channel = tls.channel(&mesh.scheduler.addr_string()).unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let hello = WorkerHello {
        worker_id: format!("borrowed-{}", mesh.env.id),
        slots: 1,
        backends: vec!["builtin".into()],
        ..WorkerHello::default()
    };
    tx.try_send(AttachRequest { msg: Some(Msg::Hello(hello)) }).unwrap();
    let mut inbound = WorkerServiceClient::new(channel)
        .attach(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    // The welcome (or the refusal, on servers that answer in-stream).
    inbound.message().await?;
    drop(tx);
    Ok(())
}

#[tokio::test]
async fn only_a_generator_certificate_may_attach_as_a_worker() {
    let mesh = Mesh::without_generator().await;
    let scheduler = mesh.env.identity("scheduler").await.unwrap();
    let err = attach_as(&mesh, &scheduler).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    for person in ["alice", "operator"] {
        let tls = mesh.env.user_identity(person).await.unwrap();
        let err = attach_as(&mesh, &tls).await.unwrap_err();
        assert!(matches!(err.code(), Code::Unauthenticated | Code::PermissionDenied), "{person}: {err:?}");
    }
    let generator = mesh.env.identity("generator").await.unwrap();
    attach_as(&mesh, &generator).await.unwrap();
    mesh.stop().await;
}
