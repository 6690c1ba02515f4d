//! Bedrock-compatible routes: an AWS SDK client pointed at the gateway works
//! unchanged, and its `modelId` may name a model group.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::error::ApiError;
use super::AppState;
use crate::admission::{AdmitError, Permit};
use crate::router::{RouteError, RouteRequest, Routed};
use crate::upstream::Upstream;

/// Header a client may set to name the user a request belongs to.
pub const USER_HEADER: &str = "x-switchyard-user";
/// Header a client may set to rank its request in the fair queue (an
/// integer; higher goes first; default 0).
pub const PRIORITY_HEADER: &str = "x-switchyard-priority";
/// Header a client may set to wait less than `admission.max_wait_ms` for
/// capacity (milliseconds).
pub const MAX_WAIT_HEADER: &str = "x-switchyard-max-wait-ms";

/// The request id: the client's `x-request-id` when it sent a sane one.
fn request_id(headers: &HeaderMap) -> String {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string())
}

/// Checks the body is a Converse request and estimates its tokens pessimistically.
fn read_converse_body(body: Result<Bytes, BytesRejection>) -> Result<(Bytes, u32), ApiError> {
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "the request body is larger than limits.max_body_bytes",
            )
        } else {
            ApiError::new(rejection.status(), "unreadable_body", rejection.body_text())
        }
    })?;
    let json: Value = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("the body is not valid JSON: {e}"),
        )
    })?;
    let messages = json.get("messages").and_then(Value::as_array);
    if !json.is_object() || messages.is_none_or(|m| m.is_empty()) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "a Converse request needs a non-empty `messages` array",
        ));
    }
    let max_tokens = json
        .pointer("/inferenceConfig/maxTokens")
        .and_then(Value::as_u64)
        .unwrap_or(4_096);
    // About four bytes of JSON per input token, rounded up, plus the whole output budget.
    let estimate = (body.len() as u64).div_ceil(4) + max_tokens;
    Ok((body, u32::try_from(estimate).unwrap_or(u32::MAX)))
}

/// The model group a path's model id names. Operators who want existing
/// clients to work unchanged name a group after the model id they use.
fn group_for(state: &AppState, model_id: &str) -> Result<String, ApiError> {
    if state.router.group(model_id).is_some() {
        return Ok(model_id.to_owned());
    }
    let mut known: Vec<&str> = state.router.groups().map(|g| g.name.as_str()).collect();
    known.sort_unstable();
    Err(ApiError::new(
        StatusCode::NOT_FOUND,
        "unknown_model",
        format!(
            "no model group `{model_id}`; model groups: {}",
            known.join(", ")
        ),
    ))
}

fn route_error(error: RouteError) -> ApiError {
    match error {
        RouteError::UnknownGroup(name) => ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_model",
            format!("no model group `{name}`"),
        ),
        RouteError::NothingAvailable { retry_after_ms } => {
            let mut e = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "no_capacity",
                "no deployment of this model group can take the request before its deadline (cooling down, out of quota or circuit open); retry later",
            );
            e.retry_after_ms = Some(retry_after_ms);
            e
        }
        RouteError::AttemptsFailed {
            attempts,
            retry_after_ms,
        } => {
            let all_throttled = attempts
                .iter()
                .all(|a| a.outcome == crate::outcome::OutcomeKind::Throttled);
            let (status, code) = if all_throttled {
                (StatusCode::TOO_MANY_REQUESTS, "all_attempts_throttled")
            } else {
                (StatusCode::SERVICE_UNAVAILABLE, "all_attempts_failed")
            };
            let mut e = ApiError::new(
                status,
                code,
                format!("all {} attempts failed", attempts.len()),
            );
            e.retry_after_ms = retry_after_ms.or(all_throttled.then_some(1_000));
            e.attempts = attempts;
            e
        }
        RouteError::Rejected {
            status,
            detail,
            attempts,
        } => {
            let mut e = ApiError::new(
                StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
                "rejected_by_bedrock",
                detail,
            );
            e.attempts = attempts;
            e
        }
    }
}

fn routed_headers(response: &mut Response, request_id: &str, deployment: &str, attempts: usize) {
    let headers = response.headers_mut();
    if let Ok(id) = HeaderValue::from_str(request_id) {
        headers.insert("x-request-id", id.clone());
        headers.insert("x-amzn-requestid", id);
    }
    if let Ok(d) = HeaderValue::from_str(deployment) {
        headers.insert("x-switchyard-deployment", d);
    }
    headers.insert("x-switchyard-attempts", HeaderValue::from(attempts));
}

