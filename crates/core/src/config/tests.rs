//! The config's parsing, presets and checks.

use super::*;

const MINIMAL: &str = r#"
    [[deployments]]
    id = "a"
    model_id = "anthropic.claude-3-5-sonnet-20240620-v1:0"

    [[model_groups]]
    name = "claude"
    deployments = ["a"]
"#;

fn error_of(text: &str) -> String {
    Config::parse(text, "test.toml").unwrap_err().to_string()
}

#[test]
fn every_preset_makes_a_valid_config() {
    for preset in Preset::ALL {
        let config = Config::parse_with(MINIMAL, "test.toml", Some(preset))
            .unwrap_or_else(|e| panic!("{preset}: {e}"));
        assert_eq!(config.preset, Some(preset));
    }
}

#[test]
fn a_preset_sits_between_the_defaults_and_the_file() {
    let text = format!("preset = \"production-high\"\n[admission]\nmax_wait_ms = 1234\n{MINIMAL}");
    let config = Config::parse(&text, "test.toml").unwrap();
    assert_eq!(config.admission.max_wait_ms, 1234, "the file wins");
    assert_eq!(config.admission.queue.max_queued, 16_384, "the preset");
    assert_eq!(config.logging.format, LogFormat::Json, "the preset");
    assert_eq!(config.limits.max_attempts, 0, "the default");

    // The command line's preset wins over the file's.
    let config = Config::parse_with(&text, "test.toml", Some(Preset::Development)).unwrap();
    assert_eq!(config.preset, Some(Preset::Development));
    assert_eq!(config.logging.level, "debug");
    assert_eq!(config.admission.max_wait_ms, 1234, "the file still wins");

    // Without a preset, the defaults.
    let config = Config::parse(MINIMAL, "test.toml").unwrap();
    assert_eq!(config.preset, None);
    assert_eq!(config.logging, LoggingConfig::default());
    assert_eq!(config.admission.max_wait_ms, 30_000);
}

#[test]
fn an_unknown_preset_is_refused_with_the_known_ones() {
    let error = error_of(&format!("preset = \"fast\"\n{MINIMAL}"));
    assert!(error.contains("no preset `fast`"), "{error}");
    assert!(error.contains("production-high"), "{error}");
}

#[test]
fn minimal_config_gets_builtin_policies() {
    let config = Config::parse(MINIMAL, "test.toml").unwrap();
    let policies = &config.model_groups[0].policies;
    assert_eq!(policies.selection.name.as_deref(), Some("priority"));
    assert_eq!(policies.cooldown.name.as_deref(), Some("adaptive"));
    assert_eq!(policies.fallback.name.as_deref(), Some("cascade"));
    assert_eq!(config.policy_runtime.call_deadline_us, 1_000);
    assert_eq!(config.policy_runtime.memory_limit_mib, 16);
}

#[test]
fn unknown_deployment_in_group_names_the_key() {
    let text = MINIMAL.replace(r#"deployments = ["a"]"#, r#"deployments = ["a", "b"]"#);
    let err = error_of(&text);
    assert!(err.contains("model_groups[0].deployments"), "{err}");
    assert!(err.contains("unknown deployment `b`"), "{err}");
}

#[test]
fn typo_in_key_is_rejected() {
    let text = MINIMAL.replace("model_id", "modelid");
    let err = error_of(&text);
    assert!(err.contains("modelid"), "{err}");
}

#[test]
fn policy_with_name_and_path_is_rejected() {
    let text = format!(
        "{MINIMAL}\n[model_groups.policies.selection]\nname = \"priority\"\npath = \"x.wasm\"\n"
    );
    let err = error_of(&text);
    assert!(err.contains("model_groups[0].policies.selection"), "{err}");
}

#[test]
fn zero_deadline_is_rejected() {
    let text = format!("[policy_runtime]\ncall_deadline_us = 0\n{MINIMAL}");
    let err = error_of(&text);
    assert!(err.contains("policy_runtime.call_deadline_us"), "{err}");
}

#[test]
fn accounts_name_a_deployments_account_once_with_budgets_above_zero() {
    let with = |accounts: &str| format!("{MINIMAL}\n{accounts}");
    let ok = with("[[accounts]]\nname = \"default\"\nweekly_tokens = 1000\n");
    let config = Config::parse(&ok, "test.toml").unwrap();
    assert_eq!(config.accounts[0].budget().weekly_tokens, Some(1000));

    let error = error_of(&with("[[accounts]]\nname = \"other\"\n"));
    assert!(
        error.contains("accounts[0].name") && error.contains("`default`"),
        "{error}"
    );
    let error = error_of(&with(
        "[[accounts]]\nname = \"default\"\ndaily_requests = 0\n",
    ));
    assert!(error.contains("accounts[0].daily_requests"), "{error}");
    let twice = "[[accounts]]\nname = \"default\"\n[[accounts]]\nname = \"default\"\n";
    assert!(error_of(&with(twice)).contains("twice"));
}

#[test]
fn an_alias_names_one_group_only() {
    let groups = |a: &str, b: &str| {
        format!(
            "[[deployments]]\nid = \"d\"\nmodel_id = \"m\"\n[[model_groups]]\nname = \"one\"\naliases = [{a}]\ndeployments = [\"d\"]\n[[model_groups]]\nname = \"two\"\naliases = [{b}]\ndeployments = [\"d\"]\n"
        )
    };
    let ok = Config::parse(&groups("\"x\"", "\"y\", \"z\""), "test.toml").unwrap();
    assert_eq!(ok.model_groups[1].aliases, ["y", "z"]);
    for (a, b, problem) in [
        ("\"x\"", "\"x\"", "used twice"),
        ("\"two\"", "\"y\"", "already a model group's name"),
        ("\"\"", "\"y\"", "must not be empty"),
    ] {
        let error = error_of(&groups(a, b));
        assert!(
            error.contains("aliases") && error.contains(problem),
            "{error}"
        );
    }
}
