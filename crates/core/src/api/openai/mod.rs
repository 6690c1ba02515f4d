//! OpenAI-compatible routes: `POST /v1/chat/completions` (plain and
//! streamed as server-sent events), `POST /v1/embeddings` and `GET
//! /v1/models`, so the official OpenAI client libraries and the agent
//! frameworks on them work against the gateway unchanged. A chat request
//! becomes a Converse request and takes the same path as a Bedrock one: the
//! fair queue, the router and its policies, the same stats. Every field and
//! what it maps to: `docs/openai.md`.

mod answer;
mod chunks;
mod embeddings;
mod request;
mod to_converse;

pub use embeddings::embeddings;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use futures::FutureExt;

use super::coalesce;
use super::error::{retry_after, unreadable_body};
use super::extract::{routed_headers, CallFacts};
use super::sse::{sse_response, Reframe};
use super::AppState;
use crate::jobs::JobAnswer;
use crate::service::{
    estimate_tokens, Caller, Converse, ConverseStream, Delivered, ErrorCode, GatewayError,
    ModelCall,
};
use crate::upstream::TokenUsage;
use chunks::ChunkTranslator;
use request::ChatRequest;

/// Seconds since the Unix epoch, for `created`.
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `e` in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`
/// (and the attempts made, when any were).
fn error_body(e: &GatewayError) -> Value {
    let kind = match e.status().as_u16() {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        400..=499 => "invalid_request_error",
        _ => "api_error",
    };
    let mut error = json!({
        "message": e.to_string(),
        "type": kind,
        "param": e.param(),
        "code": e.code(),
    });
    if !e.attempts().is_empty() {
        error["attempts"] = json!(e.attempts());
    }
    json!({ "error": error })
}

/// `e` answered in OpenAI's shape, with its status, `retry-after` and the
/// request id.
pub(super) fn error_response(e: &GatewayError, request_id: &str) -> Response {
    let mut response = (e.status(), axum::Json(error_body(e))).into_response();
    retry_after(&mut response, e);
    if let Ok(id) = HeaderValue::from_str(request_id) {
        response.headers_mut().insert("x-request-id", id);
    }
    response
}

/// `GET /v1/models`: the model groups.
pub async fn models(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Err(e) = state.access.rules().keys.authenticate(&headers) {
        return error_response(&e, &super::extract::request_id(&headers));
    }
    let router = state.service.router();
    let mut names: Vec<&str> = router.groups().map(|g| g.name.as_str()).collect();
    names.sort_unstable();
    // Each group, then each of its aliases, naming the group it stands for.
    let data: Vec<Value> = names
        .into_iter()
        .flat_map(|name| {
            let group = json!({ "id": name, "object": "model", "created": 0, "owned_by": "switchyard" });
            let aliases = router.aliases_of(name).into_iter().map(move |alias| {
                json!({ "id": alias, "object": "model", "created": 0, "owned_by": "switchyard", "alias_of": name })
            });
            std::iter::once(group).chain(aliases)
        })
        .collect();
    axum::Json(json!({ "object": "list", "data": data })).into_response()
}

/// `POST /v1/chat/completions`
pub async fn chat_completions(
    State(state): State<Arc<AppState>>,
    facts: CallFacts,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let request_id = facts.request_id.clone();
    let trace = facts.trace.clone();
    let checked = facts.checked().and_then(|(caller, max_wait_ms)| {
        let body = body.map_err(|r| unreadable_body(&r))?;
        check(&state, caller, max_wait_ms, &request_id, &body)
    });
    let (chat, json_mode, mut call) = match checked {
        Ok(c) => c,
        Err(e) => return error_response(&e, &request_id),
    };
    call.trace = trace;
    let id = format!("chatcmpl-{request_id}");
    let created = unix_now();
    if chat.stream {
        let include_usage = chat
            .stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage);
        let translator = ChunkTranslator::new(id, created, chat.model, include_usage, json_mode);
        return match state.service.call(call, &ConverseStream).await {
            Err(e) => error_response(&e, &request_id),
            Ok(admitted) => sse_response(admitted, translator),
        };
    }
    let answer = Completion {
        id,
        created,
        model: chat.model,
        json_mode,
    };
    if state.coalesces(&call.group, &headers) {
        // Identical when the Converse body, the model named and the JSON
        // mode are: the answer is built from those alone.
        let route = format!("chat\0{}\0{json_mode}", answer.model);
        let key = coalesce::key(&route, &call.group, &call.body);
        let group = call.group.clone();
        let shared = {
            let state = state.clone();
            move || async move { answer.respond(&state, call).await }.boxed()
        };
        state
            .answer_coalesced(&group, key, &request_id, shared)
            .await
    } else {
        answer.respond(&state, call).await
    }
}

/// A chat completion job's run: its call, answered as `POST
/// /v1/chat/completions` would have answered it.
pub(super) async fn chat_completion_job(
    state: &AppState,
    caller: Caller,
    request_id: &str,
    body: Bytes,
) -> JobAnswer {
    let checked = check(state, caller, None, request_id, &body);
    let (chat, json_mode, call) = match checked {
        Ok(c) => c,
        Err(e) => return job_error(&e),
    };
    let answer = Completion {
        id: format!("chatcmpl-{request_id}"),
        created: unix_now(),
        model: chat.model,
        json_mode,
    };
    match answer.complete(state, call).await {
        Ok(delivered) => JobAnswer::of_value(200, &delivered.value),
        Err(e) => job_error(&e),
    }
}

