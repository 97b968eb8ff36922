//! Jobs as the scheduler sees them (no proto types here).

use chrono::{DateTime, Utc};
use uuid::Uuid;

/// Image or video.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// PNG per batch item.
    Image,
    /// Animated PNG per batch item.
    Video,
}

impl Kind {
    /// Database spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Image => "image",
            Self::Video => "video",
        }
    }

    /// From the database spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "image" => Some(Self::Image),
            "video" => Some(Self::Video),
            _ => None,
        }
    }
}

/// Job states. Transitions: queued -> assigned -> running -> succeeded | failed | canceled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Waiting for a worker.
    Queued,
    /// Handed to a worker under a lease.
    Assigned,
    /// The worker reports progress.
    Running,
    /// Done, files stored.
    Succeeded,
    /// Failed after the last attempt.
    Failed,
    /// Canceled.
    Canceled,
}

impl Status {
    /// Database spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Assigned => "assigned",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Canceled => "canceled",
        }
    }

    /// From the database spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "queued" => Self::Queued,
            "assigned" => Self::Assigned,
            "running" => Self::Running,
            "succeeded" => Self::Succeeded,
            "failed" => Self::Failed,
            "canceled" => Self::Canceled,
            _ => return None,
        })
    }

    /// Succeeded, failed or canceled.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Canceled)
    }
}

/// Validated generation parameters, defaults applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    /// Image or video.
    pub kind: Kind,
    /// Trimmed prompt.
    pub prompt: String,
    /// Trimmed negative prompt.
    pub negative_prompt: String,
    /// Pixels, multiple of 8.
    pub width: u32,
    /// Pixels, multiple of 8.
    pub height: u32,
    /// Sampling steps.
    pub steps: u32,
    /// Items in the batch.
    pub batch_size: u32,
    /// Frames per clip (0 for images).
    pub frames: u32,
    /// Frames per second (0 for images).
    pub fps: u32,
    /// Seed, at most `i64::MAX` (stored as bigint).
    pub seed: u64,
    /// Guidance scale.
    pub cfg_scale: f32,
    /// Sampler name.
    pub sampler: String,
    /// Backend name.
    pub backend: String,
    /// Model name.
    pub model: String,
}

impl Spec {
    /// sha256 of every parameter that shapes the output: equal hashes, equal bytes.
    pub fn hash(&self) -> String {
        use sha2::{Digest as _, Sha256};
        let canonical = format!(
            "{}\u{1f}{}\u{1f}{}\u{1f}{}x{}\u{1f}{}\u{1f}{}\u{1f}{}@{}\u{1f}{}\u{1f}{}\u{1f}{}\u{1f}{}\u{1f}{}",
            self.kind.as_str(),
            self.prompt,
            self.negative_prompt,
            self.width,
            self.height,
            self.steps,
            self.batch_size,
            self.frames,
            self.fps,
            self.seed,
            self.cfg_scale,
            self.sampler,
            self.backend,
            self.model
        );
        hex::encode(Sha256::digest(canonical.as_bytes()))
    }
}

/// A job to insert.
#[derive(Debug, Clone)]
pub struct NewJob {
    /// Id (UUID v7: time-ordered).
    pub id: Uuid,
    /// Owner principal.
    pub owner_id: String,
    /// Parameters.
    pub spec: Spec,
    /// Prompt sent to the backend.
    pub composed_prompt: String,
    /// Negative prompt sent to the backend (with the characters' negative fragments).
    pub composed_negative: String,
    /// Project, if any.
    pub project_id: Option<Uuid>,
    /// Characters whose fragments were composed in.
    pub character_ids: Vec<Uuid>,
    /// W3C trace context of the submit.
    pub trace_context: std::collections::HashMap<String, String>,
    /// Higher first.
    pub priority: i32,
    /// Optional idempotency key.
    pub idempotency_key: Option<String>,
    /// Attempts allowed.
    pub max_attempts: u32,
    /// A webhook endpoint of the owner that also receives this job's events.
    pub webhook_endpoint_id: Option<Uuid>,
}

/// A job row.
#[derive(Debug, Clone)]
pub struct Job {
    /// Id.
    pub id: Uuid,
    /// Owner principal.
    pub owner_id: String,
    /// Project.
    pub project_id: Option<Uuid>,
    /// Parameters.
    pub spec: Spec,
    /// Prompt sent to the backend.
    pub composed_prompt: String,
    /// Negative prompt sent to the backend.
    pub composed_negative: String,
    /// Characters composed in.
    pub character_ids: Vec<Uuid>,
    /// W3C trace context of the submit (empty when tracing is off).
    pub trace_context: std::collections::HashMap<String, String>,
    /// State.
    pub status: Status,
    /// Higher first.
    pub priority: i32,
    /// Attempts started.
    pub attempts: u32,
    /// Attempts allowed.
    pub max_attempts: u32,
    /// Lease of the current attempt.
    pub lease_token: Option<Uuid>,
    /// Worker of the current attempt.
    pub worker_id: Option<String>,
    /// Steps done.
    pub progress_step: u32,
    /// Steps in all.
    pub progress_total: u32,
    /// Stage label.
    pub progress_stage: String,
    /// Batch item.
    pub progress_item: u32,
    /// Last error.
    pub error: String,
    /// Stored files.
    pub file_ids: Vec<Uuid>,
    /// Submitted.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// Current attempt started.
    pub started_at: Option<DateTime<Utc>>,
    /// Finished.
    pub finished_at: Option<DateTime<Utc>>,
    /// A webhook endpoint of the owner that also receives this job's events.
    pub webhook_endpoint_id: Option<Uuid>,
}

impl Job {
    /// Where the current attempt is.
    pub fn progress(&self) -> Progress {
        Progress {
            step: self.progress_step,
            total_steps: self.progress_total,
            stage: self.progress_stage.clone(),
            item: self.progress_item,
        }
    }
}

/// Where a running job is, as its worker reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    /// Steps done.
    pub step: u32,
    /// Steps in all.
    pub total_steps: u32,
    /// Stage label.
    pub stage: String,
    /// Batch item.
    pub item: u32,
}

/// What happened to a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    /// The job reached a new state.
    StatusChanged {
        /// The new state.
        status: Status,
        /// The error, for failed attempts.
        error: String,
        /// Stored files, once succeeded.
        file_ids: Vec<Uuid>,
    },
    /// The worker made progress.
    Progress(Progress),
    /// The worker sent a preview image.
    Preview {
        /// PNG bytes.
        png: Vec<u8>,
        /// Step it shows.
        step: u32,
        /// Batch item it shows.
        item: u32,
    },
}

/// An event of one job, as watchers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobEvent {
    /// The job.
    pub job_id: Uuid,
    /// When it happened.
    pub time: DateTime<Utc>,
    /// What happened.
    pub kind: EventKind,
}

impl JobEvent {
    /// `kind` happening to `job_id` now.
    pub fn now(job_id: Uuid, kind: EventKind) -> Self {
        Self { job_id, time: Utc::now(), kind }
    }

    /// The job's current state, as a status change.
    pub fn status_changed(job: &Job) -> Self {
        Self::now(
            job.id,
            EventKind::StatusChanged {
                status: job.status,
                error: job.error.clone(),
                file_ids: job.file_ids.clone(),
            },
        )
    }
}
