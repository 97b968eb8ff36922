//! Projects (name, slug unique per owner, description, archived, file retention) and their
//! characters (prompt and negative fragments composed into jobs). Everything is scoped to
//! an owner (`None`: any, for admins); another user's project is NOT_FOUND. The gRPC
//! `ProjectService` over this is in `api::projects`.

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use tokio_postgres::Row;
use uuid::Uuid;

use crate::{
    error::SchedulerError,
    validate::{text_field, uuid_field},
};

const PROJECT_COLUMNS: &str = "id, owner_id, name, slug, description, archived, retention_days, created_at";
const CHARACTER_COLUMNS: &str = "id, project_id, name, description, prompt_fragment, negative_fragment";
/// Characters one job may name.
pub const MAX_CHARACTERS_PER_JOB: usize = 8;

/// A project.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Project {
    /// Id.
    pub id: Uuid,
    /// Owner principal.
    pub owner_id: String,
    /// Display name.
    pub name: String,
    /// Folder name of its files, unique per owner; never changes.
    pub slug: String,
    /// Free text.
    pub description: String,
    /// No new jobs while archived.
    pub archived: bool,
    /// Days its files are kept (0: for ever).
    pub retention_days: u32,
    /// Created.
    pub created_at: DateTime<Utc>,
}

/// A character of a project.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Character {
    /// Id.
    pub id: Uuid,
    /// Its project.
    pub project_id: Uuid,
    /// Name, unique in the project.
    pub name: String,
    /// Free text.
    pub description: String,
    /// Composed into the prompt of jobs naming it.
    pub prompt_fragment: String,
    /// Composed into the negative prompt of jobs naming it.
    pub negative_fragment: String,
}

/// Changes to a project; `None` keeps the field.
#[derive(Debug, Clone, Default)]
pub struct ProjectChanges {
    /// New name.
    pub name: Option<String>,
    /// New description.
    pub description: Option<String>,
    /// New file retention.
    pub retention_days: Option<u32>,
    /// Archive or unarchive.
    pub archived: Option<bool>,
}

/// Changes to a character; `None` keeps the field.
#[derive(Debug, Clone, Default)]
pub struct CharacterChanges {
    /// New name.
    pub name: Option<String>,
    /// New description.
    pub description: Option<String>,
    /// New prompt fragment.
    pub prompt_fragment: Option<String>,
    /// New negative fragment.
    pub negative_fragment: Option<String>,
}

fn project_from_row(r: &Row) -> Project {
    Project {
        id: r.get("id"),
        owner_id: r.get("owner_id"),
        name: r.get("name"),
        slug: r.get("slug"),
        description: r.get("description"),
        archived: r.get("archived"),
        retention_days: u32::try_from(r.get::<_, i32>("retention_days")).unwrap_or(0),
        created_at: r.get("created_at"),
    }
}

fn character_from_row(r: &Row) -> Character {
    Character {
        id: r.get("id"),
        project_id: r.get("project_id"),
        name: r.get("name"),
        description: r.get("description"),
        prompt_fragment: r.get("prompt_fragment"),
        negative_fragment: r.get("negative_fragment"),
    }
}

/// A slug from a name: lowercase ASCII letters and digits, other runs become one `-`.
pub fn slugify(name: &str) -> String {
    let mut slug = String::new();
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            slug.push(c.to_ascii_lowercase());
        } else if !slug.ends_with('-') && !slug.is_empty() {
            slug.push('-');
        }
    }
    slug.truncate(63);
    slug.trim_end_matches('-').to_owned()
}

fn check_slug(slug: &str) -> Result<String, SchedulerError> {
    let ok = !slug.is_empty()
        && slug.len() <= 63
        && slug.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && slug.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !ok {
        return Err(SchedulerError::invalid(
            "slug",
            "must be 1 to 63 lowercase letters, digits or '-', starting with a letter or digit",
        ));
    }
    if slug == "unsorted" {
        return Err(SchedulerError::invalid("slug", "\"unsorted\" is the folder of files without a project"));
    }
    Ok(slug.to_owned())
}