/// A job's answer of `e`, in OpenAI's shape.
pub(super) fn job_error(e: &GatewayError) -> JobAnswer {
    JobAnswer::of_value(e.status().as_u16(), &error_body(e)).retry_after(e.retry_after_ms())
}

/// How a non-streaming chat completion is answered.
struct Completion {
    id: String,
    created: u64,
    model: String,
    json_mode: bool,
}

impl Completion {
    /// Routes `call`: the chat completion, delivered.
    async fn complete(
        self,
        state: &AppState,
        call: ModelCall,
    ) -> Result<Delivered<Value>, GatewayError> {
        let admitted = state.service.call(call, &Converse).await?;
        let usage = TokenUsage::of_converse(&admitted.routed.value.body);
        Ok(admitted.delivered(usage).map(|reply| {
            let converse: Value = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
            answer::completion(
                &self.id,
                self.created,
                &self.model,
                self.json_mode,
                &converse,
            )
        }))
    }

    /// Routes `call` and answers in the chat completion's shape.
    async fn respond(self, state: &AppState, call: ModelCall) -> Response {
        let request_id = call.request_id.clone();
        match self.complete(state, call).await {
            Err(e) => error_response(&e, &request_id),
            Ok(delivered) => {
                let Delivered {
                    request_id,
                    value,
                    deployment,
                    attempts,
                } = delivered;
                let mut response = axum::Json(value).into_response();
                routed_headers(&mut response, &request_id, &deployment, attempts);
                response
            }
        }
    }
}

/// The body as a `T`, or 400 `invalid_json` / `invalid_request` saying it
/// is not `what`.
pub(super) fn parse_body<T: serde::de::DeserializeOwned>(
    body: &[u8],
    what: &str,
) -> Result<T, GatewayError> {
    serde_json::from_slice(body).map_err(|e| {
        let code = if e.is_syntax() || e.is_eof() {
            ErrorCode::InvalidJson
        } else {
            ErrorCode::InvalidRequest
        };
        GatewayError::refused(code, format!("the body is not {what}: {e}"))
    })
}

/// The model group `model` names, or 404 `model_not_found` on `model`.
pub(super) fn model_group(state: &AppState, model: &str) -> Result<String, GatewayError> {
    state
        .service
        .group_for(model)
        .map_err(|e| e.renamed(ErrorCode::ModelNotFound, "model"))
}

/// 400 `unsupported_parameter`, naming the field.
pub(super) fn refuse(u: request::Unsupported) -> GatewayError {
    GatewayError::refused_param(
        ErrorCode::UnsupportedParameter,
        format!("`{}` {}", u.param, u.message),
        u.param,
    )
}

/// An image costs at most this many input tokens on Bedrock's models
/// (Anthropic's figure), however many bytes it has.
const IMAGE_TOKENS: u32 = 1_600;

/// Parses and translates the body: the request, whether it is in JSON
/// mode, and the call to make. An error names the param at fault.
fn check(
    state: &AppState,
    caller: Caller,
    max_wait_ms: Option<u64>,
    request_id: &str,
    body: &[u8],
) -> Result<(ChatRequest, bool, ModelCall), GatewayError> {
    let chat: ChatRequest = parse_body(body, "a chat completion request")?;
    let group = model_group(state, &chat.model)?;
    let converse = chat.to_converse().map_err(refuse)?;
    let image_tokens = IMAGE_TOKENS.saturating_mul(converse.images as u32);
    let json_mode = converse.json_mode;
    let converse_json = converse.body.to_string();
    let text_bytes = converse_json.len().saturating_sub(converse.image_bytes);
    let call = ModelCall {
        group,
        // OpenAI's `user` names the end user only on an open gateway.
        caller: caller.or_named(chat.user.as_deref())?,
        request_id: request_id.to_owned(),
        max_wait_ms,
        estimated_tokens: estimate_tokens(text_bytes, chat.max_output_tokens())
            .saturating_add(image_tokens),
        body: Bytes::from(converse_json),
        trace: None,
    };
    Ok((chat, json_mode, call))
}

/// A ConverseStream as OpenAI's server-sent events: one `data:` chunk per
/// text delta, the finish reason, the usage when asked, then `[DONE]`; a
/// stream that fails ends with an error event instead of `[DONE]`.
impl Reframe for ChunkTranslator {
    fn event(&mut self, event_type: &str, payload: &[u8], out: &mut Vec<Bytes>) {
        let payload: Value = serde_json::from_slice(payload).unwrap_or(Value::Null);
        out.extend(
            self.chunks(event_type, &payload)
                .iter()
                .map(|c| Bytes::from(format!("data: {c}\n\n"))),
        );
    }

    fn failure(&mut self, kind: &str, message: &str) -> Bytes {
        let error = json!({ "error": { "message": message, "type": "api_error", "code": kind } });
        Bytes::from(format!("data: {error}\n\n"))
    }

    fn end(&mut self) -> Option<Bytes> {
        Some(Bytes::from_static(b"data: [DONE]\n\n"))
    }
}
