//! Decoding and checking of PNG and APNG files, e.g. before accepting an upload.
//!
//! [`inspect_png`] checks the signature, refuses absurd dimensions or frame counts before
//! allocating anything large, then fully decodes every frame (so a truncated or corrupt file
//! fails) and reports the format, size, frame count, text metadata and luminance statistics of
//! the first frame (to flag blank images with [`Inspection::is_blank`]).

use std::io::{BufRead, Cursor, ErrorKind, Read, Seek, SeekFrom};

/// The 8-byte signature every PNG file starts with.
const SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1A, b'\n'];

/// Memory the PNG decoder may use for its own buffers (rows, metadata), not counting the frame
/// buffer, which is bounded by [`Limits::max_pixels`].
const DECODER_MEMORY: usize = 64 * 1024 * 1024;

/// Largest decompressed size of one compressed text chunk (`zTXt`, compressed `iTXt`).
const MAX_TEXT_CHUNK: usize = 1024 * 1024;

/// Bounds on what [`inspect_png`] accepts, checked before any large allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted width, in pixels.
    pub max_width: u32,
    /// Largest accepted height, in pixels.
    pub max_height: u32,
    /// Largest accepted `width × height`.
    pub max_pixels: u64,
    /// Largest accepted number of animation frames.
    pub max_frames: u32,
}

impl Default for Limits {
    /// 8192 px per side, 16 Mpx (4096×4096), 1000 frames.
    fn default() -> Self {
        Self { max_width: 8192, max_height: 8192, max_pixels: 4096 * 4096, max_frames: 1000 }
    }
}

/// What [`inspect_png`] found.
#[derive(Debug, Clone, PartialEq)]
pub struct Inspection {
    /// `image/png` for a still image, `image/apng` for an animated PNG (one with an `acTL`
    /// chunk, even if it has a single frame).
    pub mime: &'static str,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Number of animation frames from the `acTL` chunk (1 for a still image).
    pub frames: u32,
    /// Mean Rec. 601 luma of the first decoded image, `0..=255` (alpha composited over black).
    pub luma_mean: f64,
    /// Population standard deviation of that luma, `0..=255`: near zero for a uniform image.
    pub luma_stddev: f64,
    /// Text metadata (`tEXt`, `zTXt` and `iTXt` chunks, in that order) as (keyword, text).
    /// Compressed chunks that fail to decompress are left out.
    pub text: Vec<(String, String)>,
}

impl Inspection {
    /// `true` if the first frame is near uniform: its luma standard deviation is below
    /// `threshold` (out of 255; 10 is a sensible value for generated images).
    pub fn is_blank(&self, threshold: f64) -> bool {
        self.luma_stddev < threshold
    }

    /// The text of the first text chunk with this keyword.
    pub fn text_value(&self, keyword: &str) -> Option<&str> {
        self.text.iter().find(|(k, _)| k == keyword).map(|(_, v)| v.as_str())
    }
}

/// Why [`inspect_png`] refused a file.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    /// The bytes do not start with the PNG signature.
    #[error("not a png file")]
    NotPng,
    /// The file ends before the image is complete.
    #[error("png file is truncated")]
    Truncated,
    /// The dimensions exceed [`Limits`].
    #[error("png image too large: {width}x{height} exceeds the limits")]
    TooLarge {
        /// Width from the header.
        width: u32,
        /// Height from the header.
        height: u32,
    },
    /// The animation has more frames than [`Limits::max_frames`].
    #[error("png animation has too many frames: {frames} (at most {max})")]
    TooManyFrames {
        /// Frame count from the `acTL` chunk.
        frames: u32,
        /// The limit.
        max: u32,
    },
    /// The `PLTE` chunk is not 1 to 256 entries of 3 bytes.
    #[error("invalid png: a PLTE chunk of {len} bytes (a palette is 1 to 256 entries of 3 bytes)")]
    BadPalette {
        /// The chunk's length.
        len: u32,
    },
    /// The decoder needed more memory than it is allowed.
    #[error("png decoder memory limit exceeded")]
    MemoryLimit,
    /// The file is corrupt or unsupported.
    #[error("invalid png: {0}")]
    Decode(#[source] png::DecodingError),
    /// Encoding a thumbnail failed.
    #[error("png encoding failed: {0}")]
    Encode(String),
}

impl From<png::DecodingError> for InspectError {
    fn from(e: png::DecodingError) -> Self {
        match e {
            png::DecodingError::IoError(io) if io.kind() == ErrorKind::UnexpectedEof => Self::Truncated,
            png::DecodingError::LimitsExceeded => Self::MemoryLimit,
            other => Self::Decode(other),
        }
    }
}

/// Decodes and checks a PNG or APNG file; see the module docs.
///
/// Every frame is decoded (output normalised to 8 bits per sample), so the cost is
/// proportional to `width × height × frames`, all bounded by `limits`. The luma statistics are
/// those of the first image in the file (for an APNG whose default image is not part of the
/// animation, that default image).
///
/// # Errors
/// [`InspectError::NotPng`] for anything that is not a PNG, [`InspectError::TooLarge`] or
/// [`InspectError::TooManyFrames`] when over `limits` (checked before decoding pixels),
/// [`InspectError::Truncated`] when the data stops early, [`InspectError::Decode`] for corrupt
/// data (bad CRC, bad zlib stream, missing frames, …).
pub fn inspect_png(bytes: &[u8], limits: Limits) -> Result<Inspection, InspectError> {
    inspect_png_from(Cursor::new(bytes), limits)
}

