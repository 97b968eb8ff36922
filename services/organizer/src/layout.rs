//! Where files live: `<root>/<project-slug|unsorted>/<YYYY>/<MM>/<DD>/<job-id>-<n>.<ext>`,
//! written atomically (temp file, fsync, rename, fsync of the folder), so a crash leaves
//! either the whole file or none under its final name.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
};

use chrono::{DateTime, Datelike as _, Utc};
use uuid::Uuid;

/// Folder of files that belong to no project.
pub const UNSORTED: &str = "unsorted";
/// Folder of partial writes, cleaned by the reconciler.
pub const TMP_DIR: &str = ".tmp";

/// The storage key (path relative to the root) of a job's `index`-th artifact.
pub fn storage_key(
    project_slug: Option<&str>,
    at: DateTime<Utc>,
    job_id: Uuid,
    index: u32,
    ext: &str,
) -> PathBuf {
    let mut p = PathBuf::from(project_slug.unwrap_or(UNSORTED));
    p.push(format!("{:04}", at.year()));
    p.push(format!("{:02}", at.month()));
    p.push(format!("{:02}", at.day()));
    p.push(format!("{job_id}-{index}.{ext}"));
    p
}

/// File name extension for a mime type.
pub fn extension(mime: &str) -> Option<&'static str> {
    match mime {
        "image/png" | "image/apng" => Some("png"),
        _ => None,
    }
}

/// Writes `bytes` under `root/key` atomically and durably.
pub fn write_atomic(root: &Path, key: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let final_path = root.join(key);
    let dir = final_path.parent().unwrap_or(root);
    std::fs::create_dir_all(dir)?;
    let tmp_dir = root.join(TMP_DIR);
    std::fs::create_dir_all(&tmp_dir)?;
    let tmp_path = tmp_dir.join(format!("{}.part", Uuid::new_v4()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp_path)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp_path, &final_path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp_path);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_follows_the_layout() {
        let at = DateTime::parse_from_rfc3339("2026-03-04T05:06:07Z").unwrap().with_timezone(&Utc);
        let id = Uuid::nil();
        assert_eq!(
            storage_key(None, at, id, 2, "png"),
            PathBuf::from(format!("unsorted/2026/03/04/{id}-2.png"))
        );
        assert_eq!(
            storage_key(Some("ep01"), at, id, 0, "png"),
            PathBuf::from(format!("ep01/2026/03/04/{id}-0.png"))
        );
    }

    #[test]
    fn atomic_write_leaves_the_file_and_no_temp() {
        let root = tempfile::tempdir().unwrap();
        let key = PathBuf::from("unsorted/2026/01/01/x-0.png");
        write_atomic(root.path(), &key, b"hello").unwrap();
        assert_eq!(std::fs::read(root.path().join(&key)).unwrap(), b"hello");
        assert_eq!(std::fs::read_dir(root.path().join(TMP_DIR)).unwrap().count(), 0);
    }
}
