//! Bad input gets a clear JSON error with a stable code, never a hang or an
//! HTML page.

use switchyard::clock::ManualClock;

use crate::support::*;

async fn gateway() -> (switchyard::sim::SimHandle, TestGateway) {
    let clock = ManualClock::new(1_000_000);
    let sim = start_sim(vec![sim_model("m", None)], clock.clone()).await;
    let config = format!(
        "[limits]\nmax_body_bytes = 1024\n{}\n[[model_groups]]\nname = \"g\"\ndeployments = [\"a\"]\n",
        deployment("a", "m", 1, &sim)
    );
    let gw = start_gateway(&config, clock).await;
    (sim, gw)
}

fn assert_json_error(raw: &RawResponse, status: u16, code: &str) {
    assert_eq!(raw.status, status, "{}", String::from_utf8_lossy(&raw.body));
    assert_eq!(raw.headers["content-type"], "application/json");
    let body = raw.json();
    assert_eq!(body["code"], code);
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "a human message: {body}"
    );
}

#[tokio::test]
async fn malformed_json_is_a_400() {
    let (sim, gw) = gateway().await;
    let raw = raw_post(gw.addr, "/model/g/converse", &[], b"{not json").await;
    assert_json_error(&raw, 400, "invalid_json");
    assert_eq!(raw.headers["x-amzn-errortype"], "ValidationException");
    let raw = raw_post(gw.addr, "/model/g/converse", &[], br#"{"messages": []}"#).await;
    assert_json_error(&raw, 400, "invalid_request");
    assert_eq!(sim.counts("m").calls, 0, "bad input never reaches Bedrock");
}

#[tokio::test]
async fn an_unknown_model_group_is_a_404_naming_the_known_ones() {
    let (_sim, gw) = gateway().await;
    let raw = raw_post(gw.addr, "/model/nope/converse", &[], &converse_body("x")).await;
    assert_json_error(&raw, 404, "unknown_model");
    assert!(raw.json()["message"]
        .as_str()
        .unwrap()
        .contains("model groups: g"));
    let raw = raw_post(
        gw.addr,
        "/model/nope/converse-stream",
        &[],
        &converse_body("x"),
    )
    .await;
    assert_json_error(&raw, 404, "unknown_model");
}

#[tokio::test]
async fn an_oversized_body_is_a_413() {
    let (sim, gw) = gateway().await;
    let big = converse_body(&"word ".repeat(1_000));
    let raw = raw_post(gw.addr, "/model/g/converse", &[], &big).await;
    assert_json_error(&raw, 413, "body_too_large");
    assert_eq!(sim.counts("m").calls, 0);
}

/// A body declared far over the limit is refused when the headers are
/// read, not after the client sends (or stalls on) it: the client here
/// sends 2 bytes of its declared 100 GB and waits, and must be answered
/// well before `http.body_read_timeout_ms` (30 s), in each route's shape.
#[tokio::test]
async fn a_body_declared_over_the_limit_is_a_413_at_once() {
    let (sim, gw) = gateway().await;
    let within = std::time::Duration::from_secs(10);
    let raw = raw_post_declaring(gw.addr, "/model/g/converse", 99_999_999_999, b"{}", within).await;
    assert_json_error(&raw, 413, "body_too_large");
    let raw = raw_post_declaring(
        gw.addr,
        "/v1/chat/completions",
        99_999_999_999,
        b"{}",
        within,
    )
    .await;
    assert_eq!(raw.status, 413, "{}", raw.body_text());
    assert_eq!(raw.json()["error"]["code"], "body_too_large");
    assert_eq!(sim.counts("m").calls, 0);
}

#[tokio::test]
async fn a_validation_error_from_bedrock_is_passed_on_without_falling_back() {
    let (sim, gw) = gateway().await;
    // Bedrock (and the simulator) refuse a message with the role `system`.
    let body = br#"{"messages":[{"role":"system","content":[{"text":"x"}]}]}"#;
    let raw = raw_post(gw.addr, "/model/g/converse", &[], body).await;
    assert_json_error(&raw, 400, "rejected_by_bedrock");
    assert_eq!(raw.json()["attempts"][0]["outcome"], "client_error");
    assert_eq!(sim.counts("m").calls, 1);
    assert_eq!(
        gw.cooldown_ms("g", "a"),
        0,
        "a bad request does not bench a deployment"
    );
}
