//! `switchyard policy simulate`: a group's three policies against a scripted
//! timeline of what each deployment answers, on a manual clock, so an author
//! sees what a cooldown does over ten minutes in well under a second.
//!
//! The timeline (TOML) uses the gateway config's own `[[deployments]]` and
//! `[policies]` tables, plus a request rate and `[[windows]]` of outcomes:
//!
//! ```toml
//! duration_s = 600
//! request_every_ms = 5000
//!
//! [policies]
//! selection = { name = "priority" }
//! cooldown = { path = "target/my-cooldown.wasm", params = { base_ms = 5000 } }
//!
//! [[deployments]]
//! id = "primary"
//! model_id = "anthropic.claude-3-haiku-20240307-v1:0"
//! priority = 1
//!
//! [[windows]]           # outside every window a deployment succeeds
//! deployment = "primary"
//! from_s = 0
//! until_s = 90
//! outcome = "throttled"
//! ```
//!
//! Each request runs the gateway's attempt loop without the network: the
//! selection policy orders the deployments, each attempt's outcome comes from
//! the windows, the cooldown policy judges it, and the fallback policy orders
//! what is left after a failure. Health (cooldowns, recent throttles,
//! success rate, latency) is kept by the gateway's own `health` module.
//! Attempts take no simulated time; their latency only feeds the statistics.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use switchyard_clock::{ManualClock, SharedClock};
use switchyard_policy_host::attempt::{AttemptRun, RunContext};
use switchyard_policy_host::candidate::{deployment_table, wit_candidate};
use switchyard_policy_host::health::DeploymentHealth;
use switchyard_policy_host::offline::{OfflineCalls, OfflineLoadError, OfflinePolicies};
use switchyard_policy_host::outcome::{Outcome, OutcomeKind};
use switchyard_policy_host::policy::{self, CallOptions, DeploymentTable, PolicyKind};
use switchyard_policy_host::settings::{DeploymentConfig, GroupPolicies, PolicyRef};

/// When the simulated clock starts: far from zero, as a gateway's would be.
const START_MS: u64 = 1_000_000;

/// A scripted run.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timeline {
    /// How long to simulate, in seconds.
    pub duration_s: u64,
    /// One request every this many milliseconds.
    pub request_every_ms: u64,
    /// The user the requests belong to.
    #[serde(default)]
    pub user: Option<String>,
    /// The policies, as in a model group of the gateway config; each defaults
    /// to the built-in one.
    #[serde(default)]
    pub policies: GroupPolicies,
    /// The deployments, as in the gateway config.
    pub deployments: Vec<DeploymentConfig>,
    /// What the deployments answer, and when.
    #[serde(default)]
    pub windows: Vec<Window>,
    /// Latency of an attempt outside any window, in milliseconds.
    #[serde(default = "default_latency")]
    pub latency_ms: u32,
}

fn default_latency() -> u32 {
    200
}

/// A stretch of time during which one deployment answers one way.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Window {
    /// The deployment.
    pub deployment: String,
    /// From this second of the run (inclusive).
    pub from_s: f64,
    /// Until this second (exclusive).
    pub until_s: f64,
    /// How its attempts end.
    pub outcome: OutcomeKind,
    /// How long they take (default: the timeline's `latency_ms`).
    #[serde(default)]
    pub latency_ms: Option<u32>,
    /// The `retry-after` Bedrock sends with a throttle.
    #[serde(default)]
    pub retry_after_ms: Option<u64>,
}

