//! Job events: published to Redis (`<prefix>job:<id>`) so WatchJob streams on any replica
//! see them, and fanned out in-process from one pattern subscription per replica.
//!
//! Redis is only the fast path. Watchers also re-read the job row periodically, so a lost
//! message or a Redis outage delays an event, never loses the job's final state.
//!
//! A job has an in-process channel only while someone on this replica watches it: the
//! first [`Subscription`] creates it, the last one to be dropped removes it. Watchers end
//! at the job's final status, so a finished job's channel goes with its last watcher.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures_util::StreamExt as _;
use sakuga_mesh::{redis::Redis, retry::Backoff};
use tokio::sync::broadcast::{self, error::RecvError};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use uuid::Uuid;

use crate::job::{EventKind, Job, JobEvent, Progress};

/// How events travel between replicas through Redis. The encoding is the wire's
/// `JobEvent`, so it is supplied by the edge (`convert`) where the service is assembled.
#[derive(Debug, Clone, Copy)]
pub struct Codec {
    /// An event as published.
    pub encode: fn(&JobEvent) -> Vec<u8>,
    /// A published event, read back.
    pub decode: fn(&[u8]) -> Result<JobEvent, DecodeError>,
}

/// Why a published event could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Not an encoded event at all.
    #[error(transparent)]
    Wire(Box<dyn std::error::Error + Send + Sync>),
    /// An encoded event, but not one a replica publishes.
    #[error("{0}")]
    Content(&'static str),
}

/// One watched job's fan-out and the number of subscriptions that hold it.
#[derive(Debug)]
struct Channel {
    tx: broadcast::Sender<JobEvent>,
    watchers: usize,
}

type Subscribers = HashMap<Uuid, Channel>;

/// Publisher and per-replica fan-out of job events.
#[derive(Debug, Clone)]
pub struct Events {
    redis: Redis,
    subscribers: Arc<Mutex<Subscribers>>,
    outbox: tokio::sync::mpsc::Sender<(String, Vec<u8>)>,
    capacity: usize,
    codec: Codec,
}

/// Events waiting to be published; beyond this, new ones are dropped (watchers resync).
const OUTBOX: usize = 4096;
/// Most events one pipeline publishes.
const PUBLISH_BATCH: usize = 256;

fn lock(m: &Mutex<Subscribers>) -> std::sync::MutexGuard<'_, Subscribers> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Events were skipped (the watcher fell more than the channel's capacity behind): the job
/// row must be re-read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Missed;

/// One watcher's live events of one job. Dropping it unsubscribes; the last subscription
/// of a job removes the job's channel.
#[derive(Debug)]
pub struct Subscription {
    job_id: Uuid,
    rx: broadcast::Receiver<JobEvent>,
    // Keeps the channel open for as long as this subscription exists, so `recv` never
    // sees it closed.
    _tx: broadcast::Sender<JobEvent>,
    subscribers: Arc<Mutex<Subscribers>>,
}

impl Subscription {
    /// Waits for the next event.
    pub async fn recv(&mut self) -> Result<JobEvent, Missed> {
        // `Closed` needs every sender gone, and this subscription holds one; were it ever
        // seen, re-reading the row is still the right answer.
        self.rx.recv().await.map_err(|(RecvError::Lagged(_) | RecvError::Closed)| Missed)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut subs = lock(&self.subscribers);
        if let Some(channel) = subs.get_mut(&self.job_id) {
            channel.watchers = channel.watchers.saturating_sub(1);
            if channel.watchers == 0 {
                subs.remove(&self.job_id);
            }
        }
    }
}

