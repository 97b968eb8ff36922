//! Storing a finished job's artifacts. A failure of the job's own (a refused artifact) or a
//! lost lease ends the attempt at once. A failure of the platform (storage full or
//! unreachable, no organizer answering) does not: the artifacts are kept ([`Holder`]), the
//! job's progress says what it waits for, and the upload is tried again with backoff while
//! the lease holds, for at most `upload_wait_max`. Work the GPU finished is not thrown away
//! because the storage behind it is briefly gone.

use std::{collections::VecDeque, time::Duration};

use sakuga_imaging::Artifact;
use sakuga_mesh::retry::Backoff;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    hold::{Held, HoldError, Holder},
    metrics::Families,
    upload::{ArtifactStore, Target, UploadError},
};

/// First wait between uploads while the platform fails; it doubles up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(200);
/// Longest wait between uploads while the platform fails.
const RETRY_MAX: Duration = Duration::from_secs(10);

/// Why the artifacts were not all stored.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DeliveryError {
    /// The organizer refused an artifact or the lease: the job's attempt failed.
    #[error(transparent)]
    Job(UploadError),
    /// The platform could not store them within `upload_wait_max`, or they could not be
    /// kept: not the job's failure.
    #[error("{0}")]
    Platform(String),
    /// The lease ended (cancel, revoke) while waiting; the artifacts are dropped.
    #[error("canceled")]
    Canceled,
}

impl From<HoldError> for DeliveryError {
    fn from(e: HoldError) -> Self {
        Self::Platform(format!("artifacts could not be kept while storage was away: {e}"))
    }
}

/// What delivering a job's artifacts needs.
pub(crate) struct Delivery<'a> {
    /// Where they go.
    pub(crate) store: &'a dyn ArtifactStore,
    /// Where they wait.
    pub(crate) holder: &'a Holder,
    /// Retry and waiting counts.
    pub(crate) metrics: &'a Families,
    /// Longest wait for the platform.
    pub(crate) wait_max: Duration,
    /// The job's names for them.
    pub(crate) target: &'a Target,
    /// Fires when the lease ends.
    pub(crate) cancel: &'a CancellationToken,
    /// Tells the job's progress stage (item, stage).
    pub(crate) progress: &'a (dyn Fn(u32, &str) + Send + Sync),
}

enum Pending {
    Fresh(Artifact),
    Held(Held),
}

/// Stores `artifacts` in order; returns their file ids.
pub(crate) async fn deliver(
    d: &Delivery<'_>,
    artifacts: Vec<Artifact>,
) -> Result<Vec<String>, DeliveryError> {
    let mut pending: VecDeque<Pending> = artifacts.into_iter().map(Pending::Fresh).collect();
    let mut ids = Vec::with_capacity(pending.len());
    // Since when, and how long to wait next, once the platform failed.
    let mut waiting: Option<(Instant, Backoff)> = None;
    while let Some(item) = pending.pop_front() {
        let index = u32::try_from(ids.len()).unwrap_or(u32::MAX);
        if waiting.is_none() {
            (d.progress)(index, "uploading");
        }
        let result = tokio::select! {
            () = d.cancel.cancelled() => return Err(DeliveryError::Canceled),
            r = upload(d, index, &item) => r?,
        };
        let (fault, message, retry_after) = match result {
            Ok(id) => {
                if waiting.is_some() {
                    info!(job_id = %d.target.job_id, index, "storage is back, artifact stored");
                    (d.progress)(index, "uploading");
                }
                ids.push(id);
                continue;
            }
            Err(UploadError::Platform { fault, message, retry_after }) => (fault, message, retry_after),
            Err(e) => return Err(DeliveryError::Job(e)),
        };
        d.metrics.upload_retry(fault);
        let (since, backoff) =
            waiting.get_or_insert_with(|| (Instant::now(), Backoff::new(RETRY_FIRST, RETRY_MAX)));
        let waited = since.elapsed();
        if waited >= d.wait_max {
            return Err(DeliveryError::Platform(format!(
                "{fault}: the artifacts could not be stored within upload_wait_max ({}): {message}",
                humantime_serde::re::humantime::format_duration(d.wait_max)
            )));
        }
        // This one and every one after it wait: keep them (within the memory cap).
        pending.push_front(item);
        let rest: Vec<Pending> = pending.drain(..).collect();
        for p in rest {
            pending.push_back(match p {
                Pending::Fresh(a) => Pending::Held(d.holder.hold(a).await?),
                held @ Pending::Held(_) => held,
            });
        }
        (d.progress)(index, fault.waiting_stage());
        let delay = backoff.next_delay().max(retry_after).min(d.wait_max.saturating_sub(waited));
        warn!(job_id = %d.target.job_id, index, reason = fault.label(), error = %message, retry_in_ms = delay.as_millis(), "upload failed for the platform; artifact kept, retrying");
        tokio::select! {
            () = d.cancel.cancelled() => return Err(DeliveryError::Canceled),
            () = tokio::time::sleep(delay) => {}
        }
    }
    Ok(ids)
}

