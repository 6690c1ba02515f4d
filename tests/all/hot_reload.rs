//! Changing policies while the gateway serves: uploads through `/admin`,
//! atomic swaps under load, refusals that leave the old version active,
//! automatic rollback, params updates, and file-triggered reloads.

use std::sync::Arc;
use std::time::{Duration, Instant};

use switchyard::clock::ManualClock;

use crate::support::*;

const TOKEN: &str = "test-admin-token-0123456789";

async fn gateway_with_admin(extra: &str) -> (switchyard::sim::SimHandle, TestGateway) {
    let clock = ManualClock::new(1_000_000);
    let sim = start_sim(
        vec![
            sim_model("model-a", None),
            sim_model("model-b", None),
            sim_model("model-c", None),
        ],
        clock.clone(),
    )
    .await;
    let cache = ScratchDir::new("module-cache");
    let config = format!(
        "[admin]\ntoken = \"{TOKEN}\"\n[policy_runtime]\ncache_dir = \"{}\"\nrollback_window_calls = 10\n{extra}\n{}{}{}\n[[model_groups]]\nname = \"g\"\ndeployments = [\"a\", \"b\", \"c\"]\n",
        cache.display(),
        deployment("a", "model-a", 1, &sim),
        deployment("b", "model-b", 2, &sim),
        deployment("c", "model-c", 3, &sim),
    );
    let gw = start_gateway(&config, clock).await.keeping(cache);
    (sim, gw)
}

fn bearer() -> String {
    format!("Bearer {TOKEN}")
}

/// Group `g`'s selection slot.
fn selection_slot(gw: &TestGateway) -> Arc<switchyard::policy::PolicySlot> {
    gw.gateway
        .router()
        .group("g")
        .unwrap()
        .slots
        .selection
        .clone()
}

async fn upload(gw: &TestGateway, kind: &str, bytes: &[u8]) -> RawResponse {
    let auth = bearer();
    raw_request(
        gw.addr,
        "POST",
        &format!("/admin/policies/g/{kind}"),
        &[("authorization", auth.as_str())],
        bytes,
    )
    .await
}

async fn admin_json(gw: &TestGateway, method: &str, path: &str, body: &str) -> RawResponse {
    let auth = bearer();
    raw_request(
        gw.addr,
        method,
        path,
        &[("authorization", auth.as_str())],
        body.as_bytes(),
    )
    .await
}

async fn active_selection(gw: &TestGateway) -> (u64, serde_json::Value) {
    let list = admin_json(gw, "GET", "/admin/policies", "").await;
    assert_eq!(list.status, 200);
    let slot = list.json()["groups"][0]["policies"]["selection"].clone();
    (slot["active"].as_u64().unwrap(), slot)
}

#[tokio::test]
async fn the_admin_api_needs_the_token() {
    let (_sim, gw) = gateway_with_admin("").await;
    let raw = raw_get(gw.addr, "/admin/policies").await;
    assert_eq!(raw.status, 401);
    assert_eq!(raw.json()["code"], "unauthorized");
    let raw = raw_request(
        gw.addr,
        "GET",
        "/admin/policies",
        &[("authorization", "Bearer wrong-token-wrong-token!!")],
        b"",
    )
    .await;
    assert_eq!(raw.status, 401);
    let raw = upload(&gw, "selection", &policy_bytes("priority")).await;
    assert_eq!(raw.status, 201, "{}", String::from_utf8_lossy(&raw.body));
}

