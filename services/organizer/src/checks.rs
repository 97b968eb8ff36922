//! Quality checks an artifact passes before it is accepted: size and sha256 match the
//! header, it decodes fully (not truncated), its type matches the mime, its dimensions and
//! frame count match the request, and it is not blank.

use sakuga_imaging::{Limits, inspect_png};
use sha2::{Digest as _, Sha256};

use crate::error::OrganizerError;

/// Standard deviation of luminance (0..255) below which an image counts as blank.
pub const BLANK_STDDEV: f64 = 2.0;

/// What the uploader promised.
#[derive(Debug, Clone)]
pub struct Expected {
    /// Mime type.
    pub mime: String,
    /// Width.
    pub width: u32,
    /// Height.
    pub height: u32,
    /// Frames.
    pub frames: u32,
    /// Size.
    pub size_bytes: u64,
    /// Hex sha256.
    pub sha256: String,
}

/// Runs every check; returns the names of the checks passed (all of them) or the first
/// failure.
pub fn run(bytes: &[u8], expected: &Expected) -> Result<Vec<String>, OrganizerError> {
    let reject = |why: String| Err(OrganizerError::Rejected(why));
    if bytes.len() as u64 != expected.size_bytes {
        return reject(format!("size is {} bytes, header said {}", bytes.len(), expected.size_bytes));
    }
    let digest = hex::encode(Sha256::digest(bytes));
    if !digest.eq_ignore_ascii_case(&expected.sha256) {
        return reject("sha256 does not match the header".to_owned());
    }
    let found = inspect_png(bytes, Limits::default())
        .map_err(|e| OrganizerError::Rejected(format!("does not decode: {e}")))?;
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
