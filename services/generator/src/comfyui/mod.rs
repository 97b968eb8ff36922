//! The `comfyui` backend: drives one or more ComfyUI servers over their HTTP and WebSocket
//! API. Each server is one slot. A job's workflow is a template filled with the job's
//! parameters and submitted with the job id as ComfyUI's `prompt_id`; progress, previews
//! and the outcome come over the server's socket, outputs from `/history` and `/view`.
//! When the socket drops, `/history` and `/queue` are polled until it is back, so a job
//! is never left hanging: it finishes from history, or fails as retryable when ComfyUI
//! no longer knows it (a restart).

mod conn;
pub mod preview;
pub mod template;
pub mod wire;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    sync::{Arc, Mutex as StdMutex},
    time::Duration,
};

use sakuga_imaging::{Artifact, InspectError, Limits, inspect_png};
use sakuga_proto::v1::JobKind;
use serde::{Deserialize, Serialize};
use tokio::{
    sync::{Mutex, mpsc, watch},
    time::Instant,
};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use self::{
    conn::Conn,
    template::{Template, Values},
    wire::{Api, Finished, HttpError, OutputFile, WsEvent},
};
use crate::backend::{Backend, BackendError, BoxFuture, JobInput, Sink};

/// `[comfyui]` settings of the generator.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ComfyConfig {
    /// ComfyUI servers (`http://host:port`); each is one slot.
    pub urls: Vec<String>,
    /// Extra or replacement templates (`<name>.json`, API format); unset: the shipped ones.
    pub templates_dir: Option<PathBuf>,
    /// Template for image jobs.
    pub image_template: String,
    /// Template for video jobs.
    pub video_template: String,
    /// Checkpoint used when a job names no model (or "default").
    pub default_checkpoint: String,
    /// ComfyUI scheduler name filled into `{{scheduler}}`.
    pub scheduler: String,
    /// Checkpoints loaded at start-up by a tiny warm-up run on every server.
    pub preload_models: Vec<String>,
    /// Ask for previews with metadata (binary frame type 4) instead of bare JPEGs.
    pub preview_metadata: bool,
    /// Timeout of one HTTP request to ComfyUI.
    pub request_timeout_secs: u64,
    /// How long a job waits for the server's socket before failing as retryable.
    pub connect_timeout_secs: u64,
    /// A server unreachable this long in the middle of a job fails it as retryable.
    pub lost_after_secs: u64,
    /// Longest a job may run in ComfyUI.
    pub job_timeout_secs: u64,
}

impl Default for ComfyConfig {
    fn default() -> Self {
        Self {
            urls: vec!["http://127.0.0.1:8188".to_owned()],
            templates_dir: None,
            image_template: "txt2img".to_owned(),
            video_template: "animation".to_owned(),
            default_checkpoint: String::new(),
            scheduler: "normal".to_owned(),
            preload_models: Vec::new(),
            preview_metadata: true,
            request_timeout_secs: 30,
            connect_timeout_secs: 10,
            lost_after_secs: 60,
            job_timeout_secs: 3600,
        }
    }
}

impl ComfyConfig {
    /// Checks the settings and loads the templates; errors name the field.
    pub fn templates(&self) -> Result<BTreeMap<String, Template>, String> {
        if self.urls.is_empty() {
            return Err("comfyui.urls: must name at least one ComfyUI server".to_owned());
        }
        for url in &self.urls {
            match reqwest::Url::parse(url) {
                Ok(u) if u.scheme() == "http" && u.host_str().is_some() => {}
                Ok(u) if u.scheme() == "https" => {
                    return Err(format!(
                        "comfyui.urls: {url:?}: only http:// is supported; reach ComfyUI over the pod network"
                    ));
                }
                _ => return Err(format!("comfyui.urls: {url:?} is not an http://host:port URL")),
            }
        }
        for (field, secs) in [
            ("comfyui.request_timeout_secs", self.request_timeout_secs),
            ("comfyui.connect_timeout_secs", self.connect_timeout_secs),
            ("comfyui.lost_after_secs", self.lost_after_secs),
            ("comfyui.job_timeout_secs", self.job_timeout_secs),
        ] {
            if secs == 0 {
                return Err(format!("{field}: must be at least 1"));
            }
        }
        let all = Template::load_all(self.templates_dir.as_deref())?;
        for (field, name) in [
            ("comfyui.image_template", &self.image_template),
            ("comfyui.video_template", &self.video_template),
        ] {
            if !all.contains_key(name) {
                return Err(format!(
                    "{field}: no template named {name:?} (available: {})",
                    all.keys().cloned().collect::<Vec<_>>().join(", ")
                ));
            }
        }
        Ok(all)
    }
}

