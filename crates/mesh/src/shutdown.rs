//! SIGINT/SIGTERM handling: the first signal cancels the returned token (graceful
//! shutdown), a second one exits at once.

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// A token cancelled by the first SIGINT or SIGTERM.
pub fn on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        info!("shutdown signal received, draining");
        cancel.cancel();
        wait_for_signal().await;
        warn!("second signal received, exiting at once");
        std::process::exit(130);
    });
    token
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) {
        (Ok(mut int), Ok(mut term)) => {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        }
        _ => {
            // No signal handlers (should not happen on Unix): fall back to ctrl-c.
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
