//! Job events: published to Redis (`<prefix>job:<id>`) so WatchJob streams on any replica
//! see them, and fanned out in-process from one pattern subscription per replica.
//!
//! Redis is only the fast path. Watchers also re-read the job row periodically, so a lost
//! message or a Redis outage delays an event, never loses the job's final state.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures_util::StreamExt as _;
use prost::Message as _;
use sakuga_mesh::redis::Redis;
use sakuga_proto::v1::JobEvent;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use uuid::Uuid;

type Subscribers = HashMap<Uuid, broadcast::Sender<JobEvent>>;

/// Publisher and per-replica fan-out of job events.
#[derive(Debug, Clone)]
pub struct Events {
    redis: Redis,
    subscribers: Arc<Mutex<Subscribers>>,
    outbox: tokio::sync::mpsc::Sender<(String, Vec<u8>)>,
}

/// Events waiting to be published; beyond this, new ones are dropped (watchers resync).
const OUTBOX: usize = 4096;

fn lock(m: &Mutex<Subscribers>) -> std::sync::MutexGuard<'_, Subscribers> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Events {
    /// Uses `redis` for publishing and subscribing. Publishing runs in its own task (in
    /// order), so a slow or absent Redis never holds up a worker's stream.
    pub fn new(redis: Redis) -> Self {
        let (outbox, mut queue) = tokio::sync::mpsc::channel::<(String, Vec<u8>)>(OUTBOX);
        let publisher = redis.clone();
        tokio::spawn(async move {
            while let Some((channel, payload)) = queue.recv().await {
                if publisher.is_down() {
                    continue;
                }
                let mut conn = publisher.manager.clone();
                let result: redis::RedisResult<i64> =
                    redis::cmd("PUBLISH").arg(&channel).arg(payload).query_async(&mut conn).await;
                publisher.note(&result);
                if let Err(e) = result {
                    warn!(%channel, error = %e, "publishing job events failed; dropping them for a second");
                }
            }
        });
        Self { redis, subscribers: Arc::new(Mutex::new(HashMap::new())), outbox }
    }

    fn channel(&self, job_id: Uuid) -> String {
        self.redis.key(&format!("job:{job_id}"))
    }

    /// Queues an event for publishing; never waits for Redis. Dropped events (Redis down,
    /// outbox full) are made up for by the watchers' periodic re-read of the job row.
    pub fn publish(&self, job_id: Uuid, event: &JobEvent) {
        if self.outbox.try_send((self.channel(job_id), event.encode_to_vec())).is_err() {
            warn!(%job_id, "job event outbox full; event dropped");
        }
    }

    /// Live events of one job on this replica.
    pub fn subscribe(&self, job_id: Uuid) -> broadcast::Receiver<JobEvent> {
        lock(&self.subscribers).entry(job_id).or_insert_with(|| broadcast::channel(256).0).subscribe()
    }

    fn deliver(&self, channel: &str, payload: &[u8]) {
        let Some(id) = channel.strip_prefix(&self.redis.key("job:")).and_then(|s| Uuid::parse_str(s).ok())
        else {
            return;
        };
        let event = match JobEvent::decode(payload) {
            Ok(e) => e,
            Err(e) => {
                warn!(channel, error = %e, "undecodable job event");
                return;
            }
        };
        let mut subs = lock(&self.subscribers);
        if let Some(tx) = subs.get(&id)
            && tx.send(event).is_err()
        {
            // Nobody watches this job any more.
            subs.remove(&id);
        }
    }

    /// Subscribes to `<prefix>job:*` and fans messages out until `shutdown`, reconnecting
    /// with backoff when Redis goes away.
    pub fn spawn_listener(&self, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let pattern = this.redis.key("job:*");
            let mut backoff = Duration::from_millis(200);
            loop {
                let pubsub = async {
                    let mut ps = this.redis.client.get_async_pubsub().await?;
                    ps.psubscribe(&pattern).await?;
                    Ok::<_, redis::RedisError>(ps)
                };
                let stream = tokio::select! {
                    () = shutdown.cancelled() => return,
                    r = pubsub => r,
                };
                match stream {
                    Ok(ps) => {
                        debug!(%pattern, "subscribed to job events");
                        backoff = Duration::from_millis(200);
                        let mut messages = ps.into_on_message();
                        loop {
                            tokio::select! {
                                () = shutdown.cancelled() => return,
                                msg = messages.next() => match msg {
                                    Some(msg) => this.deliver(msg.get_channel_name(), msg.get_payload_bytes()),
                                    None => break,
                                },
                            }
                        }
                        warn!("job event subscription closed, reconnecting");
                    }
                    Err(e) => warn!(error = %e, "cannot subscribe to job events, retrying"),
                }
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        })
    }
}
