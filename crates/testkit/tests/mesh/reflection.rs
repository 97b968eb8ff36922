//! Server reflection on every port, in both versions (grpcurl 1.8 speaks only v1alpha),
//! lists exactly the services mounted there.

use tokio_stream::StreamExt as _;

use crate::common::Mesh;

/// Lists the services through one reflection version (the two differ only in package).
macro_rules! list_services {
    ($version:ident, $channel:expr) => {{
        use tonic_reflection::pb::$version::{
            ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
            server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        };
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut stream = ServerReflectionClient::new($channel)
            .server_reflection_info(tokio_stream::iter(vec![req]))
            .await
            .unwrap()
            .into_inner();
        let Some(MessageResponse::ListServicesResponse(list)) =
            stream.next().await.unwrap().unwrap().message_response
        else {
            panic!("expected a service list")
        };
        let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        names.sort();
        names
    }};
}

#[tokio::test]
async fn reflection_lists_the_mounted_services_on_every_port() {
    let mesh = Mesh::start().await;
    let base = [
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ];
    let expect = |extra: &[&str]| {
        let mut v: Vec<String> = base.iter().chain(extra).map(|s| (*s).to_owned()).collect();
        v.sort();
        v
    };
    for (addr, expected) in [
        (mesh.auth.addr_string(), expect(&["sakuga.v1.AuthService"])),
        (
            mesh.scheduler.addr_string(),
            expect(&[
                "sakuga.v1.JobService",
                "sakuga.v1.ProjectService",
                "sakuga.v1.WebhookService",
                "sakuga.v1.WorkerService",
            ]),
        ),
        (mesh.organizer.addr_string(), expect(&["sakuga.v1.FileService"])),
        (mesh.generator.as_ref().unwrap().addr_string(), expect(&[])),
    ] {
        let channel = mesh.authed(&addr, &mesh.admin_token);
        assert_eq!(list_services!(v1alpha, channel.clone()), expected, "v1alpha on {addr}");
        assert_eq!(list_services!(v1, channel), expected, "v1 on {addr}");
    }
    mesh.stop().await;
}
