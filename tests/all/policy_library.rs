//! The built-in policy library. Each built-in is called on its own through
//! the policy runtime, with a fixed clock and fixed randomness, on candidate
//! tables that show what defines it; each selection policy routes real
//! requests through the gateway and the simulator; and bad params are
//! refused when a policy loads, with the param named.

use std::collections::HashMap;
use std::sync::Arc;

use switchyard::clock::{Clock, ManualClock};
use switchyard::config::PolicyRuntimeConfig;
use switchyard::policy::{
    builtin, CallOptions, Candidate, Circuit, CooldownDecision, DeploymentInfo, DeploymentTable,
    KvStore, LastSuccess, LoadError, Outcome, OutcomeKind, Policy, PolicyKind, PolicyRuntime,
    RequestInfo, KEEP_RESIDENT_BYTES,
};
use switchyard::sim::Fault;

use crate::support::*;

/// The manual clock's start: late enough that "an hour ago" is positive.
const NOW: u64 = 100_000_000;

/// A runtime on a manual clock, loading built-ins by name.
struct Lab {
    clock: Arc<ManualClock>,
    runtime: PolicyRuntime,
}

impl Lab {
    fn new() -> Self {
        let clock = ManualClock::new(NOW);
        // A generous deadline: these tests are about decisions, and a debug
        // build on a busy machine must not turn one into the safe order.
        let config = PolicyRuntimeConfig {
            call_deadline_us: 200_000,
            ..PolicyRuntimeConfig::default()
        };
        let runtime = PolicyRuntime::new(&config, clock.clone()).unwrap();
        Self { clock, runtime }
    }

    fn try_load(
        &self,
        kind: PolicyKind,
        name: &str,
        params: serde_json::Value,
    ) -> Result<Policy, LoadError> {
        let b = builtin::find(kind, name).unwrap_or_else(|| panic!("no built-in {kind} `{name}`"));
        let kv = Arc::new(KvStore::new(self.clock.clone()));
        self.runtime.load(kind, name, b.component, &params, kv)
    }

    fn load(&self, kind: PolicyKind, name: &str, params: serde_json::Value) -> Policy {
        self.try_load(kind, name, params)
            .unwrap_or_else(|e| panic!("{kind} `{name}` loads: {e}"))
    }

    fn now(&self) -> u64 {
        self.clock.now_ms()
    }
}

/// A healthy, idle deployment.
fn cand(name: &str, priority: u32) -> Candidate {
    Candidate {
        deployment: name.into(),
        priority,
        weight: 1,
        in_flight: 0,
        cooldown_remaining_ms: 0,
        recent_throttles: 0,
        last_used_ms: None,
        last_throttle_ms: None,
        quota_used_permille: 0,
        success_permille: 1000,
        latency_ewma_ms: 0,
        circuit: Circuit::Closed,
    }
}

/// `a`, `b`, `c`... with priorities 1, 2, 3...
fn table(n: usize) -> Vec<Candidate> {
    (0..n)
        .map(|i| cand(&((b'a' + i as u8) as char).to_string(), i as u32 + 1))
        .collect()
}

/// A `host.describe` table of `(deployment, model, region, account)`.
fn described(rows: &[(&str, &str, &str, &str)]) -> DeploymentTable {
    DeploymentTable::new(rows.iter().map(|&(id, model, region, account)| {
        (
            id.to_owned(),
            DeploymentInfo {
                model_id: model.into(),
                region: region.into(),
                account: account.into(),
            },
        )
    }))
}

fn request(sequence: u64) -> RequestInfo {
    RequestInfo {
        request_id: format!("r{sequence}"),
        user: None,
        model_group: "g".into(),
        attempt: 0,
        sequence,
        estimated_tokens: 10,
        previous_deployment: None,
        user_last_success: None,
    }
}

fn seeded(seed: u64) -> CallOptions {
    CallOptions {
        request_id: Some(format!("seed-{seed}")),
        seed: Some(seed),
        deployments: DeploymentTable::default(),
    }
}

/// The deployments `policy` orders for `req`, by name.
fn select(policy: &Policy, req: &RequestInfo, cs: &[Candidate], seed: u64) -> Vec<String> {
    let (order, _) = policy.select(req, cs, &seeded(seed)).expect("select runs");
    order.iter().map(|&i| cs[i].deployment.clone()).collect()
}

fn first(policy: &Policy, req: &RequestInfo, cs: &[Candidate], seed: u64) -> String {
    select(policy, req, cs, seed)
        .into_iter()
        .next()
        .expect("something picked")
}

/// How often each deployment is picked first over `seeds`, the table fixed.
fn first_counts(
    policy: &Policy,
    cs: &[Candidate],
    seeds: std::ops::Range<u64>,
) -> HashMap<String, u32> {
    let mut counts = HashMap::new();
    for seed in seeds {
        *counts
            .entry(first(policy, &request(seed), cs, seed))
            .or_insert(0) += 1;
    }
    counts
}

