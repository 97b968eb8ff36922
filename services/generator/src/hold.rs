//! Finished artifacts the platform cannot store yet (storage full or unreachable, no
//! organizer answering) are kept until it can: in memory while this worker's held bytes
//! stay within `held_memory_max_bytes`, else in a spool file under `spool_dir`. A [`Held`]
//! artifact is released when it is dropped (stored, or its lease lost): its bytes leave
//! the memory count, its spool file is removed.

use std::{
    borrow::Cow,
    io::Write as _,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use prometheus_client::metrics::gauge::Gauge;
use sakuga_imaging::Artifact;

use crate::metrics::Families;

/// Why an artifact could not be kept.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HoldError {
    /// The spool file could not be written or read back.
    #[error("spool file: {0}")]
    Spool(#[from] std::io::Error),
}

/// Keeps artifacts for one worker, within its memory cap.
#[derive(Debug, Clone)]
pub(crate) struct Holder {
    cap: u64,
    dir: PathBuf,
    in_memory: Arc<AtomicU64>,
    families: Arc<Families>,
}

impl Holder {
    /// At most `cap` bytes in memory; the rest in files under `dir`.
    pub(crate) fn new(cap: u64, dir: PathBuf, families: Arc<Families>) -> Self {
        Self { cap, dir, in_memory: Arc::new(AtomicU64::new(0)), families }
    }

    /// Bytes held in memory now.
    #[cfg(test)]
    pub(crate) fn in_memory(&self) -> u64 {
        self.in_memory.load(Ordering::SeqCst)
    }

    /// Keeps `artifact`: in memory if it fits under the cap, else in a new spool file.
    pub(crate) async fn hold(&self, artifact: Artifact) -> Result<Held, HoldError> {
        let len = artifact.bytes.len() as u64;
        let reserved = self
            .in_memory
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |held| {
                held.checked_add(len).filter(|&total| total <= self.cap)
            })
            .is_ok();
        if reserved {
            let gauge = self.families.waiting("memory");
            gauge.inc();
            return Ok(Held { kept: Kept::Memory { artifact, counter: self.in_memory.clone() }, gauge });
        }
        let path = self.dir.join(format!("sakuga-held-{}.artifact", uuid::Uuid::new_v4()));
        let Artifact { bytes, mime, width, height, frames } = artifact;
        let file = path.clone();
        tokio::task::spawn_blocking(move || {
            let written = spool_write(&file, &bytes);
            if written.is_err() {
                let _ = std::fs::remove_file(&file);
            }
            written
        })
        .await
        .map_err(std::io::Error::other)??;
        let gauge = self.families.waiting("spool");
        gauge.inc();
        let meta = Artifact { bytes: Vec::new(), mime, width, height, frames };
        Ok(Held { kept: Kept::Spooled { path, meta }, gauge })
    }
}

/// Writes `bytes` to a new file only this user can read.
fn spool_write(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[derive(Debug)]
enum Kept {
    Memory { artifact: Artifact, counter: Arc<AtomicU64> },
    Spooled { path: PathBuf, meta: Artifact },
}

/// An artifact kept until it is stored.
#[derive(Debug)]
pub(crate) struct Held {
    kept: Kept,
    gauge: Gauge,
}

impl Held {
    /// The artifact (read back from its spool file for the time of an upload).
    pub(crate) async fn artifact(&self) -> Result<Cow<'_, Artifact>, HoldError> {
        match &self.kept {
            Kept::Memory { artifact, .. } => Ok(Cow::Borrowed(artifact)),
            Kept::Spooled { path, meta } => {
                let bytes = tokio::fs::read(path).await?;
                Ok(Cow::Owned(Artifact { bytes, ..meta.clone() }))
            }
        }
    }

    /// Whether it is in a spool file.
    #[cfg(test)]
    fn spool_path(&self) -> Option<&std::path::Path> {
        match &self.kept {
            Kept::Memory { .. } => None,
            Kept::Spooled { path, .. } => Some(path),
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.gauge.dec();
        match &self.kept {
            Kept::Memory { artifact, counter } => {
                counter.fetch_sub(artifact.bytes.len() as u64, Ordering::SeqCst);
            }
            Kept::Spooled { path, .. } => {
                if let Err(e) = std::fs::remove_file(path)
                    && e.kind() != std::io::ErrorKind::NotFound
                {
                    tracing::warn!(error = %e, "spool file of a held artifact not removed");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn artifact(len: usize, fill: u8) -> Artifact {
        Artifact { bytes: vec![fill; len], mime: "image/png", width: 8, height: 8, frames: 1 }
    }

    fn holder(cap: u64, dir: &std::path::Path) -> (Holder, Arc<Families>) {
        let metrics = sakuga_mesh::metrics::Metrics::new();
        let families = Arc::new(Families::register(&metrics));
        (Holder::new(cap, dir.to_path_buf(), families.clone()), families)
    }

    fn files_in(dir: &std::path::Path) -> usize {
        std::fs::read_dir(dir).unwrap().count()
    }

    #[tokio::test]
    async fn memory_stays_under_the_cap_and_the_rest_is_spooled() {
        let dir = tempfile::tempdir().unwrap();
        let (h, families) = holder(10_000, dir.path());
        let first = h.hold(artifact(6_000, 1)).await.unwrap();
        assert_eq!(h.in_memory(), 6_000);
        // 6 000 + 6 000 would pass the cap: to a file, memory unchanged.
        let second = h.hold(artifact(6_000, 2)).await.unwrap();
        assert_eq!(h.in_memory(), 6_000);
        let path = second.spool_path().unwrap().to_path_buf();
        assert!(path.starts_with(dir.path()));
        assert_eq!(std::fs::read(&path).unwrap(), vec![2; 6_000]);
        // Still fits.
        let third = h.hold(artifact(4_000, 3)).await.unwrap();
        assert!(third.spool_path().is_none());
        assert_eq!(h.in_memory(), 10_000, "exactly at the cap, never above");
        assert_eq!((families.waiting("memory").get(), families.waiting("spool").get()), (2, 1));

        // Read back whole, from memory or the file.
        assert_eq!(first.artifact().await.unwrap().bytes, vec![1; 6_000]);
        let back = second.artifact().await.unwrap();
        assert_eq!((back.bytes.clone(), back.mime, back.width), (vec![2; 6_000], "image/png", 8));
        drop(back);

        // Released once stored or dropped: the bytes leave the count, the file goes.
        drop(second);
        assert!(!path.exists());
        assert_eq!(files_in(dir.path()), 0);
        drop(first);
        assert_eq!(h.in_memory(), 4_000);
        let fourth = h.hold(artifact(6_000, 4)).await.unwrap();
        assert!(fourth.spool_path().is_none(), "room again once released");
        drop((third, fourth));
        assert_eq!(h.in_memory(), 0);
        assert_eq!((families.waiting("memory").get(), families.waiting("spool").get()), (0, 0));
    }

    #[tokio::test]
    async fn a_zero_cap_spools_everything_and_a_bad_dir_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let (h, _) = holder(0, dir.path());
        let held = h.hold(artifact(100, 5)).await.unwrap();
        assert!(held.spool_path().is_some());
        assert_eq!(h.in_memory(), 0);
        drop(held);
        assert_eq!(files_in(dir.path()), 0);
        let (h, families) = holder(0, &dir.path().join("missing"));
        assert!(matches!(h.hold(artifact(100, 5)).await, Err(HoldError::Spool(_))));
        assert_eq!(families.waiting("spool").get(), 0, "nothing counted as held");
    }
}
