//! The built-in deterministic CPU renderer (the `builtin` backend).
//!
//! It needs no model and no GPU, yet does real work that grows with
//! `width × height × steps` (× `frames` for video), like a toy diffusion sampler:
//!
//! 1. A 256-bit key is derived with SHA-256 from the prompt, the negative prompt, the seed, the
//!    batch index and every other request parameter (see [`render`]).
//! 2. The key draws a procedural target scene, an "anime sky": a gradient sky, a sun or moon,
//!    cel-shaded clouds, hill ridges or a sea, stars, sakura petals. Prompt keywords force
//!    features (`night`, `sunset`, `sea`, `sakura`, … also in Japanese) and negative-prompt
//!    keywords remove them (`clouds`, `sun`, `mountains`, …).
//! 3. The canvas starts as seeded noise; every step blurs it (a separable binomial diffusion
//!    pass), pulls it towards the target by a growing gain and re-injects a decaying amount of
//!    fresh seeded noise, then reports progress.
//! 4. The final state is quantised and encoded as PNG, or as an animated PNG for video, with
//!    text chunks carrying the generation parameters.
//!
//! The output is byte-for-byte deterministic: no clock, no threads, no hash-map iteration, and
//! only exactly-rounded float operations (no platform `libm`), so the same request and index give
//! the same bytes on every machine.

use std::fmt;
use std::ops::ControlFlow;

use sha2::{Digest, Sha256};

use crate::math::{f32_from, mix64, to_u8};
use crate::scene::Scene;

/// Smallest accepted width or height, in pixels.
pub const MIN_SIDE: u32 = 64;
/// Largest accepted width or height, in pixels.
pub const MAX_SIDE: u32 = 2048;
/// Width and height must be multiples of this.
pub const SIDE_MULTIPLE: u32 = 8;
/// Largest accepted number of denoising steps (per frame for video).
pub const MAX_STEPS: u32 = 150;
/// Largest accepted number of video frames.
pub const MAX_FRAMES: u32 = 120;
/// Largest accepted video frame rate.
pub const MAX_FPS: u32 = 60;
/// Largest accepted `width × height × frames` for a video (e.g. 1024×1024×120 or
/// 2048×2048×30), which bounds the size of the encoded animation held in memory.
pub const MAX_VIDEO_PIXELS: u64 = 1024 * 1024 * 120;
/// Largest accepted prompt or negative prompt, in UTF-8 bytes.
pub const MAX_PROMPT_BYTES: usize = 8192;
/// Largest accepted model name, in UTF-8 bytes.
pub const MAX_MODEL_BYTES: usize = 256;
/// Longest side of a [`Progress::preview`] image, in pixels.
pub const PREVIEW_MAX_SIDE: u32 = 128;
/// Value of the `software` text chunk written into every artifact.
pub const SOFTWARE: &str = "sakuga-builtin";
/// MIME type of a still image artifact.
pub const MIME_PNG: &str = "image/png";
/// MIME type of an animated (video) artifact.
pub const MIME_APNG: &str = "image/apng";

/// What to render.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Kind {
    /// A single still image, encoded as PNG.
    #[default]
    Image,
    /// A short animation, encoded as animated PNG (APNG).
    Video,
}

/// A render job for the built-in renderer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RenderRequest {
    /// What to draw; keywords steer the scene. At most [`MAX_PROMPT_BYTES`].
    pub prompt: String,
    /// What not to draw; keywords remove scene features. At most [`MAX_PROMPT_BYTES`].
    pub negative_prompt: String,
    /// Random seed.
    pub seed: u64,
    /// Width in pixels: a multiple of [`SIDE_MULTIPLE`] in [`MIN_SIDE`]`..=`[`MAX_SIDE`].
    pub width: u32,
    /// Height in pixels: a multiple of [`SIDE_MULTIPLE`] in [`MIN_SIDE`]`..=`[`MAX_SIDE`].
    pub height: u32,
    /// Denoising steps (per frame for video), `1..=`[`MAX_STEPS`].
    pub steps: u32,
    /// Still image or video.
    pub kind: Kind,
    /// Number of frames, `1..=`[`MAX_FRAMES`]; video only (ignored for images).
    pub frames: u32,
    /// Frames per second, `1..=`[`MAX_FPS`]; video only (ignored for images).
    pub fps: u32,
    /// Model name, recorded in the metadata and mixed into the seed. At most
    /// [`MAX_MODEL_BYTES`].
    pub model: String,
}

