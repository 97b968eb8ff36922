//! The driver of `make chaos` (see scripts/chaos.sh, which starts the stack and runs this).
//!
//! It submits `--jobs` jobs paced over `--submit-secs` with an idempotency key each, retrying
//! any call that fails (a restarting scheduler, Redis or PostgreSQL away), while a timeline
//! of faults runs through `--script act ...`. When every job is finished it stops the faults
//! and checks that nothing was lost or done twice:
//! - every submitted job succeeded;
//! - one job per submit: the scheduler holds exactly `--jobs` jobs of this run;
//! - one completion per job: the scheduler logged "job succeeded" once for each;
//! - one set of files per job: each job names one file, the organizer lists exactly one
//!   file per job and that file is the one the job names;
//! - the bytes are right: every file reads back (ReadFile) with its record's sha256;
//! - no orphan bytes: every key in the store (the storage folder, or with `--s3-endpoint`
//!   the bucket) is a recorded file's bytes or thumbnail, once the reconciler had
//!   `--orphan-wait-secs` to remove what a killed organizer left; every record's bytes are
//!   there.
//!
//! It prints the counts and exits with 1 on any loss, duplicate or orphan.

#![allow(clippy::cast_possible_truncation, clippy::cast_precision_loss, clippy::too_many_lines)]

mod store;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use clap::Parser;
use futures_util::{StreamExt as _, TryStreamExt as _};
use sakuga_mesh::{retry::Backoff, tls::MeshTls};
use sakuga_proto::v1::{
    Job, JobKind, JobSpec, JobStatus, ListFilesRequest, ListJobsRequest, LoginRequest, ReadFileRequest,
    SubmitJobRequest, auth_service_client::AuthServiceClient, file_service_client::FileServiceClient,
    job_service_client::JobServiceClient,
};
use sha2::{Digest as _, Sha256};
use tokio::process::Command;
use tonic::{Request, transport::Channel};

#[derive(Parser, Debug)]
#[command(about = "make chaos: jobs under faults, then the exactly-once checks")]
struct Args {
    /// The chaos stack's folder (stack.env, certs, logs, files).
    #[arg(long)]
    dev: PathBuf,
    /// Jobs to submit.
    #[arg(long, default_value_t = 1000)]
    jobs: usize,
    /// Seconds over which the submits are spread.
    #[arg(long, default_value_t = 40)]
    submit_secs: u64,
    /// The script whose `act` subcommand performs a fault.
    #[arg(long)]
    script: PathBuf,
    /// Generator names, space-separated, killed in turn.
    #[arg(long)]
    generators: String,
    /// Organizer names, space-separated, SIGKILLed in turn every 3 s (none by default).
    #[arg(long, default_value = "")]
    organizers: String,
    /// The S3 endpoint of the bucket the organizers use; without it, the storage folder.
    #[arg(long)]
    s3_endpoint: Option<String>,
    /// Longest wait for the reconciler to remove bytes without a record.
    #[arg(long, default_value_t = 0)]
    orphan_wait_secs: u64,
    /// Longest wait for every job to finish after the last submit.
    #[arg(long, default_value_t = 600)]
    finish_secs: u64,
}

/// The scheduled faults: seconds from the first submit, action and arguments.
const TIMELINE: &[(u64, &[&str])] = &[
    (5, &["restart", "scheduler"]),
    (10, &["restart", "organizer"]),
    (14, &["redis-stop"]),
    (24, &["redis-start"]),
    (26, &["pg-restart"]),
    (30, &["restart", "scheduler"]),
];

struct Stack {
    tls: MeshTls,
    auth: String,
    scheduler: Channel,
    organizer: Channel,
    token: Mutex<String>,
    password: String,
}

fn stack_env(dev: &Path) -> anyhow::Result<HashMap<String, String>> {
    let text = std::fs::read_to_string(dev.join("stack.env")).context("stack.env")?;
    Ok(text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.trim_matches(['\'', '"']).to_owned()))
        .collect())
}

