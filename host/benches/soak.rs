//! Soak: the gateway, in its own process, under a steady rate of requests
//! with faults for ten minutes. Reports its resident memory and open file
//! descriptors at the start and at the end (a leak shows as growth), and
//! how every request ended.
//!
//! 40 requests a second, open loop, spread over the main routes (Converse,
//! ConverseStream, OpenAI chat plain and streamed) and one async job every
//! two seconds, against the simulator's two models, each of which throttles
//! 2% of calls, answers 1% with 503, resets 1% of connections and breaks 1%
//! of streams with a malformed frame.
//!
//! Run: `cargo bench -p switchyard --bench soak` (10 minutes; `SOAK_SECONDS`
//! sets another length). Under
//! `cargo test` it runs a 10 s smoke version of itself. Either fails if a
//! request is left without a definite answer or a job is lost.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchyard::clock::SystemClock;
use switchyard::sim::{ConfiguredFault, Fault, SimConfig, SimModelConfig, Simulator};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const RATE_PER_S: u64 = 40;
const JOB_EVERY: Duration = Duration::from_secs(2);
const SAMPLE_EVERY: Duration = Duration::from_secs(10);
const REQUEST_DEADLINE: Duration = Duration::from_secs(60);

#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    ok: AtomicU64,
    errors: AtomicU64,
    broken_streams: AtomicU64,
    lost: AtomicU64,
    /// Why requests were lost, with their route (the first 50).
    why_lost: std::sync::Mutex<Vec<String>>,
}

impl Tally {
    fn lose(&self, path: &str, why: String) {
        self.lost.fetch_add(1, Ordering::Relaxed);
        let mut why_lost = self.why_lost.lock().unwrap();
        if why_lost.len() < 50 {
            why_lost.push(format!("{path}: {why}"));
        }
    }
}

/// The gateway's resident memory (KiB) and open file descriptors now.
fn sample(pid: u32) -> (u64, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0);
    (rss, fds)
}

/// Sends one request and reads to the end: whether it came back whole
/// (and its status), broke after its head, or never ended.
async fn call(addr: SocketAddr, path: &str, body: &[u8]) -> Result<(u16, bool), String> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        stream
            .write_all(head.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        stream.write_all(body).await.map_err(|e| e.to_string())?;
        let mut raw = Vec::new();
        let _ = stream.read_to_end(&mut raw).await;
        Ok::<_, String>(raw)
    };
    let raw = tokio::time::timeout(REQUEST_DEADLINE, exchange)
        .await
        .map_err(|_| "no end within the deadline".to_owned())??;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no response head")?;
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = &raw[split + 4..];
    let whole = if head.contains("transfer-encoding: chunked") {
        body.ends_with(b"0\r\n\r\n")
    } else {
        head.lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok())
            .is_none_or(|n| n == body.len())
    };
    Ok((status, whole))
}

fn converse(text: &str) -> String {
    serde_json::json!({ "messages": [{ "role": "user", "content": [{ "text": text }] }] })
        .to_string()
}

fn chat(text: &str, stream: bool) -> String {
    serde_json::json!({ "model": "g", "stream": stream, "messages": [{ "role": "user", "content": text }] })
        .to_string()
}

