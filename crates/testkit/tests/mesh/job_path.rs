//! One job through the four services: submit, dispatch, render with streamed progress,
//! upload, record, succeed — checked in the events, the rows and the bytes on disk.

use sakuga_proto::v1::{GetJobRequest, JobStatus, ReadFileRequest, WatchJobRequest, job_event::Kind};
use sha2::{Digest as _, Sha256};
use tokio_stream::StreamExt as _;
use uuid::Uuid;

use crate::common::{Mesh, image_request};

#[tokio::test]
async fn one_job_end_to_end() {
    // The generator attaches only once the watch is open, so every step is seen live.
    let mut mesh = Mesh::without_generator().await;
    let alice = mesh.person("alice").await;
    let mut jobs = mesh.jobs(&alice.token);
    let job = jobs
        .submit_job(image_request("a quiet sakura street at dusk", 6))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    let job_id = job.id.clone();

    let mut stream = jobs.watch_job(WatchJobRequest { job_id: job_id.clone() }).await.unwrap().into_inner();
    let mut events = vec![stream.next().await.unwrap().unwrap().event.unwrap().kind.unwrap()];
    mesh.attach_generator().await;
    while let Some(ev) = tokio::time::timeout(std::time::Duration::from_mins(1), stream.next()).await.unwrap()
    {
        events.push(ev.unwrap().event.unwrap().kind.unwrap());
    }
    assert!(matches!(events.first(), Some(Kind::Snapshot(_))), "first event is the snapshot: {events:?}");
    let steps: Vec<u32> = events
        .iter()
        .filter_map(|e| match e {
            Kind::Progress(p) => Some(p.step),
            _ => None,
        })
        .collect();
    let statuses: Vec<i32> = events
        .iter()
        .filter_map(|e| match e {
            Kind::StatusChange(s) => Some(s.status),
            _ => None,
        })
        .collect();
    assert_eq!(steps, vec![1, 2, 3, 4, 5, 6], "every step, in order: {events:?}");
    let previews: Vec<&Vec<u8>> = events
        .iter()
        .filter_map(|e| match e {
            Kind::Preview(p) => Some(&p.png),
            _ => None,
        })
        .collect();
    assert!(!previews.is_empty(), "previews are forwarded while the job renders");
    for png in previews {
        sakuga_imaging::inspect_png(png, sakuga_imaging::Limits::default()).unwrap();
    }
    let expected: Vec<i32> =
        [JobStatus::Assigned, JobStatus::Running, JobStatus::Succeeded].map(i32::from).to_vec();
    assert_eq!(statuses, expected, "{events:?}");
    let Some(Kind::StatusChange(done)) = events.last() else { panic!("last event is the status change") };
    assert_eq!(done.file_ids.len(), 1);
    let file_id = done.file_ids[0].clone();

    let got = jobs.get_job(GetJobRequest { job_id: job_id.clone() }).await.unwrap().into_inner().job.unwrap();
    assert_eq!(got.status, i32::from(JobStatus::Succeeded));
    assert_eq!(got.file_ids, vec![file_id.clone()]);
    assert_eq!(got.progress.unwrap().step, 6);

    // Rows.
    let db = mesh.env.db().await.unwrap();
    let id = Uuid::parse_str(&job_id).unwrap();
    let row = db
        .query_one("SELECT status, attempts, file_ids, owner_id FROM jobs WHERE id = $1", &[&id])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "succeeded");
    assert_eq!(row.get::<_, i32>(1), 1);
    assert_eq!(row.get::<_, Vec<Uuid>>(2), vec![Uuid::parse_str(&file_id).unwrap()]);
    assert_eq!(row.get::<_, String>(3), alice.id, "owned by the user who submitted it");
    let file = db
        .query_one(
            "SELECT storage_key, sha256, size_bytes, width, height, checks, blob_key FROM files WHERE id = $1",
            &[&Uuid::parse_str(&file_id).unwrap()],
        )
        .await
        .unwrap();
    let key: String = file.get(0);
    let sha: String = file.get(1);
    let today = chrono::Utc::now().format("%Y/%m/%d").to_string();
    assert_eq!(key, format!("unsorted/{today}/{job_id}-0.png"));
    assert_eq!((file.get::<_, i32>(3), file.get::<_, i32>(4)), (64, 64));
    assert!(file.get::<_, Vec<String>>(5).contains(&"not_blank".to_owned()));

    // Bytes on disk: once, under their sha256, decodable, matching the record.
    assert_eq!(file.get::<_, Option<String>>(6), Some(format!("blobs/{sha}")));
    let bytes = std::fs::read(mesh.env.dir.path().join("files").join(format!("blobs/{sha}"))).unwrap();
    assert_eq!(hex::encode(Sha256::digest(&bytes)), sha);
    assert_eq!(i64::try_from(bytes.len()).unwrap(), file.get::<_, i64>(2));
    let found = sakuga_imaging::inspect_png(&bytes, sakuga_imaging::Limits::default()).unwrap();
    assert_eq!((found.width, found.height, found.mime), (64, 64, "image/png"));
    assert_eq!(found.text_value("prompt"), Some("a quiet sakura street at dusk"));

    // The same bytes through ReadFile, in two ranges.
    let mut files = mesh.files(&alice.token);
    let mut read = Vec::new();
    let mut s = files
        .read_file(ReadFileRequest { file_id: file_id.clone(), offset: 0, length: 0 })
        .await
        .unwrap()
        .into_inner();
    while let Some(chunk) = s.next().await {
        read.extend(chunk.unwrap().chunk);
    }
    assert_eq!(read, bytes);
    let mut s =
        files.read_file(ReadFileRequest { file_id, offset: 10, length: 20 }).await.unwrap().into_inner();
    let part = s.next().await.unwrap().unwrap();
    assert_eq!(part.chunk, bytes[10..30].to_vec());
    assert_eq!(part.size_bytes, bytes.len() as u64);

    mesh.stop().await;
}

