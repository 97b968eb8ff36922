//! WatchJob under hostile load: a call for a job the caller cannot see holds nothing, a
//! watched job's channel lives exactly as long as its watchers, and the ceilings per user
//! and per connection refuse the excess and give slots back when streams end.

// Gauges and counters are small integers, exact in an f64.
#![allow(clippy::float_cmp)]

use std::time::Duration;

use futures_util::StreamExt as _;
use sakuga_proto::v1::{
    CancelJobRequest, JobStatus, WatchJobRequest, WatchJobResponse, job_event,
    job_service_client::JobServiceClient,
};
use sakuga_testkit::Authed;
use tonic::{Code, Status, Streaming};
use uuid::Uuid;

use crate::{
    common::{Mesh, image_request},
    metrics::{scrape, value},
};

type Jobs = JobServiceClient<Authed>;

/// (jobs with an event channel, open watch streams) on the scheduler, from its metrics.
async fn held(mesh: &Mesh) -> (f64, f64) {
    let text = scrape(mesh.scheduler.metrics.unwrap()).await;
    (value(&text, "sakuga_job_event_channels"), value(&text, "sakuga_job_watchers"))
}

/// Scrapes until [`held`] reads `want`: a stream's end reaches the server a moment after
/// the client drops it.
async fn until_held(mesh: &Mesh, want: (f64, f64)) {
    let mut last = (f64::NAN, f64::NAN);
    for _ in 0..400 {
        last = held(mesh).await;
        if last == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("(channels, watchers) stayed at {last:?}, expected {want:?}");
}

async fn watch(client: &Jobs, job_id: &str) -> Result<Streaming<WatchJobResponse>, Status> {
    client
        .clone()
        .watch_job(WatchJobRequest { job_id: job_id.to_owned() })
        .await
        .map(tonic::Response::into_inner)
}

/// Opens a watch and reads its snapshot (so the server-side stream is running).
async fn watching(client: &Jobs, job_id: &str) -> Streaming<WatchJobResponse> {
    let mut stream = watch(client, job_id).await.unwrap();
    let first = stream.next().await.unwrap().unwrap().event.unwrap().kind;
    assert!(matches!(first, Some(job_event::Kind::Snapshot(_))), "{first:?}");
    stream
}

fn refusals(text: &str, ceiling: &str) -> f64 {
    value(text, &format!(r#"sakuga_limit_refusals_total{{ceiling="{ceiling}"}}"#))
}

#[tokio::test]
async fn two_thousand_watches_of_unknown_or_foreign_jobs_leave_no_channel_behind() {
    let mesh = Mesh::without_generator().await;
    let alice = mesh.person("alice").await;
    let bob = mesh.person("bob").await;
    let bobs =
        mesh.jobs(&bob.token).submit_job(image_request("bob's", 1)).await.unwrap().into_inner().job.unwrap();
    let jobs = mesh.jobs(&alice.token);
    // Random ids, and every hundredth call bob's real job: NOT_FOUND for alice all the same.
    let calls = (0..2_000).map(|i| {
        let id = if i % 100 == 0 { bobs.id.clone() } else { Uuid::new_v4().to_string() };
        let jobs = jobs.clone();
        async move { watch(&jobs, &id).await.map(|_| ()) }
    });
    let answers: Vec<_> = futures_util::stream::iter(calls).buffer_unordered(64).collect().await;
    assert_eq!(answers.len(), 2_000);
    for a in answers {
        assert_eq!(a.unwrap_err().code(), Code::NotFound);
    }
    assert_eq!(held(&mesh).await, (0.0, 0.0), "a refused watch left a channel or a slot behind");

    // The counts are live: a permitted watch shows in both, and leaves with its stream.
    let own = jobs.clone().submit_job(image_request("alice's", 1)).await.unwrap().into_inner().job.unwrap();
    let stream = watching(&jobs, &own.id).await;
    assert_eq!(held(&mesh).await, (1.0, 1.0));
    drop(stream);
    until_held(&mesh, (0.0, 0.0)).await;
    mesh.stop().await;
}

#[tokio::test]
async fn a_jobs_channel_is_shared_by_its_watchers_and_goes_with_the_last_one_or_the_final_status() {
    let mesh = Mesh::without_generator().await;
    let alice = mesh.person("alice").await;
    let jobs = mesh.jobs(&alice.token);
    let job =
        jobs.clone().submit_job(image_request("watched twice", 1)).await.unwrap().into_inner().job.unwrap();
    let first = watching(&jobs, &job.id).await;
    let second = watching(&mesh.jobs(&alice.token), &job.id).await;
    assert_eq!(held(&mesh).await, (1.0, 2.0), "one channel for both watchers");
    drop(first);
    until_held(&mesh, (1.0, 1.0)).await;
    drop(second);
    until_held(&mesh, (0.0, 0.0)).await;

    // A watcher still connected at the final status: its stream ends there, and with it
    // the channel, without the client doing anything.
    let mut third = watching(&jobs, &job.id).await;
    assert_eq!(held(&mesh).await, (1.0, 1.0));
    jobs.clone().cancel_job(CancelJobRequest { job_id: job.id.clone() }).await.unwrap();
    let mut last = None;
    while let Some(msg) = third.next().await {
        last = msg.unwrap().event.and_then(|e| e.kind);
    }
    let Some(job_event::Kind::StatusChange(change)) = last else {
        panic!("ended without a status: {last:?}")
    };
    assert_eq!(change.status, i32::from(JobStatus::Canceled));
    until_held(&mesh, (0.0, 0.0)).await;
    mesh.stop().await;
}

#[tokio::test]
async fn watchers_over_each_ceiling_are_refused_and_a_freed_slot_is_usable_again() {
    let mesh = Mesh::with_scheduler_config(|c| {
        c.watch.max_per_user = 3;
        c.watch.max_per_connection = 2;
    })
    .await;
    let alice = mesh.person("alice").await;
    let bob = mesh.person("bob").await;
    let one = mesh.jobs(&alice.token); // each client is its own connection
    let job = one.clone().submit_job(image_request("popular", 1)).await.unwrap().into_inner().job.unwrap();
    let w1 = watching(&one, &job.id).await;
    let _w2 = watching(&one, &job.id).await;
    let e = watch(&one, &job.id).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("watchers_per_connection"), "{}", e.message());

    let two = mesh.jobs(&alice.token);
    let _w3 = watching(&two, &job.id).await;
    let e = watch(&two, &job.id).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("watchers_per_user"), "{}", e.message());

    // Another user is not held to alice's share.
    let bobs = mesh.jobs(&bob.token);
    let bobs_job =
        bobs.clone().submit_job(image_request("bob's", 1)).await.unwrap().into_inner().job.unwrap();
    let _b1 = watching(&bobs, &bobs_job.id).await;

    let text = scrape(mesh.scheduler.metrics.unwrap()).await;
    assert_eq!(refusals(&text, "watchers_per_connection"), 1.0);
    assert_eq!(refusals(&text, "watchers_per_user"), 1.0);
    assert_eq!(held(&mesh).await, (2.0, 4.0));

    // The first stream ends: its slot (of alice, of the first connection) comes back.
    drop(w1);
    until_held(&mesh, (2.0, 3.0)).await;
    let _again = watching(&one, &job.id).await;
    let e = watch(&one, &job.id).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "full again: {e:?}");
    mesh.stop().await;
}

