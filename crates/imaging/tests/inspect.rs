//! Behaviour of `inspect_png` on good, bad and hostile input.
#![allow(clippy::unwrap_used)]

use std::ops::ControlFlow;

use sakuga_imaging::{InspectError, Kind, Limits, RenderRequest, inspect_png, render};

fn rendered(kind: Kind) -> Vec<u8> {
    let req = RenderRequest {
        prompt: "sunset by the sea".into(),
        seed: 77,
        width: 64,
        height: 64,
        steps: 2,
        kind,
        frames: 3,
        fps: 12,
        model: "builtin".into(),
        ..RenderRequest::default()
    };
    render(&req, 0, &mut |_| ControlFlow::Continue(())).unwrap().bytes
}

/// Encodes one frame (or several, as an APNG) with the png crate.
fn encode(
    width: u32,
    height: u32,
    color: png::ColorType,
    depth: png::BitDepth,
    frames: &[Vec<u8>],
    animated: bool,
) -> Vec<u8> {
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, width, height);
    enc.set_color(color);
    enc.set_depth(depth);
    enc.add_text_chunk("Comment".into(), "hello".into()).unwrap();
    enc.add_ztxt_chunk("Title".into(), "compressed title".into()).unwrap();
    if animated {
        enc.set_animated(u32::try_from(frames.len()).unwrap(), 0).unwrap();
    }
    let mut w = enc.write_header().unwrap();
    for f in frames {
        w.write_image_data(f).unwrap();
    }
    w.finish().unwrap();
    out
}

#[test]
fn rendered_image_and_video_are_accepted() {
    let still = inspect_png(&rendered(Kind::Image), Limits::default()).unwrap();
    assert_eq!((still.mime, still.frames), ("image/png", 1));
    let anim = inspect_png(&rendered(Kind::Video), Limits::default()).unwrap();
    assert_eq!((anim.mime, anim.frames), ("image/apng", 3));
    assert!(!anim.is_blank(10.0));
}

#[test]
fn truncated_files_are_refused() {
    for kind in [Kind::Image, Kind::Video] {
        let bytes = rendered(kind);
        let half = &bytes[..bytes.len() / 2];
        let err = inspect_png(half, Limits::default()).unwrap_err();
        assert!(matches!(err, InspectError::Truncated), "{kind:?}: {err:?}");
        assert_eq!(err.to_string(), "png file is truncated");
        // Only the final IEND chunk missing.
        let no_end = &bytes[..bytes.len() - 12];
        let err = inspect_png(no_end, Limits::default()).unwrap_err();
        assert!(matches!(err, InspectError::Truncated), "{kind:?} without IEND: {err:?}");
        // Just the signature.
        let err = inspect_png(&bytes[..8], Limits::default()).unwrap_err();
        assert!(matches!(err, InspectError::Truncated), "{err:?}");
    }
}

#[test]
fn non_png_bytes_are_refused() {
    let mut state = 0x1234_5678_u32;
    let random: Vec<u8> = (0..4096)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state.to_le_bytes()[0]
        })
        .collect();
    for bytes in [&random[..], b"", b"\x89PN", b"GIF89a......", b"<html></html>"] {
        let err = inspect_png(bytes, Limits::default()).unwrap_err();
        assert!(matches!(err, InspectError::NotPng), "{err:?}");
        assert_eq!(err.to_string(), "not a png file");
    }
}

#[test]
fn corrupt_pixel_data_is_refused() {
    let mut bytes = rendered(Kind::Image);
    // Flip a byte in the middle of the image data: the chunk CRC no longer matches.
    let mid = bytes.len() * 3 / 4;
    bytes[mid] ^= 0xFF;
    let err = inspect_png(&bytes, Limits::default()).unwrap_err();
    assert!(matches!(err, InspectError::Decode(_)), "{err:?}");
}

#[test]
fn uniform_gray_is_blank_and_a_gradient_is_not() {
    let gray = encode(48, 32, png::ColorType::Rgb, png::BitDepth::Eight, &[vec![128; 48 * 32 * 3]], false);
    let found = inspect_png(&gray, Limits::default()).unwrap();
    assert_eq!((found.mime, found.width, found.height, found.frames), ("image/png", 48, 32, 1));
    assert!(found.luma_stddev < 0.01, "{}", found.luma_stddev);
    assert!((found.luma_mean - 128.0).abs() < 0.01, "{}", found.luma_mean);
    assert!(found.is_blank(10.0));
    assert!(found.is_blank(0.5));
    assert_eq!(found.text_value("Comment"), Some("hello"));
    assert_eq!(found.text_value("Title"), Some("compressed title"));

    // Slightly noisy but still near-uniform: blank at threshold 10.
    let nearly: Vec<u8> = (0..64 * 64).map(|i| 120 + u8::try_from(i % 5).unwrap()).collect();
    let nearly = encode(64, 64, png::ColorType::Grayscale, png::BitDepth::Eight, &[nearly], false);
    let found = inspect_png(&nearly, Limits::default()).unwrap();
    assert!(found.is_blank(10.0), "{}", found.luma_stddev);

    // A horizontal gradient 0..=255 (16-bit grayscale, normalised to 8 bits).
    let mut gradient = Vec::new();
    for _ in 0..16 {
        for x in 0..256_u16 {
            gradient.extend_from_slice(&(x * 257).to_be_bytes());
        }
    }
    let gradient = encode(256, 16, png::ColorType::Grayscale, png::BitDepth::Sixteen, &[gradient], false);
    let found = inspect_png(&gradient, Limits::default()).unwrap();
    // Uniform distribution over 0..=255: stddev = sqrt((256² - 1) / 12) ≈ 73.9.
    assert!((found.luma_stddev - 73.9).abs() < 0.1, "{}", found.luma_stddev);
    assert!(!found.is_blank(10.0));
}

