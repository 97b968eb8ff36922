//! The `sakuga` command: log in, submit and watch jobs, download files, manage projects,
//! characters, users and API keys. Tables for people, `--json` for scripts.
//!
//! Exit codes: 0 ok, 1 other errors (service unreachable, conflicts), 2 usage (bad
//! arguments, refused input), 3 authentication or permission, 4 not found, 5 the job
//! failed or was canceled.

pub mod profile;
pub mod progress;
pub mod session;
pub mod view;

use std::{
    io::{IsTerminal as _, Read as _},
    path::{Path, PathBuf},
    process::ExitCode,
};

use clap::{Args, Parser, Subcommand};
use sakuga_proto::v1::{self as pb, job_event::Kind as EventKind};
use serde_json::Value;
use tokio_stream::StreamExt as _;
use tonic::Code;

use crate::{profile::ConfigFile, progress::Bar, session::Session};

/// A failure with its exit code and a message that says what to do.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CliError {
    /// Process exit code.
    pub code: u8,
    /// For people.
    pub message: String,
}

impl CliError {
    /// Exit 2.
    pub fn usage(m: impl Into<String>) -> Self {
        Self { code: 2, message: m.into() }
    }
    /// Exit 3.
    pub fn auth(m: impl Into<String>) -> Self {
        Self { code: 3, message: m.into() }
    }
    /// Exit 4.
    pub fn not_found(m: impl Into<String>) -> Self {
        Self { code: 4, message: m.into() }
    }
    /// Exit 1.
    pub fn other(m: impl Into<String>) -> Self {
        Self { code: 1, message: m.into() }
    }
}

impl From<tonic::Status> for CliError {
    fn from(s: tonic::Status) -> Self {
        let msg = s.message().to_owned();
        // What to do depends on the refusal's reason code (google.rpc.ErrorInfo), never on
        // the message's wording.
        let reason = sakuga_mesh::auth::reason_of(&s);
        match s.code() {
            Code::Unauthenticated if reason.as_deref() == Some("TOKEN_EXPIRED") => {
                Self::auth("token expired: run `sakuga login`")
            }
            Code::Unauthenticated => {
                Self::auth(format!("{msg}: run `sakuga login` (or use --api-key-file / $SAKUGA_API_KEY)"))
            }
            Code::PermissionDenied => Self::auth(format!("permission denied: {msg}")),
            Code::NotFound => Self::not_found(msg),
            Code::InvalidArgument | Code::OutOfRange => Self::usage(msg),
            Code::ResourceExhausted => Self::other(format!("{msg} (slow down and retry)")),
            Code::Unavailable => Self::other(format!(
                "service unavailable: {msg} (is it running? check the profile's addresses)"
            )),
            _ => Self::other(msg),
        }
    }
}