impl RenderRequest {
    /// Checks every field against the renderer's limits.
    ///
    /// # Errors
    /// [`RenderError::InvalidRequest`] whose message starts with the offending field name,
    /// e.g. `width: must be a multiple of 8, got 100`.
    pub fn validate(&self) -> Result<(), RenderError> {
        fn side(field: &str, v: u32) -> Result<(), RenderError> {
            if !(MIN_SIDE..=MAX_SIDE).contains(&v) {
                return Err(invalid(field, &format!("must be between {MIN_SIDE} and {MAX_SIDE}, got {v}")));
            }
            if !v.is_multiple_of(SIDE_MULTIPLE) {
                return Err(invalid(field, &format!("must be a multiple of {SIDE_MULTIPLE}, got {v}")));
            }
            Ok(())
        }
        side("width", self.width)?;
        side("height", self.height)?;
        if !(1..=MAX_STEPS).contains(&self.steps) {
            return Err(invalid("steps", &format!("must be between 1 and {MAX_STEPS}, got {}", self.steps)));
        }
        for (field, text, max) in [
            ("prompt", &self.prompt, MAX_PROMPT_BYTES),
            ("negative_prompt", &self.negative_prompt, MAX_PROMPT_BYTES),
            ("model", &self.model, MAX_MODEL_BYTES),
        ] {
            if text.len() > max {
                return Err(invalid(field, &format!("must be at most {max} bytes, got {}", text.len())));
            }
        }
        if self.kind == Kind::Video {
            if !(1..=MAX_FRAMES).contains(&self.frames) {
                return Err(invalid(
                    "frames",
                    &format!("must be between 1 and {MAX_FRAMES}, got {}", self.frames),
                ));
            }
            if !(1..=MAX_FPS).contains(&self.fps) {
                return Err(invalid("fps", &format!("must be between 1 and {MAX_FPS}, got {}", self.fps)));
            }
            let pixels = u64::from(self.width) * u64::from(self.height) * u64::from(self.frames);
            if pixels > MAX_VIDEO_PIXELS {
                return Err(invalid(
                    "frames",
                    &format!("width × height × frames must be at most {MAX_VIDEO_PIXELS}, got {pixels}"),
                ));
            }
        }
        Ok(())
    }

    /// Number of frames the artifact will have: `frames` for video, 1 for an image.
    pub fn frame_count(&self) -> u32 {
        match self.kind {
            Kind::Image => 1,
            Kind::Video => self.frames,
        }
    }

    /// Number of progress reports a full render makes: `steps` for an image and
    /// `steps × frames` for video (every frame is denoised from noise with `steps` steps).
    pub fn total_steps(&self) -> u32 {
        self.steps.saturating_mul(self.frame_count())
    }
}

/// The result of a render.
#[derive(Clone, PartialEq, Eq)]
pub struct Artifact {
    /// The encoded PNG or APNG file.
    pub bytes: Vec<u8>,
    /// [`MIME_PNG`] for an image, [`MIME_APNG`] for video.
    pub mime: &'static str,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Number of frames (1 for an image).
    pub frames: u32,
}

impl fmt::Debug for Artifact {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Artifact")
            .field("bytes", &format_args!("<{} bytes>", self.bytes.len()))
            .field("mime", &self.mime)
            .field("width", &self.width)
            .field("height", &self.height)
            .field("frames", &self.frames)
            .finish()
    }
}

/// A small PNG snapshot of the render in progress, see [`Progress::preview`].
#[derive(Clone, PartialEq, Eq)]
pub struct Preview {
    /// The encoded PNG (no text chunks).
    pub png: Vec<u8>,
    /// Preview width in pixels (at most [`PREVIEW_MAX_SIDE`]).
    pub width: u32,
    /// Preview height in pixels (at most [`PREVIEW_MAX_SIDE`]).
    pub height: u32,
}

impl fmt::Debug for Preview {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Preview")
            .field("png", &format_args!("<{} bytes>", self.png.len()))
            .field("width", &self.width)
            .field("height", &self.height)
            .finish()
    }
}

