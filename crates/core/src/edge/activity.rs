//! What one connection is doing, for its timeouts: idle between requests,
//! sending a request's headers, or busy with a request (which only a
//! client that stops taking the response interrupts: the attempt and stream
//! timeouts bound the rest).
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
    /// Since when a write has waited for the client to take bytes, with
    /// none taken since, ms since `opened`, or `NONE`.
    write_blocked_since: AtomicU64,
}

/// Why a connection is closed by the edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// Its headers did not arrive in time.
    HeaderRead,
    /// It sat idle too long.
    Idle,
    /// Its client took no bytes of a response for too long: it stopped
    /// reading, and would otherwise hold the request's slots for ever.
    WriteStalled,
}

impl Activity {
    /// A connection just accepted: its first head is due from now on.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            opened: Instant::now(),
            in_flight: AtomicU32::new(0),
            idle_since: AtomicU64::new(0),
            head_since: AtomicU64::new(0),
            write_blocked_since: AtomicU64::new(NONE),
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

    /// A write found the client's socket full.
    fn write_blocked(&self) {
        if self.write_blocked_since.load(Relaxed) == NONE {
            self.write_blocked_since.store(self.now_ms(), Relaxed);
        }
    }

    /// The client took bytes.
    fn write_progressed(&self) {
        self.write_blocked_since.store(NONE, Relaxed);
    }

    /// Notes what a write to the socket came to.
    fn wrote(&self, poll: &Poll<io::Result<usize>>) {
        match poll {
            Poll::Pending => self.write_blocked(),
            Poll::Ready(Ok(n)) if *n > 0 => self.write_progressed(),
            Poll::Ready(_) => {}
        }
    }

    /// A request's headers are in; it holds the connection busy until the
    /// returned guard (carried by its response body) drops.
    pub fn request_started(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Relaxed);
        self.head_since.store(NONE, Relaxed);
        Busy(self.clone())
    }

    /// When this connection expires if nothing changes, and why. While a
    /// request is in flight only a stalled write expires it (the attempt
    /// and stream timeouts bound the rest).
    pub fn deadline(
        &self,
        header_read: Duration,
        idle: Duration,
        write: Duration,
    ) -> Option<(Instant, Expiry)> {
        let at = |since: u64, limit: Duration| self.opened + Duration::from_millis(since) + limit;
        if self.in_flight.load(Relaxed) > 0 {
            return match self.write_blocked_since.load(Relaxed) {
                NONE => None,
                since => (!write.is_zero()).then(|| (at(since, write), Expiry::WriteStalled)),
            };
        }
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
        let poll = Pin::new(&mut self.io).poll_write(cx, buf);
        self.activity.wrote(&poll);
        poll
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.activity.wrote(&poll);
        poll
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
    const WRITE: Duration = Duration::from_secs(30);

    #[tokio::test(start_paused = true)]
    async fn a_new_connection_owes_its_headers_from_the_accept() {
        let activity = Activity::new();
        let (at, why) = activity.deadline(HEADER, IDLE, WRITE).unwrap();
        assert_eq!(why, Expiry::HeaderRead);
        assert_eq!(at - activity.opened, HEADER);
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_connection_has_no_deadline_and_goes_idle_when_the_response_ends() {
        let activity = Activity::new();
        let busy = activity.request_started();
        tokio::time::advance(Duration::from_secs(500)).await;
        assert!(activity.deadline(HEADER, IDLE, WRITE).is_none());
        drop(busy);
        let (at, why) = activity.deadline(HEADER, IDLE, WRITE).unwrap();
        assert_eq!(why, Expiry::Idle);
        assert_eq!(at - activity.opened, Duration::from_secs(500) + IDLE);
        tokio::time::advance(Duration::from_secs(3)).await;
        activity.bytes_read();
        let (at, why) = activity.deadline(HEADER, IDLE, WRITE).unwrap();
        assert_eq!(why, Expiry::HeaderRead);
        assert_eq!(at - activity.opened, Duration::from_secs(503) + HEADER);
    }

    #[tokio::test(start_paused = true)]
    async fn a_zero_timeout_is_off() {
        let activity = Activity::new();
        assert!(activity.deadline(Duration::ZERO, IDLE, WRITE).is_none());
        drop(activity.request_started());
        assert!(activity.deadline(HEADER, Duration::ZERO, WRITE).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_connection_expires_only_when_its_client_stops_taking_bytes() {
        let activity = Activity::new();
        let busy = activity.request_started();
        assert!(activity.deadline(HEADER, IDLE, WRITE).is_none());
        tokio::time::advance(Duration::from_secs(5)).await;
        activity.wrote(&Poll::Pending);
        let (at, why) = activity.deadline(HEADER, IDLE, WRITE).unwrap();
        assert_eq!(why, Expiry::WriteStalled);
        assert_eq!(at - activity.opened, Duration::from_secs(5) + WRITE);
        // Still blocked later: the deadline stays where the stall began.
        tokio::time::advance(Duration::from_secs(5)).await;
        activity.wrote(&Poll::Pending);
        let (later, _) = activity.deadline(HEADER, IDLE, WRITE).unwrap();
        assert_eq!(later, at);
        // The client took bytes: no deadline while the request runs.
        activity.wrote(&Poll::Ready(Ok(10)));
        assert!(activity.deadline(HEADER, IDLE, WRITE).is_none());
        activity.wrote(&Poll::Pending);
        assert!(activity.deadline(HEADER, IDLE, Duration::ZERO).is_none());
        drop(busy);
    }
}
