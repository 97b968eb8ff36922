//! The `comfyui` backend: drives one or more ComfyUI servers over their HTTP and WebSocket
//! API. Each server is one slot. A job's workflow is a template filled with the job's
//! parameters and submitted with the job id as ComfyUI's `prompt_id`; progress, previews
//! and the outcome come over the server's socket, outputs from `/history` and `/view`.
//! When the socket drops, `/history` and `/queue` are polled until it is back, so a job
//! is never left hanging: it finishes from history, or fails as retryable when ComfyUI
//! no longer knows it (a restart).

mod config;
mod conn;
mod error;
mod headers;
pub mod http;
pub mod preview;
mod run;
pub mod template;
mod tls;
mod warm;
pub mod wire;

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex as StdMutex},
    time::Duration,
};

use futures_util::future::BoxFuture;
use sakuga_imaging::{Artifact, InspectError, Limits, inspect_png};
use sakuga_mesh::metrics::Metrics;
use tokio::{
    sync::{Mutex, mpsc, watch},
    time::Instant,
};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

pub use self::{
    config::{ComfyConfig, HeaderSetting},
    error::ComfyError,
    headers::ServerHeaders,
};
use self::{
    conn::{Conn, SocketDown},
    http::{Api, BodyLimit, HttpError},
    run::{Run, Step},
    template::{Template, Values},
    wire::{Finished, OutputFile},
};
use crate::backend::{Backend, BackendError, JobInput, Kind, Sink, WarmUpError};

/// Added to an output's expected raw size for metadata (ComfyUI embeds the workflow).
const OUTPUT_SLACK_BYTES: u64 = 4 << 20;

/// One ComfyUI server: its API, its socket's events (held by the job running on it, which
/// makes the server a slot) and the models it has loaded.
#[derive(Debug)]
struct Server {
    api: Api,
    client_id: String,
    events: Mutex<mpsc::UnboundedReceiver<Conn>>,
    state: watch::Receiver<Result<(), SocketDown>>,
    loaded: StdMutex<BTreeSet<String>>,
}

/// The backend.
#[derive(Debug)]
pub struct ComfyUi {
    config: ComfyConfig,
    templates: BTreeMap<String, Template>,
    servers: Vec<Arc<Server>>,
    sockets: CancellationToken,
    metrics: Arc<Metrics>,
}

impl Drop for ComfyUi {
    fn drop(&mut self) {
        self.sockets.cancel();
    }
}

/// Sakuga's sampler names in ComfyUI's words.
fn sampler_name(ours: &str) -> &str {
    match ours {
        "" => "euler",
        "euler_a" => "euler_ancestral",
        other => other,
    }
}

impl ComfyUi {
    /// Checks the configuration and opens one socket per server (in the background);
    /// refusals by the input ceilings are counted in a registry of its own. For servers
    /// without extra headers (`[[comfyui.headers]]`).
    pub fn new(config: ComfyConfig) -> Result<Self, ComfyError> {
        Self::with_metrics(config, Metrics::new(), &ServerHeaders::default())
    }

    /// As [`ComfyUi::new`], counting refusals by the input ceilings in `metrics` and
    /// sending every server its extra headers, whose values `headers` holds (see
    /// [`ServerHeaders::resolve`]); a configured header without a value is an error.
    pub fn with_metrics(
        config: ComfyConfig,
        metrics: Arc<Metrics>,
        headers: &ServerHeaders,
    ) -> Result<Self, ComfyError> {
        let templates = config.templates()?;
        for (url, h) in config.header_settings()? {
            if !headers.has(&url, &h.name) {
                return Err(config::setting(
                    "comfyui.headers",
                    format!("{} for {url} has no value (read from Vault at start-up)", h.name),
                ));
            }
        }
        let tls = config.client_tls()?;
        let max_ws = usize::try_from(config.max_ws_message_bytes).unwrap_or(usize::MAX);
        let sockets = CancellationToken::new();
        let timeout = config.request_timeout;
        let mut servers = Vec::new();
        for url in config.server_urls()? {
            let extra = headers.for_server(&url);
            let api = Api::new(
                url,
                timeout,
                config.max_response_bytes,
                metrics.clone(),
                tls.as_ref(),
                extra.clone(),
            )?;
            let client_id = uuid::Uuid::new_v4().to_string();
            let dial = tls::Dial { headers: extra, tls: tls.clone(), timeout: config.connect_timeout };
            let (events, state) = conn::spawn(
                api.ws_url(&client_id),
                dial,
                config.preview_metadata,
                max_ws,
                metrics.clone(),
                sockets.clone(),
            );
            servers.push(Arc::new(Server {
                api,
                client_id,
                events: Mutex::new(events),
                state,
                loaded: StdMutex::new(BTreeSet::new()),
            }));
        }
        Ok(Self { config, templates, servers, sockets, metrics })
    }