/// The command line.
#[derive(Debug, Parser)]
#[command(
    name = "sakuga",
    version,
    about = "Submit and watch Sakuga jobs, fetch their files, manage projects"
)]
pub struct Cli {
    /// Profile to use (see `sakuga profile list`); default: $SAKUGA_PROFILE, then the configured default.
    #[arg(long, global = true)]
    pub profile: Option<String>,
    /// Authenticate with the API key in this file instead of the stored login (for scripts;
    /// or set $SAKUGA_API_KEY). The key itself is never taken from the command line, where
    /// every user of the machine could read it in the process list.
    #[arg(long, global = true, value_name = "FILE")]
    pub api_key_file: Option<std::path::PathBuf>,
    /// Refused: an API key on the command line is visible to everyone on the machine.
    #[arg(long, global = true, hide = true, value_name = "KEY")]
    pub api_key: Option<String>,
    /// Print JSON (stable, documented in the README) instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Profiles: where the services are and which certificate to use.
    #[command(subcommand)]
    Profile(ProfileCmd),
    /// Log in (the password is read without echo, or from stdin with --password-stdin).
    Login {
        /// User name; asked for when not given.
        #[arg(long, short)]
        username: Option<String>,
        /// Read the password from standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Log out: revoke the refresh token and forget the stored tokens.
    Logout,
    /// Who the credential belongs to.
    Whoami,
    /// Submit a job.
    Submit(Box<SubmitArgs>),
    /// Jobs.
    #[command(subcommand)]
    Jobs(JobsCmd),
    /// Stored files.
    #[command(subcommand)]
    Files(FilesCmd),
    /// Projects.
    #[command(subcommand)]
    Projects(ProjectsCmd),
    /// Characters of a project.
    #[command(subcommand)]
    Characters(CharactersCmd),
    /// Users, API keys and the audit log.
    #[command(subcommand)]
    Admin(AdminCmd),
}

/// `profile …`
#[derive(Debug, Subcommand)]
pub enum ProfileCmd {
    /// Create a profile from the local stack's `.dev/stack.env` (written by `make up`).
    ImportDev {
        /// The local stack's folder.
        #[arg(long, default_value = ".dev")]
        dir: PathBuf,
        /// Profile name.
        #[arg(long, default_value = "dev")]
        name: String,
    },
    /// Add or replace a profile.
    Add {
        /// Profile name.
        name: String,
        /// Auth service host:port.
        #[arg(long)]
        auth: String,
        /// Scheduler host:port.
        #[arg(long)]
        scheduler: String,
        /// Organizer host:port.
        #[arg(long)]
        organizer: String,
        /// CA certificate (PEM).
        #[arg(long)]
        ca: PathBuf,
        /// Client certificate (PEM).
        #[arg(long)]
        cert: PathBuf,
        /// Client key (PEM).
        #[arg(long)]
        key: PathBuf,
    },
    /// List profiles.
    List,
    /// Make a profile the default.
    Use {
        /// Profile name.
        name: String,
    },
}

/// `submit …`
#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// What to draw.
    pub prompt: String,
    /// What to avoid.
    #[arg(long, default_value = "")]
    pub negative: String,
    /// Width in pixels (64..=2048, a multiple of 8).
    #[arg(long, default_value_t = 512)]
    pub width: u32,
    /// Height in pixels (64..=2048, a multiple of 8).
    #[arg(long, default_value_t = 512)]
    pub height: u32,
    /// Sampling steps (1..=150).
    #[arg(long, default_value_t = 20)]
    pub steps: u32,
    /// Images (or clips) from the same parameters (1..=8).
    #[arg(long, default_value_t = 1)]
    pub batch: u32,
    /// Make an animation instead of an image.
    #[arg(long)]
    pub video: bool,
    /// Frames per clip (video).
    #[arg(long, default_value_t = 16)]
    pub frames: u32,
    /// Frames per second (video).
    #[arg(long, default_value_t = 8)]
    pub fps: u32,
    /// Seed; the scheduler picks one when absent.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Guidance scale (1.0..=30.0).
    #[arg(long)]
    pub cfg: Option<f32>,
    /// Sampler: euler, euler_a, dpmpp_2m, ddim.
    #[arg(long)]
    pub sampler: Option<String>,
    /// Backend: builtin or comfyui.
    #[arg(long)]
    pub backend: Option<String>,
    /// Model (checkpoint).
    #[arg(long)]
    pub model: Option<String>,
    /// Project id or slug.
    #[arg(long)]
    pub project: Option<String>,
    /// Character id or name (repeat for several; needs --project).
    #[arg(long = "character")]
    pub characters: Vec<String>,
    /// Submitting again with the same key returns the first job.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// -100..=100; higher runs first.
    #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
    pub priority: i32,
    /// Answer from an identical earlier job (needs --seed).
    #[arg(long)]
    pub reuse_result: bool,
    /// Show live progress until the job ends.
    #[arg(long)]
    pub watch: bool,
    /// When the job succeeds, download its files here (implies --watch).
    #[arg(long)]
    pub download: Option<PathBuf>,
}

/// Filters and paging shared by the list commands.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only this project (id or slug).
    #[arg(long)]
    pub project: Option<String>,
    /// The (job's) prompt contains this, case-insensitive.
    #[arg(long)]
    pub prompt: Option<String>,
    /// Page size (1..=100).
    #[arg(long, default_value_t = 20)]
    pub limit: u32,
    /// Continue from a previous page.
    #[arg(long, default_value = "")]
    pub page_token: String,
}

impl ListArgs {
    /// The project id the filter names (empty: none).
    async fn project_id(&self, s: &Session) -> Result<String, CliError> {
        match &self.project {
            Some(p) => project_id(s, p).await,
            None => Ok(String::new()),
        }
    }
}

/// `jobs …`
#[derive(Debug, Subcommand)]
pub enum JobsCmd {
    /// Your jobs, newest first.
    List {
        /// Only this status (queued, assigned, running, succeeded, failed, canceled).
        #[arg(long)]
        status: Option<String>,
        /// Filters and paging.
        #[command(flatten)]
        list: ListArgs,
    },
    /// One job.
    Get {
        /// Job id.
        id: String,
    },
    /// Live progress until the job ends.
    Watch {
        /// Job id.
        id: String,
        /// Download the files here when it succeeds.
        #[arg(long)]
        download: Option<PathBuf>,
    },
    /// Cancel a job.
    Cancel {
        /// Job id.
        id: String,
    },
    /// Run a failed or canceled job again.
    Retry {
        /// Job id.
        id: String,
    },
}

