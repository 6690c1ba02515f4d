//! The lab's figures per contender, and the comparison table.

use std::fmt::Write;

use serde::Serialize;

use super::engine::RunRecord;
use super::scenario::Scenario;

/// One contender's figures.
#[derive(Debug, Clone, Serialize)]
pub struct ContenderReport {
    pub name: String,
    /// The policies it ran, by world.
    pub policies: std::collections::BTreeMap<String, String>,
    /// Served over sent.
    pub success_rate: f64,
    /// Served over the most the quotas allow in the run (`None` when a
    /// deployment has no quota).
    pub goodput: Option<f64>,
    /// Share of served requests answered by the primary (best priority).
    pub primary_share: f64,
    pub client_errors: u64,
    pub upstream_429s: u64,
    pub latency_p50_ms: u64,
    pub latency_p99_ms: u64,
    /// Jain's fairness index over the users' success rates (1 = all alike).
    pub jain_index: f64,
    /// The Gini coefficient of the tokens the accounts' deployments used
    /// (0 = spread evenly, toward 1 = one account used all); `None` with
    /// fewer than two accounts.
    pub account_gini: Option<f64>,
    /// Time each deployment spent cooling down, in seconds (scenario order).
    pub cooldown_s: Vec<f64>,
    /// Everything counted, for charts and further analysis.
    pub record: RunRecord,
}

/// The whole comparison.
#[derive(Debug, Clone, Serialize)]
pub struct LabReport {
    pub scenario: String,
    pub duration_s: u64,
    pub bucket_s: u64,
    pub deployments: Vec<String>,
    /// The accounts deployments name.
    pub accounts: Vec<String>,
    pub users: Vec<String>,
    /// Requests the quotas allow over the run.
    pub capacity: Option<u64>,
    /// Requests sent over the run.
    pub offered: u64,
    pub contenders: Vec<ContenderReport>,
}

impl ContenderReport {
    /// The figures of `record`, a run of `scenario`.
    pub fn new(
        scenario: &Scenario,
        name: String,
        policies: std::collections::BTreeMap<String, String>,
        record: RunRecord,
    ) -> Self {
        let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        let mut sorted = record.latencies_ms.clone();
        sorted.sort_unstable();
        let user_rates: Vec<f64> = record
            .per_user
            .iter()
            .filter(|(sent, _)| *sent > 0)
            .map(|&(sent, served)| ratio(served, sent))
            .collect();
        Self {
            name,
            policies,
            success_rate: ratio(record.served, record.requests),
            goodput: scenario
                .capacity()
                .map(|capacity| ratio(record.served, capacity)),
            primary_share: ratio(record.served_by_primary, record.served),
            client_errors: record.failed,
            upstream_429s: record.upstream_throttles,
            latency_p50_ms: percentile(&sorted, 0.50),
            latency_p99_ms: percentile(&sorted, 0.99),
            jain_index: jain(&user_rates),
            account_gini: (record.per_account.len() >= 2).then(|| {
                let tokens: Vec<f64> = record.per_account.iter().map(|a| a.tokens as f64).collect();
                gini(&tokens)
            }),
            cooldown_s: record
                .cooling_ms
                .iter()
                .map(|&ms| ms as f64 / 1000.0)
                .collect(),
            record,
        }
    }
}

/// The nearest-rank percentile of sorted values (0 when there are none).
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Jain's fairness index: (Σx)² / (n · Σx²); 1 when every x is equal.
pub fn jain(xs: &[f64]) -> f64 {
    let sum: f64 = xs.iter().sum();
    let squares: f64 = xs.iter().map(|x| x * x).sum();
    if squares == 0.0 {
        return 1.0;
    }
    sum * sum / (xs.len() as f64 * squares)
}

/// The Gini coefficient: Σᵢ Σⱼ |xᵢ − xⱼ| / (2 n² x̄); 0 when every x is
/// equal, (n − 1) / n when one has everything.
pub fn gini(xs: &[f64]) -> f64 {
    let n = xs.len() as f64;
    let sum: f64 = xs.iter().sum();
    if sum == 0.0 {
        return 0.0;
    }
    let differences: f64 = xs
        .iter()
        .map(|a| xs.iter().map(|b| (a - b).abs()).sum::<f64>())
        .sum();
    differences / (2.0 * n * sum)
}

