//! A Bedrock event stream (ConverseStream, InvokeModelWithResponseStream)
//! followed on its way to the client: its bytes pass through as they came,
//! and its frames are decoded on the side only for what routing needs to
//! know: that the first event arrived (before it, a failure can still fall
//! back), an exception in mid-stream, and the usage the last events report.
//!
//! Nothing is unmarshalled into typed events: the SDK's orchestrator did
//! that for every delta and cost a stream about three Converse calls
//! (BENCHMARKS.md, "Within 2x of nginx").

use std::time::Duration;

use aws_smithy_eventstream::frame::{DecodedFrame, MessageFrameDecoder};
use aws_smithy_types::event_stream::Message;
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::sync::mpsc;

use super::classify::{kind_of_code, AttemptFailure};
use super::usage::TokenUsage;
use super::{OpenStream, StreamEnd};
use crate::error_chain::render;
use crate::outcome::OutcomeKind;

/// Chunks held for a client that reads slower than Bedrock sends: a slow
/// client slows the reading from Bedrock.
const CLIENT_BUFFER_CHUNKS: usize = 32;

/// Which stream it is: where its usage is said.
#[derive(Debug, Clone, Copy)]
pub enum StreamShape {
    /// ConverseStream: a `metadata` event's `usage`.
    Converse,
    /// InvokeModelWithResponseStream: the last `chunk`'s
    /// `amazon-bedrock-invocationMetrics`.
    Invoke,
}

/// What the chunks read so far said.
#[derive(Debug, Default)]
struct Seen {
    /// An event (not an exception) arrived.
    event: bool,
    /// The stream failed: an exception or error frame, or bytes that are
    /// not an event stream.
    failure: Option<Failure>,
    usage: Option<TokenUsage>,
}

/// A failure in the stream, and whether the client learns of it from the
/// stream itself (an exception frame passed through) or must have its
/// body broken (bytes that are not an event stream).
#[derive(Debug)]
struct Failure {
    failure: AttemptFailure,
    in_stream: bool,
}

/// Decodes the frames of the chunks it is given.
struct Frames {
    shape: StreamShape,
    buffer: BytesMut,
    decoder: MessageFrameDecoder,
    seen: Seen,
}

impl Frames {
    fn new(shape: StreamShape) -> Self {
        Self {
            shape,
            buffer: BytesMut::new(),
            decoder: MessageFrameDecoder::new(),
            seen: Seen::default(),
        }
    }

    /// Reads the frames `chunk` completes. After a failure, nothing more is read.
    fn take(&mut self, chunk: &[u8]) {
        if self.seen.failure.is_some() {
            return;
        }
        self.buffer.extend_from_slice(chunk);
        loop {
            let message = match self.decoder.decode_frame(&mut self.buffer) {
                Ok(DecodedFrame::Incomplete) => return,
                Ok(DecodedFrame::Complete(message)) => message,
                Err(e) => {
                    self.seen.failure = Some(Failure {
                        failure: AttemptFailure::server_error(&format!(
                            "the event stream is unreadable: {e}"
                        )),
                        in_stream: false,
                    });
                    return;
                }
            };
            if let Some(failure) = failure_of(&message) {
                self.seen.failure = Some(Failure {
                    failure,
                    in_stream: true,
                });
                return;
            }
            self.seen.event = true;
            if let Some(usage) = self.usage_of(&message) {
                self.seen.usage = Some(usage);
            }
        }
    }

    fn usage_of(&self, message: &Message) -> Option<TokenUsage> {
        match (self.shape, header(message, ":event-type")?) {
            (StreamShape::Converse, "metadata") => TokenUsage::of_converse(message.payload()),
            (StreamShape::Invoke, "chunk") => TokenUsage::of_invoke_chunk(message.payload()),
            _ => None,
        }
    }
}