/// One ComfyUI server: its API, its socket's events (held by the job running on it, which
/// makes the server a slot) and the models it has loaded.
#[derive(Debug)]
struct Server {
    api: Api,
    client_id: String,
    events: Mutex<mpsc::UnboundedReceiver<Conn>>,
    state: watch::Receiver<Result<(), String>>,
    loaded: StdMutex<BTreeSet<String>>,
}

/// The backend.
#[derive(Debug)]
pub struct ComfyUi {
    config: ComfyConfig,
    templates: BTreeMap<String, Template>,
    servers: Vec<Arc<Server>>,
    sockets: CancellationToken,
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
    /// Checks the configuration and opens one socket per server (in the background).
    pub fn new(config: ComfyConfig) -> Result<Self, String> {
        let templates = config.templates()?;
        let sockets = CancellationToken::new();
        let timeout = Duration::from_secs(config.request_timeout_secs);
        let mut servers = Vec::new();
        for url in &config.urls {
            let api = Api::new(url, timeout)?;
            let client_id = uuid::Uuid::new_v4().to_string();
            let (events, state) =
                conn::spawn(api.ws_url(&client_id), config.preview_metadata, sockets.clone());
            servers.push(Arc::new(Server {
                api,
                client_id,
                events: Mutex::new(events),
                state,
                loaded: StdMutex::new(BTreeSet::new()),
            }));
        }
        Ok(Self { config, templates, servers, sockets })
    }

    fn template_for(&self, kind: JobKind) -> &Template {
        let name =
            if kind == JobKind::Video { &self.config.video_template } else { &self.config.image_template };
        // Checked at construction.
        &self.templates[name]
    }

    fn values(&self, job: &JobInput, template: &Template) -> Result<Values, BackendError> {
        let s = &job.spec;
        let video = job.kind() == JobKind::Video;
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

    /// Waits until the server's socket is open, so no frame of the job is missed.
    async fn socket_ready(&self, server: &Server) -> Result<(), BackendError> {
        let mut state = server.state.clone();
        let wait = state.wait_for(Result::is_ok);
        if let Ok(Ok(_)) =
            tokio::time::timeout(Duration::from_secs(self.config.connect_timeout_secs), wait).await
        {
            return Ok(());
        }
        let why = server.state.borrow().clone().err().unwrap_or_default();
        Err(BackendError::Retryable(format!("ComfyUI at {} is not reachable: {why}", server.api.base())))
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
        self.socket_ready(server).await?;
        let id = job.job_id.as_str();
        let api = &server.api;
        let mut already_queued = false;
        if job.attempt > 1 {
            // An earlier attempt may have finished in ComfyUI after its worker went away,
            // or may still be running there: use it rather than render twice.
            match api.history(id).await {
                Ok(Some(Finished::Success(files))) => {
                    info!(job_id = %id, "earlier attempt finished in ComfyUI, taking its outputs");
                    return self.fetch(api, template, &files).await;
                }
                Ok(_) => already_queued = api.queued(id).await.unwrap_or(false),
                Err(e) => return Err(unavailable(api, &e)),
            }
        }
        if already_queued {
            info!(job_id = %id, "earlier attempt still in ComfyUI's queue, following it");
        } else {
            match api.submit(&workflow, &server.client_id, id).await {
                Ok(()) => {}
                Err(HttpError::Refused { status: 400, body }) => {
                    return Err(BackendError::Permanent(wire::describe_invalid_prompt(&body)));
                }
                Err(HttpError::Refused { status, .. }) => {
                    return Err(BackendError::Permanent(format!(
                        "ComfyUI refused the prompt: HTTP {status}"
                    )));
                }
                Err(e) => return Err(unavailable(api, &e)),
            }
        }
        let mut run = Run::new(template, values.steps, id);
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
                self.fetch(api, template, &files).await
            }
            Finished::Failed(failure) => {
                warn!(job_id = %id, node = %failure.node_id, node_type = %failure.node_type,
                      exception = %failure.exception_type, traceback = %failure.traceback.concat(),
                      "ComfyUI node failed");
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
        let deadline = Instant::now() + Duration::from_secs(self.config.job_timeout_secs);
        let lost_after = Duration::from_secs(self.config.lost_after_secs);
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
                    Ok(Some(done)) => return Ok(done),
                    Ok(None) => unreachable_since = None,
                    Err(Gone) => {
                        return Err(BackendError::Retryable(format!(
                            "ComfyUI at {} no longer knows the job (restarted?)",
                            api.base()
                        )));
                    }
                    Err(Unreachable(e)) => {
                        let since = *unreachable_since.get_or_insert_with(Instant::now);
                        if since.elapsed() >= lost_after {
                            return Err(BackendError::Retryable(format!(
                                "ComfyUI at {} unreachable for {} s: {e}",
                                api.base(),
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
                        "ComfyUI did not finish within comfyui.job_timeout_secs ({} s)", self.config.job_timeout_secs
                    )));
                }
            }
        }
    }

