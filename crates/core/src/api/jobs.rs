//! `/v1/jobs`: submit a request now, fetch its answer later; and
//! `/task_status/{id}`, the same job in the shape of the field's task queue.
//!
//! A job is the submitter's: with API keys, only the key's user sees or
//! cancels it.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::future::{BoxFuture, FutureExt};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::error::unreadable_body;
use super::extract::caller;
use super::AppState;
use crate::jobs::{now_ms, Job, JobAnswer, JobRoute, JobStatus, Jobs, PageQuery, StoreError};
use crate::service::{Caller, ErrorCode, GatewayError};

/// What `POST /v1/jobs` takes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Submission {
    /// `converse` or `chat_completions`.
    #[serde(rename = "type")]
    kind: String,
    /// The model group (`converse`; a chat completion names it in `body`).
    #[serde(default)]
    model: Option<String>,
    /// The request's body, as the synchronous route takes it (kept as
    /// bytes: it is not decoded to be stored).
    body: Box<RawValue>,
    /// Where to POST the job when it ends.
    #[serde(default)]
    callback_url: Option<String>,
}

fn jobs(state: &AppState) -> Result<&Arc<Jobs>, GatewayError> {
    state.jobs.as_ref().ok_or_else(|| {
        GatewayError::refused(
            ErrorCode::JobsDisabled,
            "async jobs are off on this gateway: add a [jobs] table to its config",
        )
    })
}

fn store_error(e: &StoreError) -> GatewayError {
    if let StoreError::Full(limit) = e {
        return GatewayError::refused(ErrorCode::JobQuotaExceeded, limit.message());
    }
    let message = crate::error_chain::render(e);
    tracing::error!(error = %message, "the job store failed");
    GatewayError::refused(ErrorCode::JobStoreUnavailable, message)
}

fn invalid(message: impl Into<String>) -> GatewayError {
    GatewayError::refused(ErrorCode::InvalidJob, message)
}

/// The route `submission` names, checked against the gateway's groups.
fn route_of(state: &AppState, submission: &Submission) -> Result<JobRoute, GatewayError> {
    if !submission.body.get().starts_with('{') {
        return Err(invalid(
            "`body` must be a JSON object: the synchronous route's body",
        ));
    }
    let (route, group) = match submission.kind.as_str() {
        "converse" => {
            let model = submission
                .model
                .clone()
                .ok_or_else(|| invalid("a converse job needs `model`: the model group"))?;
            (
                JobRoute::Converse {
                    model: model.clone(),
                },
                model,
            )
        }
        "chat_completions" => {
            if submission.model.is_some() {
                return Err(invalid("a chat_completions job names its model in `body`"));
            }
            /// The fields a chat completion job is checked for; the rest
            /// is skipped, not decoded.
            #[derive(Deserialize)]
            struct Chat {
                model: Option<Value>,
                stream: Option<Value>,
            }
            let chat: Chat = serde_json::from_str(submission.body.get())
                .map_err(|e| invalid(format!("`body` is not a chat completion: {e}")))?;
            if chat.stream == Some(Value::Bool(true)) {
                return Err(invalid(
                    "a job's answer is kept whole: `stream` must not be true",
                ));
            }
            let model = chat.model.as_ref().and_then(Value::as_str);
            let model = model.ok_or_else(|| invalid("`body.model` must name a model group"))?;
            (JobRoute::ChatCompletions, model.to_owned())
        }
        other => {
            return Err(invalid(format!(
                "no job type `{other}`: use converse or chat_completions"
            )))
        }
    };
    state.service.group_for(&group)?;
    Ok(route)
}

