//! ComfyUI previews (JPEG or PNG, any size) turned into what job previews are: PNG, at most
//! 128 px on the longest side.

use std::io::Cursor;

/// Longest side of a forwarded preview.
pub const MAX_SIDE: u32 = 128;

/// Decodes `image`, box-downscales it to fit [`MAX_SIDE`] and encodes PNG. `None` when the
/// bytes do not decode (a preview is never worth failing a job over).
pub fn to_small_png(mime: &str, image: &[u8]) -> Option<Vec<u8>> {
    let (width, height, rgb) = match mime {
        "image/png" => decode_png(image)?,
        _ => decode_jpeg(image)?,
    };
    let (w, h, small) = downscale(width, height, &rgb);
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, w, h);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut writer = enc.write_header().ok()?;
    writer.write_image_data(&small).ok()?;
    writer.finish().ok()?;
    Some(out)
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

fn decode_png(bytes: &[u8]) -> Option<(u32, u32, Vec<u8>)> {
    let mut d = png::Decoder::new_with_limits(Cursor::new(bytes), png::Limits { bytes: 64 * 1024 * 1024 });
    d.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = d.read_info().ok()?;
    let mut buf = vec![0; reader.output_buffer_size()?];
    let frame = reader.next_frame(&mut buf).ok()?;
    let data = &buf[..frame.buffer_size()];
    let rgb = match frame.color_type {
        png::ColorType::Rgb => data.to_vec(),
        png::ColorType::Rgba => data.chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]]).collect(),
        png::ColorType::Grayscale => data.iter().flat_map(|&l| [l, l, l]).collect(),
        png::ColorType::GrayscaleAlpha => data.chunks_exact(2).flat_map(|p| [p[0], p[0], p[0]]).collect(),
        png::ColorType::Indexed => return None,
    };
    Some((frame.width, frame.height, rgb))
}

/// Averages boxes of source pixels into an image whose longest side is at most `MAX_SIDE`.
fn downscale(width: u32, height: u32, rgb: &[u8]) -> (u32, u32, Vec<u8>) {
    let longest = width.max(height).max(1);
    if longest <= MAX_SIDE {
        return (width, height, rgb.to_vec());
    }
    let w = (width * MAX_SIDE / longest).max(1);
    let h = (height * MAX_SIDE / longest).max(1);
    let mut out = Vec::with_capacity((w * h * 3) as usize);
    for y in 0..h {
        let (y0, y1) = (y * height / h, ((y + 1) * height / h).max(y * height / h + 1));
        for x in 0..w {
            let (x0, x1) = (x * width / w, ((x + 1) * width / w).max(x * width / w + 1));
            let mut sum = [0_u64; 3];
            for sy in y0..y1 {
                for sx in x0..x1 {
                    let i = ((sy * width + sx) * 3) as usize;
                    for c in 0..3 {
                        sum[c] += u64::from(rgb[i + c]);
                    }
                }
            }
            let n = u64::from((y1 - y0) * (x1 - x0));
            out.extend(sum.map(|s| u8::try_from(s / n).unwrap_or(255)));
        }
    }
    (w, h, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_png_previews_shrink_to_fit() {
        let (w, h) = (300, 150);
        let rgb: Vec<u8> = (0..w * h).flat_map(|i| [u8::try_from(i % 256).unwrap(), 0, 255]).collect();
        let mut png_bytes = Vec::new();
        let mut enc = png::Encoder::new(&mut png_bytes, w, h);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut wr = enc.write_header().unwrap();
        wr.write_image_data(&rgb).unwrap();
        wr.finish().unwrap();
        let small = to_small_png("image/png", &png_bytes).unwrap();
        let (sw, sh, _) = decode_png(&small).unwrap();
        assert_eq!((sw, sh), (128, 64));
        assert!(to_small_png("image/jpeg", b"not a jpeg").is_none());
    }
}