/// Reads `body` until its first event (within the caller's attempt
/// timeout), then follows the rest in a task: chunks go to the client as
/// they came, and the task says how the stream ended. A stream that fails
/// before its first event is the attempt's failure, so it can fall back.
pub(super) async fn follow(
    mut body: Incoming,
    shape: StreamShape,
    idle: Duration,
) -> Result<OpenStream, AttemptFailure> {
    let mut frames = Frames::new(shape);
    let mut held = Vec::new();
    while !frames.seen.event {
        let chunk = match next_chunk(&mut body).await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => {
                return Err(AttemptFailure::server_error(
                    "the stream ended before its first event",
                ))
            }
            Err(failure) => return Err(failure),
        };
        frames.take(&chunk);
        if !frames.seen.event {
            if let Some(failed) = frames.seen.failure.take() {
                return Err(failed.failure);
            }
        }
        held.push(chunk);
    }
    let (to_client, chunks) = mpsc::channel(CLIENT_BUFFER_CHUNKS);
    let finished = tokio::spawn(async move {
        for chunk in held {
            if to_client.send(Ok(chunk)).await.is_err() {
                return client_left();
            }
        }
        loop {
            let broken = match frames.seen.failure.take() {
                // The exception frame went through: it is the client's error event.
                Some(Failure {
                    failure,
                    in_stream: true,
                }) => {
                    return StreamEnd {
                        kind: failure.kind,
                        detail: Some(failure.detail),
                        usage: frames.seen.usage,
                    }
                }
                Some(Failure { failure, .. }) => failure,
                None => match read(&mut body, &mut frames, &to_client, idle).await {
                    Read::More => continue,
                    Read::ClientLeft => return client_left(),
                    Read::End if !frames.buffer.is_empty() => AttemptFailure {
                        kind: OutcomeKind::Unavailable,
                        status: None,
                        retry_after_ms: None,
                        detail: "the stream ended in the middle of a frame".into(),
                    },
                    Read::End => {
                        return StreamEnd {
                            kind: OutcomeKind::Success,
                            detail: None,
                            usage: frames.seen.usage,
                        }
                    }
                    Read::Broken(failure) => failure,
                },
            };
            // No exception frame to tell the client: break its body.
            let _ = to_client
                .send(Err(std::io::Error::other(broken.detail.clone())))
                .await;
            return StreamEnd {
                kind: broken.kind,
                detail: Some(broken.detail),
                usage: frames.seen.usage,
            };
        }
    });
    Ok(OpenStream {
        frames: chunks,
        finished,
    })
}

/// What reading the next chunk came to.
enum Read {
    /// A chunk was read and passed on.
    More,
    End,
    ClientLeft,
    /// The connection broke or went silent.
    Broken(AttemptFailure),
}

/// Reads the next chunk within `idle`, decodes it and passes it on.
async fn read(
    body: &mut Incoming,
    frames: &mut Frames,
    to_client: &mpsc::Sender<Result<Bytes, std::io::Error>>,
    idle: Duration,
) -> Read {
    let next = tokio::select! {
        () = to_client.closed() => return Read::ClientLeft,
        next = tokio::time::timeout(idle, next_chunk(body)) => next,
    };
    match next {
        Ok(Ok(Some(chunk))) => {
            frames.take(&chunk);
            // Waiting here for the client's room is the backpressure on Bedrock.
            if to_client.send(Ok(chunk)).await.is_err() {
                return Read::ClientLeft;
            }
            Read::More
        }
        Ok(Ok(None)) => Read::End,
        Ok(Err(failure)) => Read::Broken(failure),
        Err(_) => Read::Broken(AttemptFailure::timeout("the stream went silent")),
    }
}

/// The body's next chunk of bytes; `None` at its end.
async fn next_chunk(body: &mut Incoming) -> Result<Option<Bytes>, AttemptFailure> {
    loop {
        match body.frame().await {
            None => return Ok(None),
            Some(Err(e)) => {
                return Err(AttemptFailure {
                    kind: OutcomeKind::Unavailable,
                    status: None,
                    retry_after_ms: None,
                    detail: format!("the stream broke: {}", render(&e)),
                })
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) if !data.is_empty() => return Ok(Some(data)),
                // Trailers, or an empty chunk: nothing to pass on.
                _ => continue,
            },
        }
    }
}

/// The client went away mid-stream: the upstream stream is dropped (its
/// connection closes) and the deployment is not blamed.
fn client_left() -> StreamEnd {
    StreamEnd {
        kind: OutcomeKind::Success,
        detail: Some("the client left mid-stream; the upstream stream was closed".into()),
        // Unknown: the reservation settles it.
        usage: None,
    }
}

/// A frame's string header `name`.
pub(crate) fn header<'a>(message: &'a Message, name: &str) -> Option<&'a str> {
    message
        .headers()
        .iter()
        .find(|h| h.name().as_str() == name)
        .and_then(|h| h.value().as_string().ok())
        .map(|s| s.as_str())
}

/// An exception frame's type and message (`:message-type: exception`), or
/// an error frame's code and message (`:message-type: error`).
pub(crate) fn exception_of(message: &Message) -> Option<(&str, String)> {
    match header(message, ":message-type")? {
        "exception" => {
            #[derive(serde::Deserialize)]
            struct Payload {
                #[serde(alias = "Message")]
                message: Option<String>,
            }
            let text = serde_json::from_slice::<Payload>(message.payload())
                .ok()
                .and_then(|p| p.message)
                .unwrap_or_else(|| "the stream failed".to_owned());
            Some((header(message, ":exception-type").unwrap_or_default(), text))
        }
        "error" => Some((
            header(message, ":error-code").unwrap_or_default(),
            header(message, ":error-message")
                .unwrap_or("the stream failed")
                .to_owned(),
        )),
        _ => None,
    }
}