/// `files …`
#[derive(Debug, Subcommand)]
pub enum FilesCmd {
    /// Your files, newest first.
    List {
        /// Only this job.
        #[arg(long)]
        job: Option<String>,
        /// Only images or videos.
        #[arg(long)]
        kind: Option<String>,
        /// Filters and paging.
        #[command(flatten)]
        list: ListArgs,
    },
    /// One file's metadata.
    Get {
        /// File id.
        id: String,
    },
    /// Save a file (checked against its sha256).
    Download {
        /// File id.
        id: String,
        /// File or folder to write; default: the current folder.
        #[arg(long, short, default_value = ".")]
        out: PathBuf,
    },
    /// Save a file's thumbnail (PNG, at most 256 px).
    Thumbnail {
        /// File id.
        id: String,
        /// File or folder to write; default: the current folder.
        #[arg(long, short, default_value = ".")]
        out: PathBuf,
    },
    /// Delete a file (bytes, thumbnail and record).
    Delete {
        /// File id.
        id: String,
    },
}

/// `projects …`
#[derive(Debug, Subcommand)]
pub enum ProjectsCmd {
    /// Your projects.
    List {
        /// Include archived projects.
        #[arg(long)]
        archived: bool,
    },
    /// Create a project.
    Create {
        /// Name.
        name: String,
        /// Folder name (lowercase letters, digits, '-'); default: from the name.
        #[arg(long, default_value = "")]
        slug: String,
        /// Description.
        #[arg(long, default_value = "")]
        description: String,
        /// Delete files older than this many days (0 keeps them).
        #[arg(long, default_value_t = 0)]
        retention_days: u32,
    },
    /// One project.
    Get {
        /// Id or slug.
        project: String,
    },
    /// Change a project.
    Update {
        /// Id or slug.
        project: String,
        /// New name.
        #[arg(long)]
        name: Option<String>,
        /// New description.
        #[arg(long)]
        description: Option<String>,
        /// New retention in days (0 keeps files).
        #[arg(long)]
        retention_days: Option<u32>,
    },
    /// Archive a project (it takes no new jobs).
    Archive {
        /// Id or slug.
        project: String,
    },
    /// Take a project out of the archive.
    Unarchive {
        /// Id or slug.
        project: String,
    },
}

/// `characters …`
#[derive(Debug, Subcommand)]
pub enum CharactersCmd {
    /// A project's characters.
    List {
        /// Project id or slug.
        #[arg(long)]
        project: String,
    },
    /// Add a character.
    Create {
        /// Project id or slug.
        #[arg(long)]
        project: String,
        /// Name.
        name: String,
        /// Added to the prompt of jobs naming the character.
        #[arg(long, default_value = "")]
        prompt_fragment: String,
        /// Added to the negative prompt.
        #[arg(long, default_value = "")]
        negative_fragment: String,
        /// Description.
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Change a character.
    Update {
        /// Character id.
        id: String,
        /// New name.
        #[arg(long)]
        name: Option<String>,
        /// New prompt fragment.
        #[arg(long)]
        prompt_fragment: Option<String>,
        /// New negative fragment.
        #[arg(long)]
        negative_fragment: Option<String>,
        /// New description.
        #[arg(long)]
        description: Option<String>,
    },
    /// Delete a character.
    Delete {
        /// Character id.
        id: String,
    },
}

/// `admin …`
#[derive(Debug, Subcommand)]
pub enum AdminCmd {
    /// Users (admins only).
    #[command(subcommand)]
    Users(UsersCmd),
    /// API keys (your own; admins may list anyone's).
    #[command(subcommand)]
    Keys(KeysCmd),
    /// The audit log (admins only).
    Audit {
        /// Only this actor (e.g. user:<id>).
        #[arg(long, default_value = "")]
        actor: String,
        /// Only this action (e.g. FileService.DeleteFile).
        #[arg(long, default_value = "")]
        action: String,
        /// Page size (1..=100).
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
}

/// `admin users …`
#[derive(Debug, Subcommand)]
pub enum UsersCmd {
    /// All users.
    List,
    /// Create a user (password from stdin with --password-stdin, else asked for).
    Create {
        /// User name.
        username: String,
        /// Make an admin.
        #[arg(long)]
        admin: bool,
        /// Read the password from standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Disable a user (their tokens stop working).
    Disable {
        /// User id.
        id: String,
    },
    /// Enable a user again.
    Enable {
        /// User id.
        id: String,
    },
}

/// `admin keys …`
#[derive(Debug, Subcommand)]
pub enum KeysCmd {
    /// API keys.
    List {
        /// Another user's keys (admins).
        #[arg(long, default_value = "")]
        user: String,
    },
    /// Create an API key; its secret is shown once.
    Create {
        /// Label.
        name: String,
    },
    /// Revoke an API key.
    Revoke {
        /// Key id.
        id: String,
    },
}

/// Runs the command line of this process.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("sakuga: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sakuga: {}", e.message);
            ExitCode::from(e.code)
        }
    }
}

/// Prints `value` as JSON, or as a table/details.
fn print(json: bool, value: &Value, columns: &[&str]) {
    if json {
        println!("{}", serde_json::to_string_pretty(value).unwrap_or_default());
    } else if let Value::Array(rows) = value {
        println!("{}", view::table(rows, columns));
    } else {
        println!("{}", view::details(value));
    }
}