fn outcome(kind: OutcomeKind, at_ms: u64, retry_after_ms: Option<u64>) -> Outcome {
    Outcome {
        deployment: "a".into(),
        kind,
        latency_ms: 100,
        retry_after_ms,
        at_ms,
    }
}

fn decide(policy: &Policy, o: &Outcome, c: &Candidate, seed: u64) -> CooldownDecision {
    policy
        .on_outcome(o, c, &seeded(seed))
        .expect("on-outcome runs")
        .0
}

fn next(policy: &Policy, remaining: &[Candidate]) -> Vec<String> {
    next_after(policy, &[], remaining)
}

/// `next` after the deployments in `tried` were tried, the last one failing.
fn next_after(policy: &Policy, tried: &[Candidate], remaining: &[Candidate]) -> Vec<String> {
    next_described(policy, tried, remaining, DeploymentTable::default())
}

/// `next_after`, with `host.describe` answering from `deployments`.
fn next_described(
    policy: &Policy,
    tried: &[Candidate],
    remaining: &[Candidate],
    deployments: DeploymentTable,
) -> Vec<String> {
    let failed = outcome(OutcomeKind::Throttled, NOW, None);
    let options = CallOptions {
        deployments,
        ..seeded(0)
    };
    let (order, _) = policy
        .next(&request(0), &failed, tried, remaining, &options)
        .expect("next runs");
    order
        .iter()
        .map(|&i| remaining[i].deployment.clone())
        .collect()
}

// ---- selection ----------------------------------------------------------

#[test]
fn priority_isolates_while_priority_global_benches_on_any_cooldown() {
    let lab = Lab::new();
    let priority = lab.load(PolicyKind::Selection, "priority", serde_json::json!({}));
    let global = lab.load(
        PolicyKind::Selection,
        "priority-global",
        serde_json::json!({}),
    );
    // a was throttled by someone else's burst a moment ago: 1.5 s left.
    let mut cs = table(3);
    cs[0].cooldown_remaining_ms = 1_500;
    cs[2].circuit = Circuit::Open;
    assert_eq!(select(&priority, &request(0), &cs, 0), ["a", "b"]);
    assert_eq!(select(&global, &request(0), &cs, 0), ["b"]);
    // A long cooldown benches it under both.
    cs[0].cooldown_remaining_ms = 2_001;
    assert_eq!(select(&priority, &request(0), &cs, 0), ["b"]);
    // Nothing fit: an empty order, which the gateway answers with 429.
    cs[1].cooldown_remaining_ms = 1;
    assert!(select(&global, &request(0), &cs, 0).is_empty());
}

#[test]
fn round_robin_rotates_by_the_sequence_number() {
    let lab = Lab::new();
    let rr = lab.load(PolicyKind::Selection, "round-robin", serde_json::json!({}));
    let cs = table(3);
    let firsts: Vec<String> = (0..6).map(|s| first(&rr, &request(s), &cs, s)).collect();
    assert_eq!(firsts, ["a", "b", "c", "a", "b", "c"]);
    assert_eq!(select(&rr, &request(1), &cs, 0), ["b", "c", "a"]);
    // b cools down: the rotation goes on over a and c, evenly.
    let mut cs = cs;
    cs[1].cooldown_remaining_ms = 30_000;
    let firsts: Vec<String> = (0..4).map(|s| first(&rr, &request(s), &cs, s)).collect();
    assert_eq!(firsts, ["a", "c", "a", "c"]);
}

#[test]
fn lru_starts_on_the_least_recently_used() {
    let lab = Lab::new();
    let lru = lab.load(PolicyKind::Selection, "lru", serde_json::json!({}));
    let mut cs = table(4);
    cs[0].last_used_ms = Some(NOW - 10);
    cs[1].last_used_ms = Some(NOW - 5_000);
    cs[3].last_used_ms = Some(NOW - 20);
    assert_eq!(select(&lru, &request(0), &cs, 0), ["c", "b", "d", "a"]);
    // Using what it picks cycles through every deployment.
    let mut picks = Vec::new();
    for s in 0..8 {
        lab.clock.advance(1_000);
        let pick = first(&lru, &request(s), &cs, s);
        cs.iter_mut()
            .find(|c| c.deployment == pick)
            .unwrap()
            .last_used_ms = Some(lab.now());
        picks.push(pick);
    }
    assert_eq!(picks, ["c", "b", "d", "a", "c", "b", "d", "a"]);
}

