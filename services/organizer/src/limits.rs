//! Ceilings of the organizer's streams: concurrent slots per key (reads per user) and
//! response streams whose every send is bounded by an idle timeout, so a client that stops
//! reading ends its stream and frees its slot.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures_util::StreamExt as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

/// At most `limit` slots held at once per key. Keys with no slot held take no memory.
#[derive(Debug)]
pub struct PerKeySlots {
    limit: usize,
    held: Mutex<HashMap<String, usize>>,
}

/// One held slot; dropping it frees it.
#[derive(Debug)]
pub struct Slot {
    slots: Arc<PerKeySlots>,
    key: String,
}

impl PerKeySlots {
    /// Slots with at most `limit` per key.
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self { limit, held: Mutex::new(HashMap::new()) })
    }

    /// The ceiling per key.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// A slot for `key`, or `None` when `key` already holds `limit`.
    pub fn try_acquire(self: &Arc<Self>, key: &str) -> Option<Slot> {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let n = held.entry(key.to_owned()).or_insert(0);
        if *n >= self.limit {
            return None;
        }
        *n += 1;
        Some(Slot { slots: self.clone(), key: key.to_owned() })
    }

    /// Slots `key` holds now.
    pub fn held(&self, key: &str) -> usize {
        self.held.lock().unwrap_or_else(PoisonError::into_inner).get(key).copied().unwrap_or(0)
    }

    /// Keys holding at least one slot.
    pub fn keys(&self) -> usize {
        self.held.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = self.slots.held.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = held.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                held.remove(&self.key);
            }
        }
    }
}

/// The sending side of a response stream; see [`outbox`].
#[derive(Debug)]
pub struct Outbox<T> {
    tx: mpsc::Sender<Result<T, Status>>,
    idle: Duration,
    stalled: Arc<AtomicBool>,
}

/// Why [`Outbox::send`] could not deliver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Undelivered {
    /// The client is gone (cancelled, disconnected).
    Gone,
    /// The client stopped reading for longer than the idle timeout; the stream ends with
    /// an ABORTED status once what is queued has been read.
    Stalled,
}

impl<T> Outbox<T> {
    /// Queues `item`, waiting at most the idle timeout for room. On an error the producer
    /// stops (and drops what it holds, its slot included).
    pub async fn send(&self, item: Result<T, Status>) -> Result<(), Undelivered> {
        match tokio::time::timeout(self.idle, self.tx.send(item)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Undelivered::Gone),
            Err(_) => {
                self.stalled.store(true, Ordering::Release);
                Err(Undelivered::Stalled)
            }
        }
    }
}

/// A response stream of at most `depth` queued messages, fed through the returned
/// [`Outbox`]. When a send waits longer than `idle` (the client stopped reading) the stream
/// ends with ABORTED (`stalled_message`) after what is queued.
pub fn outbox<T: Send + 'static>(
    depth: usize,
    idle: Duration,
    stalled_message: String,
) -> (Outbox<T>, tonic::codegen::BoxStream<T>) {
    let (tx, rx) = mpsc::channel(depth);
    let stalled = Arc::new(AtomicBool::new(false));
    let flag = stalled.clone();
    let tail = futures_util::stream::once(async move {
        flag.load(Ordering::Acquire).then(|| Err(Status::aborted(stalled_message)))
    })
    .filter_map(std::future::ready);
    (Outbox { tx, idle, stalled }, Box::pin(ReceiverStream::new(rx).chain(tail)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_counted_per_key_and_freed_on_drop() {
        let slots = PerKeySlots::new(2);
        let a1 = slots.try_acquire("alice").unwrap();
        let a2 = slots.try_acquire("alice").unwrap();
        assert!(slots.try_acquire("alice").is_none(), "alice holds her two");
        let b = slots.try_acquire("bob").unwrap();
        assert_eq!((slots.held("alice"), slots.held("bob")), (2, 1));
        drop(a1);
        let a3 = slots.try_acquire("alice").unwrap();
        drop((a2, a3, b));
        assert_eq!(slots.keys(), 0, "no memory kept for idle keys");
    }

    #[tokio::test]
    async fn a_stream_nobody_reads_ends_with_aborted_after_what_was_queued() {
        let (out, mut stream) = outbox::<u32>(1, Duration::from_millis(50), "stopped reading".to_owned());
        out.send(Ok(1)).await.unwrap();
        assert_eq!(out.send(Ok(2)).await, Err(Undelivered::Stalled));
        drop(out);
        assert_eq!(stream.next().await.unwrap().unwrap(), 1);
        let err = stream.next().await.unwrap().unwrap_err();
        assert_eq!((err.code(), err.message()), (tonic::Code::Aborted, "stopped reading"));
        assert!(stream.next().await.is_none());
    }

    #[tokio::test]
    async fn a_stream_read_to_the_end_ends_cleanly_and_a_gone_client_is_noticed() {
        let (out, stream) = outbox::<u32>(4, Duration::from_mins(1), String::new());
        out.send(Ok(1)).await.unwrap();
        out.send(Ok(2)).await.unwrap();
        drop(out);
        let all: Vec<u32> = stream.map(Result::unwrap).collect().await;
        assert_eq!(all, [1, 2]);
        let (out, stream) = outbox::<u32>(4, Duration::from_mins(1), String::new());
        drop(stream);
        assert_eq!(out.send(Ok(1)).await, Err(Undelivered::Gone));
    }
}
