//! Image work for Sakuga that needs no model and no GPU.
//!
//! - [`render`](mod@render): the built-in deterministic CPU renderer (the `builtin` backend), producing PNG
//!   images and animated PNG (APNG) videos of a procedural anime sky, with progress reports,
//!   cancellation and low-resolution previews.
//! - [`inspect`](mod@inspect): decoding and checking of PNG/APNG files (format, size, frames, text
//!   metadata, blank detection), as the file organizer does before accepting an upload.
//!
//! ```
//! use std::ops::ControlFlow;
//! use sakuga_imaging::{Kind, Limits, RenderRequest, inspect_png, render};
//!
//! let req = RenderRequest {
//!     prompt: "sakura by the sea at sunset".into(),
//!     seed: 42,
//!     width: 64,
//!     height: 64,
//!     steps: 4,
//!     kind: Kind::Image,
//!     model: "builtin".into(),
//!     ..RenderRequest::default()
//! };
//! let artifact = render(&req, 0, &mut |_progress| ControlFlow::Continue(())).unwrap();
//! let found = inspect_png(&artifact.bytes, Limits::default()).unwrap();
//! assert_eq!((found.width, found.height, found.mime), (64, 64, "image/png"));
//! assert!(!found.is_blank(10.0));
//! ```

pub mod inspect;
mod math;
pub mod render;
mod scene;
pub mod thumb;

pub use inspect::{InspectError, Inspection, Limits, inspect_png, inspect_png_from};
pub use render::{Artifact, Kind, Preview, Progress, RenderError, RenderRequest, render};
pub use thumb::{
    decode_rgb, decode_rgb_from, downscale_rgb, encode_rgb_png, thumbnail_png, thumbnail_png_from,
};
