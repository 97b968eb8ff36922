//! ComfyUI WebSocket frames: text frames (JSON events) and binary preview frames, and the
//! preview decoder behind them. Never panics; a preview frame's image is the frame's tail;
//! a preview is decoded only within the dimension cap and comes out at most 128 px.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sakuga_generator::comfyui::{
    preview::{self, MAX_SIDE, PreviewError},
    wire::{WsEvent, parse_binary, parse_text},
};

/// The cap under test (small, so each run stays fast).
const MAX_PREVIEW_SIDE: u32 = 256;

fuzz_target!(|data: &[u8]| {
    let Some((&kind, frame)) = data.split_first() else { return };
    if kind & 1 == 0 {
        let Ok(text) = std::str::from_utf8(frame) else { return };
        let Some(event) = parse_text(text) else { return };
        let value: serde_json::Value = serde_json::from_str(text).expect("parsed events are JSON");
        assert!(value["type"].is_string(), "an event without a type string: {text}");
        if let WsEvent::Error { failure, .. } = &event {
            let shown = failure.describe();
            assert!(shown.chars().count() <= 3 * 121 + 40, "visible error too long: {shown}");
            assert!(!shown.contains('\n'), "visible error spans lines: {shown:?}");
        }
        return;
    }
    match parse_binary(frame) {
        WsEvent::Preview { prompt_id, mime, image } => {
            assert!(frame.ends_with(&image) && image.len() < frame.len(), "image is not the frame's tail");
            assert!(mime == "image/png" || mime == "image/jpeg");
            let kind = u32::from_be_bytes(frame[..4].try_into().unwrap());
            assert!(kind == 1 || kind == 4, "preview from frame type {kind}");
            if kind == 1 {
                assert_eq!(prompt_id, None);
                assert_eq!(image.len(), frame.len() - 8);
            }
            let declared = preview::declared_size(mime, &image);
            match preview::to_small_png(mime, &image, MAX_PREVIEW_SIDE) {
                Ok(png) => {
                    let (w, h) = declared.expect("a decoded preview declared its size");
                    assert!(w <= MAX_PREVIEW_SIDE && h <= MAX_PREVIEW_SIDE, "decoded {w}x{h} over the cap");
                    let (sw, sh, _) = sakuga_imaging::decode_rgb(&png).expect("previews are valid png");
                    assert!(sw <= MAX_SIDE && sh <= MAX_SIDE && sw >= 1 && sh >= 1);
                }
                Err(PreviewError::TooLarge { width, height }) => {
                    assert_eq!(declared, Some((width, height)));
                    assert!(width > MAX_PREVIEW_SIDE || height > MAX_PREVIEW_SIDE);
                }
                Err(PreviewError::Unreadable) => {}
            }
        }
        WsEvent::Other => {}
        other => panic!("binary frame parsed as {other:?}"),
    }
});
