//! The one WebSocket per ComfyUI server: opened at start-up with this worker's own client
//! id, kept open, reopened with the same id when it drops (ComfyUI then sends the running
//! prompt's frames to the new socket). Frames become [`Conn`] events for whichever job runs
//! on the server.

use std::{sync::Arc, time::Duration};

use futures_util::{SinkExt as _, StreamExt as _};
use sakuga_mesh::{metrics::Metrics, retry::Backoff};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::{self, Message, protocol::WebSocketConfig};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{
    http::count_refusal,
    tls::Dial,
    wire::{WsEvent, parse_binary, parse_text},
};

/// What the socket task tells the job.
#[derive(Debug, Clone)]
pub(super) enum Conn {
    /// The socket is open (again).
    Up,
    /// The socket closed or failed.
    Down(Lost),
    /// The server sent a message over `comfyui.max_ws_message_bytes`; the socket was
    /// closed (and is reopened) without reading it.
    TooLarge,
    /// A frame.
    Event(WsEvent),
}

/// Why a server's socket is not open (for the log when a job cannot wait for it).
#[derive(Debug, Clone, thiserror::Error)]
pub(super) enum SocketDown {
    /// Not opened yet since start-up.
    #[error("not connected yet")]
    NotYet,
    /// Opening it failed.
    #[error("{0}")]
    Unreachable(Arc<tungstenite::Error>),
    /// It was open and ended.
    #[error("socket lost: {0}")]
    Lost(Lost),
}

/// How an open socket ended.
#[derive(Debug, Clone, thiserror::Error)]
pub(super) enum Lost {
    /// The server closed it.
    #[error("closed by the server")]
    ByServer,
    /// The server sent a message over the ceiling; it was closed without reading it.
    #[error("message over comfyui.max_ws_message_bytes: {0}")]
    TooLarge(tungstenite::error::CapacityError),
    /// Reading failed.
    #[error("{0}")]
    Failed(Arc<tungstenite::Error>),
}

/// Starts the socket task for `ws_url`, opened as `dial` says (extra headers, TLS). The
/// watch holds `Ok` while the socket is open, else why it is not. No message or frame
/// larger than `max_message_bytes` is read.
pub(super) fn spawn(
    ws_url: String,
    dial: Dial,
    preview_metadata: bool,
    max_message_bytes: usize,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> (mpsc::UnboundedReceiver<Conn>, watch::Receiver<Result<(), SocketDown>>) {
    let ws_config = WebSocketConfig::default()
        .max_message_size(Some(max_message_bytes))
        .max_frame_size(Some(max_message_bytes));
    let (tx, rx) = mpsc::unbounded_channel();
    let (state_tx, state_rx) = watch::channel(Err(SocketDown::NotYet));
    tokio::spawn(async move {
        let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(5));
        loop {
            let connected = tokio::select! {
                () = shutdown.cancelled() => return,
                c = dial.connect(&ws_url, ws_config) => c,
            };
            match connected {
                Ok(mut ws) => {
                    backoff.reset();
                    if preview_metadata {
                        // Previews then come as type-4 frames whose metadata names the prompt.
                        let flags =
                            r#"{"type": "feature_flags", "data": {"supports_preview_metadata": true}}"#;
                        let _ = ws.send(Message::text(flags)).await;
                    }
                    info!(url = %ws_url, "ComfyUI socket open");
                    let _ = state_tx.send(Ok(()));
                    let _ = tx.send(Conn::Up);
                    let why = loop {
                        let msg = tokio::select! {
                            () = shutdown.cancelled() => { let _ = ws.close(None).await; return; }
                            m = ws.next() => m,
                        };
                        match msg {
                            Some(Ok(Message::Text(t))) => {
                                if let Some(ev) = parse_text(t.as_str()) {
                                    let _ = tx.send(Conn::Event(ev));
                                } else {
                                    debug!(frame = %t.as_str(), "unreadable ComfyUI frame");
                                }
                            }
                            Some(Ok(Message::Binary(b))) => {
                                let _ = tx.send(Conn::Event(parse_binary(&b)));
                            }
                            Some(Ok(Message::Close(_))) | None => break Lost::ByServer,
                            Some(Ok(_)) => {}
                            Some(Err(tungstenite::Error::Capacity(e))) => {
                                count_refusal(&metrics, "comfyui_ws_message_bytes");
                                warn!(url = %ws_url, error = %e, limit = max_message_bytes,
                                      "ComfyUI socket message over comfyui.max_ws_message_bytes, refused");
                                let _ = tx.send(Conn::TooLarge);
                                break Lost::TooLarge(e);
                            }
                            Some(Err(e)) => break Lost::Failed(Arc::new(e)),
                        }
                    };
                    warn!(url = %ws_url, reason = %why, "ComfyUI socket lost, reopening");
                    let _ = state_tx.send(Err(SocketDown::Lost(why.clone())));
                    let _ = tx.send(Conn::Down(why));
                }
                Err(e) => {
                    let _ = state_tx.send(Err(SocketDown::Unreachable(Arc::new(e))));
                }
            }
            if !backoff.wait(&shutdown).await {
                return;
            }
        }
    });
    (rx, state_rx)
}
