//! What the worker drives: a backend runs one job with a progress sink and a cancel token
//! and returns its artifacts or a typed error. Streams, leases and uploads stay in the
//! worker; backends know nothing of them, nor of the wire: a job reaches them as a
//! [`GenerationSpec`], converted once where the worker receives it (`convert`).

use std::{fmt, sync::Arc};

use futures_util::future::BoxFuture;
use sakuga_imaging::Artifact;
use tokio_util::sync::CancellationToken;

use crate::comfyui::ComfyError;

/// Why a job attempt produced no artifacts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// The job was canceled and the backend stopped.
    #[error("canceled")]
    Canceled,
    /// The job left the backend's queue before it started, after [`Backend::withdraw`].
    #[error("withdrawn from the backend's queue before it started")]
    Withdrawn,
    /// Another attempt will fail the same way (bad parameters, a broken workflow, a node
    /// error); the message is for people and names what is wrong.
    #[error("{0}")]
    Permanent(String),
    /// Another attempt may succeed (a server restarted, a connection dropped, out of memory).
    #[error("{0}")]
    Retryable(String),
}

/// Why a backend cannot start; the service refuses to.
#[derive(Debug, thiserror::Error)]
pub enum WarmUpError {
    /// The ComfyUI backend's configuration does not fit a server it drives.
    #[error(transparent)]
    ComfyUi(#[from] ComfyError),
    /// The trial run failed.
    #[error("{what} failed: {source}")]
    TrialRun {
        /// The run ("builtin warm-up render", ...).
        what: &'static str,
        /// How it failed.
        #[source]
        source: BackendError,
    },
}

/// What a job makes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Kind {
    /// One PNG per batch item.
    #[default]
    Image,
    /// One animated PNG per batch item.
    Video,
}

/// A job's generation parameters, with the scheduler's defaults applied and the seed
/// resolved. Zero means "the backend's default" where the API says so.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenerationSpec {
    /// Image or video.
    pub kind: Kind,
    /// What to leave out of the picture.
    pub negative_prompt: String,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Sampling steps.
    pub steps: u32,
    /// Items of the batch; 0 means 1.
    pub batch_size: u32,
    /// Video: frames per clip.
    pub frames: u32,
    /// Video: playback rate; 0 means the default.
    pub fps: u32,
    /// Seed; absent only for jobs the scheduler did not resolve.
    pub seed: Option<u64>,
    /// Guidance scale; 0 means the default.
    pub cfg_scale: f32,
    /// Sampler name; empty means the default.
    pub sampler: String,
    /// Model (checkpoint) name; empty means the backend's default.
    pub model: String,
}

/// One job as a backend sees it.
#[derive(Debug, Clone)]
pub struct JobInput {
    /// Job id (ComfyUI's `prompt_id`).
    pub job_id: String,
    /// 1-based attempt number.
    pub attempt: u32,
    /// Parameters with the scheduler's defaults applied and the seed resolved.
    pub spec: GenerationSpec,
    /// The prompt to render (the job's prompt plus character fragments).
    pub prompt: String,
}

impl JobInput {
    /// Image or video.
    pub fn kind(&self) -> Kind {
        self.spec.kind
    }

    /// Items of the batch (at least 1).
    pub fn batch(&self) -> u32 {
        self.spec.batch_size.max(1)
    }
}

/// What a backend reports while it works.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// Work done so far over the whole job: `step` of `total`, in the named stage.
    Step {
        /// Units done.
        step: u32,
        /// Units in the whole job.
        total: u32,
        /// Batch item being worked on.
        item: u32,
        /// What is happening ("generating", "sampling: node 3 KSampler", ...).
        stage: String,
    },
    /// A small PNG (at most 128 px on its longest side) of the work in progress.
    Preview {
        /// PNG bytes.
        png: Vec<u8>,
        /// Step it was taken at.
        step: u32,
        /// Batch item.
        item: u32,
    },
}

/// Where reports go. Must not block: the worker forwards best effort.
#[derive(Clone)]
pub struct Sink(Arc<dyn Fn(Report) + Send + Sync>);

impl Sink {
    /// A sink calling `f` for every report.
    pub fn new(f: impl Fn(Report) + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    /// A sink that drops everything (warm-up runs).
    pub fn discard() -> Self {
        Self::new(|_| {})
    }

    /// Reports progress.
    pub fn step(&self, step: u32, total: u32, item: u32, stage: impl Into<String>) {
        (self.0)(Report::Step { step, total, item, stage: stage.into() });
    }

    /// Reports a preview.
    pub fn preview(&self, png: Vec<u8>, step: u32, item: u32) {
        (self.0)(Report::Preview { png, step, item });
    }
}

impl fmt::Debug for Sink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Sink")
    }
}

/// A generation backend. Its calls return boxed futures, so backends can sit behind
/// `Arc<dyn Backend>`.
pub trait Backend: Send + Sync + fmt::Debug {
    /// Name the worker advertises ("builtin", "comfyui").
    fn name(&self) -> &'static str;

    /// Jobs this backend runs at once.
    fn slots(&self) -> u32;

    /// Jobs it takes beyond [`Backend::slots`] to wait in its own queue, so the next one
    /// starts the moment a running one ends (a ComfyUI server's next prompt).
    fn queue_slots(&self) -> u32 {
        0
    }

    /// Asks the backend to take a job that waits in its queue (not started) out of it: the
    /// job's run then ends with [`BackendError::Withdrawn`]; a job that started carries on.
    /// False when the backend holds no such job.
    fn withdraw(&self, job_id: &str) -> bool {
        let _ = job_id;
        false
    }

    /// Models loaded now (warm); the scheduler prefers this worker for them.
    fn loaded_models(&self) -> Vec<String>;

    /// Checks the backend's configuration against what it drives and loads the configured
    /// models, so the first job is not a cold start. An `Err` is a configuration error
    /// (the service refuses to start); an unreachable server is only logged.
    fn warm_up(&self, cancel: CancellationToken) -> BoxFuture<'_, Result<(), WarmUpError>>;

    /// Runs one job attempt to its artifacts (in batch order).
    fn run(
        &self,
        job: JobInput,
        sink: Sink,
        cancel: CancellationToken,
    ) -> BoxFuture<'_, Result<Vec<Artifact>, BackendError>>;
}
