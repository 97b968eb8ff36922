//! The wire and the domain: every conversion between `sakuga_proto` messages and the
//! scheduler's own types lives here. Only this module and `api` import the proto crate; the
//! domain modules (dispatch, worker sessions, events, the store) speak in `job`, `worker`
//! and `registry` types.

use std::time::Duration;

use chrono::Utc;
use prost::Message as _;
use sakuga_mesh::api::{from_timestamp, timestamp};
use sakuga_proto::v1::{
    self as pb, Assignment, AttachResponse, LeaseRevoked, LeasedJob, Welcome, attach_request,
    attach_response, job_event,
};
use uuid::Uuid;

use crate::{
    error::SchedulerError,
    events::{Codec, DecodeError as EventDecodeError},
    job::{EventKind, Job, JobEvent, Kind, Progress, Status},
    projects::{Character, Project},
    registry::WorkerCommand,
    validate::RawSpec,
    webhook::{Delivery, DeliveryState, Endpoint, message_id},
    worker::{Attached, Hello, WorkerMessage},
};

/// prost Duration from std.
pub(crate) fn duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

/// A UUID from a request field, INVALID_ARGUMENT naming `field` otherwise.
pub(crate) use crate::validate::uuid_field as parse_id;

fn status(s: Status) -> pb::JobStatus {
    match s {
        Status::Queued => pb::JobStatus::Queued,
        Status::Assigned => pb::JobStatus::Assigned,
        Status::Running => pb::JobStatus::Running,
        Status::Succeeded => pb::JobStatus::Succeeded,
        Status::Failed => pb::JobStatus::Failed,
        Status::Canceled => pb::JobStatus::Canceled,
    }
}

/// A job state from the wire; `None` for unspecified or unknown values.
pub(crate) fn status_from(s: i32) -> Option<Status> {
    Some(match pb::JobStatus::try_from(s).ok()? {
        pb::JobStatus::Unspecified => return None,
        pb::JobStatus::Queued => Status::Queued,
        pb::JobStatus::Assigned => Status::Assigned,
        pb::JobStatus::Running => Status::Running,
        pb::JobStatus::Succeeded => Status::Succeeded,
        pb::JobStatus::Failed => Status::Failed,
        pb::JobStatus::Canceled => Status::Canceled,
    })
}

fn spec(job: &Job) -> pb::JobSpec {
    let s = &job.spec;
    pb::JobSpec {
        kind: match s.kind {
            Kind::Image => pb::JobKind::Image,
            Kind::Video => pb::JobKind::Video,
        }
        .into(),
        prompt: s.prompt.clone(),
        negative_prompt: s.negative_prompt.clone(),
        width: s.width,
        height: s.height,
        steps: s.steps,
        batch_size: s.batch_size,
        frames: s.frames,
        fps: s.fps,
        seed: Some(s.seed),
        cfg_scale: s.cfg_scale,
        sampler: s.sampler.clone(),
        backend: s.backend.clone(),
        model: s.model.clone(),
    }
}

/// The unvalidated spec of a SubmitJob request.
pub(crate) fn raw_spec(spec: pb::JobSpec) -> RawSpec {
    RawSpec {
        kind: spec.kind,
        prompt: spec.prompt,
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
        backend: spec.backend,
        model: spec.model,
    }
}

fn progress(p: &Progress) -> pb::JobProgress {
    pb::JobProgress { step: p.step, total_steps: p.total_steps, stage: p.stage.clone(), item: p.item }
}

fn progress_from(p: pb::JobProgress) -> Progress {
    Progress { step: p.step, total_steps: p.total_steps, stage: p.stage, item: p.item }
}

fn ids(ids: &[Uuid]) -> Vec<String> {
    ids.iter().map(Uuid::to_string).collect()
}

