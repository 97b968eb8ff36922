//! The S3 backend: objects in a bucket of any S3-compatible server, through the
//! `object_store` crate. The organizer keeps no state beside it: an upload is spooled to an
//! anonymous temporary file while it is checked (removed when the upload ends, whatever
//! happens) and sent to the bucket in parts on commit; the object appears only when the
//! upload completes.

use std::{
    io::{self, Read as _, Seek as _},
    path::PathBuf,
    sync::Arc,
    time::{Duration, SystemTime},
};

use futures_util::{StreamExt as _, TryStreamExt as _, future::BoxFuture, stream::BoxStream};
use object_store::{
    GetOptions, GetRange, ObjectStore, ObjectStoreExt as _, PutPayload, WriteMultipart,
    aws::AmazonS3Builder,
    path::Path,
    prefix::PrefixStore,
    signer::{Method, Signer},
};
use secrecy::{ExposeSecret as _, SecretString};

use super::{HashingFile, Object, Partial, ReadSeek, Storage, blocking, finished};
use crate::config::S3Config;

/// Size of the parts an upload is sent in (S3's smallest part is 5 MiB).
const PART: usize = 8 * 1024 * 1024;

/// The access key of the bucket, as read from Vault.
#[derive(Debug, Clone)]
pub struct S3Credentials {
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: SecretString,
}

/// Why an S3 store could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum S3SetupError {
    /// The CA file could not be read.
    #[error("storage.s3.ca_file: cannot read {path}: {source}")]
    CaFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The client could not be built from the settings.
    #[error("storage.s3: {0}")]
    Client(#[from] object_store::Error),
}

/// Objects in a bucket (under an optional key prefix).
#[derive(Debug, Clone)]
pub struct ObjectStorage {
    store: Arc<dyn ObjectStore>,
    /// What signs download URLs (`None`: this store has none).
    urls: Option<UrlSigner>,
}

/// Signs download URLs: a client of the bucket at the address clients reach it, and the key
/// prefix the store puts before every key (a `PrefixStore` signs nothing, so it is added
/// here).
#[derive(Debug, Clone)]
struct UrlSigner {
    signer: Arc<dyn Signer>,
    prefix: Path,
}

/// A request to the store may take this long to connect...
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// ...and this long in all (a part of at most `PART` bytes).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// A failed request is retried (the store's hiccups: a 5xx, a dropped connection) at most
/// this often and for this long. Not the library's minutes: an upload that the store keeps
/// failing returns UNAVAILABLE within seconds, the organizer's health says so, and the
/// generator (which holds the artifact) retries it with its own backoff.
const MAX_RETRIES: usize = 3;
const RETRY_TIMEOUT: Duration = Duration::from_secs(10);

impl ObjectStorage {
    /// Any `object_store` store (a bucket, or a folder in tests), without download URLs.
    pub fn new(store: Arc<dyn ObjectStore>) -> Self {
        Self { store, urls: None }
    }

    /// The bucket `config` names, signed with `credentials`.
    pub fn s3(config: &S3Config, credentials: &S3Credentials) -> Result<Self, S3SetupError> {
        let mut options = object_store::ClientOptions::new()
            .with_allow_http(config.allow_http)
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_timeout(REQUEST_TIMEOUT);
        if !config.ca_file.as_os_str().is_empty() {
            let pem = std::fs::read(&config.ca_file)
                .map_err(|source| S3SetupError::CaFile { path: config.ca_file.clone(), source })?;
            for cert in object_store::Certificate::from_pem_bundle(&pem)? {
                options = options.with_root_certificate(cert);
            }
        }
        let mut builder = AmazonS3Builder::new()
            .with_region(&config.region)
            .with_bucket_name(&config.bucket)
            .with_access_key_id(&credentials.access_key_id)
            .with_secret_access_key(credentials.secret_access_key.expose_secret())
            .with_virtual_hosted_style_request(!config.path_style)
            .with_retry(object_store::RetryConfig {
                backoff: object_store::BackoffConfig::default(),
                max_retries: MAX_RETRIES,
                retry_timeout: RETRY_TIMEOUT,
            })
            .with_allow_http(config.allow_http)
            .with_client_options(options);
        // Download URLs are signed for the address clients reach the server at. SigV4 signs
        // the host, so a URL made for the in-cluster endpoint would not work at another
        // address; building a second client costs no connection (it only signs).
        let signer: Option<Arc<dyn Signer>> = if config.public_endpoint.is_empty() {
            None
        } else {
            Some(Arc::new(builder.clone().with_endpoint(&config.public_endpoint).build()?))
        };
        if !config.endpoint.is_empty() {
            builder = builder.with_endpoint(&config.endpoint);
        }
        let client = Arc::new(builder.build()?);
        let signer = signer.unwrap_or_else(|| client.clone() as Arc<dyn Signer>);
        let bucket: Arc<dyn ObjectStore> = client;
        let prefix = config.prefix.trim_matches('/');
        let store: Arc<dyn ObjectStore> =
            if prefix.is_empty() { bucket } else { Arc::new(PrefixStore::new(bucket, prefix)) };
        Ok(Self { store, urls: Some(UrlSigner { signer, prefix: Path::from(prefix) }) })
    }
}

