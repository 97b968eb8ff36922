//! Uploads (StoreArtifact): the checks with their reasons, the job's lease and ownership,
//! the declared size, the ceiling on uploads at once; none leaves bytes behind.

use sakuga_proto::v1::{
    ArtifactHeader, CreateProjectRequest, GetFileRequest, ListFilesRequest, StoreArtifactRequest,
    store_artifact_request::Part,
};
use sha2::{Digest as _, Sha256};
use tonic::Code;
use uuid::Uuid;

use super::{
    Leased, eventually, everything_stored, gradient, header, keys_of, leased_job, leased_job_as, project,
    store,
};
use crate::common::{Backend, Mesh};

async fn blank_truncated_and_wrongly_sized_images_are_refused_with_reasons(backend: Backend) {
    let mesh = Mesh::on(backend).await;
    let owner = Uuid::now_v7().to_string();
    let blank = sakuga_imaging::encode_rgb_png(64, 64, &[128; 64 * 64 * 3]).unwrap();
    let good = gradient(64, 64);
    let truncated = good[..good.len() / 2].to_vec();
    for (bytes, w, h, reason) in [
        (&blank, 64, 64, "blank"),
        (&truncated, 64, 64, "truncated"),
        (&good, 128, 128, "dimensions are 64x64, the job asked for 128x128"),
        (&gradient(128, 128), 64, 64, "image declares 128x128, more than the job's 64x64"),
    ] {
        let job = leased_job(&mesh, &owner, None, w, h).await;
        let err = store(&mesh, header(&job, bytes, w, h), bytes).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{reason}: {err:?}");
        assert!(err.message().contains(reason), "{reason}: {}", err.message());
    }
    assert_eq!(everything_stored(&mesh).await, Vec::<String>::new(), "nothing stored, no partial file left");
    let job = leased_job(&mesh, &owner, None, 64, 64).await;
    let stored = store(&mesh, header(&job, &good, 64, 64), &good).await.unwrap();
    assert_eq!(stored.checks, ["size", "sha256", "decodes", "mime", "dimensions", "frames", "not_blank"]);
    mesh.stop().await;
}