fn session(cli: &Cli) -> Result<Session, CliError> {
    let (name, profile) = ConfigFile::load()?.pick(cli.profile.as_deref())?;
    Session::open(name, profile, api_key(cli)?)
}

/// The API key of a script: from `--api-key-file`, else `$SAKUGA_API_KEY`; never argv.
fn api_key(cli: &Cli) -> Result<Option<String>, CliError> {
    if cli.api_key.is_some() {
        return Err(CliError::usage(
            "--api-key: not accepted on the command line (other users can read it in the process \
             list); use --api-key-file FILE or $SAKUGA_API_KEY",
        ));
    }
    if let Some(path) = &cli.api_key_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| CliError::usage(format!("--api-key-file {}: {e}", path.display())))?;
        let key = text.trim();
        if key.is_empty() {
            return Err(CliError::usage(format!("--api-key-file {}: the file is empty", path.display())));
        }
        return Ok(Some(key.to_owned()));
    }
    Ok(std::env::var("SAKUGA_API_KEY").ok().map(|k| k.trim().to_owned()).filter(|k| !k.is_empty()))
}

fn read_password(from_stdin: bool, prompt: &str) -> Result<String, CliError> {
    let password = if from_stdin || !std::io::stdin().is_terminal() {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s).map_err(|e| CliError::other(e.to_string()))?;
        s.trim_end_matches(['\n', '\r']).to_owned()
    } else {
        rpassword::prompt_password(prompt).map_err(|e| CliError::other(e.to_string()))?
    };
    if password.is_empty() {
        return Err(CliError::usage("the password is empty"));
    }
    Ok(password)
}

/// Runs one command.
pub async fn run(cli: Cli) -> Result<(), CliError> {
    let json = cli.json;
    match &cli.command {
        Command::Profile(cmd) => return profile_cmd(cmd, json),
        Command::Login { username, password_stdin } => {
            let s = session(&cli)?;
            let username = if let Some(u) = username {
                u.clone()
            } else {
                eprint!("username: ");
                let mut u = String::new();
                std::io::stdin().read_line(&mut u).map_err(|e| CliError::other(e.to_string()))?;
                u.trim().to_owned()
            };
            let password = read_password(*password_stdin, "password: ")?;
            let user = s.login(&username, &password).await?;
            if json {
                print(true, &view::user(&user), &[]);
            } else {
                println!("logged in to {} as {}", s.name, user.username);
            }
        }
        Command::Logout => {
            let s = session(&cli)?;
            let was = s.logout().await?;
            if !json {
                println!("{}", if was { "logged out" } else { "was not logged in" });
            }
        }
        Command::Whoami => {
            let s = session(&cli)?;
            let me = s.auth().await?.who_am_i(pb::WhoAmIRequest {}).await?.into_inner();
            print(json, &view::user(&me.user.unwrap_or_default()), &[]);
        }
        Command::Submit(args) => submit(&session(&cli)?, args, json).await?,
        Command::Jobs(cmd) => jobs_cmd(&session(&cli)?, cmd, json).await?,
        Command::Files(cmd) => files_cmd(&session(&cli)?, cmd, json).await?,
        Command::Projects(cmd) => projects_cmd(&session(&cli)?, cmd, json).await?,
        Command::Characters(cmd) => characters_cmd(&session(&cli)?, cmd, json).await?,
        Command::Admin(cmd) => admin_cmd(&session(&cli)?, cmd, json).await?,
    }
    Ok(())
}

fn profile_cmd(cmd: &ProfileCmd, json: bool) -> Result<(), CliError> {
    let mut config = ConfigFile::load()?;
    match cmd {
        ProfileCmd::ImportDev { dir, name } => {
            let mut p = profile::from_stack_env(dir)?;
            for path in [&mut p.ca, &mut p.cert, &mut p.key] {
                if let Ok(abs) = std::fs::canonicalize(&*path) {
                    *path = abs;
                }
            }
            config.profiles.insert(name.clone(), p);
            config.default.get_or_insert_with(|| name.clone());
            config.save()?;
            println!("profile {name:?} imported from {}; next: `sakuga login`", dir.display());
        }
        ProfileCmd::Add { name, auth, scheduler, organizer, ca, cert, key } => {
            config.profiles.insert(
                name.clone(),
                profile::Profile {
                    auth: auth.clone(),
                    scheduler: scheduler.clone(),
                    organizer: organizer.clone(),
                    ca: ca.clone(),
                    cert: cert.clone(),
                    key: key.clone(),
                },
            );
            config.default.get_or_insert_with(|| name.clone());
            config.save()?;
            println!("profile {name:?} saved");
        }
        ProfileCmd::List => {
            let rows: Vec<Value> = config
                .profiles
                .iter()
                .map(|(n, p)| {
                    serde_json::json!({
                        "name": n, "default": config.default.as_deref() == Some(n.as_str()),
                        "auth": p.auth, "scheduler": p.scheduler, "organizer": p.organizer,
                    })
                })
                .collect();
            print(json, &Value::Array(rows), &["name", "default", "auth", "scheduler", "organizer"]);
        }
        ProfileCmd::Use { name } => {
            if !config.profiles.contains_key(name) {
                return Err(CliError::usage(format!("no profile named {name:?}")));
            }
            config.default = Some(name.clone());
            config.save()?;
            println!("default profile: {name}");
        }
    }
    Ok(())
}

