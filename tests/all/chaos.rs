//! The chaos suite: traffic on the main routes while, one at a time, the
//! parts around the gateway fail: Redis is killed and restarted, the
//! simulator resets connections and sends malformed event-stream frames,
//! a deployment's credentials expire mid-stream, a policy that traps on
//! every call is pushed, and the gateway itself is killed with SIGKILL while
//! jobs wait. Through each: every request the gateway accepted ends in a
//! definite answer (a whole response, or a stream that ends, cleanly or
//! broken, never one left hanging or cut before its head), no job is lost,
//! and the process stays within its memory bound.
//!
//! Bounded: each phase runs a few seconds of traffic and every request has
//! a deadline. Loopback only.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use switchyard::clock::SystemClock;
use switchyard::sim::{Fault, KeyRefusal, SimHandle, SimModelConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::redis_server::RedisServer;
use crate::support::*;

/// The gateway's resident memory may not pass this (a debug build, which
/// idles near 60 MiB).
const MEMORY_BOUND_KIB: u64 = 512 * 1024;
/// No request of the traffic may take longer than this to end.
const REQUEST_DEADLINE: Duration = Duration::from_secs(60);
/// Clients sending at once.
const CLIENTS: usize = 4;
const ADMIN_TOKEN: &str = "chaos-admin-token-0123456789";

/// A route of the traffic, and whether it streams.
#[derive(Debug, Clone, Copy)]
enum Route {
    Converse,
    ConverseStream,
    ChatCompletion,
    ChatCompletionStream,
}

impl Route {
    const ALL: [Route; 4] = [
        Route::Converse,
        Route::ConverseStream,
        Route::ChatCompletion,
        Route::ChatCompletionStream,
    ];

    fn streams(self) -> bool {
        matches!(self, Route::ConverseStream | Route::ChatCompletionStream)
    }

    fn request(self, n: u64) -> (&'static str, Vec<u8>) {
        let text = format!("chaos request {n}");
        let chat = |stream: bool| {
            json!({ "model": "g", "stream": stream, "messages": [{ "role": "user", "content": text }] })
                .to_string()
                .into_bytes()
        };
        match self {
            Route::Converse => ("/model/g/converse", converse_body(&text)),
            Route::ConverseStream => ("/model/g/converse-stream", converse_body(&text)),
            Route::ChatCompletion => ("/v1/chat/completions", chat(false)),
            Route::ChatCompletionStream => ("/v1/chat/completions", chat(true)),
        }
    }
}

/// How one request ended.
#[derive(Debug)]
enum Ending {
    /// A whole response, of this status.
    Whole(u16),
    /// A stream that began (this status) and broke before its end: the
    /// client sees the failure.
    BrokenStream(u16),
    /// Cut before a response head, or not ended by the deadline: lost.
    Lost(String),
}

/// Sends one request on a connection of its own and reads to the end.
async fn call(addr: std::net::SocketAddr, path: &str, body: &[u8]) -> Ending {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        stream
            .write_all(head.as_bytes())
            .await
            .map_err(|e| format!("send: {e}"))?;
        stream
            .write_all(body)
            .await
            .map_err(|e| format!("send: {e}"))?;
        let mut raw = Vec::new();
        // A read error after the head is a broken body, judged below.
        let read = stream.read_to_end(&mut raw).await;
        Ok::<_, String>((raw, read.err()))
    };
    let (raw, read_error) = match tokio::time::timeout(REQUEST_DEADLINE, exchange).await {
        Err(_) => return Ending::Lost(format!("no end within {REQUEST_DEADLINE:?}")),
        Ok(Err(e)) => return Ending::Lost(e),
        Ok(Ok(read)) => read,
    };
    let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ending::Lost(format!(
            "no response head ({} bytes, {read_error:?})",
            raw.len()
        ));
    };
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let status: u16 = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = &raw[split + 4..];
    let whole = if head.contains("transfer-encoding: chunked") {
        body.ends_with(b"0\r\n\r\n")
    } else {
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok());
        length.is_none_or(|length| body.len() == length)
    };
    match whole {
        true => Ending::Whole(status),
        false => Ending::BrokenStream(status),
    }
}

/// What a phase's traffic came to.
#[derive(Debug, Default)]
struct Tally {
    whole: u64,
    succeeded: u64,
    broken_streams: u64,
    /// Requests that did not end in a definite answer, and why.
    lost: Vec<String>,
}

