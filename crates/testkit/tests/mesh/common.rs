//! Helpers shared by the mesh tests.

use std::sync::Arc;

use sakuga_mesh::tls::MeshTls;
use sakuga_proto::v1::{
    JobKind, JobSpec, SubmitJobRequest, file_service_client::FileServiceClient,
    job_service_client::JobServiceClient,
};
use sakuga_testkit::{Spawned, TestEnv};
use tonic::transport::Channel;

/// The four services of one test.
pub(crate) struct Mesh {
    pub(crate) env: TestEnv,
    pub(crate) auth: Spawned,
    pub(crate) scheduler: Spawned,
    pub(crate) organizer: Spawned,
    pub(crate) generator: Option<Spawned>,
    pub(crate) operator: Arc<MeshTls>,
}

impl Mesh {
    /// Auth, scheduler, organizer and a generator.
    pub(crate) async fn start() -> Mesh {
        let mut mesh = Self::without_generator().await;
        mesh.attach_generator().await;
        mesh
    }

    /// Auth, scheduler and organizer; jobs stay queued until [`Mesh::attach_generator`].
    pub(crate) async fn without_generator() -> Mesh {
        let env = TestEnv::new().await.unwrap();
        let auth = sakuga_testkit::spawn_auth(sakuga_testkit::auth_config(&env)).await.unwrap();
        let scheduler =
            sakuga_testkit::spawn_scheduler(sakuga_testkit::scheduler_config(&env)).await.unwrap();
        let root = env.dir.path().join("files");
        let organizer =
            sakuga_testkit::spawn_organizer(sakuga_testkit::organizer_config(&env, root)).await.unwrap();
        let operator = env.identity("operator").await.unwrap();
        Mesh { env, auth, scheduler, organizer, generator: None, operator }
    }

    pub(crate) async fn attach_generator(&mut self) {
        let cfg = sakuga_testkit::generator_config(&self.env, &self.scheduler, &self.organizer);
        self.generator = Some(sakuga_testkit::spawn_generator(cfg).await.unwrap());
    }

    pub(crate) fn jobs(&self) -> JobServiceClient<Channel> {
        JobServiceClient::new(self.operator.channel(&self.scheduler.addr_string()).unwrap())
    }

    pub(crate) fn files(&self) -> FileServiceClient<Channel> {
        FileServiceClient::new(self.operator.channel(&self.organizer.addr_string()).unwrap())
    }

    pub(crate) async fn stop(self) {
        for s in self.generator.into_iter().chain([self.organizer, self.scheduler, self.auth]) {
            s.stop().await.unwrap();
        }
        self.env.cleanup().await;
    }
}

pub(crate) fn image_request(prompt: &str, steps: u32) -> SubmitJobRequest {
    SubmitJobRequest {
        spec: Some(JobSpec {
            kind: JobKind::Image.into(),
            prompt: prompt.to_owned(),
            width: 64,
            height: 64,
            steps,
            seed: Some(7),
            ..JobSpec::default()
        }),
        ..SubmitJobRequest::default()
    }
}
