//! The HTTP edge: accepts connections up to a cap, cuts off clients that
//! are too slow to send their headers or body or that sit idle, and on
//! shutdown stops accepting and drains what is in flight.
//!
//! Hyper serves each connection; what it does not bound (idle time apart
//! from header time, a body's arrival, the number of connections) is
//! bounded here, so one client cannot hold the gateway's sockets or tasks.

mod activity;
mod body;
mod config;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tower::ServiceExt;

pub use body::{is_body_timeout, BodyTimeout};
pub use config::HttpConfig;

use activity::{Activity, Watched};
use body::{BusyBody, DeadlineBody};

/// Connections the kernel holds for the gateway before it accepts them.
/// Tokio's default of 1,024 overflows under a burst of new connections,
/// and an overflowing queue resets connections the client thinks are open.
const LISTEN_BACKLOG: u32 = 4_096;

/// Listens on `addr` with a backlog sized for bursts of new connections.
pub fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Serves `app` on `listener` until `shutdown` resolves, then drains: no
/// new connections, in-flight requests and streams finish (idle keep-alive
/// connections close), for up to `shutdown_grace_ms`. Returns how many
/// connections were still open when it gave up (0: a clean drain).
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    config: &HttpConfig,
    shutdown: impl Future<Output = ()>,
) -> usize {
    let slots = Arc::new(Semaphore::new(config.max_connections));
    let (draining, drain_signal) = watch::channel(false);
    let limits = Arc::new(config.clone());
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            () = &mut shutdown => break,
            permit = slots.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
        };
        let stream = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: the condition
                    // passes as connections close; spinning would not help.
                    tracing::warn!(error = %e, "accept failed; retrying in 50 ms");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let limits = limits.clone();
        let drain_signal = drain_signal.clone();
        tokio::spawn(async move {
            connection(stream, app, &limits, drain_signal).await;
            drop(permit);
        });
    }
    drop(listener);
    let open = config.max_connections - slots.available_permits();
    tracing::info!(
        open,
        grace_ms = config.shutdown_grace_ms,
        "shutting down: no new connections; draining"
    );
    let _ = draining.send(true);
    let all = u32::try_from(config.max_connections).unwrap_or(u32::MAX);
    let grace = Duration::from_millis(config.shutdown_grace_ms);
    let drained = tokio::time::timeout(grace, slots.acquire_many(all))
        .await
        .is_ok();
    if drained {
        return 0;
    }
    let left = config.max_connections - slots.available_permits();
    tracing::warn!(left, "shutdown grace over; closing connections still open");
    left
}

/// Serves one connection until the client closes it, a timeout expires, or
/// a drain finishes its last response.
async fn connection(
    stream: tokio::net::TcpStream,
    app: axum::Router,
    limits: &HttpConfig,
    mut drain_signal: watch::Receiver<bool>,
) {
    let activity = Activity::new();
    let io = TokioIo::new(Watched::new(stream, activity.clone()));
    let body_limit_ms = limits.body_read_timeout_ms;
    let service_activity = activity.clone();
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let busy = service_activity.request_started();
        let request: Request = request.map(|b| Body::new(DeadlineBody::new(b, body_limit_ms)));
        let app = app.clone();
        async move {
            let response = app
                .oneshot(request)
                .await
                .unwrap_or_else(|e: Infallible| match e {});
            Ok::<_, Infallible>(response.map(|b| Body::new(BusyBody::new(b, busy))))
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        // Hyper's own header timer would also end idle connections at the
        // header deadline; the edge's watchdog keeps the two apart.
        .header_read_timeout(None)
        .keep_alive(true)
        .serve_connection(io, service);
    tokio::pin!(conn);
    let header_read = Duration::from_millis(limits.header_read_timeout_ms);
    let idle = Duration::from_millis(limits.idle_timeout_ms);
    let write = Duration::from_millis(limits.write_timeout_ms);
    // While busy there is no deadline until a write stalls; look again this
    // often, so a stall is seen within half the write timeout of starting.
    let recheck = if write.is_zero() {
        header_read.max(idle).max(Duration::from_secs(1))
    } else {
        (write / 2).max(Duration::from_millis(100))
    };
    let mut draining = false;
    loop {
        let deadline = activity.deadline(header_read, idle, write);
        let wake = deadline.map_or_else(|| tokio::time::Instant::now() + recheck, |(at, _)| at);
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            () = tokio::time::sleep_until(wake) => {
                if let Some((at, why)) = activity.deadline(header_read, idle, write) {
                    if at <= tokio::time::Instant::now() {
                        // Idle or owing its headers, nothing is in flight;
                        // a stalled write's request ends with its client.
                        tracing::debug!(?why, "closing a connection");
                        return;
                    }
                }
            }
            changed = drain_signal.changed(), if !draining => {
                // An error means the server is gone: drain all the same.
                if changed.is_err() || *drain_signal.borrow() {
                    conn.as_mut().graceful_shutdown();
                    draining = true;
                }
            }
        }
    }
}