/// A project id from an id or a slug.
async fn project_id(s: &Session, project: &str) -> Result<String, CliError> {
    if uuid::Uuid::parse_str(project).is_ok() {
        return Ok(project.to_owned());
    }
    let mut projects = s.projects().await?;
    let mut token = String::new();
    loop {
        let page = projects
            .list_projects(pb::ListProjectsRequest {
                page_size: 100,
                page_token: token,
                include_archived: true,
            })
            .await?
            .into_inner();
        if let Some(p) = page.projects.iter().find(|p| p.slug == project) {
            return Ok(p.id.clone());
        }
        if page.next_page_token.is_empty() {
            return Err(CliError::not_found(format!("no project with id or slug {project:?}")));
        }
        token = page.next_page_token;
    }
}

async fn submit(s: &Session, a: &SubmitArgs, json: bool) -> Result<(), CliError> {
    let project = match &a.project {
        Some(p) => project_id(s, p).await?,
        None => String::new(),
    };
    if !a.characters.is_empty() && project.is_empty() {
        return Err(CliError::usage("--character needs --project"));
    }
    let mut character_ids = Vec::new();
    if !a.characters.is_empty() {
        let known = s
            .projects()
            .await?
            .list_characters(pb::ListCharactersRequest { project_id: project.clone() })
            .await?
            .into_inner()
            .characters;
        for c in &a.characters {
            let found = known.iter().find(|k| k.id == *c || k.name == *c).ok_or_else(|| {
                CliError::not_found(format!(
                    "no character {c:?} in the project (see `sakuga characters list`)"
                ))
            })?;
            character_ids.push(found.id.clone());
        }
    }
    let spec = pb::JobSpec {
        kind: if a.video { pb::JobKind::Video } else { pb::JobKind::Image }.into(),
        prompt: a.prompt.clone(),
        negative_prompt: a.negative.clone(),
        width: a.width,
        height: a.height,
        steps: a.steps,
        batch_size: a.batch,
        frames: if a.video { a.frames } else { 0 },
        fps: if a.video { a.fps } else { 0 },
        seed: a.seed,
        cfg_scale: a.cfg.unwrap_or(0.0),
        sampler: a.sampler.clone().unwrap_or_default(),
        backend: a.backend.clone().unwrap_or_default(),
        model: a.model.clone().unwrap_or_default(),
    };
    let resp = s
        .jobs()
        .await?
        .submit_job(pb::SubmitJobRequest {
            spec: Some(spec),
            project_id: project,
            character_ids,
            idempotency_key: a.idempotency_key.clone().unwrap_or_default(),
            priority: a.priority,
            reuse_result: a.reuse_result,
        })
        .await?
        .into_inner();
    let job = resp.job.unwrap_or_default();
    if a.watch || a.download.is_some() {
        if !json {
            eprintln!(
                "job {} {}",
                job.id,
                if resp.deduplicated { "(already submitted)" } else { "submitted" }
            );
        }
        return watch(s, &job.id, a.download.as_deref(), json).await;
    }
    if json {
        print(true, &view::job(&job), &[]);
    } else {
        println!("{}", job.id);
    }
    Ok(())
}

/// Follows a job to its end with a progress bar; exit 5 when it fails or is canceled.
async fn watch(s: &Session, id: &str, download: Option<&Path>, json: bool) -> Result<(), CliError> {
    let mut jobs = s.jobs().await?;
    let mut stream = jobs.watch_job(pb::WatchJobRequest { job_id: id.to_owned() }).await?.into_inner();
    let mut bar = Bar::new(&id[..8.min(id.len())]);
    let mut last_status = String::new();
    while let Some(msg) = stream.next().await {
        let Some(event) = msg?.event else { continue };
        match event.kind {
            Some(EventKind::Snapshot(j)) => {
                let status = view::status_name(j.status).to_owned();
                let p = j.progress.unwrap_or_default();
                bar.update(p.step, p.total_steps, &status);
                last_status = status;
            }
            Some(EventKind::Progress(p)) => bar.update(p.step, p.total_steps, &p.stage),
            Some(EventKind::StatusChange(c)) => {
                let status = view::status_name(c.status);
                if status != last_status {
                    let error = if c.error.is_empty() { String::new() } else { format!(": {}", c.error) };
                    bar.note(&format!("{status}{error}"));
                    status.clone_into(&mut last_status);
                }
            }
            Some(EventKind::Preview(_)) | None => {}
        }
    }
    let job =
        jobs.get_job(pb::GetJobRequest { job_id: id.to_owned() }).await?.into_inner().job.unwrap_or_default();
    let status = job.status;
    if json {
        print(true, &view::job(&job), &[]);
    } else if status == i32::from(pb::JobStatus::Succeeded) {
        println!("{}", job.file_ids.join("\n"));
        eprintln!("succeeded in {:.1}s: {} file(s)", bar.elapsed().as_secs_f64(), job.file_ids.len());
    }
    if status != i32::from(pb::JobStatus::Succeeded) {
        let name = view::status_name(status);
        let why = if job.error.is_empty() { String::new() } else { format!(": {}", job.error) };
        return Err(CliError { code: 5, message: format!("job {id} {name}{why}") });
    }
    if let Some(dir) = download {
        for f in &job.file_ids {
            let path = download_file(s, f, dir).await?;
            if !json {
                eprintln!("saved {}", path.display());
            }
        }
    }
    Ok(())
}

