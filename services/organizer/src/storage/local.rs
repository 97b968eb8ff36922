//! The local backend: files under a root folder, written through a partial file under
//! `.tmp/` renamed into place (atomic and durable).

use std::{
    io::{self, Write as _},
    path::{Component, Path, PathBuf},
    time::Duration,
};

use futures_util::{StreamExt as _, future::BoxFuture, stream::BoxStream};
use uuid::Uuid;

use super::{HashingFile, Object, Partial, READ_PIECE, ReadSeek, Storage, TMP_DIR, blocking};

/// Bytes the write probe writes: one page, so a disk with no page left refuses it.
const PROBE_BYTES: usize = 4096;

/// A partial file under the store's `.tmp/`, removed on drop unless committed.
#[derive(Debug)]
struct LocalPartial {
    disk: LocalDisk,
    path: PathBuf,
    file: HashingFile,
    committed: bool,
}

impl Partial for LocalPartial {
    fn write(&mut self, chunk: Vec<u8>) -> BoxFuture<'_, io::Result<()>> {
        Box::pin(self.file.write(chunk))
    }

    fn written(&self) -> u64 {
        self.file.written
    }

    fn finish(&mut self) -> BoxFuture<'_, io::Result<String>> {
        Box::pin(async move {
            let (file, sha256) = self.file.finish()?;
            blocking(move || file.sync_all()).await?;
            Ok(sha256)
        })
    }

    fn open(&self) -> io::Result<Box<dyn ReadSeek>> {
        Ok(Box::new(io::BufReader::new(std::fs::File::open(&self.path)?)))
    }

    fn commit(mut self: Box<Self>, key: &str) -> BoxFuture<'_, io::Result<()>> {
        Box::pin(async move {
            let path = self.disk.path(key)?;
            let tmp = self.path.clone();
            blocking(move || {
                let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
                std::fs::create_dir_all(&dir)?;
                std::fs::rename(&tmp, &path)?;
                sync_dir(&dir)
            })
            .await?;
            self.committed = true;
            Ok(())
        })
    }
}

impl Drop for LocalPartial {
    fn drop(&mut self) {
        // One unlink, on whichever path ends the upload (refusal, error, cancelled call).
        if !self.committed
            && let Err(e) = std::fs::remove_file(&self.path)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(error = %e, "partial upload not removed; the reconciler will");
        }
    }
}

/// Files under a root folder.
#[derive(Debug, Clone)]
pub struct LocalDisk {
    root: PathBuf,
}

impl LocalDisk {
    /// A store under `root` (created if missing).
    pub fn new(root: PathBuf) -> io::Result<Self> {
        std::fs::create_dir_all(&root)?;
        Ok(Self { root })
    }

    /// The path of `key`; keys with `..`, absolute parts or empty segments are refused.
    fn path(&self, key: &str) -> io::Result<PathBuf> {
        let rel = Path::new(key);
        if key.is_empty() || !rel.components().all(|c| matches!(c, Component::Normal(_))) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "storage key must be a relative name"));
        }
        Ok(self.root.join(rel))
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

impl Storage for LocalDisk {
    fn put<'a>(&'a self, key: &'a str, bytes: Vec<u8>) -> BoxFuture<'a, io::Result<()>> {
        Box::pin(async move {
            let (path, tmp_dir) = (self.path(key)?, self.root.join(TMP_DIR));
            blocking(move || {
                let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
                std::fs::create_dir_all(&dir)?;
                std::fs::create_dir_all(&tmp_dir)?;
                let tmp = tmp_dir.join(format!("{}.part", Uuid::new_v4()));
                let result = (|| {
                    let mut f = std::fs::File::create(&tmp)?;
                    f.write_all(&bytes)?;
                    f.sync_all()?;
                    drop(f);
                    std::fs::rename(&tmp, &path)?;
                    sync_dir(&dir)
                })();
                if result.is_err() {
                    let _ = std::fs::remove_file(&tmp);
                }
                result
            })
            .await
        })
    }

