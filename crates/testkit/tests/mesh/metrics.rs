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
    assert_eq!(value(&scheduler, "sakuga_worker_queue_slots"), 0.0, "the builtin backend queues nothing");

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

    // Every endpoint passes Prometheus' own linter.
    for (service, text) in
        [("scheduler", &scheduler), ("organizer", &organizer), ("generator", &generator), ("auth", &auth)]
    {
        promtool_check(service, text);
    }
    mesh.stop().await;
}

/// `promtool check metrics` on a scrape (headers stripped). `make test` installs Debian's
/// `prometheus` package and exports `SAKUGA_PROMTOOL_BIN`; by hand, `promtool` on the PATH.
fn promtool_check(service: &str, scrape: &str) {
    use std::io::Write as _;
    let body = scrape.split_once("\r\n\r\n").map_or(scrape, |(_, b)| b);
    let bin = std::env::var("SAKUGA_PROMTOOL_BIN").unwrap_or_else(|_| "promtool".to_owned());
    let mut child = std::process::Command::new(&bin)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{bin}: {e} (install Debian's prometheus package; make test does)"));
    child.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed for the {service}:\n{}{}\n{body}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The series of a scrape: every sample line's name and labels, without the value.
fn series(text: &str) -> std::collections::BTreeSet<String> {
    let body = text.split_once("\r\n\r\n").map_or(text, |(_, b)| b);
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.rsplit_once(' ').map(|(series, _)| series.to_owned()))
        .collect()
}

#[tokio::test]
async fn a_thousand_calls_to_invented_paths_add_no_metric_series() {
    let mesh = Mesh::without_generator().await;
    let channel = mesh.channel(&mesh.scheduler.addr_string());
    let call = |path: String| {
        let channel = channel.clone();
        async move {
            let mut grpc = tonic::client::Grpc::new(channel);
            grpc.ready().await.unwrap();
            let path = http::uri::PathAndQuery::try_from(path).unwrap();
            grpc.unary::<(), (), _>(tonic::Request::new(()), path, tonic_prost::ProstCodec::default())
                .await
                .unwrap_err()
        }
    };
    // The first unknown call creates the `unknown` series once; none after it may add one.
    let first = call("/evil.Probe/m-first".to_owned()).await;
    assert_eq!(first.code(), tonic::Code::Unimplemented, "{first:?}");
    assert_eq!(sakuga_mesh::auth::reason_of(&first).as_deref(), Some("UNKNOWN_METHOD"));
    let before = scrape(mesh.scheduler.metrics.unwrap()).await;
    for batch in 0..20 {
        let calls =
            (0..50).map(|i| call(format!("/evil.Probe{batch}/m{i}-{}", uuid::Uuid::new_v4().simple())));
        for e in futures_util::future::join_all(calls).await {
            assert_eq!(e.code(), tonic::Code::Unimplemented, "{e:?}");
        }
    }
    let after = scrape(mesh.scheduler.metrics.unwrap()).await;
    assert_eq!(series(&before), series(&after), "invented paths added series");
    assert!(!after.contains("evil"), "a caller's path reached the metrics");
    assert_eq!(value(&after, r#"sakuga_rpc_requests_total{method="unknown",code="UNIMPLEMENTED"}"#), 1001.0);
    assert_eq!(value(&after, r#"sakuga_auth_failures_total{reason="UNKNOWN_METHOD"}"#), 1001.0);
    // A thousand refusals by one caller cost a bounded number of audit rows.
    let rows: i64 = mesh
        .env
        .db()
        .await
        .unwrap()
        .query_one("SELECT count(*) FROM audit_events WHERE action = 'auth.refused'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 1, "refusals of one caller, method and reason share one row per window");
    mesh.stop().await;
}
