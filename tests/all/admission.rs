//! Admission control through the real gateway: quotas that keep Bedrock's
//! 429s away, waiting for capacity, a fair share per user, the fair queue's
//! refusals, and circuit breakers.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchyard::clock::{ManualClock, SystemClock};
use switchyard::sim::Fault;

use crate::support::*;

const MODELS: [&str; 3] = ["model-a", "model-b", "model-c"];

/// A gateway whose three deployments each have a 60 RPM quota, in front of
/// a simulator that enforces 60 RPM per model, both on the real clock.
async fn rate_limited_gateway() -> (switchyard::sim::SimHandle, TestGateway) {
    let clock = SystemClock::shared();
    let sim = start_sim(
        MODELS.iter().map(|m| sim_model(m, Some(60))).collect(),
        clock.clone(),
    )
    .await;
    let mut config = String::from("[admission]\nmax_wait_ms = 150000\nmax_per_user = 2\n");
    for (i, (id, model)) in ["a", "b", "c"].iter().zip(MODELS).enumerate() {
        config.push_str(&deployment(id, model, i as u32 + 1, &sim));
        config.push_str("rpm = 60\n");
    }
    config.push_str("[[model_groups]]\nname = \"g\"\ndeployments = [\"a\", \"b\", \"c\"]\n");
    let gw = start_gateway(&config, clock).await;
    (sim, gw)
}

/// The acceptance scenario: a burst of 200 requests from 10 users against
/// three deployments of 60 RPM each (180 per minute in all). The gateway
/// sends each deployment no more than its quota per minute and holds the
/// rest until quota comes back, so no client sees a 429 and Bedrock almost
/// never throttles; the users share the capacity evenly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_beyond_the_quotas_waits_for_capacity_instead_of_failing() {
    let (sim, gw) = rate_limited_gateway().await;
    let gw = Arc::new(gw);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let user = format!("user-{}", i % 10);
        let gw = gw.clone();
        tasks.push(tokio::spawn(async move {
            let raw = raw_request_within(
                gw.addr,
                "POST",
                "/model/g/converse",
                &[("x-switchyard-user", &user)],
                &converse_body("burst"),
                Duration::from_secs(200),
            )
            .await;
            (user, raw.status, started.elapsed())
        }));
    }
    let all = async {
        let mut results = Vec::new();
        for t in tasks {
            results.push(t.await.unwrap());
        }
        results
    };
    let results = tokio::time::timeout(Duration::from_secs(240), all)
        .await
        .expect("the burst finished in time");

    let statuses: HashMap<u16, usize> = results.iter().fold(HashMap::new(), |mut m, r| {
        *m.entry(r.1).or_default() += 1;
        m
    });
    assert_eq!(
        statuses.get(&200),
        Some(&200),
        "every request served: {statuses:?}"
    );

    let (calls, throttles) = MODELS.iter().fold((0, 0), |(c, t), m| {
        let counts = sim.counts(m);
        (c + counts.calls, t + counts.throttles)
    });
    assert!(
        throttles * 20 <= calls,
        "Bedrock's 429s are at most 5% of its calls: {throttles} of {calls}"
    );

    let mut per_user: HashMap<String, usize> = HashMap::new();
    for (user, status, _) in &results {
        if *status == 200 {
            *per_user.entry(user.clone()).or_default() += 1;
        }
    }
    let mean = results.len() as f64 / 10.0;
    for (user, n) in &per_user {
        let off = (*n as f64 - mean).abs() / mean;
        assert!(off <= 0.2, "{user} completed {n}, mean {mean}");
    }
    // The quotas held: no request beyond the first 180 was served before
    // the first minute's quota came back.
    let mut done: Vec<Duration> = results.iter().map(|r| r.2).collect();
    done.sort();
    assert!(
        done[180] >= Duration::from_secs(55),
        "the rest after the minute: {:?}",
        done[180]
    );

    let stats = raw_get(gw.addr, "/queue_stats").await.json();
    assert_eq!(stats["queue"]["wait_ms"]["admitted"], 200);
    assert_eq!(stats["queue"]["running"], 0);
}

