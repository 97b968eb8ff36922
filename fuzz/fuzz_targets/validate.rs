//! SubmitJob validation: never panics, and every accepted spec is within the documented
//! bounds (the values the scheduler stores and the backends trust).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sakuga_scheduler::{
    error::SchedulerError,
    job::Kind,
    validate::{self, BACKENDS, MAX_PROMPT_CHARS, RawSpec, SAMPLERS},
};

/// One case. Layout (as `fuzz/seeds.py` writes it): little-endian kind i32, width, height,
/// steps, batch_size, frames, fps (u32 each), has-seed u8, seed u64, cfg_scale f32,
/// max_pixels u64, random seed u64, priority i32; then NUL-separated UTF-8 (lossy): prompt,
/// negative prompt, sampler, backend, model, idempotency key.
#[derive(Debug)]
struct Input {
    kind: i32,
    prompt: String,
    negative_prompt: String,
    width: u32,
    height: u32,
    steps: u32,
    batch_size: u32,
    frames: u32,
    fps: u32,
    seed: Option<u64>,
    cfg_scale: f32,
    sampler: String,
    backend: String,
    model: String,
    max_pixels: u64,
    random_seed: u64,
    idempotency_key: String,
    priority: i32,
}

const HEAD: usize = 61;

impl Input {
    fn read(data: &[u8]) -> Option<Self> {
        let head = data.get(..HEAD)?;
        let mut at = 0;
        let mut take = |n: usize| {
            let b = &head[at..at + n];
            at += n;
            b
        };
        let u32_ = |b: &[u8]| u32::from_le_bytes(b.try_into().unwrap());
        let u64_ = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap());
        let kind = i32::from_le_bytes(take(4).try_into().unwrap());
        let [width, height, steps, batch_size, frames, fps] = [(); 6].map(|()| u32_(take(4)));
        let has_seed = take(1)[0] & 1 == 1;
        let seed = u64_(take(8));
        let cfg_scale = f32::from_le_bytes(take(4).try_into().unwrap());
        let max_pixels = u64_(take(8));
        let random_seed = u64_(take(8));
        let priority = i32::from_le_bytes(take(4).try_into().unwrap());
        let mut texts = data[HEAD..].split(|&b| b == 0).map(|t| String::from_utf8_lossy(t).into_owned());
        let mut text = || texts.next().unwrap_or_default();
        Some(Self {
            kind,
            width,
            height,
            steps,
            batch_size,
            frames,
            fps,
            seed: has_seed.then_some(seed),
            cfg_scale,
            max_pixels,
            random_seed,
            priority,
            prompt: text(),
            negative_prompt: text(),
            sampler: text(),
            backend: text(),
            model: text(),
            idempotency_key: text(),
        })
    }
}

fn clean_text(text: &str, min: usize) {
    let chars = text.chars().count();
    assert!((min..=MAX_PROMPT_CHARS).contains(&chars), "{chars} characters");
    assert_eq!(text, text.trim());
    assert!(!text.chars().any(|c| c.is_control() && c != '\n' && c != '\t'));
}

fuzz_target!(|data: &[u8]| {
    let Some(i) = Input::read(data) else { return };
    let raw = RawSpec {
        kind: i.kind,
        prompt: i.prompt.clone(),
        negative_prompt: i.negative_prompt,
        width: i.width,
        height: i.height,
        steps: i.steps,
        batch_size: i.batch_size,
        frames: i.frames,
        fps: i.fps,
        seed: i.seed,
        cfg_scale: i.cfg_scale,
        sampler: i.sampler,
        backend: i.backend,
        model: i.model.clone(),
    };
    match validate::spec(raw, i.max_pixels, || i.random_seed) {
        Ok(s) => {
            clean_text(&s.prompt, 1);
            clean_text(&s.negative_prompt, 0);
            assert_eq!(s.prompt, i.prompt.trim());
            for side in [s.width, s.height] {
                assert!((64..=2048).contains(&side) && side % 8 == 0, "side {side}");
            }
            assert!((1..=150).contains(&s.steps));
            assert!((1..=8).contains(&s.batch_size));
            match s.kind {
                Kind::Image => assert_eq!((s.frames, s.fps, i.kind), (0, 0, 1)),
                Kind::Video => {
                    assert_eq!(i.kind, 2);
                    assert!((1..=120).contains(&s.frames) && (1..=60).contains(&s.fps));
                }
            }
            let pixels = u64::from(s.width)
                * u64::from(s.height)
                * u64::from(s.batch_size)
                * u64::from(s.frames.max(1));
            assert!(pixels <= i.max_pixels, "{pixels} pixels over {}", i.max_pixels);
            assert!(s.seed <= i64::MAX as u64);
            assert!((1.0..=30.0).contains(&s.cfg_scale), "cfg {}", s.cfg_scale);
            assert!(SAMPLERS.contains(&s.sampler.as_str()));
            assert!(BACKENDS.contains(&s.backend.as_str()));
            assert!(s.model.len() <= 128 && !s.model.is_empty());
            assert!(s.model.chars().all(|c| c.is_ascii_alphanumeric() || "._-/:".contains(c)));
            assert!(!s.model.starts_with('/') && !s.model.split('/').any(|p| p == ".."));
        }
        Err(SchedulerError::InvalidField { field, reason }) => {
            assert!(field.starts_with("spec."), "{field}");
            assert!(!reason.is_empty());
        }
        Err(other) => panic!("validation failed with {other:?}"),
    }
    match validate::idempotency_key(&i.idempotency_key) {
        Ok(Some(k)) => assert!(k.len() <= 128 && k.chars().all(|c| c.is_ascii_graphic())),
        Ok(None) => assert!(i.idempotency_key.is_empty()),
        Err(_) => {}
    }
    if let Ok(p) = validate::priority(i.priority) {
        assert!((-100..=100).contains(&p));
    }
});