#[test]
fn sticky_keeps_a_user_on_its_last_success_until_a_throttle_or_the_ttl() {
    let lab = Lab::new();
    let sticky = lab.load(
        PolicyKind::Selection,
        "sticky",
        serde_json::json!({"ttl_ms": 60_000}),
    );
    let mut cs = table(3);
    let for_user = |last: Option<(&str, u64)>| RequestInfo {
        user: Some("alice".into()),
        user_last_success: last.map(|(d, at_ms)| LastSuccess {
            deployment: d.into(),
            at_ms,
        }),
        ..request(0)
    };
    // No history: priority order.
    assert_eq!(select(&sticky, &for_user(None), &cs, 0), ["a", "b", "c"]);
    // Alice last succeeded on c: she stays there, request after request.
    let on_c = for_user(Some(("c", NOW)));
    for s in 0..5 {
        lab.clock.advance(10_000);
        assert_eq!(select(&sticky, &on_c, &cs, s), ["c", "a", "b"]);
    }
    // Past the TTL (60 s after her success) the affinity lapses.
    lab.clock.advance(10_001);
    assert_eq!(first(&sticky, &on_c, &cs, 0), "a");
    // Within it, a throttle on c after her success moves her on...
    let on_c = for_user(Some(("c", lab.now())));
    lab.clock.advance(1_000);
    cs[2].last_throttle_ms = Some(lab.now());
    assert_eq!(first(&sticky, &on_c, &cs, 0), "a");
    // ...even once its cooldown is over; a cooldown alone moves her too.
    cs[2].last_throttle_ms = None;
    cs[2].cooldown_remaining_ms = 500;
    assert_eq!(first(&sticky, &on_c, &cs, 0), "a");
    // Her next success elsewhere is her new home.
    let on_b = for_user(Some(("b", lab.now())));
    assert_eq!(select(&sticky, &on_b, &cs, 0), ["b", "a", "c"]);
}

#[test]
fn greedy_starts_on_the_most_quota_headroom() {
    let lab = Lab::new();
    let greedy = lab.load(PolicyKind::Selection, "greedy", serde_json::json!({}));
    let mut cs = table(4);
    for (c, used) in cs.iter_mut().zip([900, 300, 50, 300]) {
        c.quota_used_permille = used;
    }
    assert_eq!(select(&greedy, &request(0), &cs, 0), ["c", "b", "d", "a"]);
}

#[test]
fn least_busy_starts_on_the_fewest_in_flight() {
    let lab = Lab::new();
    let lb = lab.load(PolicyKind::Selection, "least-busy", serde_json::json!({}));
    let mut cs = table(4);
    for (c, n) in cs.iter_mut().zip([3, 1, 7, 1]) {
        c.in_flight = n;
    }
    assert_eq!(select(&lb, &request(0), &cs, 0), ["b", "d", "a", "c"]);
}

#[test]
fn latency_prefers_the_fastest_and_explores_its_share() {
    let lab = Lab::new();
    let mut cs = table(3);
    for (c, (ewma, age)) in cs.iter_mut().zip([(800, 10), (200, 5), (400, 600_000)]) {
        c.latency_ewma_ms = ewma;
        c.last_used_ms = Some(NOW - age);
    }
    let fastest = lab.load(
        PolicyKind::Selection,
        "latency",
        serde_json::json!({"exploration": 0.0}),
    );
    assert_eq!(select(&fastest, &request(0), &cs, 0), ["b", "c", "a"]);
    assert_eq!(first_counts(&fastest, &cs, 0..200)["b"], 200);
    // With 10% exploration, c (the stalest measurement) starts 1 in 10.
    let exploring = lab.load(
        PolicyKind::Selection,
        "latency",
        serde_json::json!({"exploration": 0.1}),
    );
    let counts = first_counts(&exploring, &cs, 0..1_000);
    assert!((60..=140).contains(&counts["c"]), "{counts:?}");
    assert_eq!(counts["b"] + counts["c"], 1_000, "{counts:?}");
    // An unmeasured deployment goes first, so it gets measured.
    cs[0].latency_ewma_ms = 0;
    assert_eq!(first(&fastest, &request(0), &cs, 0), "a");
}

#[test]
fn weighted_picks_follow_the_configured_weights_over_1000_picks() {
    let lab = Lab::new();
    let weighted = lab.load(PolicyKind::Selection, "weighted", serde_json::json!({}));
    let mut cs = table(4);
    for (c, w) in cs.iter_mut().zip([1, 3, 6, 0]) {
        c.weight = w;
    }
    let counts = first_counts(&weighted, &cs, 0..1_000);
    assert!((60..=140).contains(&counts["a"]), "{counts:?}");
    assert!((240..=360).contains(&counts["b"]), "{counts:?}");
    assert!((540..=660).contains(&counts["c"]), "{counts:?}");
    assert!(!counts.contains_key("d"), "weight 0 is never first");
    // The whole order is a fallback list, the standby last.
    let order = select(&weighted, &request(0), &cs, 7);
    assert_eq!(order.len(), 4);
    assert_eq!(order[3], "d");
}

