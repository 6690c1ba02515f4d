//! `switchyard keys`, `switchyard teams` and `switchyard usage`: manage a
//! running gateway's API keys and teams, and read its usage reports,
//! through its `/admin` API.

use anyhow::Context;
use clap::Subcommand;
use serde_json::{json, Map, Value};
use switchyard::gateway_client::{call, get_text, ClientError};
use switchyard::spend::ledger::GroupBy;

/// What to do with API keys.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key for a team and print its secret.
    ///
    /// The secret is printed once, on standard output (the rest goes to
    /// standard error, so `SECRET=$(switchyard keys create ...)` captures
    /// just the secret). The gateway cannot show it again; a lost secret
    /// means `switchyard keys rotate`.
    Create {
        #[command(flatten)]
        admin: AdminArgs,
        /// The team it belongs to (`switchyard teams create` first).
        #[arg(long)]
        team: String,
        /// The user its requests belong to (their share of the fair queue,
        /// and usage reports by user).
        #[arg(long)]
        user: Option<String>,
        /// A name to tell keys apart in listings (e.g. `ci-bot`).
        #[arg(long)]
        name: Option<String>,
        /// A model group it may call; repeat for several. None: every group.
        #[arg(long = "model-group", value_name = "GROUP")]
        model_groups: Vec<String>,
        /// How long until it expires: `30d`, `12h`, `90m`, `3600s` or plain
        /// seconds. Without it the key does not expire.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        expires_in: Option<u64>,
        /// Its rank in the fair queue; higher goes first [gateway default: 0].
        #[arg(long, allow_negative_numbers = true)]
        priority: Option<i32>,
        #[command(flatten)]
        limits: LimitsArgs,
    },
    /// List keys: id, team, user, name, prefix, status, expiry.
    List {
        #[command(flatten)]
        admin: AdminArgs,
        /// Only this team's keys.
        #[arg(long)]
        team: Option<String>,
    },
    /// Show one key: its team, model groups, priority, limits and dates.
    Show {
        #[command(flatten)]
        admin: AdminArgs,
        /// The key's id (`key_...`, from `keys list`).
        id: String,
    },
    /// Disable a key: every gateway instance refuses it with 401 within a
    /// second. `keys enable` undoes it; the secret stays the same.
    Disable {
        #[command(flatten)]
        admin: AdminArgs,
        /// The key's id (`key_...`).
        id: String,
    },
    /// Enable a disabled key again, with the same secret.
    Enable {
        #[command(flatten)]
        admin: AdminArgs,
        /// The key's id (`key_...`).
        id: String,
    },
    /// Give a key a new secret and print it; the old secret stops working.
    ///
    /// The key keeps its id. As for `create`, the new secret is printed
    /// once, alone on standard output.
    Rotate {
        #[command(flatten)]
        admin: AdminArgs,
        /// The key's id (`key_...`).
        id: String,
    },
    /// Change a key's model groups, priority or limits.
    ///
    /// Only what is given changes. Limit flags replace the key's limits as a
    /// whole: a limit not given becomes unlimited, so give every limit the
    /// key should keep (`keys show` lists them).
    Update {
        #[command(flatten)]
        admin: AdminArgs,
        /// The key's id (`key_...`).
        id: String,
        /// A model group it may call; repeat for several. Replaces its list.
        #[arg(long = "model-group", value_name = "GROUP")]
        model_groups: Vec<String>,
        /// Let it call every model group.
        #[arg(long, conflicts_with = "model_groups")]
        all_model_groups: bool,
        /// Its rank in the fair queue; higher goes first.
        #[arg(long, allow_negative_numbers = true)]
        priority: Option<i32>,
        #[command(flatten)]
        limits: LimitsArgs,
    },
    /// Delete a key for good: its secret stops working. To stop it for a
    /// while instead, `keys disable` it.
    Delete {
        #[command(flatten)]
        admin: AdminArgs,
        /// The key's id (`key_...`).
        id: String,
    },
}