    fn template_for(&self, kind: Kind) -> &Template {
        let name =
            if kind == Kind::Video { &self.config.video_template } else { &self.config.image_template };
        // Checked at construction.
        &self.templates[name]
    }

    fn values(&self, job: &JobInput, template: &Template) -> Result<Values, BackendError> {
        let s = &job.spec;
        let video = job.kind() == Kind::Video;
        if video && job.batch() > 1 {
            return Err(BackendError::Permanent(
                "spec.batch_size: the comfyui backend makes one clip per video job; submit several jobs"
                    .to_owned(),
            ));
        }
        let checkpoint = if s.model.is_empty() || s.model == "default" {
            self.config.default_checkpoint.clone()
        } else {
            s.model.clone()
        };
        if checkpoint.is_empty() && template.uses("checkpoint") {
            return Err(BackendError::Permanent(
                "spec.model: no checkpoint named and this worker has no comfyui.default_checkpoint"
                    .to_owned(),
            ));
        }
        Ok(Values {
            prompt: job.prompt.clone(),
            negative_prompt: s.negative_prompt.clone(),
            seed: s.seed.unwrap_or(0),
            steps: s.steps.max(1),
            cfg: if s.cfg_scale > 0.0 { s.cfg_scale } else { 7.0 },
            sampler: sampler_name(&s.sampler).to_owned(),
            scheduler: self.config.scheduler.clone(),
            width: s.width,
            height: s.height,
            batch_size: job.batch(),
            frames: s.frames.max(1),
            fps: if s.fps > 0 { s.fps } else { 8 },
            checkpoint,
            filename_prefix: format!("sakuga/{}", job.job_id),
        })
    }

    /// The registry refusals are counted in.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The most bytes read for one output file of `job`: twice its raw RGBA size plus
    /// slack, never more than `comfyui.max_output_bytes`.
    pub fn output_limit(&self, job: &JobInput) -> u64 {
        let s = &job.spec;
        let frames = if job.kind() == Kind::Video { s.frames.max(1) } else { 1 };
        let raw = u64::from(s.width.max(1)) * u64::from(s.height.max(1)) * 4 * u64::from(frames);
        raw.saturating_mul(2).saturating_add(OUTPUT_SLACK_BYTES).min(self.config.max_output_bytes)
    }

    /// Waits until the server's socket is open, so no frame of the job is missed.
    async fn socket_ready(&self, server: &Server, job_id: &str) -> Result<(), BackendError> {
        let mut state = server.state.clone();
        let wait = state.wait_for(Result::is_ok);
        if let Ok(Ok(_)) = tokio::time::timeout(self.config.connect_timeout, wait).await {
            return Ok(());
        }
        let why = server.state.borrow().as_ref().err().map(ToString::to_string).unwrap_or_default();
        warn!(job_id, url = %server.api.base(), reason = %why, "ComfyUI socket not open in time");
        Err(BackendError::Retryable(format!(
            "ComfyUI is not reachable: its socket did not open within comfyui.connect_timeout ({:?})",
            self.config.connect_timeout
        )))
    }