/// The API view of a job.
pub(crate) fn job(job: &Job) -> pb::Job {
    pb::Job {
        id: job.id.to_string(),
        owner_id: job.owner_id.clone(),
        project_id: job.project_id.map(|p| p.to_string()).unwrap_or_default(),
        spec: Some(spec(job)),
        composed_prompt: job.composed_prompt.clone(),
        status: status(job.status).into(),
        priority: job.priority,
        attempts: job.attempts,
        max_attempts: job.max_attempts,
        progress: Some(progress(&job.progress())),
        error: job.error.clone(),
        file_ids: ids(&job.file_ids),
        worker_id: job.worker_id.clone().unwrap_or_default(),
        create_time: Some(timestamp(job.created_at)),
        update_time: Some(timestamp(job.updated_at)),
        start_time: job.started_at.map(timestamp),
        finish_time: job.finished_at.map(timestamp),
        character_ids: ids(&job.character_ids),
        webhook_id: job.webhook_endpoint_id.map(|w| w.to_string()).unwrap_or_default(),
    }
}

/// `sakuga.v1.Job`, to write jobs in the protobuf JSON mapping.
static JOB_DESCRIPTOR: std::sync::LazyLock<prost_reflect::MessageDescriptor> =
    std::sync::LazyLock::new(|| {
        prost_reflect::DescriptorPool::decode(sakuga_proto::FILE_DESCRIPTOR_SET)
            .ok()
            .and_then(|pool| pool.get_message_by_name("sakuga.v1.Job"))
            .expect("the compiled-in descriptor set describes sakuga.v1.Job")
    });

/// The webhook payload of `event` (Standard Webhooks' `type`, `timestamp`, `data`): the
/// job as GetJob shows it, in the protobuf JSON mapping (as grpcurl prints it), every field
/// present, so receivers see one stable shape.
pub(crate) const WEBHOOK_BODY: crate::webhooks::Render = webhook_body;

fn webhook_body(event: &str, j: &Job, at: chrono::DateTime<Utc>) -> Vec<u8> {
    let options = prost_reflect::SerializeOptions::new().skip_default_fields(false);
    let job_json =
        prost_reflect::DynamicMessage::decode(JOB_DESCRIPTOR.clone(), job(j).encode_to_vec().as_slice())
            .ok()
            .and_then(|m| m.serialize_with_options(serde_json::value::Serializer, &options).ok())
            .unwrap_or_default();
    let payload = serde_json::json!({
        "type": event,
        "timestamp": at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        "data": { "job": job_json },
    });
    serde_json::to_vec(&payload).unwrap_or_default()
}

/// The first event of a watch: the whole job as it is now.
pub(crate) fn snapshot(j: &Job) -> pb::JobEvent {
    pb::JobEvent {
        job_id: j.id.to_string(),
        time: Some(timestamp(Utc::now())),
        kind: Some(job_event::Kind::Snapshot(job(j))),
    }
}

/// A job event on the wire.
pub(crate) fn event(e: &JobEvent) -> pb::JobEvent {
    let kind = match &e.kind {
        EventKind::StatusChanged { status: s, error, file_ids } => {
            job_event::Kind::StatusChange(pb::JobStatusChange {
                status: status(*s).into(),
                error: error.clone(),
                file_ids: ids(file_ids),
            })
        }
        EventKind::Progress(p) => job_event::Kind::Progress(progress(p)),
        EventKind::Preview { png, step, item } => {
            job_event::Kind::Preview(pb::JobPreview { png: png.clone(), step: *step, item: *item })
        }
    };
    pb::JobEvent { job_id: e.job_id.to_string(), time: Some(timestamp(e.time)), kind: Some(kind) }
}

/// Events between replicas travel as the wire's `JobEvent`.
pub(crate) const EVENT_CODEC: Codec = Codec { encode: encode_event, decode: decode_event };

/// A job event as published between replicas.
pub(crate) fn encode_event(e: &JobEvent) -> Vec<u8> {
    event(e).encode_to_vec()
}

