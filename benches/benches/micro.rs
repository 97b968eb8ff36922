//! Micro-benchmarks of the mesh's hot paths, with criterion, each calling the project's own
//! functions (nothing re-implemented here):
//!
//! - `validate/*`: `sakuga_scheduler::validate::spec`, the SubmitJob checks, on a typical valid
//!   image spec (512×512, 20 steps, a ~90-character prompt, defaults filled in) and on a spec
//!   refused late (unknown sampler, after every text and number check passed). The `RawSpec`
//!   clone that feeds each call is made outside the timed section.
//! - `auth/*`: `sakuga_mesh::auth::Verifier::verify` on a real Ed25519 (EdDSA) access token with
//!   the claims the auth service issues, signed and published through the auth service's own
//!   `SigningKeys` (keys made by `sakuga_testkit::signing_keys`). `verify_jwt_no_redis` has no
//!   Redis, so the revocation check is skipped (pure decode + signature + claims);
//!   `verify_jwt_revocation_check` adds the revocation lookup (one `MGET` round trip to Redis).
//! - `ratelimit/*`: `sakuga_mesh::ratelimit::RateLimiter::check`, one EVALSHA round trip of the
//!   GCRA script to a real Redis: `check_allowed` with limits so high every call is allowed
//!   (each call writes the key), `check_limited` on a subject whose 1-per-minute budget is
//!   spent (read only, refused).
//! - `render/*`: one full `sakuga_imaging::render` of a 512×512 image (request built by
//!   `sakuga_generator::builtin::request`) with 1 and with 5 steps: the fixed part (scene, noise,
//!   quantize, PNG encode with `Compression::Fast`) plus the steps; the per-step cost is
//!   `(time(5 steps) − time(1 step)) / 4`.
//! - `png/encode_rgb_png_512`: `sakuga_imaging::encode_rgb_png` (thumbnails, previews, the
//!   benchmark backend) of a 512×512 RGB image, the pixels of a real 20-step render; the
//!   throughput is of raw RGB bytes in.
//! - `sha256/*`: `Sha256::digest` (the call the generator's upload header and the organizer's
//!   checks make; neither has a per-chunk hashing function, both hash the whole artifact) of a
//!   256 KiB upload chunk (the generator's default `upload_chunk_bytes`) and of a 1 MiB artifact.
//!
//! Async calls run on a current-thread tokio runtime: each sample awaits the call `iters` times
//! in one `block_on` (what criterion's `to_async` does).
//!
//! Run: `cargo bench -p sakuga-benches --bench micro` (criterion options after `--`, e.g.
//! `-- --warm-up-time 1 --measurement-time 3`, or a filter such as `-- auth/`).
//! Environment: `SAKUGA_TEST_REDIS_URL` (`redis://host:port`, no authentication; e.g. from
//! `scripts/test.sh --env`). When it is unset, or Redis does not answer, the Redis benchmarks
//! (`auth/verify_jwt_revocation_check`, `ratelimit/*`) are skipped with a note on stderr.

#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)]

use std::{
    future::Future,
    hint::black_box,
    ops::ControlFlow,
    time::{Duration, Instant},
};

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput};
use jsonwebtoken::{Algorithm, Header};
use sakuga_mesh::{
    auth::{AUDIENCE, Claims, ISSUER, Role, Verifier, now_secs},
    config::RedisConfig,
    ratelimit::{Class, Decision, Limit, RateLimiter, RateLimits},
    redis::Redis,
    vault::Credentials,
};
use sakuga_proto::v1::{JobKind, JobSpec};
use sakuga_scheduler::validate::{self, RawSpec};
use sha2::{Digest as _, Sha256};
use tokio::runtime::Runtime;

/// The scheduler's default `max_job_pixels`.
const MAX_JOB_PIXELS: u64 = 64 * 1024 * 1024;
/// The generator's default `upload_chunk_bytes`.
const UPLOAD_CHUNK: usize = 256 * 1024;
const PROMPT: &str = "a quiet seaside town at sunset, sakura petals drifting over the harbour, cel shading";

