//! Request coalescing: identical requests in flight at once share one
//! upstream call, and each gets the answer.

use std::sync::Arc;

use switchyard::clock::SystemClock;
use switchyard::sim::SimModelConfig;

use crate::support::*;

/// A simulator whose model takes a second to answer, so that requests sent
/// together are in flight together, behind a gateway with a coalescing
/// group `shared` and an ordinary group `own` over the same model.
async fn slow_model_gateway() -> (switchyard::sim::SimHandle, TestGateway) {
    let slow = SimModelConfig {
        ttft_ms: 1_000,
        ..SimModelConfig::unlimited("model-a")
    };
    let sim = start_sim(vec![slow], SystemClock::shared()).await;
    let config = format!(
        "{}[[model_groups]]\nname = \"shared\"\ndeployments = [\"a\"]\ncoalesce = true\n\
         [[model_groups]]\nname = \"own\"\ndeployments = [\"a\"]\n",
        deployment("a", "model-a", 1, &sim)
    );
    let gw = start_gateway(&config, SystemClock::shared()).await;
    (sim, gw)
}

async fn together(
    gw: &Arc<TestGateway>,
    group: &str,
    n: usize,
    body: impl Fn(usize) -> Vec<u8>,
    headers: &'static [(&'static str, &'static str)],
) -> Vec<RawResponse> {
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let gw = gw.clone();
            let path = format!("/model/{group}/converse");
            let body = body(i);
            tokio::spawn(async move { raw_post(gw.addr, &path, headers, &body).await })
        })
        .collect();
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    answers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_identical_requests_share_one_upstream_call() {
    let (sim, gw) = slow_model_gateway().await;
    let gw = Arc::new(gw);
    // The same request, spelled with its keys in two orders.
    let spelled = |i: usize| {
        if i.is_multiple_of(2) {
            r#"{"messages":[{"role":"user","content":[{"text":"same"}]}],"inferenceConfig":{"maxTokens":50}}"#.as_bytes().to_vec()
        } else {
            r#"{"inferenceConfig":{"maxTokens":50},"messages":[{"content":[{"text":"same"}],"role":"user"}]}"#.as_bytes().to_vec()
        }
    };
    let answers = together(&gw, "shared", 50, spelled, &[]).await;
    assert!(
        answers.iter().all(|a| a.status == 200),
        "{:?}",
        answers.iter().map(|a| a.status).collect::<Vec<_>>()
    );
    let first = &answers[0].body;
    assert!(
        answers.iter().all(|a| &a.body == first),
        "every waiter gets the same answer"
    );
    assert_eq!(
        sim.counts("model-a").calls,
        1,
        "one upstream call for all 50"
    );
    let shared = answers
        .iter()
        .filter(|a| a.headers.get("x-switchyard-coalesced").map(String::as_str) == Some("true"))
        .count();
    assert_eq!(shared, 49);
    // Each answer names its own request.
    let ids: std::collections::HashSet<&String> =
        answers.iter().map(|a| &a.headers["x-request-id"]).collect();
    assert_eq!(ids.len(), 50);
    let metrics = String::from_utf8(raw_get(gw.addr, "/metrics").await.body).unwrap();
    assert!(
        metrics.contains(r#"switchyard_coalesced_requests_total{group="shared"} 49"#),
        "{metrics}"
    );

    // Once answered, the same request makes a call of its own.
    let again = raw_post(gw.addr, "/model/shared/converse", &[], &spelled(0)).await;
    assert_eq!(again.status, 200);
    assert_eq!(sim.counts("model-a").calls, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_identical_opted_in_requests_share() {
    let (sim, gw) = slow_model_gateway().await;
    let gw = Arc::new(gw);
    // Different bodies: a call each.
    let distinct = together(
        &gw,
        "shared",
        3,
        |i| converse_body(&format!("question {i}")),
        &[],
    )
    .await;
    assert!(distinct.iter().all(|a| a.status == 200));
    assert_eq!(sim.counts("model-a").calls, 3);
    // A group that does not coalesce: a call each, unless the request asks.
    let own = together(&gw, "own", 3, |_| converse_body("same"), &[]).await;
    assert!(own.iter().all(|a| a.status == 200));
    assert_eq!(sim.counts("model-a").calls, 6);
    let asked = together(
        &gw,
        "own",
        3,
        |_| converse_body("same"),
        &[("x-switchyard-coalesce", "true")],
    )
    .await;
    assert!(asked.iter().all(|a| a.status == 200));
    assert_eq!(sim.counts("model-a").calls, 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_openai_chat_completions_share_one_upstream_call() {
    let (sim, gw) = slow_model_gateway().await;
    let gw = Arc::new(gw);
    let chat =
        r#"{"model":"shared","messages":[{"role":"user","content":"same"}],"max_tokens":40}"#;
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let gw = gw.clone();
            tokio::spawn(async move {
                raw_post(gw.addr, "/v1/chat/completions", &[], chat.as_bytes()).await
            })
        })
        .collect();
    for t in tasks {
        let answer = t.await.unwrap();
        assert_eq!(answer.status, 200, "{}", answer.body_text());
        assert_eq!(answer.json()["object"], "chat.completion");
    }
    assert_eq!(sim.counts("model-a").calls, 1);
    // A stream never shares.
    let stream =
        r#"{"model":"shared","stream":true,"messages":[{"role":"user","content":"same"}]}"#;
    let answer = raw_post(gw.addr, "/v1/chat/completions", &[], stream.as_bytes()).await;
    assert_eq!(answer.status, 200);
    assert_eq!(sim.counts("model-a").calls, 2);
}

/// Sharing is no way around the API keys: a request without a valid key is
/// refused even while an identical, authorised one is in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_without_a_valid_key_shares_no_answer() {
    const KEY: &str = "sk-coalesce-0123456789";
    let slow = SimModelConfig {
        ttft_ms: 1_000,
        ..SimModelConfig::unlimited("model-a")
    };
    let sim = start_sim(vec![slow], SystemClock::shared()).await;
    let config = format!(
        "[[api_keys]]\nkey = \"{KEY}\"\nuser = \"alice\"\n{}[[model_groups]]\nname = \"shared\"\ndeployments = [\"a\"]\ncoalesce = true\n",
        deployment("a", "model-a", 1, &sim)
    );
    let gw = start_gateway(&config, SystemClock::shared()).await;
    let addr = gw.addr;
    let authorised = tokio::spawn(async move {
        let bearer = format!("Bearer {KEY}");
        let headers = [("authorization", bearer.as_str())];
        raw_post(
            addr,
            "/model/shared/converse",
            &headers,
            &converse_body("same"),
        )
        .await
    });
    // While it is in flight, the same request without a valid key.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let headers = [("authorization", "Bearer sk-wrong-0123456789")];
    let refused = raw_post(
        addr,
        "/model/shared/converse",
        &headers,
        &converse_body("same"),
    )
    .await;
    assert_eq!(refused.status, 401, "{}", refused.body_text());
    assert_eq!(authorised.await.unwrap().status, 200);
    assert_eq!(sim.counts("model-a").calls, 1);
}

/// When every client waiting for a shared call has left, the call is
/// aborted: its place in the fair queue is freed at once, not when the
/// model answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_call_is_aborted_when_its_last_waiter_leaves() {
    let slow = SimModelConfig {
        ttft_ms: 20_000,
        ..SimModelConfig::unlimited("model-a")
    };
    let sim = start_sim(vec![slow], SystemClock::shared()).await;
    let config = format!(
        "{}[[model_groups]]\nname = \"shared\"\ndeployments = [\"a\"]\ncoalesce = true\n",
        deployment("a", "model-a", 1, &sim)
    );
    let gw = start_gateway(&config, SystemClock::shared()).await;
    let running = |addr| async move {
        raw_get(addr, "/queue_stats").await.json()["queue"]["running"]
            .as_u64()
            .unwrap()
    };
    let body = converse_body("abandoned");
    let clients: Vec<_> = (0..3)
        .map(|_| {
            let (addr, body) = (gw.addr, body.clone());
            tokio::spawn(async move { raw_post(addr, "/model/shared/converse", &[], &body).await })
        })
        .collect();
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while sim.counts("model-a").calls < 1 || running(gw.addr).await < 1 {
        assert!(std::time::Instant::now() < until, "the shared call started");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // Every client hangs up.
    for client in &clients {
        client.abort();
    }
    let until = std::time::Instant::now() + std::time::Duration::from_secs(8);
    while running(gw.addr).await > 0 {
        assert!(
            std::time::Instant::now() < until,
            "the shared call still runs with nobody waiting"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(sim.counts("model-a").calls, 1, "one shared call");
}