fn prepare(
    state: &AppState,
    model_id: &str,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(String, RouteRequest), ApiError> {
    let group = group_for(state, model_id)?;
    let (body, estimated_tokens) = read_converse_body(body)?;
    let user = headers
        .get(USER_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let max_wait_ms = match header_number::<u64>(headers, MAX_WAIT_HEADER)? {
        Some(ms) => ms.min(state.max_wait_ms),
        None => state.max_wait_ms,
    };
    Ok((
        group,
        RouteRequest {
            request_id: String::new(),
            user,
            estimated_tokens,
            body,
            deadline: tokio::time::Instant::now() + std::time::Duration::from_millis(max_wait_ms),
        },
    ))
}

/// A numeric header, if present; a malformed one is a 400 naming it.
fn header_number<N: std::str::FromStr>(
    headers: &HeaderMap,
    name: &str,
) -> Result<Option<N>, ApiError> {
    match headers.get(name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .map(Some)
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_header",
                    format!("the `{name}` header must be an integer"),
                )
            }),
    }
}

/// Waits in the fair queue for the right to run `request`.
async fn admit(
    state: &AppState,
    group: &str,
    headers: &HeaderMap,
    request: &RouteRequest,
) -> Result<Permit, ApiError> {
    let priority = header_number::<i32>(headers, PRIORITY_HEADER)?.unwrap_or(0);
    state
        .queue
        .admit(request.user.as_deref(), priority, request.deadline)
        .await
        .map_err(|e| {
            let (status, code, retry_after_ms) = match e {
                AdmitError::QueueFull { .. } => {
                    (StatusCode::TOO_MANY_REQUESTS, "queue_full", Some(1_000))
                }
                AdmitError::DeadlineInQueue { .. } => {
                    (StatusCode::GATEWAY_TIMEOUT, "deadline_in_queue", None)
                }
            };
            state.router.metrics().queue_rejection(group, code);
            let mut error = ApiError::new(status, code, e.to_string());
            error.retry_after_ms = retry_after_ms;
            error
        })
}

fn with_id(mut e: ApiError, request_id: &str) -> Response {
    e.request_id = Some(request_id.to_owned());
    e.into_response()
}

/// A routed request, with its place in the fair queue: hold `permit` until
/// the answer is delivered.
struct Admitted<T> {
    request_id: String,
    routed: Routed<T>,
    permit: Permit,
}

/// Checks a request, waits for its turn in the fair queue, routes it with
/// `attempt` per deployment, and answers errors; a success is left to the
/// caller to answer.
async fn route<T, F, Fut>(
    state: &AppState,
    model_id: &str,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    attempt: F,
) -> Result<Admitted<T>, Response>
where
    F: Fn(Upstream, Bytes) -> Fut,
    Fut: std::future::Future<Output = Result<T, crate::upstream::AttemptFailure>>,
{
    let request_id = request_id(headers);
    let (group, mut request) =
        prepare(state, model_id, headers, body).map_err(|e| with_id(e, &request_id))?;
    request.request_id = request_id.clone();
    let permit = admit(state, &group, headers, &request)
        .await
        .map_err(|e| with_id(e, &request_id))?;
    match state.router.route(&group, &request, attempt).await {
        Err(e) => {
            let e = route_error(e);
            state.router.metrics().request(&group, e.code);
            Err(with_id(e, &request_id))
        }
        Ok(routed) => {
            state.router.metrics().request(&group, "success");
            Ok(Admitted {
                request_id,
                routed,
                permit,
            })
        }
    }
}

/// The tokens a Converse answer says it used (`usage.totalTokens`).
fn used_tokens(body: &[u8]) -> Option<u64> {
    let json: Value = serde_json::from_slice(body).ok()?;
    json.pointer("/usage/totalTokens").and_then(Value::as_u64)
}

/// `POST /model/{modelId}/converse`
pub async fn converse(
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
        |upstream, body| async move { upstream.converse(body).await },
    )
    .await;
    let Admitted {
        request_id,
        routed,
        permit,
    } = match routed {
        Ok(r) => r,
        Err(response) => return response,
    };
    let mut response = (
        StatusCode::OK,
        [("content-type", "application/json")],
        routed.value.body.clone(),
    )
        .into_response();
    routed_headers(
        &mut response,
        &request_id,
        &routed.deployment,
        routed.attempts.len() + 1,
    );
    let used = used_tokens(&routed.value.body);
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
        |upstream, body| async move { upstream.converse_stream(body).await },
    )
    .await;
    match routed {
        Err(response) => response,
        Ok(Admitted {
            request_id,
            routed:
                Routed {
                    value: stream,
                    deployment,
                    attempts,
                    completion,
                },
            permit,
        }) => {
            let finished = stream.finished;
            let frames = stream.frames;
            let mut response = Response::new(Body::from_stream(futures::StreamExt::map(
                frames,
                Ok::<_, std::io::Error>,
            )));
            response.headers_mut().insert(
                "content-type",
                HeaderValue::from_static("application/vnd.amazon.eventstream"),
            );
            routed_headers(&mut response, &request_id, &deployment, attempts.len() + 1);
            // The stream holds its place in the queue until it ends. Its
            // usage is not read from the frames: the token reservation stays.
            tokio::spawn(async move {
                match finished.await {
                    Ok(end) => completion.finish(end.kind, end.detail, None),
                    Err(_) => completion.finish(
                        crate::outcome::OutcomeKind::ServerError,
                        Some("stream task failed".into()),
                        None,
                    ),
                }
                drop(permit);
            });
            response
        }
    }
}
