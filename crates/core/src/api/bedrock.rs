//! Bedrock-compatible routes: an AWS SDK client pointed at the gateway works
//! unchanged, and its `modelId` may name a model group.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::FutureExt;

use super::body_shape::{ConverseShape, InvokeShape, ObjectOr};

use super::coalesce;
use super::error::{error_response, unreadable_body, ErrorBody};
use super::extract::{routed_headers, CallFacts};
use super::AppState;
use crate::jobs::JobAnswer;
use crate::router::Routed;
use crate::service::{
    estimate_tokens, Admitted, Caller, Converse, ConverseStream, Delivered, ErrorCode,
    GatewayError, Invoke, InvokeStream, ModelCall, Operation,
};
use crate::upstream::{OpenStream, TokenUsage};

/// What a Bedrock request's body must hold.
#[derive(Debug, Clone, Copy)]
pub(super) enum BodyKind {
    /// Converse and ConverseStream: a Converse request.
    Converse,
    /// InvokeModel and its stream: the model's own JSON, passed as it is.
    Invoke,
}

/// Checks the body for `kind` and estimates its tokens pessimistically.
/// Only what routing needs is read (the messages are there, the output
/// budget); the rest is skipped unbuilt, and the body goes on untouched.
pub(super) fn read_body(body: Bytes, kind: BodyKind) -> Result<(Bytes, u32), GatewayError> {
    let not_json = |e: serde_json::Error| {
        GatewayError::refused(
            ErrorCode::InvalidJson,
            format!("the body is not valid JSON: {e}"),
        )
    };
    let not_object =
        || GatewayError::refused(ErrorCode::InvalidRequest, "the body must be a JSON object");
    let max_tokens = match kind {
        BodyKind::Converse => {
            let shape = serde_json::from_slice::<ObjectOr<ConverseShape>>(&body)
                .map_err(not_json)?
                .into_inner()
                .ok_or_else(not_object)?;
            if !shape.has_messages() {
                return Err(GatewayError::refused(
                    ErrorCode::InvalidRequest,
                    "a Converse request needs a non-empty `messages` array",
                ));
            }
            shape.max_tokens()
        }
        BodyKind::Invoke => {
            let shape = serde_json::from_slice::<ObjectOr<InvokeShape>>(&body)
                .map_err(not_json)?
                .into_inner()
                .ok_or_else(not_object)?;
            shape.output_budget()
        }
    };
    let estimate = estimate_tokens(body.len(), max_tokens);
    Ok((body, estimate))
}

/// The call a Bedrock request makes, once its caller and body are checked.
fn model_call(
    state: &AppState,
    model_id: &str,
    facts: CallFacts,
    body: Result<Bytes, BytesRejection>,
    kind: BodyKind,
) -> Result<ModelCall, GatewayError> {
    let request_id = facts.request_id.clone();
    let trace = facts.trace.clone();
    let (caller, max_wait_ms) = facts.checked()?;
    let group = state.service.group_for(model_id)?;
    let body = body.map_err(|rejection| unreadable_body(&rejection))?;
    let (body, estimated_tokens) = read_body(body, kind)?;
    Ok(ModelCall {
        group,
        caller,
        request_id,
        max_wait_ms,
        body,
        estimated_tokens,
        trace,
    })
}

/// Routes the call of a Bedrock request with `operation`, or answers why
/// it could not be made.
async fn route<O: Operation>(
    state: &AppState,
    call: Result<ModelCall, GatewayError>,
    request_id: &str,
    operation: &O,
) -> Result<Admitted<O::Reply>, Response> {
    let call = call.map_err(|e| error_response(&e, Some(request_id)))?;
    state
        .service
        .call(call, operation)
        .await
        .map_err(|e| error_response(&e, Some(request_id)))
}

/// Checks a Bedrock request for `kind` and routes its call with `operation`.
async fn route_request<O: Operation>(
    state: &AppState,
    model_id: &str,
    facts: CallFacts,
    body: Result<Bytes, BytesRejection>,
    (kind, operation): (BodyKind, &O),
) -> Result<Admitted<O::Reply>, Response> {
    let request_id = facts.request_id.clone();
    let call = model_call(state, model_id, facts, body, kind);
    route(state, call, &request_id, operation).await
}

/// `POST /model/{modelId}/converse`
pub async fn converse(
    State(state): State<Arc<AppState>>,
    Path(model_id): Path<String>,
    facts: CallFacts,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let request_id = facts.request_id.clone();
    let call = model_call(&state, &model_id, facts, body, BodyKind::Converse);
    let call = match call {
        Ok(call) if state.coalesces(&call.group, &headers) => call,
        call => return converse_alone(state, call, request_id).await,
    };
    let key = coalesce::key("converse", &call.group, &call.body);
    let group = call.group.clone();
    // The call may answer others too: it runs under this request's id.
    let shared = {
        let (state, request_id) = (state.clone(), request_id.clone());
        move || converse_alone(state, Ok(call), request_id).boxed()
    };
    state
        .answer_coalesced(&group, key, &request_id, shared)
        .await
}