#[test]
fn hybrid_starts_on_the_top_3_and_forces_the_lru_a_tenth_of_the_time() {
    let lab = Lab::new();
    let hybrid = lab.load(PolicyKind::Selection, "hybrid", serde_json::json!({}));
    // a, b, c: full headroom, used a second ago (score ~1.0); d: 8% used,
    // used just now (0.95: 4th, so never first); e: never used (0.6, LRU).
    let mut cs = table(5);
    for c in &mut cs[..3] {
        c.last_used_ms = Some(NOW - 1_000);
    }
    cs[3].quota_used_permille = 80;
    cs[3].last_used_ms = Some(NOW);
    let counts = first_counts(&hybrid, &cs, 0..1_000);
    assert!((70..=130).contains(&counts["e"]), "LRU ~10%: {counts:?}");
    for top in ["a", "b", "c"] {
        assert!(
            (230..=370).contains(&counts[top]),
            "jitter shares: {counts:?}"
        );
    }
    assert!(!counts.contains_key("d"), "outside the top 3: {counts:?}");
    // Without jitter nor forced picks, the order is the scores'.
    let plain = lab.load(
        PolicyKind::Selection,
        "hybrid",
        serde_json::json!({"jitter": 0.0, "lru_share": 0.0}),
    );
    assert_eq!(
        select(&plain, &request(0), &cs, 1),
        ["a", "b", "c", "d", "e"]
    );
}

#[test]
fn hybrid_starves_no_deployment_over_1000_picks() {
    let lab = Lab::new();
    let hybrid = lab.load(PolicyKind::Selection, "hybrid", serde_json::json!({}));
    // d and e are nearly out of quota: their scores never reach the top 3.
    let mut cs = table(5);
    for (c, used) in cs.iter_mut().zip([0, 0, 100, 800, 950]) {
        c.quota_used_permille = used;
    }
    let mut counts: HashMap<String, u32> = HashMap::new();
    for seed in 0..1_000 {
        lab.clock.advance(1_000);
        let pick = first(&hybrid, &request(seed), &cs, seed);
        cs.iter_mut()
            .find(|c| c.deployment == pick)
            .unwrap()
            .last_used_ms = Some(lab.now());
        *counts.entry(pick).or_insert(0) += 1;
    }
    for c in &cs {
        let n = counts.get(&c.deployment).copied().unwrap_or(0);
        assert!(n >= 20, "{} starved: {counts:?}", c.deployment);
    }
    // The nearly-full ones get only the forced LRU picks, a tenth at most.
    assert!(counts["d"] + counts["e"] <= 130, "{counts:?}");
}

// ---- cooldown -----------------------------------------------------------

#[test]
fn adaptive_steps_up_on_repeated_throttles_and_a_success_clears_them() {
    let lab = Lab::new();
    let adaptive = lab.load(PolicyKind::Cooldown, "adaptive", serde_json::json!({}));
    let c = cand("a", 1);
    let mut got = Vec::new();
    for _ in 0..4 {
        lab.clock.advance(1_000);
        let o = outcome(OutcomeKind::Throttled, lab.now(), None);
        got.push(decide(&adaptive, &o, &c, 0).cooldown_ms);
    }
    assert_eq!(got, [10_000, 30_000, 60_000, 60_000]);
    let ok = decide(
        &adaptive,
        &outcome(OutcomeKind::Success, lab.now(), None),
        &c,
        0,
    );
    assert_eq!((ok.cooldown_ms, ok.clear_history), (0, true));
    let o = outcome(OutcomeKind::Throttled, lab.now(), None);
    assert_eq!(decide(&adaptive, &o, &c, 0).cooldown_ms, 10_000);
    // Throttles older than the window no longer count.
    lab.clock.advance(61_000);
    let o = outcome(OutcomeKind::Throttled, lab.now(), None);
    assert_eq!(decide(&adaptive, &o, &c, 0).cooldown_ms, 10_000);
    let o = outcome(OutcomeKind::ClientError, lab.now(), None);
    assert_eq!(decide(&adaptive, &o, &c, 0).cooldown_ms, 0);
    let o = outcome(OutcomeKind::Unavailable, lab.now(), None);
    assert_eq!(decide(&adaptive, &o, &c, 0).cooldown_ms, 5_000);
}

#[test]
fn fixed_cools_every_failure_down_alike() {
    let lab = Lab::new();
    let fixed = lab.load(
        PolicyKind::Cooldown,
        "fixed",
        serde_json::json!({"cooldown_ms": 3_000}),
    );
    let mut c = cand("a", 1);
    for kind in [
        OutcomeKind::Throttled,
        OutcomeKind::Unavailable,
        OutcomeKind::Timeout,
        OutcomeKind::ServerError,
    ] {
        c.recent_throttles += 1;
        let d = decide(&fixed, &outcome(kind, NOW, None), &c, 0);
        assert_eq!(d.cooldown_ms, 3_000, "{kind:?}");
    }
    let d = decide(&fixed, &outcome(OutcomeKind::ClientError, NOW, None), &c, 0);
    assert_eq!(d.cooldown_ms, 0);
    let d = decide(&fixed, &outcome(OutcomeKind::Success, NOW, None), &c, 0);
    assert_eq!((d.cooldown_ms, d.clear_history), (0, true));
}

