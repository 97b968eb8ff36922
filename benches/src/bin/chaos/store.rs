//! Where the run's bytes are, listed as the organizer's keys: the storage folder, or the
//! bucket of the run's SeaweedFS (read with the access key of its identity file).

use std::{path::Path, sync::Arc};

use anyhow::Context as _;
use futures_util::TryStreamExt as _;
use object_store::{ObjectStore, aws::AmazonS3Builder};

/// The bucket the stack's organizers use.
const BUCKET: &str = "sakuga";

/// The store of a chaos stack.
pub(crate) enum Store {
    /// `make up`'s storage folder.
    Folder(std::path::PathBuf),
    /// The SeaweedFS bucket.
    Bucket(Arc<dyn ObjectStore>),
}

impl Store {
    /// The folder under `dev`, or the bucket at `s3_endpoint`.
    pub(crate) fn open(dev: &Path, s3_endpoint: Option<&str>) -> anyhow::Result<Self> {
        let Some(endpoint) = s3_endpoint else { return Ok(Self::Folder(dev.join("files"))) };
        let identities: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dev.join("weed/s3.json")).context("the SeaweedFS identity file")?,
        )?;
        let creds = &identities["identities"][0]["credentials"][0];
        let key =
            |k: &str| creds[k].as_str().map(str::to_owned).with_context(|| format!("s3.json has no {k}"));
        let bucket = AmazonS3Builder::new()
            .with_endpoint(endpoint)
            .with_allow_http(true)
            .with_region("us-east-1")
            .with_bucket_name(BUCKET)
            .with_access_key_id(key("accessKey")?)
            .with_secret_access_key(key("secretKey")?)
            .build()?;
        Ok(Self::Bucket(Arc::new(bucket)))
    }

    /// Every key, relative to the store's root.
    pub(crate) async fn keys(&self) -> anyhow::Result<Vec<String>> {
        match self {
            Self::Folder(root) => {
                let mut out = Vec::new();
                walk(root, root, &mut out)?;
                Ok(out)
            }
            Self::Bucket(store) => {
                let objects: Vec<_> = store.list(None).try_collect().await?;
                Ok(objects.into_iter().map(|o| o.location.to_string()).collect())
            }
        }
    }
}

/// Every file under `dir`, as a path relative to `root` with `/` separators.
fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) -> anyhow::Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(()) };
    for e in entries {
        let e = e?;
        let path = e.path();
        if e.file_type()?.is_dir() {
            walk(root, &path, out)?;
        } else {
            out.push(path.strip_prefix(root)?.to_string_lossy().replace('\\', "/"));
        }
    }
    Ok(())
}
