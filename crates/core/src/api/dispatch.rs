//! From a checked request to a routed answer, whatever API it came in by:
//! the request id, the user, the deadline, the wait in the fair queue, the
//! router, and the errors of all of that. The Bedrock and OpenAI routes
//! translate their own bodies and answers around it.

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

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

/// A request checked and translated to a Converse body, ready to route.
#[derive(Debug)]
pub struct Incoming {
    /// The model group it names.
    pub group: String,
    /// Its user, when known.
    pub user: Option<String>,
    /// Its rank in the fair queue, when its API key sets one.
    pub priority: Option<i32>,
    /// Its user's cap of requests running at once, when its key sets one.
    pub max_concurrent: Option<u32>,
    /// The Converse JSON to send upstream.
    pub body: Bytes,
    /// A pessimistic estimate of its tokens (see [`estimate_tokens`]).
    pub estimated_tokens: u32,
}

/// About four bytes of JSON per input token, rounded up, plus the whole
/// output budget (`maxTokens`, 4096 when the request sets none).
pub fn estimate_tokens(body_len: usize, max_tokens: Option<u64>) -> u32 {
    let estimate = (body_len as u64).div_ceil(4) + max_tokens.unwrap_or(4_096);
    u32::try_from(estimate).unwrap_or(u32::MAX)
}

/// Who a request is from, for the fair queue.
#[derive(Debug, Clone, Default)]
pub struct Identity {
    /// Its user, when known.
    pub user: Option<String>,
    /// Its rank, when its API key sets one.
    pub priority: Option<i32>,
    /// Its user's cap of running requests, when its API key sets one.
    pub max_concurrent: Option<u32>,
}

/// Who a request is from: its API key's caller when keys are configured
/// (401 without a valid one), else the open gateway's header (or
/// `fallback_user`, such as OpenAI's `user` field).
pub fn identify(
    state: &AppState,
    headers: &HeaderMap,
    fallback_user: Option<&str>,
) -> Result<Identity, ApiError> {
    if let Some(identity) = job_identity(state, headers) {
        return Ok(identity);
    }
    Ok(match state.api_keys.authenticate(headers)? {
        Some(caller) => Identity {
            user: Some(caller.user),
            priority: Some(caller.priority),
            max_concurrent: caller.max_concurrent,
        },
        None => {
            let user = header_user(headers).or_else(|| fallback_user.map(str::to_owned));
            if user.as_ref().is_some_and(|u| u.len() > MAX_USER_BYTES) {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "user_name_too_long",
                    format!("a user name may be at most {MAX_USER_BYTES} bytes"),
                ));
            }
            Identity {
                user,
                ..Identity::default()
            }
        }
    })
}

/// The submitter a job's in-process request speaks for, when it carries
/// this process's job token (a client cannot know it: it never leaves the
/// process).
fn job_identity(state: &AppState, headers: &HeaderMap) -> Option<Identity> {
    let token = headers.get(crate::jobs::JOB_TOKEN_HEADER)?.to_str().ok()?;
    if !state.jobs.as_ref()?.is_own(token) {
        return None;
    }
    let text = |name: &str| headers.get(name)?.to_str().ok();
    Some(Identity {
        user: header_user(headers),
        priority: text(PRIORITY_HEADER).and_then(|v| v.parse().ok()),
        max_concurrent: text(crate::jobs::JOB_MAX_CONCURRENT_HEADER).and_then(|v| v.parse().ok()),
    })
}

/// Longest user name a request may give: the fair queue keeps one entry per
/// user, so names are bounded like any other client-controlled key.
pub const MAX_USER_BYTES: usize = 256;