/// What to do with teams.
#[derive(Debug, Subcommand)]
pub enum TeamsCommand {
    /// Create a team, with limits shared by all its keys.
    Create {
        #[command(flatten)]
        admin: AdminArgs,
        /// The team's name (e.g. `search`); keys name it with `--team`.
        name: String,
        #[command(flatten)]
        limits: LimitsArgs,
    },
    /// List teams: keys, limits, spend today and what is left of today's
    /// USD budget.
    List {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Show one team: limits and spend this day, week and month.
    Show {
        #[command(flatten)]
        admin: AdminArgs,
        /// The team's name.
        name: String,
    },
    /// Replace a team's limits.
    ///
    /// The flags given become the team's whole limits: a limit not given
    /// becomes unlimited. With no limit flag at all, pass --unlimited to say
    /// that removing every limit is meant.
    SetLimits {
        #[command(flatten)]
        admin: AdminArgs,
        /// The team's name.
        name: String,
        /// Remove every limit (needed when no limit flag is given).
        #[arg(long)]
        unlimited: bool,
        #[command(flatten)]
        limits: LimitsArgs,
    },
    /// Delete a team. The gateway refuses (`team_has_keys`) while keys
    /// still belong to it: delete those first.
    Delete {
        #[command(flatten)]
        admin: AdminArgs,
        /// The team's name.
        name: String,
    },
}

/// Which gateway, with its admin token, and how to print its answers.
#[derive(Debug, clap::Args)]
pub struct AdminArgs {
    /// The gateway's base URL.
    #[arg(long, default_value = "http://127.0.0.1:4000")]
    gateway: String,
    /// The admin token (`[admin] token` in the gateway's config).
    #[arg(long, env = "SWITCHYARD_ADMIN_TOKEN", hide_env_values = true)]
    token: String,
    /// Print the gateway's JSON answer instead of a table or summary.
    #[arg(long)]
    json: bool,
}

/// Limits of a key or a team. A limit not given is unlimited.
///
/// Token and USD budgets count per UTC calendar window: the day from
/// midnight UTC, the week from Monday 00:00 UTC, the month from the 1st.
#[derive(Debug, Default, Clone, PartialEq, clap::Args)]
#[command(next_help_heading = "Limits (a limit not given is unlimited)")]
pub struct LimitsArgs {
    /// Requests per minute.
    #[arg(long)]
    rpm: Option<u64>,
    /// Tokens per minute.
    #[arg(long)]
    tpm: Option<u64>,
    /// Requests running at once (a key's limit; a team refuses it).
    #[arg(long)]
    max_running: Option<u32>,
    /// Tokens per UTC day.
    #[arg(long)]
    daily_tokens: Option<u64>,
    /// Tokens per UTC week (from Monday 00:00 UTC).
    #[arg(long)]
    weekly_tokens: Option<u64>,
    /// Tokens per UTC calendar month.
    #[arg(long)]
    monthly_tokens: Option<u64>,
    /// USD per UTC day, at the gateway's Bedrock prices.
    #[arg(long, value_name = "USD", value_parser = parse_usd)]
    daily_usd: Option<f64>,
    /// USD per UTC week (from Monday 00:00 UTC).
    #[arg(long, value_name = "USD", value_parser = parse_usd)]
    weekly_usd: Option<f64>,
    /// USD per UTC calendar month.
    #[arg(long, value_name = "USD", value_parser = parse_usd)]
    monthly_usd: Option<f64>,
}

impl LimitsArgs {
    /// The API's limits object, with only the limits given.
    fn to_json(&self) -> Value {
        let mut limits = Map::new();
        let mut put = |name: &str, value: Option<Value>| {
            if let Some(value) = value {
                limits.insert(name.to_owned(), value);
            }
        };
        put("rpm", self.rpm.map(Value::from));
        put("tpm", self.tpm.map(Value::from));
        put("max_running", self.max_running.map(Value::from));
        put("daily_tokens", self.daily_tokens.map(Value::from));
        put("weekly_tokens", self.weekly_tokens.map(Value::from));
        put("monthly_tokens", self.monthly_tokens.map(Value::from));
        put("daily_usd", self.daily_usd.map(Value::from));
        put("weekly_usd", self.weekly_usd.map(Value::from));
        put("monthly_usd", self.monthly_usd.map(Value::from));
        Value::Object(limits)
    }