/// With no time left to wait, a request that finds every quota spent is
/// answered at once with 429 and `retry-after`, without calling Bedrock.
#[tokio::test]
async fn a_spent_quota_with_no_time_to_wait_fails_at_once_with_retry_after() {
    let clock = ManualClock::new(1_000_000);
    let sim = start_sim(vec![sim_model("model-a", None)], clock.clone()).await;
    let config = format!(
        "{}rpm = 2\n[[model_groups]]\nname = \"g\"\ndeployments = [\"a\"]\n",
        deployment("a", "model-a", 1, &sim)
    );
    let gw = start_gateway(&config, clock.clone()).await;
    for _ in 0..2 {
        let raw = raw_post(gw.addr, "/model/g/converse", &[], &converse_body("x")).await;
        assert_eq!(raw.status, 200);
    }
    let raw = raw_post(gw.addr, "/model/g/converse", &[], &converse_body("x")).await;
    assert_eq!(raw.status, 429);
    assert_eq!(raw.json()["code"], "no_capacity");
    let retry_after: u64 = raw.headers["retry-after"].parse().unwrap();
    assert!((60..=62).contains(&retry_after), "{retry_after}");
    assert_eq!(
        sim.counts("model-a").calls,
        2,
        "the third never reached Bedrock"
    );

    let stats = raw_get(gw.addr, "/model_stats").await.json();
    let a = &stats["stats"]["models"][0];
    assert_eq!(a["rpm_limit"], 2);
    assert_eq!(a["rpm_available"], 0);
    assert_eq!(a["quota_used_percent"], 100.0);
    let metrics = String::from_utf8(raw_get(gw.addr, "/metrics").await.body).unwrap();
    assert!(
        metrics.contains(
            r#"switchyard_admission_skips_total{group="g",deployment="a",reason="request_quota"} 1"#
        ),
        "{metrics}"
    );

    // A minute (and the margin) later the quota is back.
    clock.advance(61_000);
    let raw = raw_post(gw.addr, "/model/g/converse", &[], &converse_body("x")).await;
    assert_eq!(raw.status, 200);
}

/// Bedrock's quota belongs to an account, a region and a model: two
/// deployments of one model in one account (here in two model groups)
/// spend from the same books, while the same model in another account has
/// its own. A config that gives one pool two different quotas is refused.
#[tokio::test]
async fn deployments_of_one_account_region_and_model_share_its_quota() {
    let clock = ManualClock::new(1_000_000);
    let sim = start_sim(vec![sim_model("model-a", None)], clock.clone()).await;
    let config = format!(
        "{}rpm = 2
{}rpm = 2
{}account = \"second\"\nrpm = 2\n\
         [[model_groups]]\nname = \"chat\"\ndeployments = [\"a\"]\n\
         [[model_groups]]\nname = \"agents\"\ndeployments = [\"b\", \"c\"]\n",
        deployment("a", "model-a", 1, &sim),
        deployment("b", "model-a", 1, &sim),
        deployment("c", "model-a", 2, &sim),
    );
    let gw = start_gateway(&config, clock.clone()).await;
    for _ in 0..2 {
        let raw = raw_post(gw.addr, "/model/chat/converse", &[], &converse_body("x")).await;
        assert_eq!(raw.status, 200);
    }
    // `chat` spent the pool that `b` shares: `agents` is served by `c`,
    // the same model in the other account.
    let raw = raw_post(gw.addr, "/model/agents/converse", &[], &converse_body("x")).await;
    assert_eq!(raw.status, 200, "{}", raw.body_text());
    assert_eq!(raw.headers["x-switchyard-deployment"], "c");
    let raw = raw_post(gw.addr, "/model/agents/converse", &[], &converse_body("x")).await;
    assert_eq!(raw.headers["x-switchyard-deployment"], "c");
    // Now both pools are spent.
    let raw = raw_post(gw.addr, "/model/agents/converse", &[], &converse_body("x")).await;
    assert_eq!(raw.status, 429);
    assert_eq!(raw.json()["code"], "no_capacity");
    assert_eq!(sim.counts("model-a").calls, 4);
    let stats = raw_get(gw.addr, "/model_stats").await.json();
    let pools: HashMap<String, (String, u64)> = stats["stats"]["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let id = m["id"].as_str().unwrap().to_owned();
            let pool = m["quota_pool"].as_str().unwrap().to_owned();
            (id, (pool, m["rpm_available"].as_u64().unwrap()))
        })
        .collect();
    let shared = ("default/us-east-1/model-a".to_owned(), 0);
    let other = ("second/us-east-1/model-a".to_owned(), 0);
    assert_eq!(
        pools,
        HashMap::from([
            ("a".into(), shared.clone()),
            ("b".into(), shared),
            ("c".into(), other)
        ])
    );

    let clash = config.replacen("rpm = 2", "rpm = 3", 1);
    let error = switchyard::config::Config::parse(&clash, "clash.toml")
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("`a` and `b` share one Bedrock quota"),
        "{error}"
    );
}