#[test]
fn exponential_doubles_up_to_its_cap_with_jitter_and_honours_retry_after() {
    let lab = Lab::new();
    let exact = lab.load(
        PolicyKind::Cooldown,
        "exponential",
        serde_json::json!({"base_ms": 1_000, "cap_ms": 30_000, "jitter": 0.0}),
    );
    let throttle = outcome(OutcomeKind::Throttled, NOW, None);
    let with_history = |n: u32| Candidate {
        recent_throttles: n,
        ..cand("a", 1)
    };
    let got: Vec<u64> = (0..8)
        .map(|n| decide(&exact, &throttle, &with_history(n), 0).cooldown_ms)
        .collect();
    assert_eq!(
        got,
        [1_000, 2_000, 4_000, 8_000, 16_000, 30_000, 30_000, 30_000]
    );
    assert_eq!(
        decide(&exact, &throttle, &with_history(1_000), 0).cooldown_ms,
        30_000,
        "no overflow"
    );
    // Bedrock's retry-after is a floor, even above the cap.
    let asked = |ms| outcome(OutcomeKind::Throttled, NOW, Some(ms));
    assert_eq!(
        decide(&exact, &asked(7_000), &with_history(0), 0).cooldown_ms,
        7_000
    );
    assert_eq!(
        decide(&exact, &asked(500), &with_history(3), 0).cooldown_ms,
        8_000
    );
    assert_eq!(
        decide(&exact, &asked(45_000), &with_history(9), 0).cooldown_ms,
        45_000
    );
    // A success forgets the history (the host then resets recent-throttles).
    let ok = decide(
        &exact,
        &outcome(OutcomeKind::Success, NOW, None),
        &with_history(4),
        0,
    );
    assert_eq!((ok.cooldown_ms, ok.clear_history), (0, true));
    let d = decide(
        &exact,
        &outcome(OutcomeKind::ClientError, NOW, None),
        &with_history(0),
        0,
    );
    assert_eq!(d.cooldown_ms, 0);

    // Default jitter (±10%): spread around the backoff, never past the cap.
    let jittered = lab.load(PolicyKind::Cooldown, "exponential", serde_json::json!({}));
    let spread: Vec<u64> = (0..50)
        .map(|seed| decide(&jittered, &throttle, &with_history(2), seed).cooldown_ms)
        .collect();
    assert!(
        spread.iter().all(|ms| (3_600..=4_400).contains(ms)),
        "{spread:?}"
    );
    let distinct: std::collections::HashSet<_> = spread.iter().collect();
    assert!(distinct.len() > 10, "jitter varies: {spread:?}");
    let capped = decide(&jittered, &throttle, &with_history(20), 3).cooldown_ms;
    assert!((54_000..=60_000).contains(&capped), "{capped}");
    // Fixed randomness, fixed answer.
    assert_eq!(
        decide(&jittered, &throttle, &with_history(2), 42).cooldown_ms,
        decide(&jittered, &throttle, &with_history(2), 42).cooldown_ms
    );
}

