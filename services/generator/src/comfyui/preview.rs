//! ComfyUI previews (JPEG or PNG, any size) turned into what job previews are: PNG, at most
//! 128 px on the longest side.

use std::io::Cursor;

/// Longest side of a forwarded preview.
pub const MAX_SIDE: u32 = 128;

/// Decodes `image`, box-downscales it to fit [`MAX_SIDE`] and encodes PNG. `None` when the
/// bytes do not decode (a preview is never worth failing a job over).
pub fn to_small_png(mime: &str, image: &[u8]) -> Option<Vec<u8>> {
    let (width, height, rgb) = match mime {
        "image/png" => sakuga_imaging::decode_rgb(image).ok()?,
        _ => decode_jpeg(image)?,
    };
    let (w, h, small) = sakuga_imaging::downscale_rgb(width, height, &rgb, MAX_SIDE);
    sakuga_imaging::encode_rgb_png(w, h, &small).ok()
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
        let small = to_small_png("image/png", &png_bytes).unwrap();
        let (sw, sh, _) = sakuga_imaging::decode_rgb(&small).unwrap();
        assert_eq!((sw, sh), (128, 64));
        assert!(to_small_png("image/jpeg", b"not a jpeg").is_none());
    }
}