/// Runs [`CLIENTS`] clients on every route against `addr` until `phase`
/// is over, then waits for the requests in flight to end.
async fn traffic_during(
    addr: std::net::SocketAddr,
    phase: impl std::future::Future<Output = ()>,
) -> Tally {
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let (stop, tally) = (stop.clone(), tally.clone());
            tokio::spawn(async move {
                let mut n = client as u64;
                while !stop.load(Ordering::Relaxed) {
                    let route = Route::ALL[(n as usize) % Route::ALL.len()];
                    let (path, body) = route.request(n);
                    let ending = call(addr, path, &body).await;
                    let mut tally = tally.lock().unwrap();
                    match ending {
                        Ending::Whole(status) => {
                            tally.whole += 1;
                            tally.succeeded += u64::from(status == 200);
                        }
                        Ending::BrokenStream(status) if route.streams() && status == 200 => {
                            tally.broken_streams += 1
                        }
                        Ending::BrokenStream(status) => tally
                            .lost
                            .push(format!("{route:?}: a {status} answer cut short")),
                        Ending::Lost(why) => tally.lost.push(format!("{route:?}: {why}")),
                    }
                    n += CLIENTS as u64;
                }
            })
        })
        .collect();
    phase.await;
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }
    Arc::try_unwrap(tally).unwrap().into_inner().unwrap()
}

