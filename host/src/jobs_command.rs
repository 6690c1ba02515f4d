//! `switchyard jobs`: list, inspect and cancel a running gateway's async
//! jobs through its `/v1/jobs` API.

use clap::Subcommand;
use serde_json::Value;
use switchyard::gateway_client::call;

/// What to do with jobs.
#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// List the jobs the gateway keeps, newest first, a page at a time.
    List {
        #[command(flatten)]
        gateway: GatewayArgs,
        /// Jobs on the page (1 to 100).
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Start after this job (the `last_id` of the page before).
        #[arg(long)]
        after: Option<String>,
        /// Print the gateway's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one job: status, runs, timestamps and its answer.
    Show {
        #[command(flatten)]
        gateway: GatewayArgs,
        /// The job's id (`job_...`).
        id: String,
    },
    /// Cancel a job that has not ended.
    Cancel {
        #[command(flatten)]
        gateway: GatewayArgs,
        /// The job's id (`job_...`).
        id: String,
    },
}

/// Which gateway, as whom.
#[derive(Debug, clap::Args)]
pub struct GatewayArgs {
    /// The gateway's base URL.
    #[arg(long, default_value = "http://127.0.0.1:4000")]
    gateway: String,
    /// A client API key (when the gateway has `[[api_keys]]`): you see the
    /// jobs of its user.
    #[arg(long, env = "SWITCHYARD_API_KEY", hide_env_values = true)]
    key: Option<String>,
}

pub async fn run(command: JobsCommand) -> anyhow::Result<()> {
    match command {
        JobsCommand::List {
            gateway,
            limit,
            after,
            json,
        } => {
            let mut path = format!("/v1/jobs?limit={limit}");
            if let Some(after) = &after {
                path.push_str(&format!("&after={}", segment(after)));
            }
            let list = call(&gateway.gateway, "GET", &path, gateway.key.as_deref(), None).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                print!("{}", table(&list));
                if list["has_more"] == true {
                    if let Some(last) = list["last_id"].as_str() {
                        println!("more: switchyard jobs list --after {last}");
                    }
                }
            }
        }
        JobsCommand::Show { gateway, id } => {
            let path = format!("/v1/jobs/{}", segment(&id));
            let job = call(&gateway.gateway, "GET", &path, gateway.key.as_deref(), None).await?;
            println!("{}", serde_json::to_string_pretty(&job)?);
        }
        JobsCommand::Cancel { gateway, id } => {
            let path = format!("/v1/jobs/{}", segment(&id));
            let job = call(
                &gateway.gateway,
                "DELETE",
                &path,
                gateway.key.as_deref(),
                None,
            )
            .await?;
            println!(
                "{} {}",
                job["id"].as_str().unwrap_or(&id),
                job["status"].as_str().unwrap_or("?")
            );
        }
    }
    Ok(())
}

fn segment(id: &str) -> String {
    percent_encoding::utf8_percent_encode(id, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// One line a job: id, status, runs, route, when it was submitted.
fn table(list: &Value) -> String {
    let mut out = format!(
        "{:<38} {:<10} {:>4}  {:<22} {}\n",
        "id", "status", "runs", "route", "created (Unix ms)"
    );
    for job in list["data"].as_array().into_iter().flatten() {
        let route = match job["route"]["type"].as_str() {
            Some("converse") => {
                format!("converse {}", job["route"]["model"].as_str().unwrap_or("?"))
            }
            Some(other) => other.to_owned(),
            None => "?".to_owned(),
        };
        out.push_str(&format!(
            "{:<38} {:<10} {:>4}  {:<22} {}\n",
            job["id"].as_str().unwrap_or("?"),
            job["status"].as_str().unwrap_or("?"),
            job["runs"],
            route,
            job["created_ms"],
        ));
    }
    out
}
