//! Account budgets beyond a minute: what the deployments sharing an
//! `account` may spend in a UTC day and a week. A spent budget sends
//! requests to other accounts until it renews, in one process and across
//! instances sharing Redis.

use std::time::Duration;

use switchyard::clock::{ManualClock, SystemClock};
use switchyard::sim::SimHandle;

use crate::redis_server::RedisServer;
use crate::support::*;

/// Monday 2026-11-30, 12:00 UTC.
const MONDAY_NOON_MS: u64 = 1_795_996_800_000 + 12 * 3_600_000;
const HOUR_MS: u64 = 3_600_000;

/// `a` (account team-a, first) and `b` (team-b) in group `g`; team-a may
/// make `daily_requests` a day.
fn config(sim: &SimHandle, daily_requests: u32, extra: &str) -> String {
    format!(
        "{}account = \"team-a\"\n{}account = \"team-b\"\n[[accounts]]\nname = \"team-a\"\ndaily_requests = {daily_requests}\n[[model_groups]]\nname = \"g\"\ndeployments = [\"a\", \"b\"]\n{extra}",
        deployment("a", "model-a", 1, sim),
        deployment("b", "model-b", 2, sim),
    )
}

async fn served_by(gateway: &TestGateway) -> String {
    let answer = raw_post(gateway.addr, "/model/g/converse", &[], &converse_body("hi")).await;
    assert_eq!(answer.status, 200, "{}", answer.body_text());
    answer.headers["x-switchyard-deployment"].clone()
}

#[tokio::test]
async fn a_spent_daily_budget_sends_requests_to_another_account_until_midnight() {
    let clock = ManualClock::new(MONDAY_NOON_MS);
    let sim = start_sim(
        vec![sim_model("model-a", None), sim_model("model-b", None)],
        clock.clone(),
    )
    .await;
    let gateway = start_gateway(&config(&sim, 3, ""), clock.clone()).await;

    let mut served = Vec::new();
    for _ in 0..5 {
        served.push(served_by(&gateway).await);
    }
    assert_eq!(served, ["a", "a", "a", "b", "b"]);

    let stats = raw_get(gateway.addr, "/model_stats").await.json();
    let a = find_deployment(&stats, "a");
    assert_eq!(a["budget"]["day"]["requests"], 3, "{a}");
    assert_eq!(a["quota_used_percent"], 100.0, "{a}");

    // Still Monday: still spent. Tuesday: team-a again.
    clock.advance(11 * HOUR_MS);
    assert_eq!(served_by(&gateway).await, "b");
    clock.advance(HOUR_MS);
    assert_eq!(served_by(&gateway).await, "a");
}

/// Deployment `id` in `/model_stats`.
fn find_deployment<'a>(stats: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    stats["stats"]["models"]
        .as_array()
        .and_then(|models| models.iter().find(|d| d["id"] == id))
        .unwrap_or_else(|| panic!("no deployment {id} in {stats}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_sharing_redis_spend_one_budget_together() {
    let redis = RedisServer::start();
    let sim = start_sim(
        vec![sim_model("model-a", None), sim_model("model-b", None)],
        SystemClock::shared(),
    )
    .await;
    let prefix = format!("budget-{}", uuid::Uuid::new_v4().simple());
    let state = format!(
        "[state]\nbackend = \"redis\"\nurl = \"{}\"\ninstances = 1\nkey_prefix = \"{prefix}\"\ntimeout_ms = 2000\n",
        redis.url()
    );
    let config = config(&sim, 4, &state);
    let one = start_gateway(&config, SystemClock::shared()).await;
    let two = start_gateway(&config, SystemClock::shared()).await;
    for gateway in [&one, &two] {
        let until = std::time::Instant::now() + Duration::from_secs(10);
        while raw_get(gateway.addr, "/state_stats").await.json()["state"]["degraded"] != false {
            assert!(std::time::Instant::now() < until, "never linked to Redis");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let mut on_a = 0;
    for _ in 0..5 {
        for gateway in [&one, &two] {
            if served_by(gateway).await == "a" {
                on_a += 1;
            }
        }
    }
    // Each instance alone would allow 4 (instances = 1): together, 4.
    assert_eq!(on_a, 4, "team-a's 4 requests a day, across both instances");
    let stats = raw_get(two.addr, "/model_stats").await.json();
    assert_eq!(
        find_deployment(&stats, "a")["budget"]["day"]["requests"],
        4,
        "{stats}"
    );
}

/// Budget spent while Redis was away (decided locally) is added to Redis's
/// sums when it is back. The restarted Redis is empty (as after a crash
/// without persistence), so what it counts then is the outage's spends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budget_spent_during_a_redis_outage_is_booked_when_it_is_back() {
    let mut redis = RedisServer::start();
    let sim = start_sim(
        vec![sim_model("model-a", None), sim_model("model-b", None)],
        SystemClock::shared(),
    )
    .await;
    let prefix = format!("budget-outage-{}", uuid::Uuid::new_v4().simple());
    let state = format!(
        "[state]\nbackend = \"redis\"\nurl = \"{}\"\ninstances = 1\nkey_prefix = \"{prefix}\"\ntimeout_ms = 2000\n",
        redis.url()
    );
    let gateway = start_gateway(&config(&sim, 6, &state), SystemClock::shared()).await;
    let linked = |degraded: bool| {
        let addr = gateway.addr;
        async move {
            let until = std::time::Instant::now() + Duration::from_secs(15);
            while raw_get(addr, "/state_stats").await.json()["state"]["degraded"] != degraded {
                assert!(
                    std::time::Instant::now() < until,
                    "degraded never became {degraded}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    linked(false).await;
    let day = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        / 86_400_000;
    let key = format!("{prefix}:budget:team-a:day:{day}");
    for _ in 0..2 {
        assert_eq!(served_by(&gateway).await, "a");
    }
    assert_eq!(redis.hash_integer(&key, "r"), 2);

    redis.kill();
    for _ in 0..2 {
        assert_eq!(served_by(&gateway).await, "a", "decided locally");
    }
    linked(true).await;
    redis.restart();
    linked(false).await;
    // Booked on re-sync.
    assert_eq!(redis.hash_integer(&key, "r"), 2, "the outage's 2 requests");
    let mut served = Vec::new();
    for _ in 0..5 {
        served.push(served_by(&gateway).await);
    }
    assert_eq!(served, ["a", "a", "a", "a", "b"], "6 a day, 2 counted");
}
