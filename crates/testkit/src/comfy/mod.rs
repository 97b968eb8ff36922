//! A ComfyUI stand-in that replays traffic recorded from a real ComfyUI server
//! (`fixtures/comfyui/`, see its README): the same frames in the same order, text frames
//! byte for byte and binary preview frames with their headers, the same HTTP status codes,
//! content types and bodies. Only the ids differ: the recorded prompt id and client id are
//! replaced by the ones the client uses (both UUIDs, so lengths stay the same).
//!
//! A submitted workflow picks its recording the way the real server would have produced
//! it: `FailingNode` -> the failing run, `FakeSampler` with 200 steps -> the interrupt run
//! (it holds where the recorder interrupted until an `/interrupt` arrives), `FakeSampler`
//! -> the success run (the feature-flags recording when the client asked for preview
//! metadata), `EmptyImage` -> the built-in-nodes run, and the cached run when the same
//! workflow comes again. A workflow equal to one of the recorded invalid prompts gets the
//! recorded 400 answer. Faults (a dropped socket, a restart) can be scripted per prompt.
//!
//! One liberty: only two output PNGs were recorded, so every `fixture_fake_*` file is served
//! with the bytes of the first FakeSampler output, every `fixture_empty_*` with the EmptyImage one.

mod play;
mod recording;
mod routes;
mod state;

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use tokio::sync::Notify;

pub use recording::{Recording, fixtures_dir};
use state::Shared;
pub use state::{Fault, Pacing};

/// The running replay server.
#[derive(Debug)]
pub struct ReplayComfy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ReplayComfy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ReplayComfy {
    /// Starts on a random loopback port.
    pub async fn start(pacing: Pacing) -> Self {
        let shared = Arc::new(Shared { inner: Mutex::default(), interrupt: Notify::new(), pacing });
        let app = routes::router(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, shared, task }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The next prompt plays `recording`, with `fault` if given.
    pub fn script(&self, recording: Recording, fault: Option<Fault>) {
        self.shared.inner.lock().unwrap().scripted.push_back((recording, fault));
    }

    /// Requests received so far: (method, path with query, body).
    pub fn requests(&self) -> Vec<(String, String, String)> {
        self.shared.inner.lock().unwrap().requests.clone()
    }

    /// How many requests had this method and path prefix.
    pub fn count(&self, method: &str, path_prefix: &str) -> usize {
        self.requests().iter().filter(|(m, p, _)| m == method && p.starts_with(path_prefix)).count()
    }
}
