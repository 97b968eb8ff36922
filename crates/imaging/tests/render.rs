//! Behaviour of the built-in renderer as its users (the generator service) see it.
#![allow(clippy::unwrap_used)]

use std::io::Cursor;
use std::ops::ControlFlow;

use sakuga_imaging::render::{MAX_STEPS, MIME_APNG, MIME_PNG, PREVIEW_MAX_SIDE, SOFTWARE};
use sakuga_imaging::{Artifact, Inspection, Kind, Limits, RenderError, RenderRequest, inspect_png, render};

fn image(prompt: &str, seed: u64) -> RenderRequest {
    RenderRequest {
        prompt: prompt.to_owned(),
        negative_prompt: "blurry, lowres".to_owned(),
        seed,
        width: 64,
        height: 64,
        steps: 4,
        kind: Kind::Image,
        frames: 0,
        fps: 0,
        model: "builtin".to_owned(),
    }
}

fn video(frames: u32) -> RenderRequest {
    RenderRequest {
        kind: Kind::Video,
        frames,
        fps: 8,
        width: 80,
        height: 64,
        steps: 2,
        ..image("sakura petals over the sea", 11)
    }
}

fn run(req: &RenderRequest, index: u32) -> Result<Artifact, RenderError> {
    render(req, index, &mut |_| ControlFlow::Continue(()))
}

fn inspect(a: &Artifact) -> Inspection {
    inspect_png(&a.bytes, Limits::default()).unwrap()
}

/// One decoded frame: RGB8 pixels and the (numerator, denominator) frame delay.
type Frame = (Vec<u8>, Option<(u16, u16)>);

/// Decodes every frame of an (A)PNG.
fn decode_frames(bytes: &[u8]) -> Vec<Frame> {
    let mut reader = png::Decoder::new(Cursor::new(bytes)).read_info().unwrap();
    let count = reader.info().animation_control.map_or(1, |a| a.num_frames);
    let mut out = Vec::new();
    for _ in 0..count {
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        reader.next_frame(&mut buf).unwrap();
        let delay = reader.info().frame_control.map(|f| (f.delay_num, f.delay_den));
        out.push((buf, delay));
    }
    out
}

fn mean_abs_diff(a: &[u8], b: &[u8]) -> f64 {
    let sum: u64 = a.iter().zip(b).map(|(x, y)| u64::from(x.abs_diff(*y))).sum();
    #[allow(clippy::cast_precision_loss)]
    let mean = sum as f64 / a.len() as f64;
    mean
}

#[test]
fn same_request_gives_identical_bytes() {
    let req = image("a quiet shrine at dusk", 1234);
    let a = run(&req, 0).unwrap();
    let b = run(&req, 0).unwrap();
    assert_eq!(a.bytes, b.bytes);
    let v1 = run(&video(3), 1).unwrap();
    let v2 = run(&video(3), 1).unwrap();
    assert_eq!(v1.bytes, v2.bytes);
}

#[test]
fn seed_prompt_negative_prompt_and_index_change_the_image() {
    let base = image("a quiet shrine at dusk", 1234);
    let reference = decode_frames(&run(&base, 0).unwrap().bytes).remove(0).0;
    let variants = [
        (RenderRequest { seed: 1235, ..base.clone() }, 0),
        (RenderRequest { prompt: "a quiet shrine at dawn".into(), ..base.clone() }, 0),
        (RenderRequest { negative_prompt: String::new(), ..base.clone() }, 0),
        (base.clone(), 1),
        (base, 7),
    ];
    for (req, index) in variants {
        let pixels = decode_frames(&run(&req, index).unwrap().bytes).remove(0).0;
        // Different pixels, not merely different metadata.
        let diff = mean_abs_diff(&reference, &pixels);
        assert!(diff > 2.0, "{req:?} index {index}: mean pixel difference {diff}");
    }
}