/// A progress report, passed to the `on_step` callback of [`render`] after every step.
#[derive(Clone, Copy)]
pub struct Progress<'a> {
    /// Steps done so far, `1..=total`.
    pub step: u32,
    /// Total number of steps of the render ([`RenderRequest::total_steps`]).
    pub total: u32,
    /// Zero-based index of the frame being rendered (always 0 for an image).
    pub frame: u32,
    /// Number of frames of the render (1 for an image).
    pub frames: u32,
    canvas: &'a Canvas,
}

impl Progress<'_> {
    /// Encodes the current state of the frame being rendered as a small PNG (box-downscaled so
    /// its longest side is at most [`PREVIEW_MAX_SIDE`]). Costs one pass over the canvas plus a
    /// tiny PNG encode, and only when called: call it every few steps if you stream previews.
    ///
    /// # Errors
    /// [`RenderError::Encode`] if the PNG encoder fails (it should not).
    pub fn preview(&self) -> Result<Preview, RenderError> {
        self.canvas.preview()
    }
}

impl fmt::Debug for Progress<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Progress")
            .field("step", &self.step)
            .field("total", &self.total)
            .field("frame", &self.frame)
            .field("frames", &self.frames)
            .finish_non_exhaustive()
    }
}

/// Why a render failed.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// A request field is out of range; the message starts with the field name
    /// (`width`, `height`, `steps`, `frames`, `fps`, `prompt`, `negative_prompt`, `model`).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The `on_step` callback returned [`ControlFlow::Break`].
    #[error("render canceled")]
    Canceled,
    /// The PNG encoder failed.
    #[error("png encoding failed: {0}")]
    Encode(#[from] png::EncodingError),
}

fn invalid(field: &str, reason: &str) -> RenderError {
    RenderError::InvalidRequest(format!("{field}: {reason}"))
}

