//! Routing a request: the answer comes back through the gateway, and the
//! field's story of a throttled primary plays out with per-request isolation.

use aws_sdk_bedrockruntime::operation::RequestId;
use aws_sdk_bedrockruntime::types::StopReason;
use switchyard::clock::ManualClock;
use switchyard::sim::Fault;

use crate::support::*;

const MODEL_A: &str = "anthropic.claude-3-5-sonnet-20240620-v1:0";
const MODEL_B: &str = "anthropic.claude-3-haiku-20240307-v1:0";

fn two_deployments(sim: &switchyard::sim::SimHandle) -> String {
    format!(
        "{}{}\n[[model_groups]]\nname = \"claude\"\ndeployments = [\"a\", \"b\"]\n",
        deployment("a", MODEL_A, 1, sim),
        deployment("b", MODEL_B, 2, sim)
    )
}

#[tokio::test]
async fn converse_returns_the_simulators_answer_with_usage_and_headers() {
    let clock = ManualClock::new(1_000_000);
    let sim = start_sim(
        vec![sim_model(MODEL_A, None), sim_model(MODEL_B, None)],
        clock.clone(),
    )
    .await;
    let gw = start_gateway(&two_deployments(&sim), clock.clone()).await;
    let client = sdk_client(&gw.url());

    let output = client
        .converse()
        .model_id("claude")
        .messages(user_message("hello there"))
        .send()
        .await
        .expect("converse through the gateway");
    assert_eq!(
        answer_text(&output),
        format!("Simulated reply from {MODEL_A}: hello there")
    );
    assert_eq!(output.stop_reason(), &StopReason::EndTurn);
    let usage = output.usage().unwrap();
    assert_eq!(usage.input_tokens(), 2);
    assert_eq!(usage.output_tokens(), 6);
    assert_eq!(usage.total_tokens(), 8);
    assert!(output.request_id().is_some_and(|id| !id.is_empty()));

    // The gateway's own headers, seen on the wire.
    let raw = raw_post(
        gw.addr,
        "/model/claude/converse",
        &[("x-request-id", "req-123")],
        &converse_body("hi"),
    )
    .await;
    assert_eq!(raw.status, 200);
    assert_eq!(raw.headers["x-request-id"], "req-123");
    assert_eq!(raw.headers["x-switchyard-deployment"], "a");
    assert_eq!(raw.headers["x-switchyard-attempts"], "1");
}

#[tokio::test]
async fn a_group_named_after_a_model_id_is_reached_through_percent_encoding() {
    let clock = ManualClock::new(1_000_000);
    let sim = start_sim(
        vec![sim_model(MODEL_A, None), sim_model(MODEL_B, None)],
        clock.clone(),
    )
    .await;
    // Naming a group after the model id clients already use keeps them unchanged.
    let config = format!(
        "{}{}\n[[model_groups]]\nname = \"{MODEL_A}\"\ndeployments = [\"a\", \"b\"]\n",
        deployment("a", MODEL_A, 1, &sim),
        deployment("b", MODEL_B, 2, &sim)
    );
    let gw = start_gateway(&config, clock.clone()).await;
    // The SDK sends `...-v1%3A0`; the gateway decodes it.
    let output = sdk_client(&gw.url())
        .converse()
        .model_id(MODEL_A)
        .messages(user_message("by model id"))
        .send()
        .await
        .expect("converse by model id");
    assert_eq!(
        answer_text(&output),
        format!("Simulated reply from {MODEL_A}: by model id")
    );
}