#[tokio::test]
async fn a_broken_upload_is_refused_and_the_old_version_keeps_serving() {
    let (_sim, gw) = gateway_with_admin("").await;
    let cases: [(&str, Vec<u8>, &str); 4] = [
        (
            "not wasm",
            b"definitely not a component".to_vec(),
            "not a valid WebAssembly component",
        ),
        (
            "wrong world",
            policy_bytes("cascade"),
            "does not implement world `switchyard:policy/selection@0.2.0`",
        ),
        (
            "wrong version",
            policy_bytes("future-version"),
            "switchyard:policy@0.3.0",
        ),
        (
            "trap on the load check",
            policy_bytes("trap-on-load"),
            "the load check call failed",
        ),
    ];
    for (what, bytes, message) in cases {
        let raw = upload(&gw, "selection", &bytes).await;
        assert_eq!(
            raw.status,
            422,
            "{what}: {}",
            String::from_utf8_lossy(&raw.body)
        );
        let body = raw.json();
        assert_eq!(body["code"], "invalid_policy", "{what}");
        assert!(
            body["message"].as_str().unwrap().contains(message),
            "{what}: {body}"
        );
        let served = raw_post(gw.addr, "/model/g/converse", &[], &converse_body("x")).await;
        assert_eq!(served.status, 200, "{what}: traffic keeps flowing");
        assert_eq!(served.headers["x-switchyard-deployment"], "a");
    }
    let (active, slot) = active_selection(&gw).await;
    assert_eq!(active, 1, "the first version is still active");
    assert_eq!(
        slot["versions"].as_array().unwrap().len(),
        1,
        "nothing was added"
    );
}