/// Where to write a download: `out` itself, or `out/<name>` when it is a folder.
fn target(out: &Path, name: &str) -> PathBuf {
    if out.is_dir() || out.as_os_str().to_string_lossy().ends_with('/') {
        out.join(name)
    } else {
        out.to_path_buf()
    }
}

async fn download_file(s: &Session, id: &str, out: &Path) -> Result<PathBuf, CliError> {
    use sha2::Digest as _;
    let mut files = s.files().await?;
    let meta = files
        .get_file(pb::GetFileRequest { file_id: id.to_owned() })
        .await?
        .into_inner()
        .file
        .unwrap_or_default();
    let name = Path::new(&meta.name)
        .file_name()
        .map_or_else(|| format!("{id}.png"), |n| n.to_string_lossy().into_owned());
    let mut stream = files
        .read_file(pb::ReadFileRequest { file_id: id.to_owned(), offset: 0, length: 0 })
        .await?
        .into_inner();
    let mut bytes = Vec::with_capacity(usize::try_from(meta.size_bytes).unwrap_or(0));
    while let Some(chunk) = stream.next().await {
        bytes.extend(chunk?.chunk);
    }
    let digest = hex::encode(sha2::Sha256::digest(&bytes));
    if !digest.eq_ignore_ascii_case(&meta.sha256) {
        return Err(CliError::other(format!("file {id}: the download does not match its sha256; try again")));
    }
    if out.as_os_str().to_string_lossy().ends_with('/') {
        std::fs::create_dir_all(out).map_err(|e| CliError::other(format!("{}: {e}", out.display())))?;
    }
    let path = target(out, &name);
    std::fs::write(&path, &bytes).map_err(|e| CliError::other(format!("{}: {e}", path.display())))?;
    Ok(path)
}

fn status_filter(status: Option<&str>) -> Result<i32, CliError> {
    let Some(s) = status else { return Ok(0) };
    let v = match s {
        "queued" => pb::JobStatus::Queued,
        "assigned" => pb::JobStatus::Assigned,
        "running" => pb::JobStatus::Running,
        "succeeded" => pb::JobStatus::Succeeded,
        "failed" => pb::JobStatus::Failed,
        "canceled" => pb::JobStatus::Canceled,
        other => {
            return Err(CliError::usage(format!(
                "--status: unknown status {other:?} (queued, assigned, running, succeeded, failed, canceled)"
            )));
        }
    };
    Ok(v.into())
}

fn page_note(json: bool, token: &str) {
    if !json && !token.is_empty() {
        eprintln!("more: --page-token {token}");
    }
}

async fn jobs_cmd(s: &Session, cmd: &JobsCmd, json: bool) -> Result<(), CliError> {
    match cmd {
        JobsCmd::List { status, list } => {
            let resp = s
                .jobs()
                .await?
                .list_jobs(pb::ListJobsRequest {
                    page_size: list.limit,
                    page_token: list.page_token.clone(),
                    status: status_filter(status.as_deref())?,
                    project_id: list.project_id(s).await?,
                    prompt_contains: list.prompt.clone().unwrap_or_default(),
                    ..Default::default()
                })
                .await?
                .into_inner();
            let rows: Vec<Value> = resp.jobs.iter().map(view::job).collect();
            print(json, &Value::Array(rows), &["id", "status", "progress", "kind", "created", "prompt"]);
            page_note(json, &resp.next_page_token);
        }
        JobsCmd::Get { id } => {
            let job = s.jobs().await?.get_job(pb::GetJobRequest { job_id: id.clone() }).await?.into_inner();
            print(json, &view::job(&job.job.unwrap_or_default()), &[]);
        }
        JobsCmd::Watch { id, download } => watch(s, id, download.as_deref(), json).await?,
        JobsCmd::Cancel { id } => {
            let job =
                s.jobs().await?.cancel_job(pb::CancelJobRequest { job_id: id.clone() }).await?.into_inner();
            print(json, &view::job(&job.job.unwrap_or_default()), &[]);
        }
        JobsCmd::Retry { id } => {
            let job =
                s.jobs().await?.retry_job(pb::RetryJobRequest { job_id: id.clone() }).await?.into_inner();
            print(json, &view::job(&job.job.unwrap_or_default()), &[]);
        }
    }
    Ok(())
}