#[test]
fn error_aware_cools_down_by_kind_and_never_on_a_validation_error() {
    let lab = Lab::new();
    let aware = lab.load(
        PolicyKind::Cooldown,
        "error-aware",
        serde_json::json!({"throttled_ms": 20_000, "server_error_ms": 1_000}),
    );
    let c = cand("a", 1);
    let got: Vec<u64> = [
        OutcomeKind::Throttled,
        OutcomeKind::Unavailable,
        OutcomeKind::Timeout,
        OutcomeKind::ServerError,
        OutcomeKind::ClientError,
        OutcomeKind::Success,
    ]
    .into_iter()
    .map(|k| decide(&aware, &outcome(k, NOW, None), &c, 0).cooldown_ms)
    .collect();
    assert_eq!(got, [20_000, 5_000, 5_000, 1_000, 0, 0]);
    // However often a bad request comes, the deployment is never benched.
    let hammered = Candidate {
        recent_throttles: 50,
        ..cand("a", 1)
    };
    let d = decide(
        &aware,
        &outcome(OutcomeKind::ClientError, NOW, None),
        &hammered,
        0,
    );
    assert_eq!((d.cooldown_ms, d.clear_history), (0, false));
    // And no config can make it.
    let err = lab
        .try_load(
            PolicyKind::Cooldown,
            "error-aware",
            serde_json::json!({"client_error_ms": 10_000}),
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown field `client_error_ms`"), "{err}");
}

// ---- fallback -----------------------------------------------------------

#[test]
fn cascade_tries_what_is_left_by_priority_and_never_gives_up() {
    let lab = Lab::new();
    let cascade = lab.load(PolicyKind::Fallback, "cascade", serde_json::json!({}));
    let mut cs = table(4);
    cs[0].priority = 5;
    cs[1].cooldown_remaining_ms = 60_000;
    cs[2].circuit = Circuit::Open;
    assert_eq!(next(&cascade, &cs), ["d", "a"]);
    for c in &mut cs {
        c.cooldown_remaining_ms = 30_000;
    }
    cs[0].cooldown_remaining_ms = 5_000;
    assert_eq!(next(&cascade, &cs), ["a", "b", "c", "d"]);
}

#[test]
fn spread_takes_one_deployment_per_region_and_account_in_turn() {
    let lab = Lab::new();
    let spread = lab.load(PolicyKind::Fallback, "spread", serde_json::json!({}));
    let runs_at = described(&[
        ("east-a-1", "m", "us-east-1", "a"),
        ("east-a-2", "m", "us-east-1", "a"),
        ("east-a-3", "m", "us-east-1", "a"),
        ("west-a", "m", "us-west-2", "a"),
        ("east-b", "m", "us-east-1", "b"),
        ("east-a-6", "m", "us-east-1", "a"),
    ]);
    let cs = [
        cand("east-a-2", 2),
        cand("east-a-3", 3),
        cand("west-a", 4),
        cand("east-b", 5),
        cand("east-a-6", 6),
    ];
    assert_eq!(
        next_described(&spread, &[], &cs, runs_at.clone()),
        ["east-a-2", "west-a", "east-b", "east-a-3", "east-a-6"]
    );
    // After a failure in (us-east-1, a), other regions and accounts come first.
    let failed = cand("east-a-1", 1);
    assert_eq!(
        next_described(&spread, &[failed], &cs, runs_at),
        ["west-a", "east-b", "east-a-2", "east-a-3", "east-a-6"]
    );
}

#[test]
fn same_model_first_keeps_a_models_regions_before_the_next_model() {
    let lab = Lab::new();
    let smf = lab.load(
        PolicyKind::Fallback,
        "same-model-first",
        serde_json::json!({}),
    );
    let runs_at = described(&[
        ("haiku-east-1", "haiku", "us-east-1", "default"),
        ("sonnet-east", "sonnet", "us-east-1", "default"),
        ("haiku-east", "haiku", "us-east-1", "default"),
        ("sonnet-west", "sonnet", "us-west-2", "default"),
        ("haiku-west", "haiku", "us-west-2", "default"),
        ("sonnet-eu", "sonnet", "eu-west-1", "default"),
    ]);
    let cs = [
        cand("sonnet-east", 2),
        cand("haiku-east", 3),
        cand("sonnet-west", 4),
        cand("haiku-west", 5),
        cand("sonnet-eu", 6),
    ];
    // cascade would go sonnet, haiku, sonnet...; this keeps sonnet together.
    assert_eq!(
        next_described(&smf, &[], &cs, runs_at.clone()),
        [
            "sonnet-east",
            "sonnet-west",
            "sonnet-eu",
            "haiku-east",
            "haiku-west"
        ]
    );
    // After haiku failed in us-east-1: haiku's other regions first, then the
    // same region again, and only then another model.
    let failed = cand("haiku-east-1", 1);
    assert_eq!(
        next_described(&smf, &[failed], &cs, runs_at),
        [
            "haiku-west",
            "haiku-east",
            "sonnet-east",
            "sonnet-west",
            "sonnet-eu"
        ]
    );
}

// ---- params -------------------------------------------------------------

#[test]
fn every_builtin_loads_with_its_defaults() {
    let lab = Lab::new();
    for b in builtin::ALL {
        lab.load(b.kind, b.name, serde_json::json!({}));
    }
    let names: Vec<&str> = builtin::ALL.iter().map(|b| b.name).collect();
    assert_eq!(names.len(), 17, "{names:?}");
}

/// The gateway keeps a policy's first 64 KiB page resident between calls; a
/// built-in that outgrows it (a bigger stack, arena or data) pays page
/// faults on every call and hands pages back to the kernel after it.
#[test]
fn every_builtin_decides_over_8_candidates_within_the_memory_kept_resident() {
    let lab = Lab::new();
    let cs = table(8);
    let rows: Vec<(&str, &str, &str, &str)> = cs
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let region = ["us-east-1", "us-west-2"][i % 2];
            (c.deployment.as_str(), "model", region, "acct")
        })
        .collect();
    let options = CallOptions {
        deployments: described(&rows),
        ..seeded(0)
    };
    let failed = outcome(OutcomeKind::Throttled, NOW, None);
    for b in builtin::ALL {
        let policy = lab.load(b.kind, b.name, serde_json::json!({}));
        let report = match b.kind {
            PolicyKind::Selection => policy.select(&request(0), &cs, &options).map(|r| r.1),
            PolicyKind::Cooldown => policy.on_outcome(&failed, &cs[0], &options).map(|r| r.1),
            PolicyKind::Fallback => policy
                .next(&request(1), &failed, &cs[..1], &cs[1..], &options)
                .map(|r| r.1),
        }
        .unwrap_or_else(|fault| panic!("{} faulted: {fault}", b.name));
        assert!(
            report.peak_memory_bytes > 0 && report.peak_memory_bytes <= KEEP_RESIDENT_BYTES,
            "{} used {} bytes of memory; {KEEP_RESIDENT_BYTES} are kept resident",
            b.name,
            report.peak_memory_bytes
        );
    }
}

