//! What one connection is doing, for its timeouts: idle between requests,
//! sending a request's headers, or busy with a request (which no edge
//! timeout interrupts: the attempt and stream timeouts bound that).
//!
//! The socket wrapper marks the first byte of a head, the service marks a
//! request's start, and the response body's guard marks its end. All of
//! them run on the connection's own task, so plain atomics suffice.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// No head is being read.
const NONE: u64 = u64::MAX;

/// The timing record of one connection.
#[derive(Debug)]
pub struct Activity {
    opened: Instant,
    in_flight: AtomicU32,
    /// When the connection last became idle (accept, or a response's end), ms since `opened`.
    idle_since: AtomicU64,
    /// When the head being read began, ms since `opened`, or `NONE`.
    head_since: AtomicU64,
}

/// Why a connection is closed by the edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// Its headers did not arrive in time.
    HeaderRead,
    /// It sat idle too long.
    Idle,
}

impl Activity {
    /// A connection just accepted: its first head is due from now on.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            opened: Instant::now(),
            in_flight: AtomicU32::new(0),
            idle_since: AtomicU64::new(0),
            head_since: AtomicU64::new(0),
        })
    }

    fn now_ms(&self) -> u64 {
        self.opened.elapsed().as_millis() as u64
    }

    /// Bytes arrived: if nothing was in flight, a new head has begun.
    fn bytes_read(&self) {
        if self.in_flight.load(Relaxed) == 0 && self.head_since.load(Relaxed) == NONE {
            self.head_since.store(self.now_ms(), Relaxed);
        }
    }

    /// A request's headers are in; it holds the connection busy until the
    /// returned guard (carried by its response body) drops.
    pub fn request_started(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Relaxed);
        self.head_since.store(NONE, Relaxed);
        Busy(self.clone())
    }

    /// When this connection expires if nothing changes, and why; `None`
    /// while a request is in flight.
    pub fn deadline(&self, header_read: Duration, idle: Duration) -> Option<(Instant, Expiry)> {
        if self.in_flight.load(Relaxed) > 0 {
            return None;
        }
        let at = |since: u64, limit: Duration| self.opened + Duration::from_millis(since) + limit;
        match self.head_since.load(Relaxed) {
            NONE => {
                (!idle.is_zero()).then(|| (at(self.idle_since.load(Relaxed), idle), Expiry::Idle))
            }
            since => (!header_read.is_zero()).then(|| (at(since, header_read), Expiry::HeaderRead)),
        }
    }
}

/// A request in flight on its connection.
#[derive(Debug)]
pub struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        let activity = &self.0;
        if activity.in_flight.fetch_sub(1, Relaxed) == 1 {
            activity.idle_since.store(activity.now_ms(), Relaxed);
        }
    }
}

/// A socket whose reads are reported to its connection's [`Activity`].
pub struct Watched<IO> {
    io: IO,
    activity: Arc<Activity>,
}

impl<IO> Watched<IO> {
    pub fn new(io: IO, activity: Arc<Activity>) -> Self {
        Self { io, activity }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Watched<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(poll, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.bytes_read();
        }
        poll
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Watched<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: Duration = Duration::from_secs(10);
    const IDLE: Duration = Duration::from_secs(60);

    #[tokio::test(start_paused = true)]
    async fn a_new_connection_owes_its_headers_from_the_accept() {
        let activity = Activity::new();
        let (at, why) = activity.deadline(HEADER, IDLE).unwrap();
        assert_eq!(why, Expiry::HeaderRead);
        assert_eq!(at - activity.opened, HEADER);
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_connection_has_no_deadline_and_goes_idle_when_the_response_ends() {
        let activity = Activity::new();
        let busy = activity.request_started();
        tokio::time::advance(Duration::from_secs(500)).await;
        assert!(activity.deadline(HEADER, IDLE).is_none());
        drop(busy);
        let (at, why) = activity.deadline(HEADER, IDLE).unwrap();
        assert_eq!(why, Expiry::Idle);
        assert_eq!(at - activity.opened, Duration::from_secs(500) + IDLE);
        tokio::time::advance(Duration::from_secs(3)).await;
        activity.bytes_read();
        let (at, why) = activity.deadline(HEADER, IDLE).unwrap();
        assert_eq!(why, Expiry::HeaderRead);
        assert_eq!(at - activity.opened, Duration::from_secs(503) + HEADER);
    }

    #[tokio::test(start_paused = true)]
    async fn a_zero_timeout_is_off() {
        let activity = Activity::new();
        assert!(activity.deadline(Duration::ZERO, IDLE).is_none());
        drop(activity.request_started());
        assert!(activity.deadline(HEADER, Duration::ZERO).is_none());
    }
}