/// Five outages in a row open a deployment's circuit: it is then skipped
/// without being called, shown as `circuit_open`, and probed after `open_ms`.
#[tokio::test]
async fn repeated_outages_open_the_circuit_and_a_probe_closes_it() {
    let clock = ManualClock::new(1_000_000);
    let sim = start_sim(
        vec![sim_model("model-a", None), sim_model("model-b", None)],
        clock.clone(),
    )
    .await;
    let config = format!(
        "{}{}[[model_groups]]\nname = \"g\"\ndeployments = [\"a\", \"b\"]\n[model_groups.policies.cooldown]\nname = \"fixed\"\nparams = {{ cooldown_ms = 1 }}\n",
        deployment("a", "model-a", 1, &sim),
        deployment("b", "model-b", 2, &sim),
    );
    let gw = start_gateway(&config, clock.clone()).await;
    sim.inject("model-a", Fault::Unavailable, 5);
    for _ in 0..5 {
        let raw = raw_post(gw.addr, "/model/g/converse", &[], &converse_body("x")).await;
        assert_eq!(raw.status, 200, "b answers");
        clock.advance(10);
    }
    let stats = raw_get(gw.addr, "/model_stats").await.json();
    let a = &stats["stats"]["models"][0];
    assert_eq!(a["status"], "circuit_open", "{a}");
    let open_ms = a["circuit_open_remaining_ms"].as_u64().unwrap();
    assert!((29_000..=30_000).contains(&open_ms), "{open_ms}");

    let raw = raw_post(gw.addr, "/model/g/converse", &[], &converse_body("x")).await;
    assert_eq!(raw.headers["x-switchyard-deployment"], "b");
    assert_eq!(
        raw.headers["x-switchyard-attempts"], "1",
        "a was skipped, not tried"
    );
    assert_eq!(sim.counts("model-a").calls, 5);

    // After open_ms, one probe goes to a; it succeeds and closes the circuit.
    clock.advance(30_000);
    let raw = raw_post(gw.addr, "/model/g/converse", &[], &converse_body("x")).await;
    assert_eq!(raw.headers["x-switchyard-deployment"], "a");
    let stats = raw_get(gw.addr, "/model_stats").await.json();
    assert_eq!(stats["stats"]["models"][0]["status"], "available");
}

