//! SubmitJob input checks. Every refusal names the field; nothing is written before all
//! checks pass.

use crate::{
    error::SchedulerError,
    job::{Kind, Spec},
};

/// Prompt length limit, in characters after trimming.
pub const MAX_PROMPT_CHARS: usize = 2000;
/// Samplers the backends understand.
pub const SAMPLERS: &[&str] = &["euler", "euler_a", "dpmpp_2m", "ddim"];
/// Backends a worker may offer.
pub const BACKENDS: &[&str] = &["builtin", "comfyui", "benchmark"];
/// Model each backend uses when the request names none.
pub fn default_model(backend: &str) -> &'static str {
    match backend {
        "comfyui" => "default",
        "benchmark" => "benchmark",
        _ => "builtin-v1",
    }
}

/// SubmitJob's parameters as received (0 and empty mean "not set").
#[derive(Debug, Clone, Default)]
pub struct RawSpec {
    /// 0 unspecified, 1 image, 2 video.
    pub kind: i32,
    /// Prompt.
    pub prompt: String,
    /// Negative prompt.
    pub negative_prompt: String,
    /// Width.
    pub width: u32,
    /// Height.
    pub height: u32,
    /// Steps.
    pub steps: u32,
    /// Batch size.
    pub batch_size: u32,
    /// Frames.
    pub frames: u32,
    /// Fps.
    pub fps: u32,
    /// Seed, when given.
    pub seed: Option<u64>,
    /// Guidance.
    pub cfg_scale: f32,
    /// Sampler.
    pub sampler: String,
    /// Backend.
    pub backend: String,
    /// Model.
    pub model: String,
}

fn check_text(field: &'static str, text: &str, min: usize) -> Result<String, SchedulerError> {
    text_field(field, text, min, MAX_PROMPT_CHARS)
}

/// A UUID request field, naming `field` when it is not one.
pub fn uuid_field(field: &'static str, s: &str) -> Result<uuid::Uuid, SchedulerError> {
    uuid::Uuid::parse_str(s).map_err(|_| SchedulerError::invalid(field, "must be a UUID"))
}

/// Trims `text` and checks it has `min..=max` characters and no control characters other
/// than newline and tab.
pub fn text_field(field: &'static str, text: &str, min: usize, max: usize) -> Result<String, SchedulerError> {
    let trimmed = text.trim();
    let chars = trimmed.chars().count();
    if chars < min {
        return Err(SchedulerError::invalid(field, "must not be empty"));
    }
    if chars > max {
        return Err(SchedulerError::invalid(field, format!("must be at most {max} characters, got {chars}")));
    }
    if let Some(c) = trimmed.chars().find(|c| c.is_control() && *c != '\n' && *c != '\t') {
        return Err(SchedulerError::invalid(
            field,
            format!("must not contain control character U+{:04X}", u32::from(c)),
        ));
    }
    Ok(trimmed.to_owned())
}

fn check_dimension(field: &'static str, v: u32) -> Result<u32, SchedulerError> {
    if !(64..=2048).contains(&v) {
        return Err(SchedulerError::invalid(field, format!("must be between 64 and 2048, got {v}")));
    }
    if !v.is_multiple_of(8) {
        return Err(SchedulerError::invalid(field, format!("must be a multiple of 8, got {v}")));
    }
    Ok(v)
}

fn check_name(field: &'static str, v: &str) -> Result<(), SchedulerError> {
    if v.len() > 128 {
        return Err(SchedulerError::invalid(field, "must be at most 128 characters"));
    }
    if !v.chars().all(|c| c.is_ascii_alphanumeric() || "._-/:".contains(c)) {
        return Err(SchedulerError::invalid(field, "may contain only letters, digits and . _ - / :"));
    }
    if v.starts_with('/') || v.split('/').any(|part| part == "..") {
        return Err(SchedulerError::invalid(field, "must be a relative name without '..'"));
    }
    Ok(())
}

