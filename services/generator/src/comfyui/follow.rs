//! Following one prompt to its end over the server's socket (and `/history` and `/queue`
//! while the socket is down), and stopping it: through POST /api/jobs/{id}/cancel where
//! the server has it, `/interrupt` and `/queue` otherwise.

use std::{sync::atomic::Ordering, time::Duration};

use tokio::{sync::mpsc, time::Instant};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{
    ComfyUi, Followed,
    conn::Conn,
    failed,
    http::{Api, HttpError},
    run::{Run, Step},
    server::{CANCEL_ABSENT, CANCEL_OFFERED, Server},
    wire::Finished,
};
use crate::backend::{BackendError, Sink};

impl ComfyUi {
    /// Follows the job over the socket (and `/history` while the socket is down) to its
    /// end, or until it moves: while it waits behind another prompt and another server
    /// of this worker is idle, it leaves this server's queue for that one.
    /// `withdraw` asks for it to leave the queue altogether (the scheduler has a free slot
    /// elsewhere): taken out before it started, it ends [`BackendError::Withdrawn`].
    pub(super) async fn follow<'s>(
        &'s self,
        server: &Server,
        events: &mut mpsc::UnboundedReceiver<Conn>,
        run: &mut Run<'_>,
        sink: &Sink,
        (cancel, withdraw): (&CancellationToken, &CancellationToken),
    ) -> Result<Followed<'s>, BackendError> {
        let api = &server.api;
        let id = run.prompt_id;
        // comfyui.job_timeout counts from when ComfyUI starts the prompt: waiting in its
        // queue is not running. A prompt waits behind at most over_queue others of this
        // worker, each stopped at its own timeout, so the wait is bounded by theirs.
        let mut deadline = Instant::now() + self.config.job_timeout * (1 + self.config.over_queue);
        let mut start_seen = false;
        let lost_after = self.config.lost_after;
        let mut socket_up = server.state.borrow().is_ok();
        let mut unreachable_since: Option<Instant> = None;
        let mut success_seen: Option<Instant> = None;
        let mut cancel_sent: Option<Instant> = None;
        let mut poll = tokio::time::interval(Duration::from_millis(500));
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut check_now = false;
        let mut may_move = self.servers.len() > 1;
        let mut may_withdraw = true;
        loop {
            if run.started && !start_seen {
                start_seen = true;
                deadline = Instant::now() + self.config.job_timeout;
            }
            if may_move
                && !run.started
                && cancel_sent.is_none()
                && server.held.load(Ordering::Acquire) > 1
                && let Some(idle) = self.idle_place_besides(server)
            {
                if self.take_out(server, id).await {
                    return Ok(Followed::Moved(idle));
                }
                // It started meanwhile: it stays.
                may_move = false;
            }
            // Poll history while the socket is down, right after it comes back, and when the
            // final `executing` (history stored) is late after execution_success.
            let success_late = success_seen.is_some_and(|t| t.elapsed() > Duration::from_secs(2));
            if check_now || !socket_up || success_late {
                check_now = false;
                match self.check(api, id).await {
                    // A refused socket message fails the attempt even when the socket's
                    // drop made the history answer first.
                    Ok(Some(_))
                        if std::iter::from_fn(|| events.try_recv().ok())
                            .any(|c| matches!(c, Conn::TooLarge)) =>
                    {
                        return Err(self.socket_message_refused(server, id).await);
                    }
                    Ok(Some(done)) => return Ok(Followed::Done(done)),
                    Ok(None) => unreachable_since = None,
                    Err(Gone) => {
                        warn!(job_id = %id, url = %api.base(), "ComfyUI no longer knows the job");
                        return Err(BackendError::Retryable(
                            "ComfyUI no longer knows the job (restarted?)".to_owned(),
                        ));
                    }
                    Err(Unreachable(e)) => {
                        if matches!(e, HttpError::TooLarge { .. }) {
                            return Err(failed(api, id, &e));
                        }
                        let since = *unreachable_since.get_or_insert_with(Instant::now);
                        if since.elapsed() >= lost_after {
                            warn!(job_id = %id, url = %api.base(), error = %e, "ComfyUI unreachable, giving up on the job");
                            return Err(BackendError::Retryable(format!(
                                "ComfyUI unreachable for {} s",
                                since.elapsed().as_secs()
                            )));
                        }
                    }
                }
            }
            if cancel_sent.is_some_and(|t| t.elapsed() > Duration::from_secs(10)) {
                warn!(job_id = %id, "ComfyUI did not confirm the interrupt; reporting the job stopped");
                return Err(BackendError::Canceled);
            }
            tokio::select! {
                ev = events.recv() => match ev {
                    // Back after a drop: what happened meanwhile is in the history.
                    Some(Conn::Up) => { check_now = !socket_up; socket_up = true; }
                    Some(Conn::Down(why)) => {
                        warn!(job_id = %id, reason = %why, "ComfyUI socket dropped mid-job; polling history");
                        socket_up = false;
                    }
                    Some(Conn::TooLarge) => return Err(self.socket_message_refused(server, id).await),
                    Some(Conn::Event(ev)) => match run.on_event(ev, sink) {
                        Step::Continue => {}
                        Step::Succeeded => { success_seen = Some(Instant::now()); }
                        Step::HistoryStored => {
                            if let Some(done) = self.history_after_success(api, id).await? {
                                return Ok(Followed::Done(done));
                            }
                            check_now = true;
                        }
                        Step::Ended(done) => return Ok(Followed::Done(done)),
                    },
                    None => return Err(BackendError::Retryable("ComfyUI socket task ended".to_owned())),
                },
                () = cancel.cancelled(), if cancel_sent.is_none() => {
                    cancel_sent = Some(Instant::now());
                    if self.stop(server, id, run.started).await {
                        return Err(BackendError::Canceled);
                    }
                }
                _ = poll.tick() => {}
                () = self.freed.notified(), if may_move && !run.started => {}
                () = withdraw.cancelled(), if may_withdraw && !run.started && cancel_sent.is_none() => {
                    if self.take_out(server, id).await {
                        return Err(BackendError::Withdrawn);
                    }
                    // It started meanwhile: it runs here.
                    may_withdraw = false;
                }
                () = tokio::time::sleep_until(deadline) => {
                    self.halt(server, id).await;
                    return Err(BackendError::Retryable(format!(
                        "ComfyUI did not finish within comfyui.job_timeout ({:?})", self.config.job_timeout
                    )));
                }
            }
        }
    }

    /// Stops the prompt after a socket message over the ceiling: the attempt fails.
    async fn socket_message_refused(&self, server: &Server, id: &str) -> BackendError {
        self.halt(server, id).await;
        BackendError::Retryable(format!(
            "ComfyUI sent a socket message over comfyui.max_ws_message_bytes ({} bytes)",
            self.config.max_ws_message_bytes
        ))
    }

    /// Reads the history once the server said it is stored; `{}` means "not yet": retried
    /// briefly, then left to the polling backstop.
    async fn history_after_success(&self, api: &Api, id: &str) -> Result<Option<Finished>, BackendError> {
        for _ in 0..10 {
            match api.history(id).await {
                Ok(Some(done)) => return Ok(Some(done)),
                Ok(None) => tokio::time::sleep(Duration::from_millis(100)).await,
                Err(e) => return Err(failed(api, id, &e)),
            }
        }
        Ok(None)
    }

    /// One look at history and queue.
    async fn check(&self, api: &Api, id: &str) -> Result<Option<Finished>, Lost> {
        // Queue first: ComfyUI stores the history before it takes a prompt off the
        // running list, so "not queued" then "no history" means it is really gone.
        let queued = api.queued(id).await.map_err(Unreachable)?;
        match api.history(id).await.map_err(Unreachable)? {
            Some(done) => Ok(Some(done)),
            None if queued => Ok(None),
            None => Err(Gone),
        }
    }

    /// Cancels the prompt through POST /api/jobs/{id}/cancel where the server offers it
    /// (learned at the first call, per server): `Some(cancelled)`. `None` when it does not
    /// (an older ComfyUI) or the call failed: the caller uses /interrupt and /queue.
    async fn cancel_job(&self, server: &Server, id: &str) -> Option<bool> {
        if server.job_cancel.load(Ordering::Acquire) == CANCEL_ABSENT {
            return None;
        }
        match server.api.cancel_job(id).await {
            Ok(Some(cancelled)) => {
                server.job_cancel.store(CANCEL_OFFERED, Ordering::Release);
                Some(cancelled)
            }
            Ok(None) => {
                info!(url = %server.api.base(), "ComfyUI has no /api/jobs/{{id}}/cancel; using /interrupt and /queue");
                server.job_cancel.store(CANCEL_ABSENT, Ordering::Release);
                None
            }
            Err(e) => {
                warn!(job_id = %id, url = %server.api.base(), error = %e, "ComfyUI job cancel failed");
                None
            }
        }
    }

    /// Takes a prompt that has not started out of the server's queue (never interrupting
    /// it): true when it is gone from there.
    async fn take_out(&self, server: &Server, id: &str) -> bool {
        if let Err(e) = server.api.dequeue(id).await {
            warn!(job_id = %id, error = %e, "ComfyUI queue removal failed");
            return false;
        }
        gone(&server.api, id).await
    }

    /// Stops the prompt wherever it is (after a timeout or a refused message).
    async fn halt(&self, server: &Server, id: &str) {
        if self.cancel_job(server, id).await.is_none() {
            let _ = server.api.interrupt(id).await;
            let _ = server.api.dequeue(id).await;
        }
    }

    /// Stops the prompt: interrupt when it runs (only it: the next prompt then starts),
    /// removal from the queue when it waits. True when it is certainly gone (removed
    /// before it started); otherwise ComfyUI's interrupted frame ends the job.
    async fn stop(&self, server: &Server, id: &str, started: bool) -> bool {
        info!(job_id = %id, started, "stopping the prompt in ComfyUI");
        let api = &server.api;
        match self.cancel_job(server, id).await {
            Some(true) if !started => return gone(api, id).await,
            Some(_) => return false,
            None => {}
        }
        if started {
            if let Err(e) = api.interrupt(id).await {
                warn!(job_id = %id, error = %e, "ComfyUI interrupt failed");
            }
            return false;
        }
        if let Err(e) = api.dequeue(id).await {
            warn!(job_id = %id, error = %e, "ComfyUI queue removal failed");
        }
        match api.queued(id).await {
            Ok(false) => matches!(api.history(id).await, Ok(None)),
            Ok(true) => {
                // Started meanwhile.
                let _ = api.interrupt(id).await;
                false
            }
            Err(_) => false,
        }
    }
}

/// Whether a prompt removed from the queue is gone: neither queued nor in history (it did
/// not start meanwhile).
async fn gone(api: &Api, id: &str) -> bool {
    matches!(api.queued(id).await, Ok(false)) && matches!(api.history(id).await, Ok(None))
}

/// Why a job is no longer followed.
enum Lost {
    /// Neither queued nor in history: the server forgot it.
    Gone,
    /// The server does not answer (or answers beyond a ceiling).
    Unreachable(HttpError),
}
use Lost::{Gone, Unreachable};
