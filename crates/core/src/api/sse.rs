//! Server-sent events re-framed from a Bedrock event stream, as they
//! arrive: the OpenAI route's `chat.completion.chunk`s and the Anthropic
//! route's Messages events. Each API says what its events are
//! ([`Reframe`]); reading the frames, noticing a client that left, ending a
//! broken stream with the API's error event, and holding the request's
//! place until the stream ends are done once, here.

use aws_smithy_eventstream::frame::{DecodedFrame, MessageFrameDecoder};
use axum::body::{Body, Bytes};
use axum::http::HeaderValue;
use axum::response::Response;
use bytes::BytesMut;

use super::bedrock::receiver_stream;
use super::extract::routed_headers;
use crate::router::Routed;
use crate::service::Admitted;
use crate::upstream::{exception_of, header, OpenStream};

/// Events buffered for a client that reads slower than Bedrock sends: a
/// slow client slows the re-framing, and through it Bedrock.
const CLIENT_BUFFER_EVENTS: usize = 32;

/// What an API makes of a Bedrock event stream.
pub(super) trait Reframe: Send + 'static {
    /// The client's events for one upstream event (its `:event-type` and
    /// payload), pushed onto `out`: none, one or several.
    fn event(&mut self, event_type: &str, payload: &[u8], out: &mut Vec<Bytes>);
    /// The client's event for a failure in mid-stream: an exception frame
    /// (`kind` is its `:exception-type`), a frame that cannot be read, or a
    /// connection that broke. The stream ends after it.
    fn failure(&mut self, kind: &str, message: &str) -> Bytes;
    /// What follows a stream that ended cleanly, if anything.
    fn end(&mut self) -> Option<Bytes>;
}

/// Answers a started stream as server-sent events made by `reframe`. The
/// stream holds its place in the queue until it ends, or until the client
/// leaves (which closes the upstream stream at once).
pub(super) fn sse_response(admitted: Admitted<OpenStream>, mut reframe: impl Reframe) -> Response {
    let Admitted {
        request_id,
        routed:
            Routed {
                value: stream,
                deployment,
                attempts,
                completion,
            },
        permit,
    } = admitted;
    let (tx, rx) =
        tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(CLIENT_BUFFER_EVENTS);
    let mut frames = stream.frames;
    let finished = stream.finished;
    tokio::spawn(async move {
        let mut buffer = BytesMut::new();
        let mut decoder = MessageFrameDecoder::new();
        let mut out = Vec::new();
        // A failed stream ends with its error event, not with the API's end.
        let mut failed = false;
        'frames: loop {
            // A client that leaves between two events is noticed at once,
            // not at the next event: dropping `frames` closes the upstream.
            let chunk = tokio::select! {
                () = tx.closed() => break 'frames,
                chunk = frames.recv() => match chunk {
                    Some(chunk) => chunk,
                    None => break 'frames,
                },
            };
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(broken) => {
                    let event = reframe.failure("stream_broken", &broken.to_string());
                    let _ = tx.send(Ok(event)).await;
                    failed = true;
                    break 'frames;
                }
            };
            buffer.extend_from_slice(&chunk);
            loop {
                let message = match decoder.decode_frame(&mut buffer) {
                    Ok(DecodedFrame::Incomplete) => break,
                    Ok(DecodedFrame::Complete(message)) => message,
                    Err(e) => {
                        let message = format!("unreadable event stream: {e}");
                        let _ = tx.send(Ok(reframe.failure("bad_stream", &message))).await;
                        failed = true;
                        break 'frames;
                    }
                };
                if let Some((kind, text)) = exception_of(&message) {
                    let _ = tx.send(Ok(reframe.failure(kind, &text))).await;
                    failed = true;
                    break 'frames;
                }
                let event_type = header(&message, ":event-type").unwrap_or_default();
                reframe.event(event_type, message.payload(), &mut out);
                for event in out.drain(..) {
                    if tx.send(Ok(event)).await.is_err() {
                        // The client left: dropping `frames` closes the upstream.
                        break 'frames;
                    }
                }
            }
        }
        drop(frames);
        if !failed {
            if let Some(end) = reframe.end() {
                let _ = tx.send(Ok(end)).await;
            }
        }
        drop(tx);
        completion.finish_when_ended(finished).await;
        drop(permit);
    });
    let mut response = Response::new(Body::from_stream(receiver_stream(rx)));
    let headers = response.headers_mut();
    headers.insert(
        "content-type",
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert("cache-control", HeaderValue::from_static("no-cache"));
    routed_headers(&mut response, &request_id, &deployment, attempts.len() + 1);
    response
}