#[tokio::test]
async fn a_version_that_faults_on_real_traffic_is_rolled_back() {
    let (_sim, gw) = gateway_with_admin("").await;
    // The trap fixture passes the load check, then traps on every real request.
    let raw = upload(&gw, "selection", &policy_bytes("trap")).await;
    assert_eq!(raw.status, 201, "{}", String::from_utf8_lossy(&raw.body));
    assert_eq!(raw.json()["version"], 2);
    assert_eq!(active_selection(&gw).await.0, 2);

    for _ in 0..10 {
        let served = raw_post(gw.addr, "/model/g/converse", &[], &converse_body("x")).await;
        assert_eq!(served.status, 200, "faults never fail a request");
        assert_eq!(served.headers["x-switchyard-deployment"], "a", "safe order");
    }
    // 10 of its last 10 calls faulted (over the 50% rule): back to version 1.
    let (active, slot) = active_selection(&gw).await;
    assert_eq!(active, 1, "rolled back: {slot}");
    let v2 = slot["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["version"] == 2)
        .unwrap()
        .clone();
    assert_eq!(v2["faults"], 10);
    let metrics = String::from_utf8_lossy(&raw_get(gw.addr, "/metrics").await.body).into_owned();
    assert!(
        metrics.contains(
            r#"switchyard_policy_swaps_total{group="g",kind="selection",reason="auto_rollback"} 1"#
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn activate_rollback_and_params_switch_versions() {
    let (_sim, gw) = gateway_with_admin("").await;
    // Stage a version without activating it.
    let auth = bearer();
    let raw = raw_request(
        gw.addr,
        "POST",
        "/admin/policies/g/selection?activate=false",
        &[("authorization", auth.as_str())],
        &policy_bytes("priority"),
    )
    .await;
    assert_eq!(raw.status, 201);
    assert_eq!(raw.json()["active"], false);
    assert_eq!(active_selection(&gw).await.0, 1);

    let raw = admin_json(
        &gw,
        "POST",
        "/admin/policies/g/selection/activate",
        r#"{"version": 2}"#,
    )
    .await;
    assert_eq!(raw.status, 200, "{}", String::from_utf8_lossy(&raw.body));
    assert_eq!(active_selection(&gw).await.0, 2);

    let raw = admin_json(&gw, "POST", "/admin/policies/g/selection/rollback", "").await;
    assert_eq!(raw.status, 200);
    assert_eq!(raw.json()["active"], 1);
    let raw = admin_json(&gw, "POST", "/admin/policies/g/selection/rollback", "").await;
    assert_eq!(raw.status, 409);
    assert_eq!(raw.json()["code"], "nothing_to_roll_back_to");
    let raw = admin_json(
        &gw,
        "POST",
        "/admin/policies/g/selection/activate",
        r#"{"version": 9}"#,
    )
    .await;
    assert_eq!(raw.status, 404);

    // New params go through the gate too: a threshold so low that A, cooling
    // down, is skipped.
    let raw = admin_json(
        &gw,
        "PUT",
        "/admin/policies/g/selection/params",
        r#"{"skip_threshold_ms": 0}"#,
    )
    .await;
    assert_eq!(raw.status, 200, "{}", String::from_utf8_lossy(&raw.body));
    let (active, slot) = active_selection(&gw).await;
    let current = slot["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["version"] == active)
        .unwrap()
        .clone();
    assert_eq!(current["params"]["skip_threshold_ms"], 0);
    let raw = admin_json(
        &gw,
        "PUT",
        "/admin/policies/g/selection/params",
        r#"{"skip_threshold_ms": "soon"}"#,
    )
    .await;
    assert_eq!(
        raw.status,
        422,
        "bad params are refused: {}",
        String::from_utf8_lossy(&raw.body)
    );
    assert!(
        raw.json()["message"]
            .as_str()
            .unwrap()
            .contains("skip_threshold_ms"),
        "{}",
        raw.json()
    );
}

#[tokio::test]
async fn a_changed_policy_file_is_reloaded_and_a_broken_one_is_refused() {
    let clock = ManualClock::new(1_000_000);
    let sim = start_sim(
        vec![sim_model("model-a", None), sim_model("model-b", None)],
        clock.clone(),
    )
    .await;
    let dir = ScratchDir::new("hot-reload");
    let policy_file = dir.join("selection.wasm");
    std::fs::write(&policy_file, policy_bytes("priority")).unwrap();
    let config = format!(
        "{}{}\n[[model_groups]]\nname = \"g\"\ndeployments = [\"a\", \"b\"]\n[model_groups.policies.selection]\npath = \"{}\"\n",
        deployment("a", "model-a", 1, &sim),
        deployment("b", "model-b", 2, &sim),
        policy_file.display()
    );
    let gw = start_gateway(&config, clock).await;
    let watcher = gw.gateway.watch_policy_files(Duration::from_millis(20));
    let slot = selection_slot(&gw);
    tokio::time::sleep(Duration::from_millis(100)).await;

    // A broken file is refused; version 1 stays.
    std::fs::write(&policy_file, b"garbage bytes").unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(slot.current().number, 1);

    // A good one is swapped in.
    std::fs::write(&policy_file, policy_bytes("garbage")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while slot.current().number == 1 {
        assert!(
            Instant::now() < deadline,
            "the changed file was reloaded in time"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        slot.current().source,
        switchyard::policy::PolicySource::File(policy_file.clone())
    );
    watcher.abort();
}

/// The acceptance test of hot swapping: steady load while the selection
/// policy is swapped back and forth, with no failed request and every answer
/// consistent with the version that was active while it ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapping_under_load_fails_no_request() {
    let (_sim, gw) = gateway_with_admin("").await;
    let gw = Arc::new(gw);
    // Version 2: round-robin spreads over a, b, c; version 1: priority sends all to a.
    let raw = upload(&gw, "selection", &policy_bytes("round-robin")).await;
    assert_eq!(raw.status, 201, "{}", String::from_utf8_lossy(&raw.body));
    let raw = admin_json(&gw, "POST", "/admin/policies/g/selection/rollback", "").await;
    assert_eq!(raw.status, 200);

    let started = Instant::now();
    let rate_per_s = 200u64;
    let duration = Duration::from_secs(10);
    let total = rate_per_s * duration.as_secs();
    // (start, end, deployment) of every request, in µs since `started`.
    let mut tasks = Vec::new();
    let load = {
        let gw = gw.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(Duration::from_micros(1_000_000 / rate_per_s));
            for _ in 0..total {
                ticker.tick().await;
                let gw = gw.clone();
                tasks.push(tokio::spawn(async move {
                    let t0 = started.elapsed().as_micros();
                    let raw =
                        raw_post(gw.addr, "/model/g/converse", &[], &converse_body("x")).await;
                    let t1 = started.elapsed().as_micros();
                    (
                        t0,
                        t1,
                        raw.status,
                        raw.headers.get("x-switchyard-deployment").cloned(),
                    )
                }));
            }
            tasks
        })
    };
    // 20 swaps, evenly spread: priority (v1) ↔ round-robin (v2). Record when
    // each version became active.
    // (asked at, answered at, version) of each swap, in µs since `started`.
    let mut swaps = vec![(0u128, 0u128, 1u64)];
    for i in 0..20 {
        tokio::time::sleep(duration / 21).await;
        let (path, body) = if i % 2 == 0 {
            ("/admin/policies/g/selection/activate", r#"{"version": 2}"#)
        } else {
            ("/admin/policies/g/selection/rollback", "")
        };
        let asked = started.elapsed().as_micros();
        let raw = admin_json(&gw, "POST", path, body).await;
        let answered = started.elapsed().as_micros();
        assert_eq!(raw.status, 200, "{}", String::from_utf8_lossy(&raw.body));
        swaps.push((asked, answered, if i % 2 == 0 { 2 } else { 1 }));
    }
    let tasks = load.await.unwrap();
    let mut failed = 0;
    let mut spread = std::collections::HashMap::new();
    let mut checked_priority = 0;
    for task in tasks {
        let (t0, t1, status, deployment) = task.await.unwrap();
        if status != 200 {
            failed += 1;
            continue;
        }
        let deployment = deployment.expect("deployment header");
        *spread.entry(deployment.clone()).or_insert(0) += 1;
        // The version surely active over the whole request: the last swap
        // answered before it started, and none was under way while it ran.
        let active = swaps
            .iter()
            .rev()
            .find(|(_, answered, _)| *answered <= t0)
            .map(|(_, _, v)| *v);
        let overlapping = swaps
            .iter()
            .any(|(asked, answered, _)| *asked <= t1 && *answered >= t0);
        if !overlapping && active == Some(1) {
            assert_eq!(deployment, "a", "priority sends everything to a");
            checked_priority += 1;
        }
    }
    assert_eq!(failed, 0, "no failed requests");
    assert!(
        checked_priority > 100,
        "many requests ran under priority alone: {checked_priority}"
    );
    for d in ["a", "b", "c"] {
        assert!(
            spread.get(d).copied().unwrap_or(0) > 0,
            "round-robin reached {d}: {spread:?}"
        );
    }
    let faults: u64 = selection_slot(&gw)
        .versions()
        .iter()
        .map(|v| v.faults)
        .sum();
    assert_eq!(faults, 0);
}

async fn push_cli(gw: &TestGateway, file: &str) -> std::process::Output {
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args([
            "policy",
            "push",
            "--gateway",
            &gw.url(),
            "--group",
            "g",
            "--kind",
            "selection",
            file,
        ])
        .env("SWITCHYARD_ADMIN_TOKEN", TOKEN)
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("push finished in time")
        .expect("push ran")
}

#[tokio::test]
async fn the_push_command_uploads_and_activates_or_says_why_not() {
    let (_sim, gw) = gateway_with_admin("").await;
    let out = push_cli(&gw, &policy_path("round-robin")).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["version"], 2);
    assert_eq!(answer["active"], true);
    assert_eq!(active_selection(&gw).await.0, 2);

    let out = push_cli(&gw, &policy_path("cascade")).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("422") && stderr.contains("does not implement world"),
        "{stderr}"
    );
    assert_eq!(active_selection(&gw).await.0, 2, "the active version stays");
}

#[tokio::test]
async fn a_config_reload_swaps_changed_policies_and_reports_the_rest() {
    let clock = ManualClock::new(1_000_000);
    let sim = start_sim(
        vec![sim_model("model-a", None), sim_model("model-b", None)],
        clock.clone(),
    )
    .await;
    let dir = ScratchDir::new("hot-reload");
    let path = dir.join("switchyard.toml");
    let write = |selection: &str, extra_deployment: bool| {
        let mut text = format!(
            "[admin]\ntoken = \"{TOKEN}\"\n{}{}",
            deployment("a", "model-a", 1, &sim),
            deployment("b", "model-b", 2, &sim)
        );
        if extra_deployment {
            text.push_str(&deployment("c", "model-b", 3, &sim));
        }
        text.push_str(&format!(
            "\n[[model_groups]]\nname = \"g\"\ndeployments = [\"a\", \"b\"]\n[model_groups.policies.selection]\n{selection}\n"
        ));
        std::fs::write(&path, text).unwrap();
    };
    write("name = \"priority\"", false);
    let config = switchyard::config::Config::load(&path).unwrap();
    let gateway =
        switchyard::gateway::Gateway::build(&config, clock, &switchyard::gateway::Upstreams::Aws)
            .unwrap()
            .with_config_path(path.clone());
    let slot = gateway.router().group("g").unwrap().slots.selection.clone();

    // Unchanged: nothing to do.
    let report = gateway.reload().await.unwrap();
    assert!(
        report.swapped.is_empty() && report.refused.is_empty(),
        "{report:?}"
    );

    // A new policy with params, and a new deployment (which needs a restart).
    write(
        "name = \"round-robin\"\nparams = { skip_threshold_ms = 500 }",
        true,
    );
    let report = gateway.reload().await.unwrap();
    assert_eq!(report.swapped, vec!["g/selection".to_owned()]);
    assert_eq!(report.needs_restart, vec!["deployments".to_owned()]);
    assert_eq!(slot.current().source.to_string(), "builtin:round-robin");
    assert_eq!(slot.current().params["skip_threshold_ms"], 500);

    // A broken one is refused and the active one stays.
    write(
        "name = \"round-robin\"\nparams = { skip_threshold_ms = -1 }",
        false,
    );
    let report = gateway.reload().await.unwrap();
    assert!(report.swapped.is_empty());
    assert_eq!(report.refused.len(), 1);
    assert!(
        report.refused[0].contains("skip_threshold_ms"),
        "{report:?}"
    );
    assert_eq!(slot.current().params["skip_threshold_ms"], 500);
}

/// Switching back and forth forever keeps a bounded rollback history.
#[tokio::test]
async fn the_rollback_history_is_bounded() {
    let (_sim, gw) = gateway_with_admin("").await;
    assert_eq!(
        upload(&gw, "selection", &policy_bytes("round-robin"))
            .await
            .status,
        201
    );
    let slot = selection_slot(&gw);
    for _ in 0..500 {
        slot.activate(1).unwrap();
        slot.activate(2).unwrap();
    }
    let mut rollbacks = 0;
    while slot.rollback().is_ok() {
        rollbacks += 1;
        assert!(rollbacks <= 1_000, "the history ended");
    }
    assert!(
        (1..=16).contains(&rollbacks),
        "{rollbacks} rollbacks kept of 1,000 activations"
    );
}

/// Many calls of a faulting version, finishing at once on several threads,
/// roll it back once: to the version it replaced, not further. The check
/// (is it still active?) and the swap are one critical section; were they
/// two, a second thread could pass the check before the first swapped and
/// roll the slot back a second time, past a version that never faulted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_racing_on_many_threads_roll_back_once() {
    let (_sim, gw) = gateway_with_admin("").await;
    for _ in 0..2 {
        let answer = upload(&gw, "selection", &policy_bytes("round-robin")).await;
        assert_eq!(answer.status, 201, "{}", answer.body_text());
    }
    let slot = selection_slot(&gw);
    for round in 0..50 {
        // History 1 -> 2 -> 3, with 3 active and faulting.
        slot.activate(2).unwrap();
        slot.activate(3).unwrap();
        let faulting = slot.current();
        assert_eq!(faulting.number, 3);
        let start = std::sync::Barrier::new(8);
        let rollbacks: usize = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..8)
                .map(|_| {
                    scope.spawn(|| {
                        start.wait();
                        (0..50)
                            .filter(|_| slot.observe(&faulting, true).is_some())
                            .count()
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap()).sum()
        });
        assert_eq!(rollbacks, 1, "round {round}: rollbacks");
        assert_eq!(slot.current().number, 2, "round {round}: rolled back to");
        // Back to 1 for the next round's history.
        slot.activate(1).unwrap();
    }
}

/// A reload applies the client keys, the admin token and `require_key`
/// while serving; a changed listen address needs a restart, and is named
/// again by the next reload, since the gateway still listens where it did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_applies_keys_token_and_require_key_and_names_what_needs_a_restart() {
    let clock = switchyard::clock::SystemClock::shared();
    let sim = start_sim(vec![sim_model("model-a", None)], clock.clone()).await;
    let dir = ScratchDir::new("reload-access");
    let path = dir.join("switchyard.toml");
    let (old_key, new_key) = ("sk-old-key-0123456789abcdef", "sk-new-key-0123456789abcdef");
    let (old_token, new_token) = ("old-admin-token-0123456789", "new-admin-token-0123456789");
    let write = |listen: &str, key: &str, token: &str, require_key: bool| {
        // Traces are set up once, at start: the second config's need a restart.
        let traces = if require_key {
            "[observability.otlp]\nendpoint = \"http://127.0.0.1:4318\"\n"
        } else {
            ""
        };
        let text = format!(
            "listen = \"{listen}\"\n[policy_runtime]\ncall_deadline_us = {TEST_CALL_DEADLINE_US}\n[admission]\nmax_wait_ms = 0\n[admin]\ntoken = \"{token}\"\n[observability]\nrequire_key = {require_key}\n{traces}[[api_keys]]\nkey = \"{key}\"\nuser = \"someone\"\n{}\n[[model_groups]]\nname = \"g\"\ndeployments = [\"a\"]\n",
            deployment("a", "model-a", 1, &sim),
        );
        std::fs::write(&path, &text).unwrap();
        text
    };
    let text = write("127.0.0.1:4000", old_key, old_token, false);
    let gw = start_gateway(&text, clock).await;
    gw.gateway.set_config_path(path.clone());
    let converse = |key: &'static str| {
        let addr = gw.addr;
        async move {
            let auth = format!("Bearer {key}");
            let headers = [
                ("authorization", auth.as_str()),
                ("content-type", "application/json"),
            ];
            raw_post(addr, "/model/g/converse", &headers, &converse_body("hi"))
                .await
                .status
        }
    };
    let reload = |token: &'static str| {
        let addr = gw.addr;
        async move {
            let auth = format!("Bearer {token}");
            raw_post(
                addr,
                "/admin/reload",
                &[("authorization", auth.as_str())],
                b"",
            )
            .await
        }
    };
    let metrics = |key: Option<&'static str>| {
        let addr = gw.addr;
        async move {
            let auth = key.map(|k| format!("Bearer {k}"));
            let headers: Vec<(&str, &str)> =
                auth.iter().map(|a| ("authorization", a.as_str())).collect();
            raw_request(addr, "GET", "/metrics", &headers, b"")
                .await
                .status
        }
    };
    assert_eq!(converse(old_key).await, 200);
    assert_eq!(converse(new_key).await, 401);
    assert_eq!(metrics(None).await, 200);

    write("127.0.0.1:4001", new_key, new_token, true);
    let first = reload(old_token).await;
    assert_eq!(first.status, 200, "{}", first.body_text());
    let first = first.json();
    assert_eq!(
        first["applied"],
        serde_json::json!(["admin.token", "api_keys", "observability.require_key"]),
        "{first}"
    );
    assert_eq!(
        first["needs_restart"],
        serde_json::json!(["listen", "observability.otlp"]),
        "{first}"
    );

    assert_eq!(converse(old_key).await, 401);
    assert_eq!(converse(new_key).await, 200);
    assert_eq!(metrics(None).await, 401);
    assert_eq!(metrics(Some(new_key)).await, 200);
    assert_eq!(reload(old_token).await.status, 401);

    let second = reload(new_token).await;
    assert_eq!(second.status, 200, "{}", second.body_text());
    let second = second.json();
    assert_eq!(second["applied"], serde_json::json!([]), "{second}");
    assert_eq!(
        second["needs_restart"],
        serde_json::json!(["listen", "observability.otlp"]),
        "{second}"
    );
}
