//! The `comfyui` backend: drives one or more ComfyUI servers over their HTTP and WebSocket
//! API. Each server is one slot, and holds up to `comfyui.over_queue` more prompts waiting
//! in its own queue, so it starts the next one the moment the current one ends; a server's
//! place is given back as soon as ComfyUI is done with a prompt, so fetching and storing
//! the outputs overlap the next prompt. A job's workflow is a template filled with the
//! job's parameters and submitted with the job id (a canonical lowercase UUID) as
//! ComfyUI's `prompt_id`; progress, previews and the outcome come over the server's
//! socket, whose events every job on that server hears, outputs from `/history` and
//! `/view`.
//! When the socket drops, `/history` and `/queue` are polled until it is back, so a job
//! is never left hanging: it finishes from history, or fails as retryable when ComfyUI
//! no longer knows it (a restart).

mod config;
mod conn;
mod error;
mod follow;
mod headers;
pub mod http;
pub mod preview;
mod run;
mod server;
pub mod template;
mod tls;
mod warm;
pub mod wire;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{
        Arc, Mutex as StdMutex,
        atomic::{AtomicU8, AtomicU32, Ordering},
    },
};

use futures_util::future::BoxFuture;
use sakuga_imaging::{Artifact, InspectError, Limits, inspect_png};
use sakuga_mesh::metrics::Metrics;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

pub use self::{
    config::{ComfyConfig, HeaderSetting},
    error::ComfyError,
    headers::ServerHeaders,
};
use self::{
    http::{Api, BodyLimit, HttpError},
    run::Run,
    server::{CANCEL_UNKNOWN, Following, Place, Server, fan_out},
    template::{Template, Values},
    wire::{Finished, OutputFile},
};
use crate::backend::{Backend, BackendError, JobInput, Kind, Sink, WarmUpError};

/// Added to an output's expected raw size for metadata (ComfyUI embeds the workflow).
const OUTPUT_SLACK_BYTES: u64 = 4 << 20;

/// How following a prompt ended.
enum Followed<'a> {
    /// ComfyUI finished it.
    Done(Finished),
    /// It had not started and was taken out of its server's queue to run on the idle server
    /// of this place.
    Moved(Place<'a>),
}

/// The backend.
#[derive(Debug)]
pub struct ComfyUi {
    config: ComfyConfig,
    templates: BTreeMap<String, Template>,
    servers: Vec<Arc<Server>>,
    /// Held while a job picks its server, so two never take the same last place.
    placing: StdMutex<()>,
    /// Woken whenever a place is given back.
    freed: Notify,
    /// The jobs being followed, by job id: cancelled to withdraw one.
    withdrawals: StdMutex<HashMap<String, CancellationToken>>,
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
                return Err(error::setting(
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
            let server = Arc::new(Server {
                api,
                client_id,
                listeners: StdMutex::new(Vec::new()),
                state,
                loaded: StdMutex::new(BTreeSet::new()),
                held: AtomicU32::new(0),
                job_cancel: AtomicU8::new(CANCEL_UNKNOWN),
            });
            tokio::spawn(fan_out(events, server.clone()));
            servers.push(server);
        }
        Ok(Self {
            config,
            templates,
            servers,
            placing: StdMutex::new(()),
            freed: Notify::new(),
            withdrawals: StdMutex::new(HashMap::new()),
            sockets,
            metrics,
        })
    }

    fn template_for(&self, kind: Kind) -> &Template {
        let name =
            if kind == Kind::Video { &self.config.video_template } else { &self.config.image_template };
        // Checked at construction.
        &self.templates[name]
    }

    /// The checkpoint the job names, or the default one (empty when there is none).
    fn checkpoint<'a>(&'a self, job: &'a JobInput) -> &'a str {
        let model = job.spec.model.as_str();
        if model.is_empty() || model == "default" { &self.config.default_checkpoint } else { model }
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
        let checkpoint = self.checkpoint(job).to_owned();
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

    /// Takes a place on the server with the fewest of this worker's prompts (an idle one
    /// first), preferring one whose socket is open and, among those, one that has
    /// `checkpoint` loaded. `None` when every server holds `1 + comfyui.over_queue`.
    fn place(&self, checkpoint: Option<&str>) -> Option<Place<'_>> {
        let capacity = 1 + self.config.over_queue;
        let _one_at_a_time = self.placing.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let server =
            self.servers.iter().filter(|s| s.held.load(Ordering::Acquire) < capacity).min_by_key(|s| {
                let cold = checkpoint.is_some_and(|m| !s.has_loaded(m));
                (s.held.load(Ordering::Acquire), !s.socket_up(), cold)
            })?;
        Some(self.place_on(server))
    }

