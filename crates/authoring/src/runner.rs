//! Runs a policy component on fixtures, in the gateway's own runtime, and
//! judges its decisions: the engine behind `switchyard policy test`.
//!
//! Each fixture gets a fresh load of the component (its params, its own
//! key-value state) on a manual clock set to the fixture's `now_ms`, and one
//! call seeded with the fixture's `seed`. The runtime meters fuel, so the
//! instruction count of a call is the same on every run.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::fixture::{CallInput, Decision, FixtureError, NamedFixture};
use switchyard_clock::ManualClock;
use switchyard_policy_host::error_chain::render;
use switchyard_policy_host::policy::{
    CallOptions, KvStore, LoadError, PolicyKind, PolicyLog, PolicyRuntime,
};
use switchyard_policy_host::settings::PolicyRuntimeConfig;

/// How long one fixture's call may run: generous, since a test judges what a
/// policy decides, and fuel (not time) is what it reports.
const FIXTURE_CALL_DEADLINE: Duration = Duration::from_secs(5);

/// Runs fixtures against one component.
pub struct FixtureRunner {
    runtime: PolicyRuntime,
    clock: Arc<ManualClock>,
    component: Vec<u8>,
    label: String,
    kind: PolicyKind,
}

/// How one fixture went.
#[derive(Debug, Clone, Serialize)]
pub struct FixtureResult {
    /// The fixture's name.
    pub name: String,
    /// The file it came from.
    pub file: String,
    /// Whether the decision matched the expectation (or there was none and
    /// the call did not fault).
    pub passed: bool,
    /// What the policy decided, unless it faulted.
    pub decision: Option<Decision>,
    /// What the fixture expected, if it says.
    pub expected: Option<Decision>,
    /// The lines that say how decision and expectation differ.
    pub diff: Vec<String>,
    /// Why the policy could not decide (load refused, or the call faulted).
    pub error: Option<String>,
    /// WebAssembly instructions the call executed, instantiation included.
    pub fuel: Option<u64>,
    /// The largest linear memory the call's instance had, in bytes.
    pub peak_memory_bytes: usize,
    /// What the policy logged.
    pub logs: Vec<PolicyLog>,
}

impl FixtureRunner {
    /// A runner for the component `bytes`, named `label` in logs. Fails when
    /// it is not a policy component; its params are checked per fixture.
    pub fn new(label: &str, bytes: Vec<u8>) -> Result<Self, LoadError> {
        let clock = ManualClock::new(0);
        let config = PolicyRuntimeConfig {
            call_deadline_us: FIXTURE_CALL_DEADLINE.as_micros() as u64,
            max_concurrent_calls: 4,
            meter_fuel: true,
            ..PolicyRuntimeConfig::default()
        };
        let runtime = PolicyRuntime::new(&config, clock.clone())?;
        let kind = runtime.kind_of(&bytes)?;
        Ok(Self {
            runtime,
            clock,
            component: bytes,
            label: label.to_owned(),
            kind,
        })
    }

    fn kv(clock: &Arc<ManualClock>) -> Arc<KvStore> {
        Arc::new(KvStore::new(clock.clone()))
    }

    /// The world the component implements.
    pub fn kind(&self) -> PolicyKind {
        self.kind
    }

