//! A streamed answer that notices its client leaving.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

/// A stream answer that counts itself abandoned when the server drops it
/// before its end: the client closed the connection.
pub(super) struct Abandonable<S> {
    inner: S,
    ended: bool,
    abandoned: Arc<AtomicU64>,
}

impl<S> Abandonable<S> {
    pub(super) fn new(inner: S, abandoned: Arc<AtomicU64>) -> Self {
        Self {
            inner,
            ended: false,
            abandoned,
        }
    }
}

impl<S: futures::Stream + Unpin> futures::Stream for Abandonable<S> {
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        let polled = Pin::new(&mut self.inner).poll_next(cx);
        if matches!(polled, Poll::Ready(None)) {
            self.ended = true;
        }
        polled
    }
}

impl<S> Drop for Abandonable<S> {
    fn drop(&mut self) {
        if !self.ended {
            self.abandoned.fetch_add(1, Ordering::SeqCst);
        }
    }
}
