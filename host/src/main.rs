//! The `switchyard` command: run the gateway, run the Bedrock simulator.

mod jobs_command;
mod keys_command;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

/// mimalloc: glibc's malloc and free were about a tenth of the gateway's CPU
/// under load (BENCHMARKS.md, issue 31).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use switchyard::authoring;
use switchyard::clock::SystemClock;
use switchyard::config::{self, Config, PolicyRef, Preset};
use switchyard::gateway::{Gateway, Upstreams};
use switchyard::policy::PolicyKind;
use switchyard::sim::{SimConfig, Simulator};

/// A gateway in front of AWS Bedrock whose routing decisions are sandboxed,
/// hot-swappable WebAssembly policies.
#[derive(Debug, Parser)]
#[command(name = "switchyard", version, about, long_about = None)]
struct Cli {
    /// Log format [default: the config's `logging.format`, else text].
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    /// Readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Print the effective config: the built-in defaults, then the preset,
    /// then the file, with where each value came from. Secrets are redacted.
    Show {
        /// The gateway's TOML config.
        #[arg(long, short, default_value = "switchyard.toml")]
        config: PathBuf,
        /// The preset `serve --preset` would start from.
        #[arg(long)]
        preset: Option<Preset>,
    },
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway.
    ///
    /// With --simulate, the Bedrock simulator starts in-process and every
    /// deployment without an `endpoint_url` is sent to it, so no AWS account
    /// is needed.
    Serve {
        /// The gateway's TOML config.
        #[arg(long, short, default_value = "switchyard.toml")]
        config: PathBuf,
        /// Listen here instead of the config's `listen`.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Send deployments without an `endpoint_url` to an in-process simulator.
        #[arg(long)]
        simulate: bool,
        /// Start from a preset's defaults for admission, timeouts and logging
        /// (development, single-user, production-low, production-high)
        /// instead of the config's `preset`; keys the config sets still win.
        /// `switchyard config show` prints the result.
        #[arg(long)]
        preset: Option<Preset>,
    },
    /// Inspect a gateway config.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Run the Bedrock simulator on its own.
    ///
    /// It reads the `[simulator]` table of the given TOML file (a gateway
    /// config or a file of its own); with no file it answers for any model
    /// without quotas.
    Sim {
        /// A TOML file with a `[simulator]` table.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Listen here instead of the file's `simulator.listen`.
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// Ask a running gateway whether it is alive (`/healthz`) or ready for
    /// traffic (`--ready`: `/readyz`).
    ///
    /// Exits 0 when it answers 200 within 5 s, else 1 with why. It needs no
    /// shell or curl, so a minimal container image can use it as its
    /// HEALTHCHECK.
    Healthcheck {
        /// The gateway's base URL.
        #[arg(long, default_value = "http://127.0.0.1:4000")]
        gateway: String,
        /// Ask `/readyz` instead of `/healthz`.
        #[arg(long)]
        ready: bool,
    },
    /// Work with policy components.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Async jobs of a running gateway: list, show, cancel.
    #[command(subcommand)]
    Jobs(jobs_command::JobsCommand),
    /// API keys of a running gateway: create, list, show, disable, enable,
    /// rotate, update, delete.
    ///
    /// Each key belongs to a team and may have limits of its own (requests
    /// and tokens per minute, requests running at once, token and USD
    /// budgets per UTC day, week from Monday, and month). A key's secret is
    /// printed once, when it is created or rotated. Needs the admin token.
    #[command(subcommand)]
    Keys(keys_command::KeysCommand),
    /// Teams of a running gateway: create, list, show, set-limits, delete.
    ///
    /// A team's limits are shared by all its keys; its spend is counted per
    /// UTC day, week (from Monday) and month. Needs the admin token.
    #[command(subcommand)]
    Teams(keys_command::TeamsCommand),
    /// Usage report of a running gateway: requests, tokens and USD.
    ///
    /// One row per team, key, user, model, model group, deployment or day,
    /// over a range of UTC days, and a total; --csv for spreadsheets. Needs
    /// the admin token.
    Usage(keys_command::UsageArgs),
    /// The policy lab: compare policy combinations on a scenario.
    ///
    /// Runs each `[[policies]]` entry of the scenario over the same arrivals
    /// in simulated time (a ten-minute scenario takes seconds), prints a
    /// comparison table (success rate, goodput, primary share, errors,
    /// upstream 429s, p50/p99 latency, Jain's fairness index, cooldown time)
    /// and writes a chart of the requests each deployment answered over time,
    /// one panel per combination. Scenarios: examples/scenarios/.
    Lab {
        /// The scenario file (TOML).
        scenario: PathBuf,
        /// Where to write the chart (`<scenario>.svg`) and the full report
        /// (`<scenario>.json`).
        #[arg(long, default_value = "lab-results")]
        out: PathBuf,
        /// Print the report as JSON instead of the table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Upload a component to a running gateway and activate it.
    ///
    /// The gateway runs it through the same validation gate as at start
    /// (compile, world and version, load-check call with the slot's params)
    /// and refuses it with the reason if it fails; the active policy stays.
    Push {
        /// The gateway's base URL.
        #[arg(long, default_value = "http://127.0.0.1:4000")]
        gateway: String,
        /// The admin token (`[admin] token` in the gateway's config).
        #[arg(long, env = "SWITCHYARD_ADMIN_TOKEN", hide_env_values = true)]
        token: String,
        /// The model group whose slot receives it.
        #[arg(long)]
        group: String,
        /// Which slot.
        #[arg(long, value_enum)]
        kind: KindArg,
        /// Validate and add it, but leave the active version in place.
        #[arg(long)]
        stage: bool,
        /// The new version's params, as a JSON object (default: the active
        /// version's params).
        #[arg(long)]
        params: Option<String>,
        /// The component (`.wasm`).
        file: PathBuf,
    },
    /// List the built-in policies.
    Builtins,
    /// Write a new policy crate, ready to build, with a fixture and unit tests.
    ///
    /// Then: `switchyard policy build DIR`, `switchyard policy test
    /// DIR/target/NAME.wasm DIR/fixtures/*.json`, `switchyard policy push`.
    New {
        /// The policy's name (lowercase letters, digits, `-`); also the
        /// crate's and the component's.
        name: String,
        /// Which question it answers.
        #[arg(long, value_enum)]
        kind: KindArg,
        /// Where to write it (default: ./NAME). Must be empty or missing.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// The `policies/sdk` folder of a Switchyard checkout (default: the
        /// one this binary was built from).
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
    /// Build a policy crate to a component (`target/NAME.wasm`).
    ///
    /// Uses rustup's wasm32-unknown-unknown target when installed, or
    /// Debian's rustc-web route, like the gateway's own build; says how to
    /// install one when neither is there.
    Build {
        /// The policy crate's folder.
        #[arg(default_value = ".")]
        path: PathBuf,
        /// Cargo's target folder (default: PATH/target). Share one between
        /// policies so the wasm32 standard library is built once.
        #[arg(long)]
        target_dir: Option<PathBuf>,
        /// Where to write the component (default: TARGET_DIR/NAME.wasm).
        #[arg(long, short)]
        out: Option<PathBuf>,
    },
    /// Run a policy on JSON fixtures, in the gateway's runtime, and judge its
    /// decisions.
    ///
    /// Each fixture fixes the clock, the random seed, the params, the
    /// key-value state and the call's input, and may say what the decision
    /// must be (`expect`). Prints each decision, the fuel (WebAssembly
    /// instructions, the same on every run) and the peak memory, with a diff
    /// for each mismatch; exits 1 on any failure. Fixture format:
    /// docs/policy-testing.md.
    Test {
        /// The component.
        component: PathBuf,
        /// Fixture files (one fixture object, or an array of them, each).
        #[arg(required = true)]
        fixtures: Vec<PathBuf>,
        /// Print the results as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run a group's policies over a scripted timeline of outcomes on a
    /// simulated clock, and print every decision.
    ///
    /// The timeline (TOML) has the gateway config's [[deployments]] and
    /// [policies] tables, `duration_s`, `request_every_ms` and [[windows]] of
    /// outcomes per deployment; see examples/timelines/.
    Simulate {
        /// The timeline file.
        timeline: PathBuf,
        /// Use this selection policy instead of the timeline's (a built-in
        /// name or a .wasm path; with no params).
        #[arg(long)]
        selection: Option<String>,
        /// Use this cooldown policy instead of the timeline's.
        #[arg(long)]
        cooldown: Option<String>,
        /// Use this fallback policy instead of the timeline's.
        #[arg(long)]
        fallback: Option<String>,
        /// Print the run as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run the gateway's load gate on a component: compile, world and
    /// version, link, and one call on synthetic input with the given params.
    Check {
        /// The component.
        component: PathBuf,
        /// The params to check it with, as JSON.
        #[arg(long, default_value = "{}")]
        params: String,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum KindArg {
    Selection,
    Cooldown,
    Fallback,
}

impl From<KindArg> for switchyard::policy::PolicyKind {
    fn from(k: KindArg) -> Self {
        match k {
            KindArg::Selection => Self::Selection,
            KindArg::Cooldown => Self::Cooldown,
            KindArg::Fallback => Self::Fallback,
        }
    }
}

/// Starts logging: `RUST_LOG` wins over `level`, `--log-format` over
/// `format`. A gateway (`otlp` given) with `[observability.otlp]` or the
/// `OTEL_*` variables set exports its spans too; the handle keeps the
/// exporter alive.
fn init_logging(
    flag: Option<LogFormat>,
    logging: &config::LoggingConfig,
    otlp: Option<&switchyard::telemetry::OtlpConfig>,
) -> anyhow::Result<Option<switchyard::telemetry::Traces>> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;

    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&logging.level));
    let format = flag.unwrap_or(match logging.format {
        config::LogFormat::Text => LogFormat::Text,
        config::LogFormat::Json => LogFormat::Json,
    });
    let traces = match otlp {
        Some(otlp) => otlp
            .resolve(|name| std::env::var(name).ok())
            .map_err(|(key, problem)| anyhow::anyhow!("traces: {key}: {problem}"))?,
        None => None,
    };
    let Some(traces) = traces else {
        // No traces: the plain subscriber, whose one filter costs least.
        let builder = tracing_subscriber::fmt().with_env_filter(filter);
        match format {
            LogFormat::Text => builder.init(),
            LogFormat::Json => builder.json().init(),
        }
        return Ok(None);
    };
    let logs = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer().boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer().json().boxed(),
    };
    let (spans, handle) =
        switchyard::telemetry::layer(&traces).map_err(|e| anyhow::anyhow!("traces: {e}"))?;
    tracing_subscriber::registry()
        .with(logs.with_filter(filter))
        .with(spans)
        .init();
    tracing::info!(
        url = %traces.traces_url,
        sampling_ratio = traces.sampling_ratio,
        service = %traces.service_name,
        "exporting traces over OTLP/HTTP"
    );
    Ok(Some(handle))
}

/// `switchyard healthcheck`.
async fn healthcheck(gateway: &str, ready: bool) -> anyhow::Result<()> {
    let path = if ready { "/readyz" } else { "/healthz" };
    tokio::time::timeout(
        std::time::Duration::from_secs(5),
        switchyard::gateway_client::probe(gateway, path),
    )
    .await
    .map_err(|_| anyhow::anyhow!("{gateway}{path} did not answer within 5 s"))?
    .with_context(|| format!("{gateway}{path}"))?;
    println!("ok: {gateway}{path}");
    Ok(())
}

fn read_sim_config(path: &Path) -> anyhow::Result<SimConfig> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut table: toml::Table =
        toml::from_str(&text).with_context(|| format!("invalid TOML in {}", path.display()))?;
    match table.remove("simulator") {
        None => Ok(SimConfig::default()),
        Some(value) => value
            .try_into()
            .with_context(|| format!("invalid [simulator] table in {}", path.display())),
    }
}

/// How `switchyard serve` was asked to run.
struct ServeArgs {
    listen: Option<SocketAddr>,
    simulate: bool,
    preset: Option<Preset>,
    log_format: Option<LogFormat>,
}

async fn serve(config_path: &Path, args: ServeArgs) -> anyhow::Result<()> {
    let ServeArgs {
        listen,
        simulate,
        preset,
        log_format,
    } = args;
    let config = Config::load_with(config_path, preset)?;
    // After the config: its preset and `[logging]` say how to log.
    let traces = init_logging(
        log_format,
        &config.logging,
        Some(&config.observability.otlp),
    )?;
    if let Some(preset) = config.preset {
        tracing::info!(%preset, "defaults from the preset; `switchyard config show` prints the effective config");
    }
    let clock = SystemClock::shared();
    let mut _simulator = None;
    let upstreams = if simulate {
        let sim_config = read_sim_config(config_path)?;
        let sim = Simulator::new(&sim_config, clock.clone())
            .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .context("starting the in-process simulator")?;
        tracing::warn!(url = %sim.url(), "SIMULATOR MODE: deployments without endpoint_url go to the in-process Bedrock simulator");
        let url = sim.url();
        _simulator = Some(sim);
        Upstreams::Simulator(url)
    } else {
        Upstreams::Aws
    };
    let gateway =
        Gateway::build(&config, clock, &upstreams)?.with_config_path(config_path.to_owned());
    if matches!(upstreams, Upstreams::Aws) {
        // A word at start beats a failing first request; a source that is
        // not there yet (IMDS, a role still being granted) may come later,
        // so this only warns.
        let check = gateway.check_credentials();
        tokio::spawn(async move {
            for (deployment, problem) in check.await {
                tracing::warn!(%deployment, %problem, "no AWS credentials for this deployment yet; its calls fail over to others until there are (hint: configure its `credentials`, or run with --simulate to use the built-in Bedrock simulator)");
            }
        });
    }
    let _watcher = (config.admin.watch_interval_ms > 0).then(|| {
        gateway.watch_policy_files(std::time::Duration::from_millis(
            config.admin.watch_interval_ms,
        ))
    });
    if config.api_keys.is_empty() {
        tracing::warn!("NO API KEYS CONFIGURED: the gateway is open to anyone who can reach it, and a request's user is whatever its x-switchyard-user header says; add [[api_keys]] to require keys");
    } else {
        tracing::info!(keys = config.api_keys.len(), "client API keys required");
    }
    if config.admin.token.is_none() {
        tracing::info!("admin API off (no [admin] token in the config)");
    }
    let addr = listen.unwrap_or(config.listen);
    let listener =
        switchyard::edge::bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
    tracing::info!(addr = %listener.local_addr()?, groups = config.model_groups.len(), deployments = config.deployments.len(), "switchyard serving");
    let cut = gateway.serve(listener, shutdown_requested()).await?;
    if cut > 0 {
        tracing::warn!(
            connections = cut,
            "stopped with connections cut at the end of the shutdown grace"
        );
    } else {
        tracing::info!("stopped: every request finished");
    }
    if let Some(traces) = &traces {
        // The last requests' spans, still queued for their batch.
        traces.flush(std::time::Duration::from_secs(2)).await;
    }
    Ok(())
}

/// Resolves on SIGTERM (what orchestrators send) or SIGINT (Ctrl-C).
async fn shutdown_requested() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot listen for SIGTERM/SIGINT; stop the gateway with SIGKILL");
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn sim(config_path: Option<&Path>, listen: Option<SocketAddr>) -> anyhow::Result<()> {
    let config = match config_path {
        Some(p) => read_sim_config(p)?,
        None => SimConfig::default(),
    };
    let addr = listen.unwrap_or(config.listen);
    let handle = Simulator::new(&config, SystemClock::shared())
        .bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    tracing::info!(addr = %handle.addr(), models = config.models.len(), "bedrock simulator serving");
    handle.wait().await;
    Ok(())
}

async fn policy(command: PolicyCommand) -> anyhow::Result<()> {
    match command {
        PolicyCommand::Push {
            gateway,
            token,
            group,
            kind,
            stage,
            params,
            file,
        } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let params: Option<serde_json::Value> = params
                .map(|p| serde_json::from_str(&p))
                .transpose()
                .context("--params is not valid JSON")?;
            let answer = switchyard::gateway_client::push(
                &gateway,
                &token,
                &group,
                kind.into(),
                bytes,
                params.as_ref(),
                stage,
            )
            .await?;
            println!("{}", serde_json::to_string_pretty(&answer)?);
            Ok(())
        }
        PolicyCommand::Builtins => {
            for b in switchyard::policy::builtin::ALL {
                println!("{:<10} {:<17} {}", b.kind.world(), b.name, b.summary);
            }
            Ok(())
        }
        PolicyCommand::New {
            name,
            kind,
            dir,
            sdk,
        } => {
            let dir = dir.unwrap_or_else(|| PathBuf::from(&name));
            let made = authoring::scaffold::new_policy(&dir, &name, kind.into(), sdk.as_deref())?;
            println!("wrote {}:", made.dir.display());
            for file in made.files {
                println!("  {file}");
            }
            let d = made.dir.display();
            println!(
                "next:\n  switchyard policy build {d}\n  switchyard policy test {d}/target/{name}.wasm {d}/fixtures/*.json"
            );
            Ok(())
        }
        PolicyCommand::Build {
            path,
            target_dir,
            out,
        } => {
            let built =
                authoring::wasm_build::build_policy(&path, target_dir.as_deref(), out.as_deref())?;
            eprintln!("built {} bytes ({})", built.bytes, built.route);
            println!("{}", built.component.display());
            Ok(())
        }
        PolicyCommand::Test {
            component,
            fixtures,
            json,
        } => policy_test(&component, &fixtures, json),
        PolicyCommand::Simulate {
            timeline,
            selection,
            cooldown,
            fallback,
            json,
        } => {
            let parsed = authoring::simulate::Timeline::load(&timeline)?;
            let mut overrides = std::collections::BTreeMap::new();
            for (kind, spec) in [
                (PolicyKind::Selection, selection),
                (PolicyKind::Cooldown, cooldown),
                (PolicyKind::Fallback, fallback),
            ] {
                if let Some(spec) = spec {
                    overrides.insert(kind, policy_ref(&spec));
                }
            }
            let report = authoring::simulate::run(&parsed, &overrides)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.render_text());
            }
            Ok(())
        }
        PolicyCommand::Check { component, params } => {
            let params: serde_json::Value =
                serde_json::from_str(&params).context("--params is not valid JSON")?;
            let bytes = std::fs::read(&component)
                .with_context(|| format!("cannot read {}", component.display()))?;
            let label = component.display().to_string();
            let kind = authoring::check(&label, &bytes, &params)?;
            println!(
                "ok: {label} is a {kind} policy of {}@{} and passes the load gate",
                switchyard::policy::PACKAGE,
                switchyard::policy::VERSION
            );
            Ok(())
        }
    }
}

