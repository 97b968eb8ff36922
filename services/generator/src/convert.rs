//! The wire's job as the backends' domain job, and back where the wire needs it: the one
//! place, besides the worker session and the upload, that knows the proto types.

use sakuga_proto::v1::{Assignment, JobKind, JobSpec};

use crate::backend::{BackendError, GenerationSpec, JobInput, Kind};

/// Anything but video is an image: the scheduler refuses a job without a kind at submit,
/// so an assignment always names one.
impl From<JobKind> for Kind {
    fn from(kind: JobKind) -> Self {
        match kind {
            JobKind::Video => Self::Video,
            JobKind::Image | JobKind::Unspecified => Self::Image,
        }
    }
}

impl From<Kind> for JobKind {
    fn from(kind: Kind) -> Self {
        match kind {
            Kind::Image => Self::Image,
            Kind::Video => Self::Video,
        }
    }
}

/// The parameters a backend uses; the prompt travels apart (composed by the scheduler)
/// and the backend name has already chosen this worker.
impl From<JobSpec> for GenerationSpec {
    fn from(spec: JobSpec) -> Self {
        Self {
            kind: JobKind::try_from(spec.kind).unwrap_or(JobKind::Image).into(),
            negative_prompt: spec.negative_prompt,
            width: spec.width,
            height: spec.height,
            steps: spec.steps,
            batch_size: spec.batch_size,
            frames: spec.frames,
            fps: spec.fps,
            seed: spec.seed,
            cfg_scale: spec.cfg_scale,
            sampler: spec.sampler,
            model: spec.model,
        }
    }
}

/// The job an assignment carries, as its backend runs it.
pub(crate) fn job_input(a: &Assignment) -> Result<JobInput, BackendError> {
    let spec = a.spec.clone().ok_or_else(|| BackendError::Permanent("assignment without spec".to_owned()))?;
    Ok(JobInput {
        job_id: a.job_id.clone(),
        attempt: a.attempt,
        spec: spec.into(),
        prompt: a.composed_prompt.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_parameter_a_backend_uses_crosses_over() {
        let spec = JobSpec {
            kind: JobKind::Video.into(),
            prompt: "raw".into(),
            negative_prompt: "blurry".into(),
            width: 64,
            height: 72,
            steps: 9,
            batch_size: 2,
            frames: 12,
            fps: 6,
            seed: Some(5),
            cfg_scale: 4.5,
            sampler: "ddim".into(),
            backend: "comfyui".into(),
            model: "m".into(),
        };
        let a = Assignment {
            job_id: "j".into(),
            attempt: 3,
            spec: Some(spec),
            composed_prompt: "composed".into(),
            ..Assignment::default()
        };
        let input = job_input(&a).unwrap();
        assert_eq!((input.job_id.as_str(), input.attempt, input.prompt.as_str()), ("j", 3, "composed"));
        assert_eq!(
            input.spec,
            GenerationSpec {
                kind: Kind::Video,
                negative_prompt: "blurry".into(),
                width: 64,
                height: 72,
                steps: 9,
                batch_size: 2,
                frames: 12,
                fps: 6,
                seed: Some(5),
                cfg_scale: 4.5,
                sampler: "ddim".into(),
                model: "m".into(),
            }
        );
        let missing = job_input(&Assignment::default());
        assert!(matches!(missing, Err(BackendError::Permanent(_))), "{missing:?}");
    }

    #[test]
    fn kinds_round_trip_and_an_unknown_kind_is_an_image() {
        for kind in [Kind::Image, Kind::Video] {
            assert_eq!(Kind::from(JobKind::from(kind)), kind);
        }
        assert_eq!(GenerationSpec::from(JobSpec { kind: 99, ..JobSpec::default() }).kind, Kind::Image);
    }
}