    /// Whether no limit flag was given.
    fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// A grouping of the usage report, as the gateway's own type knows them,
/// so the command and the server cannot drift apart.
fn parse_group_by(text: &str) -> Result<GroupBy, String> {
    serde_json::from_value(Value::String(text.to_owned())).map_err(|_| {
        format!(
            "`{text}` is not a grouping: team, key, user, model, group, deployment, account or day"
        )
    })
}

/// `switchyard usage`: requests, tokens and USD over UTC days.
#[derive(Debug, clap::Args)]
pub struct UsageArgs {
    #[command(flatten)]
    admin: AdminArgs,
    /// One row per team, key, user, model, group (model group), deployment,
    /// account or day.
    #[arg(long, default_value = "team", value_parser = parse_group_by)]
    group_by: GroupBy,
    /// First UTC day (YYYY-MM-DD) [default: the gateway's].
    #[arg(long, value_name = "YYYY-MM-DD", value_parser = parse_date)]
    from: Option<String>,
    /// Last UTC day (YYYY-MM-DD) [default: the gateway's].
    #[arg(long, value_name = "YYYY-MM-DD", value_parser = parse_date)]
    to: Option<String>,
    /// Print the gateway's CSV as it comes (for spreadsheets and billing).
    #[arg(long, conflicts_with = "json")]
    csv: bool,
}

/// The gateway refused with an API error body.
#[derive(Debug, thiserror::Error)]
#[error("{code}: {message}")]
struct Refused {
    code: String,
    message: String,
}

/// A refusal as `code: message` when its body is the API's error object;
/// otherwise as it came (status and raw body).
fn refusal(error: ClientError) -> anyhow::Error {
    if let ClientError::Refused { body, .. } = &error {
        if let Ok(body) = serde_json::from_str::<Value>(body) {
            let (Some(code), Some(message)) = (
                body["error"]["code"].as_str(),
                body["error"]["message"].as_str(),
            ) else {
                return error.into();
            };
            return Refused {
                code: code.to_owned(),
                message: message.to_owned(),
            }
            .into();
        }
    }
    error.into()
}

impl AdminArgs {
    /// One JSON call to the admin API.
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let body = body.map(|b| ("application/json", b.to_string().into_bytes()));
        call(&self.gateway, method, path, Some(&self.token), body)
            .await
            .map_err(refusal)
    }

