//! `switchyard lab`: the policy lab. Runs several policy combinations over
//! the same scenario (deployments with Bedrock's quotas and latency, users
//! with arrival patterns) in simulated time, and compares what users would
//! have seen: success rate, goodput, primary share, errors, upstream 429s,
//! latency, fairness and cooldown time, as a table and a chart.
//!
//! [`scenario`] is the file format, [`arrivals`] turns users' patterns into
//! requests, [`engine`] runs one contender, [`report`] computes the figures
//! and [`chart`] draws them.

pub mod arrivals;
pub mod chart;
pub mod engine;
pub mod report;
pub mod scenario;

use indicatif::{ProgressBar, ProgressStyle};

use report::{ContenderReport, LabReport};
use scenario::{Scenario, ScenarioError};

/// Runs every contender of `scenario` on the same arrivals. With
/// `show_progress`, a progress bar on stderr follows the simulated time (it
/// stays hidden when stderr is not a terminal).
pub fn run(scenario: &Scenario, show_progress: bool) -> Result<LabReport, ScenarioError> {
    scenario.validate()?;
    let arrivals = arrivals::arrivals(&scenario.users, scenario.duration_s, scenario.seed);
    let run_ms = scenario.duration_s * 1000;
    let bar = if show_progress {
        ProgressBar::new(run_ms * scenario.policies.len() as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{prefix:<28} [{bar:32}] {percent:>3}% simulated")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    let mut contenders = Vec::with_capacity(scenario.policies.len());
    for (n, contender) in scenario.policies.iter().enumerate() {
        bar.set_prefix(contender.name.clone());
        let done_before = n as u64 * run_ms;
        let mut progress = |at_ms: u64| bar.set_position(done_before + at_ms.min(run_ms));
        let (policies, record) = engine::run(scenario, contender, &arrivals, &mut progress)?;
        contenders.push(ContenderReport::new(
            scenario,
            contender.name.clone(),
            policies,
            record,
        ));
    }
    bar.finish_and_clear();
    Ok(LabReport {
        scenario: scenario.name.clone(),
        duration_s: scenario.duration_s,
        bucket_s: scenario.bucket_s,
        deployments: scenario.deployments.iter().map(|d| d.id.clone()).collect(),
        accounts: scenario.account_names(),
        users: scenario.users.iter().map(|u| u.name.clone()).collect(),
        capacity: scenario.capacity(),
        offered: arrivals.len() as u64,
        contenders,
    })
}
