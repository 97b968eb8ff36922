//! Helpers shared by the mesh tests.

use std::sync::Arc;

use sakuga_mesh::tls::MeshTls;
use sakuga_proto::v1::{
    CreateUserRequest, JobKind, JobSpec, JobStatus, Role, SubmitJobRequest,
    auth_service_client::AuthServiceClient, file_service_client::FileServiceClient,
    job_service_client::JobServiceClient, project_service_client::ProjectServiceClient,
};
use sakuga_testkit::{Authed, Bearer, Spawned, TestEnv};
use tonic::transport::Channel;

/// The four services of one test.
pub(crate) struct Mesh {
    pub(crate) env: TestEnv,
    pub(crate) auth: Spawned,
    pub(crate) scheduler: Spawned,
    pub(crate) organizer: Spawned,
    pub(crate) generator: Option<Spawned>,
    pub(crate) operator: Arc<MeshTls>,
    pub(crate) admin_token: String,
    /// The S3-compatible store the organizer uses, when not the local folder.
    pub(crate) weed: Option<sakuga_testkit::weed::Weed>,
}

/// Where the organizer of a mesh keeps bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    /// A folder ([`Mesh::files_root`]).
    Local,
    /// A bucket of a SeaweedFS started for the test.
    S3,
}

/// The organizer's configuration: files under the environment's folder, or in `weed`'s
/// bucket under a prefix of the test's own.
fn organizer_config(
    env: &TestEnv,
    auth: &Spawned,
    weed: Option<&sakuga_testkit::weed::Weed>,
) -> sakuga_organizer::Config {
    let mut cfg = sakuga_testkit::organizer_config(env, auth, env.dir.path().join("files"));
    if let Some(weed) = weed {
        weed.configure(&mut cfg.storage, &format!("t-{}", env.id));
    }
    cfg
}