    /// Prints `answer` as pretty JSON with --json, else as `human` renders it.
    fn print(&self, answer: &Value, human: impl FnOnce(&Value) -> String) -> anyhow::Result<()> {
        if self.json {
            println!("{}", serde_json::to_string_pretty(answer)?);
        } else {
            print!("{}", human(answer));
        }
        Ok(())
    }
}

pub async fn keys(command: KeysCommand) -> anyhow::Result<()> {
    match command {
        KeysCommand::Create {
            admin,
            team,
            user,
            name,
            model_groups,
            expires_in,
            priority,
            limits,
        } => {
            let mut body = json!({ "team": team, "limits": limits.to_json() });
            if let Some(user) = user {
                body["user"] = json!(user);
            }
            if let Some(name) = name {
                body["name"] = json!(name);
            }
            if !model_groups.is_empty() {
                body["model_groups"] = json!(model_groups);
            }
            if let Some(seconds) = expires_in {
                body["expires_in_s"] = json!(seconds);
            }
            if let Some(priority) = priority {
                body["priority"] = json!(priority);
            }
            let answer = admin.call("POST", "/admin/keys", Some(body)).await?;
            if admin.json {
                eprintln!("{SHOWN_ONCE}");
                return admin.print(&answer, |_| String::new());
            }
            let key = &answer["key"];
            eprintln!(
                "created key {} for team {} (prefix {})",
                text(&key["id"]),
                text(&key["team"]),
                text(&key["prefix"])
            );
            print_secret(&answer)?;
        }
        KeysCommand::List { admin, team } => {
            let mut path = "/admin/keys".to_owned();
            if let Some(team) = &team {
                path.push_str(&format!("?team={}", segment(team)));
            }
            let answer = admin.call("GET", &path, None).await?;
            admin.print(&answer, keys_table)?;
        }
        KeysCommand::Show { admin, id } => {
            let key = admin.call("GET", &key_path(&id, ""), None).await?;
            admin.print(&key, key_summary)?;
        }
        KeysCommand::Disable { admin, id } => {
            let key = admin.call("POST", &key_path(&id, "/disable"), None).await?;
            admin.print(&key, |key| {
                format!(
                    "{} disabled: every instance refuses it with 401 within a second\n",
                    text(&key["id"])
                )
            })?;
        }
        KeysCommand::Enable { admin, id } => {
            let key = admin.call("POST", &key_path(&id, "/enable"), None).await?;
            admin.print(&key, |key| {
                let note = if key["expired"] == true {
                    " (but it has expired, so it is still refused)"
                } else {
                    ""
                };
                format!("{} enabled{note}\n", text(&key["id"]))
            })?;
        }
        KeysCommand::Rotate { admin, id } => {
            let answer = admin.call("POST", &key_path(&id, "/rotate"), None).await?;
            if admin.json {
                eprintln!("{SHOWN_ONCE}");
                return admin.print(&answer, |_| String::new());
            }
            eprintln!(
                "rotated key {} (new prefix {}): the old secret no longer works",
                text(&answer["key"]["id"]),
                text(&answer["key"]["prefix"])
            );
            print_secret(&answer)?;
        }
        KeysCommand::Update {
            admin,
            id,
            model_groups,
            all_model_groups,
            priority,
            limits,
        } => {
            let mut body = json!({});
            if !limits.is_empty() {
                body["limits"] = limits.to_json();
            }
            if all_model_groups {
                body["model_groups"] = json!([]);
            } else if !model_groups.is_empty() {
                body["model_groups"] = json!(model_groups);
            }
            if let Some(priority) = priority {
                body["priority"] = json!(priority);
            }
            if body.as_object().is_some_and(Map::is_empty) {
                anyhow::bail!(
                    "nothing to change: give --model-group, --all-model-groups, --priority or limit flags"
                );
            }
            let key = admin.call("PATCH", &key_path(&id, ""), Some(body)).await?;
            admin.print(&key, key_summary)?;
        }
        KeysCommand::Delete { admin, id } => {
            let answer = admin.call("DELETE", &key_path(&id, ""), None).await?;
            admin.print(&answer, |a| {
                format!("deleted key {}\n", text(&a["deleted"]))
            })?;
        }
    }
    Ok(())
}

pub async fn teams(command: TeamsCommand) -> anyhow::Result<()> {
    match command {
        TeamsCommand::Create {
            admin,
            name,
            limits,
        } => {
            let body = json!({ "name": name, "limits": limits.to_json() });
            let team = admin.call("POST", "/admin/teams", Some(body)).await?;
            admin.print(&team, team_summary)?;
        }
        TeamsCommand::List { admin } => {
            let answer = admin.call("GET", "/admin/teams", None).await?;
            admin.print(&answer, teams_table)?;
        }
        TeamsCommand::Show { admin, name } => {
            let team = admin.call("GET", &team_path(&name), None).await?;
            admin.print(&team, team_summary)?;
        }
        TeamsCommand::SetLimits {
            admin,
            name,
            unlimited,
            limits,
        } => {
            if limits.is_empty() && !unlimited {
                anyhow::bail!(
                    "no limit given: this would remove every limit of team {name}; pass --unlimited if that is meant"
                );
            }
            if unlimited && !limits.is_empty() {
                anyhow::bail!("--unlimited removes every limit; leave out the limit flags");
            }
            let body = json!({ "limits": limits.to_json() });
            let team = admin.call("PATCH", &team_path(&name), Some(body)).await?;
            admin.print(&team, team_summary)?;
        }
        TeamsCommand::Delete { admin, name } => {
            let answer = admin
                .call("DELETE", &team_path(&name), None)
                .await
                .map_err(|e| match e.downcast_ref::<Refused>() {
                    Some(r) if r.code == "team_has_keys" => anyhow::anyhow!(
                        "{r}\nhint: `switchyard keys list --team {name}` lists them; delete them first"
                    ),
                    _ => e,
                })?;
            admin.print(&answer, |a| {
                format!("deleted team {}\n", text(&a["deleted"]))
            })?;
        }
    }
    Ok(())
}

pub async fn usage(args: UsageArgs) -> anyhow::Result<()> {
    let UsageArgs {
        admin,
        group_by,
        from,
        to,
        csv,
    } = args;
    let mut path = format!("/admin/usage?group_by={}", group_by.name());
    for (name, day) in [("from", &from), ("to", &to)] {
        if let Some(day) = day {
            path.push_str(&format!("&{name}={day}"));
        }
    }
    if csv {
        path.push_str("&format=csv");
        let text = get_text(&admin.gateway, &path, &admin.token)
            .await
            .map_err(refusal)?;
        print!("{text}");
        if !text.is_empty() && !text.ends_with('\n') {
            println!();
        }
        return Ok(());
    }
    let report = admin.call("GET", &path, None).await?;
    admin.print(&report, usage_table)
}

/// Prints a create or rotate answer's secret: alone on standard output, the
/// warning on standard error.
fn print_secret(answer: &Value) -> anyhow::Result<()> {
    let secret = answer["secret"]
        .as_str()
        .context("the gateway's answer has no `secret`")?;
    eprintln!();
    println!("{secret}");
    eprintln!();
    eprintln!("{SHOWN_ONCE}");
    Ok(())
}

const SHOWN_ONCE: &str =
    "This secret is shown only once: store it now. It cannot be shown again;\n\
                          if it is lost, `switchyard keys rotate` gives the key a new one.";

/// What a path segment or query value escapes: all but RFC 3986's
/// unreserved characters, so ids like `key_01` go out as they are.
const ESCAPED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

fn segment(id: &str) -> String {
    percent_encoding::utf8_percent_encode(id, ESCAPED).to_string()
}

fn key_path(id: &str, action: &str) -> String {
    format!("/admin/keys/{}{action}", segment(id))
}

fn team_path(name: &str) -> String {
    format!("/admin/teams/{}", segment(name))
}

/// A string as itself, null or missing as `-`, anything else as JSON.
fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_owned(),
        other => other.to_string(),
    }
}

