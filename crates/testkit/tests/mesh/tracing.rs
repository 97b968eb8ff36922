//! One job is one trace across the four services: a client span logs in and submits; the
//! scheduler's submit, dispatch and completion, the generator's generation and uploads,
//! the organizer's store and the auth service's login all share its trace id, each span's
//! parent is in the trace.

use std::{collections::HashSet, time::Duration};

use sakuga_proto::v1::{LoginRequest, auth_service_client::AuthServiceClient};
use sakuga_testkit::otlp::Collector;

use crate::common::{Mesh, image_request};

#[tokio::test]
async fn one_job_is_one_trace_across_the_four_services() {
    let collector = Collector::start().await;
    let provider = sakuga_mesh::telemetry::otlp_provider(&collector.endpoint(), "sakuga-test").unwrap();
    assert!(sakuga_mesh::telemetry::install(Some(&provider), "test"), "the subscriber of this test process");
    let mesh = Mesh::start().await;
    let alice = mesh.person("alice").await;

    let root = tracing::info_span!("client", otel.name = "client: submit a job", service = "client");
    let trace_id = sakuga_mesh::telemetry::trace_id(&root);
    assert_eq!(trace_id.len(), 32, "tracing is on");
    // Log in and submit inside the client span, sending its context along.
    let mut login = tonic::Request::new(LoginRequest {
        username: "alice".into(),
        password: "alice-correct-horse-battery".into(), // secret-scan: allow (test fixture)
    });
    root.in_scope(|| sakuga_mesh::telemetry::inject(login.metadata_mut()));
    AuthServiceClient::new(mesh.channel(&mesh.auth.addr_string())).login(login).await.unwrap();
    let mut submit = tonic::Request::new(image_request("one trace", 3));
    root.in_scope(|| sakuga_mesh::telemetry::inject(submit.metadata_mut()));
    let id = mesh.jobs(&alice.token).submit_job(submit).await.unwrap().into_inner().job.unwrap().id;
    let job = mesh.finished(&alice.token, &id).await;
    assert_eq!(job.status, i32::from(sakuga_proto::v1::JobStatus::Succeeded));
    drop(root);

    // Spans are exported in batches: flush, then wait for the last ones to land.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let spans = loop {
        let _ = tokio::task::spawn_blocking({
            let p = provider.clone();
            move || p.force_flush()
        })
        .await;
        let spans: Vec<_> = collector.spans().into_iter().filter(|s| s.trace_id == trace_id).collect();
        let names: HashSet<&str> = spans.iter().map(|s| s.name.as_str()).collect();
        let want = [
            "client: submit a job",
            "AuthService.Login",
            "JobService.SubmitJob",
            "dispatch",
            "generate",
            "upload",
            "FileService.StoreArtifact",
            "complete",
        ];
        if want.iter().all(|w| names.contains(w)) {
            break spans;
        }
        assert!(tokio::time::Instant::now() < deadline, "missing spans; have {names:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let services: HashSet<&str> = spans.iter().map(|s| s.service.as_str()).collect();
    for s in ["auth", "scheduler", "generator", "organizer"] {
        assert!(services.contains(s), "a span from {s}: {spans:#?}");
    }
    let ids: HashSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    let roots: Vec<_> = spans.iter().filter(|s| s.parent_span_id.is_empty()).collect();
    assert_eq!(roots.len(), 1, "one root, the client's: {roots:#?}");
    for s in &spans {
        assert!(
            s.parent_span_id.is_empty() || ids.contains(s.parent_span_id.as_str()),
            "{} ({}) points at a parent outside the trace",
            s.name,
            s.service
        );
    }
    // The chain: submit -> dispatch -> generate -> upload -> store.
    let by_name = |n: &str| spans.iter().find(|s| s.name == n).unwrap();
    assert_eq!(by_name("dispatch").parent_span_id, by_name("JobService.SubmitJob").span_id);
    assert_eq!(by_name("generate").parent_span_id, by_name("dispatch").span_id);
    assert_eq!(by_name("upload").parent_span_id, by_name("generate").span_id);
    assert_eq!(by_name("FileService.StoreArtifact").parent_span_id, by_name("upload").span_id);
    assert_eq!(by_name("complete").parent_span_id, by_name("JobService.SubmitJob").span_id);
    mesh.stop().await;
}