/// Renders batch item `index` of `req`.
///
/// Synchronous and CPU-bound: run it on a blocking thread (e.g. `tokio::task::spawn_blocking`).
/// `index` (the position in a batch, usually `0..8`; any value works) is mixed into the seed so
/// the items of a batch differ. The same request and index always give byte-identical output.
///
/// `on_step` is called after every step with [`Progress::step`] running `1..=total` in order,
/// where `total` is [`RenderRequest::total_steps`]: for video every frame takes `steps` steps,
/// frame after frame. Returning [`ControlFlow::Break`] stops the render at once. The callback
/// may call [`Progress::preview`] to get a small PNG of the current state.
///
/// # Errors
/// - [`RenderError::InvalidRequest`] if [`RenderRequest::validate`] fails (nothing is
///   allocated and `on_step` is never called);
/// - [`RenderError::Canceled`] if `on_step` asked to stop;
/// - [`RenderError::Encode`] if PNG encoding fails.
pub fn render(
    req: &RenderRequest,
    index: u32,
    on_step: &mut dyn FnMut(Progress<'_>) -> ControlFlow<()>,
) -> Result<Artifact, RenderError> {
    req.validate()?;
    let key = request_key(req, index);
    let (width, height) = (req.width, req.height);
    let aspect = f32_from(width) / f32_from(height);
    let scene = Scene::new(key[0], &req.prompt, &req.negative_prompt, aspect);
    let frames = req.frame_count();
    let total = req.total_steps();
    let samples = width as usize * height as usize * 3;

    let mut bytes = Vec::new();
    let mut encoder = png::Encoder::new(&mut bytes, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_compression(png::Compression::Fast);
    for (keyword, value) in metadata(req, index) {
        if value.is_ascii() {
            encoder.add_text_chunk(keyword.to_owned(), value)?;
        } else {
            encoder.add_itxt_chunk(keyword.to_owned(), value)?;
        }
    }
    if req.kind == Kind::Video {
        encoder.set_animated(frames, 0)?;
        // fps is validated to 1..=MAX_FPS, which fits u16.
        let fps = u16::try_from(req.fps).unwrap_or(u16::MAX);
        encoder.set_frame_delay(1, fps)?;
    }
    let mut writer = encoder.write_header()?;

    let mut canvas = Canvas::new(width, height);
    let mut target = vec![0.0_f32; samples];
    let mut rgb = vec![0_u8; samples];
    let mut done = 0;
    for frame in 0..frames {
        scene.paint(frame, width, height, &mut target);
        // Same noise for every frame: the residual grain stays put instead of flickering.
        canvas.fill_noise(key[1]);
        for k in 1..=req.steps {
            canvas.step(&target, k, req.steps, key[1]);
            done += 1;
            let progress = Progress { step: done, total, frame, frames, canvas: &canvas };
            if on_step(progress).is_break() {
                return Err(RenderError::Canceled);
            }
        }
        canvas.quantize(&mut rgb);
        writer.write_image_data(&rgb)?;
    }
    writer.finish()?;

    Ok(Artifact {
        bytes,
        mime: match req.kind {
            Kind::Image => MIME_PNG,
            Kind::Video => MIME_APNG,
        },
        width,
        height,
        frames,
    })
}

/// SHA-256 over a length-prefixed encoding of everything that affects the pixels, split into
/// four little-endian words: word 0 seeds the scene, word 1 the noise.
fn request_key(req: &RenderRequest, index: u32) -> [u64; 4] {
    let mut h = Sha256::new();
    h.update(b"sakuga-builtin/1\0");
    for text in [&req.prompt, &req.negative_prompt, &req.model] {
        h.update((text.len() as u64).to_le_bytes());
        h.update(text.as_bytes());
    }
    h.update(req.seed.to_le_bytes());
    for v in [index, req.width, req.height, req.steps] {
        h.update(v.to_le_bytes());
    }
    match req.kind {
        Kind::Image => h.update([0]),
        Kind::Video => {
            h.update([1]);
            h.update(req.frames.to_le_bytes());
            h.update(req.fps.to_le_bytes());
        }
    }
    let digest = h.finalize();
    let mut words = [0_u64; 4];
    for (w, chunk) in words.iter_mut().zip(digest.chunks_exact(8)) {
        let mut b = [0_u8; 8];
        b.copy_from_slice(chunk);
        *w = u64::from_le_bytes(b);
    }
    words
}

/// The text chunks written into an artifact, in order.
fn metadata(req: &RenderRequest, index: u32) -> Vec<(&'static str, String)> {
    let mut text = vec![
        ("prompt", req.prompt.clone()),
        ("negative_prompt", req.negative_prompt.clone()),
        ("seed", req.seed.to_string()),
        ("steps", req.steps.to_string()),
        ("width", req.width.to_string()),
        ("height", req.height.to_string()),
        ("model", req.model.clone()),
        ("batch_index", index.to_string()),
        ("software", SOFTWARE.to_owned()),
    ];
    if req.kind == Kind::Video {
        text.push(("frames", req.frames.to_string()));
        text.push(("fps", req.fps.to_string()));
    }
    text
}

/// The state being denoised: interleaved RGB floats, nominally in `0..=1`.
struct Canvas {
    width: u32,
    height: u32,
    data: Vec<f32>,
    /// Row scratch buffers for the in-place separable blur.
    prev: Vec<f32>,
    cur: Vec<f32>,
}

/// Three uniform values in `-1..1` from the three 21-bit fields of a hash.
#[allow(clippy::cast_possible_truncation, clippy::cast_precision_loss)]
fn noise3(bits: u64) -> [f32; 3] {
    const SCALE: f32 = 2.0 / 2_097_152.0;
    [
        ((bits & 0x1F_FFFF) as u32 as f32) * SCALE - 1.0,
        (((bits >> 21) & 0x1F_FFFF) as u32 as f32) * SCALE - 1.0,
        (((bits >> 42) & 0x1F_FFFF) as u32 as f32) * SCALE - 1.0,
    ]
}

impl Canvas {
    fn new(width: u32, height: u32) -> Self {
        let stride = width as usize * 3;
        Self {
            width,
            height,
            data: vec![0.0; stride * height as usize],
            prev: vec![0.0; stride],
            cur: vec![0.0; stride],
        }
    }

    fn stride(&self) -> usize {
        self.width as usize * 3
    }

    /// Resets the canvas to seeded noise around mid-grey.
    fn fill_noise(&mut self, key: u64) {
        let key = mix64(key ^ 0x5EED);
        for (i, px) in self.data.chunks_exact_mut(3).enumerate() {
            let n = noise3(mix64(key ^ i as u64));
            for (v, n) in px.iter_mut().zip(n) {
                *v = 0.5 + 0.5 * n;
            }
        }
    }

    /// Denoising step `step` of `steps`: blur with a separable `[1 2 1] / 4` kernel, move towards
    /// `target` by a gain growing from 0.25 to 0.8, and add fresh noise whose amplitude decays
    /// quadratically to zero at the last step.
    fn step(&mut self, target: &[f32], step: u32, steps: u32, key: u64) {
        let stride = self.stride();
        let t = f32_from(step) / f32_from(steps);
        let gain = 0.25 + 0.55 * t;
        let sigma = 0.3 * (1.0 - t) * (1.0 - t);

        // Horizontal pass, in place, one row at a time.
        for row in self.data.chunks_exact_mut(stride) {
            self.cur.copy_from_slice(row);
            let s = &self.cur;
            for c in 0..3 {
                row[c] = 0.75 * s[c] + 0.25 * s[c + 3];
                row[stride - 3 + c] = 0.75 * s[stride - 3 + c] + 0.25 * s[stride - 6 + c];
            }
            for i in 3..stride - 3 {
                row[i] = 0.25 * (s[i - 3] + s[i + 3]) + 0.5 * s[i];
            }
        }

        // Vertical pass fused with the update. `prev` holds the unmodified row above (the
        // first row is its own neighbour), `cur` the unmodified current row.
        let height = self.height as usize;
        self.prev.copy_from_slice(&self.data[..stride]);
        let step_key = mix64(key ^ (u64::from(step) << 40));
        for y in 0..height {
            let (head, tail) = self.data.split_at_mut((y + 1) * stride);
            let row = &mut head[y * stride..];
            self.cur.copy_from_slice(row);
            let next: &[f32] = if tail.is_empty() { &self.cur } else { &tail[..stride] };
            let target_row = &target[y * stride..(y + 1) * stride];
            let row_key = mix64(step_key ^ ((y as u64) << 20));
            for x in 0..self.width as usize {
                let noise = noise3(mix64(row_key ^ x as u64));
                for (c, nz) in noise.iter().enumerate() {
                    let i = x * 3 + c;
                    let d = 0.25 * (self.prev[i] + next[i]) + 0.5 * self.cur[i];
                    row[i] = d + (target_row[i] - d) * gain + sigma * nz;
                }
            }
            std::mem::swap(&mut self.prev, &mut self.cur);
        }
    }

    /// Quantises the canvas to 8-bit RGB.
    fn quantize(&self, out: &mut [u8]) {
        for (o, &v) in out.iter_mut().zip(&self.data) {
            *o = to_u8(v);
        }
    }

    fn preview(&self) -> Result<Preview, RenderError> {
        let factor = self.width.max(self.height).div_ceil(PREVIEW_MAX_SIDE).max(1);
        let (pw, ph) = ((self.width / factor).max(1), (self.height / factor).max(1));
        let f = factor as usize;
        let stride = self.stride();
        let norm = 1.0 / f32_from(factor * factor);
        let mut rgb = Vec::with_capacity(pw as usize * ph as usize * 3);
        for py in 0..ph as usize {
            for px in 0..pw as usize {
                let mut sum = [0.0_f32; 3];
                for y in py * f..(py + 1) * f {
                    let row = &self.data[y * stride + px * f * 3..y * stride + (px + 1) * f * 3];
                    for p in row.chunks_exact(3) {
                        sum[0] += p[0];
                        sum[1] += p[1];
                        sum[2] += p[2];
                    }
                }
                rgb.extend(sum.iter().map(|s| to_u8(s * norm)));
            }
        }
        let mut png_bytes = Vec::new();
        let mut encoder = png::Encoder::new(&mut png_bytes, pw, ph);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        encoder.set_compression(png::Compression::Fast);
        let mut writer = encoder.write_header()?;
        writer.write_image_data(&rgb)?;
        writer.finish()?;
        Ok(Preview { png: png_bytes, width: pw, height: ph })
    }
}
