//! A job as the store keeps it and the API shows it.
//!
//! A job is two kinds of data. Its record ([`Job`]) is small: status,
//! owner, timestamps, sizes; lists, the start-up scan and the expiry sweep
//! read records only. Its request and its answer are bytes, kept apart
//! from the record and read only when the job runs or is shown whole: a
//! job's body may be megabytes, and a list of a thousand of them must not
//! decode a gigabyte.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Waiting for a worker (also after an interrupted run, or between runs
    /// the gateway answered with "try later").
    Queued,
    /// A worker is running it.
    Running,
    /// The route answered 2xx; the answer is what it answered.
    Succeeded,
    /// The route answered an error (after its runs, when it was retryable);
    /// the answer is that error.
    Failed,
    /// Cancelled by `DELETE /v1/jobs/{id}` before it ended.
    Cancelled,
}

impl JobStatus {
    /// Whether the job has ended.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }

    /// The state `GET /task_status/{id}` reports, in the shape of the task
    /// queues the field replaced (Celery's).
    pub fn task_state(self) -> &'static str {
        match self {
            Self::Queued => "PENDING",
            Self::Running => "STARTED",
            Self::Succeeded => "SUCCESS",
            Self::Failed => "FAILURE",
            Self::Cancelled => "REVOKED",
        }
    }
}

/// The synchronous route a job runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum JobRoute {
    /// `POST /model/{model}/converse`.
    Converse { model: String },
    /// `POST /v1/chat/completions` (not streamed).
    ChatCompletions,
}

/// What the route answered: its status and its JSON body, as bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct JobAnswer {
    pub status: u16,
    /// Always one JSON value.
    pub body: Bytes,
    /// When a "try later" answer (429, 503, 504) said the gateway has room
    /// again: the next run waits at least that long. Not stored.
    pub retry_after_ms: Option<u64>,
}

impl JobAnswer {
    /// An answer of `status` whose body is `body` when it is JSON, else
    /// `body` as a JSON string.
    pub fn of_json(status: u16, body: Bytes) -> Self {
        let body = if serde_json::from_slice::<serde::de::IgnoredAny>(&body).is_ok() {
            body
        } else {
            let text = String::from_utf8_lossy(&body).into_owned();
            Bytes::from(serde_json::to_vec(&text).expect("a string serializes"))
        };
        Self {
            status,
            body,
            retry_after_ms: None,
        }
    }

    /// An answer of `status` whose body is `value`.
    pub fn of_value(status: u16, value: &impl Serialize) -> Self {
        let body = serde_json::to_vec(value).expect("JSON serializes");
        Self {
            status,
            body: Bytes::from(body),
            retry_after_ms: None,
        }
    }

    /// This answer, to be tried again no sooner than `retry_after_ms`.
    pub fn retry_after(mut self, retry_after_ms: Option<u64>) -> Self {
        self.retry_after_ms = retry_after_ms;
        self
    }

    /// The body as raw JSON, to embed in a view without decoding it.
    fn raw(&self) -> Box<RawValue> {
        let text = String::from_utf8_lossy(&self.body).into_owned();
        RawValue::from_string(text)
            .unwrap_or_else(|_| RawValue::from_string("null".into()).expect("null is JSON"))
    }
}

/// One job's record: everything but its request and its answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub id: String,
    pub status: JobStatus,
    pub route: JobRoute,
    /// Who submitted it (their share of the fair queue), when known.
    pub user: Option<String>,
    /// The API key that submitted it: its run is that key's, limited and
    /// booked as the key's and its team's, and refused once the key is
    /// deleted, disabled or expired. `None` on a gateway without keys.
    #[serde(default)]
    pub key_id: Option<String>,
    /// Its rank in the fair queue.
    pub priority: i32,
    /// Its user's cap of running requests, when their API key sets one.
    pub max_concurrent: Option<u32>,
    /// Times a worker started it.
    pub runs: u32,
    /// When it was submitted, started (last), and ended, in Unix ms.
    pub created_ms: u64,
    pub started_ms: Option<u64>,
    pub finished_ms: Option<u64>,
    /// Not before this (Unix ms): a run the gateway answered with "try
    /// later" waits before the next.
    pub not_before_ms: u64,
    /// The answer's HTTP status, once the job has ended (not when
    /// cancelled); the answer's body is kept apart.
    #[serde(default)]
    pub answer_status: Option<u16>,
    /// The bytes of its request and of its answer: what it takes of its
    /// user's share of the store.
    #[serde(default)]
    pub request_bytes: u64,
    #[serde(default)]
    pub answer_bytes: u64,
    /// Where to POST the job when it ends.
    #[serde(default)]
    pub callback_url: Option<String>,
    /// How that went.
    #[serde(default)]
    pub callback: Option<super::callback::CallbackState>,
    /// The worker running it (an instance's id), while it runs: a run
    /// that has lost the job to another (its instance was thought dead)
    /// cannot overwrite what the other writes.
    #[serde(default)]
    pub owner: Option<String>,
}

