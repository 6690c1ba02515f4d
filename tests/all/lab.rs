//! `switchyard lab`: policy combinations compared on a scenario in
//! simulated time.

use std::time::Duration;

use serde_json::Value;
use switchyard::lab;
use switchyard::lab::scenario::Scenario;

use crate::support::*;

fn scenario(name: &str) -> std::path::PathBuf {
    repo().join("examples/scenarios").join(name)
}

fn contender<'a>(report: &'a Value, prefix: &str) -> &'a Value {
    report["contenders"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"].as_str().unwrap().starts_with(prefix))
        .unwrap_or_else(|| panic!("a contender named {prefix}…"))
}

/// The buckets of `series` from `from` on.
fn after(series: &Value, from: usize) -> Vec<u64> {
    series.as_array().unwrap()[from..]
        .iter()
        .map(|n| n.as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn the_lab_reproduces_the_field_story() {
    let out_dir = ScratchDir::new("lab");
    let path = scenario("primary-throttled.toml");
    let out = succeeded(
        switchyard_with_env(
            &[
                "lab",
                path.to_str().unwrap(),
                "--json",
                "--out",
                out_dir.to_str().unwrap(),
            ],
            &[],
            Duration::from_secs(120),
        )
        .await,
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let v1 = contender(&report, "V1");
    let v2 = contender(&report, "V2");
    assert_eq!(v1["policies"]["selection"], "builtin:priority-global");
    assert_eq!(v2["policies"]["selection"], "builtin:priority");

    // Per-request isolation keeps users on the primary and off the errors.
    let share = |c: &Value| c["primary_share"].as_f64().unwrap();
    let errors = |c: &Value| c["client_errors"].as_u64().unwrap();
    assert!(
        share(v2) > share(v1) + 0.1,
        "{} vs {}",
        share(v2),
        share(v1)
    );
    assert!(errors(v2) < errors(v1), "{} vs {}", errors(v2), errors(v1));
    assert_eq!(errors(v2), 0);
    assert!(v2["success_rate"].as_f64().unwrap() > v1["success_rate"].as_f64().unwrap());

    // What the chart draws. User 4's first burst (30 s in) spends the
    // primary's quota for a minute under any policy. From its second burst
    // (210 s in, 10-s bucket 21) on, V1 benches the primary for everyone, so
    // it answers nothing for a while; V2 keeps answering users 1-3 on it in
    // every bucket.
    let primary_v1 = after(&v1["record"]["answered"][0], 21);
    let primary_v2 = after(&v2["record"]["answered"][0], 21);
    assert!(
        primary_v1.iter().filter(|&&n| n == 0).count() >= 3,
        "{primary_v1:?}"
    );
    assert!(primary_v2.iter().all(|&n| n > 0), "{primary_v2:?}");

    // The chart and the full report are written, one panel per contender.
    let svg = std::fs::read_to_string(out_dir.join("primary-throttled.svg")).unwrap();
    assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(80)]);
    for c in report["contenders"].as_array().unwrap() {
        assert!(svg.contains(c["name"].as_str().unwrap()), "{}", c["name"]);
    }
    let saved: Value = serde_json::from_str(
        &std::fs::read_to_string(out_dir.join("primary-throttled.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(saved, report);
}

#[test]
fn the_table_names_every_figure() {
    let s = Scenario::load(&scenario("primary-throttled.toml")).unwrap();
    let table = lab::run(&s, false).unwrap().render_table();
    for column in [
        "success", "goodput", "primary", "errors", "429s up", "p50", "p99", "Jain", "cooling",
    ] {
        assert!(table.contains(column), "{column} in\n{table}");
    }
    for c in &s.policies {
        assert!(table.contains(&c.name), "{} in\n{table}", c.name);
    }
}

#[test]
fn the_same_scenario_gives_the_same_figures() {
    let s = Scenario::load(&scenario("primary-throttled.toml")).unwrap();
    let first = serde_json::to_value(lab::run(&s, false).unwrap()).unwrap();
    let second = serde_json::to_value(lab::run(&s, false).unwrap()).unwrap();
    assert_eq!(first, second);
}

/// `text` in a scenario file, in a folder that goes when the first is dropped.
fn write_scenario(text: &str) -> (ScratchDir, std::path::PathBuf) {
    let dir = ScratchDir::new("lab-scenario");
    let path = dir.join("scenario.toml");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

/// A primary and a second deployment with the given RPM quotas, and users
/// each sending `per_min` steadily, under the default policies.
fn two_deployments(duration_s: u64, rpm: [u32; 2], users: usize, per_min: u32) -> Scenario {
    let mut text = format!(
        "name = \"two deployments\"\nduration_s = {duration_s}\n\
         [[deployments]]\nid = \"a\"\nrpm = {}\n\
         [[deployments]]\nid = \"b\"\npriority = 2\nrpm = {}\n\
         [[policies]]\nname = \"defaults\"\n",
        rpm[0], rpm[1]
    );
    for u in 1..=users {
        text += &format!("[[users]]\nname = \"u{u}\"\nsteady = {{ per_min = {per_min} }}\n");
    }
    let (_dir, path) = write_scenario(&text);
    Scenario::load(&path).unwrap()
}

#[test]
fn within_the_quotas_every_request_is_answered_by_the_primary() {
    // 30 a minute against a primary allowing 40: no throttle, nothing else used.
    let s = two_deployments(300, [40, 40], 2, 15);
    let report = lab::run(&s, false).unwrap();
    let c = &report.contenders[0];
    assert_eq!(report.offered, 150);
    assert_eq!(c.record.served, 150);
    assert_eq!(c.upstream_429s, 0);
    assert_eq!(c.primary_share, 1.0);
    assert_eq!(c.jain_index, 1.0);
    assert_eq!(report.capacity, Some(400));
    assert_eq!(c.goodput, Some(150.0 / 400.0));
    // 500 ms to the first token, 300 tokens at 100 a second.
    assert_eq!(c.latency_p50_ms, 3_500);
}

#[test]
fn beyond_the_quotas_the_simulated_bedrock_throttles_and_users_share_alike() {
    // 60 a minute from three users against 20 + 10: half must fail, alike.
    let s = two_deployments(600, [20, 10], 3, 20);
    let report = lab::run(&s, false).unwrap();
    let c = &report.contenders[0];
    // Never more answers than the quotas allow (300 over ten minutes).
    assert!(c.record.served <= 300, "{}", c.record.served);
    assert!(c.upstream_429s > 0);
    assert_eq!(c.client_errors + c.record.served, report.offered);
    assert!(c.jain_index > 0.95, "{}", c.jain_index);
}

#[test]
fn a_scenario_that_makes_no_sense_is_refused_with_the_reason() {
    let (_dir, path) = write_scenario(
        r#"
name = "silent"
duration_s = 60
[[deployments]]
id = "a"
[[users]]
name = "quiet"
[[policies]]
name = "defaults"
"#,
    );
    let error = switchyard::error_chain::render(&Scenario::load(&path).unwrap_err());
    assert!(error.contains("user `quiet` sends nothing"), "{error}");

    let (_dir, path) = write_scenario("name = \"x\"\nduration_s = 60\nbogus = 1\n");
    let error = switchyard::error_chain::render(&Scenario::load(&path).unwrap_err());
    assert!(error.contains("bogus"), "{error}");
}

#[test]
fn every_shipped_scenario_runs() {
    let dir = repo().join("examples/scenarios");
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let s = Scenario::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let report = lab::run(&s, false).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert_eq!(report.contenders.len(), s.policies.len());
            count += 1;
        }
    }
    assert!(count >= 2, "scenarios in {}", dir.display());
}

/// The field's account rotation: three accounts with weekly token budgets
/// under a simulated week of traffic that all three can hold together but
/// no one alone. No account goes over its budget under any policy; the
/// Gini coefficient of their use shows `priority` draining them in turn and
/// `greedy`/`hybrid` rotating by the budget use they see.
#[test]
fn three_accounts_with_weekly_budgets_stay_within_them_for_a_week() {
    let s = Scenario::load(&scenario("account-budgets.toml")).unwrap();
    let budget = s.accounts[0].weekly_tokens.unwrap();
    assert!(s.accounts.iter().all(|a| a.weekly_tokens == Some(budget)));
    let report = lab::run(&s, false).unwrap();
    let gini = |name: &str| {
        let c = report.contenders.iter().find(|c| c.name == name).unwrap();
        assert_eq!(c.success_rate, 1.0, "{name}: every request served");
        assert_eq!(c.record.per_account.len(), 3);
        for a in &c.record.per_account {
            assert!(
                a.peak_week_tokens <= budget,
                "{name}: {} spent {} tokens in a week, budget {budget}",
                a.account,
                a.peak_week_tokens
            );
        }
        c.account_gini.expect("three accounts: a Gini coefficient")
    };
    let (priority, greedy, hybrid) = (gini("priority"), gini("greedy"), gini("hybrid"));
    assert!(
        priority > 0.25,
        "priority drains accounts in turn: {priority}"
    );
    assert!(greedy < 0.05, "greedy rotates by budget use: {greedy}");
    assert!(hybrid < 0.05, "hybrid rotates by budget use: {hybrid}");
    let table = report.render_table();
    assert!(table.contains("Gini"), "{table}");
}