/// The failure an exception or error frame stands for. In a stream,
/// Bedrock names its exceptions as members (`throttlingException`); the
/// failure names them as its answers do (`ThrottlingException`).
fn failure_of(message: &Message) -> Option<AttemptFailure> {
    let (name, text) = exception_of(message)?;
    let name = match name.chars().next() {
        None => "InternalServerException".to_owned(),
        Some(first) => first.to_ascii_uppercase().to_string() + &name[first.len_utf8()..],
    };
    Some(AttemptFailure {
        kind: kind_of_code(&name).unwrap_or(OutcomeKind::ServerError),
        status: None,
        retry_after_ms: None,
        detail: format!("{name}: {text}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_smithy_eventstream::frame::write_message_to;
    use aws_smithy_types::event_stream::{Header, HeaderValue};

    fn frame(headers: &[(&str, &str)], payload: &str) -> Bytes {
        let mut message = Message::new(Bytes::from(payload.to_owned()));
        for (name, value) in headers {
            message = message.add_header(Header::new(
                name.to_string(),
                HeaderValue::String(value.to_string().into()),
            ));
        }
        let mut out = Vec::new();
        write_message_to(&message, &mut out).unwrap();
        out.into()
    }

    fn event(event_type: &str, payload: &str) -> Bytes {
        frame(
            &[(":message-type", "event"), (":event-type", event_type)],
            payload,
        )
    }

    #[test]
    fn a_converse_stream_says_its_usage_in_its_metadata_event() {
        let mut frames = Frames::new(StreamShape::Converse);
        let metadata = event(
            "metadata",
            r#"{"usage":{"inputTokens":3,"outputTokens":7,"totalTokens":10},"metrics":{"latencyMs":1}}"#,
        );
        // Split mid-frame, as a chunk boundary may fall anywhere.
        let mut bytes = event("contentBlockDelta", r#"{"delta":{"text":"hi"}}"#).to_vec();
        bytes.extend_from_slice(&metadata);
        let (a, b) = bytes.split_at(30);
        frames.take(a);
        assert!(!frames.seen.event);
        frames.take(b);
        assert!(frames.seen.event);
        assert!(frames.seen.failure.is_none());
        assert_eq!(
            frames.seen.usage,
            Some(TokenUsage {
                input: 3,
                output: 7,
                ..TokenUsage::default()
            })
        );
    }

    #[test]
    fn an_invoke_stream_says_its_usage_in_its_last_chunk() {
        let mut frames = Frames::new(StreamShape::Invoke);
        let inner = r#"{"type":"message_stop","amazon-bedrock-invocationMetrics":{"inputTokenCount":5,"outputTokenCount":2,"cacheReadInputTokenCount":40}}"#;
        let payload = format!(
            r#"{{"bytes":"{}"}}"#,
            aws_smithy_types::base64::encode(inner)
        );
        frames.take(&event("chunk", &payload));
        assert_eq!(
            frames.seen.usage,
            Some(TokenUsage {
                input: 5,
                output: 2,
                cache_read: 40,
                cache_write: 0
            })
        );
    }

    #[test]
    fn exceptions_and_errors_are_failures_by_their_name() {
        let mut frames = Frames::new(StreamShape::Converse);
        frames.take(&frame(
            &[
                (":message-type", "exception"),
                (":exception-type", "throttlingException"),
            ],
            r#"{"message":"slow down"}"#,
        ));
        let failure = frames.seen.failure.unwrap();
        assert!(failure.in_stream);
        let failure = failure.failure;
        assert_eq!(failure.kind, OutcomeKind::Throttled);
        assert_eq!(failure.detail, "ThrottlingException: slow down");
        assert!(!frames.seen.event);

        let mut frames = Frames::new(StreamShape::Converse);
        frames.take(&frame(
            &[
                (":message-type", "error"),
                (":error-code", "ModelStreamErrorException"),
                (":error-message", "the model broke"),
            ],
            "",
        ));
        let failure = frames.seen.failure.unwrap().failure;
        assert_eq!(failure.kind, OutcomeKind::ServerError);
        assert_eq!(failure.detail, "ModelStreamErrorException: the model broke");

        let mut frames = Frames::new(StreamShape::Converse);
        frames.take(b"\0\0\0\x10not an event stream at all");
        let failure = frames.seen.failure.unwrap();
        assert!(!failure.in_stream);
        assert_eq!(failure.failure.kind, OutcomeKind::ServerError);
    }
}
