//! Anthropic's Messages API, `POST /v1/messages`, onto Bedrock's
//! InvokeModel and its stream with the Anthropic body: what Anthropic's
//! SDKs and Claude Code send in API mode (`ANTHROPIC_BASE_URL`).
//!
//! Bedrock's Claude takes Anthropic's own body, so the request passes
//! through as it came, field for field (system, messages, tools,
//! `tool_choice`, images and documents, `thinking`, `cache_control`,
//! `stop_sequences`, ...), with three changes Bedrock asks for: `model`
//! leaves the body for the path (it names a model group or one of its
//! aliases), `stream` chooses the operation, and `anthropic_version` becomes
//! Bedrock's; an `anthropic-beta` header becomes the body's
//! `anthropic_beta`. The body's fields are not decoded: only its top level
//! is split, so a long conversation costs its bytes once.
//!
//! The answer is Bedrock's Anthropic message, unchanged; a stream is
//! Anthropic's server-sent events, re-framed from Bedrock's event stream as
//! they come ([`stream`]). Errors are in Anthropic's shape ([`error`]).

mod error;
mod stream;

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde_json::value::RawValue;

use super::extract::{routed_headers, CallFacts};
use super::AppState;
use crate::service::{
    estimate_tokens, Admitted, CountTokens, ErrorCode, GatewayError, Invoke, InvokeStream,
    ModelCall,
};
use crate::upstream::TokenUsage;

pub(super) use error::error_response;

/// The `anthropic_version` Bedrock's Claude takes.
const BEDROCK_ANTHROPIC_VERSION: &str = "bedrock-2023-05-31";

/// A Messages request made ready for Bedrock.
#[derive(Debug)]
struct MessagesRequest {
    /// The model it names: a model group or one of its aliases.
    model: String,
    stream: bool,
    /// The InvokeModel body.
    body: Bytes,
    /// Its output budget, for the estimate of its tokens.
    max_tokens: Option<u64>,
}

fn invalid(message: impl Into<String>) -> GatewayError {
    GatewayError::refused(ErrorCode::InvalidRequest, message)
}

/// What a request is for: a message, or a count of its input tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    Message,
    /// `count_tokens` has no `max_tokens`, which CountTokens' InvokeModel
    /// body needs: one is given (above a thinking budget, when one is set).
    CountTokens,
}

/// Splits a Messages body at its top level and makes the InvokeModel body
/// of it. `beta` is the `anthropic-beta` header's value.
fn translate(
    body: &[u8],
    beta: Option<&str>,
    purpose: Purpose,
) -> Result<MessagesRequest, GatewayError> {
    let mut fields: BTreeMap<String, Box<RawValue>> = serde_json::from_slice(body)
        .map_err(|e| invalid(format!("the body is not a JSON object: {e}")))?;
    let model = match fields.remove("model") {
        Some(raw) => serde_json::from_str::<String>(raw.get())
            .map_err(|_| invalid("`model` must be a string"))?,
        None => return Err(invalid("`model` is required: a model group or its alias")),
    };
    let stream = match fields.remove("stream") {
        Some(raw) => serde_json::from_str::<bool>(raw.get())
            .map_err(|_| invalid("`stream` must be true or false"))?,
        None => false,
    };
    let max_tokens = match fields.get("max_tokens") {
        Some(raw) => Some(
            serde_json::from_str::<u64>(raw.get())
                .map_err(|_| invalid("`max_tokens` must be a positive integer"))?,
        ),
        None => None,
    };
    if !fields.contains_key("messages") {
        return Err(invalid("`messages` is required"));
    }
    if purpose == Purpose::CountTokens && max_tokens.is_none() {
        #[derive(serde::Deserialize)]
        struct Thinking {
            budget_tokens: Option<u64>,
        }
        let budget = fields
            .get("thinking")
            .and_then(|raw| serde_json::from_str::<Thinking>(raw.get()).ok())
            .and_then(|t| t.budget_tokens)
            .unwrap_or(0);
        let max = serde_json::value::to_raw_value(&(budget + 1)).expect("a number is JSON");
        fields.insert("max_tokens".to_owned(), max);
    }
    if !fields.contains_key("anthropic_version") {
        let version =
            serde_json::value::to_raw_value(BEDROCK_ANTHROPIC_VERSION).expect("a string is JSON");
        fields.insert("anthropic_version".to_owned(), version);
    }
    let betas: Vec<&str> = beta
        .into_iter()
        .flat_map(|b| b.split(','))
        .map(str::trim)
        .filter(|b| !b.is_empty())
        .collect();
    if !betas.is_empty() {
        let mut all: Vec<String> = match fields.get("anthropic_beta") {
            Some(raw) => serde_json::from_str(raw.get())
                .map_err(|_| invalid("`anthropic_beta` must be a list of strings"))?,
            None => Vec::new(),
        };
        for beta in betas {
            if !all.iter().any(|b| b == beta) {
                all.push(beta.to_owned());
            }
        }
        let raw = serde_json::value::to_raw_value(&all).expect("strings are JSON");
        fields.insert("anthropic_beta".to_owned(), raw);
    }
    let body = serde_json::to_vec(&fields).expect("raw JSON values serialize");
    Ok(MessagesRequest {
        model,
        stream,
        body: Bytes::from(body),
        max_tokens,
    })
}