fn check_retention(days: u32) -> Result<i32, SchedulerError> {
    i32::try_from(days)
        .ok()
        .filter(|d| *d <= 36_500)
        .ok_or_else(|| SchedulerError::invalid("retention_days", "must be at most 36500 (0 keeps files)"))
}

/// ALREADY_EXISTS with `why` for a unique violation, else the database error.
fn conflict(e: tokio_postgres::Error, why: impl FnOnce() -> String) -> SchedulerError {
    if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) {
        SchedulerError::AlreadyExists(why())
    } else {
        e.into()
    }
}

/// What a job gets from its project and characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Composition {
    /// Prompt with the characters' fragments.
    pub prompt: String,
    /// Negative prompt with the characters' negative fragments.
    pub negative: String,
    /// The characters, in the order given.
    pub character_ids: Vec<Uuid>,
}

/// Projects and characters in the scheduler's database.
#[derive(Debug, Clone)]
pub struct Projects {
    pool: Pool,
}

impl Projects {
    /// Over `pool`.
    pub fn new(pool: Pool) -> Self {
        Self { pool }
    }

    async fn project_row(&self, id: Uuid, owner: Option<&str>) -> Result<Row, SchedulerError> {
        let client = self.pool.get().await?;
        let sql = format!(
            "SELECT {PROJECT_COLUMNS} FROM projects WHERE id = $1 AND ($2::text IS NULL OR owner_id = $2)"
        );
        client
            .query_opt(&sql, &[&id, &owner])
            .await?
            .ok_or_else(|| SchedulerError::NotFound(format!("project {id}")))
    }

    /// Checks that `owner` may submit to the project and composes the prompt: the user's
    /// text, then each character's fragment, comma-separated.
    pub async fn compose(
        &self,
        owner: &str,
        project_id: &str,
        character_ids: &[String],
        prompt: &str,
        negative: &str,
    ) -> Result<(Option<Uuid>, Composition), SchedulerError> {
        let plain = Composition {
            prompt: prompt.to_owned(),
            negative: negative.to_owned(),
            character_ids: Vec::new(),
        };
        if project_id.is_empty() {
            if let Some(c) = character_ids.first() {
                return Err(SchedulerError::invalid(
                    "character_ids",
                    format!("character {c} needs a project_id"),
                ));
            }
            return Ok((None, plain));
        }
        let project = uuid_field("project_id", project_id)?;
        let row = self.project_row(project, Some(owner)).await?;
        if row.get::<_, bool>("archived") {
            return Err(SchedulerError::FailedPrecondition(format!(
                "project {project} is archived; unarchive it to submit jobs"
            )));
        }
        if character_ids.len() > MAX_CHARACTERS_PER_JOB {
            return Err(SchedulerError::invalid(
                "character_ids",
                format!("at most {MAX_CHARACTERS_PER_JOB} characters per job"),
            ));
        }
        let mut ids = Vec::with_capacity(character_ids.len());
        for c in character_ids {
            let id = uuid_field("character_ids", c)?;
            if ids.contains(&id) {
                return Err(SchedulerError::invalid(
                    "character_ids",
                    format!("character {id} is named twice"),
                ));
            }
            ids.push(id);
        }
        let client = self.pool.get().await?;
        let sql =
            format!("SELECT {CHARACTER_COLUMNS} FROM characters WHERE project_id = $1 AND id = ANY($2)");
        let rows = client.query(&sql, &[&project, &ids]).await?;
        let mut composed = plain;
        for id in &ids {
            let Some(r) = rows.iter().find(|r| r.get::<_, Uuid>("id") == *id) else {
                return Err(SchedulerError::NotFound(format!("character {id} in project {project}")));
            };
            for (text, fragment) in [
                (&mut composed.prompt, r.get::<_, String>("prompt_fragment")),
                (&mut composed.negative, r.get::<_, String>("negative_fragment")),
            ] {
                if !fragment.trim().is_empty() {
                    if !text.is_empty() {
                        text.push_str(", ");
                    }
                    text.push_str(fragment.trim());
                }
            }
        }
        composed.character_ids = ids;
        Ok((Some(project), composed))
    }

