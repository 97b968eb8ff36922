//! The wire's job as the backends' domain job, and the worker's updates as the wire's
//! messages: with `api/`, the one place that knows the proto types.

use sakuga_proto::v1::{
    Assignment, AssignmentAck, JobCanceledAck, JobCompleted, JobFailed, JobKind, JobProgress, JobSpec,
    JobWithdrawn, LeasedJob, PreviewUpdate, ProgressUpdate, attach_request::Msg,
};

use crate::{
    backend::{BackendError, GenerationSpec, JobInput, Kind},
    worker::{self, Lease, Update},
};

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

impl From<Lease> for LeasedJob {
    fn from(lease: Lease) -> Self {
        Self { job_id: lease.job_id, lease_token: lease.token }
    }
}

/// An assignment as the worker runs it; one without a spec fails when its job starts.
impl From<Assignment> for worker::Assignment {
    fn from(a: Assignment) -> Self {
        let input = job_input(&a);
        Self {
            lease: Lease { job_id: a.job_id, token: a.lease_token },
            attempt: a.attempt,
            owner_id: a.owner_id,
            project_id: a.project_id,
            trace_context: a.trace_context,
            input,
        }
    }
}

impl From<Update> for Msg {
    fn from(u: Update) -> Self {
        match u {
            Update::Ack { lease, waiting } => Self::Ack(AssignmentAck { job: Some(lease.into()), waiting }),
            Update::Progress { lease, step, total, stage, item } => Self::Progress(ProgressUpdate {
                job: Some(lease.into()),
                progress: Some(JobProgress { step, total_steps: total, stage, item }),
            }),
            Update::Preview { lease, png, step, item } => {
                Self::Preview(PreviewUpdate { job: Some(lease.into()), png, step, item })
            }
            Update::Completed { lease, file_ids } => {
                Self::Completed(JobCompleted { job: Some(lease.into()), file_ids })
            }
            Update::Failed { lease, error, retryable, platform } => {
                Self::Failed(JobFailed { job: Some(lease.into()), error, retryable, platform })
            }
            Update::Canceled(lease) => Self::Canceled(JobCanceledAck { job: Some(lease.into()) }),
            Update::Withdrawn(lease) => Self::Withdrawn(JobWithdrawn { job: Some(lease.into()) }),
        }
    }
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