impl Stack {
    fn open(dev: &Path) -> anyhow::Result<Self> {
        sakuga_mesh::tls::install_crypto_provider();
        let env = stack_env(dev)?;
        let get = |k: &str| env.get(k).cloned().with_context(|| format!("stack.env has no {k}"));
        let read = |k: &str| -> anyhow::Result<String> {
            std::fs::read_to_string(get(k)?).with_context(|| format!("reading {k}"))
        };
        let tls = MeshTls::from_pem(
            "chaos",
            &read("SAKUGA_CLIENT_CERT")?,
            &read("SAKUGA_CLIENT_KEY")?,
            &read("SAKUGA_CA")?,
        )?;
        let password = std::fs::read_to_string(dev.join("admin.password"))?.trim().to_owned();
        Ok(Self {
            scheduler: tls.channel(&get("SAKUGA_SCHEDULER_ADDR")?)?,
            organizer: tls.channel(&get("SAKUGA_ORGANIZER_ADDR")?)?,
            auth: get("SAKUGA_AUTH_ADDR")?,
            tls,
            token: Mutex::new(String::new()),
            password,
        })
    }

    async fn login(&self) -> anyhow::Result<()> {
        let mut auth = AuthServiceClient::new(self.tls.channel(&self.auth)?);
        let resp = auth
            .login(LoginRequest { username: "admin".into(), password: self.password.clone() })
            .await?
            .into_inner();
        *self.token.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
            resp.tokens.context("login returned no tokens")?.access_token;
        Ok(())
    }

    fn request<T>(&self, msg: T) -> Request<T> {
        let mut req = Request::new(msg);
        let token = self.token.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        if let Ok(v) = format!("Bearer {token}").parse() {
            req.metadata_mut().insert("authorization", v);
        }
        req.set_timeout(Duration::from_secs(10));
        req
    }
}

/// Runs `op` until it succeeds, logging in again when the token is refused; counts retries.
async fn retry<T, F, Fut>(stack: &Stack, retries: &AtomicUsize, what: &str, mut op: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, tonic::Status>>,
{
    let deadline = Instant::now() + Duration::from_mins(5);
    let mut wait = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(s) if Instant::now() > deadline => bail!("{what}: still failing after 5 minutes: {s}"),
            Err(s) => {
                retries.fetch_add(1, Ordering::Relaxed);
                if s.code() == tonic::Code::Unauthenticated {
                    let _ = stack.login().await;
                }
                tokio::time::sleep(wait.next_delay()).await;
            }
        }
    }
}

async fn act(script: &Path, args: &[&str], log: &Mutex<Vec<String>>, started: Instant) {
    let t = started.elapsed().as_secs_f64();
    let out = Command::new("bash").arg(script).arg("act").args(args).output().await;
    let result = match out {
        Ok(o) if o.status.success() => "ok".to_owned(),
        Ok(o) => format!("FAILED: {}", String::from_utf8_lossy(&o.stderr).trim()),
        Err(e) => format!("FAILED: {e}"),
    };
    let line = format!("{t:6.1}s  {}  {result}", args.join(" "));
    println!("  fault {line}");
    log.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(line);
}