/// Awaits `f()` `iters` times inside one `block_on` and returns the elapsed time.
fn run_async<F, Fut>(rt: &Runtime, iters: u64, mut f: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future,
{
    rt.block_on(async {
        let start = Instant::now();
        for _ in 0..iters {
            black_box(f().await);
        }
        start.elapsed()
    })
}

/// Connects to `SAKUGA_TEST_REDIS_URL` (host and port only, no authentication) with a key
/// prefix of its own; `None` (with a note) when unset or unreachable.
fn connect_redis(rt: &Runtime) -> Option<Redis> {
    let Ok(url) = std::env::var("SAKUGA_TEST_REDIS_URL") else {
        eprintln!("note: SAKUGA_TEST_REDIS_URL is unset; skipping the Redis benchmarks");
        return None;
    };
    let rest = url.trim_start_matches("redis://");
    let hostport = rest.rsplit('@').next().unwrap_or(rest).trim_end_matches('/');
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) => (h.to_owned(), p.parse().unwrap_or(6379)),
        None => (hostport.to_owned(), 6379),
    };
    let cfg = RedisConfig {
        host,
        port,
        vault_path: "unused".to_owned(),
        key_prefix: format!("sakuga-bench-{}:", uuid::Uuid::new_v4().simple()),
    };
    match rt.block_on(Redis::connect(&cfg, &Credentials { username: None, password: None })) {
        Ok(redis) => Some(redis),
        Err(e) => {
            eprintln!("note: Redis at {url} unreachable ({e}); skipping the Redis benchmarks");
            None
        }
    }
}

fn typical_spec() -> RawSpec {
    RawSpec {
        kind: 1,
        prompt: PROMPT.to_owned(),
        negative_prompt: "blurry, text, watermark".to_owned(),
        width: 512,
        height: 512,
        steps: 20,
        sampler: "euler_a".to_owned(),
        ..RawSpec::default()
    }
}

fn bench_validate(c: &mut Criterion) {
    let valid = typical_spec();
    assert!(validate::spec(valid.clone(), MAX_JOB_PIXELS, || 7).is_ok());
    let invalid = RawSpec { sampler: "magic".to_owned(), ..typical_spec() };
    assert!(validate::spec(invalid.clone(), MAX_JOB_PIXELS, || 7).is_err());

    let mut g = c.benchmark_group("validate");
    for (name, raw) in [("spec_valid", valid), ("spec_invalid_sampler", invalid)] {
        g.bench_function(name, |b| {
            b.iter_batched(
                || raw.clone(),
                |r| validate::spec(r, black_box(MAX_JOB_PIXELS), || 7),
                BatchSize::SmallInput,
            );
        });
    }
    g.finish();
}

/// A token as the auth service issues it (same claims, header and key handling).
fn signed_token() -> (String, sakuga_mesh::auth::KeySet) {
    let secret = sakuga_testkit::signing_keys(&["k1", "k2"], "k2").unwrap();
    let keys = sakuga_auth::keys::SigningKeys::from_secret(secret).unwrap();
    let now = now_secs();
    let claims = Claims {
        iss: ISSUER.to_owned(),
        aud: AUDIENCE.to_owned(),
        sub: uuid::Uuid::new_v4().to_string(),
        role: Role::User,
        iat: now,
        exp: now + 3600,
        jti: uuid::Uuid::new_v4().to_string(),
    };
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(keys.active.clone());
    let token = jsonwebtoken::encode(&header, &claims, keys.encoding()).unwrap();
    (token, keys.decoding().unwrap())
}

fn bench_auth(c: &mut Criterion, rt: &Runtime, redis: Option<&Redis>) {
    let (token, keyset) = signed_token();
    let mut g = c.benchmark_group("auth");
    let plain = Verifier::with_keys(keyset.clone(), None, None);
    assert!(rt.block_on(plain.verify(&token)).is_ok());
    g.bench_function("verify_jwt_no_redis", |b| {
        let (v, t) = (&plain, token.as_str());
        b.iter_custom(|iters| run_async(rt, iters, move || v.verify(t)));
    });
    if let Some(redis) = redis {
        let checked = Verifier::with_keys(keyset, Some(redis.clone()), None);
        assert!(rt.block_on(checked.verify(&token)).is_ok());
        g.bench_function("verify_jwt_revocation_check", |b| {
            let (v, t) = (&checked, token.as_str());
            b.iter_custom(|iters| run_async(rt, iters, move || v.verify(t)));
        });
    }
    g.finish();
}