impl Events {
    /// Uses `redis` for publishing and subscribing, events encoded with `codec`, with
    /// `capacity` events buffered per watched job. Publishing runs in its own task (in
    /// order), so a slow or absent Redis never holds up a worker's stream; every event
    /// waiting when it is free goes out in one pipeline (one round trip).
    pub fn new(redis: Redis, capacity: usize, codec: Codec) -> Self {
        let (outbox, mut queue) = tokio::sync::mpsc::channel::<(String, Vec<u8>)>(OUTBOX);
        let publisher = redis.clone();
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(PUBLISH_BATCH);
            while queue.recv_many(&mut batch, PUBLISH_BATCH).await > 0 {
                let events = batch.len();
                if publisher.is_down() {
                    batch.clear();
                    continue;
                }
                let mut pipe = redis::pipe();
                for (channel, payload) in batch.drain(..) {
                    pipe.cmd("PUBLISH").arg(channel).arg(payload).ignore();
                }
                let mut conn = publisher.conn();
                let result: redis::RedisResult<()> = pipe.query_async(&mut conn).await;
                publisher.note(&result);
                if let Err(e) = result {
                    warn!(events, error = %e, "publishing job events failed; dropping them for a second");
                }
            }
        });
        let subscribers = Arc::new(Mutex::new(HashMap::new()));
        Self { redis, subscribers, outbox, capacity: capacity.max(1), codec }
    }

    fn channel(&self, job_id: Uuid) -> String {
        self.redis.key(&format!("job:{job_id}"))
    }

    /// Queues an event for publishing; never waits for Redis. Dropped events (Redis down,
    /// outbox full) are made up for by the watchers' periodic re-read of the job row.
    fn publish(&self, event: &JobEvent) {
        let job_id = event.job_id;
        if self.outbox.try_send((self.channel(job_id), (self.codec.encode)(event))).is_err() {
            warn!(%job_id, "job event outbox full; event dropped");
        }
    }

    /// The job reached its current state.
    pub fn status_changed(&self, job: &Job) {
        self.publish(&JobEvent::status_changed(job));
    }

    /// The job's worker reported progress.
    pub fn progress(&self, job_id: Uuid, progress: Progress) {
        self.publish(&JobEvent::now(job_id, EventKind::Progress(progress)));
    }

    /// The job's worker sent a preview image.
    pub fn preview(&self, job_id: Uuid, png: Vec<u8>, step: u32, item: u32) {
        self.publish(&JobEvent::now(job_id, EventKind::Preview { png, step, item }));
    }

    /// Live events of one job on this replica, until the subscription is dropped. This
    /// creates the job's channel: callers first check that the job exists and that the
    /// caller may see it.
    pub fn subscribe(&self, job_id: Uuid) -> Subscription {
        let mut subs = lock(&self.subscribers);
        let channel = subs
            .entry(job_id)
            .or_insert_with(|| Channel { tx: broadcast::channel(self.capacity).0, watchers: 0 });
        channel.watchers += 1;
        Subscription {
            job_id,
            rx: channel.tx.subscribe(),
            _tx: channel.tx.clone(),
            subscribers: self.subscribers.clone(),
        }
    }

    /// Jobs with a live channel on this replica (each has at least one watcher here).
    pub fn channels(&self) -> usize {
        lock(&self.subscribers).len()
    }

    /// Subscriptions open on this replica.
    pub fn subscriptions(&self) -> usize {
        lock(&self.subscribers).values().map(|c| c.watchers).sum()
    }

    fn deliver(&self, channel: &str, payload: &[u8]) {
        let Some(id) = channel.strip_prefix(&self.redis.key("job:")).and_then(|s| Uuid::parse_str(s).ok())
        else {
            return;
        };
        let event = match (self.codec.decode)(payload) {
            Ok(e) => e,
            Err(e) => {
                warn!(channel, error = %e, "undecodable job event");
                return;
            }
        };
        // Only jobs watched here have a channel; the others' events are not for us. A send
        // cannot fail: every subscription counted in the entry holds a receiver.
        if let Some(channel) = lock(&self.subscribers).get(&id) {
            let _ = channel.tx.send(event);
        }
    }

    /// Subscribes to `<prefix>job:*` and fans messages out until `shutdown`, reconnecting
    /// with backoff when Redis goes away.
    pub fn spawn_listener(&self, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let pattern = this.redis.key("job:*");
            let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
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
                        backoff.reset();
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
                if !backoff.wait(&shutdown).await {
                    return;
                }
            }
        })
    }
}
