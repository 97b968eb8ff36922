//! Sending the outbox: every replica runs [`run`], which claims due deliveries (see
//! `store::webhooks`), POSTs each signed, and records the outcome. A failed attempt is
//! tried again after an exponential delay with jitter until the retry period ends; a
//! replica that dies mid-attempt leaves the delivery to whichever replica claims it when
//! its lease ends (at least once, with the same `webhook-id`).
//! The POSTs themselves are [`super::send`]'s.

use std::{collections::HashMap, sync::Arc, time::Duration};

use rand::Rng as _;
use tokio::{sync::Notify, task::JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use uuid::Uuid;

use super::{Webhooks, send::Sent};
use crate::{
    metrics::Families,
    store::{AttemptOutcome, ClaimedDelivery, Recorded},
    webhook::message_id,
};

/// How often pending deliveries past their retry period (of disabled endpoints) are given
/// up and old finished ones deleted.
const SWEEP_EVERY: Duration = Duration::from_mins(1);
/// Finished deliveries deleted per sweep statement.
const SWEEP_BATCH: i64 = 5_000;

/// The delay before attempt `attempt + 1`: `initial` doubled per attempt up to `max`, then
/// between half of it and all of it at random ("equal jitter"), so endpoints coming back
/// are not hit by every pending delivery at once.
pub fn backoff(attempt: u32, initial: Duration, max: Duration) -> Duration {
    let exp = initial.saturating_mul(1u32 << attempt.saturating_sub(1).min(20)).min(max);
    let half = exp / 2;
    half + half.mul_f64(rand::rng().random::<f64>())
}

/// One attempt of a claimed delivery, recorded. Returns its id.
async fn attempt(w: Arc<Webhooks>, families: Families, d: ClaimedDelivery) -> Uuid {
    let msg = message_id(d.id);
    let sent = match w.keys(d.endpoint_id, &d.secret, d.previous_secret.as_deref()) {
        Ok(keys) => {
            let body = (w.render)(&d.event, &d.job, d.created_at);
            w.sender.send(&d.url, &msg, &body, &keys, Duration::from_millis(u64::from(d.timeout_ms))).await
        }
        Err(why) => Sent { status: 0, error: why, elapsed: Duration::ZERO },
    };
    let c = &w.config;
    let outcome = AttemptOutcome {
        delivered: sent.delivered(),
        status_code: sent.status,
        error: sent.error.chars().take(1000).collect(),
        retry_in: backoff(d.attempt, c.backoff_initial, c.backoff_max),
    };
    families.webhook_attempt(sent.delivered(), sent.elapsed);
    match w.store.record_attempt(&d, &outcome, c.retry_period, c.disable_rule()).await {
        Ok(recorded) => {
            families.webhook_recorded(recorded, d.created_at);
            match recorded {
                Recorded::Delivered => debug!(delivery = %d.id, event = %d.event, "webhook delivered"),
                Recorded::Retrying => {
                    info!(delivery = %d.id, attempt = d.attempt, error = %outcome.error, "webhook attempt failed, will retry");
                }
                Recorded::GaveUp => {
                    warn!(delivery = %d.id, attempt = d.attempt, error = %outcome.error, "webhook delivery given up");
                }
                Recorded::Lost => debug!(delivery = %d.id, "webhook attempt outlived its lease"),
            }
        }
        // The lease runs out and another attempt follows: at least once.
        Err(e) => warn!(delivery = %d.id, error = %e, "webhook attempt not recorded"),
    }
    d.id
}

/// Claims and sends deliveries until `shutdown`; `wake` is notified when the outbox gets
/// rows (NOTIFY) so they go out at once. On shutdown the attempts in flight are stopped
/// and handed back.
pub async fn run(w: Arc<Webhooks>, families: Families, wake: Arc<Notify>, shutdown: CancellationToken) {
    let max = w.config.max_in_flight as usize;
    let mut flying: JoinSet<Uuid> = JoinSet::new();
    let mut claimed: HashMap<Uuid, u32> = HashMap::new();
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    loop {
        if flying.len() < max {
            let room = u32::try_from(max - flying.len()).unwrap_or(u32::MAX);
            match w.store.claim_deliveries(room, w.config.lease_grace).await {
                Ok(batch) => {
                    for d in batch {
                        claimed.insert(d.id, d.attempt);
                        flying.spawn(attempt(w.clone(), families.clone(), d));
                    }
                }
                Err(e) => warn!(error = %e, "claiming webhook deliveries failed"),
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            Some(done) = flying.join_next(), if !flying.is_empty() => {
                if let Ok(id) = done {
                    claimed.remove(&id);
                }
            }
            () = wake.notified() => {}
            () = tokio::time::sleep(w.config.poll) => {}
            _ = sweep.tick() => {
                match w.store.sweep_deliveries(w.config.retry_period, w.config.keep_deliveries, SWEEP_BATCH).await {
                    Ok((0, 0)) => {}
                    Ok((gave_up, deleted)) => info!(gave_up, deleted, "webhook deliveries swept"),
                    Err(e) => warn!(error = %e, "sweeping webhook deliveries failed"),
                }
            }
        }
    }
    flying.abort_all();
    while let Some(done) = flying.join_next().await {
        if let Ok(id) = done {
            claimed.remove(&id);
        }
    }
    let left: Vec<(Uuid, u32)> = claimed.into_iter().collect();
    if let Err(e) = w.store.release_deliveries(&left).await {
        warn!(error = %e, count = left.len(), "handing back webhook deliveries failed; their leases will run out");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_ceiling_with_jitter() {
        let (initial, max) = (Duration::from_secs(5), Duration::from_hours(1));
        for _ in 0..100 {
            let first = backoff(1, initial, max);
            assert!(first >= Duration::from_millis(2500) && first <= initial, "{first:?}");
            let fourth = backoff(4, initial, max);
            assert!(fourth >= Duration::from_secs(20) && fourth <= Duration::from_secs(40), "{fourth:?}");
            let late = backoff(40, initial, max);
            assert!(late >= max / 2 && late <= max, "{late:?}");
        }
    }
}
