//! Every service's Prometheus endpoint after one job: the job counted, the histograms
//! filled, refusals counted by reason.

// Counters and bucket counts are small integers, exact in an f64.
#![allow(clippy::float_cmp)]

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::common::{Mesh, image_request};

pub(crate) async fn scrape(addr: std::net::SocketAddr) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: test\r\n\r\n").await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200 OK"), "{out}");
    out
}

/// The value of the sample `line_start` (name and labels), as a number.
pub(crate) fn value(text: &str, line_start: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(line_start).and_then(|rest| rest.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no sample {line_start} in:\n{text}"))
}

#[tokio::test]
async fn each_service_counts_the_job_and_fills_its_histograms() {
    let mesh = Mesh::start().await;
    let alice = mesh.person("alice").await;
    let mut jobs = mesh.jobs(&alice.token);
    let id = jobs.submit_job(image_request("counted", 4)).await.unwrap().into_inner().job.unwrap().id;
    let job = mesh.finished(&alice.token, &id).await;
    assert_eq!(job.status, i32::from(sakuga_proto::v1::JobStatus::Succeeded));
    // A call without credentials, refused by the guard.
    let mut anonymous = sakuga_proto::v1::job_service_client::JobServiceClient::new(
        mesh.channel(&mesh.scheduler.addr_string()),
    );
    anonymous.list_jobs(sakuga_proto::v1::ListJobsRequest::default()).await.unwrap_err();

    let scheduler = scrape(mesh.scheduler.metrics.unwrap()).await;
    assert_eq!(
        value(&scheduler, r#"sakuga_rpc_requests_total{method="JobService.SubmitJob",code="OK"}"#),
        1.0
    );
    assert!(
        value(&scheduler, r#"sakuga_rpc_duration_seconds_count{method="JobService.SubmitJob",code="OK"}"#)
            >= 1.0
    );
    assert_eq!(value(&scheduler, r#"sakuga_auth_failures_total{reason="CREDENTIALS_MISSING"}"#), 1.0);
    assert_eq!(value(&scheduler, r#"sakuga_jobs_finished_total{outcome="succeeded"}"#), 1.0);
    // Only unfinished jobs are a gauge (finished ones are the counter above): no scrape
    // counts the whole job history.
    assert_eq!(value(&scheduler, r#"sakuga_jobs{state="queued"}"#), 0.0);
    assert_eq!(value(&scheduler, r#"sakuga_jobs{state="running"}"#), 0.0);
    assert!(!scheduler.contains(r#"sakuga_jobs{state="succeeded"}"#), "{scheduler}");
    assert_eq!(value(&scheduler, "sakuga_dispatch_latency_seconds_count"), 1.0);
    assert_eq!(value(&scheduler, r#"sakuga_dispatch_latency_seconds_bucket{le="+Inf"}"#), 1.0);
    assert_eq!(
        value(&scheduler, r#"sakuga_job_duration_seconds_count{backend="builtin",outcome="succeeded"}"#),
        1.0
    );
    assert_eq!(value(&scheduler, "sakuga_worker_slots"), 2.0);

    let organizer = scrape(mesh.organizer.metrics.unwrap()).await;
    assert_eq!(value(&organizer, r#"sakuga_files_stored_total{kind="image"}"#), 1.0);
    assert!(value(&organizer, r#"sakuga_upload_bytes_total{kind="image"}"#) > 100.0);
    assert_eq!(
        value(&organizer, r#"sakuga_rpc_requests_total{method="FileService.StoreArtifact",code="OK"}"#),
        1.0
    );

    let generator = scrape(mesh.generator.as_ref().unwrap().metrics.unwrap()).await;
    assert_eq!(
        value(&generator, r#"sakuga_generator_jobs_total{backend="builtin",result="succeeded"}"#),
        1.0
    );
    assert_eq!(value(&generator, r#"sakuga_generator_job_seconds_count{backend="builtin"}"#), 1.0);
    assert_eq!(value(&generator, r#"sakuga_worker_slots{backend="builtin"}"#), 2.0);
    assert_eq!(value(&generator, r#"sakuga_worker_slots_busy{backend="builtin"}"#), 0.0);

    let auth = scrape(mesh.auth.metrics.unwrap()).await;
    assert!(value(&auth, r#"sakuga_rpc_requests_total{method="AuthService.Login",code="OK"}"#) >= 2.0);
    mesh.stop().await;
}