/// A job event published by a replica (see [`encode_event`]).
pub(crate) fn decode_event(payload: &[u8]) -> Result<JobEvent, EventDecodeError> {
    let e = pb::JobEvent::decode(payload).map_err(|e| EventDecodeError::Wire(Box::new(e)))?;
    let job_id = Uuid::parse_str(&e.job_id).map_err(|_| EventDecodeError::Content("job_id: not a UUID"))?;
    let time = from_timestamp("time", e.time)
        .map_err(|_| EventDecodeError::Content("time: out of range"))?
        .unwrap_or_else(Utc::now);
    let kind = match e.kind {
        Some(job_event::Kind::StatusChange(sc)) => EventKind::StatusChanged {
            status: status_from(sc.status).ok_or(EventDecodeError::Content("status: unknown"))?,
            error: sc.error,
            file_ids: sc
                .file_ids
                .iter()
                .map(|f| Uuid::parse_str(f))
                .collect::<Result<_, _>>()
                .map_err(|_| EventDecodeError::Content("file_ids: not a UUID"))?,
        },
        Some(job_event::Kind::Progress(p)) => EventKind::Progress(progress_from(p)),
        Some(job_event::Kind::Preview(p)) => EventKind::Preview { png: p.png, step: p.step, item: p.item },
        Some(job_event::Kind::Snapshot(_)) | None => {
            return Err(EventDecodeError::Content("neither status, progress nor preview"));
        }
    };
    Ok(JobEvent { job_id, time, kind })
}

/// A command to a worker on the wire.
pub(crate) fn command(c: WorkerCommand) -> AttachResponse {
    let msg = match c {
        WorkerCommand::Assign { job, lease, trace_context } => attach_response::Msg::Assignment(Assignment {
            job_id: job.id.to_string(),
            lease_token: lease.to_string(),
            // The backend renders the composed prompts (characters' fragments included).
            spec: Some(pb::JobSpec { negative_prompt: job.composed_negative.clone(), ..spec(&job) }),
            composed_prompt: job.composed_prompt.clone(),
            owner_id: job.owner_id.clone(),
            project_id: job.project_id.map(|p| p.to_string()).unwrap_or_default(),
            attempt: job.attempts,
            trace_context,
        }),
        WorkerCommand::Cancel { job_id } => {
            attach_response::Msg::Cancel(pb::CancelJobCommand { job_id: job_id.to_string() })
        }
        WorkerCommand::Withdraw { job_id } => {
            attach_response::Msg::Withdraw(pb::WithdrawCommand { job_id: job_id.to_string() })
        }
        WorkerCommand::Revoke { job_id, reason } => {
            attach_response::Msg::LeaseRevoked(LeaseRevoked { job_id: job_id.to_string(), reason })
        }
    };
    AttachResponse { msg: Some(msg) }
}

/// The first message of a session.
pub(crate) fn welcome(a: &Attached) -> AttachResponse {
    AttachResponse {
        msg: Some(attach_response::Msg::Welcome(Welcome {
            session_id: a.session.to_string(),
            heartbeat_interval: Some(duration(a.heartbeat_interval)),
            lease_ttl: Some(duration(a.lease_ttl)),
            kept_job_ids: ids(&a.kept),
            dropped_job_ids: ids(&a.dropped),
        })),
    }
}

/// A job and its lease token from a worker's message; the error names the bad field.
fn leased(job: Option<&LeasedJob>) -> Result<(Uuid, Uuid), &'static str> {
    let job = job.ok_or("job: required")?;
    let id = Uuid::parse_str(&job.job_id).map_err(|_| "job.job_id: not a UUID")?;
    let lease = Uuid::parse_str(&job.lease_token).map_err(|_| "job.lease_token: not a UUID")?;
    Ok((id, lease))
}

