//! Projects, characters and organized files: composed prompts, the project folder,
//! thumbnails, quality checks, bytes stored once, crash safety, retention, no paths.

use std::{path::Path, time::Duration};

use sakuga_proto::v1::{
    ArtifactHeader, CreateCharacterRequest, CreateProjectRequest, DeleteFileRequest, GetFileRequest,
    GetJobRequest, GetThumbnailRequest, JobKind, JobStatus, ListFilesRequest, ListJobsRequest,
    StoreArtifactRequest, UpdateProjectRequest, store_artifact_request::Part,
};
use sha2::{Digest as _, Sha256};
use tokio_stream::StreamExt as _;
use tonic::Code;
use uuid::Uuid;

use crate::common::{Mesh, image_request};

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

    // The record links job and project; the bytes are in the project's folder.
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
    let key = format!("opening-scene/{today}/{id}-0.png");
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

fn header(job: &str, owner: &str, bytes: &[u8], width: u32, height: u32) -> ArtifactHeader {
    ArtifactHeader {
        job_id: job.to_owned(),
        owner_id: owner.to_owned(),
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
    ] {
        let job = Uuid::now_v7().to_string();
        let err = store(&mesh, header(&job, &owner, bytes, w, h), bytes).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{reason}: {err:?}");
        assert!(err.message().contains(reason), "{reason}: {}", err.message());
    }
    assert!(files_under(&mesh.files_root()).iter().all(|f| f.starts_with(".tmp")), "nothing stored");
    let stored =
        store(&mesh, header(&Uuid::now_v7().to_string(), &owner, &good, 64, 64), &good).await.unwrap();
    assert_eq!(stored.checks, ["size", "sha256", "decodes", "mime", "dimensions", "frames", "not_blank"]);
    mesh.stop().await;
}

#[tokio::test]
async fn identical_bytes_are_stored_once_and_survive_deleting_one_record() {
    let mesh = Mesh::without_generator().await;
    let alice = mesh.person("alice").await;
    let bytes = gradient(64, 64);
    let (a, b) = (Uuid::now_v7().to_string(), Uuid::now_v7().to_string());
    let fa = store(&mesh, header(&a, &alice.id, &bytes, 64, 64), &bytes).await.unwrap();
    let fb = store(&mesh, header(&b, &alice.id, &bytes, 64, 64), &bytes).await.unwrap();
    assert_ne!(fa.id, fb.id);
    let today = chrono::Utc::now().format("%Y/%m/%d").to_string();
    let (pa, pb) = (
        mesh.files_root().join(format!("unsorted/{today}/{a}-0.png")),
        mesh.files_root().join(format!("unsorted/{today}/{b}-0.png")),
    );
    {
        use std::os::unix::fs::MetadataExt as _;
        let (ma, mb) = (std::fs::metadata(&pa).unwrap(), std::fs::metadata(&pb).unwrap());
        assert_eq!((ma.dev(), ma.ino()), (mb.dev(), mb.ino()), "both names, one copy of the bytes");
        assert_eq!(ma.nlink(), 2);
    }
    let mut files = mesh.files(&alice.token);
    files.delete_file(DeleteFileRequest { file_id: fa.id.clone() }).await.unwrap();
    assert!(!pa.exists());
    assert_eq!(mesh.read_file(&alice.token, &fb.id).await, bytes, "the other record keeps its bytes");
    assert!(thumbnail(&mesh, &alice.token, &fb.id).await.is_ok());
    let db = mesh.env.db().await.unwrap();
    let (db, fa_id) = (&db, &fa.id);
    eventually("the deletion is audited", || async move {
        let audited: i64 = db
            .query_one(
                "SELECT count(*) FROM audit_events WHERE action = 'FileService.DeleteFile' AND result = 'OK' AND target = 'file:' || $1",
                &[fa_id],
            )
            .await
            .unwrap()
            .get(0);
        audited == 1
    })
    .await;
    mesh.stop().await;
}

#[tokio::test]
async fn a_crash_between_writing_bytes_and_the_record_leaves_no_orphan_after_a_restart() {
    let mut mesh = Mesh::without_generator().await;
    let alice = mesh.person("alice").await;
    let bytes = gradient(96, 64);
    mesh.restart_organizer(|c| c.fault_crash_after_write = true).await;
    let job = Uuid::now_v7().to_string();
    let err = store(&mesh, header(&job, &alice.id, &bytes, 96, 64), &bytes).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    let left = files_under(&mesh.files_root());
    assert!(left.iter().any(|f| f.ends_with(&format!("{job}-0.png"))), "the bytes were written: {left:?}");
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
    mesh.restart_organizer(|c| c.orphan_grace_secs = 0).await;
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
    store(&mesh, header(&job, &alice.id, &bytes, 96, 64), &bytes).await.unwrap();
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
    let mut h = header(&Uuid::now_v7().to_string(), &alice.id, &old_bytes, 64, 64);
    h.project_id.clone_from(&project.id);
    let old = store(&mesh, h, &old_bytes).await.unwrap();
    let mut h = header(&Uuid::now_v7().to_string(), &alice.id, &new_bytes, 72, 64);
    h.project_id.clone_from(&project.id);
    let new = store(&mesh, h, &new_bytes).await.unwrap();
    let db = mesh.env.db().await.unwrap();
    db.execute(
        "UPDATE files SET created_at = now() - interval '8 days' WHERE id = $1",
        &[&Uuid::parse_str(&old.id).unwrap()],
    )
    .await
    .unwrap();
    mesh.restart_organizer(|c| c.reconcile_interval_secs = 1).await;
    let mut files = mesh.files(&alice.token);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while files.get_file(GetFileRequest { file_id: old.id.clone() }).await.is_ok() {
        assert!(tokio::time::Instant::now() < deadline, "the expired file was not deleted");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    files.get_file(GetFileRequest { file_id: new.id.clone() }).await.unwrap();
    let left = files_under(&mesh.files_root());
    assert_eq!(
        left.iter().filter(|f| Path::new(f.as_str()).extension().is_some_and(|e| e == "png")).count(),
        2,
        "the new file and its thumbnail: {left:?}"
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