    /// Reads the history once the server said it is stored; `{}` means "not yet": retried
    /// briefly, then left to the polling backstop.
    async fn history_after_success(&self, api: &Api, id: &str) -> Result<Option<Finished>, BackendError> {
        for _ in 0..10 {
            match api.history(id).await {
                Ok(Some(done)) => return Ok(Some(done)),
                Ok(None) => tokio::time::sleep(Duration::from_millis(100)).await,
                Err(e) => return Err(unavailable(api, &e)),
            }
        }
        Ok(None)
    }

    /// One look at history and queue.
    async fn check(&self, api: &Api, id: &str) -> Result<Option<Finished>, Lost> {
        // Queue first: ComfyUI stores the history before it takes a prompt off the
        // running list, so "not queued" then "no history" means it is really gone.
        let queued = api.queued(id).await.map_err(|e| Unreachable(e.to_string()))?;
        match api.history(id).await.map_err(|e| Unreachable(e.to_string()))? {
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
    ) -> Result<Vec<Artifact>, BackendError> {
        if files.is_empty() {
            return Err(BackendError::Permanent(format!(
                "template {:?} saved no output files (it needs a SaveImage or SaveAnimatedPNG node)",
                template.name
            )));
        }
        let mut artifacts = Vec::with_capacity(files.len());
        for file in files {
            let bytes = api.view(file).await.map_err(|e| unavailable(api, &e))?;
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

    async fn warm_server(&self, server: &Server, cancel: &CancellationToken) -> Result<(), String> {
        if self.socket_ready(server).await.is_err() {
            warn!(url = %server.api.base(), "ComfyUI not reachable at start-up; templates not checked, nothing preloaded");
            return Ok(());
        }
        for (field, name) in [
            ("comfyui.image_template", &self.config.image_template),
            ("comfyui.video_template", &self.config.video_template),
        ] {
            for class in self.templates[name].class_types() {
                match server.api.has_node(class).await {
                    Ok(true) => {}
                    Ok(false) => {
                        return Err(format!(
                            "{field}: template {name:?} uses node class {class}, which ComfyUI at {} does not have",
                            server.api.base()
                        ));
                    }
                    Err(e) => {
                        warn!(url = %server.api.base(), error = %e, "cannot check templates");
                        return Ok(());
                    }
                }
            }
        }
        let template = self.template_for(JobKind::Image);
        if !template.uses("checkpoint") {
            return Ok(());
        }
        for model in &self.config.preload_models {
            let job = JobInput {
                job_id: uuid::Uuid::new_v4().to_string(),
                attempt: 1,
                spec: sakuga_proto::v1::JobSpec {
                    kind: JobKind::Image.into(),
                    prompt: "warm-up".into(),
                    width: 64,
                    height: 64,
                    steps: 1,
                    seed: Some(0),
                    model: model.clone(),
                    ..Default::default()
                },
                prompt: "warm-up".into(),
            };
            let mut events = server.events.lock().await;
            match self.run_on(server, &mut events, &job, template, &Sink::discard(), cancel).await {
                Ok(_) => {
                    info!(url = %server.api.base(), %model, "model preloaded");
                    server
                        .loaded
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .insert(model.clone());
                }
                Err(e) => warn!(url = %server.api.base(), %model, error = %e, "model preload failed"),
            }
        }
        Ok(())
    }
}

fn unavailable(api: &Api, e: &HttpError) -> BackendError {
    BackendError::Retryable(format!("ComfyUI at {} failed: {e}", api.base()))
}

/// Why a job is no longer followed.
enum Lost {
    /// Neither queued nor in history: the server forgot it.
    Gone,
    /// The server does not answer.
    Unreachable(String),
}
use Lost::{Gone, Unreachable};

/// What an event means for the job.
enum Step {
    Continue,
    /// `execution_success`: the history is about to be stored.
    Succeeded,
    /// `executing` with `node: null`: the history is stored.
    HistoryStored,
    /// The outcome is known without the history.
    Ended(Finished),
}

/// Progress accounting for one prompt. Units: each node counts 1, except the samplers
/// (nodes fed `{{steps}}`), which count `steps`; cached nodes count as done.
struct Run<'a> {
    template: &'a Template,
    prompt_id: &'a str,
    steps: u32,
    step_nodes: BTreeSet<String>,
    total: u32,
    done_nodes: BTreeSet<String>,
    current: Option<String>,
    step: u32,
    started: bool,
    success: bool,
}

impl<'a> Run<'a> {
    fn new(template: &'a Template, steps: u32, prompt_id: &'a str) -> Self {
        let step_nodes = template.step_nodes();
        let plain = u32::try_from(template.len() - step_nodes.len()).unwrap_or(u32::MAX);
        let total = plain.saturating_add(steps.saturating_mul(u32::try_from(step_nodes.len()).unwrap_or(0)));
        Self {
            template,
            prompt_id,
            steps,
            step_nodes,
            total,
            done_nodes: BTreeSet::new(),
            current: None,
            step: 0,
            started: false,
            success: false,
        }
    }

    fn weight(&self, node: &str) -> u32 {
        if self.step_nodes.contains(node) { self.steps } else { 1 }
    }

    fn done_units(&self) -> u32 {
        self.done_nodes.iter().map(|n| self.weight(n)).sum()
    }

    fn stage(&self, what: &str, node: &str) -> String {
        format!("{what}: node {node} {}", self.template.class_of(node).unwrap_or("?"))
    }

    /// Whether an event is about this prompt: frames naming another prompt are not;
    /// frames naming none (legacy previews, `executing` after a reconnect) are while this
    /// prompt runs, since ComfyUI sends a prompt's frames only to its client's socket.
    fn ours(&self, prompt_id: Option<&str>) -> bool {
        prompt_id.map_or(self.started, |p| p == self.prompt_id)
    }

    fn finish_current(&mut self) {
        if let Some(node) = self.current.take() {
            self.done_nodes.insert(node);
        }
    }

    fn on_event(&mut self, ev: WsEvent, sink: &Sink) -> Step {
        match ev {
            WsEvent::Started { prompt_id } if prompt_id == self.prompt_id => self.started = true,
            WsEvent::Cached { prompt_id, nodes } if prompt_id == self.prompt_id && !nodes.is_empty() => {
                self.done_nodes.extend(nodes);
                self.step = self.step.max(self.done_units());
                sink.step(self.step, self.total, 0, "cached");
            }
            WsEvent::Executing { prompt_id, node } if self.ours(prompt_id.as_deref()) => match node {
                Some(node) if self.current.as_deref() != Some(node.as_str()) => {
                    self.finish_current();
                    self.current = Some(node);
                }
                None if prompt_id.as_deref() == Some(self.prompt_id) => {
                    self.finish_current();
                    return if self.success { Step::HistoryStored } else { Step::Continue };
                }
                // The same node again, or the end named without our prompt id.
                _ => {}
            },
            WsEvent::Progress { prompt_id, node, value, max } if self.ours(prompt_id.as_deref()) => {
                let node = node.or_else(|| self.current.clone()).unwrap_or_default();
                let weight = u64::from(self.weight(&node));
                let partial = u32::try_from(value.min(max) * weight / max.max(1)).unwrap_or(0);
                self.step = self.step.max(self.done_units() + partial).min(self.total);
                sink.step(self.step, self.total, 0, self.stage("sampling", &node));
            }
            WsEvent::Preview { prompt_id, mime, image } if self.ours(prompt_id.as_deref()) => {
                if let Some(png) = preview::to_small_png(mime, &image) {
                    sink.preview(png, self.step, 0);
                }
            }
            WsEvent::Executed { prompt_id, node } if prompt_id == self.prompt_id => {
                self.done_nodes.insert(node);
            }
            WsEvent::Success { prompt_id } if prompt_id == self.prompt_id => {
                self.success = true;
                return Step::Succeeded;
            }
            WsEvent::Error { prompt_id, failure } if prompt_id == self.prompt_id => {
                return Step::Ended(Finished::Failed(failure));
            }
            WsEvent::Interrupted { prompt_id, node_id, node_type } if prompt_id == self.prompt_id => {
                return Step::Ended(Finished::Interrupted { node_id, node_type });
            }
            _ => {}
        }
        Step::Continue
    }
}

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

    fn warm_up(&self, cancel: CancellationToken) -> BoxFuture<'_, Result<(), String>> {
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