    fn read<'a>(&'a self, key: &'a str, offset: u64, len: u64) -> BoxFuture<'a, io::Result<Vec<u8>>> {
        Box::pin(async move {
            use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};
            let mut f = tokio::fs::File::open(self.path(key)?).await?;
            f.seek(io::SeekFrom::Start(offset)).await?;
            let mut buf = Vec::new();
            if len == 0 {
                f.read_to_end(&mut buf).await?;
            } else {
                f.take(len).read_to_end(&mut buf).await?;
            }
            Ok(buf)
        })
    }

    fn read_stream<'a>(
        &'a self,
        key: &'a str,
        offset: u64,
        len: u64,
    ) -> BoxFuture<'a, io::Result<BoxStream<'static, io::Result<Vec<u8>>>>> {
        Box::pin(async move {
            use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};
            let mut f = tokio::fs::File::open(self.path(key)?).await?;
            f.seek(io::SeekFrom::Start(offset)).await?;
            let pieces = futures_util::stream::try_unfold(f.take(len), |mut file| async move {
                let mut piece = vec![0; READ_PIECE];
                let n = file.read(&mut piece).await?;
                if n == 0 {
                    return Ok(None);
                }
                piece.truncate(n);
                Ok(Some((piece, file)))
            });
            Ok(pieces.boxed())
        })
    }

    fn exists<'a>(&'a self, key: &'a str) -> BoxFuture<'a, io::Result<bool>> {
        Box::pin(async move { tokio::fs::try_exists(self.path(key)?).await })
    }

    fn modified<'a>(&'a self, key: &'a str) -> BoxFuture<'a, io::Result<Option<std::time::SystemTime>>> {
        Box::pin(async move {
            match tokio::fs::metadata(self.path(key)?).await {
                Ok(meta) => Ok(Some(meta.modified()?)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e),
            }
        })
    }

    /// A hard link made under `.tmp/` and renamed over `to` (atomic, durable); where the
    /// filesystem refuses links (another device, no link support) a copy, the same way.
    fn copy<'a>(&'a self, from: &'a str, to: &'a str) -> BoxFuture<'a, io::Result<()>> {
        Box::pin(async move {
            let (source, path, tmp_dir) = (self.path(from)?, self.path(to)?, self.root.join(TMP_DIR));
            blocking(move || {
                let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
                std::fs::create_dir_all(&dir)?;
                std::fs::create_dir_all(&tmp_dir)?;
                let tmp = tmp_dir.join(format!("{}.part", Uuid::new_v4()));
                let result = (|| {
                    if std::fs::hard_link(&source, &tmp).is_err() {
                        if !source.is_file() {
                            return Err(io::ErrorKind::NotFound.into());
                        }
                        std::fs::copy(&source, &tmp)?;
                        std::fs::File::open(&tmp)?.sync_all()?;
                    }
                    std::fs::rename(&tmp, &path)?;
                    // A rename between two links of one file does nothing (POSIX): the
                    // entry was that link already, and the temporary name goes.
                    match std::fs::remove_file(&tmp) {
                        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                        _ => {}
                    }
                    sync_dir(&dir)
                })();
                if result.is_err() {
                    let _ = std::fs::remove_file(&tmp);
                }
                result
            })
            .await
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, io::Result<()>> {
        Box::pin(async move {
            match tokio::fs::remove_file(self.path(key)?).await {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            }
        })
    }

    fn keys(&self) -> BoxFuture<'_, io::Result<Vec<Object>>> {
        let root = self.root.clone();
        Box::pin(blocking(move || {
            let mut out = Vec::new();
            let mut stack = vec![root.clone()];
            while let Some(dir) = stack.pop() {
                for entry in std::fs::read_dir(&dir)? {
                    let entry = entry?;
                    let path = entry.path();
                    let kind = entry.file_type()?;
                    if kind.is_dir() {
                        if path != root.join(TMP_DIR) {
                            stack.push(path);
                        }
                    } else if kind.is_file() {
                        let rel = path.strip_prefix(&root).map_err(io::Error::other)?;
                        let key = rel.iter().map(|c| c.to_string_lossy()).collect::<Vec<_>>().join("/");
                        out.push(Object { key, modified: entry.metadata()?.modified()? });
                    }
                }
            }
            out.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(out)
        }))
    }

    /// A write probe: one page written under the partial folder and removed at once, so
    /// a full disk (or a read-only one) fails the check as an upload would.
    fn health(&self) -> BoxFuture<'_, io::Result<()>> {
        let tmp_dir = self.root.join(TMP_DIR);
        Box::pin(blocking(move || {
            std::fs::create_dir_all(&tmp_dir)?;
            let path = tmp_dir.join(format!("probe-{}.part", Uuid::new_v4()));
            let written = std::fs::File::create_new(&path).and_then(|mut f| f.write_all(&[0; PROBE_BYTES]));
            let removed = std::fs::remove_file(&path);
            written?;
            removed
        }))
    }

    /// Files on this machine have no URL a client could use.
    fn download_url<'a>(
        &'a self,
        _key: &'a str,
        _expires_in: Duration,
    ) -> BoxFuture<'a, io::Result<Option<String>>> {
        Box::pin(async { Ok(None) })
    }

    fn sweep_partial(&self, age: Duration) -> BoxFuture<'_, io::Result<usize>> {
        let dir = self.root.join(TMP_DIR);
        Box::pin(blocking(move || {
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
                Err(e) => return Err(e),
            };
            let mut removed = 0;
            for entry in entries {
                let entry = entry?;
                let old = entry.metadata()?.modified()?.elapsed().unwrap_or_default() >= age;
                if old && std::fs::remove_file(entry.path()).is_ok() {
                    removed += 1;
                }
            }
            Ok(removed)
        }))
    }

    fn begin(&self) -> BoxFuture<'_, io::Result<Box<dyn Partial>>> {
        let (disk, tmp_dir) = (self.clone(), self.root.join(TMP_DIR));
        Box::pin(async move {
            let path = tmp_dir.join(format!("{}.part", Uuid::new_v4()));
            let file = {
                let path = path.clone();
                blocking(move || {
                    std::fs::create_dir_all(&tmp_dir)?;
                    std::fs::File::create_new(&path)
                })
                .await?
            };
            let partial: Box<dyn Partial> =
                Box::new(LocalPartial { disk, path, file: HashingFile::new(file), committed: false });
            Ok(partial)
        })
    }
}

