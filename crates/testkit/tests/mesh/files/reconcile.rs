//! Bytes and records in step: a crash between writing the bytes and the record, project
//! retention, and a database with no records beside a store with files.

use std::time::Duration;

use sakuga_proto::v1::GetFileRequest;
use sha2::{Digest as _, Sha256};
use tonic::Code;
use uuid::Uuid;

use super::{
    Retained, eventually, everything_stored, gradient, header, leased_job, reconciler, retained_pair, store,
};
use crate::common::{Backend, Mesh};

async fn a_crash_between_writing_bytes_and_the_record_leaves_no_orphan_after_a_restart(backend: Backend) {
    let mut mesh = Mesh::on(backend).await;
    let alice = mesh.person("alice").await;
    let bytes = gradient(96, 64);
    let crash = sakuga_organizer::Faults { crash_after_write: true, ..Default::default() };
    mesh.restart_organizer_with_faults(|_| {}, crash).await;
    let job = leased_job(&mesh, &alice.id, None, 96, 64).await;
    let err = store(&mesh, header(&job, &bytes, 96, 64), &bytes).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    let left = everything_stored(&mesh).await;
    let blob = format!("blobs/{}", hex::encode(Sha256::digest(&bytes)));
    assert!(left.contains(&blob), "the bytes were written: {left:?}");
    // A record whose bytes are gone, as a lost disk would leave it.
    let db = mesh.env.db().await.unwrap();
    let ghost = Uuid::now_v7();
    db.execute(
        "INSERT INTO files (id, job_id, owner_id, idx, kind, mime_type, width, height, frames, size_bytes, \
         sha256, storage_key) VALUES ($1, $2, $3, 0, 'image', 'image/png', 64, 64, 1, 10, $4, $5)",
        &[&ghost, &Uuid::now_v7(), &alice.id, &"0".repeat(64), &"unsorted/2020/01/01/ghost-0.png"],
    )
    .await
    .unwrap();

    // Restart without the fault: the start-up pass removes what no record points at.
    mesh.restart_organizer(|c| c.orphan_grace = Duration::ZERO).await;
    eventually("no orphan bytes or thumbnails remain", || async {
        everything_stored(&mesh).await.iter().all(|f| f.starts_with(".tmp"))
    })
    .await;
    let missing: bool = db
        .query_one("SELECT missing_at IS NOT NULL FROM files WHERE id = $1", &[&ghost])
        .await
        .unwrap()
        .get(0);
    assert!(missing, "the record whose bytes are gone is flagged");
    let mut files = mesh.files(&alice.token);
    let err = files
        .read_file(sakuga_proto::v1::ReadFileRequest { file_id: ghost.to_string(), offset: 0, length: 0 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DataLoss);
    // The upload, retried, now succeeds.
    store(&mesh, header(&job, &bytes, 96, 64), &bytes).await.unwrap();
    mesh.stop().await;
}

async fn files_past_their_project_retention_are_deleted_and_audited(backend: Backend) {
    let mut mesh = Mesh::on(backend).await;
    let alice = mesh.person("alice").await;
    let Retained { project, old, new, new_bytes } = retained_pair(&mesh, &alice).await;
    assert_eq!(
        (old.project_id.as_str(), new.project_id.as_str()),
        (project.id.as_str(), project.id.as_str())
    );
    let db = mesh.env.db().await.unwrap();
    // No grace: the bytes of the test's expired file were written moments ago.
    mesh.restart_organizer(|c| {
        c.reconcile_interval = Duration::from_secs(1);
        c.orphan_grace = Duration::ZERO;
    })
    .await;
    let mut files = mesh.files(&alice.token);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while files.get_file(GetFileRequest { file_id: old.id.clone() }).await.is_ok() {
        assert!(tokio::time::Instant::now() < deadline, "the expired file was not deleted");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    files.get_file(GetFileRequest { file_id: new.id.clone() }).await.unwrap();
    let blob = format!("blobs/{}", hex::encode(Sha256::digest(&new_bytes)));
    assert_eq!(
        everything_stored(&mesh).await,
        [format!(".thumbs/{blob}"), blob],
        "the new file and its thumbnail"
    );
    let audited: i64 = db
        .query_one(
            "SELECT count(*) FROM audit_events WHERE action = 'FileService.Retention' AND target = $1",
            &[&format!("file:{}", old.id)],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(audited, 1);
    mesh.stop().await;
}

async fn the_reconciler_deletes_nothing_when_the_database_has_no_file_records_but_the_store_has_files(
    backend: Backend,
) {
    let mesh = Mesh::on(backend).await;
    let reconciler = reconciler(&mesh, Duration::ZERO, false).await;
    let storage = reconciler.storage.clone();
    let key = "unsorted/2020/01/01/library-0.png";
    storage.put(key, b"a file of the real library".to_vec()).await.unwrap();
    let report = reconciler.run_once().await.unwrap();
    assert!(report.refused_empty_database, "{report:?}");
    assert_eq!(report.orphans, 0);
    assert!(storage.exists(key).await.unwrap(), "the library is kept");
    // With a record in the database, bytes no record points at are orphans again.
    let db = mesh.env.db().await.unwrap();
    db.execute(
        "INSERT INTO files (id, job_id, owner_id, idx, kind, mime_type, width, height, frames, size_bytes, \
         sha256, storage_key) VALUES ($1, $2, 'someone', 0, 'image', 'image/png', 64, 64, 1, 10, $3, 'unsorted/x-0.png')",
        &[&Uuid::now_v7(), &Uuid::now_v7(), &"0".repeat(64)],
    )
    .await
    .unwrap();
    let report = reconciler.run_once().await.unwrap();
    assert!(!report.refused_empty_database);
    assert_eq!(report.orphans, 1, "{report:?}");
    assert!(!storage.exists(key).await.unwrap());
    mesh.stop().await;
}

on_both_backends!(
    a_crash_between_writing_bytes_and_the_record_leaves_no_orphan_after_a_restart,
    files_past_their_project_retention_are_deleted_and_audited,
    the_reconciler_deletes_nothing_when_the_database_has_no_file_records_but_the_store_has_files,
);