/// A worker's hello (its fields already checked), the re-announced leases parsed.
pub(crate) fn hello(h: pb::WorkerHello) -> Result<Hello, tonic::Status> {
    let running = h
        .running
        .iter()
        .map(|j| leased(Some(j)))
        .collect::<Result<_, _>>()
        .map_err(tonic::Status::invalid_argument)?;
    Ok(Hello {
        worker_id: h.worker_id,
        slots: h.slots,
        queue_slots: h.queue_slots,
        backends: h.backends,
        loaded_models: h.loaded_models,
        running,
    })
}

/// A message on an attached session, as the domain sees it.
pub(crate) fn worker_message(msg: attach_request::Msg) -> Result<WorkerMessage, SchedulerError> {
    use attach_request::Msg;
    let lease = |job: Option<&LeasedJob>| leased(job).map_err(|why| SchedulerError::invalid("msg", why));
    Ok(match msg {
        Msg::Hello(_) => return Err(SchedulerError::FailedPrecondition("hello was already sent".to_owned())),
        Msg::Ack(a) => WorkerMessage::Ack { lease: lease(a.job.as_ref())?, waiting: a.waiting },
        Msg::Heartbeat(hb) => WorkerMessage::Heartbeat {
            running: hb.running.iter().map(|j| lease(Some(j))).collect::<Result<_, _>>()?,
            loaded_models: hb.loaded_models,
        },
        Msg::Progress(p) => WorkerMessage::Progress {
            lease: lease(p.job.as_ref())?,
            progress: progress_from(p.progress.unwrap_or_default()),
        },
        Msg::Preview(p) => {
            WorkerMessage::Preview { lease: lease(p.job.as_ref())?, png: p.png, step: p.step, item: p.item }
        }
        Msg::Completed(c) => WorkerMessage::Completed {
            lease: lease(c.job.as_ref())?,
            file_ids: c
                .file_ids
                .iter()
                .map(|f| Uuid::parse_str(f))
                .collect::<Result<_, _>>()
                .map_err(|_| SchedulerError::invalid("completed.file_ids", "not a UUID"))?,
        },
        Msg::Failed(f) => WorkerMessage::Failed {
            lease: lease(f.job.as_ref())?,
            error: f.error,
            retryable: f.retryable,
            platform: f.platform,
        },
        Msg::Canceled(c) => WorkerMessage::Canceled { job_id: lease(c.job.as_ref())?.0 },
        Msg::Withdrawn(w) => WorkerMessage::Withdrawn { lease: lease(w.job.as_ref())? },
        Msg::Draining(d) => WorkerMessage::Draining { reason: d.reason },
    })
}

/// The API view of a project.
pub(crate) fn project(p: &Project) -> pb::Project {
    pb::Project {
        id: p.id.to_string(),
        owner_id: p.owner_id.clone(),
        name: p.name.clone(),
        slug: p.slug.clone(),
        description: p.description.clone(),
        archived: p.archived,
        retention_days: p.retention_days,
        create_time: Some(timestamp(p.created_at)),
    }
}

/// The API view of a character.
pub(crate) fn character(c: &Character) -> pb::Character {
    pb::Character {
        id: c.id.to_string(),
        project_id: c.project_id.to_string(),
        name: c.name.clone(),
        description: c.description.clone(),
        prompt_fragment: c.prompt_fragment.clone(),
        negative_fragment: c.negative_fragment.clone(),
    }
}

/// The API view of a webhook endpoint (never its secrets).
pub(crate) fn webhook(e: &Endpoint) -> pb::WebhookEndpoint {
    pb::WebhookEndpoint {
        id: e.id.to_string(),
        owner_id: e.owner_id.clone(),
        url: e.url.clone(),
        events: e.events.clone(),
        project_id: e.project_id.map(|p| p.to_string()).unwrap_or_default(),
        only_named_jobs: e.only_named_jobs,
        enabled: e.enabled,
        description: e.description.clone(),
        max_concurrency: e.max_concurrency,
        timeout_ms: e.timeout_ms,
        disabled_reason: e.disabled_reason.clone(),
        consecutive_failures: e.consecutive_failures,
        failing_since: e.failing_since.map(timestamp),
        previous_secret_expire_time: e.previous_secret_expires_at.filter(|t| *t > Utc::now()).map(timestamp),
        create_time: Some(timestamp(e.created_at)),
        update_time: Some(timestamp(e.updated_at)),
    }
}