#[test]
fn an_unknown_param_is_refused_at_load_by_every_builtin() {
    let lab = Lab::new();
    for b in builtin::ALL {
        let err = lab
            .try_load(b.kind, b.name, serde_json::json!({"skip_treshold_ms": 1}))
            .expect_err("an unknown param is refused")
            .to_string();
        assert!(
            err.contains("the load check call failed")
                && err.contains("invalid params: unknown field `skip_treshold_ms`"),
            "{}: {err}",
            b.name
        );
    }
}

#[test]
fn a_bad_param_is_refused_at_load_with_its_name() {
    let lab = Lab::new();
    let cases = [
        (
            "priority",
            r#"{"skip_threshold_ms": "soon"}"#,
            "skip_threshold_ms",
        ),
        (
            "round-robin",
            r#"{"skip_threshold_ms": -1}"#,
            "skip_threshold_ms",
        ),
        ("sticky", r#"{"ttl_ms": 0}"#, "ttl_ms"),
        ("latency", r#"{"exploration": 1.5}"#, "exploration"),
        ("hybrid", r#"{"lru_share": "often"}"#, "lru_share"),
        ("hybrid", r#"{"top_k": 0}"#, "top_k"),
        ("hybrid", r#"{"jitter": 1.0}"#, "jitter"),
        ("hybrid", r#"{"w_quota": 0, "w_recency": 0}"#, "w_quota"),
        ("adaptive", r#"{"steps_ms": []}"#, "steps_ms"),
        ("adaptive", r#"{"steps_ms": [1000, "x"]}"#, "steps_ms"),
        ("fixed", r#"{"cooldown_ms": 1.5}"#, "cooldown_ms"),
        (
            "exponential",
            r#"{"base_ms": 5000, "cap_ms": 1000}"#,
            "cap_ms",
        ),
        ("exponential", r#"{"jitter": -0.1}"#, "jitter"),
        ("error-aware", r#"{"timeout_ms": null}"#, "timeout_ms"),
        (
            "cascade",
            r#"{"skip_threshold_ms": true}"#,
            "skip_threshold_ms",
        ),
        (
            "priority-global",
            r#"{"skip_threshold_ms": 0}"#,
            "skip_threshold_ms",
        ),
    ];
    for (name, params, param) in cases {
        let b = builtin::ALL.iter().find(|b| b.name == name).unwrap();
        let params: serde_json::Value = serde_json::from_str(params).unwrap();
        let err = lab
            .try_load(b.kind, name, params.clone())
            .expect_err("refused")
            .to_string();
        assert!(
            err.contains("the policy logged: error: invalid params:")
                && err.contains(&format!("`{param}`")),
            "{name} {params}: {err}"
        );
    }
}

#[tokio::test]
async fn a_gateway_config_with_a_bad_param_fails_at_start_naming_it() {
    let clock = ManualClock::new(NOW);
    let sim = start_sim(vec![sim_model("model-a", None)], clock.clone()).await;
    let config = format!(
        "{}\n[[model_groups]]\nname = \"g\"\ndeployments = [\"a\"]\n\
         [model_groups.policies.selection]\nname = \"round-robin\"\nparams = {{ skip_threshold_ms = \"soon\" }}\n",
        deployment("a", "model-a", 1, &sim),
    );
    let config = switchyard::config::Config::parse(&config, "test").unwrap();
    let error =
        switchyard::gateway::Gateway::build(&config, clock, &switchyard::gateway::Upstreams::Aws)
            .err()
            .expect("refused");
    let error = switchyard::error_chain::render(&error);
    assert!(error.contains("model group `g`"), "{error}");
    assert!(error.contains("selection policy"), "{error}");
    assert!(error.contains("`skip_threshold_ms`"), "{error}");
    assert!(error.contains("expected u64"), "{error}");
}

// ---- end to end ---------------------------------------------------------

/// How each selection policy is configured for the end-to-end run, and where
/// six sequential requests (one every second, all succeeding) should land.
fn expected_routes() -> Vec<(&'static str, &'static str, Option<[&'static str; 6]>)> {
    vec![
        ("priority", "", Some(["a"; 6])),
        ("priority-global", "", Some(["a"; 6])),
        ("round-robin", "", Some(["a", "b", "c", "a", "b", "c"])),
        ("lru", "", Some(["a", "b", "c", "a", "b", "c"])),
        ("greedy", "", Some(["a"; 6])),
        ("least-busy", "", Some(["a"; 6])),
        // Only b has weight.
        ("weighted", "", Some(["b"; 6])),
        // Every pick forced to the least recently used.
        (
            "hybrid",
            "lru_share = 1.0",
            Some(["a", "b", "c", "a", "b", "c"]),
        ),
        // Measured latencies on loopback are not predictable.
        ("latency", "exploration = 0.0", None),
        // Covered by its own test below.
        ("sticky", "", None),
    ]
}

fn e2e_config(sim: &switchyard::sim::SimHandle, policy: &str, params: &str) -> String {
    // Weights matter only to `weighted`.
    format!(
        "[policy_runtime]\ncall_deadline_us = 200000\n{}weight = 0\n{}weight = 1\n{}weight = 0\n\
         [[model_groups]]\nname = \"g\"\ndeployments = [\"a\", \"b\", \"c\"]\n\
         [model_groups.policies.selection]\nname = \"{policy}\"\nparams = {{ {params} }}\n",
        deployment("a", "model-a", 1, sim),
        deployment("b", "model-b", 2, sim),
        deployment("c", "model-c", 3, sim),
    )
}

async fn converse(gw: &TestGateway, user: &str) -> RawResponse {
    raw_post(
        gw.addr,
        "/model/g/converse",
        &[("x-switchyard-user", user)],
        &converse_body("hello"),
    )
    .await
}

#[tokio::test]
async fn every_selection_policy_routes_real_requests() {
    let clock = ManualClock::new(NOW);
    let sim = start_sim(
        vec![
            sim_model("model-a", None),
            sim_model("model-b", None),
            sim_model("model-c", None),
        ],
        clock.clone(),
    )
    .await;
    let routes = expected_routes();
    let selection: Vec<&str> = builtin::ALL
        .iter()
        .filter(|b| b.kind == PolicyKind::Selection)
        .map(|b| b.name)
        .collect();
    assert_eq!(
        {
            let mut s = selection.clone();
            s.sort();
            s
        },
        {
            let mut r: Vec<&str> = routes.iter().map(|r| r.0).collect();
            r.sort();
            r
        },
        "every selection built-in is covered"
    );
    for (policy, params, expected) in routes {
        let gw = start_gateway(&e2e_config(&sim, policy, params), clock.clone()).await;
        let mut landed = Vec::new();
        for _ in 0..6 {
            clock.advance(1_000);
            let raw = converse(&gw, "u1").await;
            assert_eq!(
                raw.status,
                200,
                "{policy}: {}",
                String::from_utf8_lossy(&raw.body)
            );
            assert_eq!(raw.headers["x-switchyard-attempts"], "1", "{policy}");
            landed.push(raw.headers["x-switchyard-deployment"].clone());
        }
        assert!(
            landed.iter().all(|d| ["a", "b", "c"].contains(&d.as_str())),
            "{policy}: {landed:?}"
        );
        if let Some(expected) = expected {
            assert_eq!(landed, expected, "{policy}");
        }
        let slot = &gw.gateway.router().group("g").unwrap().slots.selection;
        let current = slot.current();
        let stats = current.policy.stats();
        assert_eq!(
            (stats.calls(), stats.faults()),
            (6, 0),
            "{policy}: every request decided by the policy"
        );
    }
}

#[tokio::test]
async fn sticky_keeps_a_user_where_it_last_succeeded_through_the_gateway() {
    let clock = ManualClock::new(NOW);
    let sim = start_sim(
        vec![
            sim_model("model-a", None),
            sim_model("model-b", None),
            sim_model("model-c", None),
        ],
        clock.clone(),
    )
    .await;
    let gw = start_gateway(&e2e_config(&sim, "sticky", ""), clock.clone()).await;
    let landed = |raw: &RawResponse| raw.headers["x-switchyard-deployment"].clone();
    // Alice starts on the primary and stays.
    for _ in 0..2 {
        clock.advance(1_000);
        assert_eq!(landed(&converse(&gw, "alice").await), "a");
    }
    // a throttles her: she falls back to b, and succeeds there.
    sim.inject("model-a", Fault::Throttle, 1);
    clock.advance(1_000);
    let raw = converse(&gw, "alice").await;
    assert_eq!((raw.status, landed(&raw)), (200, "b".to_owned()));
    assert_eq!(raw.headers["x-switchyard-attempts"], "2");
    // a's cooldown ends, but alice stays on b, where her cache is warm...
    clock.advance(20_000);
    assert_eq!(gw.cooldown_ms("g", "a"), 0);
    for _ in 0..3 {
        clock.advance(1_000);
        assert_eq!(landed(&converse(&gw, "alice").await), "b");
    }
    // ...while a new user starts on the primary.
    assert_eq!(landed(&converse(&gw, "bob").await), "a");
    // Past the TTL (5 minutes) alice goes back to the priority order.
    clock.advance(301_000);
    assert_eq!(landed(&converse(&gw, "alice").await), "a");
}
