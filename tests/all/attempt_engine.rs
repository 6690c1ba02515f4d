//! One attempt engine: the live gateway (manual clock, simulator) and
//! `switchyard policy simulate` try the same deployments in the same order
//! for every request of one scripted run, whichever built-in selection
//! policy routes it. A policy tested offline behaves as it will in
//! production.

use std::collections::BTreeMap;

use switchyard::authoring::simulate::{self, Timeline};
use switchyard::clock::ManualClock;
use switchyard::config::PolicyRef;
use switchyard::outcome::OutcomeKind;
use switchyard::policy::PolicyKind;
use switchyard::sim::{Fault, SimHandle};

use crate::support::*;

/// Where `policy simulate`'s clock starts; the gateway's starts there too.
const START_MS: u64 = 1_000_000;

/// The field's story, scripted: the primary is throttled for half a
/// minute, the secondary fails for part of it and the third errs briefly.
/// Latencies are 0, as the gateway's manual clock does not move during a
/// request; the throttles carry the simulator's one-second `retry-after`.
const TIMELINE: &str = r#"
duration_s = 60
request_every_ms = 1000
user = "alice"
latency_ms = 0

[[deployments]]
id = "a"
model_id = "model-a"
priority = 1

[[deployments]]
id = "b"
model_id = "model-b"
priority = 2

[[deployments]]
id = "c"
model_id = "model-c"
priority = 3

[[windows]]
deployment = "a"
from_s = 5
until_s = 35
outcome = "throttled"
retry_after_ms = 1000

[[windows]]
deployment = "b"
from_s = 10
until_s = 25
outcome = "unavailable"

[[windows]]
deployment = "c"
from_s = 15
until_s = 20
outcome = "server_error"
"#;

const SELECTION_POLICIES: [&str; 10] = [
    "priority",
    "priority-global",
    "hybrid",
    "lru",
    "sticky",
    "round-robin",
    "least-busy",
    "greedy",
    "weighted",
    "latency",
];

fn fault(kind: OutcomeKind) -> Fault {
    match kind {
        OutcomeKind::Throttled => Fault::Throttle,
        OutcomeKind::Unavailable => Fault::Unavailable,
        OutcomeKind::ServerError => Fault::Internal,
        other => panic!("no simulator fault scripts {other:?}"),
    }
}

/// The deployments each request tried, through `policy simulate`.
fn simulated(timeline: &Timeline, selection: &str, fallback: &str) -> Vec<Vec<String>> {
    let overrides = BTreeMap::from([
        (PolicyKind::Selection, policy_ref(selection)),
        (PolicyKind::Fallback, policy_ref(fallback)),
    ]);
    let report = simulate::run(timeline, &overrides).expect("the timeline runs");
    report
        .requests
        .iter()
        .map(|r| r.attempts.iter().map(|a| a.deployment.clone()).collect())
        .collect()
}

fn policy_ref(name: &str) -> PolicyRef {
    PolicyRef {
        name: Some(name.into()),
        path: None,
        params: serde_json::json!({}),
    }
}

/// The deployments each request tried, through a live gateway whose
/// simulator answers as the timeline scripts, on a manual clock set to
/// each request's time.
async fn live(timeline: &Timeline, selection: &str, fallback: &str) -> Vec<Vec<String>> {
    let clock = ManualClock::new(START_MS);
    let models: Vec<&str> = timeline
        .deployments
        .iter()
        .map(|d| d.model_id.as_str())
        .collect();
    let sim = start_sim(
        models.iter().map(|m| sim_model(m, None)).collect(),
        clock.clone(),
    )
    .await;
    // Same seeds as `policy simulate`; no breaker, which the offline runs
    // do not model.
    let mut config = String::from(
        "[policy_runtime]\nseed = 0\n[admission.breaker]\nconsecutive_failures = 1000000\n",
    );
    for d in &timeline.deployments {
        config.push_str(&deployment(&d.id, &d.model_id, d.priority, &sim));
    }
    config.push_str(&format!(
        "[[model_groups]]\nname = \"g\"\ndeployments = [\"a\", \"b\", \"c\"]\n\
         [model_groups.policies.selection]\nname = \"{selection}\"\n\
         [model_groups.policies.fallback]\nname = \"{fallback}\"\n"
    ));
    let gw = start_gateway(&config, clock.clone()).await;
    let user = timeline.user.clone().unwrap();
    let mut tried = Vec::new();
    let every = timeline.request_every_ms;
    for offset_ms in (0..timeline.duration_s * 1000).step_by(every as usize) {
        clock.set(START_MS + offset_ms);
        let t = offset_ms as f64 / 1000.0;
        for d in &timeline.deployments {
            let window = timeline
                .windows
                .iter()
                .rev()
                .find(|w| w.deployment == d.id && w.from_s <= t && t < w.until_s);
            if let Some(w) = window {
                sim.inject(&d.model_id, fault(w.outcome), 1);
            }
        }
        let before = calls(&sim, &models);
        let headers = [
            ("x-switchyard-user", user.as_str()),
            ("x-switchyard-max-wait-ms", "0"),
        ];
        raw_post(gw.addr, "/model/g/converse", &headers, &converse_body("hi")).await;
        let after = calls(&sim, &models);
        // Each deployment is tried at most once a request: the ones whose
        // count moved, in the order of their latest call.
        let mut called: Vec<(u64, String)> = timeline
            .deployments
            .iter()
            .zip(before.iter().zip(&after))
            .filter(|(_, (b, a))| a.0 > b.0)
            .map(|(d, (_, a))| (a.1, d.id.clone()))
            .collect();
        called.sort();
        tried.push(called.into_iter().map(|(_, id)| id).collect());
        for m in &models {
            sim.clear_injected(m);
        }
    }
    tried
}

/// (calls, number of the latest call) of each model.
fn calls(sim: &SimHandle, models: &[&str]) -> Vec<(u64, u64)> {
    models
        .iter()
        .map(|m| {
            let c = sim.counts(m);
            (c.calls, c.last_call)
        })
        .collect()
}

#[tokio::test]
async fn the_gateway_and_policy_simulate_try_the_same_deployments_for_every_request() {
    let timeline: Timeline = toml::from_str(TIMELINE).unwrap();
    let mut fallbacks_seen = 0;
    for selection in SELECTION_POLICIES {
        let offline = simulated(&timeline, selection, "cascade");
        let online = live(&timeline, selection, "cascade").await;
        assert_eq!(offline.len(), 60);
        for (i, (off, on)) in offline.iter().zip(&online).enumerate() {
            assert_eq!(
                off, on,
                "`{selection}`, request {i} (at {i} s): simulate tried {off:?}, the gateway {on:?}"
            );
        }
        fallbacks_seen += offline.iter().filter(|t| t.len() > 1).count();
    }
    // The run exercises the fallback, not only first choices.
    assert!(fallbacks_seen > 10, "{fallbacks_seen}");

    // The fallback policies too, behind the default selection.
    for fallback in ["spread", "same-model-first"] {
        let offline = simulated(&timeline, "priority", fallback);
        let online = live(&timeline, "priority", fallback).await;
        assert_eq!(offline, online, "fallback `{fallback}`");
    }
}
