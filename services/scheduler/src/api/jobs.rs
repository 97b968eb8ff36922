//! `JobService`: submit, read, list, watch, cancel and retry jobs.

use std::time::Duration;

use sakuga_mesh::{
    api::{Page, from_timestamp},
    auth as mesh_auth,
};
use sakuga_proto::v1::{self as pb, job_service_server::JobService};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::Instrument as _;
use uuid::Uuid;

use super::Api;
use crate::{
    convert::{self, parse_id},
    dispatch,
    error::SchedulerError,
    job::{EventKind, JobEvent, NewJob, Status as JobStatus},
    registry::WorkerCommand,
    state::State,
    store::{FreeSlot, ListFilter},
    validate,
};

/// A watcher re-reads its job after this long without an event ...
const RESYNC_WHEN_QUIET: Duration = Duration::from_secs(1);
/// ... and at least this often.
const RESYNC_ALWAYS: Duration = Duration::from_secs(10);

type EventStream = tonic::codegen::BoxStream<pb::WatchJobResponse>;

#[tonic::async_trait]
impl JobService for Api {
    type WatchJobStream = EventStream;

    async fn submit_job(
        &self,
        req: Request<pb::SubmitJobRequest>,
    ) -> Result<Response<pb::SubmitJobResponse>, Status> {
        let caller = mesh_auth::caller(&req)?;
        let owner = caller.user_id()?.to_string();
        let audit_row = mesh_auth::audit_row(&req);
        let r = req.into_inner();
        let spec = r.spec.ok_or_else(|| SchedulerError::invalid("spec", "required"))?;
        let fixed_seed = spec.seed.is_some();
        let spec =
            validate::spec(convert::raw_spec(spec), self.state.config.max_job_pixels, rand::random::<u64>)?;
        let idempotency_key = validate::idempotency_key(&r.idempotency_key)?;
        let priority = validate::priority(r.priority)?;
        let webhook_endpoint_id = self.state.webhooks.check_named(&owner, &r.webhook_id).await?;
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
                job: Some(convert::job(&earlier)),
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
            webhook_endpoint_id,
        };
        // The audit row is committed with the job (its target filled in by the statement).
        let audit = audit_row.as_ref().map(|row| row.ok(&caller, ""));
        let audited = audit.is_some();
        // Its own task: a call dropped halfway must not strand jobs its claim took.
        let state = self.state.clone();
        let submitted = tokio::spawn(
            async move {
                let cap = state.config.max_active_jobs_per_user;
                let Some((worker, mut slot, warm)) =
                    state.registry.reserve_for(&new.spec.backend, &new.spec.model)
                else {
                    return state.submits.insert(new, cap, audit, None).await.map(|s| (s, None, false));
                };
                let free = FreeSlot {
                    worker_id: &worker.worker_id,
                    backends: &worker.backends,
                    lease: state.config.lease_ttl,
                };
                let mut submitted = state.submits.insert(new, cap, audit, Some(&free)).await?;
                let handed = submitted.assigned.take();
                let job = handed.as_ref().map(|c| c.job.clone());
                // A job it cannot hand back now stays under lease until the reaper requeues it.
                if let Some(handed) = handed
                    && let Err(e) =
                        dispatch::deliver(&state, &worker.worker_id, &mut slot, vec![handed], warm).await
                {
                    tracing::error!(error = %e, "handing a claimed job back failed");
                }
                // A slot the job did not take is given back (here, as the reservation
                // drops) before the dispatcher is woken for it.
                let slot_left = slot.count() > 0;
                Ok((submitted, job, slot_left))
            }
            .in_current_span(),
        )
        .await
        .map_err(|e| Status::internal(format!("submit: {e}")))?;
        let (submitted, handed, slot_left) = submitted.inspect_err(|e| self.count_refusal(e))?;
        // A job queued, or a free slot it did not take, is the dispatcher's.
        if handed.is_none() && (slot_left || submitted.inserted.as_ref().is_some_and(|i| !i.deduplicated)) {
            self.wake.notify_one();
        }
        let cap = self.state.config.max_active_jobs_per_user;
        let Some(mut inserted) = submitted.inserted else {
            let refused = SchedulerError::QueueFull { active: i64::from(cap), cap };
            self.count_refusal(&refused);
            return Err(refused.into());
        };
        if !inserted.deduplicated {
            tracing::info!(job_id = %inserted.job.id, owner = %inserted.job.owner_id, "job queued");
        }
        if let Some(job) = handed {
            // Answered as it is now: assigned, in the same commit.
            inserted.job = job;
        }
        let answer = pb::SubmitJobResponse {
            job: Some(convert::job(&inserted.job)),
            deduplicated: inserted.deduplicated,
            reused: false,
        };
        Ok(if audited {
            mesh_auth::audit_committed(answer)
        } else {
            mesh_auth::audited(answer, format!("job:{}", inserted.job.id))
        })
    }

    async fn get_job(&self, req: Request<pb::GetJobRequest>) -> Result<Response<pb::GetJobResponse>, Status> {
        let scope = mesh_auth::caller(&req)?.owner_scope()?;
        let id = parse_id("job_id", &req.get_ref().job_id)?;
        let job = self.state.store.get(id, scope.as_deref()).await?;
        Ok(Response::new(pb::GetJobResponse { job: Some(convert::job(&job)) }))
    }

    async fn list_jobs(
        &self,
        req: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        let scope = mesh_auth::caller(&req)?.owner_scope()?;
        let r = req.into_inner();
        let page = Page::parse(r.page_size, &r.page_token)?;
        let status = convert::status_from(r.status);
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
            jobs: jobs.iter().map(convert::job).collect(),
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
            let snapshot = convert::snapshot(&job);
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
                    let ev = convert::event(&ev);
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
            // The worker's slot is freed when it confirms the backend stopped. The holder may
            // be attached to another replica; its next message about the job then meets the
            // guarded UPDATE and is answered with LeaseRevoked.
            self.state.registry.send_to_holder(id, WorkerCommand::Cancel { job_id: id }, false);
            self.wake.notify_one();
        }
        self.state.families.finished(&job);
        self.state.events.status_changed(&job);
        Ok(Response::new(pb::CancelJobResponse { job: Some(convert::job(&job)) }))
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
        self.state.events.status_changed(&job);
        self.wake.notify_one();
        Ok(Response::new(pb::RetryJobResponse { job: Some(convert::job(&job)) }))
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
    fn filter(&mut self, ev: JobEvent) -> Vec<JobEvent> {
        match &ev.kind {
            EventKind::Progress(p) => {
                if p.step <= self.step || self.status.is_terminal() {
                    return Vec::new();
                }
                self.step = p.step;
                if self.status == JobStatus::Assigned {
                    self.status = JobStatus::Running;
                }
                vec![ev]
            }
            EventKind::StatusChanged { status, .. } if *status != self.status => {
                if matches!(status, JobStatus::Queued | JobStatus::Assigned) {
                    // A new attempt starts from step 0.
                    self.step = 0;
                }
                self.status = *status;
                vec![ev]
            }
            EventKind::StatusChanged { .. } => Vec::new(),
            EventKind::Preview { .. } => vec![ev],
        }
    }

    /// Re-reads the row and emits what the live events missed.
    async fn resync(&mut self, state: &State, id: Uuid) -> Vec<JobEvent> {
        let Ok(job) = state.store.get(id, None).await else {
            return Vec::new();
        };
        let mut out = Vec::new();
        if job.progress_step > self.step && !job.status.is_terminal() {
            out.extend(self.filter(JobEvent::now(id, EventKind::Progress(job.progress()))));
        }
        out.extend(self.filter(JobEvent::status_changed(&job)));
        out
    }
}