    async fn character_scoped(&self, id: Uuid, owner: Option<&str>) -> Result<Row, SchedulerError> {
        let client = self.pool.get().await?;
        let sql = "SELECT c.id, c.project_id, c.name, c.description, c.prompt_fragment, c.negative_fragment \
             FROM characters c JOIN projects p ON p.id = c.project_id \
             WHERE c.id = $1 AND ($2::text IS NULL OR p.owner_id = $2)";
        client
            .query_opt(sql, &[&id, &owner])
            .await?
            .ok_or_else(|| SchedulerError::NotFound(format!("character {id}")))
    }
}

struct CharacterFields {
    name: String,
    description: String,
    prompt_fragment: String,
    negative_fragment: String,
}

fn character_fields(
    name: &str,
    description: &str,
    prompt_fragment: &str,
    negative_fragment: &str,
) -> Result<CharacterFields, SchedulerError> {
    Ok(CharacterFields {
        name: text_field("name", name, 1, 120)?,
        description: text_field("description", description, 0, 2000)?,
        prompt_fragment: text_field("prompt_fragment", prompt_fragment, 0, 1000)?,
        negative_fragment: text_field("negative_fragment", negative_fragment, 0, 1000)?,
    })
}

impl Projects {
    /// Creates a project for `owner`; an empty `slug` is made from the name.
    pub async fn create(
        &self,
        owner: &str,
        name: &str,
        slug: &str,
        description: &str,
        retention_days: u32,
    ) -> Result<Project, SchedulerError> {
        let name = text_field("name", name, 1, 120)?;
        let slug = check_slug(&if slug.is_empty() { slugify(&name) } else { slug.to_owned() })?;
        let description = text_field("description", description, 0, 2000)?;
        let retention = check_retention(retention_days)?;
        let client = self.pool.get().await?;
        let sql = format!(
            "INSERT INTO projects (id, owner_id, name, slug, description, retention_days) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING {PROJECT_COLUMNS}"
        );
        let row = client
            .query_one(&sql, &[&Uuid::now_v7(), &owner, &name, &slug, &description, &retention])
            .await
            .map_err(|e| conflict(e, || format!("slug: you already have a project with slug {slug:?}")))?;
        Ok(project_from_row(&row))
    }

    /// A project visible to `owner`.
    pub async fn get(&self, id: Uuid, owner: Option<&str>) -> Result<Project, SchedulerError> {
        Ok(project_from_row(&self.project_row(id, owner).await?))
    }

    /// Up to `limit` projects visible to `owner`, newest first, after the keyset cursor
    /// `after` (created_at, id); archived ones only when asked.
    pub async fn list(
        &self,
        owner: Option<&str>,
        include_archived: bool,
        after: Option<(DateTime<Utc>, Uuid)>,
        limit: u32,
    ) -> Result<Vec<Project>, SchedulerError> {
        let (after_ts, after_id) = after.map_or((None, None), |(t, i)| (Some(t), Some(i)));
        let client = self.pool.get().await?;
        let sql = format!(
            "SELECT {PROJECT_COLUMNS} FROM projects WHERE ($1::text IS NULL OR owner_id = $1) \
             AND ($2 OR NOT archived) \
             AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4)) \
             ORDER BY created_at DESC, id DESC LIMIT $5"
        );
        let rows =
            client.query(&sql, &[&owner, &include_archived, &after_ts, &after_id, &i64::from(limit)]).await?;
        Ok(rows.iter().map(project_from_row).collect())
    }

    /// Changes a project visible to `owner`. The slug stays: it names the folder files
    /// already live in.
    pub async fn update(
        &self,
        id: Uuid,
        owner: Option<&str>,
        changes: &ProjectChanges,
    ) -> Result<Project, SchedulerError> {
        let name = changes.name.as_deref().map(|n| text_field("name", n, 1, 120)).transpose()?;
        let description =
            changes.description.as_deref().map(|d| text_field("description", d, 0, 2000)).transpose()?;
        let retention = changes.retention_days.map(check_retention).transpose()?;
        let client = self.pool.get().await?;
        let sql = format!(
            "UPDATE projects SET name = COALESCE($3, name), description = COALESCE($4, description), \
             retention_days = COALESCE($5, retention_days), archived = COALESCE($6, archived) \
             WHERE id = $1 AND ($2::text IS NULL OR owner_id = $2) RETURNING {PROJECT_COLUMNS}"
        );
        let row = client
            .query_opt(&sql, &[&id, &owner, &name, &description, &retention, &changes.archived])
            .await?
            .ok_or_else(|| SchedulerError::NotFound(format!("project {id}")))?;
        Ok(project_from_row(&row))
    }

