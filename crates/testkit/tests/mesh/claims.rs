//! What the scheduler takes from callers on trust, and what it does not: a retry is a new
//! active job for the cap, a completion names only files recorded for its job, and only the
//! lease holder speaks for a job.

use std::time::Duration;

use sakuga_proto::v1::{
    AttachRequest, CancelJobRequest, JobCompleted, JobFailed, JobProgress, LeasedJob, ProgressUpdate,
    RetryJobRequest, attach_request::Msg, attach_response,
};
use tokio_stream::StreamExt as _;
use tonic::Code;
use uuid::Uuid;

use crate::{
    common::{Mesh, image_request},
    queue::{Inbound, attach_worker, attach_worker_with},
};

/// The next assignment on a worker stream, as its lease.
async fn next_lease(inbound: &mut Inbound) -> LeasedJob {
    loop {
        let msg = tokio::time::timeout(Duration::from_mins(1), inbound.next())
            .await
            .expect("no assignment within a minute")
            .expect("the stream ended")
            .unwrap();
        if let Some(attach_response::Msg::Assignment(a)) = msg.msg {
            return LeasedJob { job_id: a.job_id, lease_token: a.lease_token };
        }
    }
}

/// The next LeaseRevoked on a worker stream: (job id, reason).
async fn next_revoked(inbound: &mut Inbound) -> (String, String) {
    loop {
        let msg = inbound.next().await.expect("the stream ended").unwrap();
        if let Some(attach_response::Msg::LeaseRevoked(r)) = msg.msg {
            return (r.job_id, r.reason);
        }
    }
}

/// A file row recorded for `job` (as the organizer writes them), owned by `owner`.
async fn record_file(mesh: &Mesh, job: Uuid, owner: &str, idx: i32) -> Uuid {
    let id = Uuid::new_v4();
    mesh.env
        .db()
        .await
        .unwrap()
        .execute(
            "INSERT INTO files (id, job_id, owner_id, idx, kind, mime_type, width, height, frames, \
             size_bytes, sha256, storage_key) VALUES ($1, $2, $3, $4, 'image', 'image/png', 64, 64, 1, 100, \
             repeat('0', 64), $5)",
            &[&id, &job, &owner, &idx, &format!("x/{id}.png")],
        )
        .await
        .unwrap();
    id
}

#[tokio::test]
async fn retry_counts_against_the_active_job_cap_like_a_submit() {
    let mesh = Mesh::with_scheduler_config(|c| c.max_active_jobs_per_user = 2).await;
    let alice = mesh.person("alice").await;
    let mut jobs = mesh.jobs(&alice.token);
    let first = jobs.submit_job(image_request("first", 1)).await.unwrap().into_inner().job.unwrap();
    jobs.cancel_job(CancelJobRequest { job_id: first.id.clone() }).await.unwrap();
    // Two others take the whole cap (no generator: they stay queued).
    let mut others = Vec::new();
    for i in 0..2 {
        others.push(
            jobs.submit_job(image_request(&format!("other {i}"), 1)).await.unwrap().into_inner().job.unwrap(),
        );
    }
    let e = jobs.retry_job(RetryJobRequest { job_id: first.id.clone() }).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("the limit is 2"), "{}", e.message());
    let db = mesh.env.db().await.unwrap();
    let status: String = db
        .query_one("SELECT status FROM jobs WHERE id = $1", &[&Uuid::parse_str(&first.id).unwrap()])
        .await
        .unwrap()
        .get(0);
    assert_eq!(status, "canceled", "the refused retry changed nothing");
    let text = crate::metrics::scrape(mesh.scheduler.metrics.unwrap()).await;
    assert!(
        (crate::metrics::value(&text, r#"sakuga_limit_refusals_total{ceiling="active_jobs_per_user"}"#)
            - 1.0)
            .abs()
            < f64::EPSILON
    );
    // Room again once one of the others is canceled.
    jobs.cancel_job(CancelJobRequest { job_id: others[0].id.clone() }).await.unwrap();
    let retried =
        jobs.retry_job(RetryJobRequest { job_id: first.id }).await.unwrap().into_inner().job.unwrap();
    assert_eq!(retried.status, i32::from(sakuga_proto::v1::JobStatus::Queued));
    mesh.stop().await;
}