/// The reported leak, as an attacker would do it: the scheduler as a process of its own,
/// 2,000 `WatchJob` calls for random ids, and its resident size read from /proc.
#[tokio::test]
async fn two_thousand_watches_of_random_ids_leave_the_scheduler_process_within_ten_percent() {
    const MIB: u64 = 1024 * 1024;
    let mesh = Mesh::without_generator().await;
    let alice = mesh.person("alice").await;
    let scheduler =
        sakuga_testkit::ServiceProcess::start(sakuga_testkit::scheduler_config(&mesh.env, &mesh.auth))
            .await
            .unwrap();
    let jobs = JobServiceClient::new(mesh.authed(&scheduler.addr_string(), &alice.token));
    let burst = |n: usize| {
        let jobs = jobs.clone();
        async move {
            for _ in 0..n / 50 {
                let ids: Vec<String> = (0..50).map(|_| Uuid::new_v4().to_string()).collect();
                let calls = ids.iter().map(|id| watch(&jobs, id));
                for r in futures_util::future::join_all(calls).await {
                    assert_eq!(r.err().map(|e| e.code()), Some(Code::NotFound));
                }
            }
        }
    };
    // Warm up pools, caches and the allocator first: the ceiling is about growth per call.
    burst(200).await;
    let before = scheduler.rss_bytes().unwrap();
    burst(2_000).await;
    let after = scheduler.rss_bytes().unwrap();
    println!(
        "scheduler VmRSS before {} KiB, after 2,000 watches of random ids {} KiB",
        before / 1024,
        after / 1024
    );
    assert!(after <= before + before / 10, "the scheduler grew from {} to {} MiB", before / MIB, after / MIB);
    drop(scheduler);
    mesh.stop().await;
}