/// Checks and normalizes a spec. `random_seed` supplies the seed when none is given;
/// `max_pixels` caps width × height × batch × frames.
pub fn spec(
    raw: RawSpec,
    max_pixels: u64,
    random_seed: impl FnOnce() -> u64,
) -> Result<Spec, SchedulerError> {
    let kind = match raw.kind {
        1 => Kind::Image,
        2 => Kind::Video,
        0 => {
            return Err(SchedulerError::invalid("spec.kind", "must be JOB_KIND_IMAGE or JOB_KIND_VIDEO"));
        }
        other => {
            return Err(SchedulerError::invalid("spec.kind", format!("unknown kind {other}")));
        }
    };
    let prompt = check_text("spec.prompt", &raw.prompt, 1)?;
    let negative_prompt = check_text("spec.negative_prompt", &raw.negative_prompt, 0)?;
    let width = check_dimension("spec.width", raw.width)?;
    let height = check_dimension("spec.height", raw.height)?;
    if !(1..=150).contains(&raw.steps) {
        return Err(SchedulerError::invalid(
            "spec.steps",
            format!("must be between 1 and 150, got {}", raw.steps),
        ));
    }
    let batch_size = if raw.batch_size == 0 { 1 } else { raw.batch_size };
    if batch_size > 8 {
        return Err(SchedulerError::invalid(
            "spec.batch_size",
            format!("must be between 1 and 8, got {batch_size}"),
        ));
    }
    let (frames, fps) = match kind {
        Kind::Image => {
            if raw.frames != 0 {
                return Err(SchedulerError::invalid("spec.frames", "must be 0 for images"));
            }
            if raw.fps != 0 {
                return Err(SchedulerError::invalid("spec.fps", "must be 0 for images"));
            }
            (0, 0)
        }
        Kind::Video => {
            if !(1..=120).contains(&raw.frames) {
                return Err(SchedulerError::invalid(
                    "spec.frames",
                    format!("must be between 1 and 120 for video, got {}", raw.frames),
                ));
            }
            let fps = if raw.fps == 0 { 8 } else { raw.fps };
            if fps > 60 {
                return Err(SchedulerError::invalid(
                    "spec.fps",
                    format!("must be between 1 and 60, got {fps}"),
                ));
            }
            (raw.frames, fps)
        }
    };
    let pixels = u64::from(width) * u64::from(height) * u64::from(batch_size) * u64::from(frames.max(1));
    if pixels > max_pixels {
        return Err(SchedulerError::invalid(
            "spec.batch_size",
            format!(
                "width × height × batch_size × frames is {pixels} pixels, more than the limit of {max_pixels}"
            ),
        ));
    }
    let seed = match raw.seed {
        Some(s) if s > i64::MAX as u64 => {
            return Err(SchedulerError::invalid("spec.seed", format!("must be at most {}", i64::MAX)));
        }
        Some(s) => s,
        None => random_seed() & (i64::MAX as u64),
    };
    let cfg_scale = if raw.cfg_scale == 0.0 { 7.0 } else { raw.cfg_scale };
    if !(1.0..=30.0).contains(&cfg_scale) {
        return Err(SchedulerError::invalid(
            "spec.cfg_scale",
            format!("must be between 1 and 30, got {cfg_scale}"),
        ));
    }
    if !raw.sampler.is_empty() && !SAMPLERS.contains(&raw.sampler.as_str()) {
        return Err(SchedulerError::invalid(
            "spec.sampler",
            format!("must be one of {}", SAMPLERS.join(", ")),
        ));
    }
    let sampler = if raw.sampler.is_empty() { "euler".to_owned() } else { raw.sampler };
    let backend = if raw.backend.is_empty() { "builtin".to_owned() } else { raw.backend };
    if !BACKENDS.contains(&backend.as_str()) {
        return Err(SchedulerError::invalid(
            "spec.backend",
            format!("must be one of {}", BACKENDS.join(", ")),
        ));
    }
    check_name("spec.model", &raw.model)?;
    let model = if raw.model.is_empty() { default_model(&backend).to_owned() } else { raw.model };
    Ok(Spec {
        kind,
        prompt,
        negative_prompt,
        width,
        height,
        steps: raw.steps,
        batch_size,
        frames,
        fps,
        seed,
        cfg_scale,
        sampler,
        backend,
        model,
    })
}

