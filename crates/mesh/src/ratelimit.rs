//! Rate limiting in Redis with GCRA (the generic cell rate algorithm): one atomic Lua
//! script, one round trip per check, shared by every replica of a service.
//!
//! # Algorithm
//!
//! A [`Limit`] of `per_minute` requests with `burst` gives an emission interval
//! `T = 60 s / per_minute` and a tolerance `τ = T × (burst − 1)`. Redis stores one number
//! per subject, the theoretical arrival time `TAT` (µs), absent when the subject is idle.
//! A request arriving at `now` is
//!
//! - **allowed** when `now ≥ TAT − τ` (with `TAT = max(TAT, now)`); then
//!   `TAT ← TAT + T`, stored with an expiry of `TAT − now` so that the key disappears
//!   exactly when it would mean "idle" again;
//! - **limited** otherwise, with `retry_after = TAT − τ − now`; nothing is stored.
//!
//! From idle this allows exactly `burst` requests back to back, then one every `T`.
//! `remaining` is how many more requests would be allowed at this instant.
//!
//! `now` is Redis' own clock (`TIME`), so replicas with skewed clocks agree. The script
//! reads and writes one key, so it is atomic and Redis Cluster friendly; it is sent with
//! EVALSHA (reloaded on NOSCRIPT by [`redis::Script`]).
//!
//! # Keys
//!
//! `<prefix>rl:<class>:<sha256(subject) hex>`: the subject (user id, `username|peer-ip`)
//! is hashed, so it can hold any character and no username or address lands in Redis; the
//! key always goes through [`Redis::key`] to stay under the service's ACL key prefix.
//!
//! # When Redis is down
//!
//! [`RateLimiter::check`] returns [`RateLimitError::Unavailable`] and decides nothing: the
//! caller chooses. Fail **closed** where abuse is costly (`Login`: password guessing;
//! `Submit`: GPU time), fail **open** where availability matters more (`Read`, usually
//! `Write`), logging the failure either way.

use std::{sync::LazyLock, time::Duration};

use redis::Script;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tonic::metadata::MetadataValue;

use crate::{error::MeshError, redis::Redis};

/// One limit: `per_minute` sustained rate, `burst` requests allowed at once.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Limit {
    /// Sustained rate: one request every `60 s / per_minute`.
    pub per_minute: u32,
    /// Requests allowed back to back from idle.
    pub burst: u32,
}

impl Limit {
    /// The emission interval `T` in µs (at least 1).
    fn interval_us(self) -> u64 {
        (60_000_000 / u64::from(self.per_minute.max(1))).max(1)
    }

    /// The tolerance `τ = T × (burst − 1)` in µs.
    fn tolerance_us(self) -> u64 {
        self.interval_us().saturating_mul(u64::from(self.burst.saturating_sub(1)))
    }
}

/// Limits per class of RPC, from config (`[rate_limits]` table in each service's TOML).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimits {
    /// Login attempts, per `username|peer-ip`.
    pub login: Limit,
    /// Generation requests (SubmitJob), per user.
    pub submit: Limit,
    /// Read RPCs, per user.
    pub read: Limit,
    /// Other mutating RPCs, per user.
    pub write: Limit,
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            login: Limit { per_minute: 10, burst: 5 },
            // The auditors' "about 10 generation requests per minute per user".
            submit: Limit { per_minute: 10, burst: 5 },
            read: Limit { per_minute: 600, burst: 100 },
            write: Limit { per_minute: 120, burst: 30 },
        }
    }
}

impl RateLimits {
    /// Every rate and burst must be at least 1; the error names the field.
    pub fn validate(&self) -> Result<(), MeshError> {
        for class in Class::ALL {
            let limit = self.get(class);
            for (field, value) in [("per_minute", limit.per_minute), ("burst", limit.burst)] {
                if value == 0 {
                    return Err(MeshError::Config(format!(
                        "rate_limits.{}.{field}: must be at least 1",
                        class.as_str()
                    )));
                }
            }
        }
        Ok(())
    }