#[tokio::test]
async fn a_completion_naming_files_not_stored_for_its_job_is_refused_and_fails_the_attempt() {
    let mesh = Mesh::without_generator().await;
    let alice = mesh.person("alice").await;
    let bob = mesh.person("bob").await;
    let mut bobs = mesh.jobs(&bob.token);
    let bobs_job = bobs.submit_job(image_request("bob's", 1)).await.unwrap().into_inner().job.unwrap();
    bobs.cancel_job(CancelJobRequest { job_id: bobs_job.id.clone() }).await.unwrap();
    let bobs_file = record_file(&mesh, Uuid::parse_str(&bobs_job.id).unwrap(), &bob.id, 0).await;

    let job = mesh
        .jobs(&alice.token)
        .submit_job(image_request("alice's", 1))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    let id = Uuid::parse_str(&job.id).unwrap();
    let own_file = record_file(&mesh, id, &alice.id, 0).await;
    let (tx, mut inbound) = attach_worker(&mesh, "greedy", Vec::new()).await;
    let lease = next_lease(&mut inbound).await;
    assert_eq!(lease.job_id, job.id);

    // Its own file and bob's: refused as a whole.
    let completed = JobCompleted {
        job: Some(lease.clone()),
        file_ids: vec![own_file.to_string(), bobs_file.to_string()],
    };
    tx.send(AttachRequest { msg: Some(Msg::Completed(completed)) }).await.unwrap();
    let (revoked, reason) = next_revoked(&mut inbound).await;
    assert_eq!(revoked, job.id);
    assert!(reason.contains("not stored for this job"), "{reason}");
    let db = mesh.env.db().await.unwrap();
    let row = db
        .query_one("SELECT status, attempts, file_ids, error, lease_token FROM jobs WHERE id = $1", &[&id])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "queued", "the attempt failed; attempts remain");
    assert_eq!(row.get::<_, i32>(1), 1);
    assert!(row.get::<_, Vec<Uuid>>(2).is_empty(), "no file attached");
    assert!(row.get::<_, String>(3).contains("not stored for this job"));
    assert_eq!(row.get::<_, Option<Uuid>>(4), None, "the lease is gone");
    let bobs_row = db.query_one("SELECT job_id FROM files WHERE id = $1", &[&bobs_file]).await.unwrap();
    assert_eq!(bobs_row.get::<_, Uuid>(0), Uuid::parse_str(&bobs_job.id).unwrap(), "bob's file untouched");

    // The next attempt (after the backoff) names only the job's own file: accepted.
    let lease = next_lease(&mut inbound).await;
    assert_eq!(lease.job_id, job.id);
    let completed = JobCompleted { job: Some(lease), file_ids: vec![own_file.to_string()] };
    tx.send(AttachRequest { msg: Some(Msg::Completed(completed)) }).await.unwrap();
    let done = mesh.finished(&alice.token, &job.id).await;
    assert_eq!(done.status, i32::from(sakuga_proto::v1::JobStatus::Succeeded));
    assert_eq!(done.file_ids, vec![own_file.to_string()]);
    assert_eq!(done.attempts, 2);
    mesh.stop().await;
}

#[tokio::test]
async fn completions_sent_together_each_get_their_own_outcome() {
    let mesh = Mesh::without_generator().await;
    let alice = mesh.person("alice").await;
    let mut jobs = mesh.jobs(&alice.token);
    let mut ids = Vec::new();
    for i in 0..4 {
        let job = jobs.submit_job(image_request(&format!("together {i}"), 1)).await.unwrap().into_inner();
        ids.push(Uuid::parse_str(&job.job.unwrap().id).unwrap());
    }
    let (tx, mut inbound) = attach_worker_with(&mesh, "batch", Vec::new(), 4).await;
    let mut leases = std::collections::HashMap::new();
    for _ in 0..4 {
        let lease = next_lease(&mut inbound).await;
        leases.insert(Uuid::parse_str(&lease.job_id).unwrap(), lease);
    }
    let lease = |i: usize| leases[&ids[i]].clone();
    // Two files of its own, named in the opposite order to how they were stored.
    let (first, second) =
        (record_file(&mesh, ids[0], &alice.id, 0).await, record_file(&mesh, ids[0], &alice.id, 1).await);
    let foreign = record_file(&mesh, ids[0], &alice.id, 2).await;
    let wrong_lease = LeasedJob { job_id: ids[2].to_string(), lease_token: Uuid::new_v4().to_string() };
    let completions = [
        JobCompleted { job: Some(lease(0)), file_ids: vec![second.to_string(), first.to_string()] },
        JobCompleted { job: Some(lease(1)), file_ids: vec![foreign.to_string()] },
        JobCompleted { job: Some(wrong_lease), file_ids: vec![] },
        JobCompleted { job: Some(lease(3)), file_ids: vec![] },
    ];
    for c in completions {
        tx.send(AttachRequest { msg: Some(Msg::Completed(c)) }).await.unwrap();
    }
    let mut revoked = [next_revoked(&mut inbound).await, next_revoked(&mut inbound).await];
    revoked.sort();
    let mut expected = [(ids[1].to_string(), "not stored"), (ids[2].to_string(), "lease lost")];
    expected.sort_unstable();
    for ((job, reason), (want_job, want_reason)) in revoked.iter().zip(expected) {
        assert_eq!(job, &want_job);
        assert!(reason.contains(want_reason), "{reason}");
    }
    let done = mesh.finished(&alice.token, &ids[0].to_string()).await;
    assert_eq!(done.status, i32::from(sakuga_proto::v1::JobStatus::Succeeded));
    assert_eq!(
        done.file_ids,
        vec![second.to_string(), first.to_string()],
        "in the order the worker named them"
    );
    let done = mesh.finished(&alice.token, &ids[3].to_string()).await;
    assert_eq!(done.status, i32::from(sakuga_proto::v1::JobStatus::Succeeded));
    assert!(done.file_ids.is_empty());
    let db = mesh.env.db().await.unwrap();
    let status = |row: tokio_postgres::Row| (row.get::<_, String>(0), row.get::<_, Option<Uuid>>(1));
    let refused =
        db.query_one("SELECT status, lease_token FROM jobs WHERE id = $1", &[&ids[1]]).await.unwrap();
    assert_eq!(status(refused), ("queued".to_owned(), None), "the attempt with a foreign file failed");
    let untouched =
        db.query_one("SELECT status, lease_token FROM jobs WHERE id = $1", &[&ids[2]]).await.unwrap();
    assert_eq!(
        status(untouched),
        ("assigned".to_owned(), Some(Uuid::parse_str(&lease(2).lease_token).unwrap())),
        "a completion under another lease changes nothing"
    );
    mesh.stop().await;
}

