//! Argon2id hashing and verification behind a semaphore.
//!
//! One Argon2id computation with the default parameters allocates 19 MiB and keeps a core
//! busy for tens of milliseconds. Unbounded, a burst of logins (60 made-up usernames at
//! once) runs as many computations side by side on the blocking pool, and the allocator
//! keeps the memory of every blocking thread's arena: the process grew from 60 MiB to
//! 1.2 GiB and stayed there. Here every hash and verification (logins, including the dummy
//! verification for unknown usernames, user creation, the bootstrap admin) first takes a
//! permit: at most `argon2_permits` run at once (default: the number of cores, the most
//! that can make progress anyway). A call that gets no permit within `argon2_wait` is
//! refused with RESOURCE_EXHAUSTED and a `retry-after`, counted as ceiling `argon2_busy`.
//!
//! The computations run on a fixed set of `argon2_permits` threads of their own, not on
//! tokio's blocking pool. Measured with the permits alone on the blocking pool, 60
//! concurrent logins still left the process at 420 MiB: a permit freed at the end of one
//! task was taken by the next before the finishing thread was idle again, so the pool kept
//! starting threads, and glibc keeps a 19 MiB block in the arena of every thread that ever
//! ran one. With a fixed set of threads it still stood at 230 MiB (each thread's arena
//! fragmenting around repeated 19 MiB allocations). So each thread also keeps one block
//! buffer of its own, allocated once and reused by every computation
//! (`hash_password_into_with_memory`): the Argon2 memory of the process is
//! `argon2_permits` × 19 MiB, whatever the load.
//!
//! The permit moves into the job: a caller that goes away does not free it before the
//! computation it started has ended.

use std::{
    sync::{Arc, Mutex, mpsc},
    time::Duration,
};

use std::cell::RefCell;

use argon2::{
    Algorithm, Argon2, Block, Params, Version,
    password_hash::{self, Output, ParamsString, PasswordHash, Salt, SaltString, rand_core::OsRng},
};
use sakuga_mesh::metrics::Metrics;
use tokio::sync::{Semaphore, oneshot};

use crate::error::AuthError;

type Job = Box<dyn FnOnce() + Send>;

/// Most memory a stored hash may ask for (blocks of 1 KiB): 64 MiB, thrice the default.
const MAX_BLOCKS: usize = 64 * 1024;

thread_local! {
    /// The Argon2 memory of this thread, grown once to the largest cost seen.
    static BLOCKS: RefCell<Vec<Block>> = const { RefCell::new(Vec::new()) };
}

/// Argon2 of `password` with this thread's reusable memory: the PHC hash.
fn compute<'a>(
    password: &[u8],
    algorithm: Algorithm,
    version: Version,
    params: &Params,
    salt: Salt<'a>,
) -> password_hash::Result<PasswordHash<'a>> {
    let need = params.block_count();
    if need > MAX_BLOCKS {
        return Err(password_hash::Error::ParamValueInvalid(password_hash::errors::InvalidValue::TooLong));
    }
    let mut salt_buf = [0_u8; 64];
    let salt_bytes = salt.decode_b64(&mut salt_buf)?;
    let out_len = params.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN);
    let argon = Argon2::new(algorithm, version, params.clone());
    let output = BLOCKS.with_borrow_mut(|blocks| {
        if blocks.len() < need {
            blocks.resize(need, Block::default());
        }
        Output::init_with(out_len, |out| {
            argon
                .hash_password_into_with_memory(password, salt_bytes, out, &mut blocks[..need])
                .map_err(Into::into)
        })
    })?;
    Ok(PasswordHash {
        algorithm: algorithm.ident(),
        version: Some(version.into()),
        params: ParamsString::try_from(params)?,
        salt: Some(salt),
        hash: Some(output),
    })
}

