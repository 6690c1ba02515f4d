//! How a stream ends when something goes wrong after its first byte: a
//! client that leaves closes the upstream stream and frees its slots, and
//! a stream that breaks upstream reaches the client as an error (an
//! OpenAI error event, a broken Bedrock body), never as a clean end.

use std::time::{Duration, Instant};

use switchyard::clock::SystemClock;
use switchyard::sim::{Fault, SimHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

const MODEL: &str = "model-a";

/// A gateway in front of a model that answers at `tokens_per_s`.
async fn paced(tokens_per_s: u32) -> (SimHandle, TestGateway) {
    let mut model = sim_model(MODEL, None);
    model.tokens_per_s = tokens_per_s;
    let sim = start_sim(vec![model], SystemClock::shared()).await;
    let config = format!(
        "{}[[model_groups]]\nname = \"g\"\ndeployments = [\"a\"]\n",
        deployment("a", MODEL, 1, &sim)
    );
    let gw = start_gateway(&config, SystemClock::shared()).await;
    (sim, gw)
}

/// Sends `body` to `path` and returns everything read until the server
/// closes the connection.
async fn read_all(gw: &TestGateway, path: &str, body: &str) -> Vec<u8> {
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut seen = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut seen))
        .await
        .expect("the stream ended in time");
    seen
}

fn converse_text(text: &str) -> String {
    String::from_utf8(converse_body(text)).unwrap()
}