/// A built-in policy name, or a path when it names a `.wasm` file.
fn policy_ref(spec: &str) -> PolicyRef {
    if spec.ends_with(".wasm") || spec.contains('/') {
        PolicyRef {
            name: None,
            path: Some(PathBuf::from(spec)),
            params: serde_json::json!({}),
        }
    } else {
        PolicyRef::builtin(spec)
    }
}

fn policy_test(component: &Path, fixture_files: &[PathBuf], json: bool) -> anyhow::Result<()> {
    let bytes =
        std::fs::read(component).with_context(|| format!("cannot read {}", component.display()))?;
    let label = component.display().to_string();
    let runner = authoring::runner::FixtureRunner::new(&label, bytes)?;
    let mut results = Vec::new();
    for file in fixture_files {
        for fixture in authoring::fixture::read(file)? {
            results.push(runner.run(&fixture)?);
        }
    }
    let report = authoring::runner::TestReport {
        component: label,
        kind: runner.kind(),
        results,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.render_text());
    }
    if report.passed() {
        Ok(())
    } else {
        Err(TestsFailed.into())
    }
}

/// `policy test` found a mismatch; the report already says which.
#[derive(Debug, thiserror::Error)]
#[error("some fixtures failed")]
struct TestsFailed;

fn lab(path: &Path, out: &Path, json: bool) -> anyhow::Result<()> {
    let scenario = switchyard::lab::scenario::Scenario::load(path)?;
    let report = switchyard::lab::run(&scenario, !json)?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let stem = path
        .file_stem()
        .map_or("scenario".into(), |s| s.to_string_lossy());
    let chart = out.join(format!("{stem}.svg"));
    switchyard::lab::chart::write_svg(&report, &chart).map_err(anyhow::Error::msg)?;
    let full = out.join(format!("{stem}.json"));
    std::fs::write(&full, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", full.display()))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.render_table());
        println!("chart: {}\nreport: {}", chart.display(), full.display());
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve { .. }) {
        // Without traces, logging cannot fail to start.
        let _ = init_logging(cli.log_format, &config::LoggingConfig::default(), None);
    }
    let result = match cli.command {
        Command::Serve {
            config,
            listen,
            simulate,
            preset,
        } => {
            let args = ServeArgs {
                listen,
                simulate,
                preset,
                log_format: cli.log_format,
            };
            serve(&config, args).await
        }
        Command::Config(ConfigCommand::Show { config, preset }) => {
            config::show::show(&config, preset)
                .map(|text| print!("{text}"))
                .map_err(Into::into)
        }
        Command::Sim { config, listen } => sim(config.as_deref(), listen).await,
        Command::Healthcheck { gateway, ready } => healthcheck(&gateway, ready).await,
        Command::Policy(command) => policy(command).await,
        Command::Lab {
            scenario,
            out,
            json,
        } => lab(&scenario, &out, json),
        Command::Jobs(command) => jobs_command::run(command).await,
        Command::Keys(command) => keys_command::keys(command).await,
        Command::Teams(command) => keys_command::teams(command).await,
        Command::Usage(args) => keys_command::usage(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