fn bench_ratelimit(c: &mut Criterion, rt: &Runtime, redis: &Redis) {
    let defaults = RateLimits::default();
    let limits = RateLimits {
        // Interval 1 µs, burst ~4.3e9: every call is allowed.
        read: Limit { per_minute: 60_000_000, burst: u32::MAX },
        // One per minute: after the first call every call is refused for a minute.
        submit: Limit { per_minute: 1, burst: 1 },
        ..defaults
    };
    let limiter = RateLimiter::new(redis.clone(), limits);
    let mut g = c.benchmark_group("ratelimit");

    assert!(matches!(
        rt.block_on(limiter.check(Class::Read, "bench-allowed")).unwrap(),
        Decision::Allowed { .. }
    ));
    g.bench_function("check_allowed", |b| {
        let l = &limiter;
        b.iter_custom(|iters| run_async(rt, iters, move || l.check(Class::Read, "bench-allowed")));
    });

    let _ = rt.block_on(limiter.check(Class::Submit, "bench-limited")).unwrap();
    assert!(matches!(
        rt.block_on(limiter.check(Class::Submit, "bench-limited")).unwrap(),
        Decision::Limited { .. }
    ));
    g.bench_function("check_limited", |b| {
        let l = &limiter;
        b.iter_custom(|iters| run_async(rt, iters, move || l.check(Class::Submit, "bench-limited")));
    });
    g.finish();
}

fn render_request(side: u32, steps: u32) -> sakuga_imaging::RenderRequest {
    let spec = JobSpec {
        kind: JobKind::Image.into(),
        prompt: PROMPT.to_owned(),
        negative_prompt: "blurry".to_owned(),
        width: side,
        height: side,
        steps,
        seed: Some(42),
        model: "builtin-v1".to_owned(),
        ..JobSpec::default()
    };
    sakuga_generator::builtin::request(&spec.into(), PROMPT)
}

fn bench_render(c: &mut Criterion) {
    let mut g = c.benchmark_group("render");
    // A render takes tens of milliseconds: ten samples keep the group within seconds.
    g.sample_size(10);
    for steps in [1, 5] {
        let req = render_request(512, steps);
        g.bench_with_input(BenchmarkId::new("512x512_steps", steps), &req, |b, req| {
            b.iter(|| sakuga_imaging::render(req, 0, &mut |_| ControlFlow::Continue(())).unwrap());
        });
    }
    g.finish();
}

fn bench_png(c: &mut Criterion) {
    let artifact =
        sakuga_imaging::render(&render_request(512, 20), 0, &mut |_| ControlFlow::Continue(())).unwrap();
    let (w, h, rgb) = sakuga_imaging::decode_rgb(&artifact.bytes).unwrap();
    let mut g = c.benchmark_group("png");
    g.throughput(Throughput::Bytes(rgb.len() as u64));
    g.bench_function("encode_rgb_png_512", |b| {
        b.iter(|| sakuga_imaging::encode_rgb_png(w, h, black_box(&rgb)).unwrap());
    });
    g.finish();
}

fn bench_sha256(c: &mut Criterion) {
    let mut g = c.benchmark_group("sha256");
    for (name, len) in [("chunk_256KiB", UPLOAD_CHUNK), ("artifact_1MiB", 1024 * 1024)] {
        let data: Vec<u8> = (0..len).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_function(name, |b| b.iter(|| Sha256::digest(black_box(&data))));
    }
    g.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let redis = connect_redis(&rt);

    bench_validate(&mut c);
    bench_auth(&mut c, &rt, redis.as_ref());
    if let Some(redis) = &redis {
        bench_ratelimit(&mut c, &rt, redis);
    }
    bench_render(&mut c);
    bench_png(&mut c);
    bench_sha256(&mut c);

    c.final_summary();
}