/// `POST /v1/jobs`: 202 with the job's id once it is stored.
pub async fn submit(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let answer = async {
        let jobs = jobs(&state)?;
        let who = caller(&state, &headers)?;
        let body = body.map_err(|e| unreadable_body(&e))?;
        let submission: Submission = serde_json::from_slice(&body)
            .map_err(|e| invalid(format!("the body is not a job: {e}")))?;
        let route = route_of(&state, &submission)?;
        if let Some(url) = &submission.callback_url {
            if !crate::jobs::callback::valid_url(url) {
                return Err(invalid(format!(
                    "callback_url `{url}` must be an http:// or https:// URL"
                )));
            }
        }
        // A job never ranks above its submitter's key.
        let priority = match who.keyed {
            true => jobs.config().priority.min(who.priority),
            false => jobs.config().priority,
        };
        let job = Job {
            id: format!("job_{}", uuid::Uuid::new_v4().simple()),
            status: JobStatus::Queued,
            route,
            key_id: who.tenant.as_ref().map(|t| t.key_id.clone()),
            user: who.user,
            priority,
            max_concurrent: who.max_concurrent,
            runs: 0,
            created_ms: now_ms(),
            started_ms: None,
            finished_ms: None,
            not_before_ms: 0,
            answer_status: None,
            request_bytes: 0,
            answer_bytes: 0,
            callback_url: submission.callback_url,
            callback: None,
            owner: None,
        };
        let request = Bytes::from(submission.body.get().to_owned());
        let job = jobs
            .submit(job, request)
            .await
            .map_err(|e| store_error(&e))?;
        let mut response = (
            StatusCode::ACCEPTED,
            Json(json!({ "id": job.id, "object": "job", "status": job.status })),
        )
            .into_response();
        if let Ok(location) = HeaderValue::from_str(&format!("/v1/jobs/{}", job.id)) {
            response.headers_mut().insert("location", location);
        }
        Ok::<_, GatewayError>(response)
    };
    answer.await.unwrap_or_else(IntoResponse::into_response)
}

/// The caller's job `id` (404 for another user's).
async fn own_job(state: &AppState, headers: &HeaderMap, id: &str) -> Result<Job, GatewayError> {
    let jobs = jobs(state)?;
    let who = caller(state, headers)?;
    let job = jobs.get(id).await.map_err(|e| store_error(&e))?;
    job.filter(|job| visible(&who, state, job))
        .ok_or_else(|| GatewayError::refused(ErrorCode::UnknownJob, format!("no job `{id}`")))
}

/// With API keys a job is its submitter's; an open gateway shows every job.
fn visible(who: &Caller, state: &AppState, job: &Job) -> bool {
    !state.access.rules().keys.enabled() || who.user == job.user
}

/// `GET /v1/jobs/{id}`: its status, runs, timestamps and, once it has
/// ended, the answer as the synchronous route returned it.
pub async fn show(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    match own_job_and_answer(&state, &headers, &id).await {
        Ok((job, answer)) => json_response(job.view(answer.as_ref())),
        Err(e) => e.into_response(),
    }
}

/// The caller's job `id` and, once it has ended, its answer.
async fn own_job_and_answer(
    state: &AppState,
    headers: &HeaderMap,
    id: &str,
) -> Result<(Job, Option<JobAnswer>), GatewayError> {
    let job = own_job(state, headers, id).await?;
    let answer = jobs(state)?
        .answer(&job)
        .await
        .map_err(|e| store_error(&e))?;
    Ok((job, answer))
}

/// A 200 answer of JSON already written.
fn json_response(json: String) -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        json,
    )
        .into_response()
}

/// `GET /task_status/{id}`: the same job as the field's task queue showed
/// one (`state`: PENDING, STARTED, SUCCESS, FAILURE or REVOKED).
pub async fn task_status(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    match own_job_and_answer(&state, &headers, &id).await {
        Ok((job, answer)) => json_response(job.task_status(answer.as_ref())),
        Err(e) => e.into_response(),
    }
}

