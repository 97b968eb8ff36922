//! A ComfyUI stand-in that replays traffic recorded from a real ComfyUI server, 0.3.64
//! (`fixtures/comfyui/`) or 0.26.0 (`fixtures/comfyui-0.26/`; see their READMEs): the
//! same frames in the same order, text frames
//! byte for byte and binary preview frames with their headers, the same HTTP status codes,
//! content types and bodies. Only the ids differ: the recorded prompt id and client id are
//! replaced by the ones the client uses (both UUIDs, so lengths stay the same).
//!
//! A submitted workflow picks its recording the way the real server would have produced
//! it: `FailingNode` -> the failing run, `FakeSampler` with 100 steps or more -> the interrupt run
//! (it holds where the recorder interrupted until an `/interrupt` arrives), `FakeSampler`
//! -> the success run (the feature-flags recording when the client asked for preview
//! metadata), `EmptyImage` -> the built-in-nodes run, and the cached run when the same
//! workflow comes again. A workflow equal to one of the recorded invalid prompts gets the
//! recorded 400 answer. Faults (a dropped socket, a restart, a late history entry) can be
//! scripted per prompt.
//!
//! Like ComfyUI, it runs one prompt at a time: later prompts wait in its queue (listed by
//! GET /queue, removable with POST /queue `delete` and, as 0.26, POST
//! /api/jobs/{id}/cancel) and the next starts the moment one ends. As 0.26 it refuses a
//! `prompt_id` that is not a canonical lowercase UUID with the recorded 400.
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
    time::Duration,
};

use tokio::sync::Notify;

pub use recording::{Recording, Version, fixtures_dir};
use state::Shared;
pub use state::{Fault, Pacing, Run};

/// A workflow template shaped like the recorded FakeSampler runs (07, 14): the replay
/// answers it with those recordings.
pub const FAKE_SAMPLER_TEMPLATE: &str = r#"{"1": {"class_type": "FakeSampler", "inputs": {"width": "{{width}}", "height": "{{height}}", "steps": "{{steps}}", "seed": "{{seed}}"}}, "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "{{filename_prefix}}"}}}"#;

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
    /// Starts on a random loopback port, replaying ComfyUI 0.3.64.
    pub async fn start(pacing: Pacing) -> Self {
        Self::start_version(Version::V0_3_64, pacing).await
    }

    /// Starts on a random loopback port, replaying `version`.
    pub async fn start_version(version: Version, pacing: Pacing) -> Self {
        let shared = Arc::new(Shared { inner: Mutex::default(), interrupt: Notify::new(), pacing, version });
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

    /// Prompts run or running, in start order: id and run.
    pub fn runs(&self) -> Vec<(String, Run)> {
        self.shared.inner.lock().unwrap().runs.clone()
    }

    /// How long the server sat idle between two runs, for each pair of consecutive runs.
    pub fn idle_gaps(&self) -> Vec<Duration> {
        state::idle_gaps(&self.shared.inner.lock().unwrap().runs)
    }

    /// The running prompt's id and the waiting ones', as GET /queue would list them.
    pub fn queue(&self) -> (Option<String>, Vec<String>) {
        let inner = self.shared.inner.lock().unwrap();
        (
            inner.running.as_ref().map(|(id, ..)| id.clone()),
            inner.pending.iter().map(|p| p.prompt_id.clone()).collect(),
        )
    }

    /// How long one run of `recording` lasts here with [`Pacing::Recorded`]: the recorded
    /// gaps between its frames, each capped at 500 ms.
    pub fn paced_run_time(&self, recording: Recording) -> Duration {
        play::paced_duration(&recording.load(self.shared.version))
    }

    /// How many requests had this method and path prefix.
    pub fn count(&self, method: &str, path_prefix: &str) -> usize {
        self.requests().iter().filter(|(m, p, _)| m == method && p.starts_with(path_prefix)).count()
    }
}
