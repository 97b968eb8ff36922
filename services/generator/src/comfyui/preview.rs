//! ComfyUI previews (JPEG or PNG, any size) turned into what job previews are: PNG, at most
//! 128 px on the longest side.

use std::io::Cursor;

/// Longest side of a forwarded preview.
pub const MAX_SIDE: u32 = 128;

/// Why a preview was not forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreviewError {
    /// Its header declares a side longer than the cap: not decoded.
    TooLarge {
        /// Declared width.
        width: u32,
        /// Declared height.
        height: u32,
    },
    /// The bytes are not a readable JPEG or PNG.
    Unreadable,
}

/// The width and height an image's header declares, read without decoding pixels.
pub fn declared_size(mime: &str, image: &[u8]) -> Option<(u32, u32)> {
    if mime == "image/png" {
        // The IHDR chunk comes first, right after the signature; the decoder reads the same.
        const SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1A, b'\n'];
        if image.get(..8)? != SIGNATURE || image.get(12..16)? != b"IHDR" {
            return None;
        }
        let be = |at: usize| image.get(at..at + 4).and_then(|b| b.try_into().ok()).map(u32::from_be_bytes);
        return Some((be(16)?, be(20)?));
    }
    let mut d = jpeg_decoder::Decoder::new(Cursor::new(image));
    d.read_info().ok()?;
    let info = d.info()?;
    Some((u32::from(info.width), u32::from(info.height)))
}

/// Checks the declared size against `max_side`, then decodes `image`, box-downscales it
/// to fit [`MAX_SIDE`] and encodes PNG. A preview is never worth failing a job over: the
/// caller skips it on an error.
pub fn to_small_png(mime: &str, image: &[u8], max_side: u32) -> Result<Vec<u8>, PreviewError> {
    let (width, height) = declared_size(mime, image).ok_or(PreviewError::Unreadable)?;
    if width > max_side || height > max_side {
        return Err(PreviewError::TooLarge { width, height });
    }
    let (width, height, rgb) = match mime {
        "image/png" => sakuga_imaging::decode_rgb(image).map_err(|_| PreviewError::Unreadable)?,
        _ => decode_jpeg(image).ok_or(PreviewError::Unreadable)?,
    };
    // What was decoded is what was declared (the decoders read the same header).
    if width > max_side || height > max_side || rgb.len() as u64 != u64::from(width) * u64::from(height) * 3 {
        return Err(PreviewError::Unreadable);
    }
    let (w, h, small) = sakuga_imaging::downscale_rgb(width, height, &rgb, MAX_SIDE);
    sakuga_imaging::encode_rgb_png(w, h, &small).map_err(|_| PreviewError::Unreadable)
}

fn decode_jpeg(bytes: &[u8]) -> Option<(u32, u32, Vec<u8>)> {
    let mut d = jpeg_decoder::Decoder::new(Cursor::new(bytes));
    let pixels = d.decode().ok()?;
    let info = d.info()?;
    let (w, h) = (u32::from(info.width), u32::from(info.height));
    let rgb = match info.pixel_format {
        jpeg_decoder::PixelFormat::RGB24 => pixels,
        jpeg_decoder::PixelFormat::L8 => pixels.iter().flat_map(|&l| [l, l, l]).collect(),
        jpeg_decoder::PixelFormat::L16 => pixels.chunks_exact(2).flat_map(|p| [p[0], p[0], p[0]]).collect(),
        jpeg_decoder::PixelFormat::CMYK32 => pixels
            .chunks_exact(4)
            .flat_map(|p| {
                let k = u16::from(255 - p[3]);
                let ch = |c: u8| u8::try_from(u16::from(255 - c) * k / 255).unwrap_or(255);
                [ch(p[0]), ch(p[1]), ch(p[2])]
            })
            .collect(),
    };
    Some((w, h, rgb))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_png_previews_shrink_to_fit() {
        let (w, h) = (300, 150);
        let rgb: Vec<u8> = (0..w * h).flat_map(|i| [u8::try_from(i % 256).unwrap(), 0, 255]).collect();
        let png_bytes = sakuga_imaging::encode_rgb_png(w, h, &rgb).unwrap();
        let small = to_small_png("image/png", &png_bytes, 2048).unwrap();
        let (sw, sh, _) = sakuga_imaging::decode_rgb(&small).unwrap();
        assert_eq!((sw, sh), (128, 64));
        assert_eq!(to_small_png("image/jpeg", b"not a jpeg", 2048), Err(PreviewError::Unreadable));
    }

    #[test]
    fn previews_declaring_a_side_over_the_cap_are_not_decoded() {
        let rgb = vec![7_u8; 300 * 20 * 3];
        let png_bytes = sakuga_imaging::encode_rgb_png(300, 20, &rgb).unwrap();
        assert_eq!(declared_size("image/png", &png_bytes), Some((300, 20)));
        assert_eq!(
            to_small_png("image/png", &png_bytes, 256),
            Err(PreviewError::TooLarge { width: 300, height: 20 })
        );
        // A header claiming 60000x60000 over a few bytes is refused before any allocation.
        let mut forged = png_bytes[..33].to_vec();
        forged[16..24].copy_from_slice(&[0, 0, 0xEA, 0x60, 0, 0, 0xEA, 0x60]);
        assert_eq!(
            to_small_png("image/png", &forged, 2048),
            Err(PreviewError::TooLarge { width: 60_000, height: 60_000 })
        );
    }
}
