//! Bedrock-compatible routes: an AWS SDK client pointed at the gateway works
//! unchanged, and its `modelId` may name a model group.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::FutureExt;
use serde_json::Value;

use super::coalesce;
use super::dispatch::{
    dispatch, estimate_tokens, group_for, identify, request_id, routed_headers, used_tokens,
    with_id, Admitted, Incoming,
};
use super::error::ApiError;
use super::AppState;
use crate::router::Routed;
use crate::upstream::Upstream;

/// Checks the body is a Converse request and estimates its tokens pessimistically.
/// Which Bedrock operation a request is for: what its body must hold.
#[derive(Debug, Clone, Copy)]
enum Operation {
    /// Converse and ConverseStream: a Converse request.
    Converse,
    /// InvokeModel and its stream: the model's own JSON, passed as it is.
    Invoke,
}

/// Checks the body for `operation` and estimates its tokens pessimistically.
fn read_body(
    body: Result<Bytes, BytesRejection>,
    operation: Operation,
) -> Result<(Bytes, u32), ApiError> {
    let body = body.map_err(|rejection| ApiError::unreadable_body(&rejection))?;
    let json: Value = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("the body is not valid JSON: {e}"),
        )
    })?;
    if !json.is_object() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the body must be a JSON object",
        ));
    }
    let max_tokens = match operation {
        Operation::Converse => {
            let messages = json.get("messages").and_then(Value::as_array);
            if messages.is_none_or(|m| m.is_empty()) {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "a Converse request needs a non-empty `messages` array",
                ));
            }
            json.pointer("/inferenceConfig/maxTokens")
                .and_then(Value::as_u64)
        }
        // The output budget, as the model families spell it.
        Operation::Invoke => [
            "/max_tokens",
            "/max_gen_len",
            "/textGenerationConfig/maxTokenCount",
            "/inferenceConfig/max_new_tokens",
        ]
        .iter()
        .find_map(|p| json.pointer(p).and_then(Value::as_u64)),
    };
    Ok((body.clone(), estimate_tokens(body.len(), max_tokens)))
}

/// Checks a Bedrock request, waits for its turn in the fair queue, routes
/// it with `attempt` per deployment, and answers errors; a success is left
/// to the caller to answer.
async fn route<T, F, Fut>(
    state: &AppState,
    model_id: &str,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    operation: Operation,
    attempt: F,
) -> Result<Admitted<T>, Response>
where
    F: Fn(Upstream, Bytes) -> Fut,
    Fut: std::future::Future<Output = Result<T, crate::upstream::AttemptFailure>>,
{
    let request_id = request_id(headers);
    let checked = identify(state, headers, None).and_then(|who| {
        let group = group_for(state, model_id)?;
        let (body, estimated_tokens) = read_body(body, operation)?;
        Ok(Incoming {
            group,
            user: who.user,
            priority: who.priority,
            max_concurrent: who.max_concurrent,
            body,
            estimated_tokens,
        })
    });
    let incoming = checked.map_err(|e| with_id(e, &request_id))?;
    dispatch(state, headers, &request_id, incoming, attempt)
        .await
        .map_err(|e| with_id(e, &request_id))
}

/// `POST /model/{modelId}/converse`
pub async fn converse(
    State(state): State<Arc<AppState>>,
    Path(model_id): Path<String>,
    mut headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    // A model id that names no group is refused on the ordinary path.
    let shares = state.router.group(&model_id).is_some() && state.coalesces(&model_id, &headers);
    let (true, Ok(bytes)) = (shares, &body) else {
        return converse_alone(state, model_id, headers, body).await;
    };
    // Only a client the gateway would serve may share an answer.
    if let Err(e) = identify(&state, &headers, None) {
        return with_id(e, &request_id(&headers));
    }
    let key = coalesce::key("converse", &model_id, bytes);
    let body = Ok(bytes.clone());
    // The call may answer others too: it runs under this request's id.
    let request_id = request_id(&headers);
    if let Ok(id) = HeaderValue::from_str(&request_id) {
        headers.insert("x-request-id", id);
    }
    let group = model_id.clone();
    let call = {
        let state = state.clone();
        move || converse_alone(state, model_id, headers, body).boxed()
    };
    state.answer_coalesced(&group, key, &request_id, call).await
}

