//! The `builtin` backend: the deterministic CPU renderer of `sakuga-imaging`, run on the
//! blocking pool, reporting every step and stopping between steps when canceled.

use std::ops::ControlFlow;

use sakuga_imaging::{Artifact, Kind, RenderError, RenderRequest, render};
use sakuga_proto::v1::{JobKind, JobSpec};
use tokio_util::sync::CancellationToken;

/// Why a render did not produce an artifact.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The job was canceled.
    #[error("canceled")]
    Canceled,
    /// The parameters cannot be rendered; retrying will not help.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// Something that may work on another attempt.
    #[error("{0}")]
    Transient(String),
}

/// One step of progress within an item.
#[derive(Debug, Clone, Copy)]
pub struct Step {
    /// Steps done in this item.
    pub step: u32,
    /// Steps in this item.
    pub total: u32,
}

/// Builds the renderer's request from an assignment's spec.
pub fn request(spec: &JobSpec, prompt: &str) -> RenderRequest {
    RenderRequest {
        prompt: prompt.to_owned(),
        negative_prompt: spec.negative_prompt.clone(),
        seed: spec.seed.unwrap_or(0),
        width: spec.width,
        height: spec.height,
        steps: spec.steps,
        kind: if spec.kind == i32::from(JobKind::Video) { Kind::Video } else { Kind::Image },
        frames: spec.frames,
        fps: spec.fps,
        model: spec.model.clone(),
    }
}

/// Steps one item takes.
pub fn steps_per_item(req: &RenderRequest) -> u32 {
    req.total_steps()
}

/// Renders batch item `index` on the blocking pool. `on_step` gets each step and, every
/// `preview_every` steps, a preview PNG.
pub async fn generate(
    req: RenderRequest,
    index: u32,
    preview_every: u32,
    cancel: CancellationToken,
    mut on_step: impl FnMut(Step, Option<Vec<u8>>) + Send + 'static,
) -> Result<Artifact, BackendError> {
    let task = tokio::task::spawn_blocking(move || {
        render(&req, index, &mut |p| {
            if cancel.is_cancelled() {
                return ControlFlow::Break(());
            }
            let preview = (preview_every > 0 && p.step % preview_every == 0 && p.step < p.total)
                .then(|| p.preview().ok().map(|pv| pv.png))
                .flatten();
            on_step(Step { step: p.step, total: p.total }, preview);
            ControlFlow::Continue(())
        })
    });
    match task.await {
        Ok(Ok(artifact)) => Ok(artifact),
        Ok(Err(RenderError::Canceled)) => Err(BackendError::Canceled),
        Ok(Err(RenderError::InvalidRequest(why))) => Err(BackendError::Invalid(why)),
        Ok(Err(e)) => Err(BackendError::Transient(e.to_string())),
        Err(e) => Err(BackendError::Transient(format!("render task failed: {e}"))),
    }
}
