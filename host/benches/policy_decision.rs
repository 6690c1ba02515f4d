//! One policy decision as the gateway makes it: a fresh instance from the
//! pooled, pre-linked template, then `select` over 8 candidates.
//!
//! Run: `cargo bench -p switchyard --bench policy_decision`

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use switchyard::clock::SystemClock;
use switchyard::config::PolicyRuntimeConfig;
use switchyard::policy::{
    builtin, CallOptions, Candidate, Circuit, KvStore, PolicyKind, PolicyRuntime, RequestInfo,
};

fn candidates(n: usize) -> Vec<Candidate> {
    (0..n)
        .map(|i| Candidate {
            deployment: format!("deployment-{i}"),
            priority: (i % 3) as u32 + 1,
            weight: 1,
            in_flight: i as u32,
            cooldown_remaining_ms: if i == 2 { 5_000 } else { 0 },
            recent_throttles: 0,
            last_used_ms: Some(1_700_000_000_000),
            last_throttle_ms: None,
            quota_used_permille: 100,
            success_permille: 1000,
            latency_ewma_ms: 800,
            circuit: Circuit::Closed,
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let clock = SystemClock::shared();
    let runtime = PolicyRuntime::new(&PolicyRuntimeConfig::default(), clock.clone()).unwrap();
    let req = RequestInfo {
        request_id: "bench".into(),
        user: Some("user-1".into()),
        model_group: "claude".into(),
        attempt: 0,
        sequence: 42,
        estimated_tokens: 1_000,
        previous_deployment: None,
        user_last_success: None,
    };
    let candidates = candidates(8);
    let options = CallOptions::default();
    // The default, and the policies that do the most work per call.
    for name in ["priority", "round-robin", "sticky", "hybrid"] {
        let b = builtin::find(PolicyKind::Selection, name).unwrap();
        let policy = runtime
            .load(
                PolicyKind::Selection,
                name,
                b.component,
                &serde_json::json!({}),
                Arc::new(KvStore::new(clock.clone())),
            )
            .unwrap();
        c.bench_function(&format!("select/{name}/8 candidates"), |bench| {
            // A call preempted past its 1 ms deadline on this shared machine
            // faults (and the gateway would use its safe order); count, don't stop.
            bench.iter(|| policy.select(&req, &candidates, &options).is_ok())
        });
    }
}

/// The floor and where it goes: a fixture whose `select` does nothing but
/// return a constant list, so each figure is instantiation and the call's
/// plumbing alone, over no candidates, one, eight, and eight whose ids are
/// empty (the difference is what lowering the ids into the fresh instance
/// costs: one guest `realloc` call each).
fn floor(c: &mut Criterion) {
    let clock = SystemClock::shared();
    let runtime = PolicyRuntime::new(&PolicyRuntimeConfig::default(), clock.clone()).unwrap();
    let bytes = std::fs::read(concat!(env!("SWITCHYARD_POLICY_DIR"), "/garbage.wasm")).unwrap();
    let policy = runtime
        .load(
            PolicyKind::Selection,
            "garbage",
            &bytes,
            &serde_json::json!({}),
            Arc::new(KvStore::new(clock.clone())),
        )
        .unwrap();
    let req = RequestInfo {
        request_id: "bench".into(),
        user: None,
        model_group: "claude".into(),
        attempt: 0,
        sequence: 0,
        estimated_tokens: 0,
        previous_deployment: None,
        user_last_success: None,
    };
    let mut without_strings = candidates(8);
    for c in &mut without_strings {
        c.deployment.clear();
    }
    let inputs = [
        ("0 candidates", candidates(0)),
        ("1 candidate", candidates(1)),
        ("8 candidates", candidates(8)),
        ("8 candidates, empty ids", without_strings),
    ];
    for (label, candidates) in &inputs {
        c.bench_function(&format!("select/constant fixture/{label}"), |bench| {
            bench.iter(|| {
                policy
                    .select(&req, candidates, &CallOptions::default())
                    .is_ok()
            })
        });
    }
}

criterion_group!(benches, bench, floor);
// Faults during the run are visible in the policy's stats; see BENCHMARKS.md.
criterion_main!(benches);