/// The API view of a delivery state.
fn delivery_state(s: DeliveryState) -> pb::DeliveryState {
    match s {
        DeliveryState::Pending => pb::DeliveryState::Pending,
        DeliveryState::Delivered => pb::DeliveryState::Delivered,
        DeliveryState::Failed => pb::DeliveryState::Failed,
    }
}

/// A delivery state filter (`None`: any), naming the field when it is unknown.
pub(crate) fn delivery_state_from(s: i32) -> Result<Option<DeliveryState>, SchedulerError> {
    match pb::DeliveryState::try_from(s) {
        Ok(pb::DeliveryState::Unspecified) => Ok(None),
        Ok(pb::DeliveryState::Pending) => Ok(Some(DeliveryState::Pending)),
        Ok(pb::DeliveryState::Delivered) => Ok(Some(DeliveryState::Delivered)),
        Ok(pb::DeliveryState::Failed) => Ok(Some(DeliveryState::Failed)),
        Err(_) => Err(SchedulerError::invalid("state", format!("unknown delivery state {s}"))),
    }
}

/// The API view of a delivery.
pub(crate) fn delivery(d: &Delivery) -> pb::WebhookDelivery {
    pb::WebhookDelivery {
        id: d.id.to_string(),
        message_id: message_id(d.id),
        webhook_id: d.endpoint_id.to_string(),
        job_id: d.job_id.to_string(),
        event: d.event.clone(),
        state: delivery_state(d.state).into(),
        attempts: d.attempts,
        last_status_code: d.last_status_code,
        last_error: d.last_error.clone(),
        create_time: Some(timestamp(d.created_at)),
        next_attempt_time: d.next_attempt_at.map(timestamp),
        last_attempt_time: d.last_attempt_at.map(timestamp),
        deliver_time: d.delivered_at.map(timestamp),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_events_read_back_as_they_were_sent() {
        let job_id = Uuid::now_v7();
        let time = Utc::now();
        for kind in [
            EventKind::StatusChanged {
                status: Status::Succeeded,
                error: String::new(),
                file_ids: vec![Uuid::now_v7(), Uuid::now_v7()],
            },
            EventKind::Progress(Progress { step: 3, total_steps: 20, stage: "sampling".to_owned(), item: 1 }),
            EventKind::Preview { png: vec![0x89, b'P', b'N', b'G'], step: 5, item: 0 },
        ] {
            let sent = JobEvent { job_id, time, kind };
            assert_eq!(decode_event(&encode_event(&sent)).unwrap(), sent);
        }
    }

    #[test]
    fn events_no_replica_publishes_are_refused() {
        assert!(matches!(decode_event(b"\xff\xff"), Err(EventDecodeError::Wire(_))));
        let snapshot = pb::JobEvent { job_id: Uuid::now_v7().to_string(), time: None, kind: None };
        assert!(matches!(decode_event(&snapshot.encode_to_vec()), Err(EventDecodeError::Content(_))));
    }

    #[test]
    fn worker_messages_name_the_bad_field() {
        let ack = |job_id: &str| {
            attach_request::Msg::Ack(pb::AssignmentAck {
                job: Some(LeasedJob { job_id: job_id.to_owned(), lease_token: Uuid::now_v7().to_string() }),
                waiting: true,
            })
        };
        let err = worker_message(ack("nope")).unwrap_err();
        assert_eq!(err.to_string(), "msg: job.job_id: not a UUID");
        let id = Uuid::now_v7();
        assert!(
            matches!(worker_message(ack(&id.to_string())), Ok(WorkerMessage::Ack { lease: (j, _), waiting: true }) if j == id)
        );
    }
}