/// Posts `body` to `path` on a connection of its own and reads until
/// `enough` says so; the connection (still open) and what was read.
async fn open_and_read_until(
    gw: &TestGateway,
    path: &str,
    body: &str,
    enough: impl Fn(&[u8]) -> bool,
) -> (TcpStream, Vec<u8>) {
    let mut client = TcpStream::connect(gw.addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    client.write_all(head.as_bytes()).await.unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !enough(&seen) {
        let n = tokio::time::timeout(Duration::from_secs(10), client.read(&mut buf))
            .await
            .expect("the stream starts")
            .unwrap();
        assert!(n > 0, "the stream did not end before the client left");
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(seen.starts_with(b"HTTP/1.1 200"));
    (client, seen)
}

/// Waits until the simulator has seen a stream closed by the gateway, at
/// most `limit` from `since`.
async fn upstream_closed_within(sim: &SimHandle, since: Instant, limit: Duration) {
    while sim.abandoned_streams() == 0 {
        assert!(
            since.elapsed() < limit,
            "the simulator saw its stream closed within {limit:?} of the client leaving"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_mid_stream_closes_the_upstream_and_frees_its_slot() {
    // Five tokens a second: the answer takes seconds to stream.
    let (sim, gw) = paced(5).await;
    let body = converse_text("tell me a long story about many things");
    // Read the head and the first frame, then leave.
    let (client, _) = open_and_read_until(&gw, "/model/g/converse-stream", &body, |seen| {
        seen.windows(4).any(|w| w == b"\r\n\r\n") && seen.len() >= 200
    })
    .await;
    assert_eq!(sim.abandoned_streams(), 0);
    drop(client);
    upstream_closed_within(&sim, Instant::now(), Duration::from_secs(1)).await;
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let stats = raw_get(gw.addr, "/queue_stats").await.json();
        if stats["queue"]["running"] == 0 {
            break;
        }
        assert!(
            Instant::now() < until,
            "the stream's queue slot was freed: {stats}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An OpenAI-style stream notices a client that left between two deltas
/// at once, not when the next delta comes: here a delta comes each second,
/// and the upstream is closed well before the next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_openai_stream_notices_a_client_leaving_between_deltas() {
    let (sim, gw) = paced(1).await;
    let body = r#"{"model":"g","stream":true,"messages":[{"role":"user","content":"tell me a long story"}]}"#;
    let (client, _) = open_and_read_until(&gw, "/v1/chat/completions", body, |seen| {
        String::from_utf8_lossy(seen).contains("data: ")
    })
    .await;
    drop(client);
    // The next delta is due a second after the first.
    upstream_closed_within(&sim, Instant::now(), Duration::from_millis(500)).await;
}

/// A client that keeps its connection open but stops reading mid-stream
/// is cut off once it has taken no bytes for `http.write_timeout_ms`: its
/// connection is closed (so the body cannot end as if complete), the
/// upstream stream is closed, and its queue slot, its deployment's
/// in-flight count and the one slot the gateway has are free for the next
/// request. Without that, one such client would hold them for ever. On
/// Bedrock's stream and on an OpenAI stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_off_and_frees_its_slots() {
    let sim = start_sim(vec![sim_model(MODEL, None)], SystemClock::shared()).await;
    let config = format!(
        "[http]\nwrite_timeout_ms = 1000\n[admission]\nmax_concurrent = 1\n{}[[model_groups]]\nname = \"g\"\ndeployments = [\"a\"]\n",
        deployment("a", MODEL, 1, &sim)
    );
    let gw = start_gateway(&config, SystemClock::shared()).await;
    // The simulator echoes the prompt: 200,000 words stream as about as
    // many events, far more than the sockets' buffers hold.
    let words = "word ".repeat(200_000);
    let openai = serde_json::json!({
        "model": "g",
        "stream": true,
        "messages": [{ "role": "user", "content": words }]
    })
    .to_string();
    for (path, body) in [
        ("/model/g/converse-stream", converse_text(&words)),
        ("/v1/chat/completions", openai),
    ] {
        let closed_before = sim.abandoned_streams();
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut client = socket.connect(gw.addr).await.unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        client.write_all(head.as_bytes()).await.unwrap();
        client.write_all(body.as_bytes()).await.unwrap();
        let mut status = [0u8; 12];
        tokio::time::timeout(Duration::from_secs(10), client.read_exact(&mut status))
            .await
            .expect("the stream starts")
            .unwrap();
        assert_eq!(&status, b"HTTP/1.1 200", "{path}");
        // Read nothing more, and keep the connection open.
        let stopped = Instant::now();
        while sim.abandoned_streams() == closed_before {
            assert!(
                stopped.elapsed() < Duration::from_secs(20),
                "{path}: the upstream stream was closed after the client stopped reading"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let until = Instant::now() + Duration::from_secs(5);
        loop {
            let queue = raw_get(gw.addr, "/queue_stats").await.json();
            let models = raw_get(gw.addr, "/model_stats").await.json();
            if queue["queue"]["running"] == 0 && models["stats"]["models"][0]["in_flight"] == 0 {
                break;
            }
            assert!(
                Instant::now() < until,
                "{path}: the slots were freed: {queue} {models}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The gateway closed the connection: what the client reads now
        // ends without the stream's last chunk.
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut rest))
            .await
            .expect("the connection was closed")
            .ok();
        assert!(
            !rest.ends_with(b"0\r\n\r\n"),
            "{path}: the body ended as if complete"
        );
        // The one slot serves the next request at once.
        let answer = tokio::time::timeout(
            Duration::from_secs(5),
            raw_post(gw.addr, "/model/g/converse", &[], &converse_body("hi")),
        )
        .await
        .expect("the next request is served");
        assert_eq!(answer.status, 200, "{path}: {}", answer.body_text());
    }
}

#[tokio::test]
async fn a_stream_broken_upstream_breaks_the_bedrock_body_and_ends_an_openai_stream_with_an_error()
{
    // Paced, so the break comes after the first frames, not with them.
    let (sim, gw) = paced(50).await;

    // Bedrock's route: the frames so far, then a body cut short (no last chunk).
    sim.inject(MODEL, Fault::Reset, 1);
    let seen = read_all(&gw, "/model/g/converse-stream", &converse_text("hello")).await;
    assert!(
        seen.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&seen)
    );
    assert!(
        seen.windows(b"contentBlockDelta".len())
            .any(|w| w == b"contentBlockDelta"),
        "the first frames went through"
    );
    assert!(
        !seen.ends_with(b"0\r\n\r\n"),
        "the body must not end cleanly: {:?}",
        String::from_utf8_lossy(&seen[seen.len().saturating_sub(40)..])
    );

    // OpenAI's route: the deltas so far, then an error event, and no [DONE].
    // (A fresh gateway: the reset cooled the first one's deployment down.)
    let (sim, gw) = paced(50).await;
    sim.inject(MODEL, Fault::Reset, 1);
    let chat = r#"{"model":"g","stream":true,"messages":[{"role":"user","content":"hello"}]}"#;
    let seen = read_all(&gw, "/v1/chat/completions", chat).await;
    let text = String::from_utf8_lossy(&seen);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("\"delta\""), "{text}");
    assert!(text.contains("\"error\""), "{text}");
    assert!(!text.contains("[DONE]"), "{text}");

    // A stream that ends well still ends with [DONE].
    let (_sim, gw) = paced(50).await;
    let seen = read_all(&gw, "/v1/chat/completions", chat).await;
    let text = String::from_utf8_lossy(&seen);
    assert!(text.contains("[DONE]"), "{text}");
    assert!(!text.contains("\"error\""), "{text}");
}

/// A stream's quota is settled with the usage of its `metadata` event, not
/// with the pessimistic reservation (input estimate plus `maxTokens`).
#[tokio::test]
async fn a_finished_stream_settles_its_tokens_from_the_metadata_usage() {
    let sim = start_sim(vec![sim_model(MODEL, None)], SystemClock::shared()).await;
    let config = format!(
        "{}tpm = 100000\n[[model_groups]]\nname = \"g\"\ndeployments = [\"a\"]\n",
        deployment("a", MODEL, 1, &sim)
    );
    let gw = start_gateway(&config, SystemClock::shared()).await;
    let body = r#"{"messages":[{"role":"user","content":[{"text":"hello"}]}],"inferenceConfig":{"maxTokens":8000}}"#;
    let seen = read_all(&gw, "/model/g/converse-stream", body).await;
    assert!(seen.starts_with(b"HTTP/1.1 200"));
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let stats = raw_get(gw.addr, "/model_stats").await.json();
        let available = stats["stats"]["models"][0]["tpm_available"]
            .as_u64()
            .unwrap();
        // The simulator's answer to "hello" is a few dozen tokens.
        if available > 99_000 {
            break;
        }
        assert!(
            Instant::now() < until,
            "{available} tokens left of 100000 after a short stream: {stats}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