/// A person with an account and a fresh access token.
pub(crate) struct Person {
    pub(crate) id: String,
    pub(crate) token: String,
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
        Self::with_scheduler_config(|_| {}).await
    }

    /// Like [`Mesh::without_generator`], with the scheduler's configuration adjusted.
    pub(crate) async fn with_scheduler_config(adjust: impl FnOnce(&mut sakuga_scheduler::Config)) -> Mesh {
        Self::with_config(|_, _, scheduler| adjust(scheduler)).await
    }

    /// Like [`Mesh::without_generator`], with the auth and scheduler configurations
    /// adjusted (after the environment exists, so secrets can be written first).
    pub(crate) async fn with_config(
        adjust: impl FnOnce(&TestEnv, &mut sakuga_auth::Config, &mut sakuga_scheduler::Config),
    ) -> Mesh {
        // Boxed: starting the whole mesh is a large future for every test to hold.
        Box::pin(Self::build(adjust, Backend::Local)).await
    }

    /// Like [`Mesh::without_generator`], the organizer's bytes on `backend`.
    pub(crate) async fn on(backend: Backend) -> Mesh {
        Box::pin(Self::build(|_, _, _| {}, backend)).await
    }

    async fn build(
        adjust: impl FnOnce(&TestEnv, &mut sakuga_auth::Config, &mut sakuga_scheduler::Config),
        backend: Backend,
    ) -> Mesh {
        let env = TestEnv::new().await.unwrap();
        let weed = match backend {
            Backend::Local => None,
            Backend::S3 => Some(sakuga_testkit::weed::Weed::start(&env).await.unwrap()),
        };
        env.put_secret("redis-private", &std::collections::HashMap::new()).await.unwrap();
        let mut auth_cfg = sakuga_testkit::auth_config(&env);
        let unused = sakuga_testkit::Spawned::unused();
        let mut cfg = sakuga_testkit::scheduler_config(&env, &unused);
        adjust(&env, &mut auth_cfg, &mut cfg);
        let auth = sakuga_testkit::spawn_auth(auth_cfg).await.unwrap();
        cfg.auth_addr = auth.addr_string();
        let scheduler = sakuga_testkit::spawn_scheduler(cfg).await.unwrap();
        let organizer_cfg = organizer_config(&env, &auth, weed.as_ref());
        let organizer = sakuga_testkit::spawn_organizer(organizer_cfg).await.unwrap();
        let operator = env.identity("operator").await.unwrap();
        let admin_token = sakuga_testkit::login(
            operator.channel(&auth.addr_string()).unwrap(),
            "admin",
            &env.admin_password,
        )
        .await
        .unwrap();
        Mesh { env, auth, scheduler, organizer, generator: None, operator, admin_token, weed }
    }

    /// The organizer's configuration of this mesh (before any restart's adjustments).
    pub(crate) fn organizer_config(&self) -> sakuga_organizer::Config {
        organizer_config(&self.env, &self.auth, self.weed.as_ref())
    }

    /// The organizer's store, opened as the organizer opens it.
    pub(crate) async fn storage(&self) -> Arc<dyn sakuga_organizer::storage::Storage> {
        let vault = sakuga_mesh::vault::Vault::connect(&self.env.vault_config()).await.unwrap();
        sakuga_organizer::storage::open(&self.organizer_config().storage, &vault).await.unwrap()
    }

    /// Every key in the organizer's store, sorted.
    pub(crate) async fn stored_keys(&self) -> Vec<String> {
        self.storage().await.keys().await.unwrap().into_iter().map(|o| o.key).collect()
    }

    pub(crate) async fn attach_generator(&mut self) {
        self.attach_generator_with(|_| {}).await;
    }

    /// Where the organizer keeps files.
    pub(crate) fn files_root(&self) -> std::path::PathBuf {
        self.env.dir.path().join("files")
    }

    /// Stops the organizer and starts another on the same storage with `adjust`ed
    /// configuration (on a new port: attach generators afterwards).
    pub(crate) async fn restart_organizer(&mut self, adjust: impl FnOnce(&mut sakuga_organizer::Config)) {
        self.restart_organizer_with_faults(adjust, sakuga_organizer::Faults::default()).await;
    }

    /// Restarts the organizer with `adjust`ed configuration, its uploads failing as
    /// `faults` say.
    pub(crate) async fn restart_organizer_with_faults(
        &mut self,
        adjust: impl FnOnce(&mut sakuga_organizer::Config),
        faults: sakuga_organizer::Faults,
    ) {
        let mut cfg = self.organizer_config();
        adjust(&mut cfg);
        let new = sakuga_testkit::spawn_organizer_with_faults(cfg, faults).await.unwrap();
        let old = std::mem::replace(&mut self.organizer, new);
        old.stop().await.unwrap();
    }

    /// FileService as a generator calls it (generator certificate, no token).
    pub(crate) async fn files_as_generator(&self) -> FileServiceClient<Channel> {
        let tls = self.env.identity("generator").await.unwrap();
        FileServiceClient::new(tls.channel(&self.organizer.addr_string()).unwrap())
    }

    pub(crate) fn projects(&self, token: &str) -> ProjectServiceClient<Authed> {
        ProjectServiceClient::new(self.authed(&self.scheduler.addr_string(), token))
    }

    /// Attaches a generator whose configuration `adjust` changed.
    pub(crate) async fn attach_generator_with(&mut self, adjust: impl FnOnce(&mut sakuga_generator::Config)) {
        let mut cfg =
            sakuga_testkit::generator_config(&self.env, &self.auth, &self.scheduler, &self.organizer);
        adjust(&mut cfg);
        self.generator = Some(sakuga_testkit::spawn_generator(cfg).await.unwrap());
    }

    /// Waits (up to a minute) until the job is in a final state; returns it.
    pub(crate) async fn finished(&self, token: &str, job_id: &str) -> sakuga_proto::v1::Job {
        let mut jobs = self.jobs(token);
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_mins(1);
        loop {
            let job = jobs
                .get_job(sakuga_proto::v1::GetJobRequest { job_id: job_id.to_owned() })
                .await
                .unwrap()
                .into_inner()
                .job
                .unwrap();
            let done = [JobStatus::Succeeded, JobStatus::Failed, JobStatus::Canceled].map(i32::from);
            if done.contains(&job.status) {
                return job;
            }
            assert!(tokio::time::Instant::now() < deadline, "job {job_id} did not finish: {job:?}");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// A stored file's bytes, read through FileService.ReadFile.
    pub(crate) async fn read_file(&self, token: &str, file_id: &str) -> Vec<u8> {
        let mut files = self.files(token);
        let mut s = files
            .read_file(sakuga_proto::v1::ReadFileRequest {
                file_id: file_id.to_owned(),
                offset: 0,
                length: 0,
            })
            .await
            .unwrap()
            .into_inner();
        let mut bytes = Vec::new();
        while let Some(chunk) = tokio_stream::StreamExt::next(&mut s).await {
            bytes.extend(chunk.unwrap().chunk);
        }
        bytes
    }

    pub(crate) fn channel(&self, addr: &str) -> Channel {
        self.operator.channel(addr).unwrap()
    }

    pub(crate) fn authed(&self, addr: &str, token: &str) -> Authed {
        tower::ServiceBuilder::new()
            .layer(tonic::service::InterceptorLayer::new(Bearer::new(token)))
            .service(self.channel(addr))
    }

    pub(crate) fn jobs(&self, token: &str) -> JobServiceClient<Authed> {
        JobServiceClient::new(self.authed(&self.scheduler.addr_string(), token))
    }

    pub(crate) fn files(&self, token: &str) -> FileServiceClient<Authed> {
        FileServiceClient::new(self.authed(&self.organizer.addr_string(), token))
    }

    pub(crate) fn auth_client(&self, token: &str) -> AuthServiceClient<Authed> {
        AuthServiceClient::new(self.authed(&self.auth.addr_string(), token))
    }

    /// Creates a user (through the admin) and logs them in.
    pub(crate) async fn person(&self, name: &str) -> Person {
        let password = format!("{name}-correct-horse-battery");
        let user = self
            .auth_client(&self.admin_token)
            .create_user(CreateUserRequest {
                username: name.to_owned(),
                password: password.clone(),
                role: Role::User.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .user
            .unwrap();
        let token =
            sakuga_testkit::login(self.channel(&self.auth.addr_string()), name, &password).await.unwrap();
        Person { id: user.id, token }
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

/// The five SQL injection payloads of the prototype's audit (SEED_FINDINGS.md).
pub(crate) const INJECTIONS: [&str; 5] = [
    "'; DROP TABLE anime_api.production_jobs; --",
    "' OR '1'='1",
    "' UNION SELECT * FROM pg_user WHERE '1'='1",
    "'; INSERT INTO anime_api.production_jobs (prompt) VALUES ('hacked'); --",
    "1; DELETE FROM anime_api.production_jobs WHERE id > 0; --",
];
