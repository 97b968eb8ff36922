//! The optional export view (`storage.export`): each file's bytes again at its record's
//! human name under `export/`, placed after the record, gone with it, kept in step by the
//! reconciler, and never an upload's failure.

use std::time::Duration;

use sakuga_proto::v1::{CreateProjectRequest, DeleteFileRequest};
use sha2::{Digest as _, Sha256};
use uuid::Uuid;

use super::{
    Retained, everything_stored, gradient, header, keys_of, leased_job, project, reconciler, retained_pair,
    store, stored_bytes,
};
use crate::common::{Backend, Mesh};

/// The export key of a stored file: `export/` and its record's human name.
async fn export_key(mesh: &Mesh, file_id: &str) -> String {
    format!("export/{}", keys_of(mesh, file_id).await.0)
}

async fn with_export_on_the_human_named_object_holds_the_bytes_and_goes_with_the_file(backend: Backend) {
    let mut mesh = Mesh::on(backend).await;
    mesh.restart_organizer(|c| {
        c.storage.export = true;
        c.orphan_grace = Duration::ZERO;
    })
    .await;
    let alice = mesh.person("alice").await;
    let project =
        project(&mesh, &alice.token, CreateProjectRequest { name: "Browse Me".into(), ..Default::default() })
            .await;
    let bytes = gradient(64, 64);
    let blob = format!("blobs/{}", hex::encode(Sha256::digest(&bytes)));
    let (ja, jb) = (
        leased_job(&mesh, &alice.id, Some(&project.id), 64, 64).await,
        leased_job(&mesh, &alice.id, None, 64, 64).await,
    );
    let fa = store(&mesh, header(&ja, &bytes, 64, 64), &bytes).await.unwrap();
    let fb = store(&mesh, header(&jb, &bytes, 64, 64), &bytes).await.unwrap();
    let today = chrono::Utc::now().format("%Y/%m/%d").to_string();
    let (ea, eb) = (export_key(&mesh, &fa.id).await, export_key(&mesh, &fb.id).await);
    assert_eq!(ea, format!("export/browse-me/{today}/{}-0.png", ja.id), "by project and date");
    assert_eq!(eb, format!("export/unsorted/{today}/{}-0.png", jb.id));
    assert_eq!(stored_bytes(&mesh, &ea).await, bytes, "the same bytes at the human name");
    assert_eq!(stored_bytes(&mesh, &eb).await, bytes);
    let mut expected = vec![format!(".thumbs/{blob}"), blob.clone(), ea.clone(), eb.clone()];
    expected.sort();
    assert_eq!(mesh.stored_keys().await, expected, "still one blob; an entry per record");
    if backend == Backend::Local {
        // A hard link to the blob (as the last upload of those bytes wrote it), not a
        // second copy of the bytes.
        use std::os::unix::fs::MetadataExt as _;
        let inode = |key: &str| std::fs::metadata(mesh.files_root().join(key)).unwrap().ino();
        assert_eq!(inode(&eb), inode(&blob), "the entry is a link to the blob");
    }

    // Deleting a file removes its entry; the other record keeps its own and the blob.
    let mut files = mesh.files(&alice.token);
    files.delete_file(DeleteFileRequest { file_id: fa.id.clone() }).await.unwrap();
    let left = mesh.stored_keys().await;
    assert!(!left.contains(&ea), "the deleted file's entry is gone: {left:?}");
    assert!(left.contains(&eb) && left.contains(&blob), "{left:?}");
    assert_eq!(mesh.read_file(&alice.token, &fb.id).await, bytes);
    files.delete_file(DeleteFileRequest { file_id: fb.id.clone() }).await.unwrap();
    assert_eq!(mesh.stored_keys().await, Vec::<String>::new(), "nothing left, no entry either");
    mesh.stop().await;
}

async fn with_export_off_nothing_is_written_under_export(backend: Backend) {
    let mesh = Mesh::on(backend).await;
    assert!(!mesh.organizer_config().storage.export, "off by default");
    let alice = mesh.person("alice").await;
    let bytes = gradient(64, 64);
    let blob = format!("blobs/{}", hex::encode(Sha256::digest(&bytes)));
    let job = leased_job(&mesh, &alice.id, None, 64, 64).await;
    let f = store(&mesh, header(&job, &bytes, 64, 64), &bytes).await.unwrap();
    assert_eq!(everything_stored(&mesh).await, [format!(".thumbs/{blob}"), blob], "no export entry");
    let storage = mesh.storage().await;
    assert!(!storage.exists(&export_key(&mesh, &f.id).await).await.unwrap());
    mesh.stop().await;
}