#[tokio::test]
async fn a_throttled_attempt_falls_back_and_the_error_lists_every_attempt() {
    let clock = ManualClock::new(1_000_000);
    let sim = start_sim(
        vec![sim_model(MODEL_A, None), sim_model(MODEL_B, None)],
        clock.clone(),
    )
    .await;
    let gw = start_gateway(&two_deployments(&sim), clock.clone()).await;

    sim.inject(MODEL_A, Fault::Unavailable, 1);
    let raw = raw_post(gw.addr, "/model/claude/converse", &[], &converse_body("x")).await;
    assert_eq!(raw.status, 200);
    assert_eq!(raw.headers["x-switchyard-deployment"], "b");
    assert_eq!(raw.headers["x-switchyard-attempts"], "2");

    // Both throttled: 429 with retry-after and the attempts.
    clock.advance(120_000);
    sim.inject(MODEL_A, Fault::Throttle, 1);
    sim.inject(MODEL_B, Fault::Throttle, 1);
    let raw = raw_post(gw.addr, "/model/claude/converse", &[], &converse_body("x")).await;
    assert_eq!(raw.status, 429);
    assert!(raw.headers.contains_key("retry-after"));
    assert_eq!(raw.headers["x-amzn-errortype"], "ThrottlingException");
    let body = raw.json();
    assert_eq!(body["code"], "all_attempts_throttled");
    let attempts = body["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2);
    assert_eq!(attempts[0]["deployment"], "a");
    assert_eq!(attempts[0]["outcome"], "throttled");
    assert_eq!(attempts[1]["deployment"], "b");
    assert!(attempts[0]["latency_ms"].is_u64());

    // A mix of failures: 503.
    clock.advance(120_000);
    sim.inject(MODEL_A, Fault::Throttle, 1);
    sim.inject(MODEL_B, Fault::Internal, 1);
    let raw = raw_post(gw.addr, "/model/claude/converse", &[], &converse_body("x")).await;
    assert_eq!(raw.status, 503);
    assert_eq!(raw.json()["code"], "all_attempts_failed");
    assert_eq!(raw.json()["attempts"][1]["outcome"], "server_error");
}

#[tokio::test]
async fn a_connection_reset_and_a_timeout_are_unavailable_and_timeout() {
    let clock = ManualClock::new(1_000_000);
    let sim = start_sim(
        vec![sim_model(MODEL_A, None), sim_model(MODEL_B, None)],
        clock.clone(),
    )
    .await;
    let config = format!(
        "[limits]\nattempt_timeout_ms = 300\n{}",
        two_deployments(&sim)
    );
    let gw = start_gateway(&config, clock.clone()).await;
    sim.inject(MODEL_A, Fault::Reset, 1);
    sim.inject(MODEL_B, Fault::Timeout, 1);
    let raw = raw_post(gw.addr, "/model/claude/converse", &[], &converse_body("x")).await;
    assert_eq!(raw.status, 503, "{}", String::from_utf8_lossy(&raw.body));
    let body = raw.json();
    assert_eq!(body["attempts"][0]["outcome"], "unavailable");
    assert_eq!(body["attempts"][1]["outcome"], "timeout");
}

/// The field's story, set up: A (5 RPM) and B behind one group, gateway and
/// simulator on one manual clock starting at [`FieldStory::T0`].
struct FieldStory {
    clock: std::sync::Arc<ManualClock>,
    sim: switchyard::sim::SimHandle,
    gw: TestGateway,
    client: aws_sdk_bedrockruntime::Client,
}

impl FieldStory {
    const T0: u64 = 1_000_000;

    /// With `extra` appended to the gateway config (policies, params).
    async fn start(extra: &str) -> Self {
        let clock = ManualClock::new(Self::T0);
        let sim = start_sim(
            vec![sim_model(MODEL_A, Some(5)), sim_model(MODEL_B, None)],
            clock.clone(),
        )
        .await;
        let config = format!("{}{extra}", two_deployments(&sim));
        let gw = start_gateway(&config, clock.clone()).await;
        let client = sdk_client(&gw.url());
        Self {
            clock,
            sim,
            gw,
            client,
        }
    }

    /// `at_ms` after the start.
    fn at(&self, at_ms: u64) {
        self.clock.set(Self::T0 + at_ms);
    }

    /// Whether A (rather than B) answered `user`'s request, which succeeds.
    async fn served_by_a(&self, user: &str) -> bool {
        let raw = self
            .client
            .converse()
            .model_id("claude")
            .messages(user_message(&format!("question from {user}")))
            .send()
            .await
            .expect("request succeeds");
        let text = answer_text(&raw);
        let by_b = text.starts_with(&format!("Simulated reply from {MODEL_B}"));
        assert!(by_b || text.starts_with(&format!("Simulated reply from {MODEL_A}")));
        !by_b
    }

    /// User 4 fills A's rolling minute (four calls now, one at +54 s), then
    /// bursts at +55 s: A throttles and user 4 falls back to B.
    async fn user_4_bursts(&self) {
        for _ in 0..4 {
            assert!(self.served_by_a("user4").await);
        }
        self.at(54_000);
        assert!(self.served_by_a("user4").await);
        self.at(55_000);
        assert!(!self.served_by_a("user4").await, "user 4 fell back to B");
        assert_eq!(self.sim.counts(MODEL_A).throttles, 1);
        assert_eq!(
            self.gw.cooldown_ms("claude", "a"),
            10_000,
            "adaptive: 10 s for the first throttle"
        );
    }
}

/// The story every team tells (field notes): user 4's burst exhausts the
/// primary's quota; user 4 falls back, while users 1–3 are not benched with it.
#[tokio::test]
async fn a_burst_from_one_user_does_not_bench_the_primary_for_everyone() {
    let story = FieldStory::start("").await;
    story.user_4_bursts().await;

    // 5 s later A has 5 s of cooldown left, more than the 2 s threshold: a
    // new request skips it without calling it (the cooldown is a hint that
    // keeps us from hammering a throttled deployment)...
    story.at(60_000);
    let calls_to_a = story.sim.counts(MODEL_A).calls;
    assert!(!story.served_by_a("user1").await);
    assert_eq!(story.sim.counts(MODEL_A).calls, calls_to_a);

    // ...but A is not benched for everyone until the cooldown ends: as soon
    // as what is left is within the threshold, users 1–3 each get a fresh
    // list with A first, and A (which has capacity again) serves them.
    story.at(63_000);
    assert_eq!(story.gw.cooldown_ms("claude", "a"), 2_000);
    for user in ["user1", "user2", "user3"] {
        assert!(story.served_by_a(user).await, "{user} served by A");
    }
    // A success clears A's cooldown and history.
    assert_eq!(story.gw.cooldown_ms("claude", "a"), 0);

    // After the cooldown, A is everyone's primary again, user 4 included.
    story.at(70_000);
    assert!(story.served_by_a("user4").await);
    assert_eq!(
        story.sim.counts(MODEL_A).throttles,
        1,
        "A was never hammered"
    );
}

/// The field's story word for word: users 1-3 arriving 5 s after user 4's
/// burst try A first. With the defaults (10 s first cooldown, 2 s skip
/// threshold) A is still skipped at 5 s, as the test above shows; an
/// operator who wants A tried sooner sets `priority`'s threshold to the
/// first cooldown's half, and per-request isolation does the rest.
#[tokio::test]
async fn with_a_5_s_threshold_users_arriving_5_s_after_the_burst_try_a_first() {
    let story = FieldStory::start(
        "[model_groups.policies.selection]\nname = \"priority\"\nparams = { skip_threshold_ms = 5000 }\n",
    )
    .await;
    story.user_4_bursts().await;

    // 5 s later A's first four calls have left its minute: users 1-3 try A
    // first and A serves them. Nothing benched A for everyone.
    story.at(60_000);
    let calls_before = story.sim.counts(MODEL_A).calls;
    for user in ["user1", "user2", "user3"] {
        assert!(
            story.served_by_a(user).await,
            "{user} tried A first and was served by it"
        );
    }
    assert_eq!(story.sim.counts(MODEL_A).calls, calls_before + 3);
    assert_eq!(
        story.sim.counts(MODEL_A).throttles,
        1,
        "A was never hammered"
    );
    // A's success ended its cooldown: it is everyone's primary again.
    assert_eq!(story.gw.cooldown_ms("claude", "a"), 0);
    story.at(70_000);
    assert!(story.served_by_a("user4").await);
}

#[tokio::test]
async fn the_same_model_in_another_region_has_a_quota_of_its_own() {
    let clock = ManualClock::new(1_000_000);
    let sim = start_sim(vec![sim_model(MODEL_A, Some(1))], clock.clone()).await;
    let in_region = |id: &str, priority: u32, region: &str| {
        deployment(id, MODEL_A, priority, &sim).replace(
            &format!("priority = {priority}\n"),
            &format!("priority = {priority}\nregion = \"{region}\"\n"),
        )
    };
    let config = format!(
        "{}{}\n[[model_groups]]\nname = \"g\"\ndeployments = [\"east\", \"west\"]\n",
        in_region("east", 1, "us-east-1"),
        in_region("west", 2, "us-west-2"),
    );
    let gw = start_gateway(&config, clock).await;
    let first = raw_post(gw.addr, "/model/g/converse", &[], &converse_body("x")).await;
    assert_eq!(first.headers["x-switchyard-deployment"], "east");
    // us-east-1's one request per minute is spent; us-west-2's is not.
    let second = raw_post(gw.addr, "/model/g/converse", &[], &converse_body("x")).await;
    assert_eq!(second.status, 200);
    assert_eq!(second.headers["x-switchyard-deployment"], "west");
    assert_eq!(sim.counts(MODEL_A).throttles, 1);
}
