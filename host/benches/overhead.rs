//! Gateway overhead: the latency the gateway adds in front of Bedrock.
//!
//! The simulator answers at once (no latency profile), in a process of its
//! own; the gateway (`switchyard serve`, the release binary) runs in another,
//! with one deployment pointing at the simulator. An open-loop load generator
//! in this process sends Converse requests at a fixed rate over pooled
//! keep-alive connections, first straight to the simulator, then through the
//! gateway, at each rate in turn: the same run, the same machine state. A
//! request's latency counts from when it was due, not when it went out, so a
//! stalled sender cannot hide queueing (no coordinated omission).
//!
//! With `SWITCHYARD_BENCH_PIN=1` (and two or more CPUs) the load generator
//! and the simulator share CPU 0 and the gateway gets the others, as it
//! would in production, where a gateway does not share its cores with its
//! clients; both phases run under the same placement. By default the
//! scheduler places everything: on this project's 2-CPU machine neither
//! placement gave steadier figures (BENCHMARKS.md).
//!
//! It reports p50, p99 and p99.9 of both, the added latency and the ratio,
//! the highest rate at which the gateway kept p99 under 5 ms, and the
//! gateway's CPU time per request and its RSS (from /proc).
//!
//! Then, when Debian's `hey` is installed, the same comparison with it as an
//! outside load generator holding many connections: `hey -c RATE/10 -q 10`
//! (100 connections at 1 000 req/s, each sending ten a second), which sends
//! in bursts as real clients do. This is where queueing inside the gateway
//! shows, and what the README's one-line reproduction runs. When nginx is
//! installed, it runs as a reference proxy in front of the same simulator
//! in the same run: what a lean, mature proxy adds on this machine.
//!
//! Last, a normal client's latency at 200 req/s alone and beside 2 000
//! slowloris connections (one byte of a request head a second each).
//!
//! Run: `cargo bench -p switchyard --bench overhead`. Under `cargo test` it
//! runs one short rate as a smoke test of itself.

use std::net::TcpListener as StdListener;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

const BODY: &str = r#"{"messages":[{"role":"user","content":[{"text":"overhead"}]}]}"#;

/// A child process killed when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for(port: u16) {
    let until = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < until, "port {port} never opened");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// CPU seconds (user + system) the process has used, from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses.
    let after = stat.rsplit(") ").next().unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields
        .get(11)
        .and_then(|u| u.parse::<f64>().ok())
        .unwrap_or(0.0)
        + fields
            .get(12)
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(0.0);
    // The kernel's USER_HZ is 100 on Linux.
    ticks / 100.0
}

/// Resident memory of the process, in MiB.
fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

struct Phase {
    latencies_us: Vec<u64>,
    errors: usize,
}

impl Phase {
    fn percentile(&self, q: f64) -> f64 {
        let mut v = self.latencies_us.clone();
        v.sort_unstable();
        if v.is_empty() {
            return f64::NAN;
        }
        v[((v.len() - 1) as f64 * q).round() as usize] as f64
    }
}

/// Sends `rate` requests a second to `url` for `duration`, open loop.
async fn phase(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    url: &str,
    rate: u64,
    duration: Duration,
) -> Phase {
    let total = rate * duration.as_secs_f64() as u64;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let start = tokio::time::Instant::now() + Duration::from_millis(50);
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        let due = start + interval * i as u32;
        tokio::time::sleep_until(due).await;
        let client = client.clone();
        let request = hyper::Request::post(url)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(BODY.as_bytes())))
            .unwrap();
        tasks.push(tokio::spawn(async move {
            let response = client.request(request).await;
            let ok = match response {
                Ok(r) => {
                    let status = r.status();
                    let _ = r.into_body().collect().await;
                    status.is_success()
                }
                Err(_) => false,
            };
            (ok, due.elapsed())
        }));
    }
    let mut result = Phase {
        latencies_us: Vec::with_capacity(tasks.len()),
        errors: 0,
    };
    for t in tasks {
        let (ok, latency) = t.await.unwrap();
        if ok {
            result.latencies_us.push(latency.as_micros() as u64);
        } else {
            result.errors += 1;
        }
    }
    result
}

/// Runs the calling thread, and every thread and process it starts from now
/// on, on `cpus` only.
fn pin_to(cpus: std::ops::Range<usize>) -> std::io::Result<()> {
    // SAFETY: `cpu_set_t` is plain data, valid when zeroed; CPU_SET writes
    // within it for indices below CPU_SETSIZE, and the syscall only reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for cpu in cpus.take(libc::CPU_SETSIZE as usize) {
            libc::CPU_SET(cpu, &mut set);
        }
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }
}

