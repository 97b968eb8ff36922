//! Health as gRPC reports it: `liveness` is SERVING while the process serves at all; the
//! overall status and every service's name follow the dependency checks (readiness).

use std::{fmt, sync::Arc, time::Duration};

use futures_util::future::BoxFuture;
use tokio_util::sync::CancellationToken;
use tonic_health::{ServingStatus, server::HealthReporter};
use tracing::{info, warn};

/// Name under which health reports the server as a whole.
pub(crate) const OVERALL: &str = "";
/// The health service's own name (for reflection).
pub(crate) const HEALTH_SERVICE: &str = "grpc.health.v1.Health";
/// Health service name that is SERVING while the process serves gRPC at all.
pub const LIVENESS: &str = "liveness";
/// How long one check may take before it counts as failed.
const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// Why a dependency is not healthy, for the log (never sent to callers).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unhealthy(String);

impl Unhealthy {
    /// A failed check, described by `reason`.
    pub fn new(reason: impl fmt::Display) -> Self {
        Self(reason.to_string())
    }
}

/// A dependency probe for health.
pub type HealthCheck = Arc<dyn Fn() -> BoxFuture<'static, Result<(), Unhealthy>> + Send + Sync>;

/// A named probe of one dependency.
pub type NamedCheck = (&'static str, HealthCheck);

/// Reports every service NOT_SERVING but `liveness`, which is SERVING: the state of a
/// server that is up but has not yet checked its dependencies.
pub(crate) async fn report_starting(reporter: &HealthReporter, services: &[&'static str]) {
    for name in services.iter().copied().chain([OVERALL]) {
        reporter.set_service_status(name, ServingStatus::NotServing).await;
    }
    // For liveness probes: the process serves gRPC. Dependencies are readiness's business
    // (the overall status), so an outage of PostgreSQL does not restart every pod.
    reporter.set_service_status(LIVENESS, ServingStatus::Serving).await;
}

/// Runs `checks` every `interval` until `shutdown`: every service and the overall status
/// are SERVING while all pass, NOT_SERVING otherwise and from the moment shutdown begins.
pub(crate) fn spawn_monitor(
    reporter: HealthReporter,
    services: Vec<&'static str>,
    checks: Vec<NamedCheck>,
    interval: Duration,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut last: Option<bool> = None;
        loop {
            let failing = failing(&checks).await;
            if shutdown.is_cancelled() {
                break;
            }
            let ok = failing.is_empty();
            if last != Some(ok) {
                if ok {
                    info!("dependencies healthy: SERVING");
                } else {
                    warn!(failing = ?failing, "dependency unhealthy: NOT_SERVING");
                }
                let status = if ok { ServingStatus::Serving } else { ServingStatus::NotServing };
                for name in services.iter().copied().chain([OVERALL]) {
                    reporter.set_service_status(name, status).await;
                }
                last = Some(ok);
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(interval) => {}
            }
        }
        for name in services.iter().copied().chain([OVERALL]) {
            reporter.set_service_status(name, ServingStatus::NotServing).await;
        }
    })
}

/// Runs every check once; returns `name: reason` for each that failed or timed out.
async fn failing(checks: &[NamedCheck]) -> Vec<String> {
    let mut failing = Vec::new();
    for (name, check) in checks {
        match tokio::time::timeout(CHECK_TIMEOUT, check()).await {
            Ok(Ok(())) => {}
            Ok(Err(reason)) => failing.push(format!("{name}: {reason}")),
            Err(_) => failing.push(format!("{name}: timed out")),
        }
    }
    failing
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(result: Result<(), &'static str>) -> HealthCheck {
        Arc::new(move || Box::pin(async move { result.map_err(Unhealthy::new) }))
    }

    #[tokio::test]
    async fn a_failing_check_is_named_with_its_reason() {
        let checks = vec![("postgres", check(Ok(()))), ("redis", check(Err("connection refused")))];
        assert_eq!(failing(&checks).await, vec!["redis: connection refused".to_owned()]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_check_that_hangs_counts_as_failed() {
        let hang: HealthCheck = Arc::new(|| Box::pin(std::future::pending()));
        assert_eq!(failing(&[("storage", hang)]).await, vec!["storage: timed out".to_owned()]);
    }
}
