//! ConverseStream through the gateway: frames pass through unchanged, a
//! stream falls back only before its first byte, and a throttle in mid-stream
//! reaches the client and cools the deployment down.

use std::time::Duration;

use aws_sdk_bedrockruntime::types::{
    ContentBlockDelta, ConverseStreamOutput, StopReason, TokenUsage,
};
use switchyard::clock::ManualClock;
use switchyard::sim::Fault;

use crate::support::*;

const MODEL_A: &str = "model-a";
const MODEL_B: &str = "model-b";

async fn setup() -> (
    std::sync::Arc<ManualClock>,
    switchyard::sim::SimHandle,
    TestGateway,
) {
    let clock = ManualClock::new(1_000_000);
    let sim = start_sim(
        vec![sim_model(MODEL_A, None), sim_model(MODEL_B, None)],
        clock.clone(),
    )
    .await;
    let config = format!(
        "{}{}\n[[model_groups]]\nname = \"g\"\ndeployments = [\"a\", \"b\"]\n",
        deployment("a", MODEL_A, 1, &sim),
        deployment("b", MODEL_B, 2, &sim)
    );
    let gw = start_gateway(&config, clock.clone()).await;
    (clock, sim, gw)
}

#[derive(Debug, Default)]
struct Collected {
    text: String,
    stop: Option<StopReason>,
    usage: Option<TokenUsage>,
    error: Option<String>,
}

async fn collect(client: &aws_sdk_bedrockruntime::Client, prompt: &str) -> Collected {
    let mut output = client
        .converse_stream()
        .model_id("g")
        .messages(user_message(prompt))
        .send()
        .await
        .expect("the stream starts");
    let mut collected = Collected::default();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), output.stream.recv())
            .await
            .expect("stream event in time")
        {
            Ok(Some(ConverseStreamOutput::ContentBlockDelta(d))) => {
                if let Some(ContentBlockDelta::Text(t)) = d.delta() {
                    collected.text.push_str(t);
                }
            }
            Ok(Some(ConverseStreamOutput::MessageStop(m))) => {
                collected.stop = Some(m.stop_reason().clone())
            }
            Ok(Some(ConverseStreamOutput::Metadata(m))) => collected.usage = m.usage().cloned(),
            Ok(Some(_)) => {}
            Ok(None) => return collected,
            Err(e) => {
                let service = e.into_service_error();
                assert!(service.is_throttling_exception(), "{service:?}");
                collected.error = Some("throttling".into());
                return collected;
            }
        }
    }
}

#[tokio::test]
async fn a_stream_returns_text_stop_reason_and_usage() {
    let (_clock, _sim, gw) = setup().await;
    let got = collect(&sdk_client(&gw.url()), "stream this please").await;
    assert_eq!(
        got.text,
        format!("Simulated reply from {MODEL_A}: stream this please")
    );
    assert_eq!(got.stop, Some(StopReason::EndTurn));
    let usage = got.usage.expect("metadata event with usage");
    assert_eq!(usage.input_tokens(), 3);
    assert_eq!(usage.output_tokens(), 7);
    assert!(got.error.is_none());

    let raw = raw_post(
        gw.addr,
        "/model/g/converse-stream",
        &[("x-request-id", "stream-1")],
        &converse_body("hi"),
    )
    .await;
    assert_eq!(raw.status, 200);
    assert_eq!(
        raw.headers["content-type"],
        "application/vnd.amazon.eventstream"
    );
    assert_eq!(raw.headers["x-request-id"], "stream-1");
    assert_eq!(raw.headers["x-switchyard-deployment"], "a");
    // The frames decode with the SDK's own decoder: CRCs intact.
    let mut buf = bytes::Bytes::from(raw.body);
    let mut types = Vec::new();
    while !buf.is_empty() {
        let message =
            aws_smithy_eventstream::frame::read_message_from(&mut buf).expect("valid frame");
        let header = message
            .headers()
            .iter()
            .find(|h| h.name().as_str() == ":event-type")
            .expect("event type");
        types.push(header.value().as_string().unwrap().as_str().to_owned());
    }
    assert_eq!(types.first().map(String::as_str), Some("messageStart"));
    assert_eq!(types.last().map(String::as_str), Some("metadata"));
}

#[tokio::test]
async fn a_stream_falls_back_when_the_first_deployment_fails_before_its_first_byte() {
    let (_clock, sim, gw) = setup().await;
    sim.inject(MODEL_A, Fault::Throttle, 1);
    let got = collect(&sdk_client(&gw.url()), "fall back").await;
    assert_eq!(
        got.text,
        format!("Simulated reply from {MODEL_B}: fall back")
    );
    assert_eq!(gw.cooldown_ms("g", "a"), 10_000);
}

#[tokio::test]
async fn a_throttle_in_mid_stream_reaches_the_client_and_cools_the_deployment_down() {
    let (_clock, sim, gw) = setup().await;
    sim.inject(MODEL_A, Fault::StreamThrottle, 1);
    let got = collect(&sdk_client(&gw.url()), "one two three").await;
    // The first words reached the client, so there is no falling back now:
    // the client sees Bedrock's in-stream exception.
    assert_eq!(got.text, "Simulated");
    assert_eq!(got.error.as_deref(), Some("throttling"));
    // The outcome is recorded when the stream ends, just after the client saw it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while gw.cooldown_ms("g", "a") == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "cooldown applied in time"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(gw.cooldown_ms("g", "a"), 10_000);
    assert_eq!(sim.counts(MODEL_B).calls, 0);
}
