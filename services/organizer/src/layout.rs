//! Where files live: `<project-slug|unsorted>/<YYYY>/<MM>/<DD>/<job-id>-<n>.<ext>` under the
//! storage, thumbnails under `.thumbs/` with the same name.

use chrono::{DateTime, Datelike as _, Utc};
use uuid::Uuid;

/// Folder of files that belong to no project.
pub const UNSORTED: &str = "unsorted";

/// The storage key of a job's `index`-th artifact.
pub fn storage_key(
    project_slug: Option<&str>,
    at: DateTime<Utc>,
    job_id: Uuid,
    index: u32,
    ext: &str,
) -> String {
    format!(
        "{}/{:04}/{:02}/{:02}/{job_id}-{index}.{ext}",
        project_slug.unwrap_or(UNSORTED),
        at.year(),
        at.month(),
        at.day()
    )
}

/// File name extension for a mime type.
pub fn extension(mime: &str) -> Option<&'static str> {
    match mime {
        "image/png" | "image/apng" => Some("png"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_follows_the_layout() {
        let at = DateTime::parse_from_rfc3339("2026-03-04T05:06:07Z").unwrap().with_timezone(&Utc);
        let id = Uuid::nil();
        assert_eq!(storage_key(None, at, id, 2, "png"), format!("unsorted/2026/03/04/{id}-2.png"));
        assert_eq!(storage_key(Some("ep01"), at, id, 0, "png"), format!("ep01/2026/03/04/{id}-0.png"));
    }
}
