//! The gateway as a service that knows nothing of HTTP: a [`ModelCall`] in
//! (which model group, for whom, with which body), a routed answer or one
//! [`GatewayError`] out. It waits for the call's turn in the fair queue and
//! runs the router's attempt loop; what each attempt sends upstream is the
//! call's [`Operation`].
//!
//! Every API's handlers translate their shapes around it, and async jobs
//! call it the same way, with their submitter as a value: an HTTP request
//! is only one way in.

mod caller;
mod error;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tracing::Instrument;

pub use caller::{Caller, MAX_USER_BYTES};
pub use error::{ErrorCode, GatewayError};

use crate::admission::{FairQueue, Permit};
use crate::router::{AttemptEnd, MoreCalls, RouteRequest, Routed, Router};
use crate::spend::Spending;
use crate::telemetry::{self, TraceContext};
use crate::upstream::{
    AttemptFailure, ConverseReply, InvokeReply, OpenStream, TokenUsage, Upstream,
};

/// One call of a model group.
#[derive(Debug, Clone)]
pub struct ModelCall {
    /// The model group it names.
    pub group: String,
    /// Who makes it, for the fair queue.
    pub caller: Caller,
    /// Its id, on every log line and answer.
    pub request_id: String,
    /// How long it may wait for its turn and for capacity, in ms; never
    /// longer than `admission.max_wait_ms` (`None`: that long).
    pub max_wait_ms: Option<u64>,
    /// What each attempt sends upstream.
    pub body: Bytes,
    /// A pessimistic estimate of its tokens (see [`estimate_tokens`]).
    pub estimated_tokens: u32,
    /// The client's trace, which the call's span continues (only read
    /// when traces are on).
    pub trace: Option<TraceContext>,
}

/// What one attempt of a call does with a deployment's client: a Bedrock
/// operation, or several (an embeddings batch).
pub trait Operation: Send + Sync {
    /// What a successful attempt gives.
    type Reply: Send;
    /// Its `gen_ai.operation.name` in traces.
    const NAME: &'static str;

    /// One attempt on `upstream` with the call's `body`. An operation that
    /// makes more than one upstream call admits each further one with
    /// `more`, so it meets the deployment's quotas and concurrency as that
    /// many requests would.
    fn attempt(
        &self,
        upstream: Upstream,
        body: Bytes,
        more: MoreCalls,
    ) -> impl Future<Output = Result<Self::Reply, AttemptFailure>> + Send;
}

/// Bedrock's Converse: the body is a Converse request.
pub struct Converse;
/// Bedrock's ConverseStream: the body is a Converse request.
pub struct ConverseStream;
/// Bedrock's InvokeModel: the body is the model's own JSON.
pub struct Invoke;
/// Bedrock's InvokeModelWithResponseStream: the body is the model's own JSON.
pub struct InvokeStream;
/// Bedrock's CountTokens: the body is an InvokeModel body, whose input
/// tokens are counted.
pub struct CountTokens;

impl Operation for Converse {
    const NAME: &'static str = "chat";
    type Reply = ConverseReply;
    async fn attempt(
        &self,
        upstream: Upstream,
        body: Bytes,
        _: MoreCalls,
    ) -> Result<ConverseReply, AttemptFailure> {
        upstream.converse(body).await
    }
}

impl Operation for ConverseStream {
    const NAME: &'static str = "chat";
    type Reply = OpenStream;
    async fn attempt(
        &self,
        upstream: Upstream,
        body: Bytes,
        _: MoreCalls,
    ) -> Result<OpenStream, AttemptFailure> {
        upstream.converse_stream(body).await
    }
}

impl Operation for Invoke {
    const NAME: &'static str = "generate_content";
    type Reply = InvokeReply;
    async fn attempt(
        &self,
        upstream: Upstream,
        body: Bytes,
        _: MoreCalls,
    ) -> Result<InvokeReply, AttemptFailure> {
        upstream.invoke(body).await
    }
}

impl Operation for CountTokens {
    const NAME: &'static str = "count_tokens";
    type Reply = u64;
    async fn attempt(
        &self,
        upstream: Upstream,
        body: Bytes,
        _: MoreCalls,
    ) -> Result<u64, AttemptFailure> {
        upstream.count_tokens(&body).await
    }
}