/// Where the gateway runs when pinning is asked for: every CPU but the
/// first, which the generator and the simulator share. `None` leaves
/// placement to the scheduler.
fn gateway_cpus() -> Option<std::ops::Range<usize>> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let wanted = std::env::var("SWITCHYARD_BENCH_PIN").is_ok_and(|v| v == "1");
    (wanted && cpus >= 2).then_some(1..cpus)
}

/// What one `hey` run measured.
struct HeyRun {
    latencies_us: Vec<u64>,
    errors: usize,
}

/// Sends `rate` requests a second to `url` for `duration` with `hey`, over
/// `rate / 10` connections of ten requests a second each; `None` when
/// `hey` is not installed.
fn hey_phase(url: &str, rate: u64, duration: Duration) -> Option<HeyRun> {
    let out = Command::new("hey")
        .args(["-z", &format!("{}s", duration.as_secs())])
        .args(["-c", &(rate / 10).max(1).to_string(), "-q", "10"])
        .args([
            "-m",
            "POST",
            "-T",
            "application/json",
            "-d",
            BODY,
            "-o",
            "csv",
        ])
        .arg(url)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    // CSV rows: response-time (s), DNS+dialup, DNS, request-write,
    // response-delay, response-read, status-code, offset.
    let text = String::from_utf8_lossy(&out.stdout);
    let mut run = HeyRun {
        latencies_us: Vec::new(),
        errors: 0,
    };
    for row in text.lines().skip(1) {
        let fields: Vec<&str> = row.split(',').collect();
        let (Some(seconds), Some(status)) = (fields.first(), fields.get(6)) else {
            continue;
        };
        if *status != "200" {
            run.errors += 1;
        }
        if let Ok(s) = seconds.parse::<f64>() {
            run.latencies_us.push((s * 1e6) as u64);
        }
    }
    Some(run)
}

/// A reverse proxy to compare the gateway with: nginx, when installed, in
/// front of the same simulator. It shows what a lean, mature proxy adds on
/// this machine under the same load, which bounds what any proxy can.
struct ReferenceProxy {
    process: Process,
    url: String,
}

