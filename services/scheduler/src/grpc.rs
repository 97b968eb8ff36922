//! Proto <-> domain conversions and the gRPC services (JobService, WorkerService).

use std::{sync::Arc, time::Duration};

use chrono::Utc;
use sakuga_mesh::{
    api::{Page, from_timestamp, timestamp},
    auth as mesh_auth,
};
use sakuga_proto::v1::{
    self as pb, Assignment, AttachRequest, AttachResponse, attach_response, job_event,
    job_service_server::JobService, worker_service_server::WorkerService,
};
use tokio::sync::{Notify, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use uuid::Uuid;

use crate::{
    State,
    error::SchedulerError,
    job::{Job, Kind, NewJob, Status as JobStatus},
    store::ListFilter,
    validate::{self, RawSpec},
};

/// A watcher re-reads its job after this long without an event ...
const RESYNC_WHEN_QUIET: Duration = Duration::from_secs(1);
/// ... and at least this often.
const RESYNC_ALWAYS: Duration = Duration::from_secs(10);

/// prost Duration from std.
pub fn duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

fn pb_status(s: JobStatus) -> pb::JobStatus {
    match s {
        JobStatus::Queued => pb::JobStatus::Queued,
        JobStatus::Assigned => pb::JobStatus::Assigned,
        JobStatus::Running => pb::JobStatus::Running,
        JobStatus::Succeeded => pb::JobStatus::Succeeded,
        JobStatus::Failed => pb::JobStatus::Failed,
        JobStatus::Canceled => pb::JobStatus::Canceled,
    }
}

fn from_pb_status(s: i32) -> Option<JobStatus> {
    Some(match pb::JobStatus::try_from(s).ok()? {
        pb::JobStatus::Unspecified => return None,
        pb::JobStatus::Queued => JobStatus::Queued,
        pb::JobStatus::Assigned => JobStatus::Assigned,
        pb::JobStatus::Running => JobStatus::Running,
        pb::JobStatus::Succeeded => JobStatus::Succeeded,
        pb::JobStatus::Failed => JobStatus::Failed,
        pb::JobStatus::Canceled => JobStatus::Canceled,
    })
}

fn pb_spec(job: &Job) -> pb::JobSpec {
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

fn progress(job: &Job) -> pb::JobProgress {
    pb::JobProgress {
        step: job.progress_step,
        total_steps: job.progress_total,
        stage: job.progress_stage.clone(),
        item: job.progress_item,
    }
}

/// The API view of a job.
pub fn job_to_pb(job: &Job) -> pb::Job {
    pb::Job {
        id: job.id.to_string(),
        owner_id: job.owner_id.clone(),
        project_id: job.project_id.map(|p| p.to_string()).unwrap_or_default(),
        spec: Some(pb_spec(job)),
        composed_prompt: job.composed_prompt.clone(),
        status: pb_status(job.status).into(),
        priority: job.priority,
        attempts: job.attempts,
        max_attempts: job.max_attempts,
        progress: Some(progress(job)),
        error: job.error.clone(),
        file_ids: job.file_ids.iter().map(Uuid::to_string).collect(),
        worker_id: job.worker_id.clone().unwrap_or_default(),
        create_time: Some(timestamp(job.created_at)),
        update_time: Some(timestamp(job.updated_at)),
        start_time: job.started_at.map(timestamp),
        finish_time: job.finished_at.map(timestamp),
        character_ids: job.character_ids.iter().map(Uuid::to_string).collect(),
    }
}

fn event(job_id: Uuid, kind: job_event::Kind) -> pb::JobEvent {
    pb::JobEvent { job_id: job_id.to_string(), time: Some(timestamp(Utc::now())), kind: Some(kind) }
}

/// A status-change event for the job's current state.
pub fn status_event(job: &Job) -> pb::JobEvent {
    event(
        job.id,
        job_event::Kind::StatusChange(pb::JobStatusChange {
            status: pb_status(job.status).into(),
            error: job.error.clone(),
            file_ids: job.file_ids.iter().map(Uuid::to_string).collect(),
        }),
    )
}

/// A progress event.
pub fn progress_event(job_id: Uuid, p: pb::JobProgress) -> pb::JobEvent {
    event(job_id, job_event::Kind::Progress(p))
}

/// A preview event.
pub fn preview_event(job_id: Uuid, png: Vec<u8>, step: u32, item: u32) -> pb::JobEvent {
    event(job_id, job_event::Kind::Preview(pb::JobPreview { png, step, item }))
}

/// The assignment message for a claimed job.
#[allow(clippy::implicit_hasher)] // the map is the proto field itself
pub fn assignment(
    job: &Job,
    lease: Uuid,
    trace_context: std::collections::HashMap<String, String>,
) -> AttachResponse {
    AttachResponse {
        msg: Some(attach_response::Msg::Assignment(Assignment {
            job_id: job.id.to_string(),
            lease_token: lease.to_string(),
            // The backend renders the composed prompts (characters' fragments included).
            spec: Some(pb::JobSpec { negative_prompt: job.composed_negative.clone(), ..pb_spec(job) }),
            composed_prompt: job.composed_prompt.clone(),
            owner_id: job.owner_id.clone(),
            project_id: job.project_id.map(|p| p.to_string()).unwrap_or_default(),
            attempt: job.attempts,
            trace_context,
        })),
    }
}

fn parse_id(field: &'static str, s: &str) -> Result<Uuid, SchedulerError> {
    Uuid::parse_str(s).map_err(|_| SchedulerError::invalid(field, "must be a UUID"))
}

fn raw_spec(spec: pb::JobSpec) -> RawSpec {
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

/// JobService and WorkerService over the shared state.
#[derive(Debug, Clone)]
pub struct Api {
    /// Shared state.
    pub state: Arc<State>,
    /// Wakes the dispatcher.
    pub wake: Arc<Notify>,
    /// Ends streams on shutdown.
    pub shutdown: CancellationToken,
}

impl Api {
    /// Counts a refusal by one of the scheduler's ceilings (other errors are not counted
    /// here).
    fn count_refusal(&self, e: &SchedulerError) {
        let ceiling = match e {
            SchedulerError::QueueFull { .. } => "active_jobs_per_user",
            SchedulerError::TooManyWatchers { ceiling, .. } => ceiling.name(),
            SchedulerError::InvalidField { .. }
            | SchedulerError::NotFound(_)
            | SchedulerError::AlreadyExists(_)
            | SchedulerError::FailedPrecondition(_)
            | SchedulerError::Db(_)
            | SchedulerError::Pool(_) => return,
        };
        self.state.metrics.ceiling_refused(ceiling);
    }
}

type EventStream = tonic::codegen::BoxStream<pb::WatchJobResponse>;
type AttachStream = tonic::codegen::BoxStream<AttachResponse>;

#[tonic::async_trait]
impl JobService for Api {
    type WatchJobStream = EventStream;

    async fn submit_job(
        &self,
        req: Request<pb::SubmitJobRequest>,
    ) -> Result<Response<pb::SubmitJobResponse>, Status> {
        let owner = mesh_auth::caller(&req)?.user_id()?.to_string();
        let r = req.into_inner();
        let spec = r.spec.ok_or_else(|| SchedulerError::invalid("spec", "required"))?;
        let fixed_seed = spec.seed.is_some();
        let spec = validate::spec(raw_spec(spec), self.state.config.max_job_pixels, rand::random::<u64>)?;
        let idempotency_key = validate::idempotency_key(&r.idempotency_key)?;
        let priority = validate::priority(r.priority)?;
        let (project_id, composed) = self
            .state
            .projects
            .compose(&owner, &r.project_id, &r.character_ids, &spec.prompt, &spec.negative_prompt)
            .await?;
        if r.reuse_result
            && fixed_seed
            && let Some(earlier) = self.state.store.reusable(&owner, &spec.hash()).await?
        {
            tracing::info!(job_id = %earlier.id, "identical request answered from an earlier result");
            return Ok(Response::new(pb::SubmitJobResponse {
                job: Some(job_to_pb(&earlier)),
                deduplicated: false,
                reused: true,
            }));
        }
        let new = NewJob {
            id: Uuid::now_v7(),
            owner_id: owner,
            composed_prompt: composed.prompt,
            composed_negative: composed.negative,
            project_id,
            character_ids: composed.character_ids,
            trace_context: sakuga_mesh::telemetry::current_context_map(),
            spec,
            priority,
            idempotency_key,
            max_attempts: self.state.config.max_attempts,
        };
        let inserted = self
            .state
            .store
            .insert(&new, self.state.config.max_active_jobs_per_user)
            .await
            .inspect_err(|e| self.count_refusal(e))?;
        if !inserted.deduplicated {
            tracing::info!(job_id = %inserted.job.id, owner = %inserted.job.owner_id, "job queued");
            self.wake.notify_one();
        }
        let target = format!("job:{}", inserted.job.id);
        let mut resp = Response::new(pb::SubmitJobResponse {
            job: Some(job_to_pb(&inserted.job)),
            deduplicated: inserted.deduplicated,
            reused: false,
        });
        resp.extensions_mut().insert(mesh_auth::AuditTarget(target));
        Ok(resp)
    }

    async fn get_job(&self, req: Request<pb::GetJobRequest>) -> Result<Response<pb::GetJobResponse>, Status> {
        let scope = mesh_auth::caller(&req)?.owner_scope()?;
        let id = parse_id("job_id", &req.get_ref().job_id)?;
        let job = self.state.store.get(id, scope.as_deref()).await?;
        Ok(Response::new(pb::GetJobResponse { job: Some(job_to_pb(&job)) }))
    }

    async fn list_jobs(
        &self,
        req: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        let scope = mesh_auth::caller(&req)?.owner_scope()?;
        let r = req.into_inner();
        let page = Page::parse(r.page_size, &r.page_token)?;
        let status = from_pb_status(r.status);
        if status.is_none() && r.status != 0 {
            return Err(SchedulerError::invalid("status", format!("unknown status {}", r.status)).into());
        }
        let project_id =
            if r.project_id.is_empty() { None } else { Some(parse_id("project_id", &r.project_id)?) };
        let prompt = r.prompt_contains.trim();
        if prompt.chars().count() > 200 {
            return Err(SchedulerError::invalid("prompt_contains", "must be at most 200 characters").into());
        }
        let filter = ListFilter {
            status,
            cursor: page.after,
            created_after: from_timestamp("created_after", r.created_after)?,
            created_before: from_timestamp("created_before", r.created_before)?,
            prompt_contains: (!prompt.is_empty()).then(|| prompt.to_owned()),
            project_id,
        };
        let mut jobs = self.state.store.list(scope.as_deref(), &filter, page.fetch()).await?;
        let next_page_token = page.finish(&mut jobs, |j| (j.created_at, j.id));
        Ok(Response::new(pb::ListJobsResponse {
            jobs: jobs.iter().map(job_to_pb).collect(),
            next_page_token,
        }))
    }

    async fn watch_job(&self, req: Request<pb::WatchJobRequest>) -> Result<Response<EventStream>, Status> {
        let caller = mesh_auth::caller(&req)?;
        let scope = caller.owner_scope()?;
        let user = caller.user_id()?;
        let id = parse_id("job_id", &req.get_ref().job_id)?;
        // Existence and ownership first: a call for a job the caller cannot see leaves
        // nothing behind (no slot, no channel).
        self.state.store.get(id, scope.as_deref()).await?;
        let slot = self
            .state
            .watchers
            .acquire(user, &mesh_auth::peer_addr(&req))
            .inspect_err(|e| self.count_refusal(e))?;
        // Subscribe before reading the snapshot so nothing falls between the two.
        let mut live = self.state.events.subscribe(id);
        let job = self.state.store.get(id, scope.as_deref()).await?;
        let (tx, rx) = mpsc::channel(64);
        let state = self.state.clone();
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            // The slot and the subscription live as long as this task: whichever way it
            // ends (client gone, final status, shutdown, a panic), they are dropped, which
            // gives the caller's slot back and, with the job's last watcher, its channel.
            let _slot = slot;
            let mut seen = Seen { status: job.status, step: job.progress_step };
            let snapshot = event(id, job_event::Kind::Snapshot(job_to_pb(&job)));
            if tx.send(Ok(pb::WatchJobResponse { event: Some(snapshot) })).await.is_err()
                || job.status.is_terminal()
            {
                return;
            }
            // The job row is re-read after a quiet second (a lost message, Redis away) and
            // every ten seconds regardless; while events flow, watchers do not each hit the
            // database once a second.
            let quiet = tokio::time::sleep(RESYNC_WHEN_QUIET);
            tokio::pin!(quiet);
            let mut every = tokio::time::interval(RESYNC_ALWAYS);
            every.tick().await;
            loop {
                let out = tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tx.closed() => return,
                    received = live.recv() => {
                        quiet.as_mut().reset(tokio::time::Instant::now() + RESYNC_WHEN_QUIET);
                        match received {
                            Ok(ev) => seen.filter(ev),
                            Err(crate::events::Missed) => seen.resync(&state, id).await,
                        }
                    },
                    () = &mut quiet => {
                        quiet.as_mut().reset(tokio::time::Instant::now() + RESYNC_WHEN_QUIET);
                        seen.resync(&state, id).await
                    }
                    _ = every.tick() => seen.resync(&state, id).await,
                };
                for ev in out {
                    if tx.send(Ok(pb::WatchJobResponse { event: Some(ev) })).await.is_err() {
                        return;
                    }
                }
                if seen.status.is_terminal() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn cancel_job(
        &self,
        req: Request<pb::CancelJobRequest>,
    ) -> Result<Response<pb::CancelJobResponse>, Status> {
        let scope = mesh_auth::caller(&req)?.owner_scope()?;
        let id = parse_id("job_id", &req.get_ref().job_id)?;
        let Some((before, _worker, job)) = self.state.store.cancel(id, scope.as_deref()).await? else {
            let job = self.state.store.get(id, scope.as_deref()).await?;
            return Err(SchedulerError::FailedPrecondition(format!(
                "job {id} already finished ({})",
                job.status.as_str()
            ))
            .into());
        };
        if matches!(before, JobStatus::Assigned | JobStatus::Running) {
            let cancel = AttachResponse {
                msg: Some(attach_response::Msg::Cancel(pb::CancelJobCommand { job_id: id.to_string() })),
            };
            // The worker's slot is freed when it confirms the backend stopped. The holder may
            // be attached to another replica; its next message about the job then meets the
            // guarded UPDATE and is answered with LeaseRevoked.
            self.state.registry.send_to_holder(id, cancel, false);
            self.wake.notify_one();
        }
        self.state.families.finished(&job);
        self.state.events.publish(id, &status_event(&job));
        Ok(Response::new(pb::CancelJobResponse { job: Some(job_to_pb(&job)) }))
    }

    async fn retry_job(
        &self,
        req: Request<pb::RetryJobRequest>,
    ) -> Result<Response<pb::RetryJobResponse>, Status> {
        let scope = mesh_auth::caller(&req)?.owner_scope()?;
        let id = parse_id("job_id", &req.get_ref().job_id)?;
        // A retried job is active again: it counts against the owner's cap like a new one.
        let cap = self.state.config.max_active_jobs_per_user;
        let retried =
            self.state.store.retry(id, scope.as_deref(), cap).await.inspect_err(|e| self.count_refusal(e))?;
        let Some(job) = retried else {
            let job = self.state.store.get(id, scope.as_deref()).await?;
            return Err(SchedulerError::FailedPrecondition(format!(
                "job {id} is {}; only failed or canceled jobs can be retried",
                job.status.as_str()
            ))
            .into());
        };
        self.state.events.publish(id, &status_event(&job));
        self.wake.notify_one();
        Ok(Response::new(pb::RetryJobResponse { job: Some(job_to_pb(&job)) }))
    }
}

/// What a watcher has already told its client.
struct Seen {
    status: JobStatus,
    step: u32,
}

impl Seen {
    /// Drops events the client has already seen (duplicates across snapshot, Redis and
    /// the resync poll).
    fn filter(&mut self, ev: pb::JobEvent) -> Vec<pb::JobEvent> {
        match &ev.kind {
            Some(job_event::Kind::Progress(p)) => {
                if p.step <= self.step || self.status.is_terminal() {
                    return Vec::new();
                }
                self.step = p.step;
                if self.status == JobStatus::Assigned {
                    self.status = JobStatus::Running;
                }
                vec![ev]
            }
            Some(job_event::Kind::StatusChange(sc)) => match from_pb_status(sc.status) {
                Some(s) if s != self.status => {
                    if matches!(s, JobStatus::Queued | JobStatus::Assigned) {
                        // A new attempt starts from step 0.
                        self.step = 0;
                    }
                    self.status = s;
                    vec![ev]
                }
                _ => Vec::new(),
            },
            Some(job_event::Kind::Preview(_)) => vec![ev],
            Some(job_event::Kind::Snapshot(_)) | None => Vec::new(),
        }
    }

    /// Re-reads the row and emits what the live events missed.
    async fn resync(&mut self, state: &State, id: Uuid) -> Vec<pb::JobEvent> {
        let Ok(job) = state.store.get(id, None).await else {
            return Vec::new();
        };
        let mut out = Vec::new();
        if job.progress_step > self.step && !job.status.is_terminal() {
            out.extend(self.filter(progress_event(id, progress(&job))));
        }
        out.extend(self.filter(status_event(&job)));
        out
    }
}

#[tonic::async_trait]
impl WorkerService for Api {
    type AttachStream = AttachStream;

    async fn attach(&self, req: Request<Streaming<AttachRequest>>) -> Result<Response<AttachStream>, Status> {
        // The guard admits only generator certificates here (see the authorization table).
        let rx = crate::worker::attach(
            self.state.clone(),
            self.wake.clone(),
            req.into_inner(),
            self.shutdown.clone(),
        )
        .await?;
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
