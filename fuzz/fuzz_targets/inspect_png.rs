//! PNG/APNG inspection (what the organizer runs on every upload): never panics, and what it
//! accepts is within the limits and is what the file's header declares.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sakuga_imaging::{InspectError, Limits, inspect_png};

/// Small limits keep each run fast; the checks are the same at any size.
const LIMITS: Limits = Limits { max_width: 512, max_height: 512, max_pixels: 128 * 128, max_frames: 16 };

fuzz_target!(|data: &[u8]| {
    match inspect_png(data, LIMITS) {
        Ok(found) => {
            // The header is the first chunk after the signature: its size is what was decoded.
            let be = |at: usize| u32::from_be_bytes(data[at..at + 4].try_into().unwrap());
            assert_eq!(&data[12..16], b"IHDR", "accepted a file whose first chunk is not IHDR");
            assert_eq!((found.width, found.height), (be(16), be(20)), "reported size is not the header's");
            assert!(found.width >= 1 && found.height >= 1);
            assert!(found.width <= LIMITS.max_width && found.height <= LIMITS.max_height);
            assert!(u64::from(found.width) * u64::from(found.height) <= LIMITS.max_pixels);
            assert!(found.frames >= 1 && found.frames <= LIMITS.max_frames);
            match found.mime {
                "image/png" => assert_eq!(found.frames, 1),
                "image/apng" => {}
                other => panic!("unexpected mime {other}"),
            }
            assert!((0.0..=255.0).contains(&found.luma_mean), "luma mean {}", found.luma_mean);
            assert!((0.0..=255.0).contains(&found.luma_stddev), "luma stddev {}", found.luma_stddev);
            let _ = found.is_blank(10.0);
            // The thumbnailer reads the same files after inspection.
            let thumb = sakuga_imaging::thumbnail_png(data, 64).expect("an inspected file thumbnails");
            let small = inspect_png(&thumb, Limits::default()).expect("a thumbnail is a valid png");
            assert!(small.width <= 64 && small.height <= 64);
        }
        Err(InspectError::NotPng) => assert!(!data.starts_with(b"\x89PNG\r\n\x1a\n")),
        Err(InspectError::TooLarge { width, height }) => assert!(
            width > LIMITS.max_width
                || height > LIMITS.max_height
                || u64::from(width) * u64::from(height) > LIMITS.max_pixels
                || width == 0
                || height == 0,
            "refused {width}x{height} as too large"
        ),
        Err(InspectError::TooManyFrames { frames, max }) => assert!(frames > max),
        Err(_) => {}
    }
});
