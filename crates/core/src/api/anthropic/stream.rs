//! Bedrock's InvokeModelWithResponseStream as Anthropic's server-sent
//! events. Each Bedrock `chunk` carries one Anthropic event, base64 in
//! `{"bytes": ...}`; it goes out as `event: <type>` and `data: <the event>`,
//! byte for byte (Bedrock's `amazon-bedrock-invocationMetrics` is taken off
//! `message_stop`). A stream that fails after its first byte ends with an
//! Anthropic `error` event, never with `message_stop`.

use axum::body::Bytes;
use base64::Engine;
use serde_json::json;

use super::error::stream_error_type;
use crate::api::sse::Reframe;

/// Re-frames one stream; remembers whether it reached `message_stop`.
#[derive(Debug, Default)]
pub(super) struct MessageEvents {
    stopped: bool,
}

/// The event type of an Anthropic event, read without decoding the rest.
#[derive(serde::Deserialize)]
struct Typed<'a> {
    #[serde(rename = "type", borrow)]
    kind: &'a str,
}

/// A Bedrock `chunk`'s payload.
#[derive(serde::Deserialize)]
struct Chunk<'a> {
    #[serde(borrow)]
    bytes: &'a str,
}

fn sse(kind: &str, data: &[u8]) -> Bytes {
    let mut event = Vec::with_capacity(kind.len() + data.len() + 16);
    event.extend_from_slice(b"event: ");
    event.extend_from_slice(kind.as_bytes());
    event.extend_from_slice(b"\ndata: ");
    event.extend_from_slice(data);
    event.extend_from_slice(b"\n\n");
    Bytes::from(event)
}

fn error_event(kind: &str, message: &str) -> Bytes {
    let error = json!({ "type": "error", "error": { "type": kind, "message": message } });
    sse("error", error.to_string().as_bytes())
}

impl Reframe for MessageEvents {
    fn event(&mut self, event_type: &str, payload: &[u8], out: &mut Vec<Bytes>) {
        if event_type != "chunk" {
            return;
        }
        let decoded = serde_json::from_slice::<Chunk<'_>>(payload)
            .ok()
            .and_then(|chunk| {
                base64::engine::general_purpose::STANDARD
                    .decode(chunk.bytes)
                    .ok()
            });
        let Some(event) = decoded else {
            out.push(error_event(
                "api_error",
                "Bedrock sent a chunk that is not an event",
            ));
            return;
        };
        let Ok(Typed { kind }) = serde_json::from_slice::<Typed<'_>>(&event) else {
            out.push(error_event(
                "api_error",
                "Bedrock sent an event without a type",
            ));
            return;
        };
        if kind == "message_stop" {
            self.stopped = true;
            out.push(sse("message_stop", br#"{"type":"message_stop"}"#));
            return;
        }
        out.push(sse(kind, &event));
    }

    fn failure(&mut self, kind: &str, message: &str) -> Bytes {
        error_event(stream_error_type(kind), message)
    }

    fn end(&mut self) -> Option<Bytes> {
        // Ended without `message_stop` and without an exception: the answer
        // is cut short, and the client must not take it for whole.
        (!self.stopped).then(|| error_event("api_error", "the stream ended before message_stop"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(event: &str) -> Vec<u8> {
        let bytes = base64::engine::general_purpose::STANDARD.encode(event);
        format!(r#"{{"bytes":"{bytes}"}}"#).into_bytes()
    }

    #[test]
    fn chunks_become_named_events_byte_for_byte() {
        let mut events = MessageEvents::default();
        let mut out = Vec::new();
        let delta =
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}"#;
        events.event("chunk", &chunk(delta), &mut out);
        events.event(
            "chunk",
            &chunk(r#"{"type":"message_stop","amazon-bedrock-invocationMetrics":{"inputTokenCount":3}}"#),
            &mut out,
        );
        assert_eq!(
            out,
            [
                Bytes::from(format!("event: content_block_delta\ndata: {delta}\n\n")),
                Bytes::from_static(b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"),
            ]
        );
        assert_eq!(events.end(), None);
    }

    #[test]
    fn a_stream_cut_short_ends_with_an_error_event() {
        let mut events = MessageEvents::default();
        let failure = events.failure("throttlingException", "slow down");
        assert!(std::str::from_utf8(&failure)
            .unwrap()
            .starts_with("event: error\ndata: {\"error\":{\"message\":\"slow down\",\"type\":\"rate_limit_error\"}"));
        let end = events.end().expect("no message_stop: an error");
        assert!(end.starts_with(b"event: error\n"));
    }
}