/// The user a request names in the `x-switchyard-user` header.
pub fn header_user(headers: &HeaderMap) -> Option<String> {
    headers
        .get(USER_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

/// Waits for `incoming`'s turn in the fair queue, then routes it with
/// `attempt` per deployment. A success is left to the caller to answer.
pub async fn dispatch<T, F, Fut>(
    state: &AppState,
    headers: &HeaderMap,
    request_id: &str,
    incoming: Incoming,
    attempt: F,
) -> Result<Admitted<T>, ApiError>
where
    F: Fn(Upstream, Bytes) -> Fut,
    Fut: std::future::Future<Output = Result<T, crate::upstream::AttemptFailure>>,
{
    let max_wait_ms = match header_number::<u64>(headers, MAX_WAIT_HEADER)? {
        Some(ms) => ms.min(state.max_wait_ms),
        None => state.max_wait_ms,
    };
    let request = RouteRequest {
        request_id: request_id.to_owned(),
        user: incoming.user,
        estimated_tokens: incoming.estimated_tokens,
        body: incoming.body,
        deadline: tokio::time::Instant::now() + std::time::Duration::from_millis(max_wait_ms),
    };
    let group = incoming.group;
    let mut permit = admit(
        state,
        &group,
        headers,
        &request,
        incoming.priority,
        incoming.max_concurrent,
    )
    .await?;
    match state
        .router
        .route(&group, &request, &mut permit, attempt)
        .await
    {
        Err(e) => {
            let e = route_error(e);
            state.router.metrics().request(&group, e.code);
            Err(e)
        }
        Ok(routed) => {
            state.router.metrics().request(&group, "success");
            Ok(Admitted {
                request_id: request_id.to_owned(),
                routed,
                permit,
            })
        }
    }
}

/// The request id: the client's `x-request-id` when it sent a sane one.
pub fn request_id(headers: &HeaderMap) -> String {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string())
}

/// The model group a path's model id names. Operators who want existing
/// clients to work unchanged name a group after the model id they use.
pub fn group_for(state: &AppState, model_id: &str) -> Result<String, ApiError> {
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

pub fn route_error(error: RouteError) -> ApiError {
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

pub fn routed_headers(
    response: &mut Response,
    request_id: &str,
    deployment: &str,
    attempts: usize,
) {
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

/// A numeric header, if present; a malformed one is a 400 naming it.
pub fn header_number<N: std::str::FromStr>(
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
/// Waits in the fair queue. A caller with an API key ranks by its key's
/// priority (a client cannot raise its own); an open gateway takes the
/// `x-switchyard-priority` header.
async fn admit(
    state: &AppState,
    group: &str,
    headers: &HeaderMap,
    request: &RouteRequest,
    key_priority: Option<i32>,
    max_concurrent: Option<u32>,
) -> Result<Permit, ApiError> {
    let priority = match key_priority {
        Some(p) => p,
        None => header_number::<i32>(headers, PRIORITY_HEADER)?.unwrap_or(0),
    };
    state
        .queue
        .admit_capped(
            request.user.as_deref(),
            max_concurrent,
            priority,
            request.deadline,
        )
        .await
        .map_err(|e| {
            let (status, code, retry_after_ms) = match e {
                AdmitError::QueueFull { .. } => {
                    (StatusCode::TOO_MANY_REQUESTS, "queue_full", Some(1_000))
                }
                AdmitError::UserQueueFull { .. } => (
                    StatusCode::TOO_MANY_REQUESTS,
                    "user_queue_full",
                    Some(1_000),
                ),
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

pub fn with_id(mut e: ApiError, request_id: &str) -> Response {
    e.request_id = Some(request_id.to_owned());
    e.into_response()
}

/// A routed request, with its place in the fair queue: hold `permit` until
/// the answer is delivered.
pub struct Admitted<T> {
    pub request_id: String,
    pub routed: Routed<T>,
    pub permit: Permit,
}

/// The tokens a Converse answer says it used (`usage.totalTokens`). Read
/// into a struct of that one field: serde skips the rest without building
/// it, where a `Value` of the whole answer cost 2.5% of the gateway's CPU.
pub fn used_tokens(body: &[u8]) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct Answer {
        usage: Option<Usage>,
    }
    #[derive(serde::Deserialize)]
    struct Usage {
        #[serde(rename = "totalTokens")]
        total_tokens: Option<u64>,
    }
    let answer: Answer = serde_json::from_slice(body).ok()?;
    answer.usage?.total_tokens
}

#[cfg(test)]
mod tests {
    use super::used_tokens;

    #[test]
    fn used_tokens_reads_the_usage_total_and_nothing_else() {
        let answer = br#"{"output":{"message":{"role":"assistant","content":[{"text":"hi"}]}},
            "stopReason":"end_turn","usage":{"inputTokens":3,"outputTokens":2,"totalTokens":5},
            "metrics":{"latencyMs":1}}"#;
        assert_eq!(used_tokens(answer), Some(5));
        assert_eq!(used_tokens(br#"{"output":{}}"#), None);
        assert_eq!(used_tokens(br#"{"usage":null}"#), None);
        assert_eq!(used_tokens(br#"{"usage":{"totalTokens":"many"}}"#), None);
        assert_eq!(used_tokens(b"not json"), None);
    }
}
