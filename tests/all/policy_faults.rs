//! A broken policy never fails a request: traps, endless loops, memory hogs
//! and garbage answers all fall back to the safe order and are counted. A
//! component for the wrong world is refused at load.

use std::sync::Arc;

use switchyard::clock::ManualClock;
use switchyard::config::PolicyRuntimeConfig;
use switchyard::policy::{
    CallOptions, Candidate, Circuit, KvStore, PolicyFault, PolicyKind, PolicyRuntime, RequestInfo,
};

use crate::support::*;

fn candidates(n: usize) -> Vec<Candidate> {
    (0..n)
        .map(|i| Candidate {
            deployment: format!("d{i}"),
            priority: i as u32 + 1,
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
        })
        .collect()
}

fn request() -> RequestInfo {
    RequestInfo {
        request_id: "r".into(),
        user: None,
        model_group: "g".into(),
        attempt: 0,
        sequence: 0,
        estimated_tokens: 10,
        previous_deployment: None,
        user_last_success: None,
    }
}

fn runtime() -> PolicyRuntime {
    let config = PolicyRuntimeConfig {
        call_deadline_us: TEST_CALL_DEADLINE_US,
        ..PolicyRuntimeConfig::default()
    };
    PolicyRuntime::new(&config, ManualClock::new(0)).unwrap()
}

fn load(
    runtime: &PolicyRuntime,
    kind: PolicyKind,
    fixture: &str,
) -> Result<switchyard::policy::Policy, switchyard::policy::LoadError> {
    runtime.load(
        kind,
        fixture,
        &policy_bytes(fixture),
        &serde_json::json!({}),
        Arc::new(KvStore::new(ManualClock::new(0))),
    )
}

#[test]
fn each_faulty_policy_fault_is_classified() {
    let runtime = runtime();
    type IsExpected = fn(&PolicyFault) -> bool;
    let expected: [(&str, IsExpected); 4] = [
        ("trap", |f| matches!(f, PolicyFault::Trap(_))),
        ("spin", |f| matches!(f, PolicyFault::Timeout)),
        ("hog", |f| matches!(f, PolicyFault::OutOfMemory)),
        ("garbage", |f| matches!(f, PolicyFault::BadResult(_))),
    ];
    for (fixture, is_expected) in expected {
        let policy = load(&runtime, PolicyKind::Selection, fixture).expect("fixture loads");
        let fault = policy
            .select(&request(), &candidates(8), &CallOptions::default())
            .expect_err("the fixture faults");
        assert!(is_expected(&fault), "{fixture}: unexpected fault {fault:?}");
        assert_eq!(policy.stats().calls(), 1);
        assert_eq!(policy.stats().faults(), 1);
    }
}

#[test]
fn the_builtin_priority_policy_orders_by_priority_and_skips_hot_deployments() {
    let runtime = runtime();
    let bytes = switchyard::policy::builtin::find(PolicyKind::Selection, "priority")
        .unwrap()
        .component;
    let policy = runtime
        .load(
            PolicyKind::Selection,
            "priority",
            bytes,
            &serde_json::json!({}),
            Arc::new(KvStore::new(ManualClock::new(0))),
        )
        .unwrap();
    let mut c = candidates(4);
    c[0].priority = 3;
    c[1].priority = 1;
    c[2].priority = 2;
    c[3].priority = 1;
    c[2].cooldown_remaining_ms = 2_001;
    c[3].cooldown_remaining_ms = 2_000;
    let (order, report) = policy
        .select(&request(), &c, &CallOptions::default())
        .unwrap();
    assert_eq!(
        order,
        vec![1, 3, 0],
        "by priority; only a cooldown above 2000 ms skips"
    );
    assert!(report.peak_memory_bytes > 0);
}

fn fault_code(fixture: &str) -> &'static str {
    match fixture {
        "trap" => "trap",
        "spin" => "timeout",
        "hog" => "out_of_memory",
        _ => "bad_result",
    }
}

