//! The audit log: one row per mutating RPC and auth event (who, what, target, result,
//! peer, request id), and refusals aggregated so that a flood of refused calls costs a
//! bounded number of rows.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use deadpool_postgres::Pool;
use tracing::warn;

/// Writes audit rows.
#[derive(Debug, Clone)]
pub struct Audit {
    pool: Pool,
}

/// One audit row.
#[derive(Debug, Clone, Default)]
pub struct AuditEvent {
    /// Who.
    pub actor: String,
    /// What (`JobService.SubmitJob`, `auth.login.failed`).
    pub action: String,
    /// On what.
    pub target: String,
    /// `ok` or the status code name.
    pub result: String,
    /// Peer address.
    pub peer: String,
    /// Request id.
    pub request_id: String,
}

impl Audit {
    /// Writes into `audit_events` of this pool's database.
    pub fn new(pool: Pool) -> Self {
        Self { pool }
    }

    /// Records an event; a failure is logged (the action itself already happened).
    pub async fn record(&self, e: AuditEvent) {
        let result = async {
            let client = self.pool.get().await.map_err(|e| e.to_string())?;
            let stmt = client
                .prepare_cached(
                    "INSERT INTO audit_events (actor, action, target, result, peer, request_id) \
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .await
                .map_err(|e| e.to_string())?;
            client
                .execute(&stmt, &[&e.actor, &e.action, &e.target, &e.result, &e.peer, &e.request_id])
                .await
                .map_err(|e| e.to_string())
        }
        .await;
        if let Err(err) = result {
            warn!(error = %err, action = %e.action, "audit row not written");
        }
    }
}

/// How many distinct (actor, action, reason) keys the refusal aggregator tracks; past it,
/// refusals of new keys are counted in one overflow key until the window turns.
const REFUSAL_KEYS: usize = 4096;

/// (actor, action and target, reason).
type RefusalKey = (String, String, &'static str);

/// Writes at most one audit row per (actor, action and target, reason) and window for refused calls;
/// the next row of a key says how many were refused without a row since the last one.
#[derive(Debug, Clone)]
pub struct RefusalAudit {
    audit: Audit,
    window: Duration,
    seen: Arc<Mutex<HashMap<RefusalKey, (Instant, u64)>>>,
}

impl RefusalAudit {
    /// Aggregates refusals over `window` into `audit`.
    pub fn new(audit: Audit, window: Duration) -> Self {
        Self { audit, window, seen: Arc::new(Mutex::new(HashMap::new())) }
    }

    /// Records one refusal; writes a row only for the first refusal of its key in a
    /// window. Returns whether a row was written.
    pub async fn record(&self, mut event: AuditEvent, reason: &'static str) -> bool {
        let suppressed = {
            let mut seen = self.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let now = Instant::now();
            if seen.len() >= REFUSAL_KEYS {
                seen.retain(|_, (since, _)| now.duration_since(*since) < self.window);
            }
            let mut key = (event.actor.clone(), format!("{} {}", event.action, event.target), reason);
            if seen.len() >= REFUSAL_KEYS && !seen.contains_key(&key) {
                // Too many distinct callers at once: one shared key keeps memory bounded.
                key = ("*".to_owned(), "*".to_owned(), reason);
                "*".clone_into(&mut event.actor);
                "*".clone_into(&mut event.target);
            }
            match seen.get_mut(&key) {
                Some((since, count)) if now.duration_since(*since) < self.window => {
                    *count += 1;
                    return false;
                }
                Some((since, count)) => {
                    let suppressed = *count;
                    *since = now;
                    *count = 0;
                    suppressed
                }
                None => {
                    seen.insert(key, (now, 0));
                    0
                }
            }
        };
        event.result = format!("{} {reason}", event.result);
        if suppressed > 0 {
            event.target = format!("{} (+{suppressed} refused without a row)", event.target);
        }
        self.audit.record(event).await;
        true
    }
}
