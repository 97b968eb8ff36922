//! Reading files back: the per-user ceiling on read streams and its idle timeout, and no
//! response or error of a job's whole life naming where bytes are.

use std::time::Duration;

use sakuga_proto::v1::{
    CreateProjectRequest, GetFileRequest, GetJobRequest, ListFilesRequest, ListJobsRequest,
};
use sha2::{Digest as _, Sha256};
use tokio_stream::StreamExt as _;
use tonic::Code;
use uuid::Uuid;

use super::{eventually, thumbnail};
use crate::common::{Backend, Mesh, image_request};

/// A file record of `owner` whose bytes are `size` bytes in the store (reads do not
/// decode).
async fn big_file(mesh: &Mesh, owner: &str, size: usize) -> String {
    let key = format!("unsorted/2026/01/01/{}-0.png", Uuid::now_v7());
    let bytes: Vec<u8> = (0..size).map(|i| u8::try_from(i % 251).unwrap()).collect();
    mesh.storage().await.put(&key, bytes.clone()).await.unwrap();
    let id = Uuid::now_v7();
    let db = mesh.env.db().await.unwrap();
    db.execute(
        "INSERT INTO files (id, job_id, owner_id, idx, kind, mime_type, width, height, frames, size_bytes, \
         sha256, storage_key) VALUES ($1, $2, $3, 0, 'image', 'image/png', 64, 64, 1, $4, $5, $6)",
        &[
            &id,
            &Uuid::now_v7(),
            &owner,
            &i64::try_from(size).unwrap(),
            &hex::encode(Sha256::digest(&bytes)),
            &key,
        ],
    )
    .await
    .unwrap();
    id.to_string()
}

async fn open_read(
    mesh: &Mesh,
    token: &str,
    file_id: &str,
) -> Result<tonic::Streaming<sakuga_proto::v1::ReadFileResponse>, tonic::Status> {
    let req = sakuga_proto::v1::ReadFileRequest { file_id: file_id.to_owned(), offset: 0, length: 0 };
    Ok(mesh.files(token).read_file(req).await?.into_inner())
}

async fn reads_are_capped_per_user_and_a_reader_that_stops_reading_loses_its_slot(backend: Backend) {
    let mut mesh = Mesh::on(backend).await;
    mesh.restart_organizer(|c| c.max_reads_per_user = 1).await;
    let alice = mesh.person("alice").await;
    let bob = mesh.person("bob").await;
    // Far more than the channel, HTTP/2 windows and buffers hold: the sender blocks.
    let size = 16 * 1024 * 1024;
    let (hers, his) = (big_file(&mesh, &alice.id, size).await, big_file(&mesh, &bob.id, size).await);
    let stalled = open_read(&mesh, &alice.token, &hers).await.unwrap();
    for err in [
        open_read(&mesh, &alice.token, &hers).await.map(|_| ()).unwrap_err(),
        thumbnail(&mesh, &alice.token, &hers).await.map(|_| ()).unwrap_err(),
    ] {
        assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
        assert!(err.message().contains("max_reads_per_user"), "names the ceiling: {}", err.message());
        assert!(err.metadata().get("retry-after").is_some());
    }
    // Per user: bob reads meanwhile.
    let mut s = open_read(&mesh, &bob.token, &his).await.unwrap();
    let mut read = 0;
    while let Some(c) = s.next().await {
        read += c.unwrap().chunk.len();
    }
    assert_eq!(read, size);
    // A client that goes frees its slot.
    drop(stalled);
    eventually("alice's slot is freed when her reader goes", || async {
        open_read(&mesh, &alice.token, &hers).await.is_ok()
    })
    .await;

    // A reader that stops reading for longer than the idle timeout loses its slot, and its
    // stream ends with ABORTED, not as if the file were complete.
    mesh.restart_organizer(|c| {
        c.max_reads_per_user = 1;
        c.read_idle_timeout = Duration::from_secs(1);
    })
    .await;
    let mut stalled = open_read(&mesh, &alice.token, &hers).await.unwrap();
    eventually("the stalled stream's slot is freed", || async {
        open_read(&mesh, &alice.token, &hers).await.is_ok()
    })
    .await;
    let mut read = 0;
    let err = loop {
        match stalled.next().await {
            Some(Ok(c)) => read += c.chunk.len(),
            Some(Err(e)) => break e,
            None => panic!("the stalled stream ended as if complete after {read} bytes"),
        }
    };
    assert!(read < size, "{read}");
    assert_eq!(err.code(), Code::Aborted, "{err:?}");
    assert!(err.message().contains("read_idle_timeout"), "{}", err.message());
    mesh.stop().await;
}