/// A full queue answers 429 at once; a request whose wait runs past its
/// deadline in the queue answers 504 and never reaches Bedrock.
#[tokio::test]
async fn the_fair_queue_refuses_when_full_and_times_out_waiters() {
    let clock = ManualClock::new(1_000_000);
    let mut slow = sim_model("model-a", None);
    slow.ttft_ms = 1_500;
    let sim = start_sim(vec![slow], clock.clone()).await;
    let config = format!(
        "[admission]\nmax_concurrent = 1\nmax_queued = 1\nmax_wait_ms = 300\n{}[[model_groups]]\nname = \"g\"\ndeployments = [\"a\"]\n",
        deployment("a", "model-a", 1, &sim)
    );
    let gw = Arc::new(start_gateway(&config, clock).await);
    let first = {
        let gw = gw.clone();
        tokio::spawn(async move {
            raw_post(
                gw.addr,
                "/model/g/converse",
                &[("x-switchyard-user", "u1")],
                &converse_body("x"),
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let second = {
        let gw = gw.clone();
        tokio::spawn(async move {
            raw_post(
                gw.addr,
                "/model/g/converse",
                &[("x-switchyard-user", "u2")],
                &converse_body("x"),
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let third = raw_post(
        gw.addr,
        "/model/g/converse",
        &[("x-switchyard-user", "u3")],
        &converse_body("x"),
    )
    .await;
    assert_eq!(
        third.status,
        429,
        "{}",
        String::from_utf8_lossy(&third.body)
    );
    assert_eq!(third.json()["code"], "queue_full");
    assert!(third.headers.contains_key("retry-after"));

    let second = second.await.unwrap();
    assert_eq!(second.status, 504);
    assert_eq!(second.json()["code"], "deadline_in_queue");
    assert_eq!(first.await.unwrap().status, 200);
    assert_eq!(sim.counts("model-a").calls, 1);
}

/// `/readyz` turns 503 when every deployment's circuit is open, and names them.
#[tokio::test]
async fn readyz_fails_when_every_circuit_is_open() {
    let clock = ManualClock::new(1_000_000);
    let sim = start_sim(vec![sim_model("model-a", None)], clock.clone()).await;
    let config = format!(
        "{}[[model_groups]]\nname = \"g\"\ndeployments = [\"a\"]\n[model_groups.policies.cooldown]\nname = \"fixed\"\nparams = {{ cooldown_ms = 1 }}\n",
        deployment("a", "model-a", 1, &sim)
    );
    let gw = start_gateway(&config, clock.clone()).await;
    let ready = raw_get(gw.addr, "/readyz").await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json()["ready"], true);
    sim.inject("model-a", Fault::Unavailable, 5);
    for _ in 0..5 {
        let raw = raw_post(gw.addr, "/model/g/converse", &[], &converse_body("x")).await;
        assert_eq!(raw.status, 503);
        clock.advance(10);
    }
    let ready = raw_get(gw.addr, "/readyz").await;
    assert_eq!(ready.status, 503);
    assert_eq!(ready.json()["circuit_open"], serde_json::json!(["a"]));
    let stats = raw_get(gw.addr, "/model_stats").await.json();
    let a = &stats["stats"]["models"][0];
    assert!(
        a["latency_p50_ms"].is_u64() && a["latency_p95_ms"].is_u64(),
        "{a}"
    );
}

/// A request that finds every deployment cooling down waits for the first
/// to come back, within its deadline, instead of failing; one whose deadline
/// comes first fails at once with `retry-after`.
#[tokio::test]
async fn a_request_waits_for_a_cooldown_that_ends_before_its_deadline() {
    let clock = SystemClock::shared();
    let sim = start_sim(vec![sim_model("model-a", None)], clock.clone()).await;
    let config = format!(
        "[admission]\nmax_wait_ms = 5000\n{}[[model_groups]]\nname = \"g\"\ndeployments = [\"a\"]\n\
         [model_groups.policies.selection]\nname = \"priority\"\nparams = {{ skip_threshold_ms = 0 }}\n\
         [model_groups.policies.cooldown]\nname = \"fixed\"\nparams = {{ cooldown_ms = 400 }}\n",
        deployment("a", "model-a", 1, &sim)
    );
    let gw = start_gateway(&config, clock).await;
    sim.inject("model-a", Fault::Throttle, 1);
    let raw = raw_post(gw.addr, "/model/g/converse", &[], &converse_body("x")).await;
    assert_eq!(raw.status, 429, "the only deployment throttled");

    // Cooling down for 400 ms: a request with 100 ms to spare fails (had it
    // waited for the cooldown, it would have been served)...
    let raw = raw_post(
        gw.addr,
        "/model/g/converse",
        &[("x-switchyard-max-wait-ms", "100")],
        &converse_body("x"),
    )
    .await;
    assert_eq!(raw.status, 429);
    assert_eq!(raw.json()["code"], "no_capacity");
    assert!(raw.headers.contains_key("retry-after"));

    // ...and one that may wait is served when the cooldown ends.
    let raw = raw_post(gw.addr, "/model/g/converse", &[], &converse_body("x")).await;
    assert_eq!(raw.status, 200, "{}", String::from_utf8_lossy(&raw.body));
    assert_eq!(
        sim.counts("model-a").calls,
        2,
        "nothing was sent while it cooled down"
    );
}

/// An embeddings request meets the deployment's RPM once per upstream call
/// (Titan takes one text a call), not once per request: with 4 requests a
/// minute, 3 texts are served and 10 are not, and the simulator sees no
/// more than 4 calls in all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_take_a_request_of_quota_per_upstream_call() {
    const TITAN: &str = "amazon.titan-embed-text-v2:0";
    let sim = start_sim(vec![sim_model(TITAN, None)], SystemClock::shared()).await;
    let config = format!(
        "{}rpm = 4\n[[model_groups]]\nname = \"titan\"\ndeployments = [\"t\"]\n",
        deployment("t", TITAN, 1, &sim)
    );
    let gw = start_gateway(&config, SystemClock::shared()).await;
    let embed = |n: usize| {
        let texts: Vec<String> = (0..n).map(|i| format!("text {i}")).collect();
        serde_json::json!({ "model": "titan", "input": texts }).to_string()
    };
    let headers = [("x-switchyard-max-wait-ms", "300")];
    let three = raw_post(gw.addr, "/v1/embeddings", &headers, embed(3).as_bytes()).await;
    assert_eq!(three.status, 200, "{}", three.body_text());
    assert_eq!(three.json()["data"].as_array().unwrap().len(), 3);
    let ten = raw_post(gw.addr, "/v1/embeddings", &headers, embed(10).as_bytes()).await;
    assert_ne!(
        ten.status,
        200,
        "10 calls do not fit 4 a minute: {}",
        ten.body_text()
    );
    let calls = sim.counts(TITAN).calls;
    assert!(
        calls <= 4,
        "{calls} upstream calls within a quota of 4 a minute"
    );
}
