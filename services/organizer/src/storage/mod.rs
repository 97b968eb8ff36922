//! Where bytes live, behind a trait so the service logic does not know which store it is.
//! Keys are `/`-separated relative names; a key never reaches a client.
//!
//! Bytes are content-addressed: an upload is stored once under `blobs/<sha256>` (see
//! [`blob_key`]) and every record with those bytes points at that one object, on either
//! backend. Records written before that point at their human name
//! (`<slug>/<YYYY>/<MM>/<DD>/<job>-<n>.png`), where their bytes still are.
//!
//! Two backends: [`LocalDisk`] (a folder, the default) and [`ObjectStorage`] (an
//! S3-compatible object store through the `object_store` crate).

mod local;
mod s3;

use std::{
    fmt, io,
    sync::Arc,
    time::{Duration, SystemTime},
};

use futures_util::{future::BoxFuture, stream::BoxStream};
use sakuga_mesh::MeshError;

use crate::config::Backend;

pub use local::LocalDisk;
pub use s3::{ObjectStorage, S3Credentials, S3SetupError};

/// Folder of partial writes (never listed as keys).
pub const TMP_DIR: &str = ".tmp";
/// Folder of thumbnails; the thumbnail of the bytes at a key is `.thumbs/<that key>`.
pub const THUMBS_DIR: &str = ".thumbs";
/// Folder of content-addressed bytes.
pub const BLOBS_DIR: &str = "blobs";
/// Folder of the optional export view (`storage.export`): each file's bytes again at its
/// record's human name, for people browsing the folder or bucket.
pub const EXPORT_DIR: &str = "export";

/// The thumbnail key of the bytes at `key`.
pub fn thumb_key(key: &str) -> String {
    format!("{THUMBS_DIR}/{key}")
}

/// The key of the bytes whose hex sha256 is `sha256`.
pub fn blob_key(sha256: &str) -> String {
    format!("{BLOBS_DIR}/{sha256}")
}

/// The export-view key of a record named `name` (its human name).
pub fn export_key(name: &str) -> String {
    format!("{EXPORT_DIR}/{name}")
}

/// A stored object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    /// Key.
    pub key: String,
    /// Last modified.
    pub modified: SystemTime,
}

/// A byte store. Its calls return boxed futures, so stores can sit behind
/// `Arc<dyn Storage>`.
pub trait Storage: Send + Sync + fmt::Debug {
    /// Stores `bytes` under `key` atomically: afterwards the key holds all of them, and
    /// after a crash it holds all or nothing.
    fn put<'a>(&'a self, key: &'a str, bytes: Vec<u8>) -> BoxFuture<'a, io::Result<()>>;

    /// `len` bytes (0: to the end) from `offset`.
    fn read<'a>(&'a self, key: &'a str, offset: u64, len: u64) -> BoxFuture<'a, io::Result<Vec<u8>>>;

    /// Exactly `len` bytes from `offset`, in pieces as they arrive from one ranged read of
    /// the store (not one request per piece). `NotFound` when `key` does not exist; a
    /// stream that ends early means the object is shorter than asked.
    fn read_stream<'a>(
        &'a self,
        key: &'a str,
        offset: u64,
        len: u64,
    ) -> BoxFuture<'a, io::Result<BoxStream<'static, io::Result<Vec<u8>>>>>;

    /// Whether `key` exists.
    fn exists<'a>(&'a self, key: &'a str) -> BoxFuture<'a, io::Result<bool>>;

    /// When `key` was last written (`None`: no such key).
    fn modified<'a>(&'a self, key: &'a str) -> BoxFuture<'a, io::Result<Option<SystemTime>>>;

    /// Places the bytes at `from` under `to` too (replacing what `to` held), atomically and
    /// without reading them through the organizer where the store can: on local disk a hard
    /// link (a copy where links are not possible), on S3 a server-side copy.
    fn copy<'a>(&'a self, from: &'a str, to: &'a str) -> BoxFuture<'a, io::Result<()>>;

    /// Removes `key`; a missing key is not an error.
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, io::Result<()>>;

    /// Every key (thumbnails included, partial writes not).
    fn keys(&self) -> BoxFuture<'_, io::Result<Vec<Object>>>;

    /// Removes partial writes older than `age`; returns how many.
    fn sweep_partial(&self, age: Duration) -> BoxFuture<'_, io::Result<usize>>;

    /// Whether the store can take uploads now (the health check): on local disk a small
    /// write, so a full disk fails it as an upload would (`StorageFull`); on S3 a listing,
    /// so an unreachable endpoint, a missing bucket or a refused key fails it.
    fn health(&self) -> BoxFuture<'_, io::Result<()>>;

    /// A presigned URL of a plain HTTP GET of `key` that works for `expires_in` (whole
    /// seconds, a fraction rounded up) and then is refused by the store; `None` when this
    /// store has no URLs (local disk). Signing asks the store nothing: a missing key makes a
    /// URL that answers 404.
    fn download_url<'a>(
        &'a self,
        key: &'a str,
        expires_in: Duration,
    ) -> BoxFuture<'a, io::Result<Option<String>>>;

    /// Starts an upload: bytes are written to a partial object (never a key until
    /// [`Partial::commit`]), hashed as they arrive.
    fn begin(&self) -> BoxFuture<'_, io::Result<Box<dyn Partial>>>;
}