async fn files_cmd(s: &Session, cmd: &FilesCmd, json: bool) -> Result<(), CliError> {
    match cmd {
        FilesCmd::List { job, kind, list } => {
            let kind = match kind.as_deref() {
                None => 0,
                Some("image") => pb::JobKind::Image.into(),
                Some("video") => pb::JobKind::Video.into(),
                Some(other) => {
                    return Err(CliError::usage(format!("--kind: {other:?} is not image or video")));
                }
            };
            let resp = s
                .files()
                .await?
                .list_files(pb::ListFilesRequest {
                    page_size: list.limit,
                    page_token: list.page_token.clone(),
                    project_id: list.project_id(s).await?,
                    job_id: job.clone().unwrap_or_default(),
                    kind,
                    prompt_contains: list.prompt.clone().unwrap_or_default(),
                    ..Default::default()
                })
                .await?
                .into_inner();
            let rows: Vec<Value> = resp.files.iter().map(view::file).collect();
            print(
                json,
                &Value::Array(rows),
                &["id", "job_id", "kind", "width", "height", "size_bytes", "created"],
            );
            page_note(json, &resp.next_page_token);
        }
        FilesCmd::Get { id } => {
            let f = s.files().await?.get_file(pb::GetFileRequest { file_id: id.clone() }).await?.into_inner();
            print(json, &view::file(&f.file.unwrap_or_default()), &[]);
        }
        FilesCmd::Download { id, out } => {
            let path = download_file(s, id, out).await?;
            println!("{}", path.display());
        }
        FilesCmd::Thumbnail { id, out } => {
            let mut stream = s
                .files()
                .await?
                .get_thumbnail(pb::GetThumbnailRequest { file_id: id.clone() })
                .await?
                .into_inner();
            let mut bytes = Vec::new();
            while let Some(chunk) = stream.next().await {
                bytes.extend(chunk?.chunk);
            }
            let path = target(out, &format!("{id}-thumb.png"));
            std::fs::write(&path, &bytes).map_err(|e| CliError::other(format!("{}: {e}", path.display())))?;
            println!("{}", path.display());
        }
        FilesCmd::Delete { id } => {
            s.files().await?.delete_file(pb::DeleteFileRequest { file_id: id.clone() }).await?;
            if !json {
                println!("deleted {id}");
            }
        }
    }
    Ok(())
}

async fn projects_cmd(s: &Session, cmd: &ProjectsCmd, json: bool) -> Result<(), CliError> {
    let mut projects = s.projects().await?;
    let project = match cmd {
        ProjectsCmd::List { archived } => {
            let resp = projects
                .list_projects(pb::ListProjectsRequest {
                    page_size: 100,
                    page_token: String::new(),
                    include_archived: *archived,
                })
                .await?
                .into_inner();
            let rows: Vec<Value> = resp.projects.iter().map(view::project).collect();
            print(
                json,
                &Value::Array(rows),
                &["id", "slug", "name", "archived", "retention_days", "created"],
            );
            return Ok(());
        }
        ProjectsCmd::Create { name, slug, description, retention_days } => {
            projects
                .create_project(pb::CreateProjectRequest {
                    name: name.clone(),
                    slug: slug.clone(),
                    description: description.clone(),
                    retention_days: *retention_days,
                })
                .await?
                .into_inner()
                .project
        }
        ProjectsCmd::Get { project } => {
            let id = project_id(s, project).await?;
            projects.get_project(pb::GetProjectRequest { project_id: id }).await?.into_inner().project
        }
        ProjectsCmd::Update { project, name, description, retention_days } => {
            let id = project_id(s, project).await?;
            projects
                .update_project(pb::UpdateProjectRequest {
                    project_id: id,
                    name: name.clone(),
                    description: description.clone(),
                    retention_days: *retention_days,
                    archived: None,
                })
                .await?
                .into_inner()
                .project
        }
        ProjectsCmd::Archive { project } | ProjectsCmd::Unarchive { project } => {
            let id = project_id(s, project).await?;
            let archived = matches!(cmd, ProjectsCmd::Archive { .. });
            projects
                .update_project(pb::UpdateProjectRequest {
                    project_id: id,
                    archived: Some(archived),
                    ..Default::default()
                })
                .await?
                .into_inner()
                .project
        }
    };
    print(json, &view::project(&project.unwrap_or_default()), &[]);
    Ok(())
}