#[test]
fn image_decodes_to_requested_size_with_metadata() {
    let req = RenderRequest { width: 96, height: 64, ..image("summer day, blue sky", 987_654_321) };
    let a = run(&req, 2).unwrap();
    assert_eq!((a.mime, a.width, a.height, a.frames), (MIME_PNG, 96, 64, 1));
    let found = inspect(&a);
    assert_eq!(found.mime, "image/png");
    assert_eq!((found.width, found.height, found.frames), (96, 64, 1));
    assert!(!found.is_blank(10.0), "stddev {}", found.luma_stddev);
    for (key, value) in [
        ("prompt", "summer day, blue sky"),
        ("negative_prompt", "blurry, lowres"),
        ("seed", "987654321"),
        ("steps", "4"),
        ("width", "96"),
        ("height", "64"),
        ("model", "builtin"),
        ("batch_index", "2"),
        ("software", SOFTWARE),
    ] {
        assert_eq!(found.text_value(key), Some(value), "text chunk {key}");
    }
    assert_eq!(SOFTWARE, "sakuga-builtin");
}

#[test]
fn non_ascii_prompt_survives_in_itxt() {
    let req = image("夕焼けの海と桜、猫 🐈", 5);
    let found = inspect(&run(&req, 0).unwrap());
    assert_eq!(found.text_value("prompt"), Some("夕焼けの海と桜、猫 🐈"));
    assert_eq!(found.text_value("seed"), Some("5"));
}

#[test]
fn video_is_an_apng_with_smoothly_changing_frames() {
    let req = video(5);
    let a = run(&req, 0).unwrap();
    assert_eq!((a.mime, a.width, a.height, a.frames), (MIME_APNG, 80, 64, 5));
    let found = inspect(&a);
    assert_eq!(found.mime, "image/apng");
    assert_eq!((found.width, found.height, found.frames), (80, 64, 5));
    assert!(!found.is_blank(10.0));
    assert_eq!(found.text_value("frames"), Some("5"));
    assert_eq!(found.text_value("fps"), Some("8"));

    let frames = decode_frames(&a.bytes);
    assert_eq!(frames.len(), 5);
    for pair in frames.windows(2) {
        assert_eq!(pair[1].1, Some((1, 8)), "frame delay is 1/fps s");
        let diff = mean_abs_diff(&pair[0].0, &pair[1].0);
        // The camera pans: consecutive frames differ, but only a little.
        assert!(diff > 0.2 && diff < 20.0, "consecutive frame difference {diff}");
    }
}

#[test]
fn single_frame_video_is_still_an_apng() {
    let a = run(&video(1), 0).unwrap();
    let found = inspect(&a);
    assert_eq!((found.mime, found.frames), ("image/apng", 1));
}

