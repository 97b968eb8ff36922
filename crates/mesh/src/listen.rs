//! The gRPC port's accept loop: TLS handshakes off the loop, each with a timeout and a cap
//! on how many run at once, and a cap on open connections (a connection holds its slot
//! until it closes; past the cap the loop stops accepting and new clients wait in the
//! kernel's backlog). What one connection may hold (streams, header sizes, keepalive) is
//! set on the HTTP/2 server in [`crate::server`]; all of it comes from [`GrpcLimits`].

use std::{
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;
use tracing::{debug, warn};

use crate::{MeshError, metrics::Metrics};

/// Limits of a gRPC port (`[grpc]` in every service's configuration).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct GrpcLimits {
    /// Connections open at once; past it new clients wait until one closes.
    pub max_connections: usize,
    /// TLS handshakes in progress at once; past it new connections wait.
    pub max_concurrent_handshakes: usize,
    /// A TLS handshake that takes longer is dropped.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// HTTP/2 streams (calls) one connection may have open at once.
    pub max_concurrent_streams: u32,
    /// Largest header list (all metadata of one call) in bytes.
    pub max_header_list_bytes: u32,
    /// Silence on a connection before the server pings it.
    #[serde(with = "humantime_serde")]
    pub keepalive_interval: Duration,
    /// How long a ping may go unanswered before the connection is closed.
    #[serde(with = "humantime_serde")]
    pub keepalive_timeout: Duration,
}

impl Default for GrpcLimits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            max_concurrent_handshakes: 64,
            handshake_timeout: Duration::from_secs(10),
            max_concurrent_streams: 128,
            max_header_list_bytes: 16 * 1024,
            keepalive_interval: Duration::from_secs(20),
            keepalive_timeout: Duration::from_secs(10),
        }
    }
}

impl GrpcLimits {
    /// Every limit must be at least 1; the error names the field.
    pub fn validate(&self) -> Result<(), MeshError> {
        let fields = [
            ("max_connections", u64::try_from(self.max_connections).unwrap_or(u64::MAX)),
            ("max_concurrent_handshakes", u64::try_from(self.max_concurrent_handshakes).unwrap_or(u64::MAX)),
            ("handshake_timeout", u64::from(!self.handshake_timeout.is_zero())),
            ("max_concurrent_streams", u64::from(self.max_concurrent_streams)),
            ("max_header_list_bytes", u64::from(self.max_header_list_bytes)),
            ("keepalive_interval", u64::from(!self.keepalive_interval.is_zero())),
            ("keepalive_timeout", u64::from(!self.keepalive_timeout.is_zero())),
        ];
        for (field, value) in fields {
            if value == 0 {
                return Err(MeshError::Config(format!("server.grpc.{field}: must be positive")));
            }
        }
        Ok(())
    }
}

/// A TLS connection that holds one connection slot until it is dropped.
#[derive(Debug)]
pub struct Limited {
    inner: TlsStream<TcpStream>,
    _slot: OwnedSemaphorePermit,
}

impl Connected for Limited {
    type ConnectInfo = <TlsStream<TcpStream> as Connected>::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

impl AsyncRead for Limited {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Limited {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Accepts TCP connections on `listener` and completes their TLS handshakes with
/// `acceptor` within `limits`, until `shutdown`. Connections refused for a full ceiling
/// wait; handshakes that time out are counted in `metrics` (`tls_handshake_timeout`).
pub fn incoming(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    limits: &GrpcLimits,
    metrics: Option<Arc<Metrics>>,
    shutdown: CancellationToken,
) -> ReceiverStream<io::Result<Limited>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let handshakes = Arc::new(Semaphore::new(limits.max_concurrent_handshakes));
    let timeout = limits.handshake_timeout;
    tokio::spawn(async move {
        loop {
            // A slot for the connection and one for its handshake, before accepting it.
            let slots = async {
                let connection = connections.clone().acquire_owned().await.ok()?;
                let handshake = handshakes.clone().acquire_owned().await.ok()?;
                Some((connection, handshake))
            };
            let Some((connection, handshake)) = (tokio::select! {
                () = shutdown.cancelled() => return,
                slots = slots => slots,
            }) else {
                return;
            };
            let accepted = tokio::select! {
                () = shutdown.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            let (tcp, peer) = match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx, metrics) = (acceptor.clone(), tx.clone(), metrics.clone());
            tokio::spawn(async move {
                let result = tokio::time::timeout(timeout, acceptor.accept(tcp)).await;
                drop(handshake);
                match result {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(Limited { inner: tls, _slot: connection })).await;
                    }
                    Ok(Err(e)) => debug!(%peer, error = %e, "tls handshake refused"),
                    Err(_) => {
                        debug!(%peer, "tls handshake timed out");
                        if let Some(m) = metrics {
                            m.ceiling_refused("tls_handshake_timeout");
                        }
                    }
                }
            });
        }
    });
    ReceiverStream::new(rx)
}