fn usd(value: f64) -> String {
    format!("${value:.4}")
}

fn key_status(key: &Value) -> &'static str {
    if key["disabled"] == true {
        "disabled"
    } else if key["expired"] == true {
        "expired"
    } else {
        "active"
    }
}

/// Columns padded to their widest cell; the last one is not padded.
fn render(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let last = cells.len().saturating_sub(1);
        let mut out = String::new();
        for (i, cell) in cells.into_iter().enumerate() {
            if i == last {
                out.push_str(&cell);
            } else {
                out.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        out.push('\n');
        out
    };
    let mut out = line(header.iter().map(|h| (*h).to_owned()).collect());
    for row in rows {
        out.push_str(&line(row.clone()));
    }
    out
}

/// The limits set, as `flag=value`, or `unlimited`.
fn limits_summary(limits: &Value) -> String {
    const NAMES: [&str; 9] = [
        "rpm",
        "tpm",
        "max_running",
        "daily_tokens",
        "weekly_tokens",
        "monthly_tokens",
        "daily_usd",
        "weekly_usd",
        "monthly_usd",
    ];
    let parts: Vec<String> = NAMES
        .iter()
        .filter(|name| !limits[**name].is_null())
        .map(|name| {
            let value = &limits[*name];
            let shown = match (name.ends_with("_usd"), value.as_f64()) {
                (true, Some(v)) => usd(v),
                _ => value.to_string(),
            };
            format!("{}={shown}", name.replace('_', "-"))
        })
        .collect();
    if parts.is_empty() {
        "unlimited".to_owned()
    } else {
        parts.join(" ")
    }
}

fn keys_table(answer: &Value) -> String {
    let rows: Vec<Vec<String>> = answer["keys"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|key| {
            vec![
                text(&key["id"]),
                text(&key["team"]),
                text(&key["user"]),
                text(&key["name"]),
                text(&key["prefix"]),
                key_status(key).to_owned(),
                key["expires_at_ms"]
                    .as_u64()
                    .map_or("never".to_owned(), utc),
            ]
        })
        .collect();
    if rows.is_empty() {
        return "no keys\n".to_owned();
    }
    render(
        &["id", "team", "user", "name", "prefix", "status", "expires"],
        &rows,
    )
}

fn key_summary(key: &Value) -> String {
    let groups = match key["model_groups"].as_array() {
        Some(groups) if !groups.is_empty() => {
            groups.iter().map(text).collect::<Vec<_>>().join(", ")
        }
        _ => "all".to_owned(),
    };
    let lines = [
        ("id", text(&key["id"])),
        ("team", text(&key["team"])),
        ("user", text(&key["user"])),
        ("name", text(&key["name"])),
        ("prefix", text(&key["prefix"])),
        ("status", key_status(key).to_owned()),
        ("model groups", groups),
        ("priority", text(&key["priority"])),
        ("limits", limits_summary(&key["limits"])),
        (
            "created",
            key["created_at_ms"].as_u64().map_or("-".to_owned(), utc),
        ),
        (
            "expires",
            key["expires_at_ms"]
                .as_u64()
                .map_or("never".to_owned(), utc),
        ),
    ];
    lines
        .iter()
        .map(|(label, value)| format!("{label:<13} {value}\n"))
        .collect()
}

/// What is left of a USD budget, or `-` when there is none.
fn left(limit: &Value, spent: &Value) -> String {
    match limit.as_f64() {
        Some(limit) => usd((limit - spent.as_f64().unwrap_or(0.0)).max(0.0)),
        None => "-".to_owned(),
    }
}

fn teams_table(answer: &Value) -> String {
    let rows: Vec<Vec<String>> = answer["teams"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|team| {
            vec![
                text(&team["name"]),
                text(&team["keys"]),
                usd(team["spend"]["day"]["usd"].as_f64().unwrap_or(0.0)),
                left(&team["limits"]["daily_usd"], &team["spend"]["day"]["usd"]),
                limits_summary(&team["limits"]),
            ]
        })
        .collect();
    if rows.is_empty() {
        return "no teams\n".to_owned();
    }
    render(
        &["name", "keys", "spent today", "left today", "limits"],
        &rows,
    )
}

fn team_summary(team: &Value) -> String {
    let mut out = format!(
        "{:<8} {}\n{:<8} {}\n{:<8} {}\n{:<8} {}\n",
        "name",
        text(&team["name"]),
        "keys",
        text(&team["keys"]),
        "limits",
        limits_summary(&team["limits"]),
        "created",
        team["created_at_ms"].as_u64().map_or("-".to_owned(), utc),
    );
    let windows = [("day", "daily"), ("week", "weekly"), ("month", "monthly")];
    let rows: Vec<Vec<String>> = windows
        .iter()
        .map(|(window, adjective)| {
            let spend = &team["spend"][*window];
            let limits = &team["limits"];
            let tokens_left = match (
                limits[format!("{adjective}_tokens")].as_u64(),
                spend["tokens"].as_u64(),
            ) {
                (Some(limit), spent) => limit.saturating_sub(spent.unwrap_or(0)).to_string(),
                (None, _) => "-".to_owned(),
            };
            vec![
                format!("this {window}"),
                text(&spend["tokens"]),
                tokens_left,
                usd(spend["usd"].as_f64().unwrap_or(0.0)),
                left(&limits[format!("{adjective}_usd")], &spend["usd"]),
            ]
        })
        .collect();
    out.push_str("spend (UTC; weeks start on Monday):\n");
    out.push_str(&render(
        &["", "tokens", "tokens left", "usd", "usd left"],
        &rows,
    ));
    out
}

fn usage_table(report: &Value) -> String {
    let column = report["group_by"].as_str().unwrap_or("group").to_owned();
    let numbers = |row: &Value| {
        let mut cells: Vec<String> = [
            "requests",
            "input_tokens",
            "output_tokens",
            "cache_read_tokens",
            "cache_write_tokens",
        ]
        .iter()
        .map(|field| text(&row[*field]))
        .collect();
        cells.push(format!("{:.4}", row["usd"].as_f64().unwrap_or(0.0)));
        cells
    };
    let mut rows: Vec<Vec<String>> = report["rows"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|row| {
            let mut cells = vec![text(&row[column.as_str()])];
            cells.extend(numbers(row));
            cells
        })
        .collect();
    let mut total = vec!["total".to_owned()];
    total.extend(numbers(&report["total"]));
    rows.push(total);
    let mut out = format!(
        "usage by {column}, {} to {} (UTC)\n",
        text(&report["from"]),
        text(&report["to"])
    );
    out.push_str(&render(
        &[
            &column,
            "requests",
            "input",
            "output",
            "cache read",
            "cache write",
            "usd",
        ],
        &rows,
    ));
    out
}

/// Unix milliseconds as `YYYY-MM-DD HH:MM UTC`.
fn utc(ms: u64) -> String {
    let seconds = ms / 1000;
    let (days, of_day) = (seconds / 86_400, seconds % 86_400);
    let (year, month, day) = switchyard::spend::period::civil(days);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        of_day / 3600,
        of_day % 3600 / 60
    )
}