/// A Converse request that shares no call.
async fn converse_alone(
    state: Arc<AppState>,
    model_id: String,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let routed = route(
        &state,
        &model_id,
        &headers,
        body,
        Operation::Converse,
        |upstream, body| async move { upstream.converse(body).await },
    )
    .await;
    match routed {
        Err(response) => response,
        Ok(admitted) => {
            let body = admitted.routed.value.body.clone();
            let used = used_tokens(&body);
            answer(
                admitted,
                body,
                HeaderValue::from_static("application/json"),
                used,
            )
        }
    }
}

/// Answers a finished attempt with `body`, records its success (with the
/// tokens it `used`, when known) and gives its place in the queue back.
fn answer<T>(
    admitted: Admitted<T>,
    body: Bytes,
    content_type: HeaderValue,
    used: Option<u64>,
) -> Response {
    let Admitted {
        request_id,
        routed,
        permit,
    } = admitted;
    let mut response = (StatusCode::OK, body).into_response();
    response.headers_mut().insert("content-type", content_type);
    routed_headers(
        &mut response,
        &request_id,
        &routed.deployment,
        routed.attempts.len() + 1,
    );
    routed
        .completion
        .finish(crate::outcome::OutcomeKind::Success, None, used);
    drop(permit);
    response
}

/// `POST /model/{modelId}/converse-stream`
pub async fn converse_stream(
    State(state): State<Arc<AppState>>,
    Path(model_id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let routed = route(
        &state,
        &model_id,
        &headers,
        body,
        Operation::Converse,
        |upstream, body| async move { upstream.converse_stream(body).await },
    )
    .await;
    match routed {
        Err(response) => response,
        Ok(admitted) => stream_through(admitted),
    }
}

/// `POST /model/{modelId}/invoke`: the model's own JSON both ways.
pub async fn invoke(
    State(state): State<Arc<AppState>>,
    Path(model_id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let routed = route(
        &state,
        &model_id,
        &headers,
        body,
        Operation::Invoke,
        |upstream, body| async move { upstream.invoke(body).await },
    )
    .await;
    match routed {
        Err(response) => response,
        Ok(admitted) => {
            let reply = &admitted.routed.value;
            let content_type = HeaderValue::from_str(&reply.content_type)
                .unwrap_or(HeaderValue::from_static("application/json"));
            let (body, used) = (reply.body.clone(), used_invoke_tokens(&reply.body));
            answer(admitted, body, content_type, used)
        }
    }
}

/// The tokens an InvokeModel answer says it used, for the model families
/// that say it in the body (Anthropic's `usage`).
fn used_invoke_tokens(body: &[u8]) -> Option<u64> {
    let json: Value = serde_json::from_slice(body).ok()?;
    let usage = json.get("usage")?;
    let n = |k: &str| usage.get(k).and_then(Value::as_u64);
    Some(n("input_tokens")? + n("output_tokens")?)
}

/// `POST /model/{modelId}/invoke-with-response-stream`
pub async fn invoke_stream(
    State(state): State<Arc<AppState>>,
    Path(model_id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let routed = route(
        &state,
        &model_id,
        &headers,
        body,
        Operation::Invoke,
        |upstream, body| async move { upstream.invoke_stream(body).await },
    )
    .await;
    match routed {
        Err(response) => response,
        Ok(admitted) => stream_through(admitted),
    }
}

/// Answers a started stream with Bedrock's event-stream frames, unchanged.
/// The stream holds its place in the queue until it ends.
fn stream_through(admitted: Admitted<crate::upstream::OpenStream>) -> Response {
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
    let finished = stream.finished;
    let mut response = Response::new(Body::from_stream(receiver_stream(stream.frames)));
    response.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("application/vnd.amazon.eventstream"),
    );
    routed_headers(&mut response, &request_id, &deployment, attempts.len() + 1);
    // The stream holds its place in the queue until it ends, or until the
    // client leaves (dropping the body closes the upstream stream). A
    // ConverseStream settles its quota with its metadata event's usage.
    tokio::spawn(async move {
        completion.finish_when_ended(finished).await;
        drop(permit);
    });
    response
}

/// A bounded channel's receiver as a body stream.
pub(super) fn receiver_stream<T: Send + 'static>(
    receiver: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|item| (item, receiver))
    })
}
