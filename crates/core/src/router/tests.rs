//! The attempt loop on a paused clock, with the upstream call scripted per
//! deployment: selection, admission's skips, fallback, waiting for
//! capacity and the cooldown policy's decisions, without HTTP or Bedrock.
//! Minutes of cooldown and quota windows pass in microseconds.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::{AttemptEnd, RouteError, RouteRequest, Routed, Router};
use crate::clock::TokioClock;
use crate::config::Config;
use crate::gateway::{Gateway, Upstreams};
use crate::outcome::OutcomeKind;
use crate::upstream::{AttemptFailure, TokenUsage, Upstream};

/// Deployments `a` (priority 1) and `b` (priority 2) in group `g`, with
/// `extra` TOML for `a` (its quotas), behind the default policies:
/// priority selection (skipping what cools down for over 2 s), adaptive
/// cooldowns (10 s, 30 s, 60 s), cascade fallback.
fn gateway(a_extra: &str) -> Gateway {
    let text = format!(
        r#"
        [[deployments]]
        id = "a"
        model_id = "model-a"
        priority = 1
        {a_extra}
        [[deployments]]
        id = "b"
        model_id = "model-b"
        priority = 2
        [[model_groups]]
        name = "g"
        deployments = ["a", "b"]
        "#
    );
    gateway_of(&text)
}

/// The gateway of deployments and groups `text`, on tokio's (paused)
/// clock; requests may wait two minutes for capacity.
fn gateway_of(text: &str) -> Gateway {
    let text = format!(
        r#"
        listen = "127.0.0.1:0"
        [policy_runtime]
        compile_cache = false
        [admission]
        max_wait_ms = 120000
        {text}"#
    );
    let config = Config::parse(&text, "router test").expect("a valid config");
    // Nothing listens there: every attempt is the script's.
    let upstreams = Upstreams::Simulator("http://127.0.0.1:9".into());
    Gateway::build(&config, TokioClock::new(), &upstreams).expect("the gateway builds")
}

/// What each deployment's attempts answer, in turn (then successes).
#[derive(Clone, Default)]
struct Script {
    answers: Arc<Mutex<HashMap<String, Vec<OutcomeKind>>>>,
    calls: Arc<Mutex<Vec<String>>>,
}

impl Script {
    fn answering(self, model_id: &str, outcomes: &[OutcomeKind]) -> Self {
        self.answers
            .lock()
            .unwrap()
            .insert(model_id.to_owned(), outcomes.to_vec());
        self
    }

    /// The deployments called so far, by model id.
    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }

    /// One attempt: the deployment's next scripted outcome.
    async fn attempt(&self, upstream: Upstream) -> Result<&'static str, AttemptFailure> {
        let model = upstream.model_id().to_owned();
        self.calls.lock().unwrap().push(model.clone());
        let next = {
            let mut answers = self.answers.lock().unwrap();
            let queue = answers.entry(model).or_default();
            (!queue.is_empty()).then(|| queue.remove(0))
        };
        match next {
            None | Some(OutcomeKind::Success) => Ok("answer"),
            Some(kind) => Err(AttemptFailure {
                kind,
                status: Some(if kind == OutcomeKind::ClientError {
                    400
                } else {
                    429
                }),
                retry_after_ms: None,
                detail: format!("scripted {kind:?}"),
            }),
        }
    }
}

/// Routes one request to `g` that may wait `max_wait` for capacity.
async fn route(
    gateway: &Gateway,
    script: &Script,
    max_wait: Duration,
) -> Result<Routed<&'static str>, RouteError> {
    let deadline = Instant::now() + max_wait;
    let request = RouteRequest {
        request_id: "r".into(),
        user: None,
        estimated_tokens: 10,
        body: Bytes::from_static(b"{}"),
        deadline,
        bill: None,
    };
    let mut permit = gateway
        .queue()
        .admit(None, 0, deadline)
        .await
        .expect("a turn in an empty queue");
    let router: &Router = gateway.router();
    router
        .route("g", &request, &mut permit, |upstream, _body, _more| {
            script.attempt(upstream)
        })
        .await
}

/// Finishes a routed answer as delivered.
fn deliver(routed: Routed<&'static str>) -> String {
    routed
        .completion
        .finish(AttemptEnd::success(Some(TokenUsage::input(10))));
    routed.deployment
}

fn cooldown_ms(gateway: &Gateway, id: &str) -> u64 {
    let group = gateway.router().group("g").expect("group g");
    let deployment = group
        .members
        .iter()
        .find(|d| d.config.id == id)
        .expect("a member");
    deployment
        .health
        .snapshot(gateway.router().clock().now_ms())
        .cooldown_remaining_ms
}

#[tokio::test(start_paused = true)]
async fn selection_tries_the_first_in_priority_and_stops_at_its_answer() {
    let gateway = gateway("");
    let script = Script::default();
    let routed = route(&gateway, &script, Duration::ZERO).await.unwrap();
    assert!(routed.attempts.is_empty());
    assert_eq!(deliver(routed), "a");
    assert_eq!(script.calls(), ["model-a"]);
}