impl LabReport {
    /// The comparison as a terminal table, one row per contender.
    pub fn render_table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "scenario: {}", self.scenario);
        let capacity = self
            .capacity
            .map_or("unlimited".to_owned(), |c| c.to_string());
        let _ = writeln!(
            out,
            "{} s simulated, {} requests sent, quotas allow {capacity}",
            self.duration_s, self.offered
        );
        let primary = self.deployments.first().map_or("", String::as_str);
        let _ = writeln!(
            out,
            "\n{:<34} {:>8} {:>8} {:>8} {:>7} {:>9} {:>8} {:>8} {:>6} {:>13}",
            "policies",
            "success",
            "goodput",
            "primary",
            "errors",
            "429s up",
            "p50",
            "p99",
            "Jain",
            "cooling (s)"
        );
        for c in &self.contenders {
            let goodput = c
                .goodput
                .map_or("-".to_owned(), |g| format!("{:.1}%", g * 100.0));
            let cooling: Vec<String> = c.cooldown_s.iter().map(|s| format!("{s:.0}")).collect();
            let _ = writeln!(
                out,
                "{:<34} {:>7.1}% {:>8} {:>7.1}% {:>7} {:>9} {:>8} {:>8} {:>6.3} {:>13}",
                truncate(&c.name, 34),
                c.success_rate * 100.0,
                goodput,
                c.primary_share * 100.0,
                c.client_errors,
                c.upstream_429s,
                millis(c.latency_p50_ms),
                millis(c.latency_p99_ms),
                c.jain_index,
                cooling.join("/"),
            );
        }
        let _ = writeln!(
            out,
            "\nprimary: {primary}; cooling (s) per deployment: {}",
            self.deployments.join("/")
        );
        if self.accounts.len() >= 2 {
            self.render_accounts(&mut out);
        }
        out
    }

    /// Tokens each account's deployments used, the fullest its budgets got,
    /// and the Gini coefficient of the use.
    fn render_accounts(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "\nuse by account: tokens (fullest budget); Gini 0 = even"
        );
        for c in &self.contenders {
            let accounts: Vec<String> = c
                .record
                .per_account
                .iter()
                .map(|a| {
                    let budget = if a.peak_budget_permille > 0 {
                        format!(" ({:.0}%)", f64::from(a.peak_budget_permille) / 10.0)
                    } else {
                        String::new()
                    };
                    format!("{} {}{budget}", a.account, a.tokens)
                })
                .collect();
            let _ = writeln!(
                out,
                "{:<34} {}  Gini {:.3}",
                truncate(&c.name, 34),
                accounts.join("  "),
                c.account_gini.unwrap_or(0.0)
            );
        }
    }
}

fn millis(ms: u64) -> String {
    if ms >= 10_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else {
        format!("{ms}ms")
    }
}

fn truncate(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(width - 1).collect();
        t.push('…');
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.5), 50);
        assert_eq!(percentile(&v, 0.99), 99);
        assert_eq!(percentile(&[7], 0.99), 7);
        assert_eq!(percentile(&[], 0.5), 0);
    }

    #[test]
    fn gini_is_zero_when_equal_and_n_minus_one_over_n_when_one_has_all() {
        assert!(gini(&[5.0, 5.0, 5.0]).abs() < 1e-12);
        assert!((gini(&[9.0, 0.0, 0.0]) - 2.0 / 3.0).abs() < 1e-12);
        assert!((gini(&[1.0, 3.0]) - 0.25).abs() < 1e-12);
    }

    #[test]
    fn jain_is_one_when_equal_and_one_over_n_when_one_gets_all() {
        assert!((jain(&[0.9, 0.9, 0.9]) - 1.0).abs() < 1e-12);
        assert!((jain(&[1.0, 0.0, 0.0, 0.0]) - 0.25).abs() < 1e-12);
    }
}