async fn no_response_or_error_of_a_jobs_life_contains_a_filesystem_path(backend: Backend) {
    let mut mesh = Mesh::on(backend).await;
    let alice = mesh.person("alice").await;
    let mut seen: Vec<String> = Vec::new();
    let mut projects = mesh.projects(&alice.token);
    let project = projects
        .create_project(CreateProjectRequest { name: "Path Check".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    seen.push(format!("{project:?}"));
    let project_id = project.project.unwrap().id;
    let mut jobs = mesh.jobs(&alice.token);
    let mut req = image_request("no paths please", 3);
    req.project_id.clone_from(&project_id);
    let submitted = jobs.submit_job(req).await.unwrap().into_inner();
    seen.push(format!("{submitted:?}"));
    let id = submitted.job.unwrap().id;
    let mut watch =
        jobs.watch_job(sakuga_proto::v1::WatchJobRequest { job_id: id.clone() }).await.unwrap().into_inner();
    mesh.attach_generator().await;
    while let Some(ev) = watch.next().await {
        seen.push(format!("{:?}", ev.unwrap()));
    }
    let job = jobs.get_job(GetJobRequest { job_id: id.clone() }).await.unwrap().into_inner();
    seen.push(format!("{job:?}"));
    seen.push(format!("{:?}", jobs.list_jobs(ListJobsRequest::default()).await.unwrap().into_inner()));
    let file_id = job.job.unwrap().file_ids[0].clone();
    let mut files = mesh.files(&alice.token);
    seen.push(format!(
        "{:?}",
        files.get_file(GetFileRequest { file_id: file_id.clone() }).await.unwrap().into_inner()
    ));
    seen.push(format!("{:?}", files.list_files(ListFilesRequest::default()).await.unwrap().into_inner()));
    // Errors too: a bad range, a missing file, bytes gone from disk.
    let errors = [
        files
            .read_file(sakuga_proto::v1::ReadFileRequest {
                file_id: file_id.clone(),
                offset: 1 << 40,
                length: 0,
            })
            .await
            .map(|_| ())
            .unwrap_err(),
        files.get_file(GetFileRequest { file_id: Uuid::now_v7().to_string() }).await.map(|_| ()).unwrap_err(),
    ];
    seen.extend(errors.iter().map(|e| format!("{e:?}")));
    if mesh.weed.is_none() {
        // The local backend has no download URLs, and says so without naming its folder (on
        // S3 the URL names the store: that is what it is for).
        let refused = files
            .get_download_url(sakuga_proto::v1::GetDownloadUrlRequest { file_id: file_id.clone(), ttl: None })
            .await
            .unwrap_err();
        seen.push(format!("{refused:?}"));
    }
    let storage = mesh.storage().await;
    for key in mesh.stored_keys().await {
        storage.delete(&key).await.unwrap();
    }
    assert_eq!(mesh.stored_keys().await, Vec::<String>::new(), "the bytes are gone");
    let gone = files
        .read_file(sakuga_proto::v1::ReadFileRequest { file_id: file_id.clone(), offset: 0, length: 0 })
        .await
        .map(|_| ())
        .unwrap_err();
    let thumb = thumbnail(&mesh, &alice.token, &file_id).await.unwrap_err();
    seen.push(format!("{gone:?} {thumb:?}"));
    let mut places = vec![mesh.env.dir.path().to_string_lossy().into_owned()];
    if let Some(weed) = &mesh.weed {
        let prefix = mesh.organizer_config().storage.s3.prefix;
        places.extend([weed.endpoint.clone(), format!("{}/", sakuga_testkit::weed::BUCKET), prefix]);
    }
    for text in &seen {
        for place in &places {
            assert!(!text.contains(place.as_str()), "a response names the storage ({place}): {text}");
        }
        for folder in [".tmp", ".thumbs", "blobs/"] {
            assert!(!text.contains(folder), "a response names a storage folder ({folder}): {text}");
        }
    }
    assert!(seen.len() > 8, "the whole life was seen");
    mesh.stop().await;
}

on_both_backends!(
    reads_are_capped_per_user_and_a_reader_that_stops_reading_loses_its_slot,
    no_response_or_error_of_a_jobs_life_contains_a_filesystem_path,
);