#[cfg(test)]
mod tests {
    use sha2::{Digest as _, Sha256};

    use super::*;

    #[tokio::test]
    async fn put_read_list_and_delete() {
        let dir = tempfile::tempdir().unwrap();
        let disk = LocalDisk::new(dir.path().to_path_buf()).unwrap();
        disk.put("a/2026/01/01/x-0.png", b"hello world".to_vec()).await.unwrap();
        assert_eq!(disk.read("a/2026/01/01/x-0.png", 6, 0).await.unwrap(), b"world");
        assert_eq!(disk.read("a/2026/01/01/x-0.png", 0, 5).await.unwrap(), b"hello");
        disk.put("b/2026/01/02/y-0.png", b"other".to_vec()).await.unwrap();
        assert!(disk.health().await.is_ok());
        std::fs::create_dir_all(dir.path().join(TMP_DIR)).unwrap();
        std::fs::write(dir.path().join(TMP_DIR).join("z.part"), b"partial").unwrap();
        let keys: Vec<_> = disk.keys().await.unwrap().into_iter().map(|o| o.key).collect();
        assert_eq!(keys, ["a/2026/01/01/x-0.png", "b/2026/01/02/y-0.png"], "partial writes are not keys");
        assert_eq!(disk.sweep_partial(Duration::ZERO).await.unwrap(), 1);
        disk.delete("a/2026/01/01/x-0.png").await.unwrap();
        disk.delete("a/2026/01/01/x-0.png").await.unwrap();
        assert!(!disk.exists("a/2026/01/01/x-0.png").await.unwrap());
        assert!(disk.exists("b/2026/01/02/y-0.png").await.unwrap(), "the other key is kept");
        for bad in ["", "../x", "/etc/passwd", "a/../../x"] {
            assert!(disk.read(bad, 0, 0).await.is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn a_copy_is_a_hard_link_placed_atomically_and_a_missing_source_leaves_nothing() {
        use std::os::unix::fs::MetadataExt as _;
        let dir = tempfile::tempdir().unwrap();
        let disk = LocalDisk::new(dir.path().to_path_buf()).unwrap();
        disk.put("blobs/abc", b"the bytes".to_vec()).await.unwrap();
        disk.copy("blobs/abc", "export/p/2026/01/01/j-0.png").await.unwrap();
        assert_eq!(disk.read("export/p/2026/01/01/j-0.png", 0, 0).await.unwrap(), b"the bytes");
        let inode = |key: &str| std::fs::metadata(dir.path().join(key)).unwrap().ino();
        assert_eq!(inode("export/p/2026/01/01/j-0.png"), inode("blobs/abc"), "a link, not a copy");
        // Placed again over itself: still one entry.
        disk.copy("blobs/abc", "export/p/2026/01/01/j-0.png").await.unwrap();
        let err = disk.copy("blobs/missing", "export/p/2026/01/01/j-1.png").await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        let keys: Vec<_> = disk.keys().await.unwrap().into_iter().map(|o| o.key).collect();
        assert_eq!(keys, ["blobs/abc", "export/p/2026/01/01/j-0.png"]);
        assert_eq!(std::fs::read_dir(dir.path().join(TMP_DIR)).unwrap().count(), 0, "no partial left");
        assert!(disk.copy("blobs/abc", "../escape").await.is_err());
    }

    #[tokio::test]
    async fn an_upload_is_hashed_as_written_and_becomes_a_key_only_on_commit() {
        use std::io::Read as _;
        let dir = tempfile::tempdir().unwrap();
        let disk = LocalDisk::new(dir.path().to_path_buf()).unwrap();
        let partials = || std::fs::read_dir(dir.path().join(TMP_DIR)).unwrap().count();
        let mut up = disk.begin().await.unwrap();
        up.write(b"hello ".to_vec()).await.unwrap();
        up.write(b"world".to_vec()).await.unwrap();
        assert_eq!(up.written(), 11);
        assert_eq!(up.finish().await.unwrap(), hex::encode(Sha256::digest(b"hello world")));
        assert!(up.write(b"!".to_vec()).await.is_err(), "nothing after finish");
        let mut back = String::new();
        up.open().unwrap().read_to_string(&mut back).unwrap();
        assert_eq!(back, "hello world");
        assert!(disk.keys().await.unwrap().is_empty(), "not a key before the commit");
        up.commit("u/2026/01/01/x-0.png").await.unwrap();
        assert_eq!(disk.read("u/2026/01/01/x-0.png", 0, 0).await.unwrap(), b"hello world");
        assert_eq!(partials(), 0, "the partial became the key");

        // Dropped without a commit (any failure), the partial bytes go at once.
        let mut up = disk.begin().await.unwrap();
        up.write(vec![7; 1000]).await.unwrap();
        assert_eq!(partials(), 1);
        drop(up);
        assert_eq!(partials(), 0);
        assert!(disk.begin().await.unwrap().commit("../escape").await.is_err());
        assert_eq!(partials(), 0);
    }
}
