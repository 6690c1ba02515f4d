//! The HTTP edge: clients that dribble their headers, stall their body or
//! sit idle are cut off without slowing anyone else, `/admin` refuses a
//! caller before reading its body, SIGTERM and SIGINT drain in-flight
//! requests and streams before the process exits 0, and connections past
//! the cap wait in the backlog.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchyard::clock::SystemClock;
use switchyard::sim::SimHandle;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

const MODEL: &str = "model-a";

async fn gateway_with(http: &str, extra: &str) -> (SimHandle, TestGateway) {
    let sim = start_sim(vec![sim_model(MODEL, None)], SystemClock::shared()).await;
    let config = format!(
        "{extra}\n[http]\n{http}\n{}\n[[model_groups]]\nname = \"g\"\ndeployments = [\"a\"]\n",
        deployment("a", MODEL, 1, &sim)
    );
    let gw = start_gateway(&config, SystemClock::shared()).await;
    (sim, gw)
}

/// Reads until the server closes the connection; the bytes it sent.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> Vec<u8> {
    let mut seen = Vec::new();
    tokio::time::timeout(limit, stream.read_to_end(&mut seen))
        .await
        .expect("the server closed the connection in time")
        .ok();
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_connections_do_not_stop_a_normal_client_and_are_cut_at_the_header_timeout() {
    const SLOW: usize = 2_000;
    let (_sim, gw) = gateway_with("header_read_timeout_ms = 3000", "").await;
    let connected = Arc::new(AtomicUsize::new(0));
    let closed = Arc::new(AtomicUsize::new(0));
    let head = format!(
        "POST /model/g/converse HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\n",
        gw.addr
    );
    let mut slow = Vec::new();
    for _ in 0..SLOW {
        let (addr, head) = (gw.addr, head.clone());
        let (connected, closed) = (connected.clone(), closed.clone());
        slow.push(tokio::spawn(async move {
            let stream = TcpStream::connect(addr)
                .await
                .expect("slow client connects");
            connected.fetch_add(1, Ordering::SeqCst);
            let (mut reader, mut writer) = stream.into_split();
            let dribble = async {
                for byte in head.bytes().cycle() {
                    if writer.write_all(&[byte]).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            };
            let mut sink = Vec::new();
            tokio::select! {
                () = dribble => {}
                _ = reader.read_to_end(&mut sink) => {}
            }
            closed.fetch_add(1, Ordering::SeqCst);
        }));
    }
    let until = Instant::now() + Duration::from_secs(20);
    while connected.load(Ordering::SeqCst) < SLOW {
        assert!(Instant::now() < until, "the slow clients connected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        closed.load(Ordering::SeqCst) < SLOW / 2,
        "the slow clients were not cut off before their header timeout"
    );
    for i in 0..5 {
        let answer = raw_request_within(
            gw.addr,
            "POST",
            "/model/g/converse",
            &[],
            &converse_body(&format!("normal client {i}")),
            Duration::from_secs(1),
        )
        .await;
        assert_eq!(answer.status, 200, "{}", answer.body_text());
    }
    for task in slow {
        tokio::time::timeout(Duration::from_secs(20), task)
            .await
            .expect("every slow client was cut off by the header timeout")
            .unwrap();
    }
    assert_eq!(closed.load(Ordering::SeqCst), SLOW);
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_and_a_stalled_body_gets_408() {
    let (_sim, gw) = gateway_with(
        "idle_timeout_ms = 300\nbody_read_timeout_ms = 300\nheader_read_timeout_ms = 5000",
        "",
    )
    .await;

    // A keep-alive connection answered once, then left idle.
    let mut idle = TcpStream::connect(gw.addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let seen = read_until_closed(&mut idle, Duration::from_secs(10)).await;
    let text = String::from_utf8_lossy(&seen);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "kept open for the idle timeout, not closed at once"
    );

    // A body that stops after 10 of its 100 bytes.
    let mut stalled = TcpStream::connect(gw.addr).await.unwrap();
    stalled
        .write_all(
            b"POST /model/g/converse HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"message",
        )
        .await
        .unwrap();
    let seen = read_until_closed(&mut stalled, Duration::from_secs(10)).await;
    let text = String::from_utf8_lossy(&seen);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("\"code\":\"body_timeout\""), "{text}");
}

#[tokio::test]
async fn admin_refuses_a_caller_without_the_token_before_reading_its_body() {
    let (_sim, gw) = gateway_with("", "[admin]\ntoken = \"a-long-enough-admin-secret\"\n").await;
    let mut upload = TcpStream::connect(gw.addr).await.unwrap();
    // Announces 10 MB and sends none of it: the answer must not wait for it.
    upload
        .write_all(
            b"POST /admin/policies/g/selection HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: 10000000\r\n\r\n",
        )
        .await
        .unwrap();
    let seen = read_until_closed(&mut upload, Duration::from_secs(10)).await;
    let text = String::from_utf8_lossy(&seen);
    assert!(text.starts_with("HTTP/1.1 401"), "{text}");
    assert!(text.contains("\"code\":\"unauthorized\""), "{text}");

    // The small admin calls take small bodies only.
    let big = format!("{{\"version\": 1, \"pad\": \"{}\"}}", "x".repeat(100_000));
    let answer = raw_post(
        gw.addr,
        "/admin/policies/g/selection/activate",
        &[("authorization", "Bearer a-long-enough-admin-secret")],
        big.as_bytes(),
    )
    .await;
    assert_eq!(answer.status, 413, "{}", answer.body_text());

    // Without a token there is no admin API at all.
    let (_sim, open) = gateway_with("", "").await;
    let answer = raw_get(open.addr, "/admin/policies").await;
    assert_eq!(answer.status, 404);
    assert_eq!(answer.json()["code"], "not_found");
}

/// A gateway process in front of `sim` that drains for up to 30 s.
async fn draining_gateway(sim: &SimHandle) -> GatewayProcess {
    GatewayProcess::start(
        "drain",
        &format!(
            "[http]\nshutdown_grace_ms = 30000\n[admin]\nwatch_interval_ms = 0\n{}\n[[model_groups]]\nname = \"g\"\ndeployments = [\"a\"]\n",
            deployment("a", MODEL, 1, sim)
        ),
    )
    .await
}

/// Sends `signal` to the gateway process.
fn signal(gateway: &GatewayProcess, signal: libc::c_int) {
    let pid = gateway.child.id().expect("the gateway runs") as i32;
    // SAFETY: sends a signal to the child this test started.
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
}

/// Waits for the gateway process to exit after draining; its exit code.
async fn exit_code(gateway: &mut GatewayProcess) -> Option<i32> {
    tokio::time::timeout(Duration::from_secs(30), gateway.child.wait())
        .await
        .expect("the gateway exits after draining")
        .unwrap()
        .code()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_in_flight_requests_and_streams_finish_then_exits_0() {
    let mut model = sim_model(MODEL, None);
    model.ttft_ms = 2_000;
    model.tokens_per_s = 40;
    let sim = start_sim(vec![model], SystemClock::shared()).await;
    let mut gateway = draining_gateway(&sim).await;
    let addr = gateway.addr;

    let mut plain = Vec::new();
    for i in 0..50 {
        plain.push(tokio::spawn(async move {
            raw_request_within(
                addr,
                "POST",
                "/model/g/converse",
                &[],
                &converse_body(&format!("in flight {i}")),
                Duration::from_secs(40),
            )
            .await
        }));
    }
    let client = sdk_client(&format!("http://{addr}"));
    let mut streams = Vec::new();
    for i in 0..10 {
        let client = client.clone();
        streams.push(tokio::spawn(async move {
            let mut stream = client
                .converse_stream()
                .model_id("g")
                .messages(user_message(&format!("streaming {i}")))
                .send()
                .await
                .expect("the stream opens")
                .stream;
            let mut stopped = false;
            while let Some(event) = stream.recv().await.expect("the stream does not break") {
                stopped |= event.is_message_stop();
            }
            stopped
        }));
    }
    let until = Instant::now() + Duration::from_secs(30);
    while sim.counts(MODEL).calls < 60 {
        assert!(Instant::now() < until, "all 60 calls reached the simulator");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    signal(&gateway, libc::SIGTERM);

    let until = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).await.is_ok() {
        assert!(Instant::now() < until, "no new connections after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for request in plain {
        let answer = request.await.unwrap();
        assert_eq!(answer.status, 200, "{}", answer.body_text());
    }
    for stream in streams {
        assert!(stream.await.unwrap(), "the stream ended with messageStop");
    }
    assert_eq!(exit_code(&mut gateway).await, Some(0));
}

/// SIGINT (Ctrl-C) drains like SIGTERM: a request in flight is answered,
/// then the process exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_drains_like_sigterm() {
    let mut model = sim_model(MODEL, None);
    model.ttft_ms = 1_000;
    let sim = start_sim(vec![model], SystemClock::shared()).await;
    let mut gateway = draining_gateway(&sim).await;
    let addr = gateway.addr;
    let in_flight = tokio::spawn(async move {
        raw_post(addr, "/model/g/converse", &[], &converse_body("in flight")).await
    });
    let until = Instant::now() + Duration::from_secs(10);
    while sim.counts(MODEL).calls < 1 {
        assert!(Instant::now() < until, "the call reached the simulator");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    signal(&gateway, libc::SIGINT);
    let answer = in_flight.await.unwrap();
    assert_eq!(answer.status, 200, "{}", answer.body_text());
    assert_eq!(exit_code(&mut gateway).await, Some(0));
}

/// Past `max_connections`, a new connection waits in the listen backlog
/// and is served when an open one closes, instead of being refused or
/// costing the gateway a task and buffers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_connection_cap_a_client_waits_for_a_free_connection() {
    let (_sim, gw) = gateway_with(
        "max_connections = 2\nheader_read_timeout_ms = 30000\nidle_timeout_ms = 30000",
        "",
    )
    .await;
    // Two connections hold the cap (one byte of a request head each).
    let mut holders = Vec::new();
    for _ in 0..2 {
        let mut held = TcpStream::connect(gw.addr).await.unwrap();
        held.write_all(b"G").await.unwrap();
        holders.push(held);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let addr = gw.addr;
    let third = tokio::spawn(async move {
        raw_post(addr, "/model/g/converse", &[], &converse_body("third")).await
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!third.is_finished(), "served past the cap of 2 connections");
    drop(holders.pop());
    let answer = tokio::time::timeout(Duration::from_secs(5), third)
        .await
        .expect("served once a connection closed")
        .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.body_text());
}

/// `switchyard healthcheck`, as a container's HEALTHCHECK runs it: 0 when
/// the gateway answers its probe, 1 with why when nothing listens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_healthcheck_command_says_whether_a_gateway_answers() {
    let sim = start_sim(vec![sim_model(MODEL, None)], SystemClock::shared()).await;
    let gateway = draining_gateway(&sim).await;
    let url = format!("http://{}", gateway.addr);
    for args in [
        vec!["healthcheck", "--gateway", &url],
        vec!["healthcheck", "--gateway", &url, "--ready"],
    ] {
        let out = switchyard_with_env(&args, &[], Duration::from_secs(30)).await;
        assert!(out.status.success(), "{}", command_output(&out));
        assert!(
            String::from_utf8_lossy(&out.stdout).starts_with("ok: "),
            "{}",
            command_output(&out)
        );
    }
    let nobody = format!("http://{}", crate::support::free_port());
    let out = switchyard_with_env(
        &["healthcheck", "--gateway", &nobody],
        &[],
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", command_output(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot reach the gateway"),
        "{}",
        command_output(&out)
    );
}