    /// The limit of `class`.
    pub fn get(&self, class: Class) -> Limit {
        match class {
            Class::Login => self.login,
            Class::Submit => self.submit,
            Class::Read => self.read,
            Class::Write => self.write,
        }
    }
}

/// A class of RPC, each with its own [`Limit`] and key space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    /// Logins (subject: `username|peer-ip`).
    Login,
    /// Job submissions (subject: user id).
    Submit,
    /// Reads (subject: user id).
    Read,
    /// Other writes (subject: user id).
    Write,
}

impl Class {
    /// Every class.
    pub const ALL: [Self; 4] = [Self::Login, Self::Submit, Self::Read, Self::Write];

    /// The config field and key segment: `login`, `submit`, `read`, `write`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Login => "login",
            Self::Submit => "submit",
            Self::Read => "read",
            Self::Write => "write",
        }
    }
}

impl std::fmt::Display for Class {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The outcome of [`RateLimiter::check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Go ahead; `remaining` more requests would be allowed right now.
    Allowed {
        /// Requests still allowed back to back after this one.
        remaining: u32,
    },
    /// Refused (and not counted); the next request is allowed after `retry_after`.
    Limited {
        /// Wait at least this long (> 0, at most `T`) before retrying.
        retry_after: Duration,
    },
}

/// The limiter could not decide.
#[derive(Debug, thiserror::Error)]
pub enum RateLimitError {
    /// Redis failed (connection refused, timeout, script error); the caller fails open or
    /// closed (see the module docs).
    #[error("rate limiter unavailable: {0}")]
    Unavailable(String),
}

impl From<redis::RedisError> for RateLimitError {
    fn from(e: redis::RedisError) -> Self {
        Self::Unavailable(e.to_string())
    }
}

/// GCRA. KEYS[1]: the subject's key. ARGV[1]: T (µs). ARGV[2]: τ (µs).
/// Returns {allowed (0/1), remaining, retry_after_µs}. All numbers stay below 2^53, so
/// Lua's doubles hold them exactly (and `redis.call` passes them as integers).
const GCRA_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local allow_at = tat - tolerance
if now < allow_at then
  return {0, 0, allow_at - now}
end
local new_tat = tat + interval
redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil((new_tat - now) / 1000))
local remaining = math.floor((now + tolerance - new_tat) / interval) + 1
if remaining < 0 then remaining = 0 end
return {1, remaining, 0}
";

static GCRA: LazyLock<Script> = LazyLock::new(|| Script::new(GCRA_LUA));

/// Checks requests against [`RateLimits`] in Redis. Cheap to clone.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    redis: Redis,
    limits: RateLimits,
}

impl RateLimiter {
    /// A limiter over `redis` (keys under its prefix) with `limits`.
    pub fn new(redis: Redis, limits: RateLimits) -> Self {
        Self { redis, limits }
    }

    /// The configured limits.
    pub fn limits(&self) -> &RateLimits {
        &self.limits
    }

    /// Counts one request of `subject` (user id, `username|peer-ip`) against the `class`
    /// limit, in one atomic round trip. A `Limited` request is not counted.
    pub async fn check(&self, class: Class, subject: &str) -> Result<Decision, RateLimitError> {
        if self.redis.is_down() {
            return Err(RateLimitError::Unavailable("redis is down (breaker open)".to_owned()));
        }
        let limit = self.limits.get(class);
        let key = self.key(class, subject);
        let mut conn = self.redis.manager.clone();
        let result: redis::RedisResult<(i64, i64, i64)> =
            GCRA.key(key).arg(limit.interval_us()).arg(limit.tolerance_us()).invoke_async(&mut conn).await;
        self.redis.note(&result);
        let (allowed, remaining, retry_us) = result?;
        Ok(if allowed == 1 {
            Decision::Allowed { remaining: u32::try_from(remaining).unwrap_or(0) }
        } else {
            Decision::Limited {
                retry_after: Duration::from_micros(u64::try_from(retry_us).unwrap_or(1).max(1)),
            }
        })
    }

    /// `<prefix>rl:<class>:<sha256(subject)>`.
    fn key(&self, class: Class, subject: &str) -> String {
        let digest = hex::encode(Sha256::digest(subject.as_bytes()));
        self.redis.key(&format!("rl:{}:{digest}", class.as_str()))
    }
}

/// The gRPC answer for a refusal: `RESOURCE_EXHAUSTED`, message
/// "rate limit exceeded for <class>; retry after N s" and metadata `retry-after: N`, with
/// N the whole seconds rounded up, at least 1.
pub fn limited_status(class: Class, retry_after: Duration) -> tonic::Status {
    let secs = (retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0)).max(1);
    let mut status =
        tonic::Status::resource_exhausted(format!("rate limit exceeded for {class}; retry after {secs} s"));
    status.metadata_mut().insert("retry-after", MetadataValue::from(secs));
    status
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{config::RedisConfig, vault::Credentials};

    fn redis_config(port: Option<u16>) -> RedisConfig {
        let url =
            std::env::var("SAKUGA_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
        let rest = url.trim_start_matches("redis://");
        let hostport = rest.rsplit('@').next().unwrap_or(rest).trim_end_matches('/');
        let (host, default_port) = match hostport.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), p.parse().unwrap()),
            None => (hostport.to_owned(), 6379),
        };
        RedisConfig {
            host,
            port: port.unwrap_or(default_port),
            vault_path: "unused".to_owned(),
            key_prefix: format!("sakuga-test:rl-{}:", uuid::Uuid::new_v4().simple()),
        }
    }

    async fn connect(cfg: &RedisConfig) -> Redis {
        Redis::connect(cfg, &Credentials { username: None, password: None }).await.unwrap()
    }

    async fn limiter(limits: RateLimits) -> RateLimiter {
        RateLimiter::new(connect(&redis_config(None)).await, limits)
    }

    fn uniform(per_minute: u32, burst: u32) -> RateLimits {
        let limit = Limit { per_minute, burst };
        RateLimits { login: limit, submit: limit, read: limit, write: limit }
    }

    /// Deletes every key under the limiter's prefix (they expire anyway).
    async fn cleanup(limiter: &RateLimiter) {
        let mut conn = limiter.redis.manager.clone();
        let keys: Vec<String> =
            redis::cmd("KEYS").arg(limiter.redis.key("*")).query_async(&mut conn).await.unwrap();
        if !keys.is_empty() {
            let _: i64 = redis::cmd("DEL").arg(keys).query_async(&mut conn).await.unwrap();
        }
    }

    async fn allowed_count(limiter: &RateLimiter, class: Class, subject: &str, n: usize) -> usize {
        let mut allowed = 0;
        for _ in 0..n {
            if matches!(limiter.check(class, subject).await.unwrap(), Decision::Allowed { .. }) {
                allowed += 1;
            }
        }
        allowed
    }

    #[tokio::test]
    async fn burst_then_limited_for_at_most_one_interval() {
        let limiter = limiter(uniform(10, 5)).await;
        for expected_remaining in (0..5).rev() {
            assert_eq!(
                limiter.check(Class::Submit, "user-1").await.unwrap(),
                Decision::Allowed { remaining: expected_remaining }
            );
        }
        match limiter.check(Class::Submit, "user-1").await.unwrap() {
            Decision::Limited { retry_after } => {
                assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_secs(6));
            }
            other @ Decision::Allowed { .. } => panic!("expected Limited, got {other:?}"),
        }
        cleanup(&limiter).await;
    }

    #[tokio::test]
    async fn fifty_concurrent_calls_allow_exactly_the_burst() {
        let limiter = limiter(RateLimits::default()).await;
        let calls = (0..50).map(|_| limiter.check(Class::Submit, "user-1"));
        let decisions = futures_util::future::join_all(calls).await;
        let allowed =
            decisions.into_iter().filter(|d| matches!(d.as_ref().unwrap(), Decision::Allowed { .. })).count();
        assert_eq!(allowed, 5);
        cleanup(&limiter).await;
    }

    #[tokio::test]
    async fn subjects_and_classes_are_independent() {
        let limiter = limiter(uniform(10, 3)).await;
        assert_eq!(allowed_count(&limiter, Class::Submit, "alice", 5).await, 3);
        assert_eq!(allowed_count(&limiter, Class::Submit, "bob", 5).await, 3);
        assert_eq!(allowed_count(&limiter, Class::Read, "alice", 5).await, 3);
        assert_eq!(allowed_count(&limiter, Class::Login, "alice|10.0.0.1", 5).await, 3);
        assert_eq!(allowed_count(&limiter, Class::Login, "alice|10.0.0.2", 5).await, 3);
        cleanup(&limiter).await;
    }

    #[tokio::test]
    async fn allowed_again_after_retry_after() {
        // T = 100 ms.
        let limiter = limiter(uniform(600, 2)).await;
        assert_eq!(allowed_count(&limiter, Class::Write, "user-1", 2).await, 2);
        let Decision::Limited { retry_after } = limiter.check(Class::Write, "user-1").await.unwrap() else {
            panic!("expected Limited");
        };
        assert!(retry_after <= Duration::from_millis(100));
        tokio::time::sleep(retry_after).await;
        assert!(matches!(limiter.check(Class::Write, "user-1").await.unwrap(), Decision::Allowed { .. }));
        cleanup(&limiter).await;
    }

    #[test]
    fn limited_status_carries_retry_after_seconds() {
        for (wait, secs) in
            [(Duration::from_millis(1), 1), (Duration::from_secs(2), 2), (Duration::from_millis(2001), 3)]
        {
            let status = limited_status(Class::Submit, wait);
            assert_eq!(status.code(), tonic::Code::ResourceExhausted);
            let value: u64 = status.metadata().get("retry-after").unwrap().to_str().unwrap().parse().unwrap();
            assert_eq!(value, secs);
            assert_eq!(status.message(), format!("rate limit exceeded for submit; retry after {secs} s"));
        }
    }

    /// Connects through a TCP relay to the real Redis, then kills the relay: checks fail on
    /// the dropped connection ("broken pipe"), then on the refused reconnect.
    #[tokio::test]
    async fn redis_gone_is_unavailable() {
        let upstream = redis_config(None);
        let relay = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = relay.local_addr().unwrap().port();
        let target = format!("{}:{}", upstream.host, upstream.port);
        let relay_task = tokio::spawn(async move {
            let mut links = tokio::task::JoinSet::new();
            loop {
                let (mut inbound, _) = relay.accept().await.unwrap();
                let mut outbound = tokio::net::TcpStream::connect(&target).await.unwrap();
                links.spawn(async move {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                });
            }
        });
        let mut cfg = redis_config(Some(port));
        cfg.host = "127.0.0.1".to_owned();
        let limiter = RateLimiter::new(connect(&cfg).await, RateLimits::default());
        assert!(matches!(limiter.check(Class::Read, "u").await.unwrap(), Decision::Allowed { .. }));
        cleanup(&limiter).await;

        // Dropping the task drops the listener and (via the JoinSet) every relayed link.
        relay_task.abort();
        let _ = relay_task.await;
        let err = limiter.check(Class::Read, "u").await.unwrap_err();
        assert!(matches!(err, RateLimitError::Unavailable(_)));
        assert!(err.to_string().starts_with("rate limiter unavailable: "), "{err}");
        // The reconnect to the dead port is refused.
        let err = limiter.check(Class::Read, "u").await.unwrap_err();
        assert!(matches!(err, RateLimitError::Unavailable(_)));
    }

    #[test]
    fn defaults_validate_and_zero_is_refused_by_name() {
        RateLimits::default().validate().unwrap();
        let mut limits = RateLimits::default();
        limits.submit.burst = 0;
        let err = limits.validate().unwrap_err().to_string();
        assert!(err.contains("rate_limits.submit.burst: must be at least 1"), "{err}");
        let mut limits = RateLimits::default();
        limits.login.per_minute = 0;
        let err = limits.validate().unwrap_err().to_string();
        assert!(err.contains("rate_limits.login.per_minute: must be at least 1"), "{err}");
    }

    #[test]
    fn gcra_parameters() {
        let limit = Limit { per_minute: 10, burst: 5 };
        assert_eq!(limit.interval_us(), 6_000_000);
        assert_eq!(limit.tolerance_us(), 24_000_000);
    }
}
