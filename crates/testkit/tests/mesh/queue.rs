//! The durable queue: fair share, leases that outlive a killed worker, stale completions,
//! concurrent slots, and wake-ups across scheduler replicas.

use std::time::Duration;

use sakuga_proto::v1::{
    AttachRequest, GetJobRequest, JobCompleted, JobStatus, LeasedJob, WorkerHello, attach_request::Msg,
    attach_response, worker_service_client::WorkerServiceClient,
};
use tokio_stream::StreamExt as _;
use uuid::Uuid;

use crate::common::{Mesh, image_request};

async fn status_of(mesh: &Mesh, id: &str) -> String {
    let db = mesh.env.db().await.unwrap();
    db.query_one("SELECT status FROM jobs WHERE id = $1", &[&Uuid::parse_str(id).unwrap()])
        .await
        .unwrap()
        .get(0)
}

async fn wait_for(mesh: &Mesh, id: &str, status: &str) {
    for _ in 0..600 {
        if status_of(mesh, id).await == status {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("job {id} never reached {status}");
}

pub(crate) type Outbound = tokio::sync::mpsc::Sender<AttachRequest>;
pub(crate) type Inbound = tonic::Streaming<sakuga_proto::v1::AttachResponse>;

/// Attaches a bare worker session as `worker_id` (one builtin slot), announcing `running`.
pub(crate) async fn attach_worker(
    mesh: &Mesh,
    worker_id: &str,
    running: Vec<LeasedJob>,
) -> (Outbound, Inbound) {
    attach_worker_with(mesh, worker_id, running, 1).await
}

/// [`attach_worker`] with `slots` builtin slots.
pub(crate) async fn attach_worker_with(
    mesh: &Mesh,
    worker_id: &str,
    running: Vec<LeasedJob>,
    slots: u32,
) -> (Outbound, Inbound) {
    let identity = mesh.env.identity("generator").await.unwrap();
    let channel = identity.channel(&mesh.scheduler.addr_string()).unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let hello = WorkerHello {
        worker_id: worker_id.into(),
        slots,
        backends: vec!["builtin".into()],
        running,
        ..WorkerHello::default()
    };
    tx.try_send(AttachRequest { msg: Some(Msg::Hello(hello)) }).unwrap();
    let inbound = WorkerServiceClient::new(channel)
        .attach(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    (tx, inbound)
}

#[tokio::test]
async fn fair_share_lets_a_second_user_through_a_long_queue() {
    let mut mesh = Mesh::with_scheduler_config(|c| c.max_active_jobs_per_user = 1_000).await;
    let alice = mesh.person("alice").await;
    let bob = mesh.person("bob").await;
    let mut jobs_a = mesh.jobs(&alice.token);
    for i in 0..200 {
        jobs_a.submit_job(image_request(&format!("alice {i}"), 1)).await.unwrap();
    }
    let bobs = mesh
        .jobs(&bob.token)
        .submit_job(image_request("bob's one shot", 1))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    mesh.attach_generator().await;
    wait_for(&mesh, &bobs.id, "succeeded").await;
    let db = mesh.env.db().await.unwrap();
    let alice_done: i64 = db
        .query_one("SELECT count(*) FROM jobs WHERE owner_id = $1 AND status = 'succeeded'", &[&alice.id])
        .await
        .unwrap()
        .get(0);
    assert!(
        alice_done <= 10,
        "bob's job ran among the first dispatches, not after alice's 60 ({alice_done} done)"
    );
    mesh.stop().await;
}

#[tokio::test]
async fn a_dead_workers_job_is_reassigned_and_completes_once_and_a_late_completion_changes_nothing() {
    let mut mesh = Mesh::without_generator().await;
    let alice = mesh.person("alice").await;
    let job = mesh
        .jobs(&alice.token)
        .submit_job(image_request("survives a crash", 2))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();

    // A worker takes the job and dies without a word (its stream just drops).
    let (tx, mut inbound) = attach_worker(&mesh, "doomed", Vec::new()).await;
    let mut lease = None;
    while let Some(msg) = inbound.next().await {
        if let Some(attach_response::Msg::Assignment(a)) = msg.unwrap().msg {
            lease = Some(LeasedJob { job_id: a.job_id, lease_token: a.lease_token });
            break;
        }
    }
    let stale = lease.unwrap();
    assert_eq!(stale.job_id, job.id);
    drop((tx, inbound));

    // The lease runs out; a healthy generator gets the job and finishes it.
    mesh.attach_generator().await;
    wait_for(&mesh, &job.id, "succeeded").await;
    let db = mesh.env.db().await.unwrap();
    let id = Uuid::parse_str(&job.id).unwrap();
    let before =
        db.query_one("SELECT attempts, file_ids, updated_at FROM jobs WHERE id = $1", &[&id]).await.unwrap();
    assert_eq!(before.get::<_, i32>(0), 2, "second attempt");
    let files: i64 =
        db.query_one("SELECT count(*) FROM files WHERE job_id = $1", &[&id]).await.unwrap().get(0);
    assert_eq!(files, 1, "one set of files");

    // The dead worker comes back and reports completion under its old lease: refused.
    let (tx, mut inbound) = attach_worker(&mesh, "doomed", vec![stale.clone()]).await;
    let welcome = inbound.next().await.unwrap().unwrap();
    let Some(attach_response::Msg::Welcome(w)) = welcome.msg else { panic!("expected welcome") };
    assert_eq!(w.dropped_job_ids, vec![job.id.clone()], "the old lease is not kept");
    let bogus = JobCompleted { job: Some(stale), file_ids: vec![Uuid::new_v4().to_string()] };
    tx.send(AttachRequest { msg: Some(Msg::Completed(bogus)) }).await.unwrap();
    let answer = inbound.next().await.unwrap().unwrap();
    assert!(matches!(answer.msg, Some(attach_response::Msg::LeaseRevoked(_))), "{answer:?}");
    let after =
        db.query_one("SELECT attempts, file_ids, updated_at FROM jobs WHERE id = $1", &[&id]).await.unwrap();
    assert_eq!(after.get::<_, i32>(0), 2);
    assert_eq!(after.get::<_, Vec<Uuid>>(1), before.get::<_, Vec<Uuid>>(1), "files unchanged");
    assert_eq!(
        after.get::<_, chrono::DateTime<chrono::Utc>>(2),
        before.get::<_, chrono::DateTime<chrono::Utc>>(2),
        "row untouched"
    );
    mesh.stop().await;
}

#[tokio::test]
async fn a_restarted_worker_hands_back_what_it_lost_at_once_not_when_the_lease_expires() {
    // Leases of ten minutes: only the hand-back at attach can free the job within this test.
    let mesh = Mesh::with_scheduler_config(|c| c.lease_ttl = Duration::from_mins(10)).await;
    let alice = mesh.person("alice").await;
    let job = mesh
        .jobs(&alice.token)
        .submit_job(image_request("outlives its worker", 2))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    let next_assignment = |mut inbound: Inbound| async move {
        while let Some(msg) = inbound.next().await {
            if let Some(attach_response::Msg::Assignment(a)) = msg.unwrap().msg {
                return (a, inbound);
            }
        }
        panic!("the stream ended before an assignment");
    };
    let (tx, inbound) = attach_worker(&mesh, "phoenix", Vec::new()).await;
    let (first, inbound) = next_assignment(inbound).await;
    assert_eq!(first.job_id, job.id);
    drop((tx, inbound)); // killed: it remembers nothing

    // The same worker comes back announcing no running job: the job is handed back at once
    // (with the attempt counted and a reason) and assigned again under a new lease.
    let (_tx, inbound) = attach_worker(&mesh, "phoenix", Vec::new()).await;
    let (second, _inbound) = tokio::time::timeout(Duration::from_mins(1), next_assignment(inbound))
        .await
        .expect("the job was not handed back when its worker came back without it");
    assert_eq!(second.job_id, job.id);
    assert_ne!(second.lease_token, first.lease_token);
    let db = mesh.env.db().await.unwrap();
    let row = db
        .query_one("SELECT attempts, error FROM jobs WHERE id = $1", &[&Uuid::parse_str(&job.id).unwrap()])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 2, "the lost attempt counts");
    assert_eq!(row.get::<_, Option<String>>(1).as_deref(), Some("worker phoenix restarted without it"));
    mesh.stop().await;
}

#[tokio::test]
async fn a_worker_with_five_slots_runs_five_jobs_at_once() {
    let mut mesh = Mesh::without_generator().await;
    let alice = mesh.person("alice").await;
    let mut jobs = mesh.jobs(&alice.token);
    let mut ids = Vec::new();
    for i in 0..5 {
        let mut req = image_request(&format!("parallel {i}"), 60);
        let spec = req.spec.as_mut().unwrap();
        (spec.width, spec.height) = (256, 256);
        ids.push(jobs.submit_job(req).await.unwrap().into_inner().job.unwrap().id);
    }
    let mut cfg = sakuga_testkit::generator_config(&mesh.env, &mesh.auth, &mesh.scheduler, &mesh.organizer);
    cfg.slots = 5;
    mesh.generator = Some(sakuga_testkit::spawn_generator(cfg).await.unwrap());
    let db = mesh.env.db().await.unwrap();
    let mut most = 0;
    for _ in 0..400 {
        let running: i64 = db
            .query_one("SELECT count(*) FROM jobs WHERE status = 'running' AND progress_step > 0", &[])
            .await
            .unwrap()
            .get(0);
        most = most.max(running);
        if most == 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(most, 5, "all five were rendering at the same moment");
    for id in &ids {
        wait_for(&mesh, id, "succeeded").await;
    }
    mesh.stop().await;
}

#[tokio::test]
async fn a_job_submitted_to_one_replica_wakes_the_replica_holding_the_worker() {
    let mesh = Mesh::without_generator().await;
    // A second replica that would poll only every ten minutes: it can only learn of the
    // job through NOTIFY.
    let mut cfg = sakuga_testkit::scheduler_config(&mesh.env, &mesh.auth);
    cfg.dispatch_poll = Duration::from_mins(10);
    let replica = sakuga_testkit::spawn_scheduler(cfg).await.unwrap();
    let gen_cfg = sakuga_testkit::generator_config(&mesh.env, &mesh.auth, &replica, &mesh.organizer);
    let generator = sakuga_testkit::spawn_generator(gen_cfg).await.unwrap();
    // Wait until the worker is attached (its health turns SERVING).
    let mut health =
        tonic_health::pb::health_client::HealthClient::new(mesh.channel(&generator.addr_string()));
    for _ in 0..200 {
        let s = health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await;
        if s.is_ok_and(|r| r.into_inner().status == 1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let alice = mesh.person("alice").await;
    let job = mesh
        .jobs(&alice.token)
        .submit_job(image_request("across replicas", 1))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    let mut jobs = mesh.jobs(&alice.token);
    let mut status = 0;
    for _ in 0..200 {
        status = jobs
            .get_job(GetJobRequest { job_id: job.id.clone() })
            .await
            .unwrap()
            .into_inner()
            .job
            .unwrap()
            .status;
        if status == JobStatus::Succeeded as i32 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        status,
        JobStatus::Succeeded as i32,
        "dispatched by the other replica without waiting for its poll"
    );
    generator.stop().await.unwrap();
    replica.stop().await.unwrap();
    mesh.stop().await;
}

#[tokio::test]
async fn a_restarted_scheduler_loses_nothing_and_runs_nothing_twice() {
    let mut mesh = Mesh::without_generator().await;
    let alice = mesh.person("alice").await;
    let mut jobs = mesh.jobs(&alice.token);
    let mut long = image_request("long shot across a restart", 80);
    let spec = long.spec.as_mut().unwrap();
    (spec.width, spec.height) = (384, 384);
    let running = jobs.submit_job(long).await.unwrap().into_inner().job.unwrap();
    let mut cfg = sakuga_testkit::generator_config(&mesh.env, &mesh.auth, &mesh.scheduler, &mesh.organizer);
    cfg.slots = 1;
    mesh.generator = Some(sakuga_testkit::spawn_generator(cfg).await.unwrap());
    wait_for(&mesh, &running.id, "running").await;
    let mut queued = Vec::new();
    for i in 0..3 {
        queued.push(
            jobs.submit_job(image_request(&format!("queued {i}"), 2))
                .await
                .unwrap()
                .into_inner()
                .job
                .unwrap()
                .id,
        );
    }

    // Restart the scheduler on the same address while the long job renders.
    let addr = mesh.scheduler.addr;
    let old = std::mem::replace(&mut mesh.scheduler, sakuga_testkit::Spawned::unused());
    old.stop().await.unwrap();
    let mut cfg = sakuga_testkit::scheduler_config(&mesh.env, &mesh.auth);
    cfg.server.listen = addr;
    mesh.scheduler = sakuga_testkit::spawn_scheduler(cfg).await.unwrap();

    wait_for(&mesh, &running.id, "succeeded").await;
    for id in &queued {
        wait_for(&mesh, id, "succeeded").await;
    }
    let db = mesh.env.db().await.unwrap();
    let rows =
        db.query("SELECT attempts, cardinality(file_ids) FROM jobs ORDER BY created_at", &[]).await.unwrap();
    assert_eq!(rows.len(), 4, "no job lost");
    for r in &rows {
        assert_eq!((r.get::<_, i32>(0), r.get::<_, i32>(1)), (1, 1), "each ran once, with one file");
    }
    let files: i64 = db.query_one("SELECT count(*) FROM files", &[]).await.unwrap().get(0);
    assert_eq!(files, 4);
    mesh.stop().await;
}

#[tokio::test]
async fn canceling_a_running_job_frees_its_slot_once_the_worker_stopped() {
    let mut mesh = Mesh::without_generator().await;
    let alice = mesh.person("alice").await;
    let mut jobs = mesh.jobs(&alice.token);
    let mut long = image_request("a very long render", 150);
    let spec = long.spec.as_mut().unwrap();
    (spec.width, spec.height) = (1024, 1024);
    let job = jobs.submit_job(long).await.unwrap().into_inner().job.unwrap();
    let mut cfg = sakuga_testkit::generator_config(&mesh.env, &mesh.auth, &mesh.scheduler, &mesh.organizer);
    cfg.slots = 1;
    mesh.generator = Some(sakuga_testkit::spawn_generator(cfg).await.unwrap());
    wait_for(&mesh, &job.id, "running").await;
    let canceled =
        jobs.cancel_job(sakuga_proto::v1::CancelJobRequest { job_id: job.id.clone() }).await.unwrap();
    assert_eq!(canceled.into_inner().job.unwrap().status, JobStatus::Canceled as i32);
    // The one slot comes back only when the worker confirms its backend stopped; the next
    // job then runs there on its first attempt (a busy worker would refuse it).
    let next = jobs.submit_job(image_request("after the cancel", 2)).await.unwrap().into_inner().job.unwrap();
    wait_for(&mesh, &next.id, "succeeded").await;
    let db = mesh.env.db().await.unwrap();
    let row = db
        .query_one(
            "SELECT status, attempts, cardinality(file_ids) FROM jobs WHERE id = $1",
            &[&Uuid::parse_str(&job.id).unwrap()],
        )
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, i32>(2)),
        ("canceled".to_owned(), 0),
        "stays canceled, no files"
    );
    let attempts: i32 = db
        .query_one("SELECT attempts FROM jobs WHERE id = $1", &[&Uuid::parse_str(&next.id).unwrap()])
        .await
        .unwrap()
        .get(0);
    assert_eq!(attempts, 1);
    let e = jobs.cancel_job(sakuga_proto::v1::CancelJobRequest { job_id: job.id }).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "a finished job cannot be canceled again");
    mesh.stop().await;
}

#[tokio::test]
async fn three_replicas_and_four_generators_run_five_hundred_jobs_exactly_once() {
    let mesh = Mesh::with_scheduler_config(|c| c.max_active_jobs_per_user = 1_000).await;
    let mut replicas = Vec::new();
    for _ in 0..2 {
        let mut cfg = sakuga_testkit::scheduler_config(&mesh.env, &mesh.auth);
        cfg.max_active_jobs_per_user = 1_000;
        replicas.push(sakuga_testkit::spawn_scheduler(cfg).await.unwrap());
    }
    let alice = mesh.person("alice").await;
    // Submit through all three replicas.
    let addrs: Vec<String> = std::iter::once(mesh.scheduler.addr_string())
        .chain(replicas.iter().map(sakuga_testkit::Spawned::addr_string))
        .collect();
    let clients: Vec<_> = addrs
        .iter()
        .map(|a| sakuga_proto::v1::job_service_client::JobServiceClient::new(mesh.authed(a, &alice.token)))
        .collect();
    let submits = (0..500).map(|i| {
        let mut client = clients[i % clients.len()].clone();
        async move {
            client
                .submit_job(image_request(&format!("crowd {i}"), 1))
                .await
                .map(|r| r.into_inner().job.unwrap().id)
        }
    });
    let ids: Vec<String> =
        futures_util::future::join_all(submits).await.into_iter().map(Result::unwrap).collect();
    // Four generators, spread over the replicas.
    let mut generators = Vec::new();
    for i in 0..4 {
        let target = if i == 0 { &mesh.scheduler } else { &replicas[(i - 1) % replicas.len()] };
        let mut cfg = sakuga_testkit::generator_config(&mesh.env, &mesh.auth, target, &mesh.organizer);
        cfg.worker_id = format!("gen-{i}");
        generators.push(sakuga_testkit::spawn_generator(cfg).await.unwrap());
    }
    let db = mesh.env.db().await.unwrap();
    for _ in 0..1200 {
        let open: i64 =
            db.query_one("SELECT count(*) FROM jobs WHERE status <> 'succeeded'", &[]).await.unwrap().get(0);
        if open == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rows = db.query("SELECT attempts, cardinality(file_ids), status FROM jobs", &[]).await.unwrap();
    assert_eq!(rows.len(), ids.len());
    for r in &rows {
        assert_eq!(r.get::<_, String>(2), "succeeded");
        assert_eq!((r.get::<_, i32>(0), r.get::<_, i32>(1)), (1, 1), "assigned once, one file");
    }
    let files: i64 = db.query_one("SELECT count(*) FROM files", &[]).await.unwrap().get(0);
    assert_eq!(files, 500, "one file per job, none twice");
    let workers: i64 = db.query_one("SELECT count(DISTINCT worker_id) FROM jobs", &[]).await.unwrap().get(0);
    assert!(workers >= 2, "the work was spread ({workers} workers)");
    for g in generators {
        g.stop().await.unwrap();
    }
    for r in replicas {
        r.stop().await.unwrap();
    }
    mesh.stop().await;
}

#[tokio::test]
async fn finished_jobs_past_retention_are_pruned_and_their_files_stay() {
    let mut mesh = Mesh::with_scheduler_config(|c| {
        c.job_retention_days = 30;
        c.retention_sweep = Duration::from_secs(1);
    })
    .await;
    mesh.attach_generator().await;
    let alice = mesh.person("alice").await;
    let mut jobs = mesh.jobs(&alice.token);
    let old = jobs.submit_job(image_request("long ago", 1)).await.unwrap().into_inner().job.unwrap();
    let recent = jobs.submit_job(image_request("yesterday", 1)).await.unwrap().into_inner().job.unwrap();
    let queued_old = {
        let mut r = image_request("old but never run", 1);
        r.spec.as_mut().unwrap().backend = "comfyui".into(); // no worker offers it: stays queued
        jobs.submit_job(r).await.unwrap().into_inner().job.unwrap()
    };
    wait_for(&mesh, &old.id, "succeeded").await;
    wait_for(&mesh, &recent.id, "succeeded").await;
    let db = mesh.env.db().await.unwrap();
    let id = |s: &str| Uuid::parse_str(s).unwrap();
    db.execute("UPDATE jobs SET finished_at = now() - interval '31 days' WHERE id = $1", &[&id(&old.id)])
        .await
        .unwrap();
    db.execute("UPDATE jobs SET finished_at = now() - interval '1 day' WHERE id = $1", &[&id(&recent.id)])
        .await
        .unwrap();
    db.execute(
        "UPDATE jobs SET created_at = now() - interval '60 days' WHERE id = $1",
        &[&id(&queued_old.id)],
    )
    .await
    .unwrap();
    let mut left = Vec::new();
    for _ in 0..100 {
        left = db
            .query("SELECT id FROM jobs ORDER BY created_at", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<_, Uuid>(0))
            .collect();
        if left.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(left, vec![id(&queued_old.id), id(&recent.id)], "only the old finished job went");
    let files: i64 =
        db.query_one("SELECT count(*) FROM files WHERE job_id = $1", &[&id(&old.id)]).await.unwrap().get(0);
    assert_eq!(files, 1, "its file record stays");
    mesh.stop().await;
}

#[tokio::test]
async fn a_scheduler_shutting_down_hands_its_worker_and_running_job_to_another_replica() {
    let mut mesh = Mesh::without_generator().await;
    let second = sakuga_testkit::spawn_scheduler(sakuga_testkit::scheduler_config(&mesh.env, &mesh.auth))
        .await
        .unwrap();
    let mut cfg = sakuga_testkit::generator_config(&mesh.env, &mesh.auth, &mesh.scheduler, &mesh.organizer);
    cfg.scheduler_addr = format!("{},{}", mesh.scheduler.addr_string(), second.addr_string());
    cfg.slots = 1;
    mesh.generator = Some(sakuga_testkit::spawn_generator(cfg).await.unwrap());
    let alice = mesh.person("alice").await;
    let mut long = image_request("rendered across a scheduler shutdown", 80);
    let spec = long.spec.as_mut().unwrap();
    (spec.width, spec.height) = (384, 384);
    let job = mesh.jobs(&alice.token).submit_job(long).await.unwrap().into_inner().job.unwrap();
    wait_for(&mesh, &job.id, "running").await;
    // The first replica goes away for good; the worker moves to the second with its lease.
    let first = std::mem::replace(&mut mesh.scheduler, second);
    first.stop().await.unwrap();
    wait_for(&mesh, &job.id, "succeeded").await;
    let db = mesh.env.db().await.unwrap();
    let attempts: i32 = db
        .query_one("SELECT attempts FROM jobs WHERE id = $1", &[&Uuid::parse_str(&job.id).unwrap()])
        .await
        .unwrap()
        .get(0);
    assert_eq!(attempts, 1, "the running job kept its lease: no second attempt");
    let next = mesh
        .jobs(&alice.token)
        .submit_job(image_request("after the handover", 1))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    wait_for(&mesh, &next.id, "succeeded").await;
    mesh.stop().await;
}

#[tokio::test]
async fn a_job_goes_to_the_worker_that_already_has_its_model_loaded() {
    let mesh = Mesh::without_generator().await;
    let identity = mesh.env.identity("generator").await.unwrap();
    // Two idle workers; only "warm" has "anime-xl" loaded. "cold" has more free slots, so
    // without the warm preference it would be asked first.
    let mut streams = Vec::new();
    for (name, model, slots) in [("cold", "other-model", 2), ("warm", "anime-xl", 1)] {
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let hello = WorkerHello {
            worker_id: name.into(),
            slots,
            backends: vec!["builtin".into()],
            loaded_models: vec![model.into()],
            ..WorkerHello::default()
        };
        tx.send(AttachRequest { msg: Some(Msg::Hello(hello)) }).await.unwrap();
        let mut inbound = WorkerServiceClient::new(identity.channel(&mesh.scheduler.addr_string()).unwrap())
            .attach(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let welcome = inbound.next().await.unwrap().unwrap();
        assert!(matches!(welcome.msg, Some(attach_response::Msg::Welcome(_))));
        streams.push((name, tx, inbound));
    }
    let alice = mesh.person("alice").await;
    let mut req = image_request("needs the warm model", 1);
    req.spec.as_mut().unwrap().model = "anime-xl".into();
    let job = mesh.jobs(&alice.token).submit_job(req).await.unwrap().into_inner().job.unwrap();
    wait_for(&mesh, &job.id, "assigned").await;
    let worker: String = mesh
        .env
        .db()
        .await
        .unwrap()
        .query_one("SELECT worker_id FROM jobs WHERE id = $1", &[&Uuid::parse_str(&job.id).unwrap()])
        .await
        .unwrap()
        .get(0);
    assert_eq!(worker, "warm", "no cold start while a warm worker is free");
    drop(streams);
    mesh.stop().await;
}