impl Timeline {
    /// Reads a timeline file; policy paths in it are relative to its folder.
    pub fn load(path: &std::path::Path) -> Result<Self, SimulateError> {
        let text = std::fs::read_to_string(path).map_err(|source| SimulateError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut timeline: Timeline =
            toml::from_str(&text).map_err(|source| SimulateError::Parse {
                path: path.to_owned(),
                source,
            })?;
        let base = path.parent().unwrap_or(std::path::Path::new("."));
        for kind in PolicyKind::ALL {
            let policy = match kind {
                PolicyKind::Selection => &mut timeline.policies.selection,
                PolicyKind::Cooldown => &mut timeline.policies.cooldown,
                PolicyKind::Fallback => &mut timeline.policies.fallback,
            };
            if let Some(p) = policy.path.as_mut().filter(|p| p.is_relative()) {
                *p = base.join(&*p);
            }
        }
        Ok(timeline)
    }
}

/// Why a timeline cannot run.
#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    /// The file could not be read.
    #[error("cannot read timeline {}", .path.display())]
    Read {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not a timeline (TOML syntax, an unknown key, a wrong type).
    #[error("{} is not a valid timeline", .path.display())]
    Parse {
        path: std::path::PathBuf,
        #[source]
        source: toml::de::Error,
    },
    /// The timeline does not make sense.
    #[error("invalid timeline: {0}")]
    Invalid(String),
    /// A policy could not be found or loaded.
    #[error(transparent)]
    Policy(#[from] OfflineLoadError),
}

/// One attempt of a simulated request.
#[derive(Debug, Clone, Serialize)]
pub struct SimAttempt {
    pub deployment: String,
    pub outcome: OutcomeKind,
    /// The cooldown the cooldown policy set (0: none, or one ended).
    pub cooldown_ms: u64,
}

/// One simulated request.
#[derive(Debug, Clone, Serialize)]
pub struct SimRequest {
    /// Seconds since the start of the run.
    pub at_s: f64,
    /// The selection policy's order.
    pub order: Vec<String>,
    /// The attempts made, in order.
    pub attempts: Vec<SimAttempt>,
    /// Whether a deployment answered.
    pub served: bool,
    /// Deployments cooling down after the request, with the time left (ms).
    pub cooling: BTreeMap<String, u64>,
    /// Policy calls that faulted (the safe order or cooldown was used).
    pub faults: Vec<String>,
}

/// What a whole run did, per deployment.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DeploymentSummary {
    pub attempts: u64,
    pub successes: u64,
    pub throttles: u64,
    /// Requests that tried it first.
    pub first_choice: u64,
    /// Simulated time it spent cooling down, sampled at each request, in ms.
    pub cooling_ms: u64,
}

/// A finished run.
#[derive(Debug, Clone, Serialize)]
pub struct SimReport {
    /// The policies run, by kind.
    pub policies: BTreeMap<String, String>,
    pub requests: Vec<SimRequest>,
    pub served: u64,
    pub failed: u64,
    pub deployments: BTreeMap<String, DeploymentSummary>,
}

struct SimDeployment {
    config: DeploymentConfig,
    health: DeploymentHealth,
}

/// Loads the timeline's policies (with `overrides` taking precedence) and runs it.
pub fn run(
    timeline: &Timeline,
    overrides: &BTreeMap<PolicyKind, PolicyRef>,
) -> Result<SimReport, SimulateError> {
    validate(timeline)?;
    let clock = ManualClock::new(START_MS);
    let shared: SharedClock = clock.clone();
    let policies = OfflinePolicies::load(&shared, &timeline.policies, overrides)?;
    let names = policies.names.clone();

    let mut deployments: Vec<SimDeployment> = timeline
        .deployments
        .iter()
        .map(|config| SimDeployment {
            config: config.clone(),
            health: DeploymentHealth::default(),
        })
        .collect();
    // In the safe order, as a gateway's model group holds them: policies
    // see the candidates in the same order as in production.
    deployments.sort_by_key(|d| d.config.priority);
    let mut report = SimReport {
        policies: names,
        requests: Vec::new(),
        served: 0,
        failed: 0,
        deployments: deployments
            .iter()
            .map(|d| (d.config.id.clone(), DeploymentSummary::default()))
            .collect(),
    };
    let duration_ms = timeline.duration_s * 1000;
    let table = deployment_table(deployments.iter().map(|d| &d.config));
    let priorities: Arc<[u32]> = deployments.iter().map(|d| d.config.priority).collect();
    let offsets = (0..duration_ms).step_by(timeline.request_every_ms as usize);
    // Where the timeline's user was last served, as the gateway remembers
    // it for sticky policies.
    let mut last_success = None;
    let setup = Setup {
        timeline,
        policies: &policies,
        deployments: &deployments,
        table: &table,
        priorities: &priorities,
    };
    for (sequence, offset_ms) in (0u64..).zip(offsets) {
        clock.set(START_MS + offset_ms);
        let request = simulate_request(&setup, &mut report, &mut last_success, offset_ms, sequence);
        if request.served {
            report.served += 1;
        } else {
            report.failed += 1;
        }
        report.requests.push(request);
    }
    Ok(report)
}

fn validate(timeline: &Timeline) -> Result<(), SimulateError> {
    let invalid = |m: String| Err(SimulateError::Invalid(m));
    if timeline.deployments.is_empty() {
        return invalid("no [[deployments]]".into());
    }
    if timeline.request_every_ms == 0 {
        return invalid("request_every_ms must be above 0".into());
    }
    for w in &timeline.windows {
        if !timeline.deployments.iter().any(|d| d.id == w.deployment) {
            return invalid(format!(
                "a window names `{}`, which is not a deployment",
                w.deployment
            ));
        }
        if w.until_s <= w.from_s {
            return invalid(format!(
                "a window of `{}` ends ({}) before it starts ({})",
                w.deployment, w.until_s, w.from_s
            ));
        }
    }
    Ok(())
}

/// What `deployment` answers at `offset_ms`: the last window that covers it.
fn scripted(
    timeline: &Timeline,
    deployment: &str,
    offset_ms: u64,
) -> (OutcomeKind, u32, Option<u64>) {
    let t = offset_ms as f64 / 1000.0;
    timeline
        .windows
        .iter()
        .rev()
        .find(|w| w.deployment == deployment && w.from_s <= t && t < w.until_s)
        .map_or((OutcomeKind::Success, timeline.latency_ms, None), |w| {
            (
                w.outcome,
                w.latency_ms.unwrap_or(timeline.latency_ms),
                w.retry_after_ms,
            )
        })
}

/// The simulated deployments as a run sees them at one instant.
struct SimContext<'a> {
    deployments: &'a [SimDeployment],
    now: u64,
}