/// `DELETE /v1/jobs/{id}`: cancels it (409 `job_ended` once it has ended).
pub async fn cancel(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let answer = async {
        let job = own_job(&state, &headers, &id).await?;
        if job.status.is_final() {
            return Err(GatewayError::refused(
                ErrorCode::JobEnded,
                format!("job `{id}` has ended ({:?}); nothing to cancel", job.status),
            ));
        }
        let jobs = jobs(&state)?;
        let job = jobs.cancel(&id).await.map_err(|e| store_error(&e))?;
        let job = job.ok_or_else(|| {
            GatewayError::refused(ErrorCode::UnknownJob, format!("no job `{id}`"))
        })?;
        Ok(json_response(job.view(None)))
    };
    answer.await.unwrap_or_else(IntoResponse::into_response)
}

/// What `GET /v1/jobs` takes: a page of `limit` jobs (1 to 100, 20 when
/// not given), older than job `after` when given.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    limit: Option<usize>,
    after: Option<String>,
}

/// `GET /v1/jobs`: the caller's jobs (everyone's on a gateway without API
/// keys), newest first, a page at a time: `has_more` says whether older
/// ones follow, `last_id` is where the next page starts (`?after=`). Each
/// shows its record and answer status; its answer is on `GET
/// /v1/jobs/{id}`.
pub async fn list(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    query: Result<axum::extract::Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let answer = async {
        let jobs = jobs(&state)?;
        let who = caller(&state, &headers)?;
        let axum::extract::Query(query) = query.map_err(|e| {
            GatewayError::refused_param(ErrorCode::InvalidRequest, e.body_text(), "query")
        })?;
        let limit = query.limit.unwrap_or(20);
        if !(1..=100).contains(&limit) {
            return Err(GatewayError::refused_param(
                ErrorCode::InvalidRequest,
                format!("limit must be 1 to 100, not {limit}"),
                "limit",
            ));
        }
        let page = jobs
            .page(PageQuery {
                user: state
                    .access
                    .rules()
                    .keys
                    .enabled()
                    .then(|| who.user.clone()),
                after: query.after,
                limit,
            })
            .await
            .map_err(|e| store_error(&e))?;
        let data: Vec<Value> = page.jobs.iter().map(Job::summary).collect();
        Ok::<_, GatewayError>(
            Json(json!({
                "object": "list",
                "data": data,
                "first_id": page.jobs.first().map(|j| &j.id),
                "last_id": page.jobs.last().map(|j| &j.id),
                "has_more": page.has_more,
            }))
            .into_response(),
        )
    };
    answer.await.unwrap_or_else(IntoResponse::into_response)
}

/// A job's answer of `e`, in the shape of its route.
fn job_error(route: &JobRoute, e: &GatewayError) -> JobAnswer {
    match route {
        JobRoute::Converse { .. } => super::bedrock::job_error(e),
        JobRoute::ChatCompletions => super::openai::job_error(e),
    }
}

/// Jobs run in process: each one's request goes straight to the routing
/// service, with the submitter as its caller, and is answered as its
/// synchronous route would have answered it.
impl crate::jobs::JobRunner for AppState {
    fn run(self: Arc<Self>, job: Job, body: Bytes) -> BoxFuture<'static, JobAnswer> {
        async move {
            let caller = match &job.key_id {
                // The key as it is now: its limits, its team's, and
                // whether it may still run work.
                Some(key_id) => match self.access.rules().keys.caller_of_key(key_id) {
                    // Never above its key's rank now.
                    Ok(caller) => Caller {
                        priority: job.priority.min(caller.priority),
                        ..caller
                    },
                    Err(e) => return job_error(&job.route, &e),
                },
                // A gateway without keys, or a job from before jobs kept
                // their key.
                None => Caller {
                    user: job.user.clone(),
                    priority: job.priority,
                    max_concurrent: job.max_concurrent,
                    keyed: job.user.is_some() && self.access.rules().keys.enabled(),
                    tenant: None,
                },
            };
            match &job.route {
                JobRoute::Converse { model } => {
                    super::bedrock::converse_job(&self, caller, &job.id, model, body).await
                }
                JobRoute::ChatCompletions => {
                    super::openai::chat_completion_job(&self, caller, &job.id, body).await
                }
            }
        }
        .boxed()
    }
}
