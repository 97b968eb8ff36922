//! The `builtin` backend: the deterministic CPU renderer of `sakuga-imaging`, run on the
//! blocking pool, reporting every step and stopping between steps when canceled.

use std::ops::ControlFlow;

use futures_util::future::BoxFuture;
use sakuga_imaging::{Artifact, RenderError, RenderRequest, render};
use tokio_util::sync::CancellationToken;

use crate::backend::{Backend, BackendError, GenerationSpec, JobInput, Kind, Sink, WarmUpError};

/// The built-in renderer as a backend.
#[derive(Debug)]
pub struct Builtin {
    slots: u32,
    preview_every: u32,
}

impl Builtin {
    /// A backend running `slots` renders at once, with a preview every `preview_every`
    /// steps (0: none).
    pub fn new(slots: u32, preview_every: u32) -> Self {
        Self { slots, preview_every }
    }
}

/// The only model the built-in renderer has.
pub const MODEL: &str = "builtin-v1";

impl Backend for Builtin {
    fn name(&self) -> &'static str {
        "builtin"
    }

    fn slots(&self) -> u32 {
        self.slots
    }

    fn loaded_models(&self) -> Vec<String> {
        vec![MODEL.to_owned()]
    }

    /// One tiny render, so code and allocator are warm before the first job.
    fn warm_up(&self, cancel: CancellationToken) -> BoxFuture<'_, Result<(), WarmUpError>> {
        Box::pin(async move {
            let spec = GenerationSpec {
                kind: Kind::Image,
                width: 64,
                height: 64,
                steps: 1,
                model: MODEL.into(),
                ..GenerationSpec::default()
            };
            generate(request(&spec, "warm-up"), 0, 0, cancel, |_, _| {})
                .await
                .map(|_| ())
                .map_err(|source| WarmUpError::TrialRun { what: "builtin warm-up render", source })
        })
    }

    /// Renders every batch item in turn; progress counts steps over the whole batch.
    fn run(
        &self,
        job: JobInput,
        sink: Sink,
        cancel: CancellationToken,
    ) -> BoxFuture<'_, Result<Vec<Artifact>, BackendError>> {
        Box::pin(async move {
            let req = request(&job.spec, &job.prompt);
            let per_item = req.total_steps();
            let batch = job.batch();
            let total = per_item * batch;
            let mut artifacts = Vec::with_capacity(batch as usize);
            for index in 0..batch {
                let sink = sink.clone();
                let artifact =
                    generate(req.clone(), index, self.preview_every, cancel.clone(), move |s, preview| {
                        let step = index * per_item + s.step;
                        sink.step(step, total, index, "generating");
                        if let Some(png) = preview {
                            sink.preview(png, step, index);
                        }
                    })
                    .await?;
                artifacts.push(artifact);
            }
            Ok(artifacts)
        })
    }
}

/// One step of progress within an item.
#[derive(Debug, Clone, Copy)]
pub struct Step {
    /// Steps done in this item.
    pub step: u32,
    /// Steps in this item.
    pub total: u32,
}

/// Builds the renderer's request from a job's spec.
pub fn request(spec: &GenerationSpec, prompt: &str) -> RenderRequest {
    RenderRequest {
        prompt: prompt.to_owned(),
        negative_prompt: spec.negative_prompt.clone(),
        seed: spec.seed.unwrap_or(0),
        width: spec.width,
        height: spec.height,
        steps: spec.steps,
        kind: match spec.kind {
            Kind::Image => sakuga_imaging::Kind::Image,
            Kind::Video => sakuga_imaging::Kind::Video,
        },
        frames: spec.frames,
        fps: spec.fps,
        model: spec.model.clone(),
    }
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
        Ok(Err(RenderError::InvalidRequest(why))) => {
            Err(BackendError::Permanent(format!("invalid request: {why}")))
        }
        Ok(Err(e)) => Err(BackendError::Retryable(e.to_string())),
        Err(e) => Err(BackendError::Retryable(format!("render task failed: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    };

    use super::*;

    fn spec() -> GenerationSpec {
        GenerationSpec {
            kind: Kind::Image,
            width: 128,
            height: 128,
            steps: 50,
            seed: Some(1),
            model: "builtin-v1".into(),
            ..GenerationSpec::default()
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
