//! The generator: a client of the mesh. It attaches to the scheduler's WorkerService,
//! renders assigned jobs with its backends, streams the outputs to the file organizer and
//! reports progress and completion. It serves only health (SERVING while attached).

mod api;
pub mod backend;
pub mod benchmark;
pub mod builtin;
pub mod comfyui;
pub mod config;
mod convert;
mod deliver;
mod hold;
mod metrics;
mod upload;
mod worker;

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use sakuga_mesh::{
    MeshError,
    auth::{Guard, Verifier},
    config::Renamed,
    health::{NamedCheck, Unhealthy},
    node::Node,
    server::GrpcServer,
    service::Service,
    vault::Vault,
};
use tokio_util::sync::CancellationToken;

pub use config::Config;
use tracing::info;

use crate::backend::Backend;

/// The backend the configuration names; refusals by its ceilings are counted in `metrics`.
/// The comfyui backend's extra headers (`[[comfyui.headers]]`) are read from `vault` here.
pub async fn backend_for(
    config: &Config,
    metrics: &Arc<sakuga_mesh::metrics::Metrics>,
    vault: &Vault,
) -> Result<Arc<dyn Backend>, MeshError> {
    let refused = |e: comfyui::ComfyError| MeshError::Config(e.to_string());
    Ok(match config.backend.as_str() {
        "comfyui" => {
            let headers = comfyui::ServerHeaders::resolve(&config.comfyui, vault).await.map_err(refused)?;
            Arc::new(
                comfyui::ComfyUi::with_metrics(config.comfyui.clone(), metrics.clone(), &headers)
                    .map_err(refused)?,
            )
        }
        "benchmark" => Arc::new(benchmark::Benchmark::new(config.slots, &config.benchmark)),
        _ => Arc::new(builtin::Builtin::new(config.slots, config.preview_every_steps)),
    })
}

/// A built, not yet running generator.
#[derive(Debug)]
pub struct Application {
    node: Node,
    server: GrpcServer,
    config: Arc<Config>,
    verifier: Arc<Verifier>,
    backend: Arc<dyn Backend>,
    families: Arc<metrics::Families>,
}

impl Service for Application {
    const NAME: &'static str = "generator";
    const BINARY: &'static str = "sakuga-generator";
    const ABOUT: &'static str = "Sakuga generator (worker)";
    type Config = Config;
    const RENAMED: &'static [Renamed] = config::RENAMED;

    /// Logs in to Vault, gets the certificate and binds the health listener.
    async fn build(config: Config) -> Result<Self, MeshError> {
        config.validate()?;
        let mut node = Node::start(Self::NAME, &config.server).await?;
        let verifier =
            Arc::new(Verifier::remote(node.tls.channel_to(&config.auth_addr, "auth")?, None, None));
        let backend = backend_for(&config, &node.metrics, &node.vault).await?;
        let server = node.bind(&[], Guard::new(Some(verifier.clone()), None, None)).await?;
        let families = Arc::new(metrics::Families::register(&node.metrics));
        Ok(Self { node, server, config: Arc::new(config), verifier, backend, families })
    }

    /// The health listener's address.
    fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    fn metrics_addr(&self) -> Option<SocketAddr> {
        self.server.metrics_addr()
    }

    /// Works until `shutdown`, then drains (running jobs get the grace period).
    async fn run_until_stopped(self, shutdown: CancellationToken) -> Result<(), MeshError> {
        let Self { node, server, config, verifier, backend, families } = self;
        let busy = metrics::Busy::default();
        let server = server.with_metrics_refresh(metrics::slot_gauges(
            families.clone(),
            backend.clone(),
            busy.clone(),
        ));
        // Templates are checked against the servers and models preloaded before the first
        // hello, so the scheduler hears of warm models at once.
        tokio::select! {
            r = backend.warm_up(shutdown.clone()) => r.map_err(|e| MeshError::Config(e.to_string()))?,
            () = shutdown.cancelled() => return Ok(()),
        }
        info!(backend = backend.name(), slots = backend.slots(), loaded = ?backend.loaded_models(), "backend ready");
        let keys = verifier.spawn_refresh(shutdown.clone());
        let schedulers = config
            .scheduler_addrs()
            .iter()
            .map(|addr| node.tls.channel_to(addr, "scheduler"))
            .collect::<Result<Vec<_>, _>>()?;
        let organizers = config
            .organizer_addrs()
            .iter()
            .map(|addr| node.tls.channel_to(addr, "organizer"))
            .collect::<Result<Vec<_>, _>>()?;
        let attached = Arc::new(AtomicBool::new(false));
        // The worker outlives `shutdown` until it has drained; the health server stops
        // when the worker is done.
        let worker_done = CancellationToken::new();
        let worker = {
            let (config, attached, shutdown, done) =
                (config.clone(), attached.clone(), shutdown.clone(), worker_done.clone());
            tokio::spawn(async move {
                api::scheduler::run(
                    config,
                    backend,
                    (families, busy),
                    schedulers,
                    organizers,
                    attached,
                    shutdown,
                )
                .await;
                done.cancel();
            })
        };
        let flag = attached.clone();
        let checks: Vec<NamedCheck> = vec![(
            "scheduler",
            Arc::new(move || {
                let ok = flag.load(Ordering::SeqCst);
                Box::pin(async move { if ok { Ok(()) } else { Err(Unhealthy::new("not attached")) } })
            }),
        )];
        // Running jobs drained under the shutdown grace; health then stops within a second.
        let node =
            node.with_health_interval(Duration::from_millis(500)).with_call_grace(Duration::from_secs(1));
        let result = node.serve(server, checks, vec![keys], worker_done.clone()).await;
        let _ = worker.await;
        result
    }

    fn database(
        config: &Config,
    ) -> Option<(&sakuga_mesh::config::VaultConfig, &sakuga_mesh::config::DatabaseConfig)> {
        let _ = config;
        None
    }
}