    /// Adds a character to a project visible to `owner`.
    pub async fn create_character(
        &self,
        project: Uuid,
        owner: Option<&str>,
        name: &str,
        description: &str,
        prompt_fragment: &str,
        negative_fragment: &str,
    ) -> Result<Character, SchedulerError> {
        let f = character_fields(name, description, prompt_fragment, negative_fragment)?;
        self.project_row(project, owner).await?;
        let client = self.pool.get().await?;
        let sql = format!(
            "INSERT INTO characters (id, project_id, name, description, prompt_fragment, negative_fragment) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING {CHARACTER_COLUMNS}"
        );
        let row = client
            .query_one(
                &sql,
                &[
                    &Uuid::now_v7(),
                    &project,
                    &f.name,
                    &f.description,
                    &f.prompt_fragment,
                    &f.negative_fragment,
                ],
            )
            .await
            .map_err(|e| conflict(e, || format!("name: the project already has a character {:?}", f.name)))?;
        Ok(character_from_row(&row))
    }

    /// The characters of a project visible to `owner`, by name.
    pub async fn characters(
        &self,
        project: Uuid,
        owner: Option<&str>,
    ) -> Result<Vec<Character>, SchedulerError> {
        self.project_row(project, owner).await?;
        let client = self.pool.get().await?;
        let sql =
            format!("SELECT {CHARACTER_COLUMNS} FROM characters WHERE project_id = $1 ORDER BY name, id");
        let rows = client.query(&sql, &[&project]).await?;
        Ok(rows.iter().map(character_from_row).collect())
    }

    /// Changes a character of a project visible to `owner`.
    pub async fn update_character(
        &self,
        id: Uuid,
        owner: Option<&str>,
        changes: &CharacterChanges,
    ) -> Result<Character, SchedulerError> {
        let current = character_from_row(&self.character_scoped(id, owner).await?);
        let f = character_fields(
            changes.name.as_deref().unwrap_or(&current.name),
            changes.description.as_deref().unwrap_or(&current.description),
            changes.prompt_fragment.as_deref().unwrap_or(&current.prompt_fragment),
            changes.negative_fragment.as_deref().unwrap_or(&current.negative_fragment),
        )?;
        let client = self.pool.get().await?;
        let sql = format!(
            "UPDATE characters SET name = $2, description = $3, prompt_fragment = $4, negative_fragment = $5 \
             WHERE id = $1 RETURNING {CHARACTER_COLUMNS}"
        );
        let row = client
            .query_opt(&sql, &[&id, &f.name, &f.description, &f.prompt_fragment, &f.negative_fragment])
            .await
            .map_err(|e| conflict(e, || format!("name: the project already has a character {:?}", f.name)))?
            .ok_or_else(|| SchedulerError::NotFound(format!("character {id}")))?;
        Ok(character_from_row(&row))
    }

    /// Deletes a character of a project visible to `owner`.
    pub async fn delete_character(&self, id: Uuid, owner: Option<&str>) -> Result<(), SchedulerError> {
        self.character_scoped(id, owner).await?;
        let client = self.pool.get().await?;
        client.execute("DELETE FROM characters WHERE id = $1", &[&id]).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_come_from_names_and_are_checked() {
        assert_eq!(slugify("Opening Scene!"), "opening-scene");
        assert_eq!(slugify("  Ep. 01 — Sakura  "), "ep-01-sakura");
        assert_eq!(slugify("桜"), "");
        assert!(check_slug("opening-scene").is_ok());
        for bad in ["", "-x", "Upper", "a b", "unsorted", &"x".repeat(64)] {
            let err = check_slug(bad).unwrap_err();
            assert!(err.to_string().starts_with("slug: "), "{bad:?}: {err}");
        }
    }
}
