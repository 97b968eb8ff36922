//! Projects, characters and organized files: composed prompts, the project folder,
//! thumbnails, quality checks, bytes stored once, crash safety, retention, no paths.

use std::{path::Path, time::Duration};

use sakuga_proto::v1::{
    ArtifactHeader, CreateCharacterRequest, CreateProjectRequest, GetFileRequest, GetJobRequest,
    GetThumbnailRequest, JobKind, JobStatus, ListFilesRequest, ListJobsRequest, StoreArtifactRequest,
    UpdateProjectRequest, store_artifact_request::Part,
};
use sha2::{Digest as _, Sha256};
use tokio_stream::StreamExt as _;
use tonic::Code;
use uuid::Uuid;

use crate::common::{Mesh, image_request};

mod objects;
mod presign;

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

async fn thumbnail(mesh: &Mesh, token: &str, file_id: &str) -> Result<Vec<u8>, tonic::Status> {
    let mut files = mesh.files(token);
    let mut s = files.get_thumbnail(GetThumbnailRequest { file_id: file_id.to_owned() }).await?.into_inner();
    let mut bytes = Vec::new();
    while let Some(c) = s.next().await {
        bytes.extend(c?.chunk);
    }
    Ok(bytes)
}

#[tokio::test]
async fn a_job_in_a_project_with_two_characters_lands_in_the_project_folder_with_a_thumbnail() {
    let mesh = Mesh::start().await;
    let alice = mesh.person("alice").await;
    let mut projects = mesh.projects(&alice.token);
    let project = projects
        .create_project(CreateProjectRequest { name: "Opening Scene".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .project
        .unwrap();
    assert_eq!(project.slug, "opening-scene", "slug derived from the name");
    let mut characters = Vec::new();
    for (name, fragment, negative) in
        [("Aoi", "Aoi, blue hair, school uniform", "extra fingers"), ("Ren", "Ren, red scarf", "")]
    {
        let c = projects
            .create_character(CreateCharacterRequest {
                project_id: project.id.clone(),
                name: name.into(),
                prompt_fragment: fragment.into(),
                negative_fragment: negative.into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .character
            .unwrap();
        characters.push(c.id);
    }

    let mut jobs = mesh.jobs(&alice.token);
    let mut req = image_request("two friends on a station platform", 2);
    let spec = req.spec.as_mut().unwrap();
    (spec.width, spec.height, spec.negative_prompt) = (512, 320, "blurry".into());
    req.project_id.clone_from(&project.id);
    req.character_ids.clone_from(&characters);
    let id = jobs.submit_job(req).await.unwrap().into_inner().job.unwrap().id;
    let job = mesh.finished(&alice.token, &id).await;
    assert_eq!(job.status, i32::from(JobStatus::Succeeded), "{job:?}");
    assert_eq!(
        job.composed_prompt,
        "two friends on a station platform, Aoi, blue hair, school uniform, Ren, red scarf"
    );
    assert_eq!(job.spec.as_ref().unwrap().prompt, "two friends on a station platform", "the request as sent");
    assert_eq!((job.project_id.as_str(), &job.character_ids), (project.id.as_str(), &characters));

    // The record links job and project, and is named in the project's folder.
    let mut files = mesh.files(&alice.token);
    let file = files
        .get_file(GetFileRequest { file_id: job.file_ids[0].clone() })
        .await
        .unwrap()
        .into_inner()
        .file
        .unwrap();
    assert_eq!((file.job_id.as_str(), file.project_id.as_str()), (id.as_str(), project.id.as_str()));
    let today = chrono::Utc::now().format("%Y/%m/%d").to_string();
    let (name, blob) = keys_of(&mesh, &file.id).await;
    assert_eq!(name, format!("opening-scene/{today}/{id}-0.png"));
    let key = blob.unwrap();
    let bytes = std::fs::read(mesh.files_root().join(&key)).unwrap();
    assert_eq!(bytes, mesh.read_file(&alice.token, &file.id).await);
    // The backend rendered the composed prompts.
    let found = sakuga_imaging::inspect_png(&bytes, sakuga_imaging::Limits::default()).unwrap();
    assert_eq!(found.text_value("prompt"), Some(job.composed_prompt.as_str()));
    assert_eq!(found.text_value("negative_prompt"), Some("blurry, extra fingers"));

    // A thumbnail beside it, at most 256 px, the same through GetThumbnail.
    let thumb_on_disk = std::fs::read(mesh.files_root().join(".thumbs").join(&key)).unwrap();
    let thumb = thumbnail(&mesh, &alice.token, &file.id).await.unwrap();
    assert_eq!(thumb, thumb_on_disk);
    let t = sakuga_imaging::inspect_png(&thumb, sakuga_imaging::Limits::default()).unwrap();
    assert_eq!((t.width, t.height), (256, 160));

    // Filters by project.
    let listed = files
        .list_files(ListFilesRequest { project_id: project.id.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .files;
    assert_eq!(listed.len(), 1);
    let listed = jobs
        .list_jobs(ListJobsRequest { project_id: project.id.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .jobs;
    assert_eq!(listed.len(), 1);
    mesh.stop().await;
}

#[tokio::test]
async fn projects_refuse_bad_input_and_foreign_ids_and_archived_projects_take_no_jobs() {
    let mesh = Mesh::without_generator().await;
    let alice = mesh.person("alice").await;
    let bob = mesh.person("bob").await;
    let mut projects = mesh.projects(&alice.token);
    let project = projects
        .create_project(CreateProjectRequest {
            name: "Ep 1".into(),
            slug: "ep-01".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .project
        .unwrap();
    let err = projects
        .create_project(CreateProjectRequest {
            name: "Again".into(),
            slug: "ep-01".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    assert!(err.message().starts_with("slug: "), "{}", err.message());
    for (name, slug, field) in
        [("", "x", "name: "), ("A", "Bad Slug", "slug: "), ("A", "unsorted", "slug: "), ("桜", "", "slug: ")]
    {
        let err = projects
            .create_project(CreateProjectRequest {
                name: name.into(),
                slug: slug.into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{name:?}/{slug:?}");
        assert!(err.message().starts_with(field), "{name:?}/{slug:?}: {}", err.message());
    }
    // Bob's own project can use the same slug; Alice's project is invisible to him.
    let mut bobs = mesh.projects(&bob.token);
    bobs.create_project(CreateProjectRequest {
        name: "Ep 1".into(),
        slug: "ep-01".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let err = bobs
        .create_character(CreateCharacterRequest {
            project_id: project.id.clone(),
            name: "Intruder".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let mut bob_jobs = mesh.jobs(&bob.token);
    let mut req = image_request("into alice's project", 2);
    req.project_id.clone_from(&project.id);
    assert_eq!(bob_jobs.submit_job(req).await.unwrap_err().code(), Code::NotFound);

    // A character of another project, and an archived project, are refused.
    let mut jobs = mesh.jobs(&alice.token);
    let mut req = image_request("stray character", 2);
    req.project_id.clone_from(&project.id);
    req.character_ids = vec![Uuid::now_v7().to_string()];
    assert_eq!(jobs.submit_job(req).await.unwrap_err().code(), Code::NotFound);
    projects
        .update_project(UpdateProjectRequest {
            project_id: project.id.clone(),
            archived: Some(true),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut req = image_request("archived", 2);
    req.project_id.clone_from(&project.id);
    assert_eq!(jobs.submit_job(req).await.unwrap_err().code(), Code::FailedPrecondition);
    mesh.stop().await;
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

fn gradient(width: u32, height: u32) -> Vec<u8> {
    let rgb: Vec<u8> = (0..width * height).flat_map(|i| [u8::try_from(i % 256).unwrap(), 80, 160]).collect();
    sakuga_imaging::encode_rgb_png(width, height, &rgb).unwrap()
}

#[tokio::test]
async fn blank_truncated_and_wrongly_sized_images_are_refused_with_reasons() {
    let mesh = Mesh::without_generator().await;
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
    assert_eq!(files_under(&mesh.files_root()), Vec::<String>::new(), "nothing stored, no partial file left");
    let job = leased_job(&mesh, &owner, None, 64, 64).await;
    let stored = store(&mesh, header(&job, &good, 64, 64), &good).await.unwrap();
    assert_eq!(stored.checks, ["size", "sha256", "decodes", "mime", "dimensions", "frames", "not_blank"]);
    mesh.stop().await;
}

#[tokio::test]
async fn a_crash_between_writing_bytes_and_the_record_leaves_no_orphan_after_a_restart() {
    let mut mesh = Mesh::without_generator().await;
    let alice = mesh.person("alice").await;
    let bytes = gradient(96, 64);
    let crash = sakuga_organizer::Faults { crash_after_write: true, ..Default::default() };
    mesh.restart_organizer_with_faults(|_| {}, crash).await;
    let job = leased_job(&mesh, &alice.id, None, 96, 64).await;
    let err = store(&mesh, header(&job, &bytes, 96, 64), &bytes).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    let left = files_under(&mesh.files_root());
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
    let root = mesh.files_root();
    eventually("no orphan bytes or thumbnails remain", || {
        let left = files_under(&root);
        async move { left.iter().all(|f| f.starts_with(".tmp")) }
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

#[tokio::test]
async fn files_past_their_project_retention_are_deleted_and_audited() {
    let mut mesh = Mesh::without_generator().await;
    let alice = mesh.person("alice").await;
    let mut projects = mesh.projects(&alice.token);
    let project = projects
        .create_project(CreateProjectRequest {
            name: "Dailies".into(),
            retention_days: 7,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .project
        .unwrap();
    let (old_bytes, new_bytes) = (gradient(64, 64), gradient(72, 64));
    let job = leased_job(&mesh, &alice.id, Some(&project.id), 64, 64).await;
    let old = store(&mesh, header(&job, &old_bytes, 64, 64), &old_bytes).await.unwrap();
    let job = leased_job(&mesh, &alice.id, Some(&project.id), 72, 64).await;
    let new = store(&mesh, header(&job, &new_bytes, 72, 64), &new_bytes).await.unwrap();
    assert_eq!(
        (old.project_id.as_str(), new.project_id.as_str()),
        (project.id.as_str(), project.id.as_str())
    );
    let db = mesh.env.db().await.unwrap();
    db.execute(
        "UPDATE files SET created_at = now() - interval '8 days' WHERE id = $1",
        &[&Uuid::parse_str(&old.id).unwrap()],
    )
    .await
    .unwrap();
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
        files_under(&mesh.files_root()),
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

#[tokio::test]
async fn no_response_or_error_of_a_jobs_life_contains_a_filesystem_path() {
    let mut mesh = Mesh::without_generator().await;
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
        // The local backend has no download URLs (and says so without naming its folder).
        files
            .get_download_url(sakuga_proto::v1::GetDownloadUrlRequest { file_id: file_id.clone(), ttl: None })
            .await
            .map(|_| ())
            .unwrap_err(),
    ];
    seen.extend(errors.iter().map(|e| format!("{e:?}")));
    for f in files_under(&mesh.files_root()) {
        std::fs::remove_file(mesh.files_root().join(f)).unwrap();
    }
    let gone = files
        .read_file(sakuga_proto::v1::ReadFileRequest { file_id: file_id.clone(), offset: 0, length: 0 })
        .await
        .map(|_| ())
        .unwrap_err();
    let thumb = thumbnail(&mesh, &alice.token, &file_id).await.unwrap_err();
    seen.push(format!("{gone:?} {thumb:?}"));
    let root = mesh.env.dir.path().to_string_lossy().into_owned();
    for text in &seen {
        assert!(!text.contains(&root), "a response names the storage: {text}");
        assert!(
            !text.contains(".tmp") && !text.contains(".thumbs"),
            "a response names a storage folder: {text}"
        );
    }
    assert!(seen.len() > 8, "the whole life was seen");
    mesh.stop().await;
}

#[tokio::test]
async fn sql_payloads_as_project_and_character_names_are_stored_as_text() {
    let mesh = Mesh::without_generator().await;
    let alice = mesh.person("alice").await;
    let mut projects = mesh.projects(&alice.token);
    for (i, payload) in crate::common::INJECTIONS.iter().enumerate() {
        let p = projects
            .create_project(CreateProjectRequest {
                name: (*payload).to_owned(),
                slug: format!("p{i}"),
                description: (*payload).to_owned(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .project
            .unwrap();
        assert_eq!(p.name, *payload, "stored verbatim");
        let c = projects
            .create_character(CreateCharacterRequest {
                project_id: p.id.clone(),
                name: (*payload).to_owned(),
                prompt_fragment: (*payload).to_owned(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .character
            .unwrap();
        assert_eq!(c.prompt_fragment, *payload);
        // As a slug or an id it is refused.
        let err = projects
            .create_project(CreateProjectRequest {
                name: "x".into(),
                slug: (*payload).to_owned(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        let err = projects
            .get_project(sakuga_proto::v1::GetProjectRequest { project_id: (*payload).to_owned() })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
    }
    let listed = projects
        .list_projects(sakuga_proto::v1::ListProjectsRequest { page_size: 2, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.projects.len(), 2, "paged");
    assert!(!listed.next_page_token.is_empty());
    let db = mesh.env.db().await.unwrap();
    for table in ["projects", "characters", "jobs", "files", "users"] {
        db.query_one(&format!("SELECT count(*) FROM {table}"), &[]).await.unwrap();
    }
    let count: i64 = db.query_one("SELECT count(*) FROM projects", &[]).await.unwrap().get(0);
    assert_eq!(count, 5, "exactly the five projects, tables intact");
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

#[tokio::test]
async fn an_artifact_is_accepted_only_under_the_jobs_live_lease_and_owned_as_the_job_is() {
    let mesh = Mesh::without_generator().await;
    let alice = mesh.person("alice").await;
    let bob = mesh.person("bob").await;
    let project = mesh
        .projects(&alice.token)
        .create_project(CreateProjectRequest { name: "Leased".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .project
        .unwrap();
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
    assert_eq!(files_under(&mesh.files_root()), Vec::<String>::new(), "nothing stored");
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

#[tokio::test]
async fn an_upload_past_its_declared_size_is_refused_as_it_arrives_and_leaves_no_partial_file() {
    let mesh = Mesh::without_generator().await;
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
    assert_eq!(files_under(&mesh.files_root()), Vec::<String>::new(), "no partial file remains");
    mesh.stop().await;
}

#[tokio::test]
async fn the_concurrent_upload_cap_refuses_with_retry_after_and_frees_its_slot() {
    let mut mesh = Mesh::without_generator().await;
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
    let in_flight =
        tokio::spawn(
            async move { files.store_artifact(tokio_stream::wrappers::ReceiverStream::new(rx)).await },
        );
    // The first upload holds the only permit once its partial file exists.
    let tmp = mesh.files_root().join(".tmp");
    eventually("the first upload is being written", || {
        let tmp = tmp.clone();
        async move { std::fs::read_dir(&tmp).is_ok_and(|mut d| d.next().is_some()) }
    })
    .await;
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

/// A file record of `owner` whose bytes are `size` bytes on disk (reads do not decode).
async fn big_file(mesh: &Mesh, owner: &str, size: usize) -> String {
    let key = format!("unsorted/2026/01/01/{}-0.png", Uuid::now_v7());
    let path = mesh.files_root().join(&key);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let bytes: Vec<u8> = (0..size).map(|i| u8::try_from(i % 251).unwrap()).collect();
    std::fs::write(&path, &bytes).unwrap();
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

#[tokio::test]
async fn reads_are_capped_per_user_and_a_reader_that_stops_reading_loses_its_slot() {
    let mut mesh = Mesh::without_generator().await;
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

#[tokio::test]
async fn the_reconciler_deletes_nothing_when_the_database_has_no_file_records_but_the_store_has_files() {
    let mesh = Mesh::without_generator().await;
    let root = mesh.files_root();
    let key = "unsorted/2020/01/01/library-0.png";
    std::fs::create_dir_all(root.join("unsorted/2020/01/01")).unwrap();
    std::fs::write(root.join(key), b"a file of the real library").unwrap();
    let vault = sakuga_mesh::vault::Vault::connect(&mesh.env.vault_config()).await.unwrap();
    let pool = sakuga_mesh::db::connect_with_vault(&vault, &mesh.env.database_config()).await.unwrap();
    let reconciler = sakuga_organizer::reconcile::Reconciler {
        store: sakuga_organizer::store::Store::new(pool.clone()),
        storage: std::sync::Arc::new(sakuga_organizer::storage::LocalDisk::new(root.clone()).unwrap()),
        audit: sakuga_mesh::auth::Audit::new(pool),
        grace: Duration::ZERO,
    };
    let report = reconciler.run_once().await.unwrap();
    assert!(report.refused_empty_database, "{report:?}");
    assert_eq!(report.orphans, 0);
    assert!(root.join(key).exists(), "the library is kept");
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
    assert!(!root.join(key).exists());
    mesh.stop().await;
}
