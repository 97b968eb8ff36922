//! A fresh mesh for one section, and the clients the sections use.

use std::{sync::Arc, time::Duration};

use sakuga_mesh::{
    ratelimit::{Limit, RateLimits},
    tls::MeshTls,
};
use sakuga_proto::v1::{
    AttachRequest, AttachResponse, JobKind, JobSpec, SubmitJobRequest, WorkerHello, attach_request::Msg,
    job_service_client::JobServiceClient, worker_service_client::WorkerServiceClient,
};
use sakuga_testkit::{Authed, Bearer, Spawned, TestEnv};
use tokio::sync::mpsc;
use tonic::Streaming;

/// Limits no benchmark reaches: the figures are the mesh's, not the limiter's refusals.
/// (The limiter still runs its Redis script on every call.)
pub fn unlimited() -> RateLimits {
    RateLimits::uniform(Limit { per_minute: 100_000_000, burst: 10_000_000 })
}

/// Auth and scheduler (and, when asked, an organizer) in this process.
pub struct Mesh {
    pub env: TestEnv,
    pub auth: Spawned,
    pub scheduler: Spawned,
    pub organizer: Option<Spawned>,
    pub generators: Vec<Spawned>,
    pub operator: Arc<MeshTls>,
    pub token: String,
    _files: Option<tempfile::TempDir>,
}

impl Mesh {
    /// Starts auth and a scheduler with benchmark limits; `organizer` adds a file organizer
    /// storing in a temporary folder.
    pub async fn start(organizer: bool) -> anyhow::Result<Self> {
        let env = TestEnv::new().await?;
        let mut ac = sakuga_testkit::auth_config(&env);
        ac.rate_limits = unlimited();
        let auth = sakuga_testkit::spawn_auth(ac).await?;
        let scheduler = sakuga_testkit::spawn_scheduler(scheduler_config(&env, &auth)).await?;
        let (organizer, files) = if organizer {
            let dir = tempfile::tempdir()?;
            let mut oc = sakuga_testkit::organizer_config(&env, &auth, dir.path().to_path_buf());
            oc.rate_limits = unlimited();
            (Some(sakuga_testkit::spawn_organizer(oc).await?), Some(dir))
        } else {
            (None, None)
        };
        let operator = env.identity("operator").await?;
        let token =
            sakuga_testkit::login(operator.channel(&auth.addr_string())?, "admin", &env.admin_password)
                .await?;
        Ok(Self { env, auth, scheduler, organizer, generators: Vec::new(), operator, token, _files: files })
    }

    /// A client of JobService on its own connection.
    pub fn jobs(&self) -> anyhow::Result<JobServiceClient<Authed>> {
        Ok(JobServiceClient::with_interceptor(
            self.operator.channel(&self.scheduler.addr_string())?,
            Bearer::new(&self.token),
        ))
    }

    /// Starts a generator in this process with `backend` and `slots`.
    pub async fn add_generator(&mut self, backend: &str, slots: u32, hold_ms: u64) -> anyhow::Result<()> {
        self.add_generator_with(|gc| {
            backend.clone_into(&mut gc.backend);
            gc.slots = slots;
            gc.benchmark.hold = Duration::from_millis(hold_ms);
            gc.preview_every_steps = 5;
        })
        .await
    }

    /// Starts a generator in this process with the configuration `adjust` leaves.
    pub async fn add_generator_with(
        &mut self,
        adjust: impl FnOnce(&mut sakuga_generator::Config),
    ) -> anyhow::Result<()> {
        let organizer = self.organizer.as_ref().ok_or_else(|| anyhow::anyhow!("no organizer"))?;
        let mut gc = sakuga_testkit::generator_config(&self.env, &self.auth, &self.scheduler, organizer);
        gc.worker_id = format!("bench-{}", uuid::Uuid::new_v4().simple());
        adjust(&mut gc);
        self.generators.push(sakuga_testkit::spawn_generator(gc).await?);
        Ok(())
    }