/// `30d`, `12h`, `90m`, `3600s` or plain seconds, as seconds.
fn parse_duration(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let scale = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => {
            return Err(format!(
                "`{text}` is not a duration: a whole number with s, m, h or d (e.g. 30d, 12h, 90m, 3600s)"
            ))
        }
    };
    let number: u64 = number.parse().map_err(|_| {
        format!("`{text}` is not a duration: a whole number with s, m, h or d (e.g. 30d)")
    })?;
    let seconds = number
        .checked_mul(scale)
        .ok_or_else(|| format!("`{text}` is too long"))?;
    if seconds == 0 {
        return Err("a key cannot expire in 0 seconds".to_owned());
    }
    Ok(seconds)
}

/// A USD amount: finite and not negative.
fn parse_usd(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!(
            "`{text}` is not an amount of USD (e.g. 25 or 12.50)"
        )),
    }
}

/// A `YYYY-MM-DD` day, checked here so a typo is not a gateway round trip.
fn parse_date(text: &str) -> Result<String, String> {
    let bad = || format!("`{text}` is not a day as YYYY-MM-DD");
    let parts: Vec<&str> = text.split('-').collect();
    let [year, month, day] = parts.as_slice() else {
        return Err(bad());
    };
    let digits = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit());
    if !(digits(year, 4) && digits(month, 2) && digits(day, 2)) {
        return Err(bad());
    }
    let (month, day): (u32, u32) = (
        month.parse().map_err(|_| bad())?,
        day.parse().map_err(|_| bad())?,
    );
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return Err(bad());
    }
    Ok(text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_units_or_plain_seconds() {
        assert_eq!(parse_duration("3600"), Ok(3600));
        assert_eq!(parse_duration("3600s"), Ok(3600));
        assert_eq!(parse_duration("90m"), Ok(5400));
        assert_eq!(parse_duration("12h"), Ok(43_200));
        assert_eq!(parse_duration("30d"), Ok(2_592_000));
        assert_eq!(parse_duration(" 1d "), Ok(86_400));
    }

    #[test]
    fn durations_refuse_what_they_cannot_read() {
        for bad in [
            "",
            "d",
            "0",
            "0h",
            "-5m",
            "1.5h",
            "12w",
            "12 h",
            "h12",
            "1H",
            "99999999999999999999d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(parse_duration("213503982334602d").is_err(), "overflow");
    }

    #[test]
    fn limits_json_holds_only_the_limits_given() {
        assert_eq!(LimitsArgs::default().to_json(), json!({}));
        assert!(LimitsArgs::default().is_empty());
        let limits = LimitsArgs {
            rpm: Some(60),
            max_running: Some(4),
            weekly_tokens: Some(5_000_000),
            daily_usd: Some(12.5),
            ..LimitsArgs::default()
        };
        assert!(!limits.is_empty());
        assert_eq!(
            limits.to_json(),
            json!({"rpm": 60, "max_running": 4, "weekly_tokens": 5_000_000, "daily_usd": 12.5})
        );
    }

    #[test]
    fn limits_json_has_every_field_when_all_are_given() {
        let limits = LimitsArgs {
            rpm: Some(1),
            tpm: Some(2),
            max_running: Some(3),
            daily_tokens: Some(4),
            weekly_tokens: Some(5),
            monthly_tokens: Some(6),
            daily_usd: Some(7.0),
            weekly_usd: Some(8.0),
            monthly_usd: Some(9.25),
        };
        assert_eq!(
            limits.to_json(),
            json!({
                "rpm": 1, "tpm": 2, "max_running": 3,
                "daily_tokens": 4, "weekly_tokens": 5, "monthly_tokens": 6,
                "daily_usd": 7.0, "weekly_usd": 8.0, "monthly_usd": 9.25
            })
        );
    }

    #[test]
    fn limit_flags_parse_from_the_command_line() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            limits: LimitsArgs,
        }
        let cli = <Cli as clap::Parser>::try_parse_from([
            "x",
            "--tpm",
            "100000",
            "--monthly-usd",
            "250",
            "--max-running",
            "8",
        ])
        .unwrap();
        assert_eq!(
            cli.limits.to_json(),
            json!({"tpm": 100000, "max_running": 8, "monthly_usd": 250.0})
        );
        assert!(<Cli as clap::Parser>::try_parse_from(["x", "--daily-usd", "-1"]).is_err());
        assert!(<Cli as clap::Parser>::try_parse_from(["x", "--daily-usd", "NaN"]).is_err());
    }

    #[test]
    fn refusals_show_the_api_error_code_and_message() {
        let error = refusal(ClientError::Refused {
            status: 409,
            body: r#"{"error":{"code":"team_has_keys","message":"team search has 3 keys"}}"#
                .to_owned(),
        });
        assert_eq!(error.to_string(), "team_has_keys: team search has 3 keys");
        let error = refusal(ClientError::Refused {
            status: 502,
            body: "bad gateway".to_owned(),
        });
        assert!(error.to_string().contains("bad gateway"), "{error}");
    }

    #[test]
    fn days_and_times_print_in_utc() {
        assert_eq!(utc(0), "1970-01-01 00:00 UTC");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00 UTC");
        assert_eq!(utc(1_796_566_200_000), "2026-12-06 14:10 UTC");
        assert!(parse_date("2026-12-01").is_ok());
        for bad in [
            "2026-13-01",
            "2026-1-01",
            "26-12-01",
            "2026-12-01x",
            "yesterday",
        ] {
            assert!(parse_date(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn usage_table_has_a_row_per_group_and_a_total() {
        let report = json!({
            "group_by": "team", "from": "2026-12-01", "to": "2026-12-06",
            "rows": [{"team": "search", "requests": 10, "input_tokens": 1000,
                      "output_tokens": 200, "cache_read_tokens": 0,
                      "cache_write_tokens": 0, "usd": 0.01234}],
            "total": {"requests": 10, "input_tokens": 1000, "output_tokens": 200,
                      "cache_read_tokens": 0, "cache_write_tokens": 0, "usd": 0.01234}
        });
        let table = usage_table(&report);
        assert!(table.starts_with("usage by team, 2026-12-01 to 2026-12-06 (UTC)\n"));
        assert!(table.contains("search"), "{table}");
        assert!(table.contains("total"), "{table}");
        assert!(table.contains("0.0123"), "{table}");
    }
}
