//! The state shared by the RPC handlers and background loops, and the metrics it feeds
//! at each scrape.

use std::sync::Arc;

use sakuga_mesh::{auth::Verifier, metrics::Refresh, redis::Redis};

use crate::{config::Config, job::Status};

/// State shared by the RPC handlers and background loops.
#[derive(Debug)]
pub struct State {
    /// Configuration.
    pub config: Config,
    /// Jobs in PostgreSQL.
    pub store: crate::store::Store,
    /// Submits, committed in groups per owner over `store`.
    pub submits: crate::store::Submits,
    /// Projects and characters.
    pub projects: crate::projects::Projects,
    /// Webhook endpoints and deliveries.
    pub webhooks: Arc<crate::webhooks::Webhooks>,
    /// Event fan-out.
    pub events: crate::events::Events,
    /// `WatchJob` streams held, per user and per connection.
    pub watchers: crate::watchers::Watchers,
    /// Attached workers.
    pub registry: crate::registry::Registry,
    /// Token verification (keys refreshed from the auth service).
    pub verifier: Arc<Verifier>,
    /// Prometheus metrics.
    pub metrics: Arc<sakuga_mesh::metrics::Metrics>,
    /// The scheduler's own metric families.
    pub families: crate::metrics::Families,
    pub(crate) redis: Redis,
}

/// Before each scrape: unfinished jobs by state (all replicas, from PostgreSQL; a count
/// bounded by [`crate::store::UNFINISHED_COUNT_LIMIT`] over the unfinished jobs only, never a
/// count of the whole history), this replica's worker slots, and its job watches (streams
/// and the per-job channels they share, both back to zero when nobody watches).
pub fn metrics_refresh(state: &Arc<State>) -> Refresh {
    let state = state.clone();
    Arc::new(move || {
        let state = state.clone();
        Box::pin(async move {
            let f = &state.families;
            if let Ok(counts) = state.store.count_unfinished().await {
                for s in [Status::Queued, Status::Assigned, Status::Running] {
                    let n = counts.iter().find(|(k, _)| *k == s.as_str()).map_or(0, |(_, n)| *n);
                    f.set_jobs(s, n);
                }
            }
            f.set_slots(state.registry.slot_usage());
            f.set_watch(state.watchers.held(), state.events.channels());
            if let Ok(n) = state.store.count_pending_deliveries(crate::store::UNFINISHED_COUNT_LIMIT).await {
                f.set_webhooks_pending(n);
            }
        })
    })
}