/// Audit rows of refused StoreArtifact calls.
async fn audited_refused_uploads(mesh: &Mesh) -> i64 {
    let db = mesh.env.db().await.unwrap();
    db.query_one(
        "SELECT count(*) FROM audit_events WHERE action = 'FileService.StoreArtifact' AND result <> 'OK'",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

async fn an_artifact_is_accepted_only_under_the_jobs_live_lease_and_owned_as_the_job_is(backend: Backend) {
    let mesh = Mesh::on(backend).await;
    let alice = mesh.person("alice").await;
    let bob = mesh.person("bob").await;
    let project =
        project(&mesh, &alice.token, CreateProjectRequest { name: "Leased".into(), ..Default::default() })
            .await;
    let bytes = gradient(64, 64);
    let job = leased_job(&mesh, &alice.id, Some(&project.id), 64, 64).await;
    let finished = leased_job_as(&mesh, &alice.id, None, (64, 64), "succeeded", "1 hour").await;
    let expired = leased_job_as(&mesh, &alice.id, None, (64, 64), "running", "-1 minute").await;
    let refused = [
        ("no lease token", ArtifactHeader { lease_token: String::new(), ..header(&job, &bytes, 64, 64) }),
        (
            "another lease token",
            ArtifactHeader { lease_token: Uuid::new_v4().to_string(), ..header(&job, &bytes, 64, 64) },
        ),
        (
            "a job that does not exist",
            header(&Leased { id: Uuid::now_v7().to_string(), lease: job.lease.clone() }, &bytes, 64, 64),
        ),
        ("a finished job", header(&finished, &bytes, 64, 64)),
        ("an expired lease", header(&expired, &bytes, 64, 64)),
        (
            "the header naming another owner",
            ArtifactHeader { owner_id: bob.id.clone(), ..header(&job, &bytes, 64, 64) },
        ),
        (
            "the header naming another project",
            ArtifactHeader { project_id: Uuid::now_v7().to_string(), ..header(&job, &bytes, 64, 64) },
        ),
    ];
    let n = refused.len();
    for (case, h) in refused {
        let err = store(&mesh, h, &bytes).await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{case}: {err:?}");
        for private in [&alice.id, &project.id] {
            assert!(
                !err.message().contains(private.as_str()),
                "{case}: the refusal names the owner's data: {}",
                err.message()
            );
        }
    }
    assert_eq!(everything_stored(&mesh).await, Vec::<String>::new(), "nothing stored");
    let listed =
        mesh.files(&mesh.admin_token).list_files(ListFilesRequest::default()).await.unwrap().into_inner();
    assert!(listed.files.is_empty(), "nothing recorded: {listed:?}");
    eventually("each refusal is audited", || async {
        audited_refused_uploads(&mesh).await == i64::try_from(n).unwrap()
    })
    .await;

    // Under the live lease it is stored, as the job's owner's, in the job's project.
    let stored = store(&mesh, header(&job, &bytes, 64, 64), &bytes).await.unwrap();
    assert_eq!(
        (stored.owner_id.as_str(), stored.project_id.as_str()),
        (alice.id.as_str(), project.id.as_str())
    );
    let today = chrono::Utc::now().format("%Y/%m/%d").to_string();
    assert_eq!(keys_of(&mesh, &stored.id).await.0, format!("{}/{today}/{}-0.png", project.slug, job.id));
    let err =
        mesh.files(&bob.token).get_file(GetFileRequest { file_id: stored.id.clone() }).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "not bob's");
    // A header naming the job's own owner and project is the same upload; a retry under the
    // same lease answers with the record already stored.
    let again = ArtifactHeader {
        owner_id: alice.id.clone(),
        project_id: project.id.clone(),
        ..header(&job, &bytes, 64, 64)
    };
    assert_eq!(store(&mesh, again, &bytes).await.unwrap().id, stored.id);
    // Once the job is finished (the lease gone), no more uploads for it.
    let db = mesh.env.db().await.unwrap();
    db.execute(
        "UPDATE jobs SET status = 'succeeded', lease_token = NULL, lease_expires_at = NULL WHERE id = $1",
        &[&Uuid::parse_str(&job.id).unwrap()],
    )
    .await
    .unwrap();
    let err =
        store(&mesh, ArtifactHeader { index: 1, ..header(&job, &bytes, 64, 64) }, &bytes).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    mesh.stop().await;
}

async fn an_upload_past_its_declared_size_is_refused_as_it_arrives_and_leaves_no_partial_file(
    backend: Backend,
) {
    let mesh = Mesh::on(backend).await;
    let owner = Uuid::now_v7().to_string();
    let bytes = gradient(64, 64);
    let job = leased_job(&mesh, &owner, None, 64, 64).await;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(StoreArtifactRequest { part: Some(Part::Header(header(&job, &bytes, 64, 64))) }).await.unwrap();
    tx.send(StoreArtifactRequest { part: Some(Part::Chunk(bytes.clone())) }).await.unwrap();
    tx.send(StoreArtifactRequest { part: Some(Part::Chunk(vec![0])) }).await.unwrap();
    // The stream stays open: the refusal comes from the byte past the size, not its end.
    let mut files = mesh.files_as_generator().await;
    let err = files.store_artifact(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("more bytes than the header's size_bytes"), "{}", err.message());
    drop(tx);
    // Bytes that are not what the header promised are refused after the last chunk.
    let mut h = header(&job, &bytes, 64, 64);
    h.sha256 = hex::encode(Sha256::digest(b"something else"));
    let err = store(&mesh, h, &bytes).await.unwrap_err();
    assert!(err.message().contains("sha256 does not match"), "{}", err.message());
    assert_eq!(everything_stored(&mesh).await, Vec::<String>::new(), "no partial file remains");
    mesh.stop().await;
}

/// Uploads being written now: on local disk the partial files under `.tmp/`; on S3 the
/// organizer's (in this process) open anonymous spool files.
fn partial_uploads(mesh: &Mesh) -> usize {
    if mesh.weed.is_none() {
        return std::fs::read_dir(mesh.files_root().join(".tmp")).map_or(0, Iterator::count);
    }
    let tmp = std::env::temp_dir();
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter(|target| target.starts_with(&tmp) && target.to_string_lossy().ends_with(" (deleted)"))
        .count()
}

async fn the_concurrent_upload_cap_refuses_with_retry_after_and_frees_its_slot(backend: Backend) {
    let mut mesh = Mesh::on(backend).await;
    mesh.restart_organizer(|c| c.max_concurrent_uploads = 1).await;
    let owner = Uuid::now_v7().to_string();
    let bytes = gradient(64, 64);
    let (first, second) =
        (leased_job(&mesh, &owner, None, 64, 64).await, leased_job(&mesh, &owner, None, 64, 64).await);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(StoreArtifactRequest { part: Some(Part::Header(header(&first, &bytes, 64, 64))) }).await.unwrap();
    let (head, tail) = bytes.split_at(bytes.len() / 2);
    tx.send(StoreArtifactRequest { part: Some(Part::Chunk(head.to_vec())) }).await.unwrap();
    let mut files = mesh.files_as_generator().await;
    let before = partial_uploads(&mesh);
    let in_flight =
        tokio::spawn(
            async move { files.store_artifact(tokio_stream::wrappers::ReceiverStream::new(rx)).await },
        );
    // The first upload holds the only permit once its partial bytes exist.
    eventually("the first upload is being written", || async { partial_uploads(&mesh) > before }).await;
    let err = store(&mesh, header(&second, &bytes, 64, 64), &bytes).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("max_concurrent_uploads"), "names the ceiling: {}", err.message());
    let retry: u64 = err.metadata().get("retry-after").unwrap().to_str().unwrap().parse().unwrap();
    assert!(retry >= 1, "retry-after in seconds: {retry}");
    tx.send(StoreArtifactRequest { part: Some(Part::Chunk(tail.to_vec())) }).await.unwrap();
    drop(tx);
    in_flight.await.unwrap().unwrap();
    // The permit is back: the refused upload, retried, is stored.
    store(&mesh, header(&second, &bytes, 64, 64), &bytes).await.unwrap();
    mesh.stop().await;
}

on_both_backends!(
    blank_truncated_and_wrongly_sized_images_are_refused_with_reasons,
    an_artifact_is_accepted_only_under_the_jobs_live_lease_and_owned_as_the_job_is,
    an_upload_past_its_declared_size_is_refused_as_it_arrives_and_leaves_no_partial_file,
    the_concurrent_upload_cap_refuses_with_retry_after_and_frees_its_slot,
);
