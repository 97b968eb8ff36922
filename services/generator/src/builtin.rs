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

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    };

    use super::*;

    fn spec() -> JobSpec {
        JobSpec {
            kind: JobKind::Image.into(),
            prompt: "a long render".into(),
            width: 128,
            height: 128,
            steps: 50,
            seed: Some(1),
            model: "builtin-v1".into(),
            ..JobSpec::default()
        }
    }

    #[tokio::test]
    async fn a_canceled_render_stops_between_steps() {
        let cancel = CancellationToken::new();
        let steps = Arc::new(AtomicU32::new(0));
        let (seen, token) = (steps.clone(), cancel.clone());
        let result = generate(request(&spec(), "a long render"), 0, 0, cancel, move |s, _| {
            seen.store(s.step, Ordering::SeqCst);
            if s.step == 3 {
                token.cancel();
            }
        })
        .await;
        assert!(matches!(result, Err(BackendError::Canceled)), "{result:?}");
        assert_eq!(steps.load(Ordering::SeqCst), 3, "no step after the cancel");
    }

    #[tokio::test]
    async fn every_step_is_reported_with_previews_when_asked() {
        let steps = Arc::new(AtomicU32::new(0));
        let previews = Arc::new(AtomicU32::new(0));
        let (s2, p2) = (steps.clone(), previews.clone());
        let artifact =
            generate(request(&spec(), "a long render"), 0, 10, CancellationToken::new(), move |s, p| {
                s2.fetch_add(1, Ordering::SeqCst);
                if p.is_some() {
                    p2.fetch_add(1, Ordering::SeqCst);
                }
                assert!(s.step <= s.total);
            })
            .await
            .unwrap();
        assert_eq!(steps.load(Ordering::SeqCst), 50);
        assert_eq!(previews.load(Ordering::SeqCst), 4, "steps 10, 20, 30, 40 (none at the last)");
        assert_eq!((artifact.width, artifact.height, artifact.mime), (128, 128, "image/png"));
    }
}