#[tokio::test]
async fn a_faulty_selection_policy_never_fails_a_request() {
    for fixture in ["trap", "spin", "hog", "garbage"] {
        let clock = ManualClock::new(1_000_000);
        let sim = start_sim(
            vec![sim_model("model-a", None), sim_model("model-b", None)],
            clock.clone(),
        )
        .await;
        // b comes first in the config, but a has the better priority: the
        // safe order is by priority.
        let config = format!(
            "{}{}\n[[model_groups]]\nname = \"g\"\ndeployments = [\"b\", \"a\"]\n[model_groups.policies.selection]\npath = \"{}\"\n",
            deployment("b", "model-b", 2, &sim),
            deployment("a", "model-a", 1, &sim),
            policy_path(fixture)
        );
        let gw = start_gateway(&config, clock).await;
        for _ in 0..3 {
            let raw = raw_post(gw.addr, "/model/g/converse", &[], &converse_body("x")).await;
            assert_eq!(
                raw.status,
                200,
                "{fixture}: {}",
                String::from_utf8_lossy(&raw.body)
            );
            assert_eq!(
                raw.headers["x-switchyard-deployment"], "a",
                "{fixture}: safe order"
            );
        }
        let selection = gw
            .gateway
            .router()
            .group("g")
            .unwrap()
            .slots
            .selection
            .current();
        assert_eq!(
            selection.policy.stats().faults(),
            3,
            "{fixture}: faults counted"
        );
        assert_eq!(selection.policy.stats().calls(), 3);
        let metrics = raw_get(gw.addr, "/metrics").await;
        let line = format!(
            "switchyard_policy_faults_total{{group=\"g\",kind=\"selection\",fault=\"{}\"}} 3",
            fault_code(fixture)
        );
        assert!(
            String::from_utf8_lossy(&metrics.body).contains(&line),
            "{fixture}: metrics have `{line}`"
        );
    }
}

#[tokio::test]
async fn after_a_failure_the_fallback_policy_orders_what_is_left() {
    let clock = ManualClock::new(1_000_000);
    let sim = start_sim(
        vec![sim_model("model-a", None), sim_model("model-b", None)],
        clock.clone(),
    )
    .await;
    let config = format!(
        "{}{}\n[[model_groups]]\nname = \"g\"\ndeployments = [\"a\", \"b\"]\n",
        deployment("a", "model-a", 1, &sim),
        deployment("b", "model-b", 2, &sim),
    );
    let gw = start_gateway(&config, clock).await;
    sim.inject("model-a", switchyard::sim::Fault::Internal, 1);
    let raw = raw_post(gw.addr, "/model/g/converse", &[], &converse_body("x")).await;
    assert_eq!(raw.status, 200);
    assert_eq!(raw.headers["x-switchyard-deployment"], "b");
    let fallback = gw
        .gateway
        .router()
        .group("g")
        .unwrap()
        .slots
        .fallback
        .current();
    assert_eq!(fallback.policy.stats().calls(), 1);
    assert_eq!(fallback.policy.stats().faults(), 0);
}

#[test]
fn a_component_for_another_world_is_refused_with_a_clear_message() {
    let runtime = runtime();
    let error = load(&runtime, PolicyKind::Selection, "adaptive").unwrap_err();
    let error = switchyard::error_chain::render(&error);
    assert!(
        error.contains("does not implement world `switchyard:policy/selection@0.2.0`"),
        "{error}"
    );
    assert!(error.contains("cooldown policy"), "{error}");

    let error = load(&runtime, PolicyKind::Selection, "future-version").unwrap_err();
    let error = switchyard::error_chain::render(&error);
    assert!(error.contains("switchyard:policy@0.3.0"), "{error}");
    assert!(error.contains("switchyard:policy@0.2.0"), "{error}");

    let error = runtime
        .load(
            PolicyKind::Selection,
            "junk",
            b"not wasm at all",
            &serde_json::json!({}),
            Arc::new(KvStore::new(ManualClock::new(0))),
        )
        .unwrap_err();
    let error = switchyard::error_chain::render(&error);
    assert!(
        error.contains("not a valid WebAssembly component"),
        "{error}"
    );
}

