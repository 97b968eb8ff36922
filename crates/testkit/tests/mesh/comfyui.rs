//! The comfyui backend against the replay of a real ComfyUI server's recorded traffic,
//! alone and through the whole mesh; and, when `SAKUGA_TEST_COMFYUI_URL` names one, against
//! a real ComfyUI with the model-free smoke template.

use std::{
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use sakuga_generator::{
    backend::{Backend, BackendError, JobInput, Report, Sink},
    comfyui::{ComfyConfig, ComfyUi},
};
use sakuga_imaging::{Artifact, Limits, inspect_png};
use sakuga_proto::v1::{JobKind, JobSpec, JobStatus, SubmitJobRequest};
use sakuga_testkit::comfy::{Fault, Pacing, Recording, ReplayComfy, Version, fixtures_dir};
use sha2::{Digest as _, Sha256};
use tokio_util::sync::CancellationToken;

use crate::common::Mesh;

/// Runs each named test against the replay of ComfyUI 0.3.64 and of 0.26.0 (same
/// scenarios, same file names): `<test>::v0_3_64` and `<test>::v0_26`.
macro_rules! on_both_versions {
    ($($case:ident),+ $(,)?) => {$(
        mod $case {
            use sakuga_testkit::comfy::Version;

            #[tokio::test]
            async fn v0_3_64() {
                Box::pin(super::$case(Version::V0_3_64)).await;
            }

            #[tokio::test]
            async fn v0_26() {
                Box::pin(super::$case(Version::V0_26)).await;
            }
        }
    )+};
}

on_both_versions!(
    the_recorded_success_run_gives_every_progress_event_its_previews_and_the_output,
    with_preview_metadata_the_typed_preview_frames_are_used,
    the_recorded_interrupt_run_ends_canceled,
    the_recorded_execution_error_fails_the_job_naming_the_node,
    the_recorded_invalid_workflow_answer_is_a_permanent_error_naming_the_node,
    cached_nodes_count_as_done,
    a_socket_dropped_mid_job_is_reopened_and_the_job_completes,
    a_comfyui_restart_mid_job_fails_it_as_retryable,
    an_output_over_the_ceiling_is_refused_unread_and_fails_the_job,
    a_json_answer_over_the_ceiling_fails_the_job_naming_the_setting,
    previews_declaring_more_than_the_cap_are_skipped_and_counted,
    a_socket_message_over_the_ceiling_fails_the_attempt_as_retryable,
    a_retry_takes_the_outputs_of_an_attempt_that_finished_in_comfyui,
    templates_are_checked_against_the_server_at_start_up,
    configured_models_are_preloaded_at_start_up_and_reported_with_the_last_one_used,
    a_comfyui_job_goes_through_the_mesh_to_a_stored_file,
    an_unknown_node_class_is_a_permanent_error_naming_the_node,
    over_queue_keeps_the_next_prompt_waiting_in_comfyui_and_no_more,
    two_servers_take_two_jobs_at_once,
    a_waiting_prompt_moves_to_a_server_that_goes_idle,
    the_job_timeout_counts_from_when_comfyui_starts_the_prompt,
    a_withdrawn_prompt_leaves_the_queue_only_if_it_has_not_started,
    cancel_removes_a_waiting_prompt_from_the_queue_and_interrupts_only_the_running_one,
    a_history_entry_stored_late_is_waited_for,
    a_job_id_that_is_not_a_uuid_is_never_sent,
    one_server_and_three_jobs_the_third_waits_in_the_scheduler,
    two_workers_and_two_jobs_both_run_at_once,
    a_job_waiting_on_a_busy_worker_goes_to_a_worker_with_a_free_slot,
);

/// Workflows shaped like the recorded ones, as templates.
const FAKE: &str = sakuga_testkit::comfy::FAKE_SAMPLER_TEMPLATE;
const EMPTY: &str = r#"{"1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 16744448}}, "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "fixture_empty"}}}"#;
const FAILING: &str = r#"{"1": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 32, "batch_size": 1, "color": 255}}, "2": {"class_type": "FailingNode", "inputs": {"image": ["1", 0]}}, "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "fixture_fail"}}}"#;
/// The recorded workflow with a node class the server does not have.
const UNKNOWN: &str = r#"{"1": {"class_type": "NoSuchNodeType", "inputs": {}}, "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}}"#;
/// The first recorded invalid prompt: EmptyImage without its required `color`.
const INVALID: &str = r#"{"1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}, "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}}"#;

fn templates_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let with_checkpoint =
        FAKE.replace(r#""seed": "{{seed}}""#, r#""seed": "{{seed}}", "ckpt_name": "{{checkpoint}}""#);
    for (name, text) in [
        ("fake", FAKE),
        ("empty", EMPTY),
        ("failing", FAILING),
        ("invalid", INVALID),
        ("unknown", UNKNOWN),
        ("checkpoint", &with_checkpoint),
    ] {
        std::fs::write(dir.path().join(format!("{name}.json")), text).unwrap();
    }
    dir
}

fn config(url: &str, dir: &Path, template: &str, preview_metadata: bool) -> ComfyConfig {
    ComfyConfig {
        urls: vec![url.to_owned()],
        templates_dir: Some(dir.to_path_buf()),
        image_template: template.to_owned(),
        video_template: template.to_owned(),
        preview_metadata,
        connect_timeout: Duration::from_secs(5),
        lost_after: Duration::from_secs(3),
        request_timeout: Duration::from_secs(5),
        ..ComfyConfig::default()
    }
}

pub(crate) fn job(size: u32, steps: u32) -> JobInput {
    JobInput {
        job_id: uuid::Uuid::new_v4().to_string(),
        attempt: 1,
        spec: JobSpec {
            kind: JobKind::Image.into(),
            prompt: "replayed".into(),
            width: size,
            height: size,
            steps,
            seed: Some(42),
            model: "default".into(),
            backend: "comfyui".into(),
            ..JobSpec::default()
        }
        .into(),
        prompt: "replayed".into(),
    }
}

type Reports = Arc<Mutex<Vec<Report>>>;

fn collecting() -> (Sink, Reports) {
    let reports = Reports::default();
    let r = reports.clone();
    (Sink::new(move |rep| r.lock().unwrap().push(rep)), reports)
}

fn steps(reports: &Reports) -> Vec<(u32, u32, String)> {
    reports
        .lock()
        .unwrap()
        .iter()
        .filter_map(|r| match r {
            Report::Step { step, total, stage, .. } => Some((*step, *total, stage.clone())),
            Report::Preview { .. } => None,
        })
        .collect()
}

fn previews(reports: &Reports) -> Vec<Vec<u8>> {
    reports
        .lock()
        .unwrap()
        .iter()
        .filter_map(|r| match r {
            Report::Preview { png, .. } => Some(png.clone()),
            Report::Step { .. } => None,
        })
        .collect()
}

fn recorded_output() -> Vec<u8> {
    std::fs::read(fixtures_dir().join("07_fake_sampler_output.png")).unwrap()
}

async fn run(backend: &ComfyUi, input: JobInput, sink: Sink) -> Result<Vec<Artifact>, BackendError> {
    tokio::time::timeout(Duration::from_secs(30), backend.run(input, sink, CancellationToken::new()))
        .await
        .unwrap()
}

async fn the_recorded_success_run_gives_every_progress_event_its_previews_and_the_output(version: Version) {
    let replay = ReplayComfy::start_version(version, Pacing::Instant).await;
    let dir = templates_dir();
    let backend = ComfyUi::new(config(&replay.url(), dir.path(), "fake", false)).unwrap();
    let input = job(512, 8);
    let id = input.job_id.clone();
    let (sink, reports) = collecting();
    let artifacts = run(&backend, input, sink).await.unwrap();

    // 07: one event as each node starts, eight `progress` frames, eight JPEG previews, one PNG.
    let steps = steps(&reports);
    assert_eq!(steps.len(), 10, "one progress event per node start and per progress frame: {steps:?}");
    assert_eq!(steps.iter().map(|s| s.0).collect::<Vec<_>>(), [0, 1, 2, 3, 4, 5, 6, 7, 8, 8]);
    assert!(steps.iter().all(|s| s.1 == 9), "{steps:?}");
    assert!(steps[1..9].iter().all(|s| s.2 == "sampling: node 1 FakeSampler"), "{steps:?}");
    assert_eq!(
        (steps[0].2.as_str(), steps[9].2.as_str()),
        ("running: node 1 FakeSampler", "running: node 2 SaveImage")
    );
    let previews = previews(&reports);
    assert_eq!(previews.len(), 8, "every binary preview forwarded");
    for p in &previews {
        let found = inspect_png(p, Limits::default()).unwrap();
        assert!(found.width <= 128 && found.height <= 128, "previews are small PNGs");
    }
    assert_eq!(artifacts.len(), 1);
    let recorded = recorded_output();
    assert_eq!(artifacts[0].bytes, recorded, "the output is the file ComfyUI saved");
    let view: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(version.fixtures_dir().join("07_fake_sampler_view.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        hex::encode(Sha256::digest(&artifacts[0].bytes)),
        view["response"]["sha256"].as_str().unwrap()
    );
    assert_eq!((artifacts[0].width, artifacts[0].height, artifacts[0].frames), (512, 512, 1));

    // What ComfyUI was sent: our job id as prompt_id, the socket's client id, the filled workflow.
    let posts: Vec<_> =
        replay.requests().into_iter().filter(|(m, p, _)| m == "POST" && p == "/prompt").collect();
    assert_eq!(posts.len(), 1);
    let body: serde_json::Value = serde_json::from_str(&posts[0].2).unwrap();
    assert_eq!(body["prompt_id"], id.as_str());
    assert_eq!(body["prompt"]["1"]["inputs"]["steps"], 8);
    assert_eq!(body["prompt"]["2"]["inputs"]["filename_prefix"], format!("sakuga/{id}"));
    let ws = replay.requests().into_iter().find(|(_, p, _)| p.starts_with("/ws?clientId=")).unwrap();
    assert_eq!(
        ws.1,
        format!("/ws?clientId={}", body["client_id"].as_str().unwrap()),
        "one socket, our client id"
    );
}

async fn with_preview_metadata_the_typed_preview_frames_are_used(version: Version) {
    let replay = ReplayComfy::start_version(version, Pacing::Instant).await;
    let dir = templates_dir();
    let backend = ComfyUi::new(config(&replay.url(), dir.path(), "fake", true)).unwrap();
    let (sink, reports) = collecting();
    let artifacts = run(&backend, job(128, 4), sink).await.unwrap();
    // 14: four progress frames and four type-4 previews whose metadata names the prompt.
    assert_eq!(steps(&reports).iter().map(|s| s.0).collect::<Vec<_>>(), [0, 1, 2, 3, 4, 4]);
    assert_eq!(previews(&reports).len(), 4);
    assert_eq!(artifacts.len(), 1);
}

async fn the_recorded_interrupt_run_ends_canceled(version: Version) {
    let replay = ReplayComfy::start_version(version, Pacing::Instant).await;
    let dir = templates_dir();
    let backend = Arc::new(ComfyUi::new(config(&replay.url(), dir.path(), "fake", false)).unwrap());
    let input = job(256, 200);
    let id = input.job_id.clone();
    let cancel = CancellationToken::new();
    let (c, seen) = (cancel.clone(), Arc::new(Mutex::new(0)));
    let sink = Sink::new(move |r| {
        if matches!(r, Report::Step { .. }) {
            *seen.lock().unwrap() += 1;
            c.cancel();
        }
    });
    let result =
        tokio::time::timeout(Duration::from_secs(30), backend.run(input, sink, cancel)).await.unwrap();
    assert_eq!(result.unwrap_err(), BackendError::Canceled);
    let cancel = format!("/api/jobs/{id}/cancel");
    match version {
        // The cancel endpoint is tried once (404), then the targeted interrupt.
        Version::V0_3_64 => {
            assert_eq!(stops(&replay), [cancel, "/interrupt".to_owned()]);
            let body = &replay.requests().into_iter().find(|(_, p, _)| p == "/interrupt").unwrap().2;
            let body: serde_json::Value = serde_json::from_str(body).unwrap();
            assert_eq!(body["prompt_id"], id.as_str(), "the interrupt names our prompt only");
        }
        Version::V0_26 => assert_eq!(stops(&replay), [cancel], "the current call, naming our prompt only"),
    }
}

/// The paths of the POSTs that stop prompts, in order.
fn stops(replay: &ReplayComfy) -> Vec<String> {
    replay
        .requests()
        .into_iter()
        .filter(|(m, p, _)| {
            m == "POST" && (p == "/interrupt" || p == "/queue" || p.starts_with("/api/jobs/"))
        })
        .map(|(_, p, _)| p)
        .collect()
}

async fn the_recorded_execution_error_fails_the_job_naming_the_node(version: Version) {
    let replay = ReplayComfy::start_version(version, Pacing::Instant).await;
    let dir = templates_dir();
    let backend = ComfyUi::new(config(&replay.url(), dir.path(), "failing", false)).unwrap();
    let err = run(&backend, job(64, 1), Sink::discard()).await.unwrap_err();
    let BackendError::Permanent(message) = err else { panic!("not retryable: {err:?}") };
    // The exception's text ("FailingNode: intentional failure ...") and traceback stay in
    // the generator's log.
    assert_eq!(message, "ComfyUI node 2 (FailingNode) failed: RuntimeError");
    assert!(!message.contains("File \""), "no traceback for users");
}

async fn the_recorded_invalid_workflow_answer_is_a_permanent_error_naming_the_node(version: Version) {
    let replay = ReplayComfy::start_version(version, Pacing::Instant).await;
    let dir = templates_dir();
    let backend = ComfyUi::new(config(&replay.url(), dir.path(), "invalid", false)).unwrap();
    let err = run(&backend, job(64, 1), Sink::discard()).await.unwrap_err();
    assert_eq!(
        err,
        BackendError::Permanent(
            "ComfyUI refused the workflow: node 1 (EmptyImage) input \"color\": Required input is missing"
                .into()
        )
    );
}

async fn cached_nodes_count_as_done(version: Version) {
    let replay = ReplayComfy::start_version(version, Pacing::Instant).await;
    let dir = templates_dir();
    let backend = ComfyUi::new(config(&replay.url(), dir.path(), "empty", false)).unwrap();
    let first = run(&backend, job(64, 1), Sink::discard()).await.unwrap();
    let (sink, reports) = collecting();
    let second = run(&backend, job(64, 1), sink).await.unwrap();
    // 09: execution_cached lists both nodes; the job is complete without a progress frame.
    assert_eq!(steps(&reports), [(2, 2, "cached".to_owned())]);
    assert_eq!(first[0].bytes, second[0].bytes);
    assert_eq!((second[0].width, second[0].height), (64, 64));
}

async fn a_socket_dropped_mid_job_is_reopened_and_the_job_completes(version: Version) {
    let replay = ReplayComfy::start_version(version, Pacing::Recorded).await;
    let dir = templates_dir();
    let backend = ComfyUi::new(config(&replay.url(), dir.path(), "fake", false)).unwrap();
    replay.script(Recording::FakeSampler, Some(Fault::DropSocket(8)));
    let artifacts = run(&backend, job(512, 8), Sink::discard()).await.unwrap();
    assert_eq!(artifacts[0].bytes, recorded_output());
    assert_eq!(replay.count("GET", "/ws?"), 2, "the socket was reopened");
}

async fn a_comfyui_restart_mid_job_fails_it_as_retryable(version: Version) {
    let replay = ReplayComfy::start_version(version, Pacing::Recorded).await;
    let dir = templates_dir();
    let backend = ComfyUi::new(config(&replay.url(), dir.path(), "fake", false)).unwrap();
    replay.script(Recording::FakeSampler, Some(Fault::Restart { at: 8, down_ms: 800 }));
    let err = run(&backend, job(512, 8), Sink::discard()).await.unwrap_err();
    let BackendError::Retryable(message) = err else { panic!("retryable: {err:?}") };
    assert!(message.contains("no longer knows the job"), "{message}");
    assert!(
        !message.contains("127.0.0.1") && !message.contains("http"),
        "no server URL for users: {message}"
    );
}

#[tokio::test]
async fn an_unreachable_server_is_a_retryable_error() {
    let port = sakuga_testkit::Spawned::unused().addr_string().rsplit(':').next().unwrap().to_owned();
    let dir = templates_dir();
    let mut cfg = config(&format!("http://127.0.0.1:{port}"), dir.path(), "fake", false);
    cfg.connect_timeout = Duration::from_secs(1);
    let backend = ComfyUi::new(cfg).unwrap();
    let err = run(&backend, job(512, 8), Sink::discard()).await.unwrap_err();
    let BackendError::Retryable(message) = err else { panic!("retryable: {err:?}") };
    assert!(message.contains("is not reachable"), "{message}");
    assert!(!message.contains(&port) && !message.contains("http"), "no server URL for users: {message}");
}

/// The count of refusals by `ceiling` in the backend's metrics.
fn refusals(backend: &ComfyUi, ceiling: &str) -> f64 {
    let line = format!("sakuga_limit_refusals_total{{ceiling=\"{ceiling}\"}} ");
    backend
        .metrics()
        .render()
        .lines()
        .find_map(|l| l.strip_prefix(line.as_str()).map(|v| v.trim().parse().unwrap()))
        .unwrap_or(0.0)
}

async fn an_output_over_the_ceiling_is_refused_unread_and_fails_the_job(version: Version) {
    let replay = ReplayComfy::start_version(version, Pacing::Instant).await;
    let dir = templates_dir();
    // The recorded output is 7402 bytes.
    let mut cfg = config(&replay.url(), dir.path(), "fake", false);
    cfg.max_output_bytes = 4096;
    let backend = ComfyUi::new(cfg).unwrap();
    let input = job(512, 8);
    assert_eq!(backend.output_limit(&input), 4096, "the absolute maximum caps the job's own size");
    let err = run(&backend, input, Sink::discard()).await.unwrap_err();
    let BackendError::Permanent(message) = err else { panic!("permanent: {err:?}") };
    assert!(
        message.contains("output file exceeds") && message.contains("comfyui.max_output_bytes"),
        "{message}"
    );
    assert!(!message.contains("127.0.0.1"), "{message}");
    assert!((refusals(&backend, "comfyui_output_bytes") - 1.0).abs() < f64::EPSILON);

    // Below the absolute maximum, the job's own size sets the cap: twice its raw RGBA size
    // plus 4 MiB of slack, times its frames for a video.
    let backend = ComfyUi::new(config(&replay.url(), dir.path(), "fake", false)).unwrap();
    assert_eq!(backend.output_limit(&job(64, 1)), 64 * 64 * 4 * 2 + (4 << 20));
    let mut video = job(256, 1);
    video.spec.kind = JobKind::Video.into();
    video.spec.frames = 10;
    assert_eq!(backend.output_limit(&video), 256 * 256 * 4 * 10 * 2 + (4 << 20));
    assert_eq!(backend.output_limit(&job(2048, 1)), 2048 * 2048 * 4 * 2 + (4 << 20));
}

async fn a_json_answer_over_the_ceiling_fails_the_job_naming_the_setting(version: Version) {
    let replay = ReplayComfy::start_version(version, Pacing::Instant).await;
    let dir = templates_dir();
    // The recorded history entry is 965 bytes; the prompt's and the queue's answers are
    // far smaller.
    let mut cfg = config(&replay.url(), dir.path(), "fake", false);
    cfg.max_response_bytes = 600;
    let backend = ComfyUi::new(cfg).unwrap();
    let err = run(&backend, job(512, 8), Sink::discard()).await.unwrap_err();
    assert_eq!(
        err,
        BackendError::Permanent("ComfyUI response exceeds comfyui.max_response_bytes (600 bytes)".into())
    );
    assert!(refusals(&backend, "comfyui_response_bytes") >= 1.0);
    assert_eq!(replay.count("GET", "/view"), 0, "nothing fetched after the refusal");
}

async fn previews_declaring_more_than_the_cap_are_skipped_and_counted(version: Version) {
    let replay = ReplayComfy::start_version(version, Pacing::Instant).await;
    let dir = templates_dir();
    // The recorded previews are 64x64 JPEGs.
    let mut cfg = config(&replay.url(), dir.path(), "fake", false);
    cfg.max_preview_side = 32;
    let backend = ComfyUi::new(cfg).unwrap();
    let (sink, reports) = collecting();
    let artifacts = run(&backend, job(512, 8), sink).await.unwrap();
    assert_eq!(artifacts.len(), 1, "a preview is never worth failing a job over");
    assert!(previews(&reports).is_empty(), "no preview over the cap decoded or forwarded");
    assert_eq!(steps(&reports).len(), 10, "progress goes on");
    assert!((refusals(&backend, "comfyui_preview_dimensions") - 8.0).abs() < f64::EPSILON);
}

async fn a_socket_message_over_the_ceiling_fails_the_attempt_as_retryable(version: Version) {
    let replay = ReplayComfy::start_version(version, Pacing::Instant).await;
    let dir = templates_dir();
    // The recorded preview frames are 1689 bytes; every text frame is smaller than 1200.
    let mut cfg = config(&replay.url(), dir.path(), "fake", false);
    cfg.max_ws_message_bytes = 1200;
    let backend = ComfyUi::new(cfg).unwrap();
    let err = run(&backend, job(512, 8), Sink::discard()).await.unwrap_err();
    assert_eq!(
        err,
        BackendError::Retryable(
            "ComfyUI sent a socket message over comfyui.max_ws_message_bytes (1200 bytes)".into()
        )
    );
    assert!(refusals(&backend, "comfyui_ws_message_bytes") >= 1.0);
}

#[tokio::test]
async fn ceilings_are_checked_with_the_configuration() {
    let dir = templates_dir();
    for (set, expect) in [
        (
            (|c: &mut ComfyConfig| c.max_response_bytes = 10) as fn(&mut ComfyConfig),
            "comfyui.max_response_bytes",
        ),
        (|c: &mut ComfyConfig| c.max_output_bytes = 0, "comfyui.max_output_bytes"),
        (|c: &mut ComfyConfig| c.max_ws_message_bytes = 1, "comfyui.max_ws_message_bytes"),
        (|c: &mut ComfyConfig| c.max_preview_side = 0, "comfyui.max_preview_side"),
        (|c: &mut ComfyConfig| c.max_preview_side = 100_000, "comfyui.max_preview_side"),
        (|c: &mut ComfyConfig| c.over_queue = 9, "comfyui.over_queue: must be between 0 and 8"),
        (
            |c: &mut ComfyConfig| {
                c.over_queue = 2;
                c.urls = (0..33).map(|i| format!("http://127.0.0.1:{}", 9000 + i)).collect();
            },
            "comfyui.urls: at most 64 servers",
        ),
    ] {
        let mut cfg = config("http://127.0.0.1:9", dir.path(), "fake", false);
        set(&mut cfg);
        let err = ComfyUi::new(cfg).unwrap_err().to_string();
        assert!(err.starts_with(expect), "{err}");
    }
}

async fn a_retry_takes_the_outputs_of_an_attempt_that_finished_in_comfyui(version: Version) {
    let replay = ReplayComfy::start_version(version, Pacing::Instant).await;
    let dir = templates_dir();
    let backend = ComfyUi::new(config(&replay.url(), dir.path(), "fake", false)).unwrap();
    let mut input = job(512, 8);
    run(&backend, input.clone(), Sink::discard()).await.unwrap();
    input.attempt = 2;
    let again = run(&backend, input, Sink::discard()).await.unwrap();
    assert_eq!(again[0].bytes, recorded_output());
    assert_eq!(replay.count("POST", "/prompt"), 1, "nothing rendered twice");
}

async fn templates_are_checked_against_the_server_at_start_up(version: Version) {
    let replay = ReplayComfy::start_version(version, Pacing::Instant).await;
    let dir = templates_dir();
    let ok = ComfyUi::new(config(&replay.url(), dir.path(), "fake", false)).unwrap();
    ok.warm_up(CancellationToken::new()).await.unwrap();
    // The shipped smoke template needs ImageCompositeMasked, which the recorded server
    // has not been asked about: it answers `{}` like a server without that node.
    let smoke = ComfyUi::new(config(&replay.url(), dir.path(), "smoke", false)).unwrap();
    let err = smoke.warm_up(CancellationToken::new()).await.unwrap_err().to_string();
    assert!(err.contains("comfyui.image_template") && err.contains("ImageCompositeMasked"), "{err}");
    let mut bad = config(&replay.url(), dir.path(), "nope", false);
    assert!(
        ComfyUi::new(bad.clone())
            .unwrap_err()
            .to_string()
            .contains("comfyui.image_template: no template named \"nope\"")
    );
    bad.urls = vec!["ftp://comfy:8188".into()];
    let err = ComfyUi::new(bad).unwrap_err().to_string();
    assert!(
        err.contains("comfyui.urls") && err.contains("not an http://host:port or https://host:port URL"),
        "{err}"
    );
}

async fn configured_models_are_preloaded_at_start_up_and_reported_with_the_last_one_used(version: Version) {
    let replay = ReplayComfy::start_version(version, Pacing::Instant).await;
    let dir = templates_dir();
    let mut cfg = config(&replay.url(), dir.path(), "checkpoint", false);
    cfg.preload_models = vec!["anime-v3.safetensors".into()];
    cfg.default_checkpoint = "base.safetensors".into();
    let backend = ComfyUi::new(cfg).unwrap();
    assert!(backend.loaded_models().is_empty());
    backend.warm_up(CancellationToken::new()).await.unwrap();
    assert_eq!(backend.loaded_models(), ["anime-v3.safetensors"]);
    let warm_up = &replay.requests().into_iter().find(|(m, p, _)| m == "POST" && p == "/prompt").unwrap().2;
    let warm_up: serde_json::Value = serde_json::from_str(warm_up).unwrap();
    assert_eq!(warm_up["prompt"]["1"]["inputs"]["ckpt_name"], "anime-v3.safetensors");
    assert_eq!(warm_up["prompt"]["1"]["inputs"]["steps"], 1, "a tiny run");

    let mut input = job(512, 8);
    input.spec.model = "default".into();
    run(&backend, input, Sink::discard()).await.unwrap();
    assert_eq!(backend.loaded_models(), ["anime-v3.safetensors", "base.safetensors"]);

    // A template that loads a checkpoint cannot run a job that names none.
    let mut cfg = config(&replay.url(), dir.path(), "checkpoint", false);
    cfg.default_checkpoint = String::new();
    let err = run(&ComfyUi::new(cfg).unwrap(), job(512, 8), Sink::discard()).await.unwrap_err();
    assert!(matches!(&err, BackendError::Permanent(m) if m.starts_with("spec.model:")), "{err:?}");
}

fn comfyui_request(size: u32) -> SubmitJobRequest {
    SubmitJobRequest {
        spec: Some(JobSpec {
            kind: JobKind::Image.into(),
            prompt: "through the mesh".into(),
            width: size,
            height: size,
            steps: 4,
            backend: "comfyui".into(),
            ..JobSpec::default()
        }),
        ..SubmitJobRequest::default()
    }
}

async fn a_comfyui_job_goes_through_the_mesh_to_a_stored_file(version: Version) {
    let replay = ReplayComfy::start_version(version, Pacing::Instant).await;
    let dir = templates_dir();
    // Two attempts: a refused artifact is retried once, then the job fails with the reason.
    let mut mesh = Mesh::with_scheduler_config(|c| c.max_attempts = 2).await;
    let url = replay.url();
    mesh.attach_generator_with(|c| {
        c.backend = "comfyui".into();
        c.comfyui = config(&url, dir.path(), "fake", true);
    })
    .await;
    let alice = mesh.person("alice").await;
    let mut jobs = mesh.jobs(&alice.token);
    let id = jobs.submit_job(comfyui_request(128)).await.unwrap().into_inner().job.unwrap().id;
    let job = mesh.finished(&alice.token, &id).await;
    // The recorded FakeSampler output is 512x512 while this job asked for 128x128: the
    // organizer refuses it from its header, before decoding (the job's size is the limit).
    assert_eq!(job.status, i32::from(JobStatus::Failed), "{job:?}");
    assert!(job.error.contains("image declares 512x512, more than the job's 128x128"), "{}", job.error);
    assert_eq!(job.attempts, 2, "the refusal was retried: {job:?}");

    let id = jobs.submit_job(comfyui_request(512)).await.unwrap().into_inner().job.unwrap().id;
    let job = mesh.finished(&alice.token, &id).await;
    assert_eq!(job.status, i32::from(JobStatus::Succeeded), "{job:?}");
    assert_eq!(job.progress.as_ref().unwrap().stage, "uploading");
    assert_eq!(mesh.read_file(&alice.token, &job.file_ids[0]).await, recorded_output());
    mesh.stop().await;
}

/// Opt-in: a real ComfyUI at `SAKUGA_TEST_COMFYUI_URL`, with the model-free smoke template.
#[tokio::test]
async fn a_real_comfyui_runs_the_smoke_template_when_one_is_given() {
    let Ok(url) = std::env::var("SAKUGA_TEST_COMFYUI_URL") else {
        eprintln!("SAKUGA_TEST_COMFYUI_URL not set; the real-ComfyUI test is skipped");
        return;
    };
    let backend = ComfyUi::new(ComfyConfig {
        urls: vec![url],
        image_template: "smoke".into(),
        video_template: "smoke".into(),
        ..ComfyConfig::default()
    })
    .unwrap();
    backend.warm_up(CancellationToken::new()).await.unwrap();
    let mut input = job(256, 1);
    input.spec.batch_size = 2;
    let (sink, reports) = collecting();
    let artifacts = run(&backend, input, sink).await.unwrap();
    // No node of the smoke workflow reports steps: progress comes node by node (fewer when
    // ComfyUI serves some from its cache), enough for `make demo`'s three events.
    let steps = steps(&reports);
    assert!(steps.len() >= 2, "node-level progress: {steps:?}");
    assert!(steps.iter().any(|s| s.2.starts_with("running: node")), "{steps:?}");
    assert_eq!(artifacts.len(), 2);
    for a in artifacts {
        let found = inspect_png(&a.bytes, Limits::default()).unwrap();
        assert_eq!((found.width, found.height), (256, 256));
        assert!(!found.is_blank(2.0));
    }
}

async fn an_unknown_node_class_is_a_permanent_error_naming_the_node(version: Version) {
    let replay = ReplayComfy::start_version(version, Pacing::Instant).await;
    let dir = templates_dir();
    let backend = ComfyUi::new(config(&replay.url(), dir.path(), "unknown", false)).unwrap();
    let err = run(&backend, job(64, 1), Sink::discard()).await.unwrap_err();
    let expected = match version {
        Version::V0_3_64 => {
            "ComfyUI refused the workflow: Cannot execute because node NoSuchNodeType does not exist."
        }
        Version::V0_26 => {
            "ComfyUI refused the workflow: node 1 (NoSuchNodeType): Node 'NoSuchNodeType' not found. The custom node may not be installed."
        }
    };
    assert_eq!(err, BackendError::Permanent(expected.into()));
}

/// A job that holds its server until canceled: FakeSampler with 200 steps plays the
/// recorded interrupt run, which waits where the recorder interrupted.
fn holding_job() -> JobInput {
    job(256, 200)
}

/// Waits (up to 20 s) until `ok`.
async fn until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !ok() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

type Running = tokio::task::JoinHandle<Result<Vec<Artifact>, BackendError>>;

/// Runs `input` on `backend` in a task of its own, canceled by `cancel`.
fn start(backend: &Arc<ComfyUi>, input: &JobInput, cancel: &CancellationToken) -> Running {
    let (backend, input, cancel) = (backend.clone(), input.clone(), cancel.clone());
    tokio::spawn(async move {
        tokio::time::timeout(Duration::from_secs(30), backend.run(input, Sink::discard(), cancel))
            .await
            .unwrap()
    })
}

/// Every prompt id POSTed to `replay` is a canonical lowercase UUID.
fn prompt_ids_are_canonical(replay: &ReplayComfy) {
    for (_, _, body) in replay.requests().into_iter().filter(|(m, p, _)| m == "POST" && p == "/prompt") {
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        let id = body["prompt_id"].as_str().unwrap();
        assert_eq!(uuid::Uuid::parse_str(id).unwrap().hyphenated().to_string(), id);
    }
}

async fn over_queue_keeps_the_next_prompt_waiting_in_comfyui_and_no_more(version: Version) {
    let replay = ReplayComfy::start_version(version, Pacing::Recorded).await;
    let dir = templates_dir();
    let backend = Arc::new(ComfyUi::new(config(&replay.url(), dir.path(), "fake", false)).unwrap());
    assert_eq!((backend.slots(), backend.queue_slots()), (1, 1), "one server, one prompt waiting by default");
    let never = CancellationToken::new();
    let (a, b) = (job(512, 8), job(512, 8));
    let (ra, rb) = (start(&backend, &a, &never), start(&backend, &b, &never));
    until("one prompt runs in ComfyUI and one waits there", || {
        let (running, waiting) = replay.queue();
        running.is_some() && waiting.len() == 1
    })
    .await;
    // A third job finds every place on the server taken: the worker never takes it (it
    // advertises slots + queue_slots), and the backend refuses it rather than stack it.
    let err = run(&backend, job(512, 8), Sink::discard()).await.unwrap_err();
    assert!(matches!(&err, BackendError::Retryable(m) if m.contains("busy")), "{err:?}");
    for r in [ra, rb] {
        assert_eq!(r.await.unwrap().unwrap()[0].bytes, recorded_output());
    }
    let runs = replay.runs();
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert!(runs[0].1.next_waiting, "the second prompt was in ComfyUI's queue when the first ended");
    assert_eq!(replay.count("POST", "/prompt"), 2, "the refused job was never sent");
    prompt_ids_are_canonical(&replay);

    // With over_queue = 0 the server holds one prompt: the second job is refused.
    let mut cfg = config(&replay.url(), dir.path(), "fake", false);
    cfg.over_queue = 0;
    let backend = Arc::new(ComfyUi::new(cfg).unwrap());
    assert_eq!((backend.slots(), backend.queue_slots()), (1, 0));
    let holding = CancellationToken::new();
    let first = start(&backend, &holding_job(), &holding);
    until("the holding prompt runs", || replay.queue().0.is_some()).await;
    let err = run(&backend, job(512, 8), Sink::discard()).await.unwrap_err();
    assert!(matches!(&err, BackendError::Retryable(m) if m.contains("busy")), "{err:?}");
    holding.cancel();
    assert_eq!(first.await.unwrap().unwrap_err(), BackendError::Canceled);
}

/// Two replayed servers and a backend driving both (with the templates it reads).
async fn two_servers(version: Version) -> (ReplayComfy, ReplayComfy, Arc<ComfyUi>, tempfile::TempDir) {
    let one = ReplayComfy::start_version(version, Pacing::Instant).await;
    let two = ReplayComfy::start_version(version, Pacing::Instant).await;
    let dir = templates_dir();
    let mut cfg = config(&one.url(), dir.path(), "fake", false);
    cfg.urls.push(two.url());
    let backend = Arc::new(ComfyUi::new(cfg).unwrap());
    (one, two, backend, dir)
}

async fn two_servers_take_two_jobs_at_once(version: Version) {
    let (one, two, backend, _dir) = two_servers(version).await;
    assert_eq!((backend.slots(), backend.queue_slots()), (2, 2));
    let cancel = CancellationToken::new();
    let jobs = [start(&backend, &holding_job(), &cancel), start(&backend, &holding_job(), &cancel)];
    until("both servers run a prompt", || one.queue().0.is_some() && two.queue().0.is_some()).await;
    assert!(one.queue().1.is_empty() && two.queue().1.is_empty(), "nothing stacked behind a running prompt");
    cancel.cancel();
    for j in jobs {
        assert_eq!(j.await.unwrap().unwrap_err(), BackendError::Canceled);
    }
}

async fn a_waiting_prompt_moves_to_a_server_that_goes_idle(version: Version) {
    let (one, two, backend, _dir) = two_servers(version).await;
    let (a, b, waiting) = (holding_job(), holding_job(), job(512, 8));
    let (stop_a, stop_b) = (CancellationToken::new(), CancellationToken::new());
    let (ra, rb) = (start(&backend, &a, &stop_a), start(&backend, &b, &stop_b));
    until("both servers run a prompt", || one.queue().0.is_some() && two.queue().0.is_some()).await;
    let rw = start(&backend, &waiting, &CancellationToken::new());
    until("the third waits on one of them", || {
        [&one, &two].iter().any(|r| r.queue().1 == [waiting.job_id.clone()])
    })
    .await;
    // The server it does not wait on goes idle: the prompt leaves its queue and runs there.
    let (stuck, freed) = if one.queue().1.is_empty() { (&two, &one) } else { (&one, &two) };
    let (stop_freed, stop_stuck) = if freed.queue().0.as_deref() == Some(a.job_id.as_str()) {
        (&stop_a, &stop_b)
    } else {
        (&stop_b, &stop_a)
    };
    stop_freed.cancel();
    assert_eq!(rw.await.unwrap().unwrap()[0].bytes, recorded_output(), "it ran on the freed server");
    assert_eq!(freed.runs().last().unwrap().0, waiting.job_id, "the freed server ran it");
    assert!(stuck.queue().1.is_empty(), "gone from the busy server's queue");
    assert!(stuck.queue().0.is_some(), "the busy server's prompt was not touched");
    assert!(stops(stuck).contains(&"/queue".to_owned()), "taken out with a queue delete: {:?}", stops(stuck));
    stop_stuck.cancel();
    for r in [ra, rb] {
        assert_eq!(r.await.unwrap().unwrap_err(), BackendError::Canceled);
    }
}

async fn the_job_timeout_counts_from_when_comfyui_starts_the_prompt(version: Version) {
    let replay = ReplayComfy::start_version(version, Pacing::Recorded).await;
    let dir = templates_dir();
    let mut cfg = config(&replay.url(), dir.path(), "fake", false);
    cfg.job_timeout = Duration::from_millis(1500);
    let backend = Arc::new(ComfyUi::new(cfg).unwrap());
    let holding = start(&backend, &holding_job(), &CancellationToken::new());
    until("the holding prompt runs", || replay.queue().0.is_some()).await;
    let queued = start(&backend, &job(512, 8), &CancellationToken::new());
    until("the second waits", || replay.queue().1.len() == 1).await;
    // The first runs past the timeout and is stopped; the second, which waited behind it
    // about as long, then gets its own 1.5 s and needs about 0.9 s of it.
    let err = holding.await.unwrap().unwrap_err();
    assert!(matches!(&err, BackendError::Retryable(m) if m.contains("comfyui.job_timeout")), "{err:?}");
    assert_eq!(queued.await.unwrap().unwrap()[0].bytes, recorded_output());
    assert!(replay.runs()[0].1.next_waiting);
}

async fn a_withdrawn_prompt_leaves_the_queue_only_if_it_has_not_started(version: Version) {
    let replay = ReplayComfy::start_version(version, Pacing::Instant).await;
    let dir = templates_dir();
    let backend = Arc::new(ComfyUi::new(config(&replay.url(), dir.path(), "fake", false)).unwrap());
    let (holding, waiting) = (holding_job(), job(512, 8));
    let stop = CancellationToken::new();
    let running = start(&backend, &holding, &stop);
    until("the holding prompt runs", || replay.queue().0.as_deref() == Some(holding.job_id.as_str())).await;
    let queued = start(&backend, &waiting, &CancellationToken::new());
    until("the second waits", || replay.queue().1 == [waiting.job_id.clone()]).await;
    assert!(!backend.withdraw("not-a-job-here"), "nothing to withdraw");
    assert!(backend.withdraw(&waiting.job_id));
    assert_eq!(queued.await.unwrap().unwrap_err(), BackendError::Withdrawn);
    assert_eq!(replay.queue(), (Some(holding.job_id.clone()), vec![]), "gone from the queue, never run");
    // The running one is asked too, and carries on: a started prompt is never taken out.
    assert!(backend.withdraw(&holding.job_id));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(replay.queue().0.as_deref(), Some(holding.job_id.as_str()));
    assert_eq!(
        stops(&replay),
        ["/queue"],
        "one queue delete for the waiting prompt, nothing for the running one"
    );
    stop.cancel();
    assert_eq!(running.await.unwrap().unwrap_err(), BackendError::Canceled);
}

async fn cancel_removes_a_waiting_prompt_from_the_queue_and_interrupts_only_the_running_one(
    version: Version,
) {
    let replay = ReplayComfy::start_version(version, Pacing::Instant).await;
    let dir = templates_dir();
    let backend = Arc::new(ComfyUi::new(config(&replay.url(), dir.path(), "fake", false)).unwrap());
    let (holding, waiting) = (holding_job(), job(512, 8));
    let (stop_holding, stop_waiting) = (CancellationToken::new(), CancellationToken::new());
    let running = start(&backend, &holding, &stop_holding);
    until("the holding prompt runs", || replay.queue().0.as_deref() == Some(holding.job_id.as_str())).await;
    let queued = start(&backend, &waiting, &stop_waiting);
    until("the second prompt waits", || replay.queue().1 == [waiting.job_id.clone()]).await;

    // The waiting one: removed from ComfyUI's queue, the running one untouched.
    stop_waiting.cancel();
    assert_eq!(queued.await.unwrap().unwrap_err(), BackendError::Canceled);
    assert_eq!(replay.queue(), (Some(holding.job_id.clone()), vec![]), "gone from the replayed queue");

    // The running one: interrupted, and only it; the prompt waiting behind it then runs.
    let next = job(512, 8);
    let after = start(&backend, &next, &CancellationToken::new());
    until("a prompt waits behind the holding one", || replay.queue().1 == [next.job_id.clone()]).await;
    stop_holding.cancel();
    assert_eq!(running.await.unwrap().unwrap_err(), BackendError::Canceled);
    assert_eq!(after.await.unwrap().unwrap()[0].bytes, recorded_output());
    let (w, h) = (waiting.job_id, holding.job_id);
    let expected = match version {
        // The cancel endpoint is tried once per server (404), then /queue and /interrupt.
        Version::V0_3_64 => vec![format!("/api/jobs/{w}/cancel"), "/queue".into(), "/interrupt".into()],
        Version::V0_26 => vec![format!("/api/jobs/{w}/cancel"), format!("/api/jobs/{h}/cancel")],
    };
    assert_eq!(stops(&replay), expected);
}

async fn a_history_entry_stored_late_is_waited_for(version: Version) {
    let replay = ReplayComfy::start_version(version, Pacing::Instant).await;
    let dir = templates_dir();
    let backend = ComfyUi::new(config(&replay.url(), dir.path(), "fake", false)).unwrap();
    replay.script(Recording::FakeSampler, Some(Fault::HistoryLate { ms: 400 }));
    let artifacts = run(&backend, job(512, 8), Sink::discard()).await.unwrap();
    assert_eq!(artifacts[0].bytes, recorded_output());
    assert!(replay.count("GET", "/history/") >= 2, "asked again until the entry was there");
}

async fn a_job_id_that_is_not_a_uuid_is_never_sent(version: Version) {
    let replay = ReplayComfy::start_version(version, Pacing::Instant).await;
    let dir = templates_dir();
    let backend = ComfyUi::new(config(&replay.url(), dir.path(), "fake", false)).unwrap();
    let mut input = job(512, 8);
    input.job_id = "Job-1".into();
    let err = run(&backend, input, Sink::discard()).await.unwrap_err();
    assert!(matches!(&err, BackendError::Permanent(m) if m.contains("not a UUID")), "{err:?}");
    // An uppercase UUID goes out in canonical form.
    let mut input = job(512, 8);
    input.job_id = input.job_id.to_uppercase();
    run(&backend, input, Sink::discard()).await.unwrap();
    assert_eq!(replay.count("POST", "/prompt"), 1);
    prompt_ids_are_canonical(&replay);
}

/// A job through the mesh that holds its ComfyUI server until canceled.
fn holding_request() -> SubmitJobRequest {
    let mut r = comfyui_request(256);
    // 100 steps or more play the recorded interrupt run (SubmitJob takes at most 150).
    r.spec.as_mut().unwrap().steps = 120;
    r
}

/// The job's status now.
async fn status(mesh: &Mesh, token: &str, id: &str) -> JobStatus {
    let job = mesh
        .jobs(token)
        .get_job(sakuga_proto::v1::GetJobRequest { job_id: id.to_owned() })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    JobStatus::try_from(job.status).unwrap()
}

/// Waits (up to 30 s) until the job has `want`.
async fn until_status(mesh: &Mesh, token: &str, id: &str, want: JobStatus) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let now = status(mesh, token, id).await;
        if now == want {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "job {id} is {now:?}, not {want:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn cancel_job(mesh: &Mesh, token: &str, id: &str) {
    mesh.jobs(token).cancel_job(sakuga_proto::v1::CancelJobRequest { job_id: id.to_owned() }).await.unwrap();
}

/// A generator configuration driving the ComfyUI at `url` with the templates of `dir`.
fn comfy_generator(c: &mut sakuga_generator::Config, worker_id: &str, url: &str, dir: &Path) {
    c.worker_id = worker_id.into();
    c.backend = "comfyui".into();
    c.comfyui = config(url, dir, "fake", true);
}

/// A mesh whose one generator (`comfy-one`) drives the ComfyUI at `url`.
async fn mesh_on_comfy(url: &str, dir: &Path) -> Mesh {
    let mut mesh = Mesh::without_generator().await;
    mesh.attach_generator_with(|c| comfy_generator(c, "comfy-one", url, dir)).await;
    mesh
}

/// Another generator on `mesh`, `worker_id`, driving the ComfyUI at `url`.
async fn another_comfy_worker(
    mesh: &Mesh,
    worker_id: &str,
    url: &str,
    dir: &Path,
) -> sakuga_testkit::Spawned {
    let mut cfg = sakuga_testkit::generator_config(&mesh.env, &mesh.auth, &mesh.scheduler, &mesh.organizer);
    comfy_generator(&mut cfg, worker_id, url, dir);
    sakuga_testkit::spawn_generator(cfg).await.unwrap()
}

async fn one_server_and_three_jobs_the_third_waits_in_the_scheduler(version: Version) {
    let replay = ReplayComfy::start_version(version, Pacing::Instant).await;
    let dir = templates_dir();
    let mesh = mesh_on_comfy(&replay.url(), dir.path()).await;
    let alice = mesh.person("alice").await;
    let mut jobs = mesh.jobs(&alice.token);
    let mut submit =
        async |r: SubmitJobRequest| jobs.submit_job(r).await.unwrap().into_inner().job.unwrap().id;
    let first = submit(holding_request()).await;
    until_status(&mesh, &alice.token, &first, JobStatus::Running).await;
    let second = submit(comfyui_request(512)).await;
    let third = submit(comfyui_request(512)).await;
    until("the second job waits in ComfyUI's queue", || replay.queue().1 == [second.clone()]).await;
    // The second waits in ComfyUI: assigned (queued on the worker), not running; the third
    // waits in the scheduler.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(status(&mesh, &alice.token, &second).await, JobStatus::Assigned);
    assert_eq!(status(&mesh, &alice.token, &third).await, JobStatus::Queued);
    assert_eq!(replay.count("POST", "/prompt"), 2, "the third was never sent to ComfyUI");
    // Operators see one slot running and one queue slot holding a waiting job.
    let scheduler = crate::metrics::scrape(mesh.scheduler.metrics.unwrap()).await;
    let generator = crate::metrics::scrape(mesh.generator.as_ref().unwrap().metrics.unwrap()).await;
    for (text, label) in [(&scheduler, ""), (&generator, r#"{backend="comfyui"}"#)] {
        for (name, want) in [
            ("sakuga_worker_slots", 1.0),
            ("sakuga_worker_slots_busy", 1.0),
            ("sakuga_worker_queue_slots", 1.0),
            ("sakuga_worker_queue_slots_busy", 1.0),
        ] {
            let got = crate::metrics::value(text, &format!("{name}{label}"));
            assert!((got - want).abs() < f64::EPSILON, "{name}{label} = {got}");
        }
    }

    // Canceling the waiting job takes it out of ComfyUI's queue and ends it canceled; its
    // queue slot then takes the third.
    cancel_job(&mesh, &alice.token, &second).await;
    assert_eq!(mesh.finished(&alice.token, &second).await.status, i32::from(JobStatus::Canceled));
    until("the third waits in ComfyUI's queue", || replay.queue().1 == [third.clone()]).await;
    assert_eq!(replay.queue().0.as_deref(), Some(first.as_str()), "the running job was not touched");

    cancel_job(&mesh, &alice.token, &first).await;
    for (id, want) in
        [(&first, JobStatus::Canceled), (&second, JobStatus::Canceled), (&third, JobStatus::Succeeded)]
    {
        let job = mesh.finished(&alice.token, id).await;
        assert_eq!(job.status, i32::from(want), "{job:?}");
        assert_eq!(job.attempts, 1, "{job:?}");
    }
    let ran: Vec<String> = replay.runs().into_iter().map(|(id, _)| id).collect();
    assert_eq!(ran, [first, third], "the canceled waiting job never ran");
    mesh.stop().await;
}

async fn two_workers_and_two_jobs_both_run_at_once(version: Version) {
    let one = ReplayComfy::start_version(version, Pacing::Instant).await;
    let two = ReplayComfy::start_version(version, Pacing::Instant).await;
    let dir = templates_dir();
    let mesh = mesh_on_comfy(&one.url(), dir.path()).await;
    let second_worker = another_comfy_worker(&mesh, "comfy-two", &two.url(), dir.path()).await;
    let alice = mesh.person("alice").await;
    // Both workers attached before the jobs come, so either could take both.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut jobs = mesh.jobs(&alice.token);
    let mut ids = Vec::new();
    for _ in 0..2 {
        ids.push(jobs.submit_job(holding_request()).await.unwrap().into_inner().job.unwrap().id);
    }
    until("each server runs one", || one.queue().0.is_some() && two.queue().0.is_some()).await;
    assert!(one.queue().1.is_empty() && two.queue().1.is_empty(), "nothing stacked behind a running job");
    for id in &ids {
        until_status(&mesh, &alice.token, id, JobStatus::Running).await;
        cancel_job(&mesh, &alice.token, id).await;
        assert_eq!(mesh.finished(&alice.token, id).await.status, i32::from(JobStatus::Canceled));
    }
    second_worker.stop().await.unwrap();
    mesh.stop().await;
}

async fn a_job_waiting_on_a_busy_worker_goes_to_a_worker_with_a_free_slot(version: Version) {
    let one = ReplayComfy::start_version(version, Pacing::Instant).await;
    let two = ReplayComfy::start_version(version, Pacing::Instant).await;
    let dir = templates_dir();
    let mesh = mesh_on_comfy(&one.url(), dir.path()).await;
    let alice = mesh.person("alice").await;
    let mut jobs = mesh.jobs(&alice.token);
    let holding = jobs.submit_job(holding_request()).await.unwrap().into_inner().job.unwrap().id;
    until_status(&mesh, &alice.token, &holding, JobStatus::Running).await;
    let waiting = jobs.submit_job(comfyui_request(512)).await.unwrap().into_inner().job.unwrap().id;
    until("the second waits in the first server's queue", || one.queue().1 == [waiting.clone()]).await;
    until_status(&mesh, &alice.token, &waiting, JobStatus::Assigned).await;

    // A second worker attaches with an idle server and nothing queued for it: the waiting
    // job is withdrawn from the busy server's queue and runs there, its attempt not counted.
    let second_worker = another_comfy_worker(&mesh, "comfy-two", &two.url(), dir.path()).await;
    let job = mesh.finished(&alice.token, &waiting).await;
    assert_eq!(job.status, i32::from(JobStatus::Succeeded), "{job:?}");
    assert_eq!(job.attempts, 1, "a withdrawal is not an attempt: {job:?}");
    assert_eq!(two.runs().len(), 1, "it ran on the idle server");
    assert_eq!(
        one.queue(),
        (Some(holding.clone()), vec![]),
        "gone from the busy queue, the running job untouched"
    );
    assert!(one.runs().iter().all(|(id, _)| *id != waiting), "it never ran on the busy server");
    cancel_job(&mesh, &alice.token, &holding).await;
    assert_eq!(mesh.finished(&alice.token, &holding).await.status, i32::from(JobStatus::Canceled));
    second_worker.stop().await.unwrap();
    mesh.stop().await;
}
