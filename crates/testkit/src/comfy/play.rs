//! Replaying a recorded run to the client's socket, with the scripted faults, one prompt
//! at a time: the next waiting prompt starts the moment one ends, as in ComfyUI's queue.

use std::{sync::Arc, time::Duration};

use axum::extract::ws::Message;
use serde_json::Value;

use super::{
    recording::{Frame, Script},
    state::{Fault, Inner, Pacing, Queued, Run, Shared},
};

/// Starts `prompt` now (nothing runs) or queues it behind the running one.
pub(super) fn enqueue(shared: &Arc<Shared>, inner: &mut Inner, prompt: Queued) {
    if inner.running.is_none() && inner.pending.is_empty() {
        begin(shared, inner, prompt);
    } else {
        inner.pending.push_back(prompt);
    }
}

fn begin(shared: &Arc<Shared>, inner: &mut Inner, p: Queued) {
    inner.running = Some((p.prompt_id.clone(), p.client_id.clone(), p.number, None));
    inner.interrupted = false;
    let run = Run { started: tokio::time::Instant::now(), ended: None, next_waiting: false };
    inner.runs.push((p.prompt_id.clone(), run));
    tokio::spawn(play(shared.clone(), p.script, p.prompt_id, p.client_id, p.fault));
}

/// Plays a recorded run to the client's socket (whichever is open when a frame is due),
/// then starts the next waiting prompt.
async fn play(
    shared: Arc<Shared>,
    script: Script,
    prompt_id: String,
    client_id: String,
    fault: Option<Fault>,
) {
    let swap = |s: &str| s.replace(&script.prompt_id, &prompt_id).replace(&script.client_id, &client_id);
    // Frames are due at the recorded offsets from the run's start (each gap capped), not
    // after each other's sends, so a run lasts what was recorded however busy the machine.
    let mut last_t: Option<f64> = None;
    let mut base = tokio::time::Instant::now();
    let mut offset = Duration::ZERO;
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
                inner.pending.clear();
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
                base = tokio::time::Instant::now();
                offset = Duration::ZERO;
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
            offset += paced_gap(prev, t);
            tokio::time::sleep_until(base + offset).await;
        }
        last_t = Some(t);
        let mut inner = shared.inner.lock().unwrap();
        if let Message::Text(text) = &msg {
            let v: Value = serde_json::from_str(text.as_str()).unwrap_or(Value::Null);
            if v["type"] == "executing" {
                if v["data"]["node"].is_null() {
                    // The server stores the history right before this frame.
                    let history = swap(&script.history);
                    if let Some(Fault::HistoryLate { ms }) = fault {
                        let (shared, id) = (shared.clone(), prompt_id.clone());
                        tokio::spawn(async move {
                            tokio::time::sleep(Duration::from_millis(ms)).await;
                            shared.inner.lock().unwrap().history.insert(id, history);
                        });
                    } else {
                        inner.history.insert(prompt_id.clone(), history);
                    }
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
    let mut inner = shared.inner.lock().unwrap();
    inner.run_ended(&prompt_id);
    if inner.running.as_ref().is_some_and(|(id, ..)| *id == prompt_id) {
        inner.running = None;
    }
    if inner.running.is_none()
        && let Some(next) = inner.pending.pop_front()
    {
        begin(&shared, &mut inner, next);
    }
}

/// The longest pause replayed between two frames.
const MAX_GAP: Duration = Duration::from_millis(500);

/// The replayed pause between frames recorded at `prev` and `t` (ms).
pub(super) fn paced_gap(prev: f64, t: f64) -> Duration {
    Duration::try_from_secs_f64((t - prev) / 1000.0).unwrap_or_default().min(MAX_GAP)
}

/// How long a run of `script` lasts with [`Pacing::Recorded`] (up to a recorded interrupt).
pub(super) fn paced_duration(script: &Script) -> Duration {
    let mut total = Duration::ZERO;
    let mut last_t: Option<f64> = None;
    for frame in &script.frames {
        match frame {
            Frame::AwaitInterrupt => return total,
            Frame::Text(t, _) | Frame::Binary(t, _) => {
                if let Some(prev) = last_t {
                    total += paced_gap(prev, *t);
                }
                last_t = Some(*t);
            }
        }
    }
    total
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
