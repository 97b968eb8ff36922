//! One ComfyUI server as the backend holds it: its API and socket, the jobs listening to
//! the socket, the places its prompts take, and the jobs being followed (to withdraw one).

use std::{
    collections::{BTreeSet, HashMap},
    sync::{
        Arc, Mutex as StdMutex,
        atomic::{AtomicU8, AtomicU32, Ordering},
    },
};

use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::{
    conn::{Conn, SocketDown},
    http::Api,
};

/// One ComfyUI server: its API, the jobs listening to its socket, how many of this
/// worker's prompts it holds, and the models it has loaded.
#[derive(Debug)]
pub(super) struct Server {
    pub(super) api: Api,
    pub(super) client_id: String,
    /// Every job following a prompt here gets every socket event.
    pub(super) listeners: StdMutex<Vec<mpsc::UnboundedSender<Conn>>>,
    pub(super) state: watch::Receiver<Result<(), SocketDown>>,
    pub(super) loaded: StdMutex<BTreeSet<String>>,
    /// This worker's prompts in ComfyUI now, running or waiting in its queue.
    pub(super) held: AtomicU32,
    /// Whether the server offers POST /api/jobs/{id}/cancel: learned at the first cancel.
    pub(super) job_cancel: AtomicU8,
}

/// [`Server::job_cancel`] values.
pub(super) const CANCEL_UNKNOWN: u8 = 0;
pub(super) const CANCEL_OFFERED: u8 = 1;
pub(super) const CANCEL_ABSENT: u8 = 2;

impl Server {
    /// A receiver of the socket's events from now on; dropping it stops them.
    pub(super) fn listen(&self) -> mpsc::UnboundedReceiver<Conn> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.listeners.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(tx);
        rx
    }

    pub(super) fn socket_up(&self) -> bool {
        self.state.borrow().is_ok()
    }

    pub(super) fn has_loaded(&self, model: &str) -> bool {
        self.loaded.lock().unwrap_or_else(std::sync::PoisonError::into_inner).contains(model)
    }
}

/// Passes every event of a server's socket to the jobs listening; ends with the socket task.
pub(super) async fn fan_out(mut events: mpsc::UnboundedReceiver<Conn>, server: Arc<Server>) {
    while let Some(conn) = events.recv().await {
        server
            .listeners
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|l| l.send(conn.clone()).is_ok());
    }
}

/// A prompt's place on a server: given back when dropped, which wakes the prompts waiting
/// on other servers (one may move to this one).
pub(super) struct Place<'a> {
    pub(super) server: &'a Arc<Server>,
    pub(super) freed: &'a Notify,
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        self.server.held.fetch_sub(1, Ordering::AcqRel);
        self.freed.notify_waiters();
    }
}

/// A job's entry in [`ComfyUi::withdrawals`] while it runs: removed when dropped.
pub(super) struct Following<'a> {
    map: &'a StdMutex<HashMap<String, CancellationToken>>,
    job_id: String,
    pub(super) withdraw: CancellationToken,
}

impl<'a> Following<'a> {
    pub(super) fn new(map: &'a StdMutex<HashMap<String, CancellationToken>>, job_id: &str) -> Self {
        let withdraw = CancellationToken::new();
        map.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(job_id.to_owned(), withdraw.clone());
        Self { map, job_id: job_id.to_owned(), withdraw }
    }
}

impl Drop for Following<'_> {
    fn drop(&mut self) {
        self.map.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&self.job_id);
    }
}