impl RunContext for SimContext<'_> {
    fn members(&self) -> usize {
        self.deployments.len()
    }

    fn candidate(&mut self, member: usize) -> policy::Candidate {
        let d = &self.deployments[member];
        wit_candidate(&d.config, &d.health.candidate(self.now))
    }

    fn health(&self, member: usize) -> &DeploymentHealth {
        &self.deployments[member].health
    }
}

/// What every request of a run is simulated against.
struct Setup<'a> {
    timeline: &'a Timeline,
    policies: &'a OfflinePolicies,
    /// In the safe order.
    deployments: &'a [SimDeployment],
    table: &'a DeploymentTable,
    /// The deployments' priorities, for the attempt plan's safe order.
    priorities: &'a Arc<[u32]>,
}

fn simulate_request(
    setup: &Setup<'_>,
    report: &mut SimReport,
    last_success: &mut Option<policy::LastSuccess>,
    offset_ms: u64,
    sequence: u64,
) -> SimRequest {
    let Setup {
        timeline,
        policies,
        deployments,
        table,
        ..
    } = *setup;
    let now = START_MS + offset_ms;
    let options = CallOptions {
        request_id: Some(format!("sim-{sequence}")),
        seed: Some(sequence),
        deployments: table.clone(),
    };
    let req = policy::RequestInfo {
        request_id: format!("sim-{sequence}"),
        user: timeline.user.clone(),
        model_group: "simulated".into(),
        attempt: 0,
        sequence,
        estimated_tokens: 0,
        previous_deployment: None,
        user_last_success: last_success.clone(),
    };
    let mut faults = Vec::new();
    let mut context = SimContext { deployments, now };
    let mut run = AttemptRun::start(
        setup.priorities.clone(),
        0,
        req,
        options,
        &mut context,
        &mut OfflineCalls {
            policies,
            faults: &mut faults,
        },
    );
    let order_ids = run
        .plan()
        .order()
        .map(|i| deployments[i].config.id.clone())
        .collect();
    if let Some(first) = run.plan().order().next() {
        if let Some(s) = report.deployments.get_mut(&deployments[first].config.id) {
            s.first_choice += 1;
        }
    }
    let mut attempts = Vec::new();
    let mut served = false;
    while let Some(i) = run.next_attempt() {
        let d = &deployments[i];
        let (kind, latency_ms, retry_after_ms) = scripted(timeline, &d.config.id, offset_ms);
        let outcome = Outcome {
            deployment: d.config.id.clone(),
            kind,
            latency_ms,
            retry_after_ms,
            at_ms: now,
            detail: None,
            upstream_status: None,
        };
        // No time passes in a simulated attempt: it begins and ends at once.
        run.begin(&context, i, now);
        let settled = run.settle(
            &mut context,
            i,
            &outcome,
            policies.idempotent_successes(),
            |o, before, options| policies.judge(o, before, options, &mut faults),
        );
        let summary = report.deployments.entry(d.config.id.clone()).or_default();
        summary.attempts += 1;
        summary.successes += u64::from(kind == OutcomeKind::Success);
        summary.throttles += u64::from(kind == OutcomeKind::Throttled);
        attempts.push(SimAttempt {
            deployment: d.config.id.clone(),
            outcome: kind,
            cooldown_ms: settled.cooldown_ms,
        });
        if kind == OutcomeKind::Success {
            served = true;
            if timeline.user.is_some() {
                *last_success = Some(policy::LastSuccess {
                    deployment: d.config.id.clone(),
                    at_ms: now,
                });
            }
            break;
        }
        let mut calls = OfflineCalls {
            policies,
            faults: &mut faults,
        };
        if !run.fall_back(&mut context, &mut calls, &outcome) {
            break;
        }
    }
    let mut cooling = BTreeMap::new();
    for d in deployments {
        let left = d.health.candidate(now).cooldown_remaining_ms;
        if left > 0 {
            cooling.insert(d.config.id.clone(), left);
            if let Some(s) = report.deployments.get_mut(&d.config.id) {
                s.cooling_ms += timeline.request_every_ms.min(left);
            }
        }
    }
    SimRequest {
        at_s: offset_ms as f64 / 1000.0,
        order: order_ids,
        attempts,
        served,
        cooling,
        faults,
    }
}

