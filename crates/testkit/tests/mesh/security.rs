//! The prototype's input findings: invalid prompts and SQL payloads, each refused or made
//! harmless, with nothing changed in the database.

use sakuga_proto::v1::{GetJobRequest, JobSpec, SubmitJobRequest, WatchJobRequest};
use tonic::Code;

use crate::common::{INJECTIONS, Mesh, image_request};

async fn job_count(mesh: &Mesh) -> i64 {
    mesh.env.db().await.unwrap().query_one("SELECT count(*) FROM jobs", &[]).await.unwrap().get(0)
}

#[tokio::test]
async fn invalid_submissions_are_refused_naming_the_field_and_write_nothing() {
    let mesh = Mesh::start().await;
    let alice = mesh.person("alice").await;
    let mut jobs = mesh.jobs(&alice.token);
    let with = |f: &dyn Fn(&mut JobSpec)| {
        let mut r = image_request("ok", 4);
        f(r.spec.as_mut().unwrap());
        r
    };
    let cases: Vec<(SubmitJobRequest, &str)> = vec![
        (with(&|s| s.prompt = String::new()), "spec.prompt"),
        (with(&|s| s.prompt = "   \n ".to_owned()), "spec.prompt"),
        (with(&|s| s.prompt = "x".repeat(10_000)), "spec.prompt"),
        (with(&|s| s.prompt = "bell\u{7} and escape\u{1b}[31m".to_owned()), "spec.prompt"),
        (with(&|s| s.width = 100), "spec.width"),
        (with(&|s| s.steps = 0), "spec.steps"),
        (with(&|s| s.kind = 0), "spec.kind"),
        (with(&|s| s.sampler = "'; DROP TABLE jobs; --".to_owned()), "spec.sampler"),
        (SubmitJobRequest { spec: None, ..SubmitJobRequest::default() }, "spec"),
    ];
    for (req, field) in cases {
        let err = jobs.submit_job(req).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{field}: {err:?}");
        assert!(err.message().starts_with(&format!("{field}:")), "message names {field}: {}", err.message());
    }
    assert_eq!(job_count(&mesh).await, 0, "nothing written");
    mesh.stop().await;
}

#[tokio::test]
async fn sql_injection_payloads_are_inert_as_prompts_and_refused_as_ids() {
    let mesh = Mesh::start().await;
    let alice = mesh.person("alice").await;
    let mut jobs = mesh.jobs(&alice.token);
    for payload in INJECTIONS {
        let err = jobs.get_job(GetJobRequest { job_id: payload.to_owned() }).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert_eq!(err.message(), "job_id: must be a UUID");
        let err = jobs.watch_job(WatchJobRequest { job_id: payload.to_owned() }).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
    }
    let xss = "<script>alert('xss')</script>";
    let mut ids = Vec::new();
    for payload in INJECTIONS.iter().chain([&xss]) {
        let mut req = image_request(payload, 1);
        req.spec.as_mut().unwrap().negative_prompt = (*payload).to_owned();
        let job = jobs.submit_job(req).await.unwrap().into_inner().job.unwrap();
        assert_eq!(job.spec.unwrap().prompt, *payload, "stored as text, unchanged");
        ids.push(job.id);
    }
    let db = mesh.env.db().await.unwrap();
    let prompts: Vec<String> = db
        .query("SELECT prompt FROM jobs ORDER BY created_at", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let expected: Vec<String> = INJECTIONS.iter().chain([&xss]).map(|s| (*s).to_owned()).collect();
    assert_eq!(prompts, expected, "exactly the six jobs, no extra or missing rows");
    let tables: i64 = db
        .query_one("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public' AND table_name IN ('jobs', 'files', 'schema_migrations')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(tables, 3, "no table dropped");
    mesh.stop().await;
}
