//! Content-addressed bytes on both backends (a local folder and an S3 bucket on SeaweedFS):
//! stored once under their sha256, read whole and in ranges, kept while a record points at
//! them, cleaned up after a crash by the reconciler, which runs on one organizer at a time.

use std::time::Duration;

use sakuga_proto::v1::{DeleteFileRequest, GetFileRequest, ListFilesRequest, ReadFileRequest};
use sha2::{Digest as _, Sha256};
use tokio_stream::StreamExt as _;
use tonic::Code;
use uuid::Uuid;

use super::{eventually, gradient, header, keys_of, leased_job, reconciler, store, thumbnail};
use crate::common::{Backend, Mesh};

/// `length` bytes (0: to the end) of a file from `offset`, through ReadFile.
async fn read_range(mesh: &Mesh, token: &str, file_id: &str, offset: u64, length: u64) -> Vec<u8> {
    let req = ReadFileRequest { file_id: file_id.to_owned(), offset, length };
    let mut s = mesh.files(token).read_file(req).await.unwrap().into_inner();
    let mut out = Vec::new();
    while let Some(c) = s.next().await {
        out.extend(c.unwrap().chunk);
    }
    out
}

async fn identical_bytes_are_one_object_read_whole_and_in_ranges(backend: Backend) {
    let mut mesh = Mesh::on(backend).await;
    mesh.restart_organizer(|c| c.orphan_grace = Duration::ZERO).await;
    let alice = mesh.person("alice").await;
    let bytes = gradient(64, 64);
    let sha = hex::encode(Sha256::digest(&bytes));
    let (ja, jb) =
        (leased_job(&mesh, &alice.id, None, 64, 64).await, leased_job(&mesh, &alice.id, None, 64, 64).await);
    let fa = store(&mesh, header(&ja, &bytes, 64, 64), &bytes).await.unwrap();
    let fb = store(&mesh, header(&jb, &bytes, 64, 64), &bytes).await.unwrap();
    assert_ne!(fa.id, fb.id);
    let blob = format!("blobs/{sha}");
    assert_eq!(
        mesh.stored_keys().await,
        [format!(".thumbs/{blob}"), blob.clone()],
        "one object for both records, and its thumbnail"
    );
    let today = chrono::Utc::now().format("%Y/%m/%d").to_string();
    assert_eq!(
        keys_of(&mesh, &fa.id).await,
        (format!("unsorted/{today}/{}-0.png", ja.id), Some(blob.clone()))
    );
    assert_eq!(keys_of(&mesh, &fb.id).await.1, Some(blob.clone()));

    // Read back whole, and in ranges.
    let back = mesh.read_file(&alice.token, &fb.id).await;
    assert_eq!(hex::encode(Sha256::digest(&back)), sha);
    assert_eq!(read_range(&mesh, &alice.token, &fa.id, 10, 100).await, bytes[10..110]);
    let tail = bytes.len() as u64 - 5;
    assert_eq!(read_range(&mesh, &alice.token, &fa.id, tail, 0).await, bytes[bytes.len() - 5..]);
    let err = mesh
        .files(&alice.token)
        .read_file(ReadFileRequest { file_id: fa.id.clone(), offset: bytes.len() as u64 + 1, length: 0 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // No response names where the bytes are.
    let mut files = mesh.files(&alice.token);
    let got = files.get_file(GetFileRequest { file_id: fa.id.clone() }).await.unwrap().into_inner();
    let listed = files.list_files(ListFilesRequest::default()).await.unwrap().into_inner();
    let text = format!("{fa:?}{fb:?}{got:?}{listed:?}");
    let mut places =
        vec!["blobs/".to_owned(), "unsorted/".to_owned(), mesh.files_root().display().to_string()];
    if let Some(weed) = &mesh.weed {
        places.extend([weed.endpoint.clone(), sakuga_testkit::weed::BUCKET.to_owned() + "/"]);
    }
    for place in places {
        assert!(!text.contains(&place), "a response names {place}: {text}");
    }

    // Deleting one record keeps the other's bytes; deleting the last removes them.
    files.delete_file(DeleteFileRequest { file_id: fa.id.clone() }).await.unwrap();
    assert_eq!(mesh.read_file(&alice.token, &fb.id).await, bytes, "the other record keeps its bytes");
    assert!(thumbnail(&mesh, &alice.token, &fb.id).await.is_ok());
    assert_eq!(mesh.stored_keys().await.len(), 2);
    let db = mesh.env.db().await.unwrap();
    let (db, fa_id) = (&db, &fa.id);
    eventually("the deletion is audited", || async move {
        let sql = "SELECT count(*) FROM audit_events WHERE action = 'FileService.DeleteFile' AND result = 'OK' \
                   AND target = 'file:' || $1";
        db.query_one(sql, &[fa_id]).await.unwrap().get::<_, i64>(0) == 1
    })
    .await;
    files.delete_file(DeleteFileRequest { file_id: fb.id.clone() }).await.unwrap();
    assert_eq!(mesh.stored_keys().await, Vec::<String>::new(), "the last record's bytes go with it");
    mesh.stop().await;
}

#[tokio::test]
async fn identical_bytes_are_one_object_read_whole_and_in_ranges_on_local_disk() {
    Box::pin(identical_bytes_are_one_object_read_whole_and_in_ranges(Backend::Local)).await;
}

#[tokio::test]
async fn identical_bytes_are_one_object_read_whole_and_in_ranges_on_s3() {
    Box::pin(identical_bytes_are_one_object_read_whole_and_in_ranges(Backend::S3)).await;
}

async fn a_crash_between_write_and_record_is_cleaned_up_by_the_reconciler(backend: Backend) {
    let mut mesh = Mesh::on(backend).await;
    let alice = mesh.person("alice").await;
    let bytes = gradient(96, 64);
    let blob = format!("blobs/{}", hex::encode(Sha256::digest(&bytes)));
    mesh.restart_organizer_with_faults(
        |_| {},
        sakuga_organizer::Faults { crash_after_write: true, ..Default::default() },
    )
    .await;
    let job = leased_job(&mesh, &alice.id, None, 96, 64).await;
    let err = store(&mesh, header(&job, &bytes, 96, 64), &bytes).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(mesh.stored_keys().await.contains(&blob), "the bytes were written");
    // Some record, so the pass does not take the database for an empty one.
    let db = mesh.env.db().await.unwrap();
    db.execute(
        "INSERT INTO files (id, job_id, owner_id, idx, kind, mime_type, width, height, frames, size_bytes, \
         sha256, storage_key, blob_key) VALUES ($1, $2, $3, 0, 'image', 'image/png', 64, 64, 1, 10, $4, \
         'unsorted/2020/01/01/ghost-0.png', 'blobs/ghost')",
        &[&Uuid::now_v7(), &Uuid::now_v7(), &alice.id, &"0".repeat(64)],
    )
    .await
    .unwrap();

    // Restarted without the fault, the start-up pass removes what no record points at.
    mesh.restart_organizer(|c| c.orphan_grace = Duration::ZERO).await;
    let mesh_ref = &mesh;
    eventually("no orphan bytes or thumbnails remain", || async move {
        mesh_ref.stored_keys().await.iter().all(|k| k.starts_with(".tmp/"))
    })
    .await;
    // The upload, retried, now succeeds and its bytes are there.
    let f = store(&mesh, header(&job, &bytes, 96, 64), &bytes).await.unwrap();
    assert_eq!(mesh.read_file(&alice.token, &f.id).await, bytes);
    assert!(mesh.stored_keys().await.contains(&blob));
    mesh.stop().await;
}

#[tokio::test]
async fn a_crash_between_write_and_record_is_cleaned_up_by_the_reconciler_on_local_disk() {
    Box::pin(a_crash_between_write_and_record_is_cleaned_up_by_the_reconciler(Backend::Local)).await;
}

#[tokio::test]
async fn a_crash_between_write_and_record_is_cleaned_up_by_the_reconciler_on_s3() {
    Box::pin(a_crash_between_write_and_record_is_cleaned_up_by_the_reconciler(Backend::S3)).await;
}

async fn large_uploads_are_committed_whole_and_read_in_ranges(backend: Backend) {
    let mesh = Mesh::on(backend).await;
    let storage = mesh.storage().await;
    // Past one part of a multipart upload (8 MiB), in 1 MiB chunks as uploads arrive.
    let bytes: Vec<u8> = (0..20 * 1024 * 1024 + 123).map(|i| u8::try_from(i % 251).unwrap()).collect();
    let mut up = storage.begin().await.unwrap();
    for chunk in bytes.chunks(1024 * 1024) {
        up.write(chunk.to_vec()).await.unwrap();
    }
    assert_eq!(up.finish().await.unwrap(), hex::encode(Sha256::digest(&bytes)));
    assert!(storage.keys().await.unwrap().is_empty(), "not a key before the commit");
    up.commit("blobs/large").await.unwrap();
    assert_eq!(storage.read("blobs/large", 0, 0).await.unwrap(), bytes);
    let at = 9 * 1024 * 1024 - 7;
    assert_eq!(storage.read("blobs/large", at as u64, 4096).await.unwrap(), bytes[at..at + 4096]);
    // An upload dropped before its commit leaves nothing.
    let mut up = storage.begin().await.unwrap();
    up.write(vec![1; 1000]).await.unwrap();
    drop(up);
    let keys: Vec<_> = storage.keys().await.unwrap().into_iter().map(|o| o.key).collect();
    assert_eq!(keys, ["blobs/large"]);
    storage.delete("blobs/large").await.unwrap();
    storage.delete("blobs/large").await.unwrap();
    assert!(!storage.exists("blobs/large").await.unwrap());
    mesh.stop().await;
}

#[tokio::test]
async fn large_uploads_are_committed_whole_and_read_in_ranges_on_local_disk() {
    Box::pin(large_uploads_are_committed_whole_and_read_in_ranges(Backend::Local)).await;
}

#[tokio::test]
async fn large_uploads_are_committed_whole_and_read_in_ranges_on_s3() {
    Box::pin(large_uploads_are_committed_whole_and_read_in_ranges(Backend::S3)).await;
}

/// Records from before content addressing have their bytes at their human name.
async fn records_from_before_content_addressing_are_read_at_their_name_and_kept(backend: Backend) {
    let mut mesh = Mesh::on(backend).await;
    let alice = mesh.person("alice").await;
    let bytes = gradient(64, 64);
    let key = format!("unsorted/2025/01/01/{}-0.png", Uuid::now_v7());
    let storage = mesh.storage().await;
    storage.put(&key, bytes.clone()).await.unwrap();
    let id = Uuid::now_v7();
    let db = mesh.env.db().await.unwrap();
    db.execute(
        "INSERT INTO files (id, job_id, owner_id, idx, kind, mime_type, width, height, frames, size_bytes, \
         sha256, storage_key) VALUES ($1, $2, $3, 0, 'image', 'image/png', 64, 64, 1, $4, $5, $6)",
        &[
            &id,
            &Uuid::now_v7(),
            &alice.id,
            &i64::try_from(bytes.len()).unwrap(),
            &hex::encode(Sha256::digest(&bytes)),
            &key,
        ],
    )
    .await
    .unwrap();
    // A reconciler pass with no grace keeps them: a record points at them.
    mesh.restart_organizer(|c| c.orphan_grace = Duration::ZERO).await;
    assert_eq!(mesh.read_file(&alice.token, &id.to_string()).await, bytes);
    assert_eq!(read_range(&mesh, &alice.token, &id.to_string(), 3, 7).await, bytes[3..10]);
    assert!(thumbnail(&mesh, &alice.token, &id.to_string()).await.is_ok(), "made from the bytes at the name");
    assert!(storage.exists(&key).await.unwrap());
    let flagged: bool =
        db.query_one("SELECT missing_at IS NOT NULL FROM files WHERE id = $1", &[&id]).await.unwrap().get(0);
    assert!(!flagged);
    // Deleting the record removes them.
    mesh.files(&alice.token).delete_file(DeleteFileRequest { file_id: id.to_string() }).await.unwrap();
    assert!(!storage.exists(&key).await.unwrap());
    mesh.stop().await;
}

on_both_backends!(records_from_before_content_addressing_are_read_at_their_name_and_kept);

/// Any number of organizers serve the files in one bucket: what one stored, another reads,
/// thumbnails and deletes.
#[tokio::test]
async fn two_organizers_on_one_bucket_serve_the_same_files() {
    let mut mesh = Mesh::on(Backend::S3).await;
    mesh.restart_organizer(|c| c.orphan_grace = Duration::ZERO).await;
    let mut second_cfg = mesh.organizer_config();
    second_cfg.orphan_grace = Duration::ZERO;
    let second = sakuga_testkit::spawn_organizer(second_cfg).await.unwrap();
    let alice = mesh.person("alice").await;
    let bytes = gradient(64, 64);
    let job = leased_job(&mesh, &alice.id, None, 64, 64).await;
    let f = store(&mesh, header(&job, &bytes, 64, 64), &bytes).await.unwrap();
    let mut there = sakuga_proto::v1::file_service_client::FileServiceClient::new(
        mesh.authed(&second.addr_string(), &alice.token),
    );
    let mut s = there
        .read_file(ReadFileRequest { file_id: f.id.clone(), offset: 5, length: 50 })
        .await
        .unwrap()
        .into_inner();
    let mut back = Vec::new();
    while let Some(c) = s.next().await {
        back.extend(c.unwrap().chunk);
    }
    assert_eq!(back, bytes[5..55]);
    let thumb = there
        .get_thumbnail(sakuga_proto::v1::GetThumbnailRequest { file_id: f.id.clone() })
        .await
        .unwrap()
        .into_inner()
        .next()
        .await
        .unwrap()
        .unwrap();
    assert!(!thumb.chunk.is_empty());
    there.delete_file(DeleteFileRequest { file_id: f.id.clone() }).await.unwrap();
    assert_eq!(mesh.stored_keys().await, Vec::<String>::new());
    let err = mesh.files(&alice.token).get_file(GetFileRequest { file_id: f.id.clone() }).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    second.stop().await.unwrap();
    mesh.stop().await;
}

/// Of several organizers on one database, one reconciles at a time; the others skip. A pass
/// that cannot read the records removes nothing.
async fn a_reconciler_pass_is_skipped_while_another_organizer_holds_the_lock_or_records_cannot_be_read(
    backend: Backend,
) {
    let mesh = Mesh::on(backend).await;
    let reconciler = reconciler(&mesh, Duration::ZERO, false).await;
    let storage = reconciler.storage.clone();
    storage.put("blobs/orphan", b"no record".to_vec()).await.unwrap();
    let db = mesh.env.db().await.unwrap();
    db.execute(
        "INSERT INTO files (id, job_id, owner_id, idx, kind, mime_type, width, height, frames, size_bytes, \
         sha256, storage_key, blob_key) VALUES ($1, $2, 'someone', 0, 'image', 'image/png', 64, 64, 1, 10, $3, \
         'unsorted/x-0.png', 'blobs/kept')",
        &[&Uuid::now_v7(), &Uuid::now_v7(), &"0".repeat(64)],
    )
    .await
    .unwrap();
    let mut other = mesh.env.db().await.unwrap();
    let held = other.transaction().await.unwrap();
    held.execute("SELECT pg_advisory_xact_lock($1)", &[&sakuga_organizer::store::RECONCILE_LOCK])
        .await
        .unwrap();
    let report = reconciler.run_once().await.unwrap();
    assert!(report.locked_elsewhere, "{report:?}");
    assert_eq!(report.orphans, 0);
    assert!(storage.exists("blobs/orphan").await.unwrap());
    held.commit().await.unwrap();

    // Records that cannot be read: the pass fails and removes nothing.
    db.execute("ALTER TABLE files RENAME TO files_elsewhere", &[]).await.unwrap();
    assert!(reconciler.run_once().await.is_err());
    assert!(storage.exists("blobs/orphan").await.unwrap(), "nothing removed blind");
    db.execute("ALTER TABLE files_elsewhere RENAME TO files", &[]).await.unwrap();

    let report = reconciler.run_once().await.unwrap();
    assert!(!report.locked_elsewhere);
    assert_eq!((report.orphans, report.missing), (1, 1), "{report:?}");
    assert!(!storage.exists("blobs/orphan").await.unwrap());
    mesh.stop().await;
}

on_both_backends!(
    a_reconciler_pass_is_skipped_while_another_organizer_holds_the_lock_or_records_cannot_be_read
);

/// The organizer speaks TLS to an HTTPS endpoint whose certificate chains to `ca_file`,
/// refuses one it cannot verify, and speaks plain HTTP only when allowed.
#[tokio::test]
async fn the_s3_endpoint_is_reached_over_tls_trusting_the_configured_ca_only() {
    let mesh = Mesh::on(Backend::S3).await;
    let weed = mesh.weed.as_ref().unwrap();
    let vault = sakuga_mesh::vault::Vault::connect(&mesh.env.vault_config()).await.unwrap();
    let mut config = mesh.organizer_config().storage;
    config.s3.endpoint.clone_from(&weed.https_endpoint);
    config.s3.allow_http = false;
    config.s3.ca_file.clone_from(&weed.ca_file);
    config.validate().unwrap();
    let storage = sakuga_organizer::storage::open(&config, &vault).await.unwrap();
    storage.put("blobs/over-tls", b"sealed".to_vec()).await.unwrap();
    assert_eq!(storage.read("blobs/over-tls", 2, 3).await.unwrap(), b"ale");
    storage.health().await.unwrap();

    // Without the private CA the server's certificate is not trusted.
    config.s3.ca_file = std::path::PathBuf::new();
    let untrusted = sakuga_organizer::storage::open(&config, &vault).await.unwrap();
    assert!(untrusted.read("blobs/over-tls", 0, 0).await.is_err());
    assert!(untrusted.health().await.is_err());
    // An http:// endpoint is refused unless allowed.
    config.s3.endpoint.clone_from(&weed.endpoint);
    assert!(config.validate().is_err());
    mesh.stop().await;
}