#[tokio::test]
async fn watch_of_a_finished_job_is_one_snapshot_and_resubmitting_with_a_key_is_idempotent() {
    let mesh = Mesh::start().await;
    let bob = mesh.person("bob").await;
    let mut jobs = mesh.jobs(&bob.token);
    let mut req = image_request("lanterns over a river", 2);
    req.idempotency_key = "episode-3-shot-12".to_owned();
    let first = jobs.submit_job(req.clone()).await.unwrap().into_inner();
    let again = jobs.submit_job(req).await.unwrap().into_inner();
    assert!(!first.deduplicated);
    assert!(again.deduplicated);
    assert_eq!(first.job.as_ref().unwrap().id, again.job.as_ref().unwrap().id);
    let job_id = first.job.unwrap().id;
    let mut stream = jobs.watch_job(WatchJobRequest { job_id: job_id.clone() }).await.unwrap().into_inner();
    while stream.next().await.is_some() {}
    let mut stream = jobs.watch_job(WatchJobRequest { job_id }).await.unwrap().into_inner();
    let only = stream.next().await.unwrap().unwrap().event.unwrap().kind.unwrap();
    let Kind::Snapshot(job) = only else { panic!("expected a snapshot") };
    assert_eq!(job.status, i32::from(JobStatus::Succeeded));
    assert!(stream.next().await.is_none(), "a finished job's stream ends after the snapshot");
    let count: i64 =
        mesh.env.db().await.unwrap().query_one("SELECT count(*) FROM jobs", &[]).await.unwrap().get(0);
    assert_eq!(count, 1);
    mesh.stop().await;
}

#[tokio::test]
async fn list_jobs_filters_by_state_prompt_and_time_and_pages() {
    let mesh = Mesh::without_generator().await;
    let alice = mesh.person("alice").await;
    let mut jobs = mesh.jobs(&alice.token);
    for prompt in ["Sakura at dawn", "neon city rain", "sakura petals at night"] {
        jobs.submit_job(image_request(prompt, 1)).await.unwrap();
    }
    let list = |req: sakuga_proto::v1::ListJobsRequest| {
        let mut jobs = jobs.clone();
        async move { jobs.list_jobs(req).await.unwrap().into_inner() }
    };
    let sakura =
        list(sakuga_proto::v1::ListJobsRequest { prompt_contains: "SAKURA".into(), ..Default::default() })
            .await;
    let prompts: Vec<String> = sakura.jobs.iter().map(|j| j.spec.as_ref().unwrap().prompt.clone()).collect();
    assert_eq!(prompts, vec!["sakura petals at night", "Sakura at dawn"], "newest first, case-insensitive");
    let queued =
        list(sakuga_proto::v1::ListJobsRequest { status: JobStatus::Queued.into(), ..Default::default() })
            .await;
    assert_eq!(queued.jobs.len(), 3);
    let future = prost_types::Timestamp { seconds: chrono::Utc::now().timestamp() + 3600, nanos: 0 };
    let none =
        list(sakuga_proto::v1::ListJobsRequest { created_after: Some(future), ..Default::default() }).await;
    assert!(none.jobs.is_empty());
    let first = list(sakuga_proto::v1::ListJobsRequest { page_size: 2, ..Default::default() }).await;
    assert_eq!(first.jobs.len(), 2);
    assert!(!first.next_page_token.is_empty());
    let second = list(sakuga_proto::v1::ListJobsRequest {
        page_size: 2,
        page_token: first.next_page_token.clone(),
        ..Default::default()
    })
    .await;
    assert_eq!(second.jobs.len(), 1);
    assert!(second.next_page_token.is_empty());
    let e = jobs
        .list_jobs(sakuga_proto::v1::ListJobsRequest { page_token: "forged".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert!(e.message().starts_with("page_token:"), "{}", e.message());
    mesh.stop().await;
}

#[tokio::test]
async fn an_identical_request_with_a_fixed_seed_can_reuse_the_earlier_result() {
    let mesh = Mesh::start().await;
    let alice = mesh.person("alice").await;
    let mut jobs = mesh.jobs(&alice.token);
    let mut req = image_request("the same shot twice", 2);
    req.reuse_result = true;
    let first = jobs.submit_job(req.clone()).await.unwrap().into_inner();
    assert!(!first.reused, "nothing to reuse yet");
    let first = first.job.unwrap();
    let mut watch = jobs.watch_job(WatchJobRequest { job_id: first.id.clone() }).await.unwrap().into_inner();
    while watch.next().await.is_some() {}
    let again = jobs.submit_job(req.clone()).await.unwrap().into_inner();
    assert!(again.reused);
    let reused = again.job.unwrap();
    assert_eq!(reused.id, first.id);
    assert_eq!(reused.status, i32::from(JobStatus::Succeeded));
    // Without reuse, or with another seed, it renders again.
    req.reuse_result = false;
    assert!(!jobs.submit_job(req.clone()).await.unwrap().into_inner().reused);
    req.reuse_result = true;
    req.spec.as_mut().unwrap().seed = Some(8);
    assert!(!jobs.submit_job(req).await.unwrap().into_inner().reused);
    let count: i64 =
        mesh.env.db().await.unwrap().query_one("SELECT count(*) FROM jobs", &[]).await.unwrap().get(0);
    assert_eq!(count, 3);
    mesh.stop().await;
}
