//! What the replay server knows: the sockets, the scripted prompts, the running one and
//! the stored history, shared by every route.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::Mutex,
};

use axum::extract::ws::Message;
use tokio::sync::{Notify, mpsc};

use super::recording::Recording;

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
}
