//! The audit log: one row per mutating RPC and auth event (who, what, target, result,
//! peer, request id), and refusals aggregated so that a flood of refused calls costs a
//! bounded number of rows.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, Instant},
};

use deadpool_postgres::Pool;
use tokio::sync::{mpsc, oneshot};
use tracing::warn;

/// Events waiting for the writer; past it, callers wait for room.
const AUDIT_QUEUE: usize = 4096;
/// Most rows one statement writes.
const AUDIT_BATCH: usize = 256;

type Pending = (AuditEvent, oneshot::Sender<Result<(), String>>);

/// Writes audit rows. Calls that finish together share one statement and one commit
/// (group commit); each caller still waits until its row is committed.
#[derive(Debug, Clone)]
pub struct Audit {
    pool: Pool,
    writer: Arc<OnceLock<mpsc::Sender<Pending>>>,
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
        Self { pool, writer: Arc::new(OnceLock::new()) }
    }

    /// Records an event once it is committed; a failure is logged (the action itself
    /// already happened).
    pub async fn record(&self, e: AuditEvent) {
        let action = e.action.clone();
        let writer = self.writer.get_or_init(|| spawn_writer(self.pool.clone()));
        let (done, committed) = oneshot::channel();
        let result = match writer.send((e, done)).await {
            Ok(()) => committed.await.unwrap_or_else(|_| Err("the audit writer stopped".to_owned())),
            Err(mpsc::error::SendError((e, _))) => write(&self.pool, std::slice::from_ref(&e)).await,
        };
        if let Err(err) = result {
            warn!(error = %err, action = %action, "audit row not written");
        }
    }
}

/// The writer: every event waiting when it is free goes into one statement (up to
/// [`AUDIT_BATCH`]); it stops when the last [`Audit`] handle is gone.
fn spawn_writer(pool: Pool) -> mpsc::Sender<Pending> {
    let (tx, mut rx) = mpsc::channel::<Pending>(AUDIT_QUEUE);
    tokio::spawn(async move {
        let mut batch = Vec::with_capacity(AUDIT_BATCH);
        while rx.recv_many(&mut batch, AUDIT_BATCH).await > 0 {
            let (events, waiters): (Vec<AuditEvent>, Vec<_>) = batch.drain(..).unzip();
            let result = write(&pool, &events).await;
            for w in waiters {
                let _ = w.send(result.clone());
            }
        }
    });
    tx
}

/// Inserts `events` in one statement, in their order.
async fn write(pool: &Pool, events: &[AuditEvent]) -> Result<(), String> {
    let client = pool.get().await.map_err(|e| e.to_string())?;
    let stmt = client
        .prepare_cached(
            "INSERT INTO audit_events (actor, action, target, result, peer, request_id) \
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[])",
        )
        .await
        .map_err(|e| e.to_string())?;
    let column = |f: fn(&AuditEvent) -> &str| events.iter().map(f).collect::<Vec<&str>>();
    let (actor, action, target) = (column(|e| &e.actor), column(|e| &e.action), column(|e| &e.target));
    let (result, peer, request) = (column(|e| &e.result), column(|e| &e.peer), column(|e| &e.request_id));
    client
        .execute(&stmt, &[&actor, &action, &target, &result, &peer, &request])
        .await
        .map(drop)
        .map_err(|e| e.to_string())
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
