//! What the replay server knows: the sockets, the scripted prompts, the running one and
//! the stored history, shared by every route.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::Mutex,
    time::Duration,
};

use axum::extract::ws::Message;
use tokio::{
    sync::{Notify, mpsc},
    time::Instant,
};

use super::recording::{Recording, Script, Version};

/// Something going wrong during a scripted prompt, at the n-th frame of its run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The server closes the client's socket; the run goes on, and a socket reopened with
    /// the same client id gets the rest (as recorded in 17).
    DropSocket(usize),
    /// The server restarts: sockets close, everything is forgotten, and for `down_ms` every
    /// request is answered 503.
    Restart {
        /// Frame index.
        at: usize,
        /// Downtime.
        down_ms: u64,
    },
    /// The history entry is stored this long after the final `executing` frame instead of
    /// right before it (ComfyUI 0.26 answered `{}` at `execution_success` 2 runs in 30).
    HistoryLate {
        /// Delay.
        ms: u64,
    },
}

/// A prompt accepted and waiting in the queue.
#[derive(Debug)]
pub(super) struct Queued {
    pub(super) prompt_id: String,
    pub(super) client_id: String,
    pub(super) number: u64,
    pub(super) script: Script,
    pub(super) fault: Option<Fault>,
}

/// One prompt's run: when it started and ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    /// When its first frame was due.
    pub started: Instant,
    /// When its last frame was sent (`None` while it runs).
    pub ended: Option<Instant>,
    /// Whether another prompt was waiting when it ended.
    pub next_waiting: bool,
}

/// How fast frames are replayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pacing {
    /// With the recorded gaps between frames.
    Recorded,
    /// As fast as possible.
    Instant,
}

#[derive(Debug, Default)]
pub(super) struct Inner {
    /// Socket writers per client id.
    pub(super) sockets: HashMap<String, mpsc::UnboundedSender<Message>>,
    /// Clients that asked for preview metadata.
    pub(super) flags: HashSet<String>,
    /// Scripted recordings for the next prompts.
    pub(super) scripted: VecDeque<(Recording, Option<Fault>)>,
    /// Running prompt: id, client, queue number, node now executing.
    pub(super) running: Option<(String, String, u64, Option<String>)>,
    /// Prompts waiting behind it, in order.
    pub(super) pending: VecDeque<Queued>,
    /// Every run by prompt id, in start order.
    pub(super) runs: Vec<(String, Run)>,
    /// Stored history bodies by prompt id.
    pub(super) history: HashMap<String, String>,
    /// Workflows seen (for the cache).
    pub(super) seen: HashSet<String>,
    /// Every request: method, path and query, body.
    pub(super) requests: Vec<(String, String, String)>,
    pub(super) interrupted: bool,
    pub(super) down_until: Option<tokio::time::Instant>,
    pub(super) number: u64,
}

#[derive(Debug)]
pub(super) struct Shared {
    pub(super) inner: Mutex<Inner>,
    pub(super) interrupt: Notify,
    pub(super) pacing: Pacing,
    pub(super) version: Version,
}

impl Inner {
    /// Records the end of the running prompt's run.
    pub(super) fn run_ended(&mut self, prompt_id: &str) {
        let next_waiting = !self.pending.is_empty();
        if let Some((_, run)) =
            self.runs.iter_mut().rev().find(|(id, r)| id == prompt_id && r.ended.is_none())
        {
            run.ended = Some(Instant::now());
            run.next_waiting = next_waiting;
        }
    }
}

/// How long the server sat idle between runs while a prompt of `runs` was yet to come:
/// the gaps from one run's end to the next one's start.
pub(super) fn idle_gaps(runs: &[(String, Run)]) -> Vec<Duration> {
    runs.windows(2)
        .filter_map(|w| w[0].1.ended.map(|end| w[1].1.started.saturating_duration_since(end)))
        .collect()
}
