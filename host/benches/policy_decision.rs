//! One policy decision as the gateway makes it: a fresh instance from the
//! pooled, pre-linked template, then `select` over 8 candidates, then the
//! instance dropped and its slot reset.
//!
//! The cases run interleaved: round after round, each case makes a short
//! burst of calls, each call timed on its own. A noisy spell of this shared
//! machine then lands on every case alike instead of on whichever ran during
//! it, so the medians compare side by side. The report gives each case's
//! median, its 10th and 90th percentiles, and the median's ratio to the
//! target.
//!
//! Besides four built-in policies, a fixture whose `select` returns a
//! constant shows the floor: instantiation and the call's plumbing over no
//! candidates, one, eight, and eight with empty ids (the difference is what
//! lowering the ids into the fresh instance costs: one guest `realloc` call
//! each).
//!
//! This machine's speed moves by half between runs (all cases alike, the
//! floor included, with no steal time showing), so a last row times a
//! fixed piece of host work, SHA-256 over 4 KiB, in the same rounds: read
//! a run's figures against it.
//!
//! Run: `cargo bench -p switchyard --bench policy_decision`. Under `cargo
//! test` it makes a few rounds as a smoke test of itself.

use std::sync::Arc;
use std::time::Instant;

use switchyard::clock::SystemClock;
use switchyard::config::PolicyRuntimeConfig;
use switchyard::policy::{
    builtin, CallOptions, Candidate, Circuit, KvStore, Policy, PolicyKind, PolicyRuntime,
    RequestInfo,
};

/// The decision's target, in µs (issue: "a policy decision over 8 candidates").
const TARGET_US: f64 = 10.0;

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

fn request(user: Option<&str>) -> RequestInfo {
    RequestInfo {
        request_id: "bench".into(),
        user: user.map(Into::into),
        model_group: "claude".into(),
        attempt: 0,
        sequence: 42,
        estimated_tokens: 1_000,
        previous_deployment: None,
        user_last_success: None,
    }
}

/// What a case times.
enum Work {
    /// One `select`.
    Decision {
        policy: Box<Policy>,
        req: RequestInfo,
        candidates: Vec<Candidate>,
    },
    /// The machine's speed: SHA-256 over these bytes.
    Reference(Vec<u8>),
}

/// One thing to time, and its times so far (ns).
struct Case {
    label: String,
    work: Work,
    samples_ns: Vec<u64>,
}

impl Case {
    fn decision(
        label: String,
        policy: Policy,
        req: RequestInfo,
        candidates: Vec<Candidate>,
    ) -> Self {
        Self {
            label,
            work: Work::Decision {
                policy: Box::new(policy),
                req,
                candidates,
            },
            samples_ns: Vec::new(),
        }
    }

    fn run(&mut self, calls: usize) {
        let options = CallOptions::default();
        for _ in 0..calls {
            let started = Instant::now();
            match &self.work {
                // A call preempted past its 1 ms deadline on this shared
                // machine faults (the gateway would use its safe order); it
                // is timed all the same, and the constant fixture's answer is
                // refused by design: what it costs is the point.
                Work::Decision {
                    policy,
                    req,
                    candidates,
                } => {
                    let _ = std::hint::black_box(policy.select(req, candidates, &options));
                }
                Work::Reference(bytes) => {
                    use sha2::Digest;
                    std::hint::black_box(sha2::Sha256::digest(std::hint::black_box(bytes)));
                }
            }
            self.samples_ns.push(started.elapsed().as_nanos() as u64);
        }
    }

    fn percentile_us(&self, q: f64) -> f64 {
        let mut v = self.samples_ns.clone();
        v.sort_unstable();
        v[((v.len() - 1) as f64 * q).round() as usize] as f64 / 1000.0
    }
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (rounds, calls_per_round) = if full { (200, 250) } else { (2, 20) };
    let clock = SystemClock::shared();
    let runtime = PolicyRuntime::new(&PolicyRuntimeConfig::default(), clock.clone()).unwrap();
    let load = |name: &str, bytes: &[u8]| {
        runtime
            .load(
                PolicyKind::Selection,
                name,
                bytes,
                &serde_json::json!({}),
                Arc::new(KvStore::new(clock.clone())),
            )
            .unwrap()
    };
    let mut cases = Vec::new();
    // The default, and the policies that do the most work per call.
    for name in ["priority", "round-robin", "sticky", "hybrid"] {
        let b = builtin::find(PolicyKind::Selection, name).unwrap();
        cases.push(Case::decision(
            format!("{name}, 8 candidates"),
            load(name, b.component),
            request(Some("user-1")),
            candidates(8),
        ));
    }
    let constant = std::fs::read(format!(
        "{}/garbage.wasm",
        switchyard::policy::builtin::COMPILED_DIR
    ))
    .unwrap();
    let mut empty_ids = candidates(8);
    for c in &mut empty_ids {
        c.deployment.clear();
    }
    let floors = [
        ("0 candidates", candidates(0)),
        ("1 candidate", candidates(1)),
        ("8 candidates", candidates(8)),
        ("8 candidates, empty ids", empty_ids),
    ];
    for (label, candidates) in floors {
        cases.push(Case::decision(
            format!("constant fixture, {label}"),
            load("constant", &constant),
            request(None),
            candidates,
        ));
    }
    cases.push(Case {
        label: "reference: SHA-256 of 4 KiB (host only)".into(),
        work: Work::Reference(vec![7; 4096]),
        samples_ns: Vec::new(),
    });

    // Warm every template's pool slots and caches.
    for case in &mut cases {
        case.run(200);
        case.samples_ns.clear();
    }
    let started = Instant::now();
    for _ in 0..rounds {
        for case in &mut cases {
            case.run(calls_per_round);
        }
    }
    println!(
        "policy decision: {rounds} rounds x {calls_per_round} calls per case, interleaved, {:.1} s, on {}",
        started.elapsed().as_secs_f64(),
        machine()
    );
    println!(
        "{:<42} {:>10} {:>9} {:>9} {:>10}",
        "case", "median µs", "p10 µs", "p90 µs", "vs target"
    );
    for case in &cases {
        if matches!(case.work, Work::Reference(_)) {
            println!(
                "{:<42} {:>10.2} {:>9.2} {:>9.2}",
                case.label,
                case.percentile_us(0.5),
                case.percentile_us(0.1),
                case.percentile_us(0.9)
            );
            continue;
        }
        let median = case.percentile_us(0.5);
        println!(
            "{:<42} {:>10.2} {:>9.2} {:>9.2} {:>9.2}x",
            case.label,
            median,
            case.percentile_us(0.1),
            case.percentile_us(0.9),
            median / TARGET_US
        );
    }
}

/// The CPU model and count, so a run's figures say what they were measured
/// on: the project's machines change between sessions.
fn machine() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_owned());
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!("{model} ({cpus} CPUs)")
}