/// A job as the API shows it.
#[derive(Serialize)]
struct View<'a> {
    id: &'a str,
    object: &'static str,
    status: JobStatus,
    route: &'a JobRoute,
    user: &'a Option<String>,
    runs: u32,
    created_ms: u64,
    started_ms: Option<u64>,
    finished_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    answer: Option<AnswerView>,
    callback_url: &'a Option<String>,
    callback: &'a Option<super::callback::CallbackState>,
    /// In a list only, where the answer itself is left out.
    #[serde(skip_serializing_if = "Option::is_none")]
    answer_status: Option<Option<u16>>,
}

#[derive(Serialize)]
struct AnswerView {
    status: u16,
    body: Box<RawValue>,
}

impl Job {
    /// The bytes the job takes of its user's share of the store.
    pub fn bytes(&self) -> u64 {
        self.request_bytes + self.answer_bytes
    }

    /// Its user as the store's indexes name them ("" for no user).
    pub fn user_key(&self) -> &str {
        self.user.as_deref().unwrap_or("")
    }

    /// What `GET /v1/jobs/{id}` shows: the record and, once the job has
    /// ended, `answer` (status and body) as the route returned it.
    pub fn view(&self, answer: Option<&JobAnswer>) -> String {
        serde_json::to_string(&self.view_of(answer)).expect("a job serializes")
    }

    fn view_of(&self, answer: Option<&JobAnswer>) -> View<'_> {
        View {
            id: &self.id,
            object: "job",
            status: self.status,
            route: &self.route,
            user: &self.user,
            runs: self.runs,
            created_ms: self.created_ms,
            started_ms: self.started_ms,
            finished_ms: self.finished_ms,
            answer: answer.map(|a| AnswerView {
                status: a.status,
                body: a.raw(),
            }),
            callback_url: &self.callback_url,
            callback: &self.callback,
            answer_status: None,
        }
    }

    /// What a list shows of it: the record, with the answer's status only.
    pub fn summary(&self) -> serde_json::Value {
        let view = View {
            answer_status: Some(self.answer_status),
            ..self.view_of(None)
        };
        serde_json::to_value(view).expect("a job serializes")
    }

    /// What `GET /task_status/{id}` shows.
    pub fn task_status(&self, answer: Option<&JobAnswer>) -> String {
        #[derive(Serialize)]
        struct TaskStatus<'a> {
            task_id: &'a str,
            state: &'static str,
            result: Option<Box<RawValue>>,
            error: Option<Box<RawValue>>,
            retries: u32,
            date_done_ms: Option<u64>,
        }
        let body = |wanted: JobStatus| answer.filter(|_| self.status == wanted).map(JobAnswer::raw);
        let status = TaskStatus {
            task_id: &self.id,
            state: self.status.task_state(),
            result: body(JobStatus::Succeeded),
            error: body(JobStatus::Failed),
            retries: self.runs.saturating_sub(1),
            date_done_ms: self.finished_ms,
        };
        serde_json::to_string(&status).expect("a task status serializes")
    }
}

/// A job of the store's first layout (the request and the answer inside
/// the record, as JSON values): its record, request and answer body.
pub(super) fn legacy(bytes: &[u8]) -> Option<(Job, Vec<u8>, Option<Bytes>)> {
    let mut whole: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(bytes).ok()?;
    let request = serde_json::to_vec(&whole.remove("body")?).ok()?;
    let answer = whole.remove("answer").filter(|a| !a.is_null());
    let mut job: Job = serde_json::from_value(serde_json::Value::Object(whole)).ok()?;
    job.request_bytes = request.len() as u64;
    let answer = match answer {
        Some(answer) => {
            job.answer_status = answer["status"].as_u64().map(|s| s as u16);
            let body = serde_json::to_vec(&answer["body"]).ok()?;
            job.answer_bytes = body.len() as u64;
            Some(Bytes::from(body))
        }
        None => None,
    };
    Some((job, request, answer))
}