    /// Runs one job on `server`, whose event receiver the caller holds.
    async fn run_on(
        &self,
        server: &Server,
        events: &mut mpsc::UnboundedReceiver<Conn>,
        job: &JobInput,
        template: &Template,
        sink: &Sink,
        cancel: &CancellationToken,
    ) -> Result<Vec<Artifact>, BackendError> {
        let values = self.values(job, template)?;
        let workflow = template.fill(&values);
        // Frames of earlier jobs are of no use now.
        while events.try_recv().is_ok() {}
        let id = job.job_id.as_str();
        self.socket_ready(server, id).await?;
        let output_limit = self.output_limit(job);
        let api = &server.api;
        let mut already_queued = false;
        if job.attempt > 1 {
            // An earlier attempt may have finished in ComfyUI after its worker went away,
            // or may still be running there: use it rather than render twice.
            match api.history(id).await {
                Ok(Some(Finished::Success(files))) => {
                    info!(job_id = %id, "earlier attempt finished in ComfyUI, taking its outputs");
                    return self.fetch(api, template, &files, id, output_limit).await;
                }
                Ok(_) => already_queued = api.queued(id).await.unwrap_or(false),
                Err(e) => return Err(failed(api, id, &e)),
            }
        }
        if already_queued {
            info!(job_id = %id, "earlier attempt still in ComfyUI's queue, following it");
        } else {
            match api.submit(&workflow, &server.client_id, id).await {
                Ok(()) => {}
                Err(HttpError::Refused { status: 400, body }) => {
                    warn!(job_id = %id, answer = %body, "ComfyUI refused the workflow");
                    return Err(BackendError::Permanent(wire::describe_invalid_prompt(&body)));
                }
                Err(HttpError::Refused { status, body }) => {
                    warn!(job_id = %id, status, answer = %body, "ComfyUI refused the prompt");
                    return Err(BackendError::Permanent(format!(
                        "ComfyUI refused the prompt: HTTP {status}"
                    )));
                }
                Err(e) => return Err(failed(api, id, &e)),
            }
        }
        let mut run = Run::new(template, values.steps, id, self.config.max_preview_side, &self.metrics);
        let outcome = self.follow(server, events, &mut run, sink, cancel).await?;
        match outcome {
            Finished::Success(files) => {
                if cancel.is_cancelled() {
                    return Err(BackendError::Canceled);
                }
                if template.uses("checkpoint") {
                    let mut loaded = server.loaded.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    loaded.retain(|m| self.config.preload_models.contains(m));
                    loaded.insert(values.checkpoint.clone());
                }
                self.fetch(api, template, &files, id, output_limit).await
            }
            Finished::Failed(failure) => {
                // The whole exception stays here; the job's error names node, class and type.
                warn!(job_id = %id, node = %failure.node_id, node_type = %failure.node_type,
                      exception = %failure.exception_type, message = %failure.exception_message,
                      traceback = %failure.traceback.concat(), "ComfyUI node failed");
                let message = failure.describe();
                Err(if failure.retryable() {
                    BackendError::Retryable(message)
                } else {
                    BackendError::Permanent(message)
                })
            }
            Finished::Interrupted { node_id, node_type } => {
                if cancel.is_cancelled() {
                    Err(BackendError::Canceled)
                } else {
                    Err(BackendError::Retryable(format!(
                        "ComfyUI interrupted the job at node {node_id} ({node_type}) without a cancel from Sakuga"
                    )))
                }
            }
        }
    }

