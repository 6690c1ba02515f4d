//! AWS event-stream frames, as ConverseStream sends them.

use aws_smithy_types::event_stream::{Header, HeaderValue, Message};
use bytes::Bytes;

fn frame(message_type: &str, type_header: &str, type_value: &str, payload: String) -> Bytes {
    let message = Message::new(payload.into_bytes())
        .add_header(Header::new(
            ":message-type",
            HeaderValue::String(message_type.to_owned().into()),
        ))
        .add_header(Header::new(
            type_header.to_owned(),
            HeaderValue::String(type_value.to_owned().into()),
        ))
        .add_header(Header::new(
            ":content-type",
            HeaderValue::String("application/json".into()),
        ));
    let mut out = Vec::new();
    aws_smithy_eventstream::frame::write_message_to(&message, &mut out)
        .expect("event-stream frames we build are always valid");
    Bytes::from(out)
}

/// An `event` frame whose payload is the event member's JSON.
pub fn event(event_type: &str, payload: serde_json::Value) -> Bytes {
    frame("event", ":event-type", event_type, payload.to_string())
}

/// An `exception` frame, as Bedrock sends for an error in mid-stream.
pub fn exception(exception_type: &str, message: &str) -> Bytes {
    frame(
        "exception",
        ":exception-type",
        exception_type,
        serde_json::json!({ "message": message }).to_string(),
    )
}

/// `frame` with its message checksum broken, as a damaged frame arrives.
pub fn corrupted(frame: Bytes) -> Bytes {
    let mut bytes = frame.to_vec();
    if let Some(last) = bytes.last_mut() {
        *last ^= 0xff;
    }
    Bytes::from(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_through_the_sdk_decoder() {
        let bytes = event("messageStart", serde_json::json!({"role": "assistant"}));
        let message = aws_smithy_eventstream::frame::read_message_from(bytes).unwrap();
        assert_eq!(message.payload().as_ref(), br#"{"role":"assistant"}"#);
        let event_type = message
            .headers()
            .iter()
            .find(|h| h.name().as_str() == ":event-type")
            .unwrap();
        assert_eq!(
            event_type.value().as_string().unwrap().as_str(),
            "messageStart"
        );
    }
}