/// Bytes that can be read back from the start and seeked, off the async runtime.
pub trait ReadSeek: io::BufRead + io::Seek + Send {}
impl<T: io::BufRead + io::Seek + Send> ReadSeek for T {}

/// An upload being written (see [`Storage::begin`]). Dropped without a commit, its partial
/// bytes are removed at once, whatever failed.
pub trait Partial: Send + fmt::Debug {
    /// Appends `chunk` and adds it to the hash.
    fn write(&mut self, chunk: Vec<u8>) -> BoxFuture<'_, io::Result<()>>;

    /// Bytes written so far.
    fn written(&self) -> u64;

    /// Makes the bytes durable; returns the hex sha256 of everything written. No write after.
    fn finish(&mut self) -> BoxFuture<'_, io::Result<String>>;

    /// The bytes written, for reading from the start (blocking I/O: call it off the async
    /// runtime, e.g. in `spawn_blocking`).
    fn open(&self) -> io::Result<Box<dyn ReadSeek>>;

    /// Stores the bytes under `key` atomically (replacing what the key held): afterwards
    /// the key holds all of them, and the partial object is gone.
    fn commit(self: Box<Self>, key: &str) -> BoxFuture<'_, io::Result<()>>;
}

/// Opens the store `config` chooses; the S3 access key is read from Vault.
pub async fn open(
    config: &crate::config::StorageConfig,
    vault: &sakuga_mesh::vault::Vault,
) -> Result<Arc<dyn Storage>, MeshError> {
    match config.backend {
        Backend::Local => {
            let disk = LocalDisk::new(config.root.clone()).map_err(|e| {
                MeshError::Config(format!("storage.root: cannot create {}: {e}", config.root.display()))
            })?;
            Ok(Arc::new(disk))
        }
        Backend::S3 => {
            let path = &config.s3.vault_path;
            let mut secret = vault.read_kv(path).await?;
            let mut field = |name: &str| {
                secret.remove(name).filter(|v| !v.is_empty()).ok_or_else(|| {
                    MeshError::Config(format!("storage.s3.vault_path: the secret {path} has no {name}"))
                })
            };
            let credentials = S3Credentials {
                access_key_id: field("access_key_id")?,
                secret_access_key: field("secret_access_key")?.into(),
            };
            let store =
                ObjectStorage::s3(&config.s3, &credentials).map_err(|e| MeshError::Config(e.to_string()))?;
            Ok(Arc::new(store))
        }
    }
}

/// Largest piece a local read stream yields.
const READ_PIECE: usize = 256 * 1024;

fn finished() -> io::Error {
    io::Error::other("upload already finished or failed")
}

/// A file an upload is written to, hashed as it is written: what both backends' partial
/// uploads share. A failed write leaves it unusable.
#[derive(Debug)]
struct HashingFile {
    /// `None` once finished (or after a failed write).
    open: Option<(std::fs::File, sha2::Sha256)>,
    written: u64,
}

impl HashingFile {
    fn new(file: std::fs::File) -> Self {
        Self { open: Some((file, <sha2::Sha256 as sha2::Digest>::new())), written: 0 }
    }

    /// Appends `chunk` (off the async runtime) and adds it to the hash.
    async fn write(&mut self, chunk: Vec<u8>) -> io::Result<()> {
        let (mut file, mut hash) = self.open.take().ok_or_else(finished)?;
        let len = chunk.len() as u64;
        let (file, hash) = blocking(move || {
            io::Write::write_all(&mut file, &chunk)?;
            sha2::Digest::update(&mut hash, &chunk);
            Ok((file, hash))
        })
        .await?;
        self.open = Some((file, hash));
        self.written += len;
        Ok(())
    }

    /// The file and the hex sha256 of everything written; no write after.
    fn finish(&mut self) -> io::Result<(std::fs::File, String)> {
        let (file, hash) = self.open.take().ok_or_else(finished)?;
        Ok((file, hex::encode(sha2::Digest::finalize(hash))))
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> io::Result<T> + Send + 'static) -> io::Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(io::Error::other)?
}