/// Whether `password` matches the PHC string `phc` (constant-time comparison).
fn verify_phc(password: &[u8], phc: &str) -> password_hash::Result<bool> {
    let hash = PasswordHash::new(phc)?;
    let algorithm = Algorithm::try_from(hash.algorithm)?;
    let version = hash.version.map(Version::try_from).transpose()?.unwrap_or_default();
    let params = Params::try_from(&hash)?;
    let (Some(salt), Some(expected)) = (hash.salt, hash.hash) else { return Ok(false) };
    let computed = compute(password, algorithm, version, &params, salt)?;
    Ok(computed.hash.is_some_and(|c| c == expected))
}

/// Bounded Argon2id work. Cheap to clone (the permits and threads are shared); the threads
/// end when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct Passwords {
    permits: Arc<Semaphore>,
    size: usize,
    wait: Duration,
    jobs: mpsc::Sender<Job>,
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
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        for i in 0..size {
            let queue = queue.clone();
            // A thread that cannot start leaves its permit to the others.
            let _ = std::thread::Builder::new().name(format!("argon2-{i}")).spawn(move || {
                loop {
                    let job = queue.lock().unwrap_or_else(std::sync::PoisonError::into_inner).recv();
                    match job {
                        Ok(job) => job(),
                        Err(_) => return,
                    }
                }
            });
        }
        Self { permits: Arc::new(Semaphore::new(size)), size, wait, jobs, metrics }
    }

    /// How many computations may run at once.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Runs `work` on one of the Argon2 threads while holding a permit.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, AuthError> {
        // The semaphore is never closed: an acquire error cannot happen, and counts as busy.
        let Ok(Ok(permit)) = tokio::time::timeout(self.wait, self.permits.clone().acquire_owned()).await
        else {
            if let Some(m) = &self.metrics {
                m.ceiling_refused("argon2_busy");
            }
            return Err(AuthError::Busy { ceiling: "argon2_busy", retry_after_secs: 1 });
        };
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(work());
            drop(permit);
        });
        self.jobs.send(job).map_err(|_| AuthError::Signing("password threads gone".to_owned()))?;
        rx.await.map_err(|_| AuthError::Signing("password computation failed".to_owned()))
    }

    /// Hashes `password` with Argon2id (default parameters, fresh salt): a PHC string.
    pub async fn hash(&self, password: String) -> Result<String, AuthError> {
        self.run(move || {
            let salt = SaltString::generate(&mut OsRng);
            compute(
                password.as_bytes(),
                Algorithm::Argon2id,
                Version::V0x13,
                &Params::default(),
                salt.as_salt(),
            )
            .map(|h| h.to_string())
        })
        .await?
        .map_err(|e| AuthError::Signing(e.to_string()))
    }

    /// Whether `password` matches the PHC string `hash` (false for a malformed hash).
    pub async fn verify(&self, password: String, hash: String) -> Result<bool, AuthError> {
        self.run(move || verify_phc(password.as_bytes(), &hash).unwrap_or(false)).await
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
    fn the_reused_memory_agrees_with_the_library_both_ways() {
        use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};
        let salt = SaltString::generate(&mut OsRng);
        let library = Argon2::default().hash_password(b"pw-one", &salt).unwrap().to_string();
        assert!(verify_phc(b"pw-one", &library).unwrap());
        assert!(!verify_phc(b"pw-two", &library).unwrap());
        let ours =
            compute(b"pw-one", Algorithm::Argon2id, Version::V0x13, &Params::default(), salt.as_salt())
                .unwrap();
        assert_eq!(ours.to_string(), library, "same salt, same hash");
        assert!(Argon2::default().verify_password(b"pw-one", &PasswordHash::new(&library).unwrap()).is_ok());
        // A cheaper stored cost is verified with a prefix of the same memory.
        let cheap = Argon2::new(Algorithm::Argon2id, Version::V0x13, Params::new(1024, 1, 1, None).unwrap())
            .hash_password(b"pw-one", &salt)
            .unwrap()
            .to_string();
        assert!(verify_phc(b"pw-one", &cheap).unwrap());
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
