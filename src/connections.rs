//! Accepting HTTP connections with the limits `axum::serve` does not set (issue 16, findings 4 and 8).
//!
//! - **Header read timeout.** A client that opens a connection and sends its request head slowly, or never
//!   finishes it, is cut off after `TALLY_HEADER_READ_TIMEOUT_SECS` (default 10). Without it one client could hold
//!   thousands of half-sent requests open until the server ran out of file descriptors.
//! - **Body read timeout.** A request body that stops arriving for `TALLY_BODY_READ_TIMEOUT_SECS` (default 30)
//!   ends the request (`tower_http`'s request body timeout, in `server::router`).
//! - **Header size.** A request head larger than `TALLY_MAX_HEADER_BYTES` (default 16 KiB; Tally's cookies and
//!   headers take well under 2 KiB) is answered 431 by hyper.
//! - **Connection limit.** At most `TALLY_MAX_CONNECTIONS` (default 4,096) connections are served at once; further
//!   ones wait in the kernel's backlog instead of taking file descriptors. Keep it below the process's
//!   `ulimit -n`, less the database pool.
//!
//! Live meters (server-sent events) are unaffected: the timeouts apply to reading requests, not to writing
//! responses.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tower::ServiceExt;

/// The limits connections are served with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_connections: usize,
}

impl ConnectionLimits {
    /// The limits `config` sets (`TALLY_HEADER_READ_TIMEOUT_SECS`, `TALLY_MAX_HEADER_BYTES`, `TALLY_MAX_CONNECTIONS`).
    pub fn from_config(config: &crate::config::Config) -> ConnectionLimits {
        ConnectionLimits {
            header_read_timeout: Duration::from_secs(config.header_read_timeout_secs),
            max_header_bytes: config.max_header_bytes,
            max_connections: usize::try_from(config.max_connections).unwrap_or(usize::MAX),
        }
    }
}

/// Serves `app` on `listener` until `shutdown` completes, then stops accepting and lets open connections finish
/// their requests for at most `grace` (connections still open then are dropped). Each request carries its peer
/// address as `ConnectInfo<SocketAddr>` (sign-in throttling counts by it).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) -> std::io::Result<()> {
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // hyper's floor for its read buffer is 8 KiB.
        .max_buf_size(limits.max_header_bytes.max(8_192));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors, say: wait a moment instead of spinning; the served connections go on.
                    tracing::warn!(error = %err, "could not accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Responses go out in several writes (streamed pages, server-sent events): without this, Nagle's algorithm
        // meets the client's delayed ACK and a page waits ~40 ms.
        if let Err(err) = stream.set_nodelay(true) {
            tracing::debug!(error = %err, %peer, "could not set TCP_NODELAY");
        }
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            app.clone().oneshot(request.map(axum::body::Body::new))
        });
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, %peer, "connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
        tracing::warn!("connections still open at the shutdown deadline; closing them");
    }
    Ok(())
}
