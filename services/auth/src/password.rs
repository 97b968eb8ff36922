//! Argon2id hashing and verification behind a semaphore.
//!
//! One Argon2id computation with the default parameters allocates 19 MiB and keeps a core
//! busy for tens of milliseconds. Unbounded, a burst of logins (60 made-up usernames at
//! once) runs as many computations side by side on the blocking pool, and the allocator
//! keeps the memory of every blocking thread's arena: the process grew from 60 MiB to
//! 1.2 GiB and stayed there. Here every hash and verification (logins, including the dummy
//! verification for unknown usernames, user creation, the bootstrap admin) first takes a
//! permit: at most `argon2_permits` run at once (default: the number of cores, the most
//! that can make progress anyway), so the blocking pool never runs more Argon2 threads than
//! that. A call that gets no permit within `argon2_wait_ms` is refused with
//! RESOURCE_EXHAUSTED and a `retry-after`, counted as ceiling `argon2_busy`.
//!
//! The permit moves into the blocking task: a caller that goes away does not free it
//! before the computation it started has ended.

use std::{sync::Arc, time::Duration};

use argon2::{
    Argon2,
    password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString, rand_core::OsRng},
};
use sakuga_mesh::metrics::Metrics;
use tokio::sync::Semaphore;

use crate::error::AuthError;

/// Bounded Argon2id work. Cheap to clone (the permits are shared).
#[derive(Debug, Clone)]
pub struct Passwords {
    permits: Arc<Semaphore>,
    size: usize,
    wait: Duration,
    metrics: Option<Arc<Metrics>>,
}

impl Passwords {
    /// `permits` computations at once (0: the number of cores), each caller waiting at most
    /// `wait` for one; refusals counted in `metrics`.
    pub fn new(permits: usize, wait: Duration, metrics: Option<Arc<Metrics>>) -> Self {
        let size = if permits == 0 {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        } else {
            permits
        };
        Self { permits: Arc::new(Semaphore::new(size)), size, wait, metrics }
    }

    /// How many computations may run at once.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Runs `work` on the blocking pool while holding a permit.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, AuthError> {
        // The semaphore is never closed: an acquire error cannot happen, and counts as busy.
        let Ok(Ok(permit)) = tokio::time::timeout(self.wait, self.permits.clone().acquire_owned()).await
        else {
            if let Some(m) = &self.metrics {
                m.inc(
                    "sakuga_limit_refusals_total",
                    "Requests refused by a resource ceiling, by ceiling.",
                    &[("ceiling", "argon2_busy")],
                    1.0,
                );
            }
            return Err(AuthError::Busy { ceiling: "argon2_busy", retry_after_secs: 1 });
        };
        tokio::task::spawn_blocking(move || {
            let out = work();
            drop(permit);
            out
        })
        .await
        .map_err(|e| AuthError::Signing(format!("password task: {e}")))
    }

    /// Hashes `password` with Argon2id (default parameters, fresh salt): a PHC string.
    pub async fn hash(&self, password: String) -> Result<String, AuthError> {
        self.run(move || {
            let salt = SaltString::generate(&mut OsRng);
            Argon2::default().hash_password(password.as_bytes(), &salt).map(|h| h.to_string())
        })
        .await?
        .map_err(|e| AuthError::Signing(e.to_string()))
    }

    /// Whether `password` matches the PHC string `hash` (false for a malformed hash).
    pub async fn verify(&self, password: String, hash: String) -> Result<bool, AuthError> {
        self.run(move || {
            PasswordHash::new(&hash)
                .is_ok_and(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_verify_and_wrong_passwords_do_not() {
        let p = Passwords::new(1, Duration::from_secs(30), None);
        let hash = p.hash("correct horse battery".to_owned()).await.unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(p.verify("correct horse battery".to_owned(), hash.clone()).await.unwrap());
        assert!(!p.verify("wrong".to_owned(), hash).await.unwrap());
        assert!(!p.verify("x".to_owned(), "not a phc string".to_owned()).await.unwrap());
    }

    #[test]
    fn zero_permits_means_the_core_count() {
        let cores = std::thread::available_parallelism().unwrap().get();
        assert_eq!(Passwords::new(0, Duration::ZERO, None).size(), cores);
        assert_eq!(Passwords::new(3, Duration::ZERO, None).size(), 3);
    }

    #[tokio::test]
    async fn no_permit_within_the_wait_is_resource_exhausted_with_retry_after() {
        let metrics = Metrics::new();
        let p = Passwords::new(1, Duration::from_millis(1), Some(metrics.clone()));
        // Hold the only permit, as a running computation would.
        let held = p.permits.clone().acquire_owned().await.unwrap();
        let err = p.hash("whatever password".to_owned()).await.unwrap_err();
        let status = tonic::Status::from(err);
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(status.message().contains("argon2_busy"), "{}", status.message());
        assert_eq!(status.metadata().get("retry-after").unwrap(), "1");
        assert!(
            metrics.render().contains(r#"sakuga_limit_refusals_total{ceiling="argon2_busy"} 1"#),
            "{}",
            metrics.render()
        );
        drop(held);
        assert!(p.hash("whatever password".to_owned()).await.is_ok(), "a freed permit is taken");
    }
}
