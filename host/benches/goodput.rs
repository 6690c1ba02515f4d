//! Goodput: how much of the paid Bedrock capacity turns into answers when
//! demand exceeds it.
//!
//! Three deployments of 60 RPM each (180 requests a minute in all) behind
//! the gateway, in front of the simulator enforcing the same quotas per
//! rolling minute, both on the real clock. Ten users keep four requests each
//! outstanding for the whole run, far more than the capacity. Goodput is the
//! answers completed within the run over the most the quotas allow in that
//! time (the sum of quotas times the minutes begun: a rolling-minute quota
//! lets its full amount through in each minute).
//!
//! Run: `cargo bench -p switchyard --bench goodput` (3 minutes). Under
//! `cargo test` it runs a 10 s smoke version of itself.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_bedrockruntime::config::retry::RetryConfig;
use aws_sdk_bedrockruntime::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_bedrockruntime::types::{ContentBlock, ConversationRole, Message};
use aws_sdk_bedrockruntime::Client;
use switchyard::clock::SystemClock;
use switchyard::config::Config;
use switchyard::gateway::{Gateway, Upstreams};
use switchyard::sim::{SimConfig, SimModelConfig, Simulator};
use tokio::net::TcpListener;

const MODELS: [&str; 3] = ["model-a", "model-b", "model-c"];
const RPM: u64 = 60;
const USERS: usize = 10;
const OUTSTANDING_PER_USER: usize = 4;

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    throttled: AtomicU64,
    other_errors: AtomicU64,
}

fn client(url: &str) -> Client {
    let config = aws_sdk_bedrockruntime::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("bench", "bench", None, None, "bench"))
        .endpoint_url(url)
        .retry_config(RetryConfig::disabled())
        .build();
    Client::from_conf(config)
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let duration = if full {
        Duration::from_secs(180)
    } else {
        Duration::from_secs(10)
    };
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    runtime.block_on(run(duration));
}

async fn run(duration: Duration) {
    let clock = SystemClock::shared();
    let sim_config = SimConfig {
        models: MODELS
            .iter()
            .map(|m| SimModelConfig {
                rpm: Some(RPM as u32),
                ..SimModelConfig::unlimited(m)
            })
            .collect(),
        accept_any_model: false,
        ..SimConfig::default()
    };
    let sim = Simulator::new(&sim_config, clock.clone())
        .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .expect("simulator binds");
    let mut text = String::from("[admission]\nmax_wait_ms = 120000\n");
    for (i, model) in MODELS.iter().enumerate() {
        text.push_str(&format!(
            "[[deployments]]\nid = \"d{i}\"\nmodel_id = \"{model}\"\npriority = {}\nrpm = {RPM}\nendpoint_url = \"{}\"\ncredentials = {{ source = \"static\", access_key_id = \"x\", secret_access_key = \"x\" }}\n",
            i + 1,
            sim.url()
        ));
    }
    text.push_str("[[model_groups]]\nname = \"g\"\ndeployments = [\"d0\", \"d1\", \"d2\"]\n");
    let config = Config::parse(&text, "goodput bench").expect("valid config");
    let gateway =
        Arc::new(Gateway::build(&config, clock, &Upstreams::Aws).expect("gateway builds"));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let serving = gateway.clone();
    tokio::spawn(async move { serving.serve(listener, std::future::pending()).await });

    let tally = Arc::new(Tally::default());
    let started = Instant::now();
    let end = started + duration;
    let mut loops = Vec::new();
    for u in 0..USERS {
        for _ in 0..OUTSTANDING_PER_USER {
            let (client, tally) = (client(&url), tally.clone());
            let user = format!("user-{u}");
            loops.push(tokio::spawn(async move {
                let mut mine = 0u64;
                while Instant::now() < end {
                    let user = user.clone();
                    let sent = client
                        .converse()
                        .model_id("g")
                        .messages(
                            Message::builder()
                                .role(ConversationRole::User)
                                .content(ContentBlock::Text("goodput".into()))
                                .build()
                                .unwrap(),
                        )
                        .customize()
                        .mutate_request(move |req| {
                            req.headers_mut().insert("x-switchyard-user", user.clone());
                        })
                        .send();
                    let Ok(answer) = tokio::time::timeout_at(end.into(), sent).await else {
                        break; // the run ended while it waited
                    };
                    match answer {
                        Ok(_) => {
                            tally.ok.fetch_add(1, Ordering::Relaxed);
                            mine += 1;
                        }
                        Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 429) => {
                            tally.throttled.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => {
                            tally.other_errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                mine
            }));
        }
    }
    let mut per_loop = Vec::new();
    for l in loops {
        per_loop.push(l.await.unwrap());
    }
    let per_user: Vec<u64> = per_loop
        .chunks(OUTSTANDING_PER_USER)
        .map(|c| c.iter().sum())
        .collect();

    let minutes_begun = duration.as_secs().div_ceil(60);
    let capacity = RPM * MODELS.len() as u64 * minutes_begun;
    let ok = tally.ok.load(Ordering::Relaxed);
    let (calls, upstream_429) = MODELS.iter().fold((0, 0), |(c, t), m| {
        let counts = sim.counts(m);
        (c + counts.calls, t + counts.throttles)
    });
    let sum: f64 = per_user.iter().map(|&n| n as f64).sum();
    let sum_sq: f64 = per_user.iter().map(|&n| (n as f64).powi(2)).sum();
    let jain = if sum_sq == 0.0 {
        0.0
    } else {
        sum * sum / (per_user.len() as f64 * sum_sq)
    };
    println!(
        "goodput over {} s ({} users x {} outstanding, 3 deployments x {RPM} RPM)",
        duration.as_secs(),
        USERS,
        OUTSTANDING_PER_USER
    );
    println!("  answers completed          {ok}");
    println!("  capacity (quotas x {minutes_begun} min) {capacity}");
    println!(
        "  goodput                    {:.1}%",
        ok as f64 * 100.0 / capacity as f64
    );
    println!(
        "  client 429s                {}",
        tally.throttled.load(Ordering::Relaxed)
    );
    println!(
        "  client other errors        {}",
        tally.other_errors.load(Ordering::Relaxed)
    );
    println!("  upstream calls / 429s      {calls} / {upstream_429}");
    println!("  answers per user           {per_user:?} (Jain's index {jain:.3})");
}
