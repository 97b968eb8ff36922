//! Projects, characters and organized files: composed prompts, the project folder,
//! thumbnails, quality checks, bytes stored once, crash safety, retention, no paths, the
//! export view. Every test that stores bytes runs on both backends (a local folder and an S3
//! bucket on SeaweedFS): its body is an `async fn(Backend)`, and [`on_both_backends!`]
//! makes the `<test>::local` and `<test>::s3` pair.

use std::{path::Path, time::Duration};

use sakuga_proto::v1::{
    ArtifactHeader, GetThumbnailRequest, JobKind, ListFilesRequest, StoreArtifactRequest,
    store_artifact_request::Part,
};
use sha2::{Digest as _, Sha256};
use tokio_stream::StreamExt as _;
use uuid::Uuid;

use crate::common::Mesh;

/// Makes each named `async fn(Backend)` in scope two tests, `<name>::local` (bytes in a
/// folder) and `<name>::s3` (bytes in a SeaweedFS bucket).
macro_rules! on_both_backends {
    ($($case:ident),+ $(,)?) => {$(
        mod $case {
            use crate::common::Backend;

            #[tokio::test]
            async fn local() {
                Box::pin(super::$case(Backend::Local)).await;
            }

            #[tokio::test]
            async fn s3() {
                Box::pin(super::$case(Backend::S3)).await;
            }
        }
    )+};
}

mod export;
mod objects;
mod presign;
mod projects;
mod reads;
mod reconcile;
mod uploads;

/// Every file under `root`, relative, sorted.
fn files_under(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    out
}

/// Everything the organizer's store holds, sorted: on local disk every file under its
/// folder (partial writes under `.tmp/` included), on S3 every object under the test's
/// prefix (an upload's partial bytes are in an anonymous spool file there, never in the
/// bucket).
async fn everything_stored(mesh: &Mesh) -> Vec<String> {
    match mesh.weed {
        None => files_under(&mesh.files_root()),
        Some(_) => mesh.stored_keys().await,
    }
}

/// The bytes at `key` of the organizer's store (read as the organizer reads them).
async fn stored_bytes(mesh: &Mesh, key: &str) -> Vec<u8> {
    mesh.storage().await.read(key, 0, 0).await.unwrap_or_else(|e| panic!("{key}: {e}"))
}

