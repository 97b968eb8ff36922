//! The gRPC surface: `JobService` ([`jobs`]), `WorkerService` ([`worker_session`]),
//! `ProjectService` ([`projects`]) and `WebhookService` ([`webhooks`]). Handlers check the caller, translate the request with
//! [`crate::convert`], call the domain, and translate the answer back; nothing below this
//! layer sees a proto type.

mod jobs;
mod projects;
mod webhooks;
mod worker_session;

use std::sync::Arc;

use sakuga_mesh::server::GrpcServer;
use sakuga_proto::{
    service_names,
    v1::{
        job_service_server::JobServiceServer, project_service_server::ProjectServiceServer,
        webhook_service_server::WebhookServiceServer, worker_service_server::WorkerServiceServer,
    },
};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::{error::SchedulerError, state::State};

/// The services the scheduler serves, for the guard's authorization table.
pub(crate) const SERVICES: [&str; 4] =
    [service_names::JOBS, service_names::WORKER, service_names::PROJECTS, service_names::WEBHOOKS];

/// JobService and WorkerService over the shared state.
#[derive(Debug, Clone)]
struct Api {
    /// Shared state.
    state: Arc<State>,
    /// Wakes the dispatcher.
    wake: Arc<Notify>,
    /// Ends streams on shutdown.
    shutdown: CancellationToken,
}

impl Api {
    /// Counts a refusal by one of the scheduler's ceilings (other errors are not counted).
    fn count_refusal(&self, e: &SchedulerError) {
        if let Some(ceiling) = e.ceiling() {
            self.state.metrics.ceiling_refused(ceiling);
        }
    }
}

/// Adds the scheduler's services to `server`.
pub(crate) fn add_services(
    server: GrpcServer,
    state: &Arc<State>,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
) -> GrpcServer {
    let api = Api { state: state.clone(), wake, shutdown };
    server
        .add_service(JobServiceServer::new(api.clone()))
        .add_service(WorkerServiceServer::new(api))
        .add_service(ProjectServiceServer::new(projects::ProjectApi(state.projects.clone())))
        .add_service(WebhookServiceServer::new(webhooks::WebhookApi {
            webhooks: state.webhooks.clone(),
            metrics: state.metrics.clone(),
        }))
}
