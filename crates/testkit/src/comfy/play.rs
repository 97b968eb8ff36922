//! Replaying a recorded run to the client's socket, with the scripted faults.

use std::{sync::Arc, time::Duration};

use axum::extract::ws::Message;
use serde_json::Value;

use super::{
    recording::{Frame, Script},
    state::{Fault, Pacing, Shared},
};

/// Plays a recorded run to the client's socket (whichever is open when a frame is due).
pub(super) async fn play(
    shared: Arc<Shared>,
    script: Script,
    prompt_id: String,
    client_id: String,
    fault: Option<Fault>,
) {
    let swap = |s: &str| s.replace(&script.prompt_id, &prompt_id).replace(&script.client_id, &client_id);
    let mut last_t: Option<f64> = None;
    for (i, frame) in script.frames.iter().enumerate() {
        match fault {
            Some(Fault::DropSocket(at)) if at == i => {
                let mut inner = shared.inner.lock().unwrap();
                if let Some(s) = inner.sockets.remove(&client_id) {
                    let _ = s.send(Message::Close(None));
                }
            }
            Some(Fault::Restart { at, down_ms }) if at == i => {
                let mut inner = shared.inner.lock().unwrap();
                for (_, s) in inner.sockets.drain() {
                    let _ = s.send(Message::Close(None));
                }
                inner.running = None;
                inner.history.clear();
                inner.down_until = Some(tokio::time::Instant::now() + Duration::from_millis(down_ms));
                return;
            }
            _ => {}
        }
        let (t, msg) = match frame {
            Frame::AwaitInterrupt => {
                loop {
                    let waiting = shared.interrupt.notified();
                    if shared.inner.lock().unwrap().interrupted {
                        break;
                    }
                    waiting.await;
                }
                last_t = None;
                continue;
            }
            Frame::Text(t, raw) => (*t, Message::text(swap(raw))),
            Frame::Binary(t, bytes) => {
                (*t, Message::binary(swap_metadata(bytes, &script.prompt_id, &prompt_id)))
            }
        };
        if shared.pacing == Pacing::Recorded
            && let Some(prev) = last_t
        {
            let gap = Duration::try_from_secs_f64((t - prev) / 1000.0).unwrap_or_default();
            tokio::time::sleep(gap.min(Duration::from_millis(500))).await;
        }
        last_t = Some(t);
        let mut inner = shared.inner.lock().unwrap();
        if let Message::Text(text) = &msg {
            let v: Value = serde_json::from_str(text.as_str()).unwrap_or(Value::Null);
            if v["type"] == "executing" {
                if v["data"]["node"].is_null() {
                    // The server stores the history right before this frame.
                    inner.history.insert(prompt_id.clone(), swap(&script.history));
                    inner.running = None;
                } else if let Some((_, _, _, node)) = inner.running.as_mut() {
                    *node = v["data"]["node"].as_str().map(str::to_owned);
                }
            }
        }
        if let Some(s) = inner.sockets.get(&client_id) {
            let _ = s.send(msg);
        }
    }
}

/// A type-4 preview frame names its prompt in the JSON metadata after the 8-byte header;
/// the ids have the same length, so the header's metadata length stays right.
fn swap_metadata(frame: &[u8], recorded: &str, ours: &str) -> Vec<u8> {
    let mut frame = frame.to_vec();
    if frame.get(..4) != Some(&[0, 0, 0, 4]) || recorded.len() != ours.len() {
        return frame;
    }
    let len = u32::from_be_bytes(frame[4..8].try_into().unwrap()) as usize;
    let meta = &mut frame[8..8 + len];
    if let Some(at) = meta.windows(recorded.len()).position(|w| w == recorded.as_bytes()) {
        meta[at..at + ours.len()].copy_from_slice(ours.as_bytes());
    }
    frame
}
