//! The `switchyard` command: run the gateway, run the Bedrock simulator.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use switchyard::clock::SystemClock;
use switchyard::config::Config;
use switchyard::gateway::{Gateway, Upstreams};
use switchyard::sim::{SimConfig, Simulator};
use tokio::net::TcpListener;

/// A gateway in front of AWS Bedrock whose routing decisions are sandboxed,
/// hot-swappable WebAssembly policies.
#[derive(Debug, Parser)]
#[command(name = "switchyard", version, about, long_about = None)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
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
    },
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
    /// Work with policy components.
    #[command(subcommand)]
    Policy(PolicyCommand),
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
        /// The component (`.wasm`).
        file: PathBuf,
    },
    /// List the built-in policies.
    Builtins,
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

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
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

async fn serve(
    config_path: &Path,
    listen: Option<SocketAddr>,
    simulate: bool,
) -> anyhow::Result<()> {
    let config = Config::load(config_path)?;
    let clock = SystemClock::shared();
    let mut _simulator = None;
    let upstreams = if simulate {
        let sim_config = config.simulator.clone().unwrap_or_default();
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
    let gateway = Gateway::build(&config, clock, &upstreams).map_err(|e| {
        let hint = if matches!(e, switchyard::gateway::GatewayError::Credentials(_)) {
            "\nhint: set the credentials, or run with --simulate to use the built-in Bedrock simulator"
        } else {
            ""
        };
        anyhow::anyhow!("{e}{hint}")
    })?
    .with_config_path(config_path.to_owned());
    let _watcher = (config.admin.watch_interval_ms > 0).then(|| {
        gateway.watch_policy_files(std::time::Duration::from_millis(
            config.admin.watch_interval_ms,
        ))
    });
    if config.admin.token.is_none() {
        tracing::info!("admin API off (no [admin] token in the config)");
    }
    let addr = listen.unwrap_or(config.listen);
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    tracing::info!(addr = %listener.local_addr()?, groups = config.model_groups.len(), deployments = config.deployments.len(), "switchyard serving");
    gateway.serve(listener).await?;
    Ok(())
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
            file,
        } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let answer =
                switchyard::admin_client::push(&gateway, &token, &group, kind.into(), bytes, stage)
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
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let result = match cli.command {
        Command::Serve {
            config,
            listen,
            simulate,
        } => serve(&config, listen, simulate).await,
        Command::Sim { config, listen } => sim(config.as_deref(), listen).await,
        Command::Policy(command) => policy(command).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