/// The human name and the bytes key of a record.
async fn keys_of(mesh: &Mesh, file_id: &str) -> (String, Option<String>) {
    let db = mesh.env.db().await.unwrap();
    let row = db
        .query_one(
            "SELECT storage_key, blob_key FROM files WHERE id = $1",
            &[&Uuid::parse_str(file_id).unwrap()],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

/// Waits up to ten seconds for `check` to hold.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "not within 10 s: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A reconciler on the mesh's database and store, returned once the mesh organizer's own
/// start-up pass (under the same lock) is over, so the test's passes are not skipped and
/// see only what the test did.
async fn reconciler(mesh: &Mesh, grace: Duration, export: bool) -> sakuga_organizer::reconcile::Reconciler {
    let vault = sakuga_mesh::vault::Vault::connect(&mesh.env.vault_config()).await.unwrap();
    let pool = sakuga_mesh::db::connect_with_vault(&vault, &mesh.env.database_config()).await.unwrap();
    let reconciler = sakuga_organizer::reconcile::Reconciler {
        store: sakuga_organizer::store::Store::new(pool.clone()),
        storage: mesh.storage().await,
        audit: sakuga_mesh::auth::Audit::new(pool),
        grace,
        export,
    };
    // The organizer serves its port only after its start-up pass: an answer means it is over.
    let listed = mesh.files(&mesh.admin_token).list_files(ListFilesRequest::default()).await;
    listed.unwrap();
    reconciler
}

async fn thumbnail(mesh: &Mesh, token: &str, file_id: &str) -> Result<Vec<u8>, tonic::Status> {
    let mut files = mesh.files(token);
    let mut s = files.get_thumbnail(GetThumbnailRequest { file_id: file_id.to_owned() }).await?.into_inner();
    let mut bytes = Vec::new();
    while let Some(c) = s.next().await {
        bytes.extend(c?.chunk);
    }
    Ok(bytes)
}

/// A job as the scheduler leaves it once a generator holds it: running, its lease live for
/// an hour, owned by `owner` (in `project`), asking for one `width`×`height` image.
struct Leased {
    id: String,
    lease: String,
}

async fn leased_job(mesh: &Mesh, owner: &str, project: Option<&str>, width: u32, height: u32) -> Leased {
    leased_job_as(mesh, owner, project, (width, height), "running", "1 hour").await
}

/// Like [`leased_job`] with the job's `status` and its lease expiring after `expires_in`
/// (an SQL interval, negative for a lease already expired).
async fn leased_job_as(
    mesh: &Mesh,
    owner: &str,
    project: Option<&str>,
    (width, height): (u32, u32),
    status: &str,
    expires_in: &str,
) -> Leased {
    let db = mesh.env.db().await.unwrap();
    let (id, lease) = (Uuid::now_v7(), Uuid::new_v4());
    let project = project.map(|p| Uuid::parse_str(p).unwrap());
    db.execute(
        "INSERT INTO jobs (id, owner_id, project_id, kind, backend, model, prompt, composed_prompt, width, height, \
         steps, batch_size, frames, fps, seed, cfg_scale, sampler, status, attempts, lease_token, lease_expires_at, \
         worker_id) VALUES ($1, $2, $3, 'image', 'builtin', 'builtin', 'leased', 'leased', $4, $5, 1, 1, 0, 0, 7, \
         7.0, 'euler', $6, 1, $7, now() + $8::text::interval, 'elsewhere')",
        &[
            &id,
            &owner,
            &project,
            &i32::try_from(width).unwrap(),
            &i32::try_from(height).unwrap(),
            &status,
            &lease,
            &expires_in,
        ],
    )
    .await
    .unwrap();
    Leased { id: id.to_string(), lease: lease.to_string() }
}

/// The header a generator sends for `job`: its lease token, no owner or project (the
/// organizer takes both from the job).
fn header(job: &Leased, bytes: &[u8], width: u32, height: u32) -> ArtifactHeader {
    ArtifactHeader {
        job_id: job.id.clone(),
        lease_token: job.lease.clone(),
        index: 0,
        kind: JobKind::Image.into(),
        mime_type: "image/png".into(),
        width,
        height,
        frames: 1,
        size_bytes: bytes.len() as u64,
        sha256: hex::encode(Sha256::digest(bytes)),
        ..Default::default()
    }
}

async fn store(
    mesh: &Mesh,
    header: ArtifactHeader,
    bytes: &[u8],
) -> Result<sakuga_proto::v1::File, tonic::Status> {
    let mut files = mesh.files_as_generator().await;
    let parts = vec![
        StoreArtifactRequest { part: Some(Part::Header(header)) },
        StoreArtifactRequest { part: Some(Part::Chunk(bytes.to_vec())) },
    ];
    Ok(files.store_artifact(tokio_stream::iter(parts)).await?.into_inner().file.unwrap())
}

/// A project `req` of the person with `token`, created.
async fn project(
    mesh: &Mesh,
    token: &str,
    req: sakuga_proto::v1::CreateProjectRequest,
) -> sakuga_proto::v1::Project {
    mesh.projects(token).create_project(req).await.unwrap().into_inner().project.unwrap()
}

/// A project of `owner` that keeps files 7 days, with two of its files: `old`, made 8 days
/// ago (past the retention), and `new`, whose bytes are `new_bytes`.
struct Retained {
    project: sakuga_proto::v1::Project,
    old: sakuga_proto::v1::File,
    new: sakuga_proto::v1::File,
    new_bytes: Vec<u8>,
}

async fn retained_pair(mesh: &Mesh, owner: &crate::common::Person) -> Retained {
    let req = sakuga_proto::v1::CreateProjectRequest {
        name: "Dailies".into(),
        retention_days: 7,
        ..Default::default()
    };
    let project = project(mesh, &owner.token, req).await;
    let (old_bytes, new_bytes) = (gradient(64, 64), gradient(72, 64));
    let job = leased_job(mesh, &owner.id, Some(&project.id), 64, 64).await;
    let old = store(mesh, header(&job, &old_bytes, 64, 64), &old_bytes).await.unwrap();
    let job = leased_job(mesh, &owner.id, Some(&project.id), 72, 64).await;
    let new = store(mesh, header(&job, &new_bytes, 72, 64), &new_bytes).await.unwrap();
    mesh.env
        .db()
        .await
        .unwrap()
        .execute(
            "UPDATE files SET created_at = now() - interval '8 days' WHERE id = $1",
            &[&Uuid::parse_str(&old.id).unwrap()],
        )
        .await
        .unwrap();
    Retained { project, old, new, new_bytes }
}

fn gradient(width: u32, height: u32) -> Vec<u8> {
    let rgb: Vec<u8> = (0..width * height).flat_map(|i| [u8::try_from(i % 256).unwrap(), 80, 160]).collect();
    sakuga_imaging::encode_rgb_png(width, height, &rgb).unwrap()
}