/// [`inspect_png`] over a reader positioned at the start of the file (a file on disk, so an
/// upload need not be held in memory): only the decoder's buffers and one frame are.
///
/// # Errors
/// As [`inspect_png`]; a read error other than an early end is [`InspectError::Decode`].
pub fn inspect_png_from<R: BufRead + Seek>(
    mut reader: R,
    limits: Limits,
) -> Result<Inspection, InspectError> {
    let mut signature = [0_u8; 8];
    if reader.read_exact(&mut signature).is_err() || signature != SIGNATURE {
        return Err(InspectError::NotPng);
    }
    check_palette(&mut reader)?;
    let mut decoder = png::Decoder::new_with_limits(reader, png::Limits { bytes: DECODER_MEMORY });
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let (width, height) = {
        let info = decoder.read_header_info()?;
        (info.width, info.height)
    };
    if width > limits.max_width
        || height > limits.max_height
        || u64::from(width) * u64::from(height) > limits.max_pixels
    {
        return Err(InspectError::TooLarge { width, height });
    }

    let mut reader = decoder.read_info()?;
    let (mime, frames, images) = match reader.info().animation_control {
        None => ("image/png", 1, 1),
        Some(actl) => {
            if actl.num_frames > limits.max_frames {
                return Err(InspectError::TooManyFrames { frames: actl.num_frames, max: limits.max_frames });
            }
            // No fcTL before IDAT: the default image is an extra image outside the animation.
            let extra = u32::from(reader.info().frame_control.is_none());
            ("image/apng", actl.num_frames, actl.num_frames + extra)
        }
    };
    let size = reader.output_buffer_size().ok_or(InspectError::TooLarge { width, height })?;
    let mut buf = vec![0_u8; size];
    let mut stats = (0.0, 0.0);
    for i in 0..images {
        let out = reader.next_frame(&mut buf)?;
        if i == 0 {
            let len = out.buffer_size().min(buf.len());
            stats = luma_stats(&buf[..len], out.color_type);
        }
    }
    reader.finish()?;

    Ok(Inspection {
        mime,
        width,
        height,
        frames,
        luma_mean: stats.0,
        luma_stddev: stats.1,
        text: text_chunks(reader.info()),
    })
}

/// Walks the chunks before the image data and refuses a `PLTE` chunk whose length is not a
/// whole palette: the png decoder (0.18) panics expanding such a palette (found by the
/// `inspect_png` fuzz target), and the file is malformed anyway. Leaves `reader` at the
/// start; a truncated or odd chunk list is left for the decoder to report.
pub(crate) fn check_palette<R: Read + Seek>(reader: &mut R) -> Result<(), InspectError> {
    let io = |e: std::io::Error| InspectError::Decode(png::DecodingError::IoError(e));
    reader.seek(SeekFrom::Start(SIGNATURE.len() as u64)).map_err(io)?;
    loop {
        let mut head = [0_u8; 8];
        if reader.read_exact(&mut head).is_err() {
            break;
        }
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        match &head[4..] {
            b"PLTE" if len == 0 || len % 3 != 0 || len > 768 => return Err(InspectError::BadPalette { len }),
            b"IDAT" | b"IEND" => break,
            // The chunk's data and its CRC.
            _ => {
                if reader.seek(SeekFrom::Current(i64::from(len) + 4)).is_err() {
                    break;
                }
            }
        }
    }
    reader.rewind().map_err(io)
}

/// Mean and population standard deviation of the luma of 8-bit pixels.
fn luma_stats(pixels: &[u8], color: png::ColorType) -> (f64, f64) {
    let samples = color.samples();
    let luma = |p: &[u8]| -> f64 {
        let v = |i: usize| f64::from(p[i]);
        match color {
            png::ColorType::GrayscaleAlpha => v(0) * v(1) / 255.0,
            png::ColorType::Rgb => 0.299 * v(0) + 0.587 * v(1) + 0.114 * v(2),
            png::ColorType::Rgba => (0.299 * v(0) + 0.587 * v(1) + 0.114 * v(2)) * v(3) / 255.0,
            // Grayscale, and indexed (never produced with the EXPAND transformation).
            png::ColorType::Grayscale | png::ColorType::Indexed => v(0),
        }
    };
    let (mut n, mut sum, mut sum_sq) = (0_u32, 0.0_f64, 0.0_f64);
    for p in pixels.chunks_exact(samples) {
        let l = luma(p);
        n += 1;
        sum += l;
        sum_sq += l * l;
    }
    if n == 0 {
        return (0.0, 0.0);
    }
    let n = f64::from(n);
    let mean = sum / n;
    let variance = (sum_sq / n - mean * mean).max(0.0);
    (mean, variance.sqrt())
}

fn text_chunks(info: &png::Info<'_>) -> Vec<(String, String)> {
    let mut text: Vec<(String, String)> =
        info.uncompressed_latin1_text.iter().map(|c| (c.keyword.clone(), c.text.clone())).collect();
    for chunk in &info.compressed_latin1_text {
        let mut chunk = chunk.clone();
        let value = chunk.decompress_text_with_limit(MAX_TEXT_CHUNK).and_then(|()| chunk.get_text());
        if let Ok(value) = value {
            text.push((chunk.keyword, value));
        }
    }
    for chunk in &info.utf8_text {
        let mut chunk = chunk.clone();
        let value = chunk.decompress_text_with_limit(MAX_TEXT_CHUNK).and_then(|()| chunk.get_text());
        if let Ok(value) = value {
            text.push((chunk.keyword, value));
        }
    }
    text
}
