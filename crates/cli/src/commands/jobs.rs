//! `jobs …`, and following one job to its end (also for `submit --watch`).

use std::path::Path;

use sakuga_proto::v1::{self as pb, job_event::Kind as EventKind};
use tokio_stream::StreamExt as _;

use super::{
    files,
    shared::{list_project_id, page_note},
};
use crate::{CliError, args::JobsCmd, output, progress::Bar, session::Session};

/// Runs a `jobs` command.
pub(super) async fn run(s: &Session, cmd: &JobsCmd, json: bool) -> Result<(), CliError> {
    let job = match cmd {
        JobsCmd::List { status, list } => {
            let resp = s
                .jobs()
                .await?
                .list_jobs(pb::ListJobsRequest {
                    page_size: list.limit,
                    page_token: list.page_token.clone(),
                    status: status_filter(status.as_deref())?,
                    project_id: list_project_id(s, list).await?,
                    prompt_contains: list.prompt.clone().unwrap_or_default(),
                    ..Default::default()
                })
                .await?
                .into_inner();
            let rows: Vec<output::Job> = output::all(&resp.jobs);
            output::print(json, &rows, &["id", "status", "progress", "kind", "created", "prompt"]);
            page_note(json, &resp.next_page_token);
            return Ok(());
        }
        JobsCmd::Watch { id, download } => return watch(s, id, download.as_deref(), json).await,
        JobsCmd::Get { id } => {
            s.jobs().await?.get_job(pb::GetJobRequest { job_id: id.clone() }).await?.into_inner().job
        }
        JobsCmd::Cancel { id } => {
            s.jobs().await?.cancel_job(pb::CancelJobRequest { job_id: id.clone() }).await?.into_inner().job
        }
        JobsCmd::Retry { id } => {
            s.jobs().await?.retry_job(pb::RetryJobRequest { job_id: id.clone() }).await?.into_inner().job
        }
    };
    output::print(json, &output::Job::from(&job.unwrap_or_default()), &[]);
    Ok(())
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

/// Follows a job to its end with a progress bar; exit 5 when it fails or is canceled. When
/// it succeeds, its files are saved in the folder `download` (created if need be).
pub(super) async fn watch(
    s: &Session,
    id: &str,
    download: Option<&Path>,
    json: bool,
) -> Result<(), CliError> {
    let mut jobs = s.jobs().await?;
    let mut stream = jobs.watch_job(pb::WatchJobRequest { job_id: id.to_owned() }).await?.into_inner();
    let mut bar = Bar::new(&id[..8.min(id.len())]);
    let mut last_status = String::new();
    while let Some(msg) = stream.next().await {
        let Some(event) = msg?.event else { continue };
        match event.kind {
            Some(EventKind::Snapshot(j)) => {
                let status = output::status_name(j.status).to_owned();
                let p = j.progress.unwrap_or_default();
                bar.update(p.step, p.total_steps, &status);
                last_status = status;
            }
            Some(EventKind::Progress(p)) => bar.update(p.step, p.total_steps, &p.stage),
            Some(EventKind::StatusChange(c)) => {
                let status = output::status_name(c.status);
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
        output::print(true, &output::Job::from(&job), &[]);
    } else if status == i32::from(pb::JobStatus::Succeeded) {
        println!("{}", job.file_ids.join("\n"));
        eprintln!("succeeded in {:.1}s: {} file(s)", bar.elapsed().as_secs_f64(), job.file_ids.len());
    }
    if status != i32::from(pb::JobStatus::Succeeded) {
        let name = output::status_name(status);
        let why = if job.error.is_empty() { String::new() } else { format!(": {}", job.error) };
        return Err(CliError::job_ended(format!("job {id} {name}{why}")));
    }
    if let Some(dir) = download {
        // A folder, even when it does not exist yet and is not written with a trailing `/`:
        // every file of a batch lands in it under its own name, instead of each
        // overwriting the last at `dir` itself.
        files::create_folder(dir)?;
        for f in &job.file_ids {
            let path = files::download(s, f, dir).await?;
            if !json {
                eprintln!("saved {}", path.display());
            }
        }
    }
    Ok(())
}