    /// Waits until `n` jobs have succeeded (polling the jobs table) and returns how many
    /// failed meanwhile, or an error after `timeout`.
    pub async fn wait_succeeded(&self, n: i64, timeout: Duration) -> anyhow::Result<()> {
        wait_succeeded(&self.env.db().await?, n, timeout).await
    }

    /// Stops everything and drops the database.
    pub async fn stop(self) -> anyhow::Result<()> {
        for g in self.generators {
            g.stop().await?;
        }
        if let Some(o) = self.organizer {
            o.stop().await?;
        }
        self.scheduler.stop().await?;
        self.auth.stop().await?;
        self.env.cleanup().await;
        Ok(())
    }
}

/// Polls until `n` jobs have succeeded; fails at once when one has failed.
pub async fn wait_succeeded(db: &tokio_postgres::Client, n: i64, timeout: Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let row = db
            .query_one(
                "SELECT count(*) FILTER (WHERE status = 'succeeded'), count(*) FILTER (WHERE status = 'failed') FROM jobs",
                &[],
            )
            .await?;
        let (ok, failed): (i64, i64) = (row.get(0), row.get(1));
        if failed > 0 {
            anyhow::bail!("{failed} jobs failed");
        }
        if ok >= n {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("only {ok} of {n} jobs succeeded within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The heartbeat interval the benchmarks' scheduler asks of its workers.
pub const HEARTBEAT: Duration = Duration::from_secs(5);

/// The scheduler configuration of the benchmarks: the test defaults with limits no
/// benchmark reaches and leases long enough that no lease expires under load.
pub fn scheduler_config(env: &TestEnv, auth: &Spawned) -> sakuga_scheduler::Config {
    let mut cfg = sakuga_testkit::scheduler_config(env, auth);
    cfg.rate_limits = unlimited();
    cfg.max_active_jobs_per_user = 1_000_000;
    // The fan-out run is one user watching one job from thousands of streams, up to 150
    // per connection: the watcher ceilings are what it measures past, not what it tests.
    cfg.watch.max_per_user = 1_000_000;
    cfg.watch.max_per_connection = 1_000;
    cfg.lease_ttl = Duration::from_secs(30);
    cfg.heartbeat_interval = HEARTBEAT;
    cfg
}

/// A small image job for `backend`.
pub fn small_job(prompt: String, backend: &str) -> SubmitJobRequest {
    SubmitJobRequest {
        spec: Some(JobSpec {
            kind: JobKind::Image.into(),
            prompt,
            width: 64,
            height: 64,
            steps: 1,
            backend: backend.to_owned(),
            ..JobSpec::default()
        }),
        ..SubmitJobRequest::default()
    }
}

/// A simulated worker's session: what it sends and what it receives.
pub struct SimWorker {
    pub tx: mpsc::Sender<AttachRequest>,
    pub inbound: Streaming<AttachResponse>,
}

/// Attaches a simulated worker with a generator certificate.
pub async fn attach(mesh: &Mesh, name: &str, slots: u32, backend: &str) -> anyhow::Result<SimWorker> {
    let generator = mesh.env.identity("generator").await?;
    attach_on(generator.channel(&mesh.scheduler.addr_string())?, name, slots, backend).await
}

/// Attaches a simulated worker on `channel` (clones of one channel share its connection).
pub async fn attach_on(
    channel: tonic::transport::Channel,
    name: &str,
    slots: u32,
    backend: &str,
) -> anyhow::Result<SimWorker> {
    let (tx, rx) = mpsc::channel(4096);
    tx.send(AttachRequest {
        msg: Some(Msg::Hello(WorkerHello {
            worker_id: name.to_owned(),
            slots,
            backends: vec![backend.to_owned()],
            ..WorkerHello::default()
        })),
    })
    .await?;
    let inbound = WorkerServiceClient::new(channel)
        .attach(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    Ok(SimWorker { tx, inbound })
}