    /// Runs one fixture. Errors are the fixture's own (a missing input);
    /// what the policy does wrong is a failed result.
    pub fn run(&self, fixture: &NamedFixture) -> Result<FixtureResult, FixtureError> {
        let input = fixture.input(self.kind)?;
        let f = &fixture.fixture;
        let mut result = FixtureResult {
            name: fixture.name.clone(),
            file: fixture.path.display().to_string(),
            passed: false,
            decision: None,
            expected: f.expect.clone(),
            diff: Vec::new(),
            error: None,
            fuel: None,
            peak_memory_bytes: 0,
            logs: Vec::new(),
        };
        self.clock.set(f.now_ms);
        let kv = Self::kv(&self.clock);
        for (key, value) in &f.kv {
            let bytes = value.bytes().map_err(|message| FixtureError::Invalid {
                name: fixture.name.clone(),
                message: format!("kv `{key}`: {message}"),
            })?;
            kv.set(key.clone(), bytes, None);
        }
        let policy = match self
            .runtime
            .load(self.kind, &self.label, &self.component, &f.params, kv)
        {
            Ok(policy) => policy,
            Err(e) => {
                result.error = Some(format!("refused at load: {}", render(&e)));
                return Ok(result);
            }
        };
        let options = CallOptions {
            request_id: Some(f.request.request_id.clone()),
            seed: Some(f.seed),
            deployments: fixture.deployments(),
        };
        let called = match &input {
            CallInput::Selection { req, candidates } => policy
                .select(req, candidates, &options)
                .map(|(order, report)| {
                    (
                        Decision::Order(NamedFixture::order_ids(&input, &order)),
                        report,
                    )
                }),
            CallInput::Cooldown { outcome, candidate } => policy
                .on_outcome(outcome, candidate, &options)
                .map(|(d, report)| {
                    (
                        Decision::Cooldown {
                            cooldown_ms: d.cooldown_ms,
                            clear_history: d.clear_history,
                        },
                        report,
                    )
                }),
            CallInput::Fallback {
                req,
                failed,
                tried,
                remaining,
            } => policy
                .next(req, failed, tried, remaining, &options)
                .map(|(order, report)| {
                    (
                        Decision::Order(NamedFixture::order_ids(&input, &order)),
                        report,
                    )
                }),
        };
        match called {
            Ok((decision, report)) => {
                result.fuel = report.fuel_used;
                result.peak_memory_bytes = report.peak_memory_bytes;
                result.logs = report.logs;
                result.diff = f
                    .expect
                    .as_ref()
                    .map(|e| e.diff(&decision))
                    .unwrap_or_default();
                result.passed = result.diff.is_empty();
                result.decision = Some(decision);
            }
            Err(fault) => result.error = Some(format!("the call faulted: {fault}")),
        }
        Ok(result)
    }
}

/// The results of a whole `policy test` run, as printed.
#[derive(Debug, Clone, Serialize)]
pub struct TestReport {
    /// The component tested.
    pub component: String,
    /// Its world.
    pub kind: PolicyKind,
    /// One per fixture, in order.
    pub results: Vec<FixtureResult>,
}

impl TestReport {
    /// Whether every fixture passed.
    pub fn passed(&self) -> bool {
        self.results.iter().all(|r| r.passed)
    }

    /// The human-readable report: one line per fixture, the diff under a
    /// failed one, and a summary line.
    pub fn render_text(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let width = self.results.iter().map(|r| r.name.len()).max().unwrap_or(0);
        for r in &self.results {
            let status = if r.passed { "PASS" } else { "FAIL" };
            let decision = r
                .decision
                .as_ref()
                .map_or_else(|| "-".to_owned(), ToString::to_string);
            let fuel = r.fuel.map_or_else(|| "-".to_owned(), |f| f.to_string());
            let _ = writeln!(
                out,
                "{status}  {:<width$}  {decision}  fuel {fuel}  memory {} KiB",
                r.name,
                r.peak_memory_bytes / 1024
            );
            if !r.passed {
                let _ = writeln!(out, "      in {}", r.file);
            }
            if let Some(error) = &r.error {
                let _ = writeln!(out, "      {error}");
            }
            for line in &r.diff {
                let _ = writeln!(out, "      {line}");
            }
            if !r.passed {
                for log in &r.logs {
                    let _ = writeln!(out, "      log {}: {}", log.level, log.message);
                }
            }
            if r.passed && r.expected.is_none() {
                let _ = writeln!(
                    out,
                    "      (no `expect` in the fixture: decision shown, not judged)"
                );
            }
        }
        let failed = self.results.iter().filter(|r| !r.passed).count();
        let _ = writeln!(
            out,
            "{} {} policy, {} fixtures: {} passed, {failed} failed",
            self.component,
            self.kind,
            self.results.len(),
            self.results.len() - failed
        );
        out
    }
}