/// A store path from a key; keys with `..`, `.` or empty segments are refused.
fn path(key: &str) -> io::Result<Path> {
    if key.is_empty() || key.split('/').any(|s| s.is_empty() || s == "." || s == "..") {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "storage key must be a relative name"));
    }
    Path::parse(key).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

/// A prefix no key is ever stored under (keys are `blobs/…` and `.thumbs/…`), listed by the
/// health check.
const HEALTH_PREFIX: &str = ".health";

fn not_found(e: &object_store::Error) -> bool {
    matches!(e, object_store::Error::NotFound { .. })
}

impl Storage for ObjectStorage {
    fn put<'a>(&'a self, key: &'a str, bytes: Vec<u8>) -> BoxFuture<'a, io::Result<()>> {
        Box::pin(async move {
            self.store.put(&path(key)?, PutPayload::from(bytes)).await?;
            Ok(())
        })
    }

    fn read<'a>(&'a self, key: &'a str, offset: u64, len: u64) -> BoxFuture<'a, io::Result<Vec<u8>>> {
        Box::pin(async move {
            let range =
                if len == 0 { GetRange::Offset(offset) } else { GetRange::Bounded(offset..offset + len) };
            let options = GetOptions { range: Some(range), ..GetOptions::default() };
            let got = self.store.get_opts(&path(key)?, options).await?;
            Ok(got.bytes().await?.to_vec())
        })
    }

    fn read_stream<'a>(
        &'a self,
        key: &'a str,
        offset: u64,
        len: u64,
    ) -> BoxFuture<'a, io::Result<BoxStream<'static, io::Result<Vec<u8>>>>> {
        Box::pin(async move {
            if len == 0 {
                // No empty range in S3: the object need only exist.
                return match self.modified(key).await? {
                    Some(_) => Ok(futures_util::stream::empty().boxed()),
                    None => Err(io::ErrorKind::NotFound.into()),
                };
            }
            let options =
                GetOptions { range: Some(GetRange::Bounded(offset..offset + len)), ..GetOptions::default() };
            let got = self.store.get_opts(&path(key)?, options).await?;
            Ok(got.into_stream().map(|piece| piece.map(|b| b.to_vec()).map_err(io::Error::from)).boxed())
        })
    }

    fn exists<'a>(&'a self, key: &'a str) -> BoxFuture<'a, io::Result<bool>> {
        Box::pin(async move { Ok(self.modified(key).await?.is_some()) })
    }

    fn modified<'a>(&'a self, key: &'a str) -> BoxFuture<'a, io::Result<Option<SystemTime>>> {
        Box::pin(async move {
            match self.store.head(&path(key)?).await {
                Ok(meta) => Ok(Some(meta.last_modified.into())),
                Err(e) if not_found(&e) => Ok(None),
                Err(e) => Err(e.into()),
            }
        })
    }

    /// A server-side copy (`CopyObject`): the bytes do not pass through the organizer.
    fn copy<'a>(&'a self, from: &'a str, to: &'a str) -> BoxFuture<'a, io::Result<()>> {
        Box::pin(async move {
            self.store.copy(&path(from)?, &path(to)?).await?;
            Ok(())
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, io::Result<()>> {
        Box::pin(async move {
            match self.store.delete(&path(key)?).await {
                Err(e) if !not_found(&e) => Err(e.into()),
                _ => Ok(()),
            }
        })
    }

    fn keys(&self) -> BoxFuture<'_, io::Result<Vec<Object>>> {
        Box::pin(async move {
            let mut out: Vec<Object> = self
                .store
                .list(None)
                .map_ok(|meta| Object { key: meta.location.to_string(), modified: meta.last_modified.into() })
                .try_collect()
                .await?;
            out.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(out)
        })
    }

    /// Spool files are anonymous (the system removes them with their last handle), and a
    /// multipart upload is aborted when its commit fails; what a crash leaves in the bucket
    /// is invisible to listings and is removed by the bucket's lifecycle rule for incomplete
    /// multipart uploads. Nothing is left here to sweep.
    fn sweep_partial(&self, _age: Duration) -> BoxFuture<'_, io::Result<usize>> {
        Box::pin(async { Ok(0) })
    }

    fn health(&self) -> BoxFuture<'_, io::Result<()>> {
        Box::pin(async move {
            // A listing of a prefix nothing is stored under: the bucket exists and the key may
            // list it, without a page of real keys every few seconds.
            self.store
                .list_with_delimiter(Some(&Path::from(HEALTH_PREFIX)))
                .await
                .map(drop)
                .map_err(Into::into)
        })
    }

    fn download_url<'a>(
        &'a self,
        key: &'a str,
        expires_in: Duration,
    ) -> BoxFuture<'a, io::Result<Option<String>>> {
        Box::pin(async move {
            let Some(urls) = &self.urls else { return Ok(None) };
            let location: Path = urls.prefix.parts().chain(path(key)?.parts()).collect();
            let url = urls.signer.signed_url(Method::GET, &location, expires_in).await?;
            Ok(Some(url.to_string()))
        })
    }

    fn begin(&self) -> BoxFuture<'_, io::Result<Box<dyn Partial>>> {
        let store = self.store.clone();
        Box::pin(async move {
            let file = blocking(tempfile::tempfile).await?;
            let partial: Box<dyn Partial> =
                Box::new(SpooledPartial { store, file: HashingFile::new(file), spool: None });
            Ok(partial)
        })
    }
}

