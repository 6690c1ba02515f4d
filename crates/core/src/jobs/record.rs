//! A job as the store keeps it and the API shows it.

use serde::{Deserialize, Serialize};

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Waiting for a worker (also after an interrupted run, or between runs
    /// the gateway answered with "try later").
    Queued,
    /// A worker is running it.
    Running,
    /// The route answered 2xx; `answer` is what it answered.
    Succeeded,
    /// The route answered an error (after its runs, when it was retryable);
    /// `answer` is that error.
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

/// What the route answered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobAnswer {
    /// Its HTTP status.
    pub status: u16,
    /// Its JSON body, as the synchronous route returned it.
    pub body: serde_json::Value,
}

impl JobAnswer {
    /// An answer of `status` whose body is `body`'s JSON (kept as a string
    /// when it is not JSON).
    pub fn of_json(status: u16, body: &[u8]) -> Self {
        Self {
            status,
            body: serde_json::from_slice(body).unwrap_or_else(|_| {
                serde_json::Value::String(String::from_utf8_lossy(body).into())
            }),
        }
    }
}

/// One job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub id: String,
    pub status: JobStatus,
    pub route: JobRoute,
    /// The request's body, as the synchronous route takes it.
    pub body: serde_json::Value,
    /// Who submitted it (their share of the fair queue), when known.
    pub user: Option<String>,
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
    /// What the route answered, once the job has ended (not when cancelled).
    pub answer: Option<JobAnswer>,
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

impl Job {
    /// What `GET /v1/jobs/{id}` shows.
    pub fn view(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "object": "job",
            "status": self.status,
            "route": self.route,
            "user": self.user,
            "runs": self.runs,
            "created_ms": self.created_ms,
            "started_ms": self.started_ms,
            "finished_ms": self.finished_ms,
            "answer": self.answer,
            "callback_url": self.callback_url,
            "callback": self.callback,
        })
    }

    /// What `GET /task_status/{id}` shows.
    pub fn task_status(&self) -> serde_json::Value {
        let answer = self.answer.as_ref();
        serde_json::json!({
            "task_id": self.id,
            "state": self.status.task_state(),
            "result": answer.filter(|_| self.status == JobStatus::Succeeded).map(|a| &a.body),
            "error": answer.filter(|_| self.status == JobStatus::Failed).map(|a| &a.body),
            "retries": self.runs.saturating_sub(1),
            "date_done_ms": self.finished_ms,
        })
    }
}