impl SimReport {
    /// The run as text: one line per request, then a table per deployment.
    pub fn render_text(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "policies: selection {}, cooldown {}, fallback {}",
            self.policies["selection"], self.policies["cooldown"], self.policies["fallback"]
        );
        let _ = writeln!(
            out,
            "{:>9}  {:<24}  {:<44}  cooling down after",
            "time", "order", "attempts"
        );
        for r in &self.requests {
            let order = if r.order.is_empty() {
                "(none fit: 429)".to_owned()
            } else {
                r.order.join(" ")
            };
            let attempts: Vec<String> = r
                .attempts
                .iter()
                .map(|a| {
                    let outcome = serde_json::to_value(a.outcome)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default();
                    if a.cooldown_ms > 0 {
                        format!("{}:{outcome}→{}", a.deployment, seconds(a.cooldown_ms))
                    } else {
                        format!("{}:{outcome}", a.deployment)
                    }
                })
                .collect();
            let cooling: Vec<String> = r
                .cooling
                .iter()
                .map(|(d, ms)| format!("{d} {}", seconds(*ms)))
                .collect();
            let _ = writeln!(
                out,
                "{:>8.1}s  {order:<24}  {:<44}  {}{}",
                r.at_s,
                attempts.join(" "),
                cooling.join(", "),
                if r.faults.is_empty() {
                    String::new()
                } else {
                    format!("  FAULT {}", r.faults.join("; "))
                }
            );
        }
        let total = self.served + self.failed;
        let _ = writeln!(
            out,
            "\n{total} requests: {} served, {} failed",
            self.served, self.failed
        );
        let _ = writeln!(
            out,
            "{:<20} {:>8} {:>8} {:>9} {:>12} {:>12}",
            "deployment", "attempts", "ok", "throttled", "first choice", "cooling down"
        );
        for (id, s) in &self.deployments {
            let _ = writeln!(
                out,
                "{id:<20} {:>8} {:>8} {:>9} {:>12} {:>12}",
                s.attempts,
                s.successes,
                s.throttles,
                s.first_choice,
                seconds(s.cooling_ms)
            );
        }
        out
    }
}

fn seconds(ms: u64) -> String {
    format!("{:.1}s", ms as f64 / 1000.0)
}
