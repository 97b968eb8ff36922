//! `WorkerService.Attach`: the wire side of a worker session. Reads the hello, hands the
//! domain session each message translated by [`crate::convert`], and streams the
//! session's [`WorkerCommand`]s back as proto messages (the welcome first, a session
//! error last).

use std::time::Duration;

use futures_util::{FutureExt as _, StreamExt as _, future, stream};
use sakuga_proto::v1::{
    AttachRequest, AttachResponse, WorkerHello, attach_request::Msg, worker_service_server::WorkerService,
};
use tokio::sync::oneshot;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, warn};

use super::Api;
use crate::{
    convert,
    registry::WorkerCommand,
    worker::{self, Session},
};

/// How long a new stream may take to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

type AttachStream = tonic::codegen::BoxStream<AttachResponse>;

fn check_hello(h: &WorkerHello) -> Result<(), Status> {
    if h.worker_id.is_empty() || h.worker_id.len() > 128 {
        return Err(Status::invalid_argument("hello.worker_id: must be 1..=128 characters"));
    }
    if !(1..=64).contains(&h.slots) {
        return Err(Status::invalid_argument("hello.slots: must be between 1 and 64"));
    }
    if h.queue_slots > 64 {
        return Err(Status::invalid_argument("hello.queue_slots: must be between 0 and 64"));
    }
    if h.backends.is_empty() {
        return Err(Status::invalid_argument("hello.backends: must name at least one backend"));
    }
    Ok(())
}

#[tonic::async_trait]
impl WorkerService for Api {
    type AttachStream = AttachStream;

    /// Starts a session: reads hello, lets the domain confirm re-announced leases and
    /// register the worker, and returns its outbound stream.
    async fn attach(&self, req: Request<Streaming<AttachRequest>>) -> Result<Response<AttachStream>, Status> {
        // The guard admits only generator certificates here (see the authorization table).
        let mut inbound = req.into_inner();
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.next())
            .await
            .map_err(|_| Status::deadline_exceeded("no hello within 10 s"))?
            .ok_or_else(|| Status::invalid_argument("stream closed before hello"))??;
        let Some(Msg::Hello(hello)) = first.msg else {
            return Err(Status::invalid_argument("first message must be hello"));
        };
        check_hello(&hello)?;
        let hello = convert::hello(hello)?;
        let (session, attached, commands) =
            worker::attach(self.state.clone(), self.wake.clone(), hello).await.map_err(Status::from)?;
        let (failed, failure) = oneshot::channel();
        tokio::spawn(run(session, inbound, self.shutdown.clone(), failed));
        // The welcome, then the session's commands until it ends, then its error if any.
        let outbound = stream::once(future::ready(Ok(convert::welcome(&attached))))
            .chain(ReceiverStream::new(commands).map(|c: WorkerCommand| Ok(convert::command(c))))
            .chain(stream::once(failure).filter_map(|r: Result<Status, _>| future::ready(r.ok().map(Err))));
        Ok(Response::new(Box::pin(outbound)))
    }
}

/// The most messages a session takes from its stream at once: those already received
/// when the first is read, so the completions among them share one commit.
const BATCH: usize = 64;

/// Feeds the worker's messages to its session until the stream ends, the session fails
/// (its error goes to `failed`) or the scheduler shuts down. Messages already waiting
/// behind the first go to the session together (none is waited for).
async fn run(
    mut session: Session,
    mut inbound: Streaming<AttachRequest>,
    shutdown: CancellationToken,
    failed: oneshot::Sender<Status>,
) {
    let mut carried = None;
    loop {
        let msg = if let Some(msg) = carried.take() {
            msg
        } else {
            tokio::select! {
                () = shutdown.cancelled() => break,
                msg = inbound.next() => msg,
            }
        };
        match msg {
            Some(Ok(AttachRequest { msg: Some(m) })) => {
                let mut batch = vec![m];
                while batch.len() < BATCH {
                    match inbound.next().now_or_never() {
                        Some(Some(Ok(AttachRequest { msg: Some(m) }))) => batch.push(m),
                        Some(other) => {
                            carried = Some(other);
                            break;
                        }
                        None => break,
                    }
                }
                // Up to the first message that does not translate, in order; then its error.
                let mut msgs = Vec::with_capacity(batch.len());
                let mut refused = None;
                for m in batch {
                    match convert::worker_message(m) {
                        Ok(m) => msgs.push(m),
                        Err(e) => {
                            refused = Some(e);
                            break;
                        }
                    }
                }
                let handled = session.handle_all(msgs).await.and(refused.map_or(Ok(()), Err));
                if let Err(e) = handled {
                    warn!(worker_id = %session.worker_id(), error = %e, "worker message failed");
                    let _ = failed.send(Status::from(e));
                    break;
                }
            }
            Some(Ok(AttachRequest { msg: None })) => {}
            Some(Err(e)) => {
                info!(worker_id = %session.worker_id(), error = %e, "worker stream ended with error");
                break;
            }
            None => break,
        }
    }
    session.detach();
}
