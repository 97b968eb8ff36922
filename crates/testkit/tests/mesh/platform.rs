//! Platform faults are not job failures: with the organizer gone or its storage full, the
//! generator keeps the finished artifacts, says what it waits for and stores them once
//! storage is back; no job spends an attempt.

// Gauges and counters are small integers, exact in an f64.
#![allow(clippy::float_cmp)]

use std::{path::Path, time::Duration};

use sakuga_proto::v1::{GetFileRequest, GetJobRequest, JobStatus};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::{
    common::{Backend, Mesh, Person, image_request},
    metrics::{scrape, value},
};

/// Submits `n` jobs as `person`; returns their ids.
async fn submit(mesh: &Mesh, person: &Person, n: usize) -> Vec<String> {
    let mut jobs = mesh.jobs(&person.token);
    let mut ids = Vec::new();
    for i in 0..n {
        let job = jobs.submit_job(image_request(&format!("kept {i}"), 4)).await.unwrap().into_inner();
        ids.push(job.job.unwrap().id);
    }
    ids
}

/// Waits (up to a minute) until a job's progress says it waits for storage with `stage`.
async fn until_waiting(mesh: &Mesh, person: &Person, ids: &[String], stage: &str) {
    let mut jobs = mesh.jobs(&person.token);
    for _ in 0..600 {
        for id in ids {
            let job =
                jobs.get_job(GetJobRequest { job_id: id.clone() }).await.unwrap().into_inner().job.unwrap();
            // Queued (0) or on its first attempt (1); never a second one, never failed.
            assert!(job.attempts <= 1, "no attempt spent while waiting: {job:?}");
            assert_ne!(job.status, i32::from(JobStatus::Failed), "{job:?}");
            if job.progress.is_some_and(|p| p.stage == stage) {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no job said {stage:?}");
}

/// Every job succeeded on its first attempt.
async fn all_succeeded_at_once(mesh: &Mesh, person: &Person, ids: &[String]) {
    for id in ids {
        let job = mesh.finished(&person.token, id).await;
        assert_eq!(job.status, i32::from(JobStatus::Succeeded), "{job:?}");
        assert_eq!(job.attempts, 1, "the outage cost no attempt: {job:?}");
        assert_eq!(job.file_ids.len(), 1, "{job:?}");
    }
}

/// The partial objects under `.tmp` are gone (an upload or the write probe in flight may
/// hold one for an instant: looked at until none is there, for at most 5 s).
async fn no_partial_left(root: &Path) {
    let mut left = Vec::new();
    for _ in 0..50 {
        left = std::fs::read_dir(root.join(".tmp"))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        if left.is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("partial objects stay: {left:?}");
}

async fn organizer_health(mesh: &Mesh) -> Option<i32> {
    let mut health = HealthClient::new(mesh.channel(&mesh.organizer.addr_string()));
    health.check(HealthCheckRequest { service: String::new() }).await.ok().map(|r| r.into_inner().status)
}

/// Waits (up to 30 s) until the organizer's health says `status`; panics with `what` if not.
async fn until_organizer(mesh: &Mesh, status: ServingStatus, what: &str) {
    for _ in 0..300 {
        if organizer_health(mesh).await == Some(status as i32) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}");
}

#[tokio::test]
async fn jobs_finished_while_the_organizer_is_down_are_stored_when_it_is_back() {
    let mut mesh = Mesh::start().await;
    let alice = mesh.person("alice").await;
    let addr = mesh.organizer.addr;
    let old = std::mem::replace(&mut mesh.organizer, sakuga_testkit::Spawned::unused());
    old.stop().await.unwrap();
    let ids = submit(&mesh, &alice, 5).await;
    until_waiting(&mesh, &alice, &ids, "waiting for storage: organizer unreachable").await;
    // Away for a while longer than the first retries, then back on the same address.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let mut cfg = sakuga_testkit::organizer_config(&mesh.env, &mesh.auth, mesh.files_root());
    cfg.server.listen = addr;
    mesh.organizer = sakuga_testkit::spawn_organizer(cfg).await.unwrap();
    all_succeeded_at_once(&mesh, &alice, &ids).await;
    let metrics = generator_metrics(&mesh).await;
    assert!(
        value(&metrics, r#"sakuga_generator_upload_retries_total{reason="organizer_unreachable"}"#) >= 1.0
    );
    assert_eq!(value(&metrics, r#"sakuga_generator_artifacts_waiting{held="memory"}"#), 0.0);
    mesh.stop().await;
}

async fn generator_metrics(mesh: &Mesh) -> String {
    scrape(mesh.generator.as_ref().unwrap().metrics.unwrap()).await
}

/// A small tmpfs over the organizer's storage root, unmounted when dropped.
struct SmallDisk<'a> {
    root: &'a Path,
}

impl<'a> SmallDisk<'a> {
    /// `None` when this process may not mount (not root, or in a container without the
    /// capability).
    fn mount(root: &'a Path) -> Option<Self> {
        std::fs::create_dir_all(root).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=3m", "tmpfs"])
            .arg(root)
            .stderr(std::process::Stdio::null())
            .status();
        status.is_ok_and(|s| s.success()).then_some(Self { root })
    }

    /// Writes a file until the disk refuses with ENOSPC; returns it.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write as _;
        let path = self.root.join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        for chunk in [64 * 1024, 4096, 512] {
            loop {
                match f.write_all(&vec![0; chunk]) {
                    Ok(()) => {}
                    Err(e) if e.raw_os_error() == Some(28) => break,
                    Err(e) => panic!("filling the disk: {e}"),
                }
            }
        }
        path
    }
}

impl Drop for SmallDisk<'_> {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(self.root).status();
    }
}

#[tokio::test]
async fn jobs_finished_while_storage_is_full_are_stored_when_space_is_back() {
    let mut mesh = Mesh::without_generator().await;
    let root = mesh.files_root();
    let Some(disk) = SmallDisk::mount(&root) else {
        eprintln!(
            "SKIPPED: this process may not mount a tmpfs (needs root); the real full disk was not \
             tried, only the injected one (storage_full_by_fault_injection_...)"
        );
        mesh.stop().await;
        return;
    };
    let filler = disk.fill();
    full_storage_costs_no_attempt(&mut mesh, move || std::fs::remove_file(filler).unwrap()).await;
    mesh.stop().await;
    drop(disk);
}

/// The same with ENOSPC injected by the organizer's test faults, for hosts where a test may
/// not mount a filesystem.
#[tokio::test]
async fn storage_full_by_fault_injection_costs_no_attempt_either() {
    let mut mesh = Mesh::without_generator().await;
    let full = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let faults = sakuga_organizer::Faults { storage_full: Some(full.clone()), ..Default::default() };
    mesh.restart_organizer_with_faults(|_| {}, faults).await;
    full_storage_costs_no_attempt(&mut mesh, move || full.store(false, std::sync::atomic::Ordering::SeqCst))
        .await;
    mesh.stop().await;
}

/// With the organizer's storage full: twenty jobs (as on the stack where the outage cost
/// six of them for good) wait, the organizer is NOT_SERVING, then `free` makes room and
/// every job succeeds on its first attempt, leaving no partial object.
async fn full_storage_costs_no_attempt(mesh: &mut Mesh, free: impl FnOnce()) {
    let root = mesh.files_root();
    // Four slots: four jobs wait at once, the rest queue behind them.
    mesh.attach_generator_with(|g| g.slots = 4).await;
    let alice = mesh.person("alice").await;
    let ids = submit(mesh, &alice, 20).await;
    until_waiting(mesh, &alice, &ids, "waiting for storage: storage full").await;
    until_organizer(mesh, ServingStatus::NotServing, "the organizer says NOT_SERVING while it cannot write")
        .await;
    // Full for a while longer: the uploads are retried, no attempt is spent.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let metrics = generator_metrics(mesh).await;
    assert!(value(&metrics, r#"sakuga_generator_upload_retries_total{reason="storage_full"}"#) >= 4.0);
    let held = value(&metrics, r#"sakuga_generator_artifacts_waiting{held="memory"}"#);
    assert_eq!(held, 4.0, "one artifact of each slot's job waits, in memory");
    until_waiting(mesh, &alice, &ids, "waiting for storage: storage full").await;
    // Nothing half-written is left of the refused uploads.
    no_partial_left(&root).await;

    free();
    all_succeeded_at_once(mesh, &alice, &ids).await;
    no_partial_left(&root).await;
    until_organizer(mesh, ServingStatus::Serving, "SERVING again once it can write").await;
    let metrics = generator_metrics(mesh).await;
    assert_eq!(value(&metrics, r#"sakuga_generator_artifacts_waiting{held="memory"}"#), 0.0);
}

#[tokio::test]
async fn past_the_longest_wait_the_job_is_queued_again_without_spending_an_attempt() {
    let mut mesh = Mesh::without_generator().await;
    mesh.attach_generator_with(|g| g.upload_wait_max = Duration::from_secs(1)).await;
    let alice = mesh.person("alice").await;
    let old = std::mem::replace(&mut mesh.organizer, sakuga_testkit::Spawned::unused());
    old.stop().await.unwrap();
    let ids = submit(&mesh, &alice, 1).await;
    let mut jobs = mesh.jobs(&alice.token);
    let mut seen = None;
    for _ in 0..300 {
        let job =
            jobs.get_job(GetJobRequest { job_id: ids[0].clone() }).await.unwrap().into_inner().job.unwrap();
        if !job.error.is_empty() {
            seen = Some(job);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let job = seen.expect("the attempt ended");
    // Queued again (after a minute), the attempt given back, the cause named.
    assert_eq!(job.status, i32::from(JobStatus::Queued), "{job:?}");
    assert_eq!(job.attempts, 0, "a platform failure is not an attempt: {job:?}");
    assert!(job.error.starts_with("organizer unreachable: "), "{}", job.error);
    assert!(job.error.contains("upload_wait_max (1s)"), "{}", job.error);
    mesh.stop().await;
}

#[tokio::test]
async fn a_job_canceled_while_it_waits_for_storage_drops_its_artifacts() {
    let mut mesh = Mesh::without_generator().await;
    let spool = mesh.env.dir.path().join("spool");
    std::fs::create_dir_all(&spool).unwrap();
    // No memory for held artifacts: they wait in spool files, which must go with the job.
    let dir = spool.clone();
    mesh.attach_generator_with(move |g| {
        g.held_memory_max_bytes = 0;
        g.spool_dir = dir;
    })
    .await;
    let alice = mesh.person("alice").await;
    let old = std::mem::replace(&mut mesh.organizer, sakuga_testkit::Spawned::unused());
    old.stop().await.unwrap();
    let ids = submit(&mesh, &alice, 1).await;
    until_waiting(&mesh, &alice, &ids, "waiting for storage: organizer unreachable").await;
    let metrics = generator_metrics(&mesh).await;
    assert_eq!(value(&metrics, r#"sakuga_generator_artifacts_waiting{held="spool"}"#), 1.0);
    assert_eq!(std::fs::read_dir(&spool).unwrap().count(), 1, "the artifact waits in a spool file");

    let mut jobs = mesh.jobs(&alice.token);
    jobs.cancel_job(sakuga_proto::v1::CancelJobRequest { job_id: ids[0].clone() }).await.unwrap();
    let job = mesh.finished(&alice.token, &ids[0]).await;
    assert_eq!(job.status, i32::from(JobStatus::Canceled), "{job:?}");
    let mut dropped = false;
    for _ in 0..100 {
        let metrics = generator_metrics(&mesh).await;
        if value(&metrics, r#"sakuga_generator_artifacts_waiting{held="spool"}"#) == 0.0
            && std::fs::read_dir(&spool).unwrap().count() == 0
        {
            dropped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(dropped, "the held artifact and its spool file are gone with the lease");
    mesh.stop().await;
}

#[tokio::test]
async fn a_generator_given_two_organizers_stores_through_the_one_that_answers() {
    let mut mesh = Mesh::without_generator().await;
    // The first address answers nothing (a replica that is gone); the second is the organizer.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let live = mesh.organizer.addr_string();
    // One slot: uploads one after another. The first meets the dead replica and leaves it
    // out for a few seconds; the dead one is tried again only after that.
    mesh.attach_generator_with(move |g| {
        g.organizer_addr = format!("{dead}, {live}");
        g.slots = 1;
    })
    .await;
    let alice = mesh.person("alice").await;
    let ids = submit(&mesh, &alice, 3).await;
    all_succeeded_at_once(&mesh, &alice, &ids).await;
    let metrics = generator_metrics(&mesh).await;
    // The dead replica cost a retry, and not one per upload: it rested after it refused.
    let retried = value(&metrics, r#"sakuga_generator_upload_retries_total{reason="organizer_unreachable"}"#);
    assert!((1.0..3.0).contains(&retried), "{retried}");
    mesh.stop().await;
}

#[tokio::test]
async fn jobs_finished_while_the_object_store_is_down_for_a_minute_are_stored_when_it_is_back() {
    let mut mesh = Mesh::on(Backend::S3).await;
    mesh.attach_generator_with(|g| g.slots = 4).await;
    let alice = mesh.person("alice").await;
    let down_at = tokio::time::Instant::now();
    mesh.weed.as_mut().unwrap().stop();
    let ids = submit(&mesh, &alice, 20).await;
    until_waiting(&mesh, &alice, &ids, "waiting for storage: storage unavailable").await;
    until_organizer(
        &mesh,
        ServingStatus::NotServing,
        "the organizer says NOT_SERVING while the store is away",
    )
    .await;
    // A minute without the store; the jobs keep waiting and spend nothing.
    tokio::time::sleep_until(down_at + Duration::from_mins(1)).await;
    until_waiting(&mesh, &alice, &ids, "waiting for storage: storage unavailable").await;
    let metrics = generator_metrics(&mesh).await;
    assert!(value(&metrics, r#"sakuga_generator_upload_retries_total{reason="storage_unavailable"}"#) >= 4.0);

    mesh.weed.as_mut().unwrap().restart().await.unwrap();
    all_succeeded_at_once(&mesh, &alice, &ids).await;
    // The bucket holds the records' bytes and thumbnails, nothing half-written.
    let mut files = mesh.files(&alice.token);
    let mut expected = std::collections::BTreeSet::new();
    for id in &ids {
        let job = mesh.finished(&alice.token, id).await;
        let file = files
            .get_file(GetFileRequest { file_id: job.file_ids[0].clone() })
            .await
            .unwrap()
            .into_inner()
            .file
            .unwrap();
        expected.insert(format!("blobs/{}", file.sha256));
        expected.insert(format!(".thumbs/blobs/{}", file.sha256));
    }
    let stored: std::collections::BTreeSet<String> = mesh.stored_keys().await.into_iter().collect();
    assert_eq!(stored, expected);
    until_organizer(&mesh, ServingStatus::Serving, "SERVING again once the store answers").await;
    mesh.stop().await;
}