/// A Converse request that shares no call.
async fn converse_alone(
    state: Arc<AppState>,
    call: Result<ModelCall, GatewayError>,
    request_id: String,
) -> Response {
    match route(&state, call, &request_id, &Converse).await {
        Err(response) => response,
        Ok(admitted) => {
            let usage = TokenUsage::of_converse(&admitted.routed.value.body);
            let delivered = admitted.delivered(usage);
            let body = delivered.value.body.clone();
            answer(
                delivered,
                body,
                HeaderValue::from_static("application/json"),
            )
        }
    }
}

/// A Converse job's run: its call, answered as `POST
/// /model/{model}/converse` would have answered it.
pub(super) async fn converse_job(
    state: &AppState,
    caller: Caller,
    request_id: &str,
    model: &str,
    body: Bytes,
) -> JobAnswer {
    let call = state.service.group_for(model).and_then(|group| {
        let (body, estimated_tokens) = read_body(body, BodyKind::Converse)?;
        Ok(ModelCall {
            group,
            caller,
            request_id: request_id.to_owned(),
            max_wait_ms: None,
            body,
            estimated_tokens,
            trace: None,
        })
    });
    let answered = match call {
        Ok(call) => state.service.call(call, &Converse).await,
        Err(e) => Err(e),
    };
    match answered {
        Ok(admitted) => {
            let usage = TokenUsage::of_converse(&admitted.routed.value.body);
            let body = admitted.delivered(usage).value.body;
            JobAnswer::of_json(200, body)
        }
        Err(e) => job_error(&e),
    }
}

/// A job's answer of `e`, in the gateway's shape.
pub(super) fn job_error(e: &GatewayError) -> JobAnswer {
    JobAnswer::of_value(e.status().as_u16(), &ErrorBody::of(e)).retry_after(e.retry_after_ms())
}

/// Answers a delivered call with `body`.
fn answer<T>(delivered: Delivered<T>, body: Bytes, content_type: HeaderValue) -> Response {
    let mut response = (StatusCode::OK, body).into_response();
    response.headers_mut().insert("content-type", content_type);
    routed_headers(
        &mut response,
        &delivered.request_id,
        &delivered.deployment,
        delivered.attempts,
    );
    response
}

/// `POST /model/{modelId}/converse-stream`
pub async fn converse_stream(
    State(state): State<Arc<AppState>>,
    Path(model_id): Path<String>,
    facts: CallFacts,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let operation = (BodyKind::Converse, &ConverseStream);
    match route_request(&state, &model_id, facts, body, operation).await {
        Err(response) => response,
        Ok(admitted) => stream_through(admitted),
    }
}

/// `POST /model/{modelId}/invoke`: the model's own JSON both ways.
pub async fn invoke(
    State(state): State<Arc<AppState>>,
    Path(model_id): Path<String>,
    facts: CallFacts,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let operation = (BodyKind::Invoke, &Invoke);
    match route_request(&state, &model_id, facts, body, operation).await {
        Err(response) => response,
        Ok(admitted) => {
            let usage = admitted.routed.value.usage();
            let delivered = admitted.delivered(usage);
            let reply = &delivered.value;
            let content_type = HeaderValue::from_str(&reply.content_type)
                .unwrap_or(HeaderValue::from_static("application/json"));
            let body = reply.body.clone();
            answer(delivered, body, content_type)
        }
    }
}

/// `POST /model/{modelId}/invoke-with-response-stream`
pub async fn invoke_stream(
    State(state): State<Arc<AppState>>,
    Path(model_id): Path<String>,
    facts: CallFacts,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let operation = (BodyKind::Invoke, &InvokeStream);
    match route_request(&state, &model_id, facts, body, operation).await {
        Err(response) => response,
        Ok(admitted) => stream_through(admitted),
    }
}

/// Answers a started stream with Bedrock's event-stream frames, unchanged.
/// The stream holds its place in the queue until it ends.
fn stream_through(admitted: Admitted<OpenStream>) -> Response {
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

/// A bounded channel's receiver as a body stream. An error (the upstream
/// broke) is held back one poll: hyper drops what it has not yet written
/// when a body fails, so a break right behind the first frames cut the
/// response before its head (the soak benchmark found 20 in 24,000). The
/// pause lets it flush the head and the frames first; then the body breaks.
pub(super) fn receiver_stream<T: Send + 'static, E: Send + 'static>(
    receiver: tokio::sync::mpsc::Receiver<Result<T, E>>,
) -> impl futures::Stream<Item = Result<T, E>> + Send + 'static {
    futures::stream::unfold(receiver, |mut receiver| async move {
        let item = receiver.recv().await?;
        if item.is_err() {
            tokio::task::yield_now().await;
        }
        Some((item, receiver))
    })
}