async fn characters_cmd(s: &Session, cmd: &CharactersCmd, json: bool) -> Result<(), CliError> {
    let mut projects = s.projects().await?;
    let character = match cmd {
        CharactersCmd::List { project } => {
            let id = project_id(s, project).await?;
            let resp =
                projects.list_characters(pb::ListCharactersRequest { project_id: id }).await?.into_inner();
            let rows: Vec<Value> = resp.characters.iter().map(view::character).collect();
            print(json, &Value::Array(rows), &["id", "name", "prompt_fragment", "negative_fragment"]);
            return Ok(());
        }
        CharactersCmd::Create { project, name, prompt_fragment, negative_fragment, description } => {
            let id = project_id(s, project).await?;
            projects
                .create_character(pb::CreateCharacterRequest {
                    project_id: id,
                    name: name.clone(),
                    description: description.clone(),
                    prompt_fragment: prompt_fragment.clone(),
                    negative_fragment: negative_fragment.clone(),
                })
                .await?
                .into_inner()
                .character
        }
        CharactersCmd::Update { id, name, prompt_fragment, negative_fragment, description } => {
            projects
                .update_character(pb::UpdateCharacterRequest {
                    character_id: id.clone(),
                    name: name.clone(),
                    description: description.clone(),
                    prompt_fragment: prompt_fragment.clone(),
                    negative_fragment: negative_fragment.clone(),
                })
                .await?
                .into_inner()
                .character
        }
        CharactersCmd::Delete { id } => {
            projects.delete_character(pb::DeleteCharacterRequest { character_id: id.clone() }).await?;
            if !json {
                println!("deleted {id}");
            }
            return Ok(());
        }
    };
    print(json, &view::character(&character.unwrap_or_default()), &[]);
    Ok(())
}

async fn admin_cmd(s: &Session, cmd: &AdminCmd, json: bool) -> Result<(), CliError> {
    let mut auth = s.auth().await?;
    match cmd {
        AdminCmd::Users(UsersCmd::List) => {
            let resp = auth
                .list_users(pb::ListUsersRequest { page_size: 100, page_token: String::new() })
                .await?
                .into_inner();
            let rows: Vec<Value> = resp.users.iter().map(view::user).collect();
            print(json, &Value::Array(rows), &["id", "username", "role", "disabled", "created"]);
        }
        AdminCmd::Users(UsersCmd::Create { username, admin, password_stdin }) => {
            let password = read_password(*password_stdin, "password for the new user: ")?;
            let role = if *admin { pb::Role::Admin } else { pb::Role::User };
            let user = auth
                .create_user(pb::CreateUserRequest {
                    username: username.clone(),
                    password,
                    role: role.into(),
                })
                .await?
                .into_inner()
                .user;
            print(json, &view::user(&user.unwrap_or_default()), &[]);
        }
        AdminCmd::Users(UsersCmd::Disable { id } | UsersCmd::Enable { id }) => {
            let disabled = matches!(cmd, AdminCmd::Users(UsersCmd::Disable { .. }));
            let user = auth
                .set_user_disabled(pb::SetUserDisabledRequest { user_id: id.clone(), disabled })
                .await?
                .into_inner()
                .user;
            print(json, &view::user(&user.unwrap_or_default()), &[]);
        }
        AdminCmd::Keys(KeysCmd::List { user }) => {
            let resp =
                auth.list_api_keys(pb::ListApiKeysRequest { user_id: user.clone() }).await?.into_inner();
            let rows: Vec<Value> = resp.keys.iter().map(view::api_key).collect();
            print(json, &Value::Array(rows), &["id", "name", "prefix", "revoked", "created", "last_used"]);
        }
        AdminCmd::Keys(KeysCmd::Create { name }) => {
            let resp = auth
                .create_api_key(pb::CreateApiKeyRequest { name: name.clone(), expire_time: None })
                .await?
                .into_inner();
            if json {
                let mut v = view::api_key(&resp.key.unwrap_or_default());
                v["secret"] = Value::from(resp.secret);
                print(true, &v, &[]);
            } else {
                println!("{}", resp.secret);
                eprintln!("this secret is shown once; use it with --api-key or SAKUGA_API_KEY");
            }
        }
        AdminCmd::Keys(KeysCmd::Revoke { id }) => {
            auth.revoke_api_key(pb::RevokeApiKeyRequest { key_id: id.clone() }).await?;
            if !json {
                println!("revoked {id}");
            }
        }
        AdminCmd::Audit { actor, action, limit } => {
            let resp = auth
                .list_audit_events(pb::ListAuditEventsRequest {
                    page_size: *limit,
                    page_token: String::new(),
                    actor: actor.clone(),
                    action: action.clone(),
                })
                .await?
                .into_inner();
            let rows: Vec<Value> = resp.events.iter().map(view::audit).collect();
            print(json, &Value::Array(rows), &["time", "actor", "action", "target", "result"]);
        }
    }
    Ok(())
}