#[tokio::main]
async fn main() -> anyhow::Result<std::process::ExitCode> {
    let args = Args::parse();
    let stack = Arc::new(Stack::open(&args.dev)?);
    let retries = Arc::new(AtomicUsize::new(0));
    retry(&stack, &retries, "login", || async {
        stack.login().await.map_err(|e| tonic::Status::unavailable(e.to_string()))
    })
    .await?;
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let tag = format!("chaos-{run}");
    println!("chaos run {tag}: {} jobs over {} s", args.jobs, args.submit_secs);

    let started = Instant::now();
    let faults: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    // A generator killed every 2 s, in turn, and an organizer (if named) every 3 s, until
    // every job is finished.
    let killers = [(&args.generators, 2), (&args.organizers, 3)].map(|(names, every)| {
        let (stop, faults, script) = (stop.clone(), faults.clone(), args.script.clone());
        let names: Vec<String> = names.split_whitespace().map(str::to_owned).collect();
        tokio::spawn(async move {
            let mut i = 0usize;
            while !names.is_empty() && !stop.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_secs(every)).await;
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                act(&script, &["kill", &names[i % names.len()]], &faults, started).await;
                i += 1;
            }
        })
    });
    let timeline = {
        let (faults, script) = (faults.clone(), args.script.clone());
        tokio::spawn(async move {
            for (at, what) in TIMELINE {
                tokio::time::sleep_until((started + Duration::from_secs(*at)).into()).await;
                act(&script, what, &faults, started).await;
            }
        })
    };

    // Submits, paced; each retried until the scheduler takes it (idempotency key: no duplicate).
    let ids: Arc<Mutex<BTreeMap<usize, String>>> = Arc::default();
    let mut submits = Vec::new();
    let period = Duration::from_secs_f64(args.submit_secs as f64 / args.jobs.max(1) as f64);
    for i in 0..args.jobs {
        tokio::time::sleep_until((started + period * i as u32).into()).await;
        let (stack, retries, ids, tag) = (stack.clone(), retries.clone(), ids.clone(), tag.clone());
        submits.push(tokio::spawn(async move {
            let spec = JobSpec {
                kind: JobKind::Image.into(),
                prompt: format!("{tag} job {i}"),
                width: 64,
                height: 64,
                steps: 1,
                backend: "benchmark".into(),
                ..JobSpec::default()
            };
            let req = SubmitJobRequest {
                spec: Some(spec),
                idempotency_key: format!("{tag}-{i}"),
                ..Default::default()
            };
            let resp = retry(&stack, &retries, "SubmitJob", || {
                let mut c = JobServiceClient::new(stack.scheduler.clone());
                let r = stack.request(req.clone());
                async move { c.submit_job(r).await }
            })
            .await?;
            let id = resp.into_inner().job.context("SubmitJob returned no job")?.id;
            ids.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(i, id);
            anyhow::Ok(())
        }));
    }
    for s in submits {
        s.await??;
    }
    let ids: Vec<String> =
        ids.lock().unwrap_or_else(std::sync::PoisonError::into_inner).values().cloned().collect();
    println!(
        "  all {} submitted after {:.1} s ({} calls retried so far)",
        ids.len(),
        started.elapsed().as_secs_f64(),
        retries.load(Ordering::Relaxed)
    );

    // Wait until every job is finished, listing this run's jobs once a second.
    let finish_by = Instant::now() + Duration::from_secs(args.finish_secs);
    let mut jobs: HashMap<String, Job> = HashMap::new();
    loop {
        jobs.clear();
        let mut token = String::new();
        loop {
            let page = retry(&stack, &retries, "ListJobs", || {
                let mut c = JobServiceClient::new(stack.scheduler.clone());
                let r = stack.request(ListJobsRequest {
                    page_size: 100,
                    page_token: token.clone(),
                    prompt_contains: tag.clone(),
                    ..Default::default()
                });
                async move { c.list_jobs(r).await }
            })
            .await?
            .into_inner();
            for j in page.jobs {
                jobs.insert(j.id.clone(), j);
            }
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        let pending = ids
            .iter()
            .filter(|id| {
                !jobs.get(*id).is_some_and(|j| {
                    matches!(
                        JobStatus::try_from(j.status),
                        Ok(JobStatus::Succeeded | JobStatus::Failed | JobStatus::Canceled)
                    )
                })
            })
            .count();
        if pending == 0 {
            break;
        }
        if Instant::now() > finish_by {
            println!("  {pending} jobs still unfinished after {} s", args.finish_secs);
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let wall = started.elapsed();
    timeline.await?;
    stop.store(true, Ordering::SeqCst);
    for killer in killers {
        killer.await?;
    }
    // Running generators get a moment to settle (a killed one's restart is already under way).
    tokio::time::sleep(Duration::from_secs(2)).await;

    // ---------------------------------------------------------------- checks
    let succeeded = jobs.values().filter(|j| j.status == JobStatus::Succeeded as i32).count();
    let failed: Vec<_> = jobs.values().filter(|j| j.status != JobStatus::Succeeded as i32).collect();
    let lost = args.jobs - succeeded;

    // One job per submit: the list above holds every job of this run.
    let listed = jobs.len();
    let duplicated_jobs = listed.saturating_sub(args.jobs);

    // One completion per job, from the scheduler's log (JSON lines, appended across restarts).
    let log = std::fs::read_to_string(args.dev.join("logs/scheduler.log")).context("scheduler log")?;
    let mut completions: HashMap<String, usize> = HashMap::new();
    for line in log.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        if v["fields"]["message"] == "job succeeded"
            && let Some(id) = v["fields"]["job_id"].as_str()
        {
            *completions.entry(id.to_owned()).or_default() += 1;
        }
    }
    let completed_twice = ids.iter().filter(|id| completions.get(*id).copied().unwrap_or(0) > 1).count();
    let unlogged = ids
        .iter()
        .filter(|id| jobs.get(*id).is_some_and(|j| j.status == JobStatus::Succeeded as i32))
        .filter(|id| !completions.contains_key(*id))
        .count();

    // One set of files per job.
    let ours: HashSet<&String> = ids.iter().collect();
    let mut files_by_job: HashMap<String, Vec<String>> = HashMap::new();
    let mut sha_of: HashMap<String, String> = HashMap::new();
    let mut token = String::new();
    loop {
        let page = retry(&stack, &retries, "ListFiles", || {
            let mut c = FileServiceClient::new(stack.organizer.clone());
            let r = stack.request(ListFilesRequest {
                page_size: 100,
                page_token: token.clone(),
                ..Default::default()
            });
            async move { c.list_files(r).await }
        })
        .await?
        .into_inner();
        for f in page.files {
            sha_of.insert(f.id.clone(), f.sha256);
            files_by_job.entry(f.job_id.clone()).or_default().push(f.id);
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let mut file_mismatch = 0usize;
    let mut duplicated_files = 0usize;
    for id in &ids {
        let named = jobs.get(id).map(|j| j.file_ids.clone()).unwrap_or_default();
        let stored = files_by_job.get(id).cloned().unwrap_or_default();
        duplicated_files += stored.len().saturating_sub(1);
        let mut a = named.clone();
        let mut b = stored.clone();
        a.sort();
        b.sort();
        if jobs.get(id).is_some_and(|j| j.status == JobStatus::Succeeded as i32) && (a != b || a.len() != 1) {
            file_mismatch += 1;
        }
    }
    let foreign_files = files_by_job.keys().filter(|j| !ours.contains(j)).count();

    // Every file's bytes, read back, are the ones its record names.
    let reads = futures_util::stream::iter(sha_of)
        .map(|(id, sha)| {
            let (stack, retries) = (stack.clone(), retries.clone());
            async move {
                let bytes = read_file(&stack, &retries, &id).await?;
                anyhow::Ok((hex::encode(Sha256::digest(&bytes)) != sha).then_some(id))
            }
        })
        .buffer_unordered(8)
        .try_collect::<Vec<_>>()
        .await?;
    let wrong_bytes: Vec<String> = reads.into_iter().flatten().collect();

    // No orphan bytes: the store against the keys the records' bytes are under
    // (identical bytes share one blob, so several records may name the same key).
    let keys_out = Command::new("bash").arg(&args.script).arg("act").arg("storage-keys").output().await?;
    anyhow::ensure!(keys_out.status.success(), "storage-keys: {}", String::from_utf8_lossy(&keys_out.stderr));
    let keys: HashSet<String> =
        String::from_utf8_lossy(&keys_out.stdout).lines().map(str::to_owned).collect();
    // Bytes a SIGKILLed organizer wrote without their record are the reconciler's, after its
    // grace period: looked at again until none is left or the wait is over.
    let store = store::Store::open(&args.dev, args.s3_endpoint.as_deref())?;
    let orphan_deadline = Instant::now() + Duration::from_secs(args.orphan_wait_secs);
    let (on_disk, orphans) = loop {
        let stored = store.keys().await?;
        let orphans: Vec<String> = stored
            .iter()
            .filter(|k| {
                let key = k.strip_prefix(".thumbs/").unwrap_or(k);
                !keys.contains(key)
            })
            .cloned()
            .collect();
        if orphans.is_empty() || Instant::now() > orphan_deadline {
            break (stored, orphans);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    let on_disk_set: HashSet<&String> = on_disk.iter().collect();
    let missing = keys.iter().filter(|k| !on_disk_set.contains(k)).count();

    // With replicas: each stored some of the files (else the run tried none of them).
    let mut stored_by = Vec::new();
    for name in std::iter::once("organizer").chain(args.organizers.split_whitespace()) {
        let log = std::fs::read_to_string(args.dev.join(format!("logs/{name}.log"))).unwrap_or_default();
        stored_by.push((name, log.lines().filter(|l| l.contains(r#""message":"artifact stored""#)).count()));
    }
    let idle_replicas =
        if stored_by.len() > 1 { stored_by.iter().filter(|(_, n)| *n == 0).count() } else { 0 };

    // ---------------------------------------------------------------- report
    let mut attempts: BTreeMap<u32, usize> = BTreeMap::new();
    for j in jobs.values() {
        *attempts.entry(j.attempts).or_default() += 1;
    }
    let faults = faults.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    let failed_faults = faults.iter().filter(|f| f.contains("FAILED")).count();
    let kills = faults.iter().filter(|f| f.contains("  kill generator")).count();
    let organizer_kills = faults.iter().filter(|f| f.contains("  kill organizer")).count();
    println!();
    println!(
        "chaos run {tag}: {:.1} s, {kills} generator kills, {organizer_kills} organizer kills, {} scheduled faults",
        wall.as_secs_f64(),
        TIMELINE.len()
    );
    println!("  submitted      {}", ids.len());
    println!("  succeeded      {succeeded}");
    println!("  lost           {lost}");
    println!(
        "  duplicated     {} (jobs {duplicated_jobs}, completions {completed_twice}, files {duplicated_files})",
        duplicated_jobs + completed_twice + duplicated_files
    );
    println!("  orphans        {} (objects in the store without a record)", orphans.len());
    println!("  missing bytes  {missing} (records without their object)");
    println!("  wrong bytes    {} (files whose bytes do not have their sha256)", wrong_bytes.len());
    println!(
        "  file sets      {file_mismatch} jobs whose files differ from the one file they name; {foreign_files} files of unknown jobs"
    );
    println!(
        "  attempts       {}",
        attempts.iter().map(|(a, n)| format!("{n} jobs × {a}")).collect::<Vec<_>>().join(", ")
    );
    println!("  retried calls  {}", retries.load(Ordering::Relaxed));
    println!(
        "  stored by      {}",
        stored_by.iter().map(|(name, n)| format!("{name} {n}")).collect::<Vec<_>>().join(", ")
    );
    if idle_replicas > 0 {
        println!("  {idle_replicas} organizer replicas stored nothing: the run did not use every replica");
    }
    if unlogged > 0 {
        println!("  note: {unlogged} succeeded jobs have no \"job succeeded\" line in the scheduler log");
    }
    for j in failed.iter().take(10) {
        println!("  not succeeded: {} status {} after {} attempts: {}", j.id, j.status, j.attempts, j.error);
    }
    for o in orphans.iter().take(10) {
        println!("  orphan: {o}");
    }
    for f in wrong_bytes.iter().take(10) {
        println!("  wrong bytes: file {f}");
    }
    let bad = lost
        + duplicated_jobs
        + completed_twice
        + duplicated_files
        + orphans.len()
        + missing
        + wrong_bytes.len()
        + file_mismatch
        + foreign_files
        + unlogged
        + idle_replicas
        + failed_faults;
    if failed_faults > 0 {
        println!("  {failed_faults} faults could not be carried out:");
        for f in faults.iter().filter(|f| f.contains("FAILED")) {
            // The action and the end of its stderr: the summary is what a truncated log keeps.
            let lines: Vec<&str> = f.lines().collect();
            let tail = lines.len().saturating_sub(12).max(1);
            println!("    {}", lines[0]);
            for l in lines.iter().skip(tail) {
                println!("      {l}");
            }
        }
    }
    if bad == 0 {
        println!("PASS: {succeeded} succeeded, 0 lost, 0 duplicated, 0 orphans, every file's bytes right");
        Ok(std::process::ExitCode::SUCCESS)
    } else {
        println!("FAIL");
        Ok(std::process::ExitCode::FAILURE)
    }
}

/// A file's bytes through ReadFile, retried like every other call.
async fn read_file(stack: &Stack, retries: &AtomicUsize, id: &str) -> anyhow::Result<Vec<u8>> {
    retry(stack, retries, "ReadFile", || {
        let mut c = FileServiceClient::new(stack.organizer.clone());
        let r = stack.request(ReadFileRequest { file_id: id.to_owned(), offset: 0, length: 0 });
        async move {
            let mut s = c.read_file(r).await?.into_inner();
            let mut out = Vec::new();
            while let Some(m) = s.message().await? {
                out.extend(m.chunk);
            }
            Ok(out)
        }
    })
    .await
}
