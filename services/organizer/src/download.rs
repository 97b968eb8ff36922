//! Download URLs (`GetDownloadUrl`): the TTL a request gets, and a presigned URL of a
//! record's bytes, for clients that can reach the object store directly. The URL is a
//! credential (it reads the bytes without a token): it is never logged.

use std::time::Duration;

use chrono::{DateTime, SubsecRound as _, Utc};

use crate::{config::StorageConfig, error::OrganizerError, storage::Storage, store::FileRecord};

/// A URL handed out, and until when it works.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownloadUrl {
    /// Presigned URL of the bytes.
    pub url: String,
    /// When the store starts refusing it.
    pub expires_at: DateTime<Utc>,
}

/// The TTL of a URL: `requested` (`None` or zero: `storage.download_url_ttl`) in whole
/// seconds, a fraction rounded up. A request above `storage.download_url_max_ttl` is refused
/// naming `ttl`, not shortened: a client that needs the URL that long learns it cannot have
/// it instead of finding it expired.
pub fn ttl(requested: Option<Duration>, config: &StorageConfig) -> Result<Duration, OrganizerError> {
    let ttl = requested.filter(|d| !d.is_zero()).unwrap_or(config.download_url_ttl);
    let ttl = Duration::from_secs(ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0));
    let max = config.download_url_max_ttl;
    if ttl > max {
        return Err(OrganizerError::invalid(
            "ttl",
            format!("must be at most {} s (storage.download_url_max_ttl)", max.as_secs()),
        ));
    }
    Ok(ttl)
}

/// A presigned URL of `record`'s bytes that works for `ttl` (whole seconds). FAILED_PRECONDITION
/// when the store has no URLs (local disk), DATA_LOSS when the bytes are gone (as `ReadFile`).
pub async fn url(
    storage: &dyn Storage,
    record: &FileRecord,
    ttl: Duration,
) -> Result<DownloadUrl, OrganizerError> {
    // The signature's time is in whole seconds and taken after this: the URL works at least
    // until `expires_at`.
    let expires_at = Utc::now().trunc_subsecs(0)
        + chrono::Duration::from_std(ttl).map_err(|_| OrganizerError::invalid("ttl", "out of range"))?;
    let key = record.bytes_key();
    let Some(url) = storage.download_url(key, ttl).await? else {
        return Err(OrganizerError::NoDownloadUrls);
    };
    // A URL of missing bytes would answer 404 to the client; say so here, as ReadFile does.
    if !storage.exists(key).await? {
        tracing::warn!(file_id = %record.id, "stored bytes missing");
        return Err(OrganizerError::DataLoss(format!("bytes of file {} are missing", record.id)));
    }
    Ok(DownloadUrl { url, expires_at })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_ttl_is_the_default_a_fraction_rounds_up_and_past_the_max_is_refused_naming_ttl() {
        let config = StorageConfig::default();
        assert_eq!(ttl(None, &config).unwrap(), Duration::from_mins(5));
        assert_eq!(ttl(Some(Duration::ZERO), &config).unwrap(), Duration::from_mins(5));
        assert_eq!(ttl(Some(Duration::from_millis(1500)), &config).unwrap(), Duration::from_secs(2));
        assert_eq!(ttl(Some(Duration::from_hours(1)), &config).unwrap(), Duration::from_hours(1));
        let err = ttl(Some(Duration::from_secs(3601)), &config).unwrap_err().to_string();
        assert_eq!(err, "ttl: must be at most 3600 s (storage.download_url_max_ttl)");
        let err = ttl(Some(Duration::from_millis(3_600_001)), &config).unwrap_err().to_string();
        assert!(err.starts_with("ttl: "), "{err}");
    }
}