    /// Takes a place on an idle server other than `busy` whose socket is open, if any.
    fn idle_place_besides(&self, busy: &Server) -> Option<Place<'_>> {
        let _one_at_a_time = self.placing.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let idle = self.servers.iter().find(|s| {
            !std::ptr::eq(s.as_ref(), busy) && s.held.load(Ordering::Acquire) == 0 && s.socket_up()
        })?;
        Some(self.place_on(idle))
    }

    /// Takes a place on `server` whatever it holds (warm-up runs before any job).
    fn place_on<'a>(&'a self, server: &'a Arc<Server>) -> Place<'a> {
        server.held.fetch_add(1, Ordering::AcqRel);
        Place { server, freed: &self.freed }
    }

    /// Runs one job on the server of `place`, which is given back as soon as ComfyUI is
    /// done with the prompt: the outputs are fetched while the server runs the next one. A
    /// prompt still waiting when another server of this worker goes idle moves there.
    async fn run_on(
        &self,
        place: Place<'_>,
        job: &JobInput,
        template: &Template,
        sink: &Sink,
        (cancel, withdraw): (&CancellationToken, &CancellationToken),
    ) -> Result<Vec<Artifact>, BackendError> {
        let values = self.values(job, template)?;
        let workflow = template.fill(&values);
        let id = prompt_id(&job.job_id)?;
        let id = id.as_str();
        let output_limit = self.output_limit(job);
        let mut place = place;
        let mut retry_of_attempt = job.attempt > 1;
        let (outcome, server) = loop {
            let server = place.server;
            // Listening before anything is sent, so no frame of the prompt is missed.
            let mut events = server.listen();
            self.socket_ready(server, id).await?;
            let api = &server.api;
            let mut already_queued = false;
            if std::mem::take(&mut retry_of_attempt) {
                // An earlier attempt may have finished in ComfyUI after its worker went away,
                // or may still be running there: use it rather than render twice.
                match api.history(id).await {
                    Ok(Some(Finished::Success(files))) => {
                        info!(job_id = %id, "earlier attempt finished in ComfyUI, taking its outputs");
                        drop(place);
                        return self.fetch(api, template, &files, id, output_limit).await;
                    }
                    Ok(_) => already_queued = api.queued(id).await.unwrap_or(false),
                    Err(e) => return Err(failed(api, id, &e)),
                }
            }
            if already_queued {
                info!(job_id = %id, "earlier attempt still in ComfyUI's queue, following it");
            } else {
                submit(api, &workflow, &server.client_id, id).await?;
            }
            let mut run = Run::new(template, values.steps, id, self.config.max_preview_side, &self.metrics);
            match self.follow(server, &mut events, &mut run, sink, (cancel, withdraw)).await? {
                Followed::Done(done) => break (done, server),
                Followed::Moved(idle) => {
                    info!(job_id = %id, from = %api.base(), to = %idle.server.api.base(),
                          "prompt still waiting moved to an idle server");
                    place = idle;
                }
            }
        };
        let api = &server.api;
        // ComfyUI is done with the prompt: the server takes the next one while the outputs
        // are fetched and stored.
        drop(place);
        match outcome {
            Finished::Success(files) => {
                if cancel.is_cancelled() {
                    return Err(BackendError::Canceled);
                }
                if template.uses("checkpoint") {
                    // The checkpoint stays loaded for the next prompt of the same model.
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

/// POST /prompt; a refusal fails the job for good, naming what ComfyUI named.
async fn submit(
    api: &Api,
    workflow: &serde_json::Value,
    client_id: &str,
    id: &str,
) -> Result<(), BackendError> {
    match api.submit(workflow, client_id, id).await {
        Ok(()) => Ok(()),
        Err(HttpError::Refused { status: 400, body }) => {
            warn!(job_id = %id, answer = %body, "ComfyUI refused the workflow");
            Err(BackendError::Permanent(wire::describe_invalid_prompt(&body)))
        }
        Err(HttpError::Refused { status, body }) => {
            warn!(job_id = %id, status, answer = %body, "ComfyUI refused the prompt");
            Err(BackendError::Permanent(format!("ComfyUI refused the prompt: HTTP {status}")))
        }
        Err(e) => Err(failed(api, id, &e)),
    }
}

/// A job id as ComfyUI takes a `prompt_id`: a canonical lowercase hyphenated UUID
/// (ComfyUI 0.26 refuses anything else).
fn prompt_id(job_id: &str) -> Result<String, BackendError> {
    uuid::Uuid::parse_str(job_id).map(|u| u.hyphenated().to_string()).map_err(|_| {
        BackendError::Permanent(format!("job id {job_id:?} is not a UUID, which ComfyUI needs as prompt_id"))
    })
}

impl Backend for ComfyUi {
    fn name(&self) -> &'static str {
        "comfyui"
    }

    fn slots(&self) -> u32 {
        u32::try_from(self.servers.len()).unwrap_or(u32::MAX)
    }

    fn queue_slots(&self) -> u32 {
        self.slots().saturating_mul(self.config.over_queue)
    }

    fn withdraw(&self, job_id: &str) -> bool {
        let withdrawals = self.withdrawals.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        withdrawals.get(job_id).inspect(|t| t.cancel()).is_some()
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
            let checkpoint = template.uses("checkpoint").then(|| self.checkpoint(&job));
            let Some(place) = self.place(checkpoint) else {
                return Err(BackendError::Retryable(
                    "every ComfyUI server of this worker is busy (comfyui.over_queue prompts waiting on each)"
                        .to_owned(),
                ));
            };
            let following = Following::new(&self.withdrawals, &job.job_id);
            self.run_on(place, &job, template, &sink, (&cancel, &following.withdraw)).await
        })
    }
}