#[test]
fn fully_transparent_rgba_is_blank() {
    let mut pixels = Vec::new();
    for i in 0..32 * 32_u32 {
        let v = u8::try_from(i % 256).unwrap();
        pixels.extend_from_slice(&[v, 255 - v, v / 2, 0]);
    }
    let bytes = encode(32, 32, png::ColorType::Rgba, png::BitDepth::Eight, &[pixels], false);
    let found = inspect_png(&bytes, Limits::default()).unwrap();
    assert!(found.is_blank(1.0), "{}", found.luma_stddev);
}

#[test]
fn handmade_apng_reports_its_frames() {
    let frames: Vec<Vec<u8>> = (0..4_u8).map(|f| vec![f * 60; 16 * 16]).collect();
    let bytes = encode(16, 16, png::ColorType::Grayscale, png::BitDepth::Eight, &frames, true);
    let found = inspect_png(&bytes, Limits::default()).unwrap();
    assert_eq!((found.mime, found.frames), ("image/apng", 4));
    // The first frame is uniform black.
    assert!(found.is_blank(1.0));
    assert!(found.luma_mean.abs() < 0.01);
}

#[test]
fn limits_are_enforced_before_decoding() {
    let bytes = rendered(Kind::Image);
    let narrow = Limits { max_width: 32, ..Limits::default() };
    let err = inspect_png(&bytes, narrow).unwrap_err();
    assert!(matches!(err, InspectError::TooLarge { width: 64, height: 64 }), "{err:?}");
    let short = Limits { max_height: 63, ..Limits::default() };
    assert!(matches!(inspect_png(&bytes, short), Err(InspectError::TooLarge { .. })));
    let few_pixels = Limits { max_pixels: 64 * 64 - 1, ..Limits::default() };
    assert!(matches!(inspect_png(&bytes, few_pixels), Err(InspectError::TooLarge { .. })));
    let exact = Limits { max_width: 64, max_height: 64, max_pixels: 64 * 64, max_frames: 3 };
    assert!(inspect_png(&bytes, exact).is_ok());

    let video = rendered(Kind::Video);
    let few_frames = Limits { max_frames: 2, ..Limits::default() };
    let err = inspect_png(&video, few_frames).unwrap_err();
    assert!(matches!(err, InspectError::TooManyFrames { frames: 3, max: 2 }), "{err:?}");
    assert!(inspect_png(&video, exact).is_ok());
}

#[test]
fn huge_declared_dimensions_are_refused_without_allocating() {
    // A header claiming 100000 × 100000 pixels, followed by nothing useful.
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&100_000_u32.to_be_bytes());
    ihdr.extend_from_slice(&100_000_u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
    bytes.extend_from_slice(&13_u32.to_be_bytes());
    let mut chunk = b"IHDR".to_vec();
    chunk.extend_from_slice(&ihdr);
    bytes.extend_from_slice(&chunk);
    bytes.extend_from_slice(&crc32(&chunk).to_be_bytes());
    let err = inspect_png(&bytes, Limits::default()).unwrap_err();
    assert!(matches!(err, InspectError::TooLarge { width: 100_000, height: 100_000 }), "{err:?}");
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

/// Found by the `inspect_png` fuzz target: a palette PNG whose PLTE chunk is 101 bytes (not
/// whole 3-byte entries) made the png decoder panic. It is refused as malformed, by
/// inspection and by thumbnailing alike.
#[test]
fn a_palette_of_partial_entries_is_refused_not_a_panic() {
    let bytes = include_bytes!("../../../fuzz/corpus/inspect_png/palette-not-a-multiple-of-three");
    let err = inspect_png(bytes, Limits::default()).unwrap_err();
    assert!(matches!(err, InspectError::BadPalette { len: 101 }), "{err:?}");
    let err = sakuga_imaging::thumbnail_png(bytes, 64).unwrap_err();
    assert!(matches!(err, InspectError::BadPalette { len: 101 }), "{err:?}");
}