async fn the_reconciler_removes_entries_no_record_names_and_places_missing_ones(backend: Backend) {
    let mut mesh = Mesh::on(backend).await;
    mesh.restart_organizer(|c| c.storage.export = true).await;
    let alice = mesh.person("alice").await;
    let Retained { old, new, new_bytes, .. } = retained_pair(&mesh, &alice).await;
    let (old_entry, new_entry) = (export_key(&mesh, &old.id).await, export_key(&mesh, &new.id).await);
    let storage = mesh.storage().await;
    assert!(storage.exists(&old_entry).await.unwrap());
    // The old file is past its project's retention; the new one lost its entry; a stray
    // entry names no record.
    storage.delete(&new_entry).await.unwrap();
    let stray = format!("export/unsorted/2020/01/01/{}-0.png", Uuid::now_v7());
    storage.put(&stray, b"no record names this".to_vec()).await.unwrap();

    let mut reconciler = reconciler(&mesh, Duration::from_hours(1), true).await;
    // Within the grace period the stray entry stays (as young orphan bytes do).
    let report = reconciler.run_once().await.unwrap();
    assert_eq!((report.expired, report.exports_removed, report.exports_placed), (1, 0, 1), "{report:?}");
    assert!(storage.exists(&stray).await.unwrap());
    assert!(!storage.exists(&old_entry).await.unwrap(), "retention removed the expired file's entry");
    assert_eq!(stored_bytes(&mesh, &new_entry).await, new_bytes, "the missing entry is placed again");

    // Past the grace period: the stray entry goes (counted apart from bytes), and so do the
    // expired file's blob and thumbnail; the entry a record names is kept, not an orphan.
    reconciler.grace = Duration::ZERO;
    let report = reconciler.run_once().await.unwrap();
    assert_eq!((report.orphans, report.exports_removed, report.exports_placed), (2, 1, 0), "{report:?}");
    let blob = format!("blobs/{}", hex::encode(Sha256::digest(&new_bytes)));
    let mut expected = vec![format!(".thumbs/{blob}"), blob.clone(), new_entry.clone()];
    expected.sort();
    assert_eq!(mesh.stored_keys().await, expected);

    // With the view off, a missing entry is not placed again.
    reconciler.export = false;
    storage.delete(&new_entry).await.unwrap();
    let report = reconciler.run_once().await.unwrap();
    assert_eq!((report.orphans, report.exports_removed, report.exports_placed), (0, 0, 0), "{report:?}");
    assert_eq!(mesh.stored_keys().await, [format!(".thumbs/{blob}"), blob]);
    mesh.stop().await;
}

on_both_backends!(
    with_export_on_the_human_named_object_holds_the_bytes_and_goes_with_the_file,
    with_export_off_nothing_is_written_under_export,
    the_reconciler_removes_entries_no_record_names_and_places_missing_ones,
);

/// An entry that cannot be placed fails nothing: the upload is stored and recorded, the
/// failure counted.
#[tokio::test]
#[allow(clippy::float_cmp)] // counters are small integers, exact in an f64
async fn an_export_entry_that_cannot_be_placed_does_not_fail_the_upload() {
    let mut mesh = Mesh::on(Backend::Local).await;
    mesh.restart_organizer(|c| c.storage.export = true).await;
    // A file where the export folder would be: no entry can be placed under it.
    std::fs::write(mesh.files_root().join("export"), b"in the way").unwrap();
    let alice = mesh.person("alice").await;
    let bytes = gradient(64, 64);
    let job = leased_job(&mesh, &alice.id, None, 64, 64).await;
    let f = store(&mesh, header(&job, &bytes, 64, 64), &bytes).await.unwrap();
    assert_eq!(mesh.read_file(&alice.token, &f.id).await, bytes);
    let metrics = crate::metrics::scrape(mesh.organizer.metrics.unwrap()).await;
    assert_eq!(crate::metrics::value(&metrics, "sakuga_export_failed_total"), 1.0);
    assert_eq!(crate::metrics::value(&metrics, r#"sakuga_files_stored_total{kind="image"}"#), 1.0);
    mesh.stop().await;
}
