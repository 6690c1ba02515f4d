//! Upstream calls beyond an attempt's first, on the same deployment: an
//! embeddings request makes one call a text on Titan, one per 96 on
//! Cohere. The attempt's ticket covers its first call and its own place of
//! concurrency; every further call is admitted like an attempt (a request
//! and its tokens of the deployment's quotas and budgets), and every further
//! call in flight at once holds a place of concurrency of its own. So a
//! request of 2,048 texts meets the RPM and concurrency limits as 2,048
//! requests would.

use std::sync::Arc;
use std::time::Duration;

use switchyard_clock::SharedClock;

use super::group::Deployment;
use super::usage_book::UsageBook;
use super::CONCURRENCY_RECHECK_MS;
use crate::admission::{Refusal, Ticket};
use crate::upstream::{AttemptFailure, TokenUsage};

/// What an attempt may use to make more calls to its deployment.
#[derive(Clone)]
pub struct MoreCalls {
    deployment: Arc<Deployment>,
    clock: SharedClock,
    /// Until when a call may wait for quota: the request's deadline.
    deadline: tokio::time::Instant,
    book: UsageBook,
}

/// Places of concurrency an attempt took beyond its own; given back on drop.
pub struct Lanes {
    deployment: Arc<Deployment>,
    extra: usize,
}

impl Lanes {
    /// Calls the attempt may have in flight at once: its own place and the
    /// extra ones.
    pub fn count(&self) -> usize {
        1 + self.extra
    }
}

impl Drop for Lanes {
    fn drop(&mut self) {
        for _ in 0..self.extra {
            self.deployment.admission.release_lane();
        }
    }
}

/// One more call's share of the quotas; settle it with [`Self::finish`].
/// Dropped unsettled (the attempt was abandoned), it counts as spent.
pub struct CallGrant {
    deployment: Arc<Deployment>,
    clock: SharedClock,
    ticket: Option<Ticket>,
    book: UsageBook,
}

impl CallGrant {
    /// The call ended (`success` or not), having used `usage` when known.
    pub fn finish(mut self, success: bool, usage: Option<TokenUsage>) {
        if let Some(ticket) = self.ticket.take() {
            let now = self.clock.now_ms();
            self.deployment
                .admission
                .finish_call(ticket, success, usage.map(|u| u.total()), now);
        }
        if let Some(usage) = &usage {
            self.book.book(usage);
        }
    }
}

impl Drop for CallGrant {
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            let now = self.clock.now_ms();
            self.deployment
                .admission
                .finish_call(ticket, true, None, now);
        }
    }
}

impl MoreCalls {
    pub(crate) fn new(
        deployment: Arc<Deployment>,
        clock: SharedClock,
        deadline: tokio::time::Instant,
        book: UsageBook,
    ) -> Self {
        Self {
            deployment,
            clock,
            deadline,
            book,
        }
    }

    /// Takes up to `wanted - 1` places of concurrency beyond the attempt's
    /// own, as many as are free now (never waits).
    pub fn lanes(&self, wanted: usize) -> Lanes {
        let admission = &self.deployment.admission;
        let extra = (1..wanted).take_while(|_| admission.try_lane()).count();
        Lanes {
            deployment: self.deployment.clone(),
            extra,
        }
    }

    /// Admits one more call of `tokens`, waiting for the deployment's quota
    /// until the request's deadline; past it the attempt fails as a
    /// timeout (ours, not Bedrock's).
    pub async fn admit(&self, tokens: u64) -> Result<CallGrant, AttemptFailure> {
        let admission = &self.deployment.admission;
        loop {
            let now = self.clock.now_ms();
            let wait_ms = match admission.try_start_call(tokens, now).await {
                Ok(ticket) => {
                    return Ok(CallGrant {
                        deployment: self.deployment.clone(),
                        clock: self.clock.clone(),
                        ticket: Some(ticket),
                        book: self.book.clone(),
                    })
                }
                Err(Refusal::Concurrency) => CONCURRENCY_RECHECK_MS,
                Err(_) => admission.wait_ms(tokens, now).max(10),
            };
            let wake = tokio::time::Instant::now() + Duration::from_millis(wait_ms);
            if wake > self.deadline {
                return Err(AttemptFailure::timeout(
                    "the deployment's quota could not take the request's further calls before its deadline",
                ));
            }
            tokio::time::sleep_until(wake).await;
        }
    }
}