#[tokio::test(start_paused = true)]
async fn a_throttle_falls_back_and_benches_the_deployment_for_this_request_only() {
    let gateway = gateway("");
    let script = Script::default().answering("model-a", &[OutcomeKind::Throttled]);
    let routed = route(&gateway, &script, Duration::ZERO).await.unwrap();
    assert_eq!(routed.attempts.len(), 1);
    assert_eq!(routed.attempts[0].deployment, "a");
    assert_eq!(routed.attempts[0].outcome, OutcomeKind::Throttled);
    assert_eq!(deliver(routed), "b");
    assert_eq!(script.calls(), ["model-a", "model-b"]);

    // The adaptive cooldown's first step: 10 s. The priority selection
    // skips a deployment cooling down for over 2 s, so the next request
    // goes to `b` first...
    let bench = cooldown_ms(&gateway, "a");
    assert!((9_000..=10_000).contains(&bench), "cooldown {bench} ms");
    let routed = route(&gateway, &script, Duration::ZERO).await.unwrap();
    assert!(routed.attempts.is_empty());
    assert_eq!(deliver(routed), "b");

    // ...and once less than 2 s of it is left, `a` is tried first again.
    tokio::time::advance(Duration::from_millis(bench - 1_500)).await;
    let routed = route(&gateway, &script, Duration::ZERO).await.unwrap();
    assert_eq!(deliver(routed), "a");
}

#[tokio::test(start_paused = true)]
async fn throttles_in_a_row_step_the_cooldown_up_and_a_success_clears_it() {
    let gateway = gateway("");
    let throttled = [OutcomeKind::Throttled; 3];
    let script = Script::default().answering("model-a", &throttled);
    let mut benches = Vec::new();
    for _ in 0..3 {
        let routed = route(&gateway, &script, Duration::ZERO).await.unwrap();
        assert_eq!(deliver(routed), "b");
        let bench = cooldown_ms(&gateway, "a");
        benches.push(bench.div_ceil(1_000));
        // Past the skip threshold, so `a` is tried (and throttles) again.
        tokio::time::advance(Duration::from_millis(bench - 1_000)).await;
    }
    assert_eq!(benches, [10, 30, 60]);
    // A success clears the history: the next throttle is a first one.
    let routed = route(&gateway, &script, Duration::ZERO).await.unwrap();
    assert_eq!(deliver(routed), "a");
    let script = script.answering("model-a", &[OutcomeKind::Throttled]);
    let routed = route(&gateway, &script, Duration::ZERO).await.unwrap();
    assert_eq!(deliver(routed), "b");
    assert_eq!(cooldown_ms(&gateway, "a").div_ceil(1_000), 10);
}

#[tokio::test(start_paused = true)]
async fn admission_skips_a_deployment_out_of_quota_without_an_attempt() {
    let gateway = gateway("rpm = 1");
    let script = Script::default();
    let first = route(&gateway, &script, Duration::ZERO).await.unwrap();
    assert_eq!(deliver(first), "a");
    let second = route(&gateway, &script, Duration::ZERO).await.unwrap();
    assert!(second.attempts.is_empty(), "a skip is not an attempt");
    assert_eq!(deliver(second), "b");
    assert_eq!(script.calls(), ["model-a", "model-b"]);
}

#[tokio::test(start_paused = true)]
async fn a_client_error_stops_without_fallback() {
    let gateway = gateway("");
    let script = Script::default().answering("model-a", &[OutcomeKind::ClientError]);
    let error = route(&gateway, &script, Duration::ZERO)
        .await
        .err()
        .unwrap();
    let RouteError::Rejected {
        status, attempts, ..
    } = error
    else {
        panic!("a client error is the request's: {error:?}");
    };
    assert_eq!((status, attempts.len()), (400, 1));
    assert_eq!(script.calls(), ["model-a"]);
}

#[tokio::test(start_paused = true)]
async fn when_every_attempt_fails_the_error_lists_them() {
    let gateway = gateway("");
    let script = Script::default()
        .answering("model-a", &[OutcomeKind::Throttled])
        .answering("model-b", &[OutcomeKind::ServerError]);
    let error = route(&gateway, &script, Duration::ZERO)
        .await
        .err()
        .unwrap();
    let RouteError::AttemptsFailed { attempts, .. } = error else {
        panic!("both failed: {error:?}");
    };
    let outcomes: Vec<_> = attempts
        .iter()
        .map(|a| (a.deployment.as_str(), a.outcome))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("a", OutcomeKind::Throttled),
            ("b", OutcomeKind::ServerError)
        ]
    );
}

/// A group whose one deployment allows one request a minute.
fn one_a_minute() -> Gateway {
    let text = r#"
        [[deployments]]
        id = "a"
        model_id = "model-a"
        rpm = 1
        [[model_groups]]
        name = "g"
        deployments = ["a"]
        "#;
    gateway_of(text)
}

#[tokio::test(start_paused = true)]
async fn a_request_waits_for_quota_when_its_deadline_allows() {
    let gateway = one_a_minute();
    let script = Script::default();
    let first = route(&gateway, &script, Duration::ZERO).await.unwrap();
    assert_eq!(deliver(first), "a");

    // No capacity before the deadline: refused at once, saying when.
    let started = Instant::now();
    let error = route(&gateway, &script, Duration::from_secs(5))
        .await
        .err()
        .unwrap();
    let RouteError::NothingAvailable { retry_after_ms } = error else {
        panic!("out of quota: {error:?}");
    };
    assert!(retry_after_ms > 5_000, "retry after {retry_after_ms} ms");
    assert_eq!(started.elapsed(), Duration::ZERO, "it did not wait");

    // A deadline past the quota's recovery: it waits, then is served.
    let started = Instant::now();
    let second = route(&gateway, &script, Duration::from_secs(90))
        .await
        .unwrap();
    let waited = started.elapsed();
    assert_eq!(deliver(second), "a");
    assert!(
        waited >= Duration::from_secs(50) && waited <= Duration::from_secs(61),
        "waited {waited:?} for the minute's quota"
    );
    assert_eq!(script.calls(), ["model-a", "model-a"]);
}