/// nginx as one process (`master_process off`, so its CPU time is the
/// process's) with keep-alive connections to the simulator, or `None` when
/// nginx is not installed (`apt-get install nginx`).
fn start_nginx(dir: &std::path::Path, sim_port: u16) -> Option<ReferenceProxy> {
    let binary = ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())?;
    let port = free_port();
    let dir = dir.join("nginx");
    std::fs::create_dir_all(&dir).ok()?;
    let d = dir.display();
    let config = format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\nerror_log {d}/error.log warn;\npid {d}/nginx.pid;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
         upstream sim {{ server 127.0.0.1:{sim_port}; keepalive 256; }}\n\
         server {{\n    listen 127.0.0.1:{port};\n    location / {{\n      proxy_pass http://sim;\n\
         proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n    }}\n  }}\n}}\n"
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, config).ok()?;
    let process = Process(
        Command::new(binary)
            .args(["-p", &d.to_string(), "-c"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?,
    );
    wait_for(port);
    Some(ReferenceProxy {
        process,
        url: format!("http://127.0.0.1:{port}/model/model-a/converse"),
    })
}

/// One target's run through `hey`: its percentiles, errors and CPU a request.
struct Measured {
    p: [f64; 3],
    errors: usize,
    cpu_us: f64,
}

fn measure(url: &str, pid: Option<u32>, rate: u64, duration: Duration) -> Option<Measured> {
    let cpu_before = pid.map(cpu_seconds);
    let run = hey_phase(url, rate, duration)?;
    let cpu = pid
        .zip(cpu_before)
        .map(|(pid, before)| cpu_seconds(pid) - before);
    let served = run.latencies_us.len().max(1) as f64;
    let phase = Phase {
        latencies_us: run.latencies_us,
        errors: run.errors,
    };
    Some(Measured {
        p: [
            phase.percentile(0.5),
            phase.percentile(0.99),
            phase.percentile(0.999),
        ],
        errors: phase.errors,
        cpu_us: cpu.map_or(f64::NAN, |c| c * 1e6 / served),
    })
}

/// Direct, through the reference proxy (when there is one) and through the
/// gateway with `hey`, side by side at each rate.
fn outside_generator(
    direct_url: &str,
    reference: Option<&ReferenceProxy>,
    gateway_url: &str,
    gateway_pid: u32,
    rates: &[u64],
    duration: Duration,
) {
    if Command::new("hey").arg("-h").output().is_err() {
        println!("hey is not installed (apt-get install hey): no outside-generator figures");
        return;
    }
    println!(
        "outside generator: hey -z {}s -c RATE/10 -q 10 (many connections, bursts)",
        duration.as_secs()
    );
    if reference.is_none() {
        println!("nginx is not installed (apt-get install nginx): no reference-proxy column");
    }
    println!(
        "{:>7} | {:>5} | {:>17} | {:>27} | {:>24} | {:>9} | {:>6}",
        "rate/s",
        "conns",
        "direct p50/p99 µs",
        "nginx added p50/p99, CPU µs",
        "added p50/p99/p99.9 µs",
        "CPU µs/req",
        "errors"
    );
    for &rate in rates {
        let Some(direct) = measure(direct_url, None, rate, duration) else {
            return;
        };
        let nginx = reference.and_then(|r| measure(&r.url, Some(r.process.0.id()), rate, duration));
        let Some(gateway) = measure(gateway_url, Some(gateway_pid), rate, duration) else {
            return;
        };
        let (d, g) = (direct.p, gateway.p);
        let nginx = nginx.map_or_else(
            || "-".to_owned(),
            |n| format!("{:.0} {:.0}, {:.0}", n.p[0] - d[0], n.p[1] - d[1], n.cpu_us),
        );
        println!(
            "{rate:>7} | {:>5} | {:>8.0} {:>8.0} | {nginx:>27} | {:>7.0} {:>7.0} {:>8.0} | {:>9.1} | {:>3}/{:<3}",
            rate / 10, d[0], d[1], g[0] - d[0], g[1] - d[1], g[2] - d[2],
            gateway.cpu_us, direct.errors, gateway.errors
        );
    }
}

/// Opens `conns` connections to `addr` that each send one byte of a
/// request head a second and never finish it (slowloris). They dribble
/// until the gateway cuts them off or the tasks are aborted.
async fn slowloris(addr: std::net::SocketAddr, conns: usize) -> Vec<tokio::task::JoinHandle<()>> {
    use tokio::io::AsyncWriteExt;
    let head = format!(
        "POST /model/g/converse HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n"
    );
    let (opened, mut ready) = tokio::sync::mpsc::channel::<()>(conns);
    let tasks = (0..conns)
        .map(|_| {
            let (head, opened) = (head.clone(), opened.clone());
            tokio::spawn(async move {
                let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else {
                    return;
                };
                let _ = opened.send(()).await;
                for byte in head.bytes().cycle() {
                    if stream.write_all(&[byte]).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            })
        })
        .collect();
    drop(opened);
    for _ in 0..conns {
        if ready.recv().await.is_none() {
            break;
        }
    }
    tasks
}

fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_switchyard"))
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (rates, duration): (Vec<u64>, Duration) = if full {
        (
            vec![100, 250, 500, 1_000, 2_000, 5_000],
            Duration::from_secs(5),
        )
    } else {
        (vec![200], Duration::from_secs(1))
    };
    let gateway_cpus = gateway_cpus();
    if gateway_cpus.is_some() {
        // Before anything starts, so the runtime's threads and the
        // simulator inherit it.
        pin_to(0..1).expect("pinning the generator to CPU 0");
    }
    let dir = std::env::temp_dir().join(format!("switchyard-overhead-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    let sim_port = free_port();
    let sim_config = dir.join("sim.toml");
    std::fs::write(&sim_config, "[simulator]\naccept_any_model = true\n").unwrap();
    let sim = Process(
        Command::new(binary())
            .args(["sim", "--config", sim_config.to_str().unwrap(), "--listen"])
            .arg(format!("127.0.0.1:{sim_port}"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the simulator starts"),
    );
    wait_for(sim_port);

    let gateway_port = free_port();
    let gateway_config = dir.join("gateway.toml");
    std::fs::write(
        &gateway_config,
        format!(
            "[[deployments]]\nid = \"a\"\nmodel_id = \"model-a\"\nendpoint_url = \"http://127.0.0.1:{sim_port}\"\ncredentials = {{ source = \"static\", access_key_id = \"x\", secret_access_key = \"x\" }}\n[[model_groups]]\nname = \"g\"\ndeployments = [\"a\"]\n[policy_runtime]\ncache_dir = \"{}\"\n",
            dir.join("cache").display()
        ),
    )
    .unwrap();
    let mut gateway = Command::new(binary());
    if let Some(cpus) = gateway_cpus.clone() {
        // SAFETY: between fork and exec the closure makes one system call
        // and allocates nothing.
        unsafe {
            gateway.pre_exec(move || pin_to(cpus.clone()));
        }
    }
    let gateway = Process(
        gateway
            .args([
                "serve",
                "--config",
                gateway_config.to_str().unwrap(),
                "--listen",
            ])
            .arg(format!("127.0.0.1:{gateway_port}"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the gateway starts"),
    );
    wait_for(gateway_port);
    let gateway_pid = gateway.0.id();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let direct_url = format!("http://127.0.0.1:{sim_port}/model/model-a/converse");
    let gateway_url = format!("http://127.0.0.1:{gateway_port}/model/g/converse");
    let client = Arc::new(
        Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(1024)
            .build_http::<Full<Bytes>>(),
    );
    println!(
        "gateway overhead: open loop, {}s per rate and target, simulator answering at once; {}",
        duration.as_secs(),
        match &gateway_cpus {
            Some(cpus) => format!(
                "generator and simulator on CPU 0, gateway on CPUs {}-{}",
                cpus.start,
                cpus.end - 1
            ),
            None => "placement left to the scheduler".to_owned(),
        }
    );
    println!(
        "{:>7} | {:>26} | {:>26} | {:>24} | {:>9} | {:>6}",
        "rate/s",
        "direct p50/p99/p99.9 µs",
        "gateway p50/p99/p99.9 µs",
        "added p50/p99/p99.9 µs",
        "CPU µs/req",
        "errors"
    );
    let mut best_under_5ms = None;
    runtime.block_on(async {
        // Warm both paths and the connection pool.
        phase(&client, &direct_url, 100, Duration::from_secs(1)).await;
        phase(&client, &gateway_url, 100, Duration::from_secs(1)).await;
        for &rate in &rates {
            let direct = phase(&client, &direct_url, rate, duration).await;
            let cpu_before = cpu_seconds(gateway_pid);
            let through = phase(&client, &gateway_url, rate, duration).await;
            let cpu = cpu_seconds(gateway_pid) - cpu_before;
            let served = through.latencies_us.len().max(1) as f64;
            let p = |ph: &Phase| [ph.percentile(0.5), ph.percentile(0.99), ph.percentile(0.999)];
            let (d, g) = (p(&direct), p(&through));
            println!(
                "{rate:>7} | {:>8.0} {:>8.0} {:>8.0} | {:>8.0} {:>8.0} {:>8.0} | {:>7.0} {:>7.0} {:>8.0} | {:>9.1} | {:>3}/{:<3}",
                d[0], d[1], d[2], g[0], g[1], g[2], g[0] - d[0], g[1] - d[1], g[2] - d[2],
                cpu * 1e6 / served, direct.errors, through.errors
            );
            println!(
                "        | ratio gateway/direct: p50 {:.2}x, p99 {:.2}x",
                g[0] / d[0],
                g[1] / d[1]
            );
            if g[1] < 5_000.0 && through.errors == 0 {
                best_under_5ms = Some(rate);
            }
        }
    });
    println!(
        "highest rate with gateway p99 < 5 ms: {}",
        best_under_5ms.map_or("none of those tried".to_owned(), |r| format!("{r} req/s"))
    );
    println!(
        "gateway RSS after the open-loop rates: {:.1} MiB",
        rss_mib(gateway_pid)
    );
    // A normal client's latency while many connections dribble their
    // headers (issue 17's slowloris), next to the same load without them.
    let slow_conns = if full { 2_000 } else { 200 };
    runtime.block_on(async {
        let rate = 200;
        let quiet = phase(&client, &gateway_url, rate, duration).await;
        let addr = ([127, 0, 0, 1], gateway_port).into();
        let slow = slowloris(addr, slow_conns).await;
        let attacked = phase(&client, &gateway_url, rate, duration).await;
        let still_open = slow.iter().filter(|t| !t.is_finished()).count();
        for t in slow {
            t.abort();
        }
        let p = |ph: &Phase| (ph.percentile(0.5), ph.percentile(0.99), ph.errors);
        let (q, a) = (p(&quiet), p(&attacked));
        println!(
            "{rate} req/s through the gateway, p50/p99 µs and errors: {:.0}/{:.0} ({}) alone, \
             {:.0}/{:.0} ({}) beside {slow_conns} slowloris connections ({still_open} still open)",
            q.0, q.1, q.2, a.0, a.1, a.2
        );
    });
    let hey_rates: &[u64] = if full { &[200, 500, 1_000] } else { &[200] };
    let hey_duration = if full {
        Duration::from_secs(15)
    } else {
        Duration::from_secs(1)
    };
    let nginx = start_nginx(&dir, sim_port);
    outside_generator(
        &direct_url,
        nginx.as_ref(),
        &gateway_url,
        gateway_pid,
        hey_rates,
        hey_duration,
    );
    println!(
        "gateway RSS after the run (the slowloris connections' buffers included): {:.1} MiB",
        rss_mib(gateway_pid)
    );
    drop(nginx);
    drop(gateway);
    drop(sim);
    let _ = std::fs::remove_dir_all(&dir);
}
