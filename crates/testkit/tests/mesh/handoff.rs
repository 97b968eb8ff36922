//! A submit that finds a free slot hands its job over in its own commit, a completion
//! refills its slot in its own commit, and submits racing for the same slots never give a
//! worker more jobs than it has room for.

use std::time::Duration;

use sakuga_proto::v1::{
    AttachRequest, JobCompleted, JobStatus, LeasedJob, attach_request::Msg, attach_response,
};
use tokio_stream::StreamExt as _;

use crate::{
    common::{Mesh, image_request},
    queue::{Inbound, attach_worker_with},
};

/// Waits for the worker's welcome: from then on the scheduler counts its slots.
async fn welcomed(inbound: &mut Inbound) {
    let msg = inbound.next().await.expect("the stream ended").unwrap();
    assert!(matches!(msg.msg, Some(attach_response::Msg::Welcome(_))), "first message: {msg:?}");
}

/// Assignments that arrive on `inbound` within `quiet` of each other (as leases).
async fn assignments_until_quiet(inbound: &mut Inbound, quiet: Duration) -> Vec<LeasedJob> {
    let mut leases = Vec::new();
    while let Ok(Some(msg)) = tokio::time::timeout(quiet, inbound.next()).await {
        if let Some(attach_response::Msg::Assignment(a)) = msg.unwrap().msg {
            leases.push(LeasedJob { job_id: a.job_id, lease_token: a.lease_token });
        }
    }
    leases
}

#[tokio::test]
async fn a_submit_while_a_slot_is_free_answers_with_its_job_already_assigned() {
    let mesh = Mesh::without_generator().await;
    let (_tx, mut inbound) = attach_worker_with(&mesh, "free", Vec::new(), 1).await;
    welcomed(&mut inbound).await;
    let alice = mesh.person("alice").await;
    let job = mesh.jobs(&alice.token).submit_job(image_request("straight to a slot", 1)).await.unwrap();
    let job = job.into_inner().job.unwrap();
    assert_eq!(job.status, i32::from(JobStatus::Assigned), "under lease when the submit answered: {job:?}");
    assert_eq!(job.worker_id, "free");
    assert_eq!(job.attempts, 1);
    let leases = assignments_until_quiet(&mut inbound, Duration::from_secs(1)).await;
    assert_eq!(leases.iter().map(|l| l.job_id.as_str()).collect::<Vec<_>>(), [job.id.as_str()]);
    mesh.stop().await;
}

#[tokio::test]
async fn submits_racing_for_two_free_slots_give_the_worker_two_jobs_and_the_rest_wait() {
    // Leases that outlast the test: the worker sends no heartbeats, and an expired lease
    // would free its slot.
    let mesh = Mesh::with_scheduler_config(|c| c.lease_ttl = Duration::from_mins(2)).await;
    let (tx, mut inbound) = attach_worker_with(&mesh, "two-slots", Vec::new(), 2).await;
    welcomed(&mut inbound).await;
    let alice = mesh.person("alice").await;
    let submits = (0..24).map(|i| {
        let mut jobs = mesh.jobs(&alice.token);
        async move { jobs.submit_job(image_request(&format!("race {i}"), 1)).await.unwrap().into_inner() }
    });
    let answers = futures_util::future::join_all(submits).await;
    let assigned =
        answers.iter().filter(|a| a.job.as_ref().unwrap().status == i32::from(JobStatus::Assigned)).count();
    assert!(assigned <= 2, "{assigned} submits answered with their job assigned to a worker with 2 slots");

    let leases = assignments_until_quiet(&mut inbound, Duration::from_secs(2)).await;
    assert_eq!(leases.len(), 2, "a worker with 2 slots got {} jobs", leases.len());
    let db = mesh.env.db().await.unwrap();
    let count = |status: &'static str| {
        let db = &db;
        async move {
            db.query_one("SELECT count(*) FROM jobs WHERE status = $1", &[&status])
                .await
                .unwrap()
                .get::<_, i64>(0)
        }
    };
    assert_eq!((count("assigned").await, count("queued").await), (2, 22));

    // A slot freed takes the next one, and only one.
    let done = Msg::Completed(JobCompleted { job: Some(leases[0].clone()), file_ids: Vec::new() });
    tx.send(AttachRequest { msg: Some(done) }).await.unwrap();
    let next = assignments_until_quiet(&mut inbound, Duration::from_secs(2)).await;
    assert_eq!(next.len(), 1, "one slot freed, {} jobs sent", next.len());
    assert_eq!((count("assigned").await, count("queued").await), (2, 21));
    mesh.stop().await;
}

#[tokio::test]
async fn a_completion_takes_the_next_job_for_its_slot_in_its_own_commit() {
    let mesh = Mesh::with_scheduler_config(|c| c.lease_ttl = Duration::from_mins(2)).await;
    let (tx, mut inbound) = attach_worker_with(&mesh, "one-slot", Vec::new(), 1).await;
    welcomed(&mut inbound).await;
    let alice = mesh.person("alice").await;
    for i in 0..4 {
        mesh.jobs(&alice.token).submit_job(image_request(&format!("in line {i}"), 1)).await.unwrap();
    }
    let db = mesh.env.db().await.unwrap();
    let xmin = |id: String| {
        let db = &db;
        async move {
            let id: uuid::Uuid = id.parse().unwrap();
            db.query_one("SELECT xmin::text FROM jobs WHERE id = $1", &[&id])
                .await
                .unwrap()
                .get::<_, String>(0)
        }
    };
    let mut held = assignments_until_quiet(&mut inbound, Duration::from_secs(1)).await;
    assert_eq!(held.len(), 1, "a worker with one slot got {} jobs", held.len());
    for left in (0..3).rev() {
        let done = held.pop().unwrap();
        let msg = Msg::Completed(JobCompleted { job: Some(done.clone()), file_ids: Vec::new() });
        tx.send(AttachRequest { msg: Some(msg) }).await.unwrap();
        held = assignments_until_quiet(&mut inbound, Duration::from_secs(1)).await;
        assert_eq!(held.len(), 1, "one slot freed, {} jobs sent ({left} left after it)", held.len());
        // The completed job and the next one changed in the same transaction.
        assert_eq!(xmin(done.job_id).await, xmin(held[0].job_id.clone()).await, "not refilled in its commit");
    }
    let last = held.pop().unwrap();
    let msg = Msg::Completed(JobCompleted { job: Some(last), file_ids: Vec::new() });
    tx.send(AttachRequest { msg: Some(msg) }).await.unwrap();
    assert!(assignments_until_quiet(&mut inbound, Duration::from_secs(1)).await.is_empty());
    let succeeded: i64 =
        db.query_one("SELECT count(*) FROM jobs WHERE status = 'succeeded'", &[]).await.unwrap().get(0);
    assert_eq!(succeeded, 4);
    mesh.stop().await;
}
