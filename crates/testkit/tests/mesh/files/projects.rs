//! Projects and characters: composed prompts, the project folder of a job's files,
//! thumbnails, refusals, SQL payloads stored as text.

use sakuga_proto::v1::{
    CreateCharacterRequest, CreateProjectRequest, GetFileRequest, JobStatus, ListFilesRequest,
    ListJobsRequest, UpdateProjectRequest,
};
use tonic::Code;
use uuid::Uuid;

use super::{keys_of, stored_bytes, thumbnail};
use crate::common::{Backend, Mesh, image_request};

async fn a_job_in_a_project_with_two_characters_lands_in_the_project_folder_with_a_thumbnail(
    backend: Backend,
) {
    let mut mesh = Mesh::on(backend).await;
    mesh.attach_generator().await;
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
    let bytes = stored_bytes(&mesh, &key).await;
    assert_eq!(bytes, mesh.read_file(&alice.token, &file.id).await);
    // The backend rendered the composed prompts.
    let found = sakuga_imaging::inspect_png(&bytes, sakuga_imaging::Limits::default()).unwrap();
    assert_eq!(found.text_value("prompt"), Some(job.composed_prompt.as_str()));
    assert_eq!(found.text_value("negative_prompt"), Some("blurry, extra fingers"));

    // A thumbnail beside it, at most 256 px, the same through GetThumbnail.
    let thumb_stored = stored_bytes(&mesh, &format!(".thumbs/{key}")).await;
    let thumb = thumbnail(&mesh, &alice.token, &file.id).await.unwrap();
    assert_eq!(thumb, thumb_stored);
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

on_both_backends!(a_job_in_a_project_with_two_characters_lands_in_the_project_folder_with_a_thumbnail);

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
