//! The command line as clap parses it: global flags, commands and their arguments. Only
//! declarations live here; `commands` runs them.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

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
    /// Webhooks: signed POSTs to your endpoints when jobs change state, and their deliveries.
    #[command(subcommand)]
    Webhooks(WebhooksCmd),
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
    /// Also send this job's events to this webhook endpoint (id, see `sakuga webhooks list`),
    /// whatever its project filter.
    #[arg(long, value_name = "ID")]
    pub webhook: Option<String>,
    /// Show live progress until the job ends.
    #[arg(long)]
    pub watch: bool,
    /// When the job succeeds, download its files into this folder, created if need be (implies --watch).
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
        /// Download the files into this folder (created if need be) when it succeeds.
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

/// Paging of the list commands that take no other filters.
#[derive(Debug, Args)]
pub struct PageArgs {
    /// Page size (1..=100).
    #[arg(long, default_value_t = 20)]
    pub limit: u32,
    /// Continue from a previous page.
    #[arg(long, default_value = "")]
    pub page_token: String,
}

/// `webhooks …`
#[derive(Debug, Subcommand)]
pub enum WebhooksCmd {
    /// Register an endpoint; its signing secret is shown once.
    Create(CreateWebhookArgs),
    /// Your endpoints, newest first.
    List {
        /// Paging.
        #[command(flatten)]
        page: PageArgs,
    },
    /// One endpoint.
    Get {
        /// Webhook id.
        id: String,
    },
    /// Change an endpoint; what is not given stays.
    Update(UpdateWebhookArgs),
    /// Delete an endpoint and its delivery history.
    Delete {
        /// Webhook id.
        id: String,
    },
    /// Send a signed `webhook.test` event now and show what the endpoint answered.
    Test {
        /// Webhook id.
        id: String,
    },
    /// A new signing secret, shown once; the previous one keeps signing beside it for a while.
    RotateSecret {
        /// Webhook id.
        id: String,
        /// How long the previous secret keeps signing: seconds, or a duration such as 12h,
        /// 1d, 1h30m (at most 7d; 0 retires it at once). Default: the service's, one day.
        #[arg(long, value_name = "DURATION")]
        overlap: Option<String>,
    },
    /// Deliveries to your endpoints, newest first.
    Deliveries {
        /// Only this endpoint's (webhook id).
        #[arg(long, value_name = "ID")]
        webhook: Option<String>,
        /// Only this job's.
        #[arg(long, value_name = "ID")]
        job: Option<String>,
        /// Only this state (pending, delivered, failed).
        #[arg(long)]
        state: Option<String>,
        /// Paging.
        #[command(flatten)]
        page: PageArgs,
    },
    /// Send a delivered or failed delivery again (same webhook-id and payload).
    Redeliver {
        /// Delivery id.
        delivery_id: String,
    },
}

/// `webhooks create …`
#[derive(Debug, Args)]
pub struct CreateWebhookArgs {
    /// Where events are POSTed (https://).
    #[arg(long)]
    pub url: String,
    /// Event to receive: job.started, job.succeeded, job.failed, job.canceled (repeat for
    /// several).
    #[arg(long = "event", value_name = "EVENT", required = true)]
    pub events: Vec<String>,
    /// Only jobs of this project (id or slug); default: every project.
    #[arg(long)]
    pub project: Option<String>,
    /// Only jobs submitted with `--webhook` naming this endpoint.
    #[arg(long)]
    pub only_named_jobs: bool,
    /// Description.
    #[arg(long, default_value = "")]
    pub description: String,
    /// Deliveries in flight to it at once (1..=64; default 4).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrency: Option<u32>,
    /// How long one attempt may take, in milliseconds (1000..=60000; default 10000).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub timeout_ms: Option<u32>,
}

/// `webhooks update …`
#[derive(Debug, Args)]
pub struct UpdateWebhookArgs {
    /// Webhook id.
    pub id: String,
    /// New URL.
    #[arg(long)]
    pub url: Option<String>,
    /// Event to receive (repeat for several); replaces the whole list.
    #[arg(long = "event", value_name = "EVENT")]
    pub events: Vec<String>,
    /// Only jobs of this project (id or slug); "" for every project.
    #[arg(long)]
    pub project: Option<String>,
    /// Only jobs submitted with `--webhook` naming this endpoint.
    #[arg(long, value_name = "true|false")]
    pub only_named_jobs: Option<bool>,
    /// Enable it (clears why it was disabled and its failure count).
    #[arg(long, conflicts_with = "disable")]
    pub enable: bool,
    /// Disable it: no new deliveries, pending ones wait.
    #[arg(long)]
    pub disable: bool,
    /// New description.
    #[arg(long)]
    pub description: Option<String>,
    /// Deliveries in flight to it at once (1..=64).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrency: Option<u32>,
    /// How long one attempt may take, in milliseconds (1000..=60000).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub timeout_ms: Option<u32>,
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
