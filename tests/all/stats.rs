//! What operators look at: `/model_stats` and `/cooldowns`.

use switchyard::clock::ManualClock;
use switchyard::sim::Fault;

use crate::support::*;

#[tokio::test]
async fn a_throttle_shows_in_model_stats_and_cooldowns() {
    let clock = ManualClock::new(1_000_000);
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
    assert_eq!(
        raw_get(gw.addr, "/cooldowns").await.json()["cooldowns"],
        serde_json::json!([])
    );

    sim.inject("model-a", Fault::Throttle, 1);
    let raw = raw_post(gw.addr, "/model/g/converse", &[], &converse_body("x")).await;
    assert_eq!(raw.status, 200);
    clock.advance(4_000);

    let cooldowns = raw_get(gw.addr, "/cooldowns").await.json();
    let list = cooldowns["cooldowns"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{cooldowns}");
    assert_eq!(list[0]["deployment"], "a");
    assert_eq!(list[0]["reason"], "throttled");
    assert_eq!(list[0]["remaining_ms"], 6_000);
    assert_eq!(list[0]["until_ms"], 1_010_000);

    let stats = raw_get(gw.addr, "/model_stats").await.json();
    assert_eq!(stats["success"], true);
    assert_eq!(stats["stats"]["total_models"], 2);
    assert_eq!(stats["stats"]["active_cooldowns"], 1);
    let models = stats["stats"]["models"].as_array().unwrap();
    let a = models.iter().find(|m| m["id"] == "a").unwrap();
    assert_eq!(a["status"], "in_cooldown");
    assert_eq!(a["total_attempts"], 1);
    assert_eq!(a["successful_requests"], 0);
    assert_eq!(a["success_rate"], 0.0);
    assert_eq!(a["recent_throttles_60s"], 1);
    let b = models.iter().find(|m| m["id"] == "b").unwrap();
    assert_eq!(b["status"], "available");
    assert_eq!(b["success_rate"], 100.0);
    assert_eq!(
        stats["stats"]["policies"]["g"]["selection"]["name"],
        "priority"
    );
    assert_eq!(stats["stats"]["policies"]["g"]["cooldown"]["version"], 1);

    // The same throttle in /metrics: the attempt by outcome, the cooldown
    // left on the gauge, and the decisions' latency.
    let metrics = String::from_utf8(raw_get(gw.addr, "/metrics").await.body).unwrap();
    for line in [
        r#"switchyard_attempts_total{group="g",deployment="a",outcome="throttled"} 1"#,
        r#"switchyard_attempts_total{group="g",deployment="b",outcome="success"} 1"#,
        r#"switchyard_deployment_cooldown_seconds{deployment="a"} 6.0"#,
        r#"switchyard_deployment_cooldown_seconds{deployment="b"} 0.0"#,
        r#"switchyard_deployment_circuit_state{deployment="a"} 0"#,
        r#"switchyard_policy_call_duration_seconds_count{group="g",kind="selection"} 1"#,
        r#"switchyard_policy_call_duration_seconds_count{group="g",kind="cooldown"} 2"#,
        "switchyard_queue_waiting 0",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }

    // When the cooldown ends, A is available again.
    clock.advance(6_000);
    let stats = raw_get(gw.addr, "/model_stats").await.json();
    assert_eq!(stats["stats"]["active_cooldowns"], 0);
}