    /// Follows the job over the socket (and `/history` while the socket is down) to its end.
    async fn follow(
        &self,
        server: &Server,
        events: &mut mpsc::UnboundedReceiver<Conn>,
        run: &mut Run<'_>,
        sink: &Sink,
        cancel: &CancellationToken,
    ) -> Result<Finished, BackendError> {
        let api = &server.api;
        let id = run.prompt_id;
        let deadline = Instant::now() + self.config.job_timeout;
        let lost_after = self.config.lost_after;
        let mut socket_up = server.state.borrow().is_ok();
        let mut unreachable_since: Option<Instant> = None;
        let mut success_seen: Option<Instant> = None;
        let mut cancel_sent: Option<Instant> = None;
        let mut poll = tokio::time::interval(Duration::from_millis(500));
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut check_now = false;
        loop {
            // Poll history while the socket is down, right after it comes back, and when the
            // final `executing` (history stored) is late after execution_success.
            let success_late = success_seen.is_some_and(|t| t.elapsed() > Duration::from_secs(2));
            if check_now || !socket_up || success_late {
                check_now = false;
                match self.check(api, id).await {
                    // A refused socket message fails the attempt even when the socket's
                    // drop made the history answer first.
                    Ok(Some(_))
                        if std::iter::from_fn(|| events.try_recv().ok())
                            .any(|c| matches!(c, Conn::TooLarge)) =>
                    {
                        return Err(self.socket_message_refused(api, id).await);
                    }
                    Ok(Some(done)) => return Ok(done),
                    Ok(None) => unreachable_since = None,
                    Err(Gone) => {
                        warn!(job_id = %id, url = %api.base(), "ComfyUI no longer knows the job");
                        return Err(BackendError::Retryable(
                            "ComfyUI no longer knows the job (restarted?)".to_owned(),
                        ));
                    }
                    Err(Unreachable(e)) => {
                        if matches!(e, HttpError::TooLarge { .. }) {
                            return Err(failed(api, id, &e));
                        }
                        let since = *unreachable_since.get_or_insert_with(Instant::now);
                        if since.elapsed() >= lost_after {
                            warn!(job_id = %id, url = %api.base(), error = %e, "ComfyUI unreachable, giving up on the job");
                            return Err(BackendError::Retryable(format!(
                                "ComfyUI unreachable for {} s",
                                since.elapsed().as_secs()
                            )));
                        }
                    }
                }
            }
            if cancel_sent.is_some_and(|t| t.elapsed() > Duration::from_secs(10)) {
                warn!(job_id = %id, "ComfyUI did not confirm the interrupt; reporting the job stopped");
                return Err(BackendError::Canceled);
            }
            tokio::select! {
                ev = events.recv() => match ev {
                    // Back after a drop: what happened meanwhile is in the history.
                    Some(Conn::Up) => { check_now = !socket_up; socket_up = true; }
                    Some(Conn::Down(why)) => {
                        warn!(job_id = %id, reason = %why, "ComfyUI socket dropped mid-job; polling history");
                        socket_up = false;
                    }
                    Some(Conn::TooLarge) => return Err(self.socket_message_refused(api, id).await),
                    Some(Conn::Event(ev)) => match run.on_event(ev, sink) {
                        Step::Continue => {}
                        Step::Succeeded => { success_seen = Some(Instant::now()); }
                        Step::HistoryStored => {
                            if let Some(done) = self.history_after_success(api, id).await? {
                                return Ok(done);
                            }
                            check_now = true;
                        }
                        Step::Ended(done) => return Ok(done),
                    },
                    None => return Err(BackendError::Retryable("ComfyUI socket task ended".to_owned())),
                },
                () = cancel.cancelled(), if cancel_sent.is_none() => {
                    cancel_sent = Some(Instant::now());
                    if self.stop(api, id, run.started).await {
                        return Err(BackendError::Canceled);
                    }
                }
                _ = poll.tick() => {}
                () = tokio::time::sleep_until(deadline) => {
                    let _ = api.interrupt(id).await;
                    return Err(BackendError::Retryable(format!(
                        "ComfyUI did not finish within comfyui.job_timeout ({:?})", self.config.job_timeout
                    )));
                }
            }
        }
    }

    /// Stops the prompt after a socket message over the ceiling: the attempt fails.
    async fn socket_message_refused(&self, api: &Api, id: &str) -> BackendError {
        let _ = api.interrupt(id).await;
        BackendError::Retryable(format!(
            "ComfyUI sent a socket message over comfyui.max_ws_message_bytes ({} bytes)",
            self.config.max_ws_message_bytes
        ))
    }

    /// Reads the history once the server said it is stored; `{}` means "not yet": retried
    /// briefly, then left to the polling backstop.
    async fn history_after_success(&self, api: &Api, id: &str) -> Result<Option<Finished>, BackendError> {
        for _ in 0..10 {
            match api.history(id).await {
                Ok(Some(done)) => return Ok(Some(done)),
                Ok(None) => tokio::time::sleep(Duration::from_millis(100)).await,
                Err(e) => return Err(failed(api, id, &e)),
            }
        }
        Ok(None)
    }

    /// One look at history and queue.
    async fn check(&self, api: &Api, id: &str) -> Result<Option<Finished>, Lost> {
        // Queue first: ComfyUI stores the history before it takes a prompt off the
        // running list, so "not queued" then "no history" means it is really gone.
        let queued = api.queued(id).await.map_err(Unreachable)?;
        match api.history(id).await.map_err(Unreachable)? {
            Some(done) => Ok(Some(done)),
            None if queued => Ok(None),
            None => Err(Gone),
        }
    }

    /// Stops the prompt: interrupt when it runs, removal from the queue when it waits.
    /// True when it is certainly gone (removed before it started).
    async fn stop(&self, api: &Api, id: &str, started: bool) -> bool {
        info!(job_id = %id, started, "stopping the prompt in ComfyUI");
        if started {
            if let Err(e) = api.interrupt(id).await {
                warn!(job_id = %id, error = %e, "ComfyUI interrupt failed");
            }
            return false;
        }
        if let Err(e) = api.dequeue(id).await {
            warn!(job_id = %id, error = %e, "ComfyUI queue removal failed");
        }
        match api.queued(id).await {
            Ok(false) => matches!(api.history(id).await, Ok(None)),
            Ok(true) => {
                // Started meanwhile.
                let _ = api.interrupt(id).await;
                false
            }
            Err(_) => false,
        }
    }

