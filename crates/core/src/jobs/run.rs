//! One run of a job: its request through the gateway's own route, in
//! process, and what becomes of the job after.

use std::sync::Arc;
use std::time::Duration;

use super::{
    end_with, now_ms, Backend, Change, Delivery, Edit, Job, JobAnswer, JobRunner, JobStatus, Jobs,
    StoreError,
};

/// Answers worth another run later: the gateway had no capacity now.
fn try_later(status: u16) -> bool {
    matches!(status, 429 | 503 | 504)
}

impl Jobs {
    /// Runs the job of `delivery` once, unless it has ended. Returns
    /// whether the delivery is done with: false when what became of the job
    /// could not be stored, so the delivery comes again (on Redis its entry
    /// stays pending and is claimed after `claim_after_ms`).
    pub(super) async fn run(
        self: &Arc<Self>,
        runner: &Arc<dyn JobRunner>,
        delivery: &Delivery,
    ) -> bool {
        let id = delivery.id.clone();
        // On Redis the worker keeps the entry (and says so) while it waits
        // and runs.
        let _keep = self.keep_claim(delivery);
        match self.get(&id).await {
            Ok(Some(job)) if !job.status.is_final() => {
                let wait_ms = job.not_before_ms.saturating_sub(now_ms());
                if wait_ms > 0 {
                    match &self.backend {
                        Backend::Local { .. } => {
                            self.enqueue_after(id, wait_ms);
                            return true;
                        }
                        Backend::Redis(_) => {
                            tokio::time::sleep(Duration::from_millis(wait_ms)).await
                        }
                    }
                }
            }
            Ok(_) => return true,
            Err(e) => return self.store_failed(&id, &e, "cannot read a queued job"),
        }
        let job = match self.update(&id, self.take()).await {
            Ok((Some(job), true)) if job.status == JobStatus::Running => job,
            Ok((Some(_), true)) => {
                // Interrupted too often, or too old: failed now.
                self.callbacks_waiting();
                return true;
            }
            Ok(_) => return true,
            Err(e) => return self.store_failed(&id, &e, "cannot mark a job running"),
        };
        let request = match self.request(&id).await {
            Ok(Some(request)) => request,
            Ok(None) => return true,
            Err(e) => return self.store_failed(&id, &e, "cannot read a job's request"),
        };
        let execution = tokio::spawn(runner.clone().run(job.clone(), request));
        self.running
            .lock()
            .expect("jobs poisoned")
            .insert(id.clone(), execution.abort_handle());
        let answer = execution.await;
        self.running.lock().expect("jobs poisoned").remove(&id);
        let answer = match answer {
            Ok(answer) => answer,
            // Cancelled: `cancel` has written the job.
            Err(e) if e.is_cancelled() => return true,
            Err(_) => JobAnswer::of_value(
                500,
                &serde_json::json!({ "code": "internal", "message": "the job's run panicked" }),
            ),
        };
        let again = try_later(answer.status) && job.runs < self.config.max_runs;
        // No sooner than the answer said there would be room (a key's RPM
        // renews within the minute; a spent budget at the next UTC period).
        let backoff_ms = (1_000u64 << job.runs.min(6)).max(answer.retry_after_ms.unwrap_or(0));
        if again {
            tracing::info!(job = %id, status = answer.status, backoff_ms, "the gateway had no capacity for a job; it runs again later");
        }
        match self
            .update(&id, self.end(answer, again.then_some(backoff_ms)))
            .await
        {
            Ok((Some(_), true)) if again => self.requeue(id, backoff_ms).await,
            Ok((Some(_), true)) => {
                self.callbacks_waiting();
                true
            }
            // Cancelled meanwhile, or taken by another runner (this
            // instance was thought dead): that one's state stands.
            Ok(_) => true,
            Err(e) => self.store_failed(&id, &e, "cannot store a job's answer"),
        }
    }

