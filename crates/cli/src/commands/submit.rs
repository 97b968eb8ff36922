//! `submit`: a job from the command line's parameters, then optionally followed to its end.

use sakuga_proto::v1 as pb;

use super::{jobs, shared::project_id};
use crate::{CliError, args::SubmitArgs, output, session::Session};

/// Submits a job; with `--watch` or `--download`, follows it.
pub(super) async fn run(s: &Session, a: &SubmitArgs, json: bool) -> Result<(), CliError> {
    let project = match &a.project {
        Some(p) => project_id(s, p).await?,
        None => String::new(),
    };
    let character_ids = character_ids(s, &project, &a.characters).await?;
    let resp = s.jobs().await?.submit_job(request(a, project, character_ids)).await?.into_inner();
    let job = resp.job.unwrap_or_default();
    if a.watch || a.download.is_some() {
        if !json {
            eprintln!(
                "job {} {}",
                job.id,
                if resp.deduplicated { "(already submitted)" } else { "submitted" }
            );
        }
        return jobs::watch(s, &job.id, a.download.as_deref(), json).await;
    }
    if json {
        output::print(true, &output::Job::from(&job), &[]);
    } else {
        println!("{}", job.id);
    }
    Ok(())
}

/// The SubmitJob request, with the project and characters already resolved to ids.
fn request(a: &SubmitArgs, project_id: String, character_ids: Vec<String>) -> pb::SubmitJobRequest {
    pb::SubmitJobRequest {
        spec: Some(spec(a)),
        project_id,
        character_ids,
        idempotency_key: a.idempotency_key.clone().unwrap_or_default(),
        priority: a.priority,
        reuse_result: a.reuse_result,
        webhook_id: a.webhook.clone().unwrap_or_default(),
    }
}

/// The ids of the characters named (by id or name) in `project`.
async fn character_ids(s: &Session, project: &str, names: &[String]) -> Result<Vec<String>, CliError> {
    if !names.is_empty() && project.is_empty() {
        return Err(CliError::usage("--character needs --project"));
    }
    let mut ids = Vec::new();
    if !names.is_empty() {
        let known = s
            .projects()
            .await?
            .list_characters(pb::ListCharactersRequest { project_id: project.to_owned() })
            .await?
            .into_inner()
            .characters;
        for c in names {
            let found = known.iter().find(|k| k.id == *c || k.name == *c).ok_or_else(|| {
                CliError::not_found(format!(
                    "no character {c:?} in the project (see `sakuga characters list`)"
                ))
            })?;
            ids.push(found.id.clone());
        }
    }
    Ok(ids)
}

/// The job's parameters.
fn spec(a: &SubmitArgs) -> pb::JobSpec {
    pb::JobSpec {
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
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::args::{Cli, Command};

    fn submit(args: &[&str]) -> pb::SubmitJobRequest {
        let cli = Cli::try_parse_from([&["sakuga", "submit"], args].concat()).unwrap();
        let Command::Submit(a) = cli.command else { panic!("not submit") };
        request(&a, String::new(), Vec::new())
    }

    #[test]
    fn a_job_names_the_webhook_given_and_none_otherwise() {
        let w = "0199a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b";
        assert_eq!(submit(&["a fox at dusk", "--webhook", w]).webhook_id, w);
        assert_eq!(submit(&["a fox at dusk"]).webhook_id, "");
    }
}