#[test]
fn on_step_is_called_once_per_step_in_order() {
    let req = image("night sky", 3);
    let mut seen = Vec::new();
    render(&req, 0, &mut |p| {
        seen.push((p.step, p.total, p.frame, p.frames));
        ControlFlow::Continue(())
    })
    .unwrap();
    let expected: Vec<_> = (1..=4).map(|s| (s, 4, 0, 1)).collect();
    assert_eq!(seen, expected);

    // Video: steps × frames reports, frame after frame.
    let req = video(3);
    assert_eq!(req.total_steps(), 6);
    let mut seen = Vec::new();
    render(&req, 0, &mut |p| {
        seen.push((p.step, p.total, p.frame));
        ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(seen, vec![(1, 6, 0), (2, 6, 0), (3, 6, 1), (4, 6, 1), (5, 6, 2), (6, 6, 2)]);
}

#[test]
fn break_cancels_immediately() {
    for req in [RenderRequest { steps: 10, ..image("night sky", 3) }, video(4)] {
        let mut calls = 0;
        let result = render(&req, 0, &mut |p| {
            calls += 1;
            assert_eq!(p.step, calls);
            if p.step == 3 { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
        });
        assert!(matches!(result, Err(RenderError::Canceled)), "{result:?}");
        assert_eq!(calls, 3);
    }
}

#[test]
fn previews_are_small_pngs_of_the_current_state() {
    let req = RenderRequest { width: 512, height: 256, steps: 3, ..image("sunset", 9) };
    let mut previews = Vec::new();
    render(&req, 0, &mut |p| {
        previews.push(p.preview().unwrap());
        ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(previews.len(), 3);
    for p in &previews {
        assert_eq!((p.width, p.height), (PREVIEW_MAX_SIDE, 64));
        let found = inspect_png(&p.png, Limits::default()).unwrap();
        assert_eq!((found.width, found.height, found.mime), (128, 64, "image/png"));
    }
    // The state changes from step to step (noise → picture).
    assert_ne!(previews[0].png, previews[2].png);

    // A small canvas is previewed at full size.
    let mut small = None;
    render(&image("sunset", 9), 0, &mut |p| {
        small = Some(p.preview().unwrap());
        ControlFlow::Continue(())
    })
    .unwrap();
    let small = small.unwrap();
    assert_eq!((small.width, small.height), (64, 64));
}

#[test]
fn no_prompt_gives_a_blank_image() {
    let prompts = [
        "",
        "a girl",
        "night",
        "night sky, stars, moon",
        "sunset",
        "sea",
        "sakura",
        "夜の海",
        "夕焼け",
        "blue sky",
        "cyberpunk city at noon",
        "x",
    ];
    let negatives = ["", "clouds, sun, moon, mountains, stars, petals", "mountains, hills", "雲, 山, 星, 月"];
    let mut lowest = f64::MAX;
    for (i, prompt) in prompts.iter().enumerate() {
        for (j, negative) in negatives.iter().enumerate() {
            for steps in [1, 3] {
                let req = RenderRequest {
                    negative_prompt: (*negative).to_owned(),
                    steps,
                    ..image(prompt, (i * 31 + j) as u64)
                };
                let found = inspect(&run(&req, 0).unwrap());
                lowest = lowest.min(found.luma_stddev);
                assert!(
                    found.luma_stddev > 12.0,
                    "{prompt:?} / {negative:?}: luma stddev {}",
                    found.luma_stddev
                );
            }
        }
    }
    eprintln!("lowest luma stddev: {lowest:.1}");
}

fn invalid_field(req: &RenderRequest) -> String {
    let mut called = false;
    let result = render(req, 0, &mut |_| {
        called = true;
        ControlFlow::Continue(())
    });
    assert!(!called, "on_step must not run for an invalid request");
    match result {
        Err(RenderError::InvalidRequest(msg)) => msg,
        other => panic!("expected InvalidRequest, got {other:?}"),
    }
}

/// A copy of `base` with one change applied.
fn with(base: &RenderRequest, change: impl Fn(&mut RenderRequest)) -> RenderRequest {
    let mut req = base.clone();
    change(&mut req);
    req
}

#[test]
fn invalid_fields_are_named() {
    let ok = image("ok", 1);
    let vid = video(1);
    let cases = [
        (with(&ok, |r| r.width = 100), "width"),
        (with(&ok, |r| r.width = 56), "width"),
        (with(&ok, |r| r.width = 0), "width"),
        (with(&ok, |r| r.width = 4096), "width"),
        (with(&ok, |r| r.height = 2056), "height"),
        (with(&ok, |r| r.height = 65), "height"),
        (with(&ok, |r| r.steps = 0), "steps"),
        (with(&ok, |r| r.steps = MAX_STEPS + 1), "steps"),
        (with(&ok, |r| r.prompt = "a".repeat(10_000)), "prompt"),
        (with(&ok, |r| r.negative_prompt = "a".repeat(10_000)), "negative_prompt"),
        (with(&ok, |r| r.model = "m".repeat(300)), "model"),
        (with(&vid, |r| r.frames = 0), "frames"),
        (with(&vid, |r| r.frames = 121), "frames"),
        (with(&vid, |r| r.fps = 0), "fps"),
        (with(&vid, |r| r.fps = 61), "fps"),
        (with(&vid, |r| (r.width, r.height, r.frames) = (2048, 2048, 120)), "frames"),
    ];
    for (req, field) in cases {
        let msg = invalid_field(&req);
        assert!(msg.starts_with(&format!("{field}: ")), "{field}: got {msg:?}");
        let display = RenderError::InvalidRequest(msg).to_string();
        assert!(display.starts_with("invalid request: "), "{display}");
    }
    // frames and fps are ignored for still images.
    assert!(run(&with(&ok, |r| (r.frames, r.fps) = (0, 0)), 0).is_ok());
    assert!(run(&with(&ok, |r| (r.frames, r.fps) = (999, 999)), 0).is_ok());
}