/// Waits until the gateway answers at once again (the previous phase's
/// cooldowns are over), so each phase starts from a calm gateway.
async fn calm(addr: std::net::SocketAddr) {
    let until = Instant::now() + Duration::from_secs(90);
    loop {
        let answer = raw_post(
            addr,
            "/model/g/converse",
            &[("x-switchyard-max-wait-ms", "0")],
            &converse_body("calm?"),
        )
        .await;
        if answer.status == 200 {
            return;
        }
        assert!(
            Instant::now() < until,
            "the gateway never calmed: {}",
            answer.body_text()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Checks a phase: traffic flowed, nothing was lost, memory stayed bound.
fn judge(phase: &str, tally: &Tally, gateway: &GatewayProcess) {
    let rss = gateway.rss_kib();
    eprintln!("chaos phase `{phase}`: {tally:?}, RSS {rss} KiB");
    assert!(
        tally.lost.is_empty(),
        "{phase}: requests without a definite answer: {:?}",
        tally.lost
    );
    assert!(tally.whole > 0, "{phase}: no traffic: {tally:?}");
    assert!(
        rss < MEMORY_BOUND_KIB,
        "{phase}: RSS {rss} KiB over the bound of {MEMORY_BOUND_KIB} KiB"
    );
}

fn model(id: &str) -> SimModelConfig {
    SimModelConfig {
        ttft_ms: 20,
        tokens_per_s: 400,
        ..SimModelConfig::unlimited(id)
    }
}

/// Two deployments of group `g`, each signing with a key of its own.
fn deployments(sim: &SimHandle) -> String {
    let deployment = |id: &str, model: &str, priority: u32, key: &str| {
        format!(
            "[[deployments]]\nid = \"{id}\"\nmodel_id = \"{model}\"\npriority = {priority}\nendpoint_url = \"{}\"\ncredentials = {{ source = \"static\", access_key_id = \"{key}\", secret_access_key = \"s\" }}\n",
            sim.url()
        )
    };
    format!(
        "{}{}[[model_groups]]\nname = \"g\"\ndeployments = [\"a\", \"b\"]\n",
        deployment("a", "model-a", 1, "AKIDCHAOSA"),
        deployment("b", "model-b", 2, "AKIDCHAOSB"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_accepted_request_ends_through_each_failure() {
    let sim = start_sim(
        vec![model("model-a"), model("model-b")],
        SystemClock::shared(),
    )
    .await;
    let mut redis = RedisServer::start();
    let scratch = ScratchDir::new("chaos");
    let config = format!(
        "[admin]\ntoken = \"{ADMIN_TOKEN}\"\n[state]\nbackend = \"redis\"\nurl = \"{}\"\nkey_prefix = \"chaos-{}\"\n[policy_runtime]\ncache_dir = \"{}\"\n{}",
        redis.url(),
        uuid::Uuid::new_v4().simple(),
        scratch.join("cache").display(),
        deployments(&sim),
    );
    let gateway = GatewayProcess::start("chaos", &config).await;
    let addr = gateway.addr;

    let tally = traffic_during(addr, tokio::time::sleep(Duration::from_secs(2))).await;
    judge("steady", &tally, &gateway);
    assert!(tally.succeeded > 0, "{tally:?}");

    let tally = traffic_during(addr, async {
        redis.kill();
        tokio::time::sleep(Duration::from_secs(3)).await;
        redis.restart();
        tokio::time::sleep(Duration::from_secs(3)).await;
    })
    .await;
    judge("redis killed and restarted", &tally, &gateway);

    calm(addr).await;
    let tally = traffic_during(addr, async {
        for model in ["model-a", "model-b"] {
            sim.inject(model, Fault::Reset, 10);
            sim.inject(model, Fault::MalformedFrame, 10);
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
    })
    .await;
    judge("connection resets and malformed frames", &tally, &gateway);
    for model in ["model-a", "model-b"] {
        sim.clear_injected(model);
    }

    calm(addr).await;
    let tally = traffic_during(addr, async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        sim.refuse_access_key("AKIDCHAOSA", KeyRefusal::Expired);
        tokio::time::sleep(Duration::from_secs(3)).await;
    })
    .await;
    judge("credentials expire mid-stream", &tally, &gateway);
    assert!(tally.succeeded > 0, "deployment b serves: {tally:?}");

    calm(addr).await;
    let tally = traffic_during(addr, async {
        let pushed = raw_request(
            addr,
            "POST",
            "/admin/policies/g/selection",
            &[("authorization", &format!("Bearer {ADMIN_TOKEN}"))],
            &policy_bytes("trap"),
        )
        .await;
        assert!(
            (200..300).contains(&pushed.status),
            "{}",
            pushed.body_text()
        );
        tokio::time::sleep(Duration::from_secs(3)).await;
    })
    .await;
    judge("a policy that traps on every call", &tally, &gateway);
    assert!(tally.succeeded > 0, "the safe order serves: {tally:?}");
}

/// Killed with SIGKILL while jobs wait and run, the gateway loses none:
/// started again on the same store, it ends every one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_job_is_lost_when_the_gateway_is_killed() {
    let sim = start_sim(
        vec![SimModelConfig {
            ttft_ms: 400,
            ..model("model-a")
        }],
        SystemClock::shared(),
    )
    .await;
    let store = ScratchDir::new("chaos-jobs");
    let config = format!(
        "[jobs]\ndata_dir = \"{}\"\nworkers = 2\n{}[[model_groups]]\nname = \"g\"\ndeployments = [\"a\"]\n",
        store.display(),
        deployment("a", "model-a", 1, &sim),
    );
    let mut first = GatewayProcess::start("chaos-jobs-1", &config).await;
    let mut ids = Vec::new();
    for n in 0..20 {
        let job = json!({ "type": "converse", "model": "g", "body": serde_json::from_slice::<Value>(&converse_body(&format!("job {n}"))).unwrap() });
        let answer = raw_post(first.addr, "/v1/jobs", &[], job.to_string().as_bytes()).await;
        assert_eq!(answer.status, 202, "{}", answer.body_text());
        ids.push(answer.json()["id"].as_str().unwrap().to_owned());
    }
    let until = Instant::now() + Duration::from_secs(30);
    while sim.counts("model-a").calls < 2 {
        assert!(Instant::now() < until, "jobs started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.child.kill().await.unwrap();
    drop(first);

    let second = GatewayProcess::start("chaos-jobs-2", &config).await;
    let until = Instant::now() + Duration::from_secs(120);
    for id in &ids {
        loop {
            let job = raw_get(second.addr, &format!("/v1/jobs/{id}")).await;
            assert_eq!(job.status, 200, "job {id} is kept: {}", job.body_text());
            let job = job.json();
            if job["status"] == "succeeded" {
                break;
            }
            assert!(
                !["failed", "cancelled"].contains(&job["status"].as_str().unwrap_or("")),
                "{job}"
            );
            assert!(Instant::now() < until, "job {id} ended: {job}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let rss = second.rss_kib();
    assert!(rss < MEMORY_BOUND_KIB, "RSS {rss} KiB");
}
