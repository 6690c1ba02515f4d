//! The adaptive cooldown as operators see it through the gateway: 10 s, then
//! 30 s, then 60 s for consecutive throttles within 60 s, reset by a success.

use switchyard::clock::ManualClock;
use switchyard::sim::{Fault, SimHandle};

use crate::support::*;

/// A simulator and a gateway whose group `g` tries A (`model-a`) first and
/// B (`model-b`) after, both on `clock`.
async fn primary_and_backup(clock: &std::sync::Arc<ManualClock>) -> (SimHandle, TestGateway) {
    let sim = start_sim(
        vec![sim_model("model-a", None), sim_model("model-b", None)],
        clock.clone(),
    )
    .await;
    let config = format!(
        "{}{}\n[[model_groups]]\nname = \"g\"\ndeployments = [\"a\", \"b\"]\n",
        deployment("a", "model-a", 1, &sim),
        deployment("b", "model-b", 2, &sim)
    );
    let gw = start_gateway(&config, clock.clone()).await;
    (sim, gw)
}

#[tokio::test]
async fn consecutive_throttles_cool_down_10_30_then_60_seconds_and_a_success_resets() {
    let t0 = 5_000_000;
    let clock = ManualClock::new(t0);
    let (sim, gw) = primary_and_backup(&clock).await;

    // Each step: at `at` seconds, a request tries A (its cooldown is over),
    // gets `fault` (or an answer), and leaves A cooling down for `expect` seconds.
    let steps: [(u64, Option<Fault>, u64); 6] = [
        (0, Some(Fault::Throttle), 10),
        (11, Some(Fault::Throttle), 30),
        (42, None, 0),                   // a success clears the history...
        (43, Some(Fault::Throttle), 10), // ...so this is a first throttle again
        (54, Some(Fault::Throttle), 30),
        (85, Some(Fault::Throttle), 60), // third within 60 s (43, 54, 85)
    ];
    for (at, fault, expect) in steps {
        clock.set(t0 + at * 1_000);
        let calls_before = sim.counts("model-a").calls;
        if let Some(f) = fault {
            sim.inject("model-a", f, 1);
        }
        let raw = raw_post(gw.addr, "/model/g/converse", &[], &converse_body("x")).await;
        assert_eq!(raw.status, 200, "the request succeeds at t={at}s");
        assert_eq!(
            sim.counts("model-a").calls,
            calls_before + 1,
            "A was tried first at t={at}s"
        );
        assert_eq!(
            gw.cooldown_ms("g", "a"),
            expect * 1_000,
            "cooldown after the step at t={at}s"
        );
    }
}

/// The built-in cooldowns declare repeated successes idempotent: after the
/// first success on a deployment, the next ones skip the policy call
/// (counted in `switchyard_policy_calls_skipped_total`), and a throttle makes
/// the next success count again, so a success still resets the history.
#[tokio::test]
async fn a_success_after_a_success_skips_the_cooldown_call_and_still_resets_after_a_throttle() {
    let t0 = 5_000_000;
    let clock = ManualClock::new(t0);
    let (sim, gw) = primary_and_backup(&clock).await;
    let counts = || async {
        let metrics = raw_get(gw.addr, "/metrics").await.body_text();
        let value = |name: &str| {
            let line = format!("switchyard_{name}{{group=\"g\",kind=\"cooldown\"}} ");
            metrics
                .lines()
                .find_map(|l| l.strip_prefix(&line)?.parse::<u64>().ok())
                .unwrap_or(0)
        };
        (
            value("policy_calls_total"),
            value("policy_calls_skipped_total"),
        )
    };
    let body = converse_body("x");
    let request = |fault: Option<Fault>| {
        if let Some(f) = fault {
            sim.inject("model-a", f, 1);
        }
        raw_post(gw.addr, "/model/g/converse", &[], &body)
    };

    for _ in 0..5 {
        assert_eq!(request(None).await.status, 200);
    }
    assert_eq!(
        counts().await,
        (1, 4),
        "the first success is judged, the next four are not"
    );

    // A throttle on A (judged), then B answers (its first success: judged).
    assert_eq!(request(Some(Fault::Throttle)).await.status, 200);
    assert_eq!(gw.cooldown_ms("g", "a"), 10_000);
    assert_eq!(counts().await, (3, 4));

    // After the cooldown, A's first success is judged again (it clears the
    // throttle history), the next is skipped...
    clock.set(t0 + 11_000);
    assert_eq!(request(None).await.status, 200);
    assert_eq!(request(None).await.status, 200);
    assert_eq!(counts().await, (4, 5));
    // ...and the history is gone: the next throttle is a first one (10 s),
    // not a second within the window (30 s).
    clock.set(t0 + 12_000);
    assert_eq!(request(Some(Fault::Throttle)).await.status, 200);
    assert_eq!(gw.cooldown_ms("g", "a"), 10_000);
}