impl Operation for InvokeStream {
    const NAME: &'static str = "generate_content";
    type Reply = OpenStream;
    async fn attempt(
        &self,
        upstream: Upstream,
        body: Bytes,
        _: MoreCalls,
    ) -> Result<OpenStream, AttemptFailure> {
        upstream.invoke_stream(body).await
    }
}

/// A call that a deployment answered, with its place in the fair queue:
/// hold `permit` until the answer is delivered, then finish
/// `routed.completion`.
pub struct Admitted<T> {
    pub request_id: String,
    pub routed: Routed<T>,
    pub permit: Permit,
}

impl<T> Admitted<T> {
    /// The answer is delivered (a whole one, not a stream): records the
    /// attempt's success with the tokens it used (its `usage`), when known,
    /// and gives the call's place in the queue back.
    pub fn delivered(self, usage: Option<TokenUsage>) -> Delivered<T> {
        let Self {
            request_id,
            routed,
            permit,
        } = self;
        routed.completion.finish(AttemptEnd::success(usage));
        drop(permit);
        Delivered {
            request_id,
            value: routed.value,
            deployment: routed.deployment,
            attempts: routed.attempts.len() + 1,
        }
    }
}

/// A call answered whole, its success recorded.
pub struct Delivered<T> {
    pub request_id: String,
    pub value: T,
    /// The deployment that answered.
    pub deployment: String,
    /// How many attempts it took, the successful one included.
    pub attempts: usize,
}

impl<T> Delivered<T> {
    /// The same answer with its value turned into an API's own shape.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Delivered<U> {
        Delivered {
            request_id: self.request_id,
            value: f(self.value),
            deployment: self.deployment,
            attempts: self.attempts,
        }
    }
}

/// Marks a traced call's span as cancelled if dropped while it still holds
/// it: the call did not end, its client went away.
struct Cancelled(Option<tracing::Span>);

impl Drop for Cancelled {
    fn drop(&mut self) {
        if let Some(span) = &self.0 {
            span.record("error.type", "cancelled");
        }
    }
}

/// The span of one model call: what logs need, and for a traced call the
/// GenAI semantic conventions' attributes (the usage and the deployment
/// that answered are recorded when known), as a child of the client's trace.
fn call_span(operation: &'static str, call: &ModelCall, traced: bool) -> tracing::Span {
    let (group, request_id) = (&call.group, &call.request_id);
    if !traced {
        return tracing::info_span!("request", request_id = %request_id, group = %group);
    }
    let empty = tracing::field::Empty;
    let span = tracing::info_span!(
        target: telemetry::TRACED,
        "request",
        otel.name = format!("{operation} {group}"),
        otel.kind = "server",
        otel.status_code = empty,
        request_id = %request_id,
        group = %group,
        gen_ai.operation.name = operation,
        gen_ai.provider.name = "aws.bedrock",
        gen_ai.request.model = %group,
        gen_ai.response.model = empty,
        gen_ai.usage.input_tokens = empty,
        gen_ai.usage.output_tokens = empty,
        switchyard.deployment = empty,
        error.type = empty,
    );
    if let Some(trace) = &call.trace {
        trace.adopt(&span);
    }
    span
}

/// About four bytes of JSON per input token, rounded up, plus the whole
/// output budget (`max_tokens`, 4096 when the request sets none).
pub fn estimate_tokens(body_len: usize, max_tokens: Option<u64>) -> u32 {
    let estimate = (body_len as u64).div_ceil(4) + max_tokens.unwrap_or(4_096);
    u32::try_from(estimate).unwrap_or(u32::MAX)
}

/// Routing behind the fair queue.
pub struct Service {
    router: Router,
    /// Key and team limits, prices and the books of spend.
    spending: Arc<Spending>,
    queue: FairQueue,
    /// How long a call may wait for its turn and for capacity, in ms.
    max_wait_ms: u64,
}

impl Service {
    /// Calls wait in `queue` for at most `max_wait_ms`, then `router` routes them.
    pub fn new(
        router: Router,
        spending: Arc<Spending>,
        queue: FairQueue,
        max_wait_ms: u64,
    ) -> Self {
        Self {
            router,
            spending,
            queue,
            max_wait_ms,
        }
    }

    /// The router, for inspection.
    pub fn router(&self) -> &Router {
        &self.router
    }

    /// Prices, key and team limits and the books of spend.
    pub fn spending(&self) -> &Arc<Spending> {
        &self.spending
    }