/// An upload spooled to an anonymous temporary file until it is committed to the bucket.
#[derive(Debug)]
struct SpooledPartial {
    store: Arc<dyn ObjectStore>,
    file: HashingFile,
    /// The finished spool file.
    spool: Option<std::fs::File>,
}

impl Partial for SpooledPartial {
    fn write(&mut self, chunk: Vec<u8>) -> BoxFuture<'_, io::Result<()>> {
        Box::pin(self.file.write(chunk))
    }

    fn written(&self) -> u64 {
        self.file.written
    }

    fn finish(&mut self) -> BoxFuture<'_, io::Result<String>> {
        Box::pin(async move {
            let (file, sha256) = self.file.finish()?;
            let file = blocking(move || {
                file.sync_data()?;
                Ok(file)
            })
            .await?;
            self.spool = Some(file);
            Ok(sha256)
        })
    }

    fn open(&self) -> io::Result<Box<dyn ReadSeek>> {
        let mut file = self.spool.as_ref().ok_or_else(finished)?.try_clone()?;
        file.rewind()?;
        Ok(Box::new(io::BufReader::new(file)))
    }

    fn commit(self: Box<Self>, key: &str) -> BoxFuture<'_, io::Result<()>> {
        Box::pin(async move {
            let location = path(key)?;
            let mut file = self.spool.as_ref().ok_or_else(finished)?.try_clone()?;
            file.rewind()?;
            if self.file.written <= PART as u64 {
                let bytes = blocking(move || {
                    let mut buf = Vec::new();
                    file.read_to_end(&mut buf)?;
                    Ok(buf)
                })
                .await?;
                self.store.put(&location, PutPayload::from(bytes)).await?;
                return Ok(());
            }
            let mut upload =
                WriteMultipart::new_with_chunk_size(self.store.put_multipart(&location).await?, PART);
            let sent = async {
                loop {
                    let (back, part) = blocking(move || {
                        let mut buf = Vec::with_capacity(PART);
                        (&mut file).take(PART as u64).read_to_end(&mut buf)?;
                        Ok((file, buf))
                    })
                    .await?;
                    file = back;
                    if part.is_empty() {
                        return Ok::<_, io::Error>(());
                    }
                    upload.wait_for_capacity(2).await?;
                    upload.write(&part);
                }
            }
            .await;
            match sent {
                Ok(()) => {
                    upload.finish().await?;
                    Ok(())
                }
                Err(e) => {
                    if let Err(abort) = upload.abort().await {
                        tracing::warn!(error = %abort, "multipart upload not aborted; the bucket's lifecycle rule removes it");
                    }
                    Err(e)
                }
            }
        })
    }
}