#[test]
fn a_policy_that_faults_on_the_load_check_is_refused_with_what_it_logged() {
    let runtime = runtime();
    let error = load(&runtime, PolicyKind::Selection, "trap-on-load").unwrap_err();
    let error = switchyard::error_chain::render(&error);
    assert!(
        error.contains("the load check call failed: trap"),
        "{error}"
    );
    assert!(
        error.contains("the policy logged: error: trap-on-load: refusing to run"),
        "{error}"
    );
}

#[tokio::test]
async fn a_gateway_config_naming_a_wrong_world_component_fails_at_start() {
    let clock = ManualClock::new(0);
    let sim = start_sim(vec![sim_model("model-a", None)], clock.clone()).await;
    let config = format!(
        "{}\n[[model_groups]]\nname = \"g\"\ndeployments = [\"a\"]\n[model_groups.policies.selection]\npath = \"{}\"\n",
        deployment("a", "model-a", 1, &sim),
        policy_path("cascade")
    );
    let config = switchyard::config::Config::parse(&config, "test").unwrap();
    let error =
        switchyard::gateway::Gateway::build(&config, clock, &switchyard::gateway::Upstreams::Aws)
            .err()
            .expect("refused");
    let error = switchyard::error_chain::render(&error);
    assert!(
        error.contains("model group `g`, selection policy"),
        "{error}"
    );
    assert!(error.contains("it looks like a fallback policy"), "{error}");
}

