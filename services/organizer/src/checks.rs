//! Quality checks an artifact passes before it is accepted: size and sha256 match the
//! header, it declares no more pixels or frames than the job asked for (checked before any
//! pixel is decoded), it decodes fully (not truncated), its type matches the mime, its
//! dimensions and frame count match the job, and it is not blank.

use std::io::{BufRead, Seek};

use sakuga_imaging::{InspectError, Limits, inspect_png_from};

use crate::error::OrganizerError;

/// Standard deviation of luminance (0..255) below which an image counts as blank.
pub const BLANK_STDDEV: f64 = 2.0;

/// What the artifact must be: the header's size, sha256 and mime, the job's dimensions.
#[derive(Debug, Clone)]
pub struct Expected {
    /// Mime type.
    pub mime: String,
    /// Width the job asked for.
    pub width: u32,
    /// Height the job asked for.
    pub height: u32,
    /// Frames the job asked for (1 for an image).
    pub frames: u32,
    /// Size.
    pub size_bytes: u64,
    /// Hex sha256.
    pub sha256: String,
}

impl Expected {
    /// Decode limits: nothing larger than the job asked for is decoded.
    pub fn limits(&self) -> Limits {
        Limits {
            max_width: self.width,
            max_height: self.height,
            max_pixels: u64::from(self.width) * u64::from(self.height),
            max_frames: self.frames,
        }
    }
}

/// What arrived: its size and hex sha256, computed while it was written.
#[derive(Debug, Clone)]
pub struct Received {
    /// Bytes.
    pub size_bytes: u64,
    /// Hex sha256.
    pub sha256: String,
}

/// Runs every check on `bytes` (read from the start; blocking I/O and decoding, so call it
/// off the async runtime); returns the names of the checks passed (all of them) or the first
/// failure.
pub fn run<R: BufRead + Seek>(
    received: &Received,
    bytes: R,
    expected: &Expected,
) -> Result<Vec<String>, OrganizerError> {
    let reject = |why: String| Err(OrganizerError::Rejected(why));
    if received.size_bytes != expected.size_bytes {
        return reject(format!("size is {} bytes, header said {}", received.size_bytes, expected.size_bytes));
    }
    if !received.sha256.eq_ignore_ascii_case(&expected.sha256) {
        return reject("sha256 does not match the header".to_owned());
    }
    let found = inspect_png_from(bytes, expected.limits()).map_err(|e| match e {
        InspectError::TooLarge { width, height } => OrganizerError::Rejected(format!(
            "image declares {width}x{height}, more than the job's {}x{}",
            expected.width, expected.height
        )),
        InspectError::TooManyFrames { frames, max } => {
            OrganizerError::Rejected(format!("animation declares {frames} frames, more than the job's {max}"))
        }
        e => OrganizerError::Rejected(format!("does not decode: {e}")),
    })?;
    if found.mime != expected.mime {
        return reject(format!("content is {}, header said {}", found.mime, expected.mime));
    }
    if (found.width, found.height) != (expected.width, expected.height) {
        return reject(format!(
            "dimensions are {}x{}, the job asked for {}x{}",
            found.width, found.height, expected.width, expected.height
        ));
    }
    if found.frames != expected.frames {
        return reject(format!("{} frames, the job asked for {}", found.frames, expected.frames));
    }
    if found.is_blank(BLANK_STDDEV) {
        return reject(format!("image is blank (luminance deviation {:.2})", found.luma_stddev));
    }
    Ok(["size", "sha256", "decodes", "mime", "dimensions", "frames", "not_blank"].map(str::to_owned).to_vec())
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use sha2::{Digest as _, Sha256};

    use super::*;

    fn promised(bytes: &[u8], width: u32, height: u32) -> (Received, Expected) {
        let sha256 = hex::encode(Sha256::digest(bytes));
        let received = Received { size_bytes: bytes.len() as u64, sha256: sha256.clone() };
        let expected = Expected {
            mime: "image/png".to_owned(),
            width,
            height,
            frames: 1,
            size_bytes: bytes.len() as u64,
            sha256,
        };
        (received, expected)
    }

    /// A PNG whose header declares `width`×`height` and that has no pixel data at all: any
    /// attempt to decode it fails as truncated.
    fn header_only_png(width: u32, height: u32) -> Vec<u8> {
        let mut ihdr = b"IHDR".to_vec();
        ihdr.extend(width.to_be_bytes());
        ihdr.extend(height.to_be_bytes());
        ihdr.extend([8, 2, 0, 0, 0]);
        let mut out = vec![0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1A, b'\n'];
        out.extend(13_u32.to_be_bytes());
        out.extend(&ihdr);
        out.extend(crc32(&ihdr).to_be_bytes());
        out
    }

    fn crc32(data: &[u8]) -> u32 {
        let mut crc = 0xFFFF_FFFF_u32;
        for &b in data {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
            }
        }
        !crc
    }

    #[test]
    fn an_image_declaring_more_than_the_job_asked_for_is_refused_before_decoding() {
        let bytes = header_only_png(4096, 4096);
        let (received, expected) = promised(&bytes, 64, 64);
        let err = run(&received, Cursor::new(&bytes), &expected).unwrap_err().to_string();
        assert!(err.contains("image declares 4096x4096, more than the job's 64x64"), "{err}");
        // Within the job's size, the same header-only file gets as far as decoding.
        let bytes = header_only_png(64, 64);
        let (received, expected) = promised(&bytes, 64, 64);
        let err = run(&received, Cursor::new(&bytes), &expected).unwrap_err().to_string();
        assert!(err.contains("does not decode"), "{err}");
    }

    #[test]
    fn size_and_hash_are_compared_with_the_header() {
        let rgb: Vec<u8> = (0..64 * 64).flat_map(|i| [u8::try_from(i % 256).unwrap(), 9, 99]).collect();
        let bytes = sakuga_imaging::encode_rgb_png(64, 64, &rgb).unwrap();
        let (received, expected) = promised(&bytes, 64, 64);
        assert_eq!(run(&received, Cursor::new(&bytes), &expected).unwrap().len(), 7);
        let short = Received { size_bytes: 3, ..received.clone() };
        let err = run(&short, Cursor::new(&bytes), &expected).unwrap_err().to_string();
        assert!(err.contains("size is 3 bytes"), "{err}");
        let other = Received { sha256: "0".repeat(64), ..received };
        let err = run(&other, Cursor::new(&bytes), &expected).unwrap_err().to_string();
        assert!(err.contains("sha256"), "{err}");
    }
}
