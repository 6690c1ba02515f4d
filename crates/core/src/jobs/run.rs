//! One run of a job: its request through the gateway's own route, in
//! process, and what becomes of the job after.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use tower::ServiceExt;

use super::{
    now_ms, Backend, Delivery, Job, JobAnswer, JobStatus, Jobs, JOB_MAX_CONCURRENT_HEADER,
    JOB_TOKEN_HEADER,
};
use crate::api::dispatch::{PRIORITY_HEADER, USER_HEADER};
use crate::api::AppState;

/// Answers worth another run later: the gateway had no capacity now.
fn try_later(status: u16) -> bool {
    matches!(status, 429 | 503 | 504)
}

impl Jobs {
    /// Runs the job of `delivery` once, unless it has ended (a job still
    /// marked running was interrupted: its process died).
    pub(super) async fn run(self: &Arc<Self>, state: &Arc<AppState>, delivery: &Delivery) {
        let id = delivery.id.as_str();
        let job = match self.get(id).await {
            Ok(Some(job)) if !job.status.is_final() => job,
            Ok(_) => return,
            Err(e) => {
                let error = crate::error_chain::render(&e);
                tracing::error!(job = id, %error, "cannot read a queued job; it stays queued");
                return;
            }
        };
        // On Redis the worker keeps the entry (and says so) while it runs
        // or waits; here a waiting job goes back to the queue for later.
        let _keep = self.keep_claim(delivery);
        let wait_ms = job.not_before_ms.saturating_sub(now_ms());
        if wait_ms > 0 {
            match &self.backend {
                Backend::Local { .. } => {
                    self.requeue_after(job.id, wait_ms);
                    return;
                }
                Backend::Redis(_) => tokio::time::sleep(Duration::from_millis(wait_ms)).await,
            }
        }
        let mut job = job;
        job.status = JobStatus::Running;
        job.runs += 1;
        job.started_ms = Some(now_ms());
        if !self.save(&job).await {
            return;
        }
        let execution = tokio::spawn(execute(state.clone(), job.clone(), self.token.clone()));
        self.running
            .lock()
            .expect("jobs poisoned")
            .insert(job.id.clone(), execution.abort_handle());
        let answer = execution.await;
        self.running.lock().expect("jobs poisoned").remove(&job.id);
        let answer = match answer {
            Ok(answer) => answer,
            // Cancelled: `cancel` has written the job.
            Err(e) if e.is_cancelled() => return,
            Err(_) => JobAnswer {
                status: 500,
                body: serde_json::json!({ "code": "internal", "message": "the job's run panicked" }),
            },
        };
        // Cancelled while its answer came: the cancel stands.
        if matches!(self.get(&job.id).await, Ok(Some(j)) if j.status == JobStatus::Cancelled) {
            return;
        }
        if try_later(answer.status) && job.runs < self.config.max_runs {
            let backoff_ms = 1_000u64 << job.runs.min(6);
            tracing::info!(job = %job.id, status = answer.status, backoff_ms, "the gateway had no capacity for a job; it runs again later");
            job.status = JobStatus::Queued;
            job.not_before_ms = now_ms() + backoff_ms;
            if self.save(&job).await {
                self.requeue_after(job.id, backoff_ms);
            }
            return;
        }
        job.status = if (200..300).contains(&answer.status) {
            JobStatus::Succeeded
        } else {
            JobStatus::Failed
        };
        job.finished_ms = Some(now_ms());
        job.answer = Some(answer);
        if self.save(&job).await {
            self.call_back(&job);
        }
    }

    /// Writes `job`; a failure is logged (the job stays as it was stored).
    pub(super) async fn save(self: &Arc<Self>, job: &Job) -> bool {
        match self.put(job).await {
            Ok(()) => true,
            Err(e) => {
                let error = crate::error_chain::render(&e);
                tracing::error!(job = %job.id, %error, "cannot write a job");
                false
            }
        }
    }

    /// Queues job `id` again for a run after `wait_ms`: here, when the
    /// wait is over; on Redis at once (whichever instance takes it waits,
    /// so a wait outlives this instance).
    fn requeue_after(self: &Arc<Self>, id: String, wait_ms: u64) {
        let jobs = Arc::downgrade(self);
        let wait = match self.backend {
            Backend::Local { .. } => Duration::from_millis(wait_ms),
            Backend::Redis(_) => Duration::ZERO,
        };
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            let Some(jobs) = jobs.upgrade() else {
                return;
            };
            if let Err(e) = jobs.enqueue(id.clone()).await {
                let error = crate::error_chain::render(&e);
                tracing::error!(job = %id, %error, "cannot queue a job again; it stays queued in the store");
            }
        });
    }

    /// On Redis, tells the group every so often that this instance still
    /// has `delivery`, until the returned guard is dropped.
    fn keep_claim(self: &Arc<Self>, delivery: &Delivery) -> Option<AbortOnDrop> {
        let (Backend::Redis(redis), Some(entry)) = (&self.backend, &delivery.entry) else {
            return None;
        };
        let every = redis.keep_every();
        let entry = entry.clone();
        let jobs = Arc::downgrade(self);
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(jobs) = jobs.upgrade() else {
                    return;
                };
                if let Backend::Redis(redis) = &jobs.backend {
                    if let Err(e) = redis.keep(&entry).await {
                        let error = crate::error_chain::render(&e);
                        tracing::warn!(job = %entry.job, %error, "cannot renew a job's claim on Redis");
                    }
                }
            }
        });
        Some(AbortOnDrop(task.abort_handle()))
    }
}

/// Stops a background task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// `job`'s request through the gateway's routes, speaking for its submitter
/// with `token`; what the route answered.
async fn execute(state: Arc<AppState>, job: Job, token: String) -> JobAnswer {
    let max_body = state
        .running_config
        .lock()
        .expect("config poisoned")
        .limits
        .max_body_bytes;
    let mut request = axum::http::Request::post(job.route.path())
        .header("content-type", "application/json")
        .header("x-request-id", job.id.as_str())
        .header(JOB_TOKEN_HEADER, token)
        .header(PRIORITY_HEADER, job.priority);
    if let Some(user) = &job.user {
        request = request.header(USER_HEADER, user.as_str());
    }
    if let Some(cap) = job.max_concurrent {
        request = request.header(JOB_MAX_CONCURRENT_HEADER, cap);
    }
    let body = serde_json::to_vec(&job.body).expect("JSON serializes");
    let request = request
        .body(Body::from(body))
        .expect("a job's request is well formed");
    let response = crate::api::routes(state, max_body)
        .oneshot(request)
        .await
        .expect("the routes answer every request");
    let status = response.status().as_u16();
    let body = match axum::body::to_bytes(response.into_body(), usize::MAX).await {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&bytes).into())),
        Err(e) => {
            serde_json::json!({ "code": "internal", "message": format!("the answer broke off: {e}") })
        }
    };
    JobAnswer { status, body }
}