/// A policy call's deadline is on the CPU it uses, not on the wall clock:
/// a freshly started gateway answering a burst while every core is busy
/// (its threads waiting their turn mid-call) sees no policy fault. Judged
/// by wall time, such calls faulted with `timeout` (issue 17: the first
/// calls after `./dev serve`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_that_wait_for_a_busy_core_do_not_time_out() {
    use std::sync::atomic::{AtomicBool, Ordering};

    let sim = start_sim(
        vec![sim_model("model-a", None), sim_model("model-b", None)],
        switchyard::clock::SystemClock::shared(),
    )
    .await;
    let config = format!(
        "{}{}[[model_groups]]\nname = \"g\"\ndeployments = [\"a\", \"b\"]\n",
        deployment("a", "model-a", 1, &sim),
        deployment("b", "model-b", 2, &sim),
    );
    let gateway = GatewayProcess::start("busy-cores", &config).await;

    // Twice as many spinning threads as cores: every thread of the gateway
    // loses its core now and then, in the middle of a call too.
    let stop = Arc::new(AtomicBool::new(false));
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let spinners: Vec<_> = (0..cores * 2)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut x = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            })
        })
        .collect();
    let burst: Vec<_> = (0..100)
        .map(|i| {
            let addr = gateway.addr;
            tokio::spawn(async move {
                let user = format!("user-{i}");
                let headers = [("x-switchyard-user", user.as_str())];
                raw_post(addr, "/model/g/converse", &headers, &converse_body("hi"))
                    .await
                    .status
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for task in burst {
        statuses.push(task.await.unwrap());
    }
    stop.store(true, Ordering::Relaxed);
    for s in spinners {
        s.join().unwrap();
    }
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");

    let metrics = String::from_utf8(raw_get(gateway.addr, "/metrics").await.body).unwrap();
    // A selection call a request, and a cooldown judgement a request: made,
    // or skipped because adaptive declares repeated successes idempotent.
    let count = |prefix: &str, kind: &str| -> u64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(prefix) && l.contains(&format!("kind=\"{kind}\"")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    let selections = count("switchyard_policy_calls_total{", "selection");
    let judged = count("switchyard_policy_calls_total{", "cooldown")
        + count("switchyard_policy_calls_skipped_total{", "cooldown");
    assert!(
        selections >= 100 && judged >= 100,
        "a selection call and a cooldown judgement a request: {selections}, {judged}"
    );
    let faults: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("switchyard_policy_faults_total{"))
        .collect();
    assert!(faults.is_empty(), "{faults:?}");
}

/// One call's key-value writes are bounded (each goes to the sibling
/// instances), and the host's words about the writes it refused are lines
/// of the call's log, within its budget: a policy that writes 200 entries
/// of 1 KiB and 20 oversized ones a call stores about 64 KiB, and its log
/// holds at most 16 lines.
#[test]
fn a_policy_that_floods_its_store_is_held_to_a_budget_per_call() {
    let runtime = runtime();
    let kv = Arc::new(KvStore::new(ManualClock::new(0)));
    let policy = runtime
        .load(
            PolicyKind::Selection,
            "kv-flood",
            &policy_bytes("kv-flood"),
            &serde_json::json!({}),
            kv.clone(),
        )
        .expect("fixture loads");
    let (order, report) = policy
        .select(&request(), &candidates(3), &CallOptions::default())
        .expect("writing too much is refused, not a fault");
    assert_eq!(order, [0, 1, 2]);
    let stored = (0..200)
        .filter(|i| kv.get(&format!("k{i}")).is_some())
        .count();
    assert!(
        (1..=64).contains(&stored),
        "{stored} entries of 1 KiB stored in one call"
    );
    assert!(report.logs.len() <= 16, "{} log lines", report.logs.len());
    assert!(
        report
            .logs
            .iter()
            .any(|l| l.level == "warn" && l.message.contains("refused")),
        "{:?}",
        report.logs
    );
}

/// A runtime whose compile cache is in `dir`.
fn runtime_caching_in(dir: &std::path::Path) -> PolicyRuntime {
    let config = PolicyRuntimeConfig {
        call_deadline_us: TEST_CALL_DEADLINE_US,
        compile_cache: true,
        cache_dir: Some(dir.to_owned()),
        ..PolicyRuntimeConfig::default()
    };
    PolicyRuntime::new(&config, ManualClock::new(0)).unwrap()
}

/// The files in `dir`.
fn files_in(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    files.sort();
    files
}

/// The compile cache holds native code the gateway runs: the folder it
/// makes is 0700, a folder others can write is not used, and an entry put
/// in another's place is compiled afresh, not run.
#[cfg(unix)]
#[test]
fn the_compile_cache_runs_only_what_it_wrote_in_a_folder_of_its_own() {
    use std::os::unix::fs::PermissionsExt;
    let scratch = ScratchDir::new("compile-cache");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;

    // Made by the cache: 0700.
    let made = scratch.join("made/policies");
    let runtime = runtime_caching_in(&made);
    load(&runtime, PolicyKind::Selection, "trap").expect("loads");
    assert_eq!(mode(&made), 0o700);
    assert_eq!(files_in(&made).len(), 1, "the trap is cached");

    // Writable by others: not used, nothing written or read there.
    let open = scratch.join("open");
    std::fs::create_dir_all(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let runtime = runtime_caching_in(&open);
    let policy = load(&runtime, PolicyKind::Selection, "trap").expect("compiled in memory");
    assert!(files_in(&open).is_empty(), "{:?}", files_in(&open));
    assert!(policy
        .select(&request(), &candidates(2), &CallOptions::default())
        .is_err());

    // Another entry in the trap's place: the trap is compiled afresh.
    let runtime = runtime_caching_in(&made);
    load(&runtime, PolicyKind::Selection, "hog").expect("loads");
    let files = files_in(&made);
    assert_eq!(files.len(), 2);
    let trap_entry = files
        .iter()
        .find(|f| {
            let name = f.file_name().unwrap().to_str().unwrap();
            name.starts_with(&switchyard::policy::sha256_hex(&policy_bytes("trap")))
        })
        .expect("the trap's entry")
        .clone();
    let hog_entry = files.iter().find(|f| **f != trap_entry).unwrap();
    std::fs::copy(hog_entry, &trap_entry).unwrap();
    let runtime = runtime_caching_in(&made);
    let policy = load(&runtime, PolicyKind::Selection, "trap").expect("loads");
    let fault = policy
        .select(&request(), &candidates(2), &CallOptions::default())
        .expect_err("the trap traps");
    assert!(
        matches!(fault, PolicyFault::Trap(_)),
        "the trap ran as the trap, not the hog put in its place: {fault:?}"
    );
}