/// One upload of `item` as artifact `index`.
async fn upload(
    d: &Delivery<'_>,
    index: u32,
    item: &Pending,
) -> Result<Result<String, UploadError>, DeliveryError> {
    let span = tracing::info_span!("upload", otel.name = "upload", service = "generator", index);
    let artifact = match item {
        Pending::Fresh(a) => std::borrow::Cow::Borrowed(a),
        Pending::Held(h) => h.artifact().await?,
    };
    Ok(tracing::Instrument::instrument(d.store.store(d.target, index, &artifact), span).await)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use futures_util::future::BoxFuture;

    use super::*;
    use crate::{backend::Kind, upload::Fault};

    /// A store answering from a script, then storing.
    struct Scripted {
        script: Mutex<VecDeque<UploadError>>,
        stored: Mutex<Vec<(u32, Vec<u8>)>>,
    }

    impl ArtifactStore for Scripted {
        fn store<'a>(
            &'a self,
            _target: &'a Target,
            index: u32,
            artifact: &'a Artifact,
        ) -> BoxFuture<'a, Result<String, UploadError>> {
            let next = self.script.lock().unwrap().pop_front();
            Box::pin(async move {
                if let Some(e) = next {
                    return Err(e);
                }
                self.stored.lock().unwrap().push((index, artifact.bytes.clone()));
                Ok(format!("file-{index}"))
            })
        }
    }

    fn full() -> UploadError {
        UploadError::Platform {
            fault: Fault::StorageFull,
            message: "ResourceExhausted: storage full".to_owned(),
            retry_after: Duration::ZERO,
        }
    }

    fn target() -> Target {
        Target {
            job_id: "job".into(),
            lease_token: "lease".into(),
            owner_id: "owner".into(),
            project_id: String::new(),
            kind: Kind::Image,
            width: 8,
            height: 8,
            frames: 1,
        }
    }

    fn artifacts(n: u8) -> Vec<Artifact> {
        (0..n)
            .map(|i| Artifact { bytes: vec![i; 1000], mime: "image/png", width: 8, height: 8, frames: 1 })
            .collect()
    }

    struct Run {
        result: Result<Vec<String>, DeliveryError>,
        stages: Vec<String>,
        stored: Vec<(u32, Vec<u8>)>,
        families: Arc<Families>,
    }

    async fn run(script: Vec<UploadError>, n: u8, wait_max: Duration, cancel: CancellationToken) -> Run {
        let spool = tempfile::tempdir().unwrap();
        let families = Arc::new(Families::register(&sakuga_mesh::metrics::Metrics::new()));
        // Room in memory for one artifact: the others go to spool files.
        let holder = Holder::new(1500, spool.path().to_path_buf(), families.clone());
        let store = Scripted { script: Mutex::new(script.into()), stored: Mutex::new(Vec::new()) };
        let stages = Mutex::new(Vec::new());
        let progress = |_: u32, stage: &str| stages.lock().unwrap().push(stage.to_owned());
        let target = target();
        let d = Delivery {
            store: &store,
            holder: &holder,
            metrics: &families,
            wait_max,
            target: &target,
            cancel: &cancel,
            progress: &progress,
        };
        let result = deliver(&d, artifacts(n)).await;
        assert_eq!(holder.in_memory(), 0, "nothing stays held");
        assert_eq!(std::fs::read_dir(spool.path()).unwrap().count(), 0, "no spool file stays");
        let stored = store.stored.into_inner().unwrap();
        Run { result, stages: stages.into_inner().unwrap(), stored, families }
    }

    #[tokio::test]
    async fn platform_failures_wait_and_then_every_artifact_is_stored_in_order() {
        let r = run(vec![full(), full(), full()], 3, Duration::from_mins(1), CancellationToken::new()).await;
        assert_eq!(r.result.unwrap(), ["file-0", "file-1", "file-2"]);
        assert_eq!(
            r.stored,
            artifacts(3).into_iter().zip(0..).map(|(a, i)| (i, a.bytes)).collect::<Vec<_>>()
        );
        assert!(r.stages.iter().any(|s| s == "waiting for storage: storage full"), "{:?}", r.stages);
        assert_eq!(r.stages.last().map(String::as_str), Some("uploading"), "{:?}", r.stages);
        assert_eq!(r.families.waiting("memory").get() + r.families.waiting("spool").get(), 0);
    }

    #[tokio::test]
    async fn a_refused_artifact_or_lost_lease_ends_the_attempt_at_once() {
        let refused = UploadError::Refused("artifact rejected: not a PNG".into());
        let r = run(vec![full(), refused.clone()], 2, Duration::from_mins(1), CancellationToken::new()).await;
        assert!(matches!(r.result, Err(DeliveryError::Job(e)) if e == refused));
        let lost = UploadError::LeaseLost("not leased".into());
        let r = run(vec![lost.clone()], 1, Duration::from_mins(1), CancellationToken::new()).await;
        assert!(matches!(r.result, Err(DeliveryError::Job(e)) if e == lost));
    }

    #[tokio::test]
    async fn past_the_longest_wait_it_is_a_platform_failure_naming_the_cause() {
        let r = run(vec![full(); 100], 2, Duration::from_secs(1), CancellationToken::new()).await;
        let Err(DeliveryError::Platform(why)) = r.result else { panic!("{:?}", r.result) };
        assert!(why.starts_with("storage full: "), "{why}");
        assert!(r.stored.is_empty());
    }

    #[tokio::test]
    async fn a_lease_lost_while_waiting_drops_the_artifacts() {
        let cancel = CancellationToken::new();
        let later = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            later.cancel();
        });
        let r = run(vec![full(); 100], 3, Duration::from_mins(1), cancel).await;
        assert!(matches!(r.result, Err(DeliveryError::Canceled)), "{:?}", r.result);
        assert!(r.stored.is_empty());
    }
}
