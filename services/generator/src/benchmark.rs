//! The `benchmark` backend: returns a small generated image at once, so load tests measure
//! the mesh (queue, streams, uploads, storage) and not a renderer. It is never the default:
//! a worker runs it only when its configuration says `backend = "benchmark"`, and only jobs
//! submitted with `backend: "benchmark"` reach it.
//!
//! `benchmark.hold` keeps each job that long before answering without using the CPU, the
//! way a job waits on an accelerator; it lets a benchmark show what several slots on one
//! worker buy when the work is not on this machine's cores.

use std::time::Duration;

use futures_util::future::BoxFuture;
use sakuga_imaging::{Artifact, encode_rgb_png, render::MIME_PNG};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::backend::{Backend, BackendError, JobInput, Kind, Sink, WarmUpError};

/// The model the benchmark backend reports.
pub const MODEL: &str = "benchmark";

/// `[benchmark]` settings of the generator.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct BenchmarkConfig {
    /// Time each job is held before its image is returned, without using the CPU.
    #[serde(with = "humantime_serde")]
    pub hold: Duration,
}

/// The benchmark backend.
#[derive(Debug)]
pub struct Benchmark {
    slots: u32,
    hold: Duration,
}

impl Benchmark {
    /// A backend running `slots` jobs at once.
    pub fn new(slots: u32, config: &BenchmarkConfig) -> Self {
        Self { slots, hold: config.hold }
    }
}

/// A diagonal gradient of the requested size, varied by the batch item and seed so that it is
/// not blank and items differ.
pub fn image(width: u32, height: u32, item: u32, seed: u64) -> Result<Artifact, BackendError> {
    let mut rgb = Vec::with_capacity((width as usize) * (height as usize) * 3);
    let shift = u32::from(seed.to_le_bytes()[0]).wrapping_add(item.wrapping_mul(47));
    for y in 0..height {
        for x in 0..width {
            let v = (x.wrapping_mul(255) / width.max(1)) ^ (y.wrapping_mul(255) / height.max(1));
            rgb.extend_from_slice(&[
                v.wrapping_add(shift).to_le_bytes()[0],
                x.to_le_bytes()[0],
                y.wrapping_add(shift >> 8).to_le_bytes()[0],
            ]);
        }
    }
    let bytes = encode_rgb_png(width, height, &rgb)
        .map_err(|e| BackendError::Retryable(format!("png encode: {e}")))?;
    Ok(Artifact { bytes, mime: MIME_PNG, width, height, frames: 1 })
}

impl Backend for Benchmark {
    fn name(&self) -> &'static str {
        "benchmark"
    }

    fn slots(&self) -> u32 {
        self.slots
    }

    fn loaded_models(&self) -> Vec<String> {
        vec![MODEL.to_owned()]
    }

    fn warm_up(&self, _cancel: CancellationToken) -> BoxFuture<'_, Result<(), WarmUpError>> {
        Box::pin(async {
            image(8, 8, 0, 0)
                .map(|_| ())
                .map_err(|source| WarmUpError::TrialRun { what: "benchmark warm-up", source })
        })
    }

    fn run(
        &self,
        job: JobInput,
        sink: Sink,
        cancel: CancellationToken,
    ) -> BoxFuture<'_, Result<Vec<Artifact>, BackendError>> {
        Box::pin(async move {
            if job.kind() != Kind::Image {
                return Err(BackendError::Permanent(
                    "spec.kind: the benchmark backend makes images only".to_owned(),
                ));
            }
            if !self.hold.is_zero() {
                tokio::select! {
                    () = cancel.cancelled() => return Err(BackendError::Canceled),
                    () = tokio::time::sleep(self.hold) => {}
                }
            }
            let batch = job.batch();
            let seed = job.spec.seed.unwrap_or(0);
            let mut artifacts = Vec::with_capacity(batch as usize);
            for item in 0..batch {
                if cancel.is_cancelled() {
                    return Err(BackendError::Canceled);
                }
                artifacts.push(image(job.spec.width, job.spec.height, item, seed)?);
                sink.step(item + 1, batch, item, "generating");
            }
            Ok(artifacts)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::GenerationSpec;
    use sakuga_imaging::{Limits, inspect_png};

    fn job(kind: Kind, batch: u32) -> JobInput {
        JobInput {
            job_id: "j".into(),
            attempt: 1,
            spec: GenerationSpec {
                kind,
                width: 64,
                height: 48,
                batch_size: batch,
                seed: Some(7),
                ..GenerationSpec::default()
            },
            prompt: "p".into(),
        }
    }

    #[tokio::test]
    async fn returns_one_non_blank_image_of_the_asked_size_per_item() {
        let backend = Benchmark::new(2, &BenchmarkConfig::default());
        let out = backend.run(job(Kind::Image, 2), Sink::discard(), CancellationToken::new()).await.unwrap();
        assert_eq!(out.len(), 2);
        for a in &out {
            let found = inspect_png(&a.bytes, Limits::default()).unwrap();
            assert_eq!((found.width, found.height, found.frames), (64, 48, 1));
            assert!(!found.is_blank(2.0), "stddev {}", found.luma_stddev);
        }
        assert_ne!(out[0].bytes, out[1].bytes, "batch items differ");
    }

    #[tokio::test]
    async fn refuses_video_and_stops_when_canceled_while_held() {
        let backend = Benchmark::new(1, &BenchmarkConfig { hold: Duration::from_mins(1) });
        let err = backend.run(job(Kind::Video, 1), Sink::discard(), CancellationToken::new()).await;
        assert!(matches!(err, Err(BackendError::Permanent(ref m)) if m.contains("spec.kind")), "{err:?}");
        let cancel = CancellationToken::new();
        cancel.cancel();
        let err = backend.run(job(Kind::Image, 1), Sink::discard(), cancel).await;
        assert!(matches!(err, Err(BackendError::Canceled)), "{err:?}");
    }
}
