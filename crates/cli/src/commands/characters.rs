//! `characters …`: the characters of a project.

use sakuga_proto::v1 as pb;

use super::shared::project_id;
use crate::{CliError, args::CharactersCmd, output, session::Session};

/// Runs a `characters` command.
pub(super) async fn run(s: &Session, cmd: &CharactersCmd, json: bool) -> Result<(), CliError> {
    let mut projects = s.projects().await?;
    let character = match cmd {
        CharactersCmd::List { project } => {
            let id = project_id(s, project).await?;
            let resp =
                projects.list_characters(pb::ListCharactersRequest { project_id: id }).await?.into_inner();
            let rows: Vec<output::Character> = output::all(&resp.characters);
            output::print(json, &rows, &["id", "name", "prompt_fragment", "negative_fragment"]);
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
    output::print(json, &output::Character::from(&character.unwrap_or_default()), &[]);
    Ok(())
}