fn main() {
    // `SOAK_SECONDS` sets another length (to look into a finding).
    let full = std::env::args().any(|a| a == "--bench");
    let seconds = std::env::var("SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if full { 600 } else { 10 });
    let duration = Duration::from_secs(seconds);
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    runtime.block_on(run(duration));
}

async fn run(duration: Duration) {
    let faulty = |id: &str| SimModelConfig {
        ttft_ms: 30,
        tokens_per_s: 500,
        faults: [
            (Fault::Throttle, 0.02),
            (Fault::Unavailable, 0.01),
            (Fault::Reset, 0.01),
            (Fault::MalformedFrame, 0.01),
        ]
        .into_iter()
        .map(|(kind, probability)| ConfiguredFault { kind, probability })
        .collect(),
        ..SimModelConfig::unlimited(id)
    };
    let sim_config = SimConfig {
        models: vec![faulty("model-a"), faulty("model-b")],
        accept_any_model: false,
        ..SimConfig::default()
    };
    let sim = Simulator::new(&sim_config, SystemClock::shared())
        .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .expect("simulator binds");

    let dir =
        std::env::temp_dir().join(format!("switchyard-soak-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("a scratch folder");
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let deployment = |id: &str, model: &str, priority: u32| {
        format!(
            "[[deployments]]\nid = \"{id}\"\nmodel_id = \"{model}\"\npriority = {priority}\nendpoint_url = \"{}\"\ncredentials = {{ source = \"static\", access_key_id = \"soak\", secret_access_key = \"soak\" }}\n",
            sim.url()
        )
    };
    let config = format!(
        "listen = \"{addr}\"\n[logging]\nlevel = \"error\"\n[jobs]\ndata_dir = \"{}\"\nworkers = 2\n{}{}[[model_groups]]\nname = \"g\"\ndeployments = [\"a\", \"b\"]\n",
        dir.join("jobs").display(),
        deployment("a", "model-a", 1),
        deployment("b", "model-b", 2),
    );
    let config_path = dir.join("switchyard.toml");
    std::fs::write(&config_path, config).expect("config written");
    let mut gateway = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["serve", "--config"])
        .arg(&config_path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the gateway starts");
    let pid = gateway.id().expect("the gateway runs");
    let until = Instant::now() + Duration::from_secs(60);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(Instant::now() < until, "the gateway listens");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let tally = Arc::new(Tally::default());
    let jobs = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let started = Instant::now();
    let mut samples = vec![(0u64, sample(pid))];
    let mut requests = tokio::time::interval(Duration::from_micros(1_000_000 / RATE_PER_S));
    let mut next_job = Instant::now();
    let mut next_sample = Instant::now() + SAMPLE_EVERY;
    let mut in_flight = tokio::task::JoinSet::new();
    let mut n = 0u64;
    while started.elapsed() < duration {
        requests.tick().await;
        n += 1;
        let (path, body, streams) = match n % 4 {
            0 => ("/model/g/converse", converse(&format!("soak {n}")), false),
            1 => (
                "/model/g/converse-stream",
                converse(&format!("soak {n}")),
                true,
            ),
            2 => (
                "/v1/chat/completions",
                chat(&format!("soak {n}"), false),
                false,
            ),
            _ => (
                "/v1/chat/completions",
                chat(&format!("soak {n}"), true),
                true,
            ),
        };
        let tally = tally.clone();
        tally.sent.fetch_add(1, Ordering::Relaxed);
        in_flight.spawn(async move {
            match call(addr, path, body.as_bytes()).await {
                Ok((200, true)) => {
                    tally.ok.fetch_add(1, Ordering::Relaxed);
                }
                Ok((_, true)) => {
                    tally.errors.fetch_add(1, Ordering::Relaxed);
                }
                Ok((200, false)) if streams => {
                    tally.broken_streams.fetch_add(1, Ordering::Relaxed);
                }
                Ok((status, _)) => tally.lose(path, format!("a {status} answer cut short")),
                Err(why) => tally.lose(path, why),
            }
        });
        if Instant::now() >= next_job {
            next_job += JOB_EVERY;
            let jobs = jobs.clone();
            in_flight.spawn(async move {
                let job = format!(
                    r#"{{"type":"converse","model":"g","body":{}}}"#,
                    converse("a soak job")
                );
                let submitted = submit(addr, &job).await;
                if let Some(id) = submitted {
                    jobs.lock().unwrap().push(id);
                }
            });
        }
        if Instant::now() >= next_sample {
            next_sample += SAMPLE_EVERY;
            samples.push((started.elapsed().as_secs(), sample(pid)));
        }
        while in_flight.try_join_next().is_some() {}
    }
    while in_flight.join_next().await.is_some() {}
    let jobs = jobs.lock().unwrap().clone();
    let lost_jobs = wait_for_jobs(addr, &jobs).await;
    samples.push((started.elapsed().as_secs(), sample(pid)));

    let t = &tally;
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let (start_rss, start_fds) = samples.get(1).unwrap_or(&samples[0]).1;
    let (end_rss, end_fds) = samples.last().unwrap().1;
    let peak_rss = samples.iter().map(|s| s.1 .0).max().unwrap_or(0);
    println!(
        "soak: {} s at {RATE_PER_S} requests/s with faults; {} requests: {} 200, {} errors answered whole, {} streams broken after their head, {} without a definite answer; {} jobs, {} lost",
        started.elapsed().as_secs(),
        load(&t.sent),
        load(&t.ok),
        load(&t.errors),
        load(&t.broken_streams),
        load(&t.lost),
        jobs.len(),
        lost_jobs
    );
    println!(
        "soak: RSS {start_rss} KiB at {} s, {end_rss} KiB at the end (peak {peak_rss} KiB); open fds {start_fds} then {end_fds}",
        samples.get(1).map_or(0, |s| s.0)
    );
    println!("soak: samples (s, RSS KiB, fds): {samples:?}");
    for why in t.why_lost.lock().unwrap().iter() {
        println!("soak: lost: {why}");
    }
    let _ = gateway.start_kill();
    let _ = gateway.wait().await;
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(load(&t.lost), 0, "requests without a definite answer");
    assert_eq!(lost_jobs, 0, "jobs lost");
}

/// Submits a job; its id, or `None` when it was refused (a definite answer).
async fn submit(addr: SocketAddr, job: &str) -> Option<String> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let head = format!(
        "POST /v1/jobs HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        job.len()
    );
    stream.write_all(head.as_bytes()).await.ok()?;
    stream.write_all(job.as_bytes()).await.ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.ok()?;
    let text = String::from_utf8_lossy(&raw);
    let body = text.split_once("\r\n\r\n")?.1;
    let json: serde_json::Value = serde_json::from_str(body).ok()?;
    json["id"].as_str().map(str::to_owned)
}

/// Waits (up to two minutes) for every job to end; returns how many did
/// not, or are gone.
async fn wait_for_jobs(addr: SocketAddr, ids: &[String]) -> usize {
    let until = Instant::now() + Duration::from_secs(120);
    let mut pending: Vec<&String> = ids.iter().collect();
    while !pending.is_empty() && Instant::now() < until {
        let mut still = Vec::new();
        for id in pending {
            let ended = get_status(addr, id)
                .await
                .is_some_and(|s| ["succeeded", "failed", "cancelled"].contains(&s.as_str()));
            if !ended {
                still.push(id);
            }
        }
        pending = still;
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    pending.len()
}

async fn get_status(addr: SocketAddr, id: &str) -> Option<String> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let head = format!("GET /v1/jobs/{id} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n");
    stream.write_all(head.as_bytes()).await.ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.ok()?;
    let text = String::from_utf8_lossy(&raw);
    let body = text.split_once("\r\n\r\n")?.1;
    let json: serde_json::Value = serde_json::from_str(body).ok()?;
    json["status"].as_str().map(str::to_owned)
}
