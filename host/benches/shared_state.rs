//! Shared state on Redis: what it costs per request, and how fast a change
//! reaches a sibling instance.
//!
//! Two gateways in this process, the same config but for `[state]`: one on
//! the memory backend, one on Redis (a real `redis-server` on a free port),
//! both in front of the simulator answering at once. The deployment has an
//! RPM quota, so every request makes its one reservation round trip on the
//! Redis gateway. Requests alternate between the two, one at a time, so both
//! are measured side by side on the same machine state; the report gives
//! the median and p99 of each and the Redis backend's extra latency.
//!
//! Then two Redis gateways: one publishes a cooldown (the path a cooldown
//! policy's decision takes), and the other's local mirror is polled until it
//! shows it: the propagation time, median and p99 (the target is 100 ms).
//!
//! Run: `cargo bench -p switchyard --bench shared_state`. Under `cargo test`
//! it runs a short smoke version of itself.

// The tests' Redis helper; the bench uses part of it.
#[path = "../../tests/all/redis_server.rs"]
#[allow(dead_code)]
mod redis_server;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use redis_server::RedisServer;
use switchyard::clock::SystemClock;
use switchyard::config::Config;
use switchyard::gateway::{Gateway, Upstreams};
use switchyard::outcome::OutcomeKind;
use switchyard::sim::{SimConfig, SimModelConfig, Simulator};
use switchyard::state::Change;
use tokio::net::TcpListener;

const BODY: &str = r#"{"messages":[{"role":"user","content":[{"text":"shared state"}]}]}"#;

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (requests, propagations) = if full { (5_000, 500) } else { (100, 10) };
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    runtime.block_on(run(requests, propagations));
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

async fn gateway(text: &str) -> (Arc<Gateway>, String) {
    let config = Config::parse(text, "shared state bench").expect("valid config");
    let gateway = Arc::new(
        Gateway::build(&config, SystemClock::shared(), &Upstreams::Aws).expect("gateway builds"),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let serving = gateway.clone();
    tokio::spawn(async move { serving.serve(listener, std::future::pending()).await });
    (gateway, url)
}

async fn linked(gateway: &Gateway) {
    let until = Instant::now() + Duration::from_secs(10);
    while gateway.shared_state().status().degraded {
        assert!(Instant::now() < until, "never linked to Redis");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn run(requests: usize, propagations: usize) {
    let redis = RedisServer::start();
    let clock = SystemClock::shared();
    let sim = Simulator::new(
        &SimConfig {
            models: vec![SimModelConfig::unlimited("bench-model")],
            accept_any_model: false,
            ..SimConfig::default()
        },
        clock,
    )
    .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
    .await
    .expect("simulator binds");
    let base = format!(
        "[[deployments]]\nid = \"d\"\nmodel_id = \"bench-model\"\nrpm = 10000000\nendpoint_url = \"{}\"\ncredentials = {{ source = \"static\", access_key_id = \"x\", secret_access_key = \"x\" }}\n[[model_groups]]\nname = \"g\"\ndeployments = [\"d\"]\n[admission]\nmax_wait_ms = 0\n",
        sim.url()
    );
    let shared = format!(
        "{base}[state]\nbackend = \"redis\"\nurl = \"{}\"\ninstances = 2\n",
        redis.url()
    );
    let (_memory, memory_url) = gateway(&base).await;
    let (redis_gateway, redis_url) = gateway(&shared).await;
    linked(&redis_gateway).await;

    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let send = |url: String| {
        let client = client.clone();
        async move {
            let request = http::Request::post(format!("{url}/model/g/converse"))
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from_static(BODY.as_bytes())))
                .unwrap();
            let started = Instant::now();
            let response = client.request(request).await.expect("the gateway answers");
            assert_eq!(response.status(), 200);
            response.into_body().collect().await.unwrap();
            started.elapsed().as_secs_f64() * 1e6
        }
    };
    // Warm both (connections, policy instances, scripts).
    for _ in 0..50 {
        send(memory_url.clone()).await;
        send(redis_url.clone()).await;
    }
    let mut on_memory = Vec::with_capacity(requests);
    let mut on_redis = Vec::with_capacity(requests);
    for i in 0..requests {
        // Alternate which goes first, so neither always follows the other.
        if i % 2 == 0 {
            on_memory.push(send(memory_url.clone()).await);
            on_redis.push(send(redis_url.clone()).await);
        } else {
            on_redis.push(send(redis_url.clone()).await);
            on_memory.push(send(memory_url.clone()).await);
        }
    }
    on_memory.sort_by(f64::total_cmp);
    on_redis.sort_by(f64::total_cmp);
    let (m50, m99) = (percentile(&on_memory, 0.5), percentile(&on_memory, 0.99));
    let (r50, r99) = (percentile(&on_redis, 0.5), percentile(&on_redis, 0.99));
    println!("request latency through the gateway, {requests} requests each, alternating (µs):");
    println!("  backend   p50      p99");
    println!("  memory    {m50:>7.0}  {m99:>7.0}");
    println!("  redis     {r50:>7.0}  {r99:>7.0}");
    println!(
        "  extra     {:>7.0}  {:>7.0}   (ratio p50 {:.2}x)",
        r50 - m50,
        r99 - m99,
        r50 / m50
    );
    let status = redis_gateway.shared_state().status();
    assert_eq!(status.local_decisions, 0, "every reservation went to Redis");

    let (second, _) = gateway(&shared).await;
    linked(&second).await;
    let deployment = second.router().group("g").unwrap().members[0].clone();
    let clock = SystemClock::shared();
    let mut delays = Vec::with_capacity(propagations);
    for i in 0..propagations {
        let remaining_ms = if i % 2 == 0 { 60_000 } else { 0 };
        let started = Instant::now();
        redis_gateway.shared_state().publish(Change::Cooldown {
            deployment: "d".into(),
            remaining_ms,
            cause: OutcomeKind::Throttled,
            clear_history: false,
        });
        loop {
            let left = deployment
                .health
                .snapshot(clock.now_ms())
                .cooldown_remaining_ms;
            if (left > 0) == (remaining_ms > 0) {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(5), "never arrived");
            tokio::time::sleep(Duration::from_micros(50)).await;
        }
        delays.push(started.elapsed().as_secs_f64() * 1e3);
    }
    delays.sort_by(f64::total_cmp);
    println!(
        "cooldown propagation to a sibling, {propagations} changes (ms): p50 {:.2}  p99 {:.2}  max {:.2}  (target: 100)",
        percentile(&delays, 0.5),
        percentile(&delays, 0.99),
        delays[delays.len() - 1]
    );
}