    /// The fair queue calls wait in.
    pub fn queue(&self) -> &FairQueue {
        &self.queue
    }

    /// The model group `model` names (its name or an alias), or 404
    /// `unknown_model` listing the groups. Operators who want existing
    /// clients to work unchanged give a group the model ids they use as
    /// aliases.
    pub fn group_for(&self, model: &str) -> Result<String, GatewayError> {
        if let Some(group) = self.router.resolve(model) {
            return Ok(group.name.clone());
        }
        let mut known: Vec<&str> = self.router.groups().map(|g| g.name.as_str()).collect();
        known.sort_unstable();
        Err(GatewayError::refused(
            ErrorCode::UnknownModel,
            format!(
                "no model group `{model}`; model groups: {}",
                known.join(", ")
            ),
        ))
    }

    /// Waits for `call`'s turn in the fair queue, then routes it, making
    /// each attempt with `operation`. A success is left to the caller to
    /// deliver and finish.
    pub async fn call<O: Operation>(
        &self,
        call: ModelCall,
        operation: &O,
    ) -> Result<Admitted<O::Reply>, GatewayError> {
        let traced = telemetry::tracing_call(call.trace.as_ref());
        let span = call_span(O::NAME, &call, traced);
        // A caller that goes away drops this future: its span says so.
        let mut unfinished = Cancelled(traced.then(|| span.clone()));
        let called = self
            .call_in_span(call, operation, traced)
            .instrument(span.clone())
            .await;
        unfinished.0 = None;
        if let (true, Err(e)) = (traced, &called) {
            span.record("error.type", e.code().as_str());
            // As HTTP's conventions say of a server span: the client's
            // errors (4xx) are not the server's.
            if e.status().is_server_error() {
                span.record("otel.status_code", "ERROR");
            }
        }
        called
    }

    async fn call_in_span<O: Operation>(
        &self,
        call: ModelCall,
        operation: &O,
        traced: bool,
    ) -> Result<Admitted<O::Reply>, GatewayError> {
        let metrics = self.router.metrics();
        let max_wait_ms = call
            .max_wait_ms
            .map_or(self.max_wait_ms, |ms| ms.min(self.max_wait_ms));
        let group = call.group;
        let tenant = call.caller.tenant.as_ref();
        if let Some(tenant) = tenant.filter(|t| !t.may_call(&group)) {
            let e = GatewayError::refused(
                ErrorCode::Forbidden,
                format!(
                    "this API key may call the model groups {} only, not `{group}`",
                    tenant.model_groups.join(", ")
                ),
            );
            metrics.request(&group, e.code().as_str());
            return Err(e);
        }
        let bill = match self
            .spending
            .admit(tenant, &group, u64::from(call.estimated_tokens))
            .await
        {
            Ok(bill) => bill,
            Err(e) => {
                let e = GatewayError::from(e);
                metrics.request(&group, e.code().as_str());
                return Err(e);
            }
        };
        let request = RouteRequest {
            request_id: call.request_id,
            user: call.caller.user,
            estimated_tokens: call.estimated_tokens,
            body: call.body,
            deadline: tokio::time::Instant::now() + Duration::from_millis(max_wait_ms),
            bill: Some(bill),
        };
        let queue_span = if traced {
            tracing::info_span!(
                target: telemetry::TRACED,
                "queue_wait",
                otel.name = "queue wait",
                request_id = %request.request_id,
                switchyard.priority = call.caller.priority,
            )
        } else {
            tracing::Span::none()
        };
        let admitted = self
            .queue
            .admit_capped(
                request.user.as_deref(),
                call.caller.max_concurrent,
                call.caller.priority,
                request.deadline,
            )
            .instrument(queue_span)
            .await;
        let mut permit = match admitted {
            Ok(permit) => permit,
            Err(e) => {
                let e = GatewayError::from(e);
                metrics.queue_rejection(&group, e.code().as_str());
                return Err(e);
            }
        };
        let routed = self
            .router
            .route(&group, &request, &mut permit, |upstream, body, more| {
                operation.attempt(upstream, body, more)
            })
            .await;
        match routed {
            Err(e) => {
                let e = GatewayError::from(e);
                metrics.request(&group, e.code().as_str());
                Err(e)
            }
            Ok(routed) => {
                metrics.request(&group, "success");
                Ok(Admitted {
                    request_id: request.request_id,
                    routed,
                    permit,
                })
            }
        }
    }
}