/// Checks an idempotency key: up to 128 printable ASCII characters; empty means none.
pub fn idempotency_key(key: &str) -> Result<Option<String>, SchedulerError> {
    if key.is_empty() {
        return Ok(None);
    }
    if key.len() > 128 || !key.chars().all(|c| c.is_ascii_graphic()) {
        return Err(SchedulerError::invalid(
            "idempotency_key",
            "must be at most 128 printable ASCII characters without spaces",
        ));
    }
    Ok(Some(key.to_owned()))
}

/// Checks a priority.
pub fn priority(p: i32) -> Result<i32, SchedulerError> {
    if (-100..=100).contains(&p) {
        Ok(p)
    } else {
        Err(SchedulerError::invalid("priority", format!("must be between -100 and 100, got {p}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok_raw() -> RawSpec {
        RawSpec { kind: 1, prompt: "a cat".into(), width: 512, height: 512, steps: 20, ..RawSpec::default() }
    }

    fn field_of(raw: RawSpec) -> &'static str {
        match spec(raw, 64 << 20, || 7) {
            Err(SchedulerError::InvalidField { field, .. }) => field,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_applied() {
        let s = spec(ok_raw(), 64 << 20, || 42).unwrap();
        assert_eq!(
            (s.batch_size, s.seed, s.backend.as_str(), s.model.as_str()),
            (1, 42, "builtin", "builtin-v1")
        );
        assert!((s.cfg_scale - 7.0).abs() < f32::EPSILON);
    }

    #[test]
    fn each_refusal_names_its_field() {
        assert_eq!(field_of(RawSpec { prompt: "   ".into(), ..ok_raw() }), "spec.prompt");
        assert_eq!(field_of(RawSpec { prompt: "x".repeat(10_000), ..ok_raw() }), "spec.prompt");
        assert_eq!(field_of(RawSpec { prompt: "a\u{7}b".into(), ..ok_raw() }), "spec.prompt");
        assert_eq!(field_of(RawSpec { width: 100, ..ok_raw() }), "spec.width");
        assert_eq!(field_of(RawSpec { height: 4096, ..ok_raw() }), "spec.height");
        assert_eq!(field_of(RawSpec { steps: 0, ..ok_raw() }), "spec.steps");
        assert_eq!(field_of(RawSpec { steps: 151, ..ok_raw() }), "spec.steps");
        assert_eq!(field_of(RawSpec { batch_size: 9, ..ok_raw() }), "spec.batch_size");
        assert_eq!(field_of(RawSpec { kind: 0, ..ok_raw() }), "spec.kind");
        assert_eq!(field_of(RawSpec { frames: 3, ..ok_raw() }), "spec.frames");
        assert_eq!(field_of(RawSpec { kind: 2, frames: 121, ..ok_raw() }), "spec.frames");
        assert_eq!(field_of(RawSpec { sampler: "magic".into(), ..ok_raw() }), "spec.sampler");
        assert_eq!(field_of(RawSpec { backend: "gpu9000".into(), ..ok_raw() }), "spec.backend");
        assert_eq!(field_of(RawSpec { model: "../etc".into(), ..ok_raw() }), "spec.model");
        assert_eq!(field_of(RawSpec { seed: Some(u64::MAX), ..ok_raw() }), "spec.seed");
        assert_eq!(
            field_of(RawSpec { width: 2048, height: 2048, batch_size: 8, kind: 2, frames: 120, ..ok_raw() }),
            "spec.batch_size"
        );
    }

    #[test]
    fn script_tags_are_inert_text() {
        let s = spec(RawSpec { prompt: "<script>alert('xss')</script>".into(), ..ok_raw() }, 64 << 20, || 1)
            .unwrap();
        assert_eq!(s.prompt, "<script>alert('xss')</script>");
    }
}
