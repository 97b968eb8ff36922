//! Small PNG renditions of images: thumbnails of stored files and previews of work in
//! progress. Box-filtered (each output pixel averages the source pixels it covers).

use std::io::{BufRead, Cursor, Seek};

use crate::inspect::InspectError;

/// Decoder memory cap for thumbnailing, as for inspection.
const DECODER_MEMORY: usize = 64 * 1024 * 1024;

/// Averages boxes of 8-bit RGB pixels into an image whose longest side is at most
/// `max_side` (unchanged when it already fits). Returns width, height and pixels.
pub fn downscale_rgb(width: u32, height: u32, rgb: &[u8], max_side: u32) -> (u32, u32, Vec<u8>) {
    let longest = width.max(height).max(1);
    if longest <= max_side {
        return (width, height, rgb.to_vec());
    }
    let w = (u64::from(width) * u64::from(max_side) / u64::from(longest)).max(1);
    let h = (u64::from(height) * u64::from(max_side) / u64::from(longest)).max(1);
    let (w, h) = (u32::try_from(w).unwrap_or(1), u32::try_from(h).unwrap_or(1));
    let mut out = Vec::with_capacity((w * h * 3) as usize);
    for y in 0..h {
        let y0 = y * height / h;
        let y1 = ((y + 1) * height / h).max(y0 + 1);
        for x in 0..w {
            let x0 = x * width / w;
            let x1 = ((x + 1) * width / w).max(x0 + 1);
            let mut sum = [0_u64; 3];
            for sy in y0..y1 {
                let row = (sy * width) as usize * 3;
                for sx in x0..x1 {
                    let i = row + sx as usize * 3;
                    for (c, s) in sum.iter_mut().enumerate() {
                        *s += u64::from(rgb[i + c]);
                    }
                }
            }
            let n = u64::from((y1 - y0) * (x1 - x0));
            out.extend(sum.map(|s| u8::try_from(s / n).unwrap_or(u8::MAX)));
        }
    }
    (w, h, out)
}

/// Encodes 8-bit RGB pixels as PNG, with fast compression like the renderer's own files:
/// thumbnails and previews are made on every upload and every few steps, and the default
/// level took 15 times as long (25 ms against 1.7 ms for 512×512) for a file two thirds the
/// size (benches/RESULTS.md).
pub fn encode_rgb_png(width: u32, height: u32, rgb: &[u8]) -> Result<Vec<u8>, png::EncodingError> {
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, width, height);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    enc.set_compression(png::Compression::Fast);
    let mut writer = enc.write_header()?;
    writer.write_image_data(rgb)?;
    writer.finish()?;
    Ok(out)
}

/// Decodes the first image of a PNG (the still of an animated PNG) as 8-bit RGB
/// (alpha dropped, gray expanded). Returns width, height and pixels.
pub fn decode_rgb(png_bytes: &[u8]) -> Result<(u32, u32, Vec<u8>), InspectError> {
    decode_rgb_from(Cursor::new(png_bytes))
}

/// [`decode_rgb`] over a reader positioned at the start of the file.
pub fn decode_rgb_from<R: BufRead + Seek>(mut reader: R) -> Result<(u32, u32, Vec<u8>), InspectError> {
    crate::inspect::check_palette(&mut reader)?;
    let mut d = png::Decoder::new_with_limits(reader, png::Limits { bytes: DECODER_MEMORY });
    d.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = d.read_info()?;
    let size = reader.output_buffer_size().ok_or(InspectError::MemoryLimit)?;
    let mut buf = vec![0; size];
    let frame = reader.next_frame(&mut buf)?;
    let data = &buf[..frame.buffer_size().min(buf.len())];
    let rgb = match frame.color_type {
        png::ColorType::Rgb => data.to_vec(),
        png::ColorType::Rgba => data.chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]]).collect(),
        png::ColorType::Grayscale => data.iter().flat_map(|&l| [l, l, l]).collect(),
        png::ColorType::GrayscaleAlpha => data.chunks_exact(2).flat_map(|p| [p[0], p[0], p[0]]).collect(),
        // normalize_to_color8 expands palettes, so this does not occur.
        png::ColorType::Indexed => return Err(InspectError::NotPng),
    };
    Ok((frame.width, frame.height, rgb))
}

/// A PNG thumbnail (longest side at most `max_side`) of a PNG or animated PNG's first image.
pub fn thumbnail_png(png_bytes: &[u8], max_side: u32) -> Result<Vec<u8>, InspectError> {
    thumbnail_png_from(Cursor::new(png_bytes), max_side)
}

/// [`thumbnail_png`] over a reader positioned at the start of the file.
pub fn thumbnail_png_from<R: BufRead + Seek>(reader: R, max_side: u32) -> Result<Vec<u8>, InspectError> {
    let (w, h, rgb) = decode_rgb_from(reader)?;
    let (tw, th, small) = downscale_rgb(w, h, &rgb, max_side);
    encode_rgb_png(tw, th, &small).map_err(|e| InspectError::Encode(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wide_image_shrinks_to_fit_and_keeps_its_aspect() {
        let (w, h) = (600, 300);
        let rgb: Vec<u8> = (0..w * h).flat_map(|i| [u8::try_from(i % 251).unwrap(), 40, 200]).collect();
        let png_bytes = encode_rgb_png(w, h, &rgb).unwrap();
        let thumb = thumbnail_png(&png_bytes, 256).unwrap();
        let (tw, th, _) = decode_rgb(&thumb).unwrap();
        assert_eq!((tw, th), (256, 128));
        let (sw, sh, same) = downscale_rgb(10, 5, &rgb[..150], 256);
        assert_eq!((sw, sh, same.len()), (10, 5, 150), "small images stay as they are");
    }
}