    /// Downloads the outputs and checks they are PNG or animated PNG.
    async fn fetch(
        &self,
        api: &Api,
        template: &Template,
        files: &[OutputFile],
        job_id: &str,
        output_limit: u64,
    ) -> Result<Vec<Artifact>, BackendError> {
        if files.is_empty() {
            return Err(BackendError::Permanent(format!(
                "template {:?} saved no output files (it needs a SaveImage or SaveAnimatedPNG node)",
                template.name
            )));
        }
        let limit = BodyLimit {
            what: "output file",
            setting: "the job's size (twice width × height × 4 × frames, plus 4 MiB) or comfyui.max_output_bytes",
            ceiling: "comfyui_output_bytes",
            bytes: output_limit,
        };
        let mut artifacts = Vec::with_capacity(files.len());
        for file in files {
            let bytes = api.view(file, limit).await.map_err(|e| failed(api, job_id, &e))?;
            let node = || format!("node {} ({})", file.node, template.class_of(&file.node).unwrap_or("?"));
            let found = match inspect_png(&bytes, Limits::default()) {
                Ok(found) => found,
                Err(InspectError::NotPng) => {
                    return Err(BackendError::Permanent(format!(
                        "ComfyUI {} wrote {:?}, which is not PNG or animated PNG; save with SaveImage or SaveAnimatedPNG",
                        node(),
                        file.filename
                    )));
                }
                Err(e) => {
                    return Err(BackendError::Permanent(format!(
                        "ComfyUI {} wrote an unreadable file: {e}",
                        node()
                    )));
                }
            };
            artifacts.push(Artifact {
                bytes,
                mime: found.mime,
                width: found.width,
                height: found.height,
                frames: found.frames,
            });
        }
        Ok(artifacts)
    }
}

/// A failed request as the job's error: the full text (with the server's URL) to the log,
/// a short reason to the job. An answer over a ceiling would be as large the next time.
fn failed(api: &Api, job_id: &str, e: &HttpError) -> BackendError {
    match e {
        HttpError::TooLarge { .. } => {
            error!(job_id, url = %api.base(), error = %e, "ComfyUI answer refused");
            BackendError::Permanent(e.public())
        }
        HttpError::Unavailable(_) | HttpError::Refused { .. } => {
            warn!(job_id, url = %api.base(), error = %e, "ComfyUI request failed");
            BackendError::Retryable(e.public())
        }
    }
}

/// Why a job is no longer followed.
enum Lost {
    /// Neither queued nor in history: the server forgot it.
    Gone,
    /// The server does not answer (or answers beyond a ceiling).
    Unreachable(HttpError),
}
use Lost::{Gone, Unreachable};

impl Backend for ComfyUi {
    fn name(&self) -> &'static str {
        "comfyui"
    }

    fn slots(&self) -> u32 {
        u32::try_from(self.servers.len()).unwrap_or(u32::MAX)
    }

    fn loaded_models(&self) -> Vec<String> {
        let mut all = BTreeSet::new();
        for s in &self.servers {
            all.extend(s.loaded.lock().unwrap_or_else(std::sync::PoisonError::into_inner).iter().cloned());
        }
        all.into_iter().collect()
    }

    fn warm_up(&self, cancel: CancellationToken) -> BoxFuture<'_, Result<(), WarmUpError>> {
        Box::pin(async move {
            // All servers at once: one unreachable server costs connect_timeout once.
            futures_util::future::try_join_all(self.servers.iter().map(|s| self.warm_server(s, &cancel)))
                .await?;
            Ok(())
        })
    }

    fn run(
        &self,
        job: JobInput,
        sink: Sink,
        cancel: CancellationToken,
    ) -> BoxFuture<'_, Result<Vec<Artifact>, BackendError>> {
        Box::pin(async move {
            let template = self.template_for(job.kind());
            // A free server: its event receiver is the slot.
            let Some((server, mut events)) =
                self.servers.iter().find_map(|s| s.events.try_lock().ok().map(|g| (s.clone(), g)))
            else {
                return Err(BackendError::Retryable(
                    "every ComfyUI server of this worker is busy".to_owned(),
                ));
            };
            self.run_on(&server, &mut events, &job, template, &sink, &cancel).await
        })
    }
}