#[tokio::test]
async fn a_second_generator_cannot_progress_fail_or_complete_a_job_leased_to_another() {
    let mesh = Mesh::without_generator().await;
    let alice = mesh.person("alice").await;
    let job = mesh
        .jobs(&alice.token)
        .submit_job(image_request("leased", 1))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    let id = Uuid::parse_str(&job.id).unwrap();
    let (holder_tx, mut holder) = attach_worker(&mesh, "holder", Vec::new()).await;
    let lease = next_lease(&mut holder).await;
    assert_eq!(lease.job_id, job.id);
    let db = mesh.env.db().await.unwrap();
    let snapshot = || async {
        let r = db
            .query_one(
                "SELECT status, attempts, lease_token, worker_id, progress_step, error, file_ids, updated_at \
                 FROM jobs WHERE id = $1",
                &[&id],
            )
            .await
            .unwrap();
        format!(
            "{} {} {:?} {:?} {} {:?} {:?} {:?}",
            r.get::<_, String>(0),
            r.get::<_, i32>(1),
            r.get::<_, Option<Uuid>>(2),
            r.get::<_, Option<String>>(3),
            r.get::<_, i32>(4),
            r.get::<_, Option<String>>(5),
            r.get::<_, Vec<Uuid>>(6),
            r.get::<_, chrono::DateTime<chrono::Utc>>(7),
        )
    };
    let before = snapshot().await;

    // Another generator names the job with a lease token of its own making.
    let (tx, mut intruder) = attach_worker(&mesh, "intruder", Vec::new()).await;
    let forged = LeasedJob { job_id: job.id.clone(), lease_token: Uuid::new_v4().to_string() };
    let progress = ProgressUpdate {
        job: Some(forged.clone()),
        progress: Some(JobProgress { step: 5, total_steps: 10, stage: "generating".into(), item: 0 }),
    };
    let messages = [
        Msg::Progress(progress),
        Msg::Failed(JobFailed {
            job: Some(forged.clone()),
            error: "sabotage".into(),
            retryable: false,
            platform: false,
        }),
        Msg::Completed(JobCompleted { job: Some(forged), file_ids: Vec::new() }),
    ];
    for msg in messages {
        tx.send(AttachRequest { msg: Some(msg) }).await.unwrap();
        let (revoked, _) = next_revoked(&mut intruder).await;
        assert_eq!(revoked, job.id);
    }
    assert_eq!(snapshot().await, before, "the intruder changed nothing");

    // The holder's lease still works.
    holder_tx
        .send(AttachRequest {
            msg: Some(Msg::Completed(JobCompleted { job: Some(lease), file_ids: Vec::new() })),
        })
        .await
        .unwrap();
    let done = mesh.finished(&alice.token, &job.id).await;
    assert_eq!(done.status, i32::from(sakuga_proto::v1::JobStatus::Succeeded));
    assert_eq!(done.worker_id, "holder");
    mesh.stop().await;
}