/// The call a Messages request makes, once its caller and body are checked.
fn model_call(
    state: &AppState,
    facts: CallFacts,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    purpose: Purpose,
) -> Result<(ModelCall, bool), GatewayError> {
    let request_id = facts.request_id.clone();
    let trace = facts.trace.clone();
    let (caller, max_wait_ms) = facts.checked()?;
    let body = body.map_err(|rejection| super::error::unreadable_body(&rejection))?;
    let beta = headers.get("anthropic-beta").and_then(|v| v.to_str().ok());
    let request = translate(&body, beta, purpose)?;
    let group = state.service.group_for(&request.model)?;
    // A count reads the input only; the estimate is what the quota holds
    // while it runs.
    let estimated_tokens = match purpose {
        Purpose::Message => estimate_tokens(request.body.len(), request.max_tokens),
        Purpose::CountTokens => estimate_tokens(request.body.len(), Some(0)),
    };
    let call = ModelCall {
        group,
        caller,
        request_id,
        max_wait_ms,
        body: request.body,
        estimated_tokens,
        trace,
    };
    Ok((call, request.stream))
}

/// `POST /v1/messages` (also with `?beta=true`, as the SDKs' beta client
/// sends it).
pub async fn messages(
    State(state): State<Arc<AppState>>,
    facts: CallFacts,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let request_id = facts.request_id.clone();
    let (call, streams) = match model_call(&state, facts, &headers, body, Purpose::Message) {
        Ok(checked) => checked,
        Err(e) => return error_response(&e, &request_id),
    };
    if streams {
        return match state.service.call(call, &InvokeStream).await {
            Ok(admitted) => {
                let mut response =
                    super::sse::sse_response(admitted, stream::MessageEvents::default());
                request_id_header(&mut response, &request_id);
                response
            }
            Err(e) => error_response(&e, &request_id),
        };
    }
    match state.service.call(call, &Invoke).await {
        Ok(admitted) => message(admitted, &request_id),
        Err(e) => error_response(&e, &request_id),
    }
}

/// `POST /v1/messages/count_tokens`: the input tokens of a Messages
/// request, counted by Bedrock's CountTokens for the group's model.
pub async fn count_tokens(
    State(state): State<Arc<AppState>>,
    facts: CallFacts,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let request_id = facts.request_id.clone();
    let call = match model_call(&state, facts, &headers, body, Purpose::CountTokens) {
        Ok((call, _)) => call,
        Err(e) => return error_response(&e, &request_id),
    };
    match state.service.call(call, &CountTokens).await {
        Ok(admitted) => {
            let delivered = admitted.delivered(Some(TokenUsage::default()));
            let body = serde_json::json!({ "input_tokens": delivered.value });
            let mut response = axum::Json(body).into_response();
            routed_headers(
                &mut response,
                &delivered.request_id,
                &delivered.deployment,
                delivered.attempts,
            );
            request_id_header(&mut response, &request_id);
            response
        }
        Err(e) => error_response(&e, &request_id),
    }
}

/// Answers with Bedrock's Anthropic message, as it came.
fn message(admitted: Admitted<crate::upstream::InvokeReply>, request_id: &str) -> Response {
    let usage = admitted.routed.value.usage();
    let delivered = admitted.delivered(usage);
    let mut response = (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        delivered.value.body.clone(),
    )
        .into_response();
    routed_headers(
        &mut response,
        &delivered.request_id,
        &delivered.deployment,
        delivered.attempts,
    );
    request_id_header(&mut response, request_id);
    response
}

/// Anthropic's name for the request id header, beside the gateway's.
fn request_id_header(response: &mut Response, request_id: &str) {
    if let Ok(id) = HeaderValue::from_str(request_id) {
        response.headers_mut().insert("request-id", id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_messages_body_becomes_an_invoke_model_body() {
        let body = br#"{"model":"claude","stream":true,"max_tokens":64,"system":"be brief","messages":[{"role":"user","content":"hi"}],"anthropic_beta":["a"]}"#;
        let request = translate(body, Some("b, a,c"), Purpose::Message).unwrap();
        assert_eq!(request.model, "claude");
        assert!(request.stream);
        assert_eq!(request.max_tokens, Some(64));
        let sent: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
        assert_eq!(sent["anthropic_version"], "bedrock-2023-05-31");
        assert_eq!(sent["anthropic_beta"], serde_json::json!(["a", "b", "c"]));
        assert_eq!(sent["system"], "be brief");
        assert!(sent.get("model").is_none() && sent.get("stream").is_none());
    }

    #[test]
    fn a_body_without_model_or_messages_is_refused() {
        let message = |body: &[u8]| translate(body, None, Purpose::Message);
        assert!(message(br#"{"messages":[]}"#).is_err());
        assert!(message(br#"{"model":"m"}"#).is_err());
        assert!(message(br#"[1]"#).is_err());
        assert!(message(br#"{"model":"m","messages":[],"stream":"yes"}"#).is_err());
    }

    #[test]
    fn a_count_gets_a_max_tokens_above_its_thinking_budget() {
        let body =
            br#"{"model":"m","messages":[],"thinking":{"type":"enabled","budget_tokens":2048}}"#;
        let request = translate(body, None, Purpose::CountTokens).unwrap();
        let sent: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
        assert_eq!(sent["max_tokens"], 2049);
    }
}