    /// The change that takes a job to run: a queued one, or one whose
    /// runner died (it runs once more, but past `max_runs` it fails). One
    /// that waited past `max_age_s` fails instead.
    fn take(&self) -> Change {
        let (owner, max_runs) = (self.owner.clone(), self.config.max_runs);
        let max_age_ms = self.config.max_age_s.saturating_mul(1000);
        let now = now_ms();
        let interrupted = |runs: u32| {
            JobAnswer::of_value(
                500,
                &serde_json::json!({
                    "code": "job_interrupted",
                    "message": format!("the job's gateway stopped during each of its {runs} runs"),
                }),
            )
        };
        let expired = JobAnswer::of_value(
            504,
            &serde_json::json!({
                "code": "job_expired",
                "message": format!("the job waited over jobs.max_age_s ({} s) without running", max_age_ms / 1000),
            }),
        );
        Arc::new(move |job: &mut Job| {
            if job.status.is_final() {
                return Edit::Leave;
            }
            if job.status == JobStatus::Running && job.runs >= max_runs {
                return end_with(job, JobStatus::Failed, &interrupted(job.runs));
            }
            if job.status == JobStatus::Queued
                && job.runs == 0
                && now.saturating_sub(job.created_ms) > max_age_ms
            {
                return end_with(job, JobStatus::Failed, &expired);
            }
            job.status = JobStatus::Running;
            job.runs += 1;
            job.started_ms = Some(now_ms());
            job.owner = Some(owner.clone());
            Edit::Write
        })
    }

    /// The change that ends this runner's run with `answer`, or queues the
    /// job again after `again_after_ms`; nothing when the job is no longer
    /// this runner's (cancelled, or taken over).
    fn end(&self, answer: JobAnswer, again_after_ms: Option<u64>) -> Change {
        let owner = self.owner.clone();
        Arc::new(move |job: &mut Job| {
            if job.status != JobStatus::Running || job.owner.as_deref() != Some(owner.as_str()) {
                return Edit::Leave;
            }
            match again_after_ms {
                Some(wait_ms) => {
                    job.owner = None;
                    job.status = JobStatus::Queued;
                    job.not_before_ms = now_ms() + wait_ms;
                    Edit::Write
                }
                None => {
                    let status = if (200..300).contains(&answer.status) {
                        JobStatus::Succeeded
                    } else {
                        JobStatus::Failed
                    };
                    end_with(job, status, &answer)
                }
            }
        })
    }

    /// Logs a store failure; returns whether the delivery is done with (on
    /// this machine it is queued again in 5 s; on Redis its entry stays).
    fn store_failed(self: &Arc<Self>, id: &str, e: &StoreError, what: &str) -> bool {
        let error = crate::error_chain::render(e);
        tracing::error!(job = id, %error, "{what}; it is tried again later");
        match self.backend {
            Backend::Local { .. } => {
                self.enqueue_after(id.to_owned(), 5_000);
                true
            }
            Backend::Redis(_) => false,
        }
    }

    /// Queues job `id` for a run after `wait_ms`: here, when the wait is
    /// over; on Redis at once, awaited (whichever instance takes it waits,
    /// so the wait outlives this instance). Returns whether it is queued.
    async fn requeue(self: &Arc<Self>, id: String, wait_ms: u64) -> bool {
        match &self.backend {
            Backend::Local { .. } => {
                self.enqueue_after(id, wait_ms);
                true
            }
            Backend::Redis(_) => match self.enqueue(id.clone()).await {
                Ok(()) => true,
                Err(e) => self.store_failed(&id, &e, "cannot queue a job again"),
            },
        }
    }

    /// On this machine: queues job `id` when `wait_ms` is over.
    fn enqueue_after(self: &Arc<Self>, id: String, wait_ms: u64) {
        let jobs = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(wait_ms)).await;
            if let Some(jobs) = jobs.upgrade() {
                // Local queueing cannot fail.
                let _ = jobs.enqueue(id).await;
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
