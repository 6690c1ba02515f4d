//! The policy authoring kit, as an author uses it: `switchyard policy new |
//! build | test | simulate | check | push`, run as the real binary.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use switchyard::clock::ManualClock;

use crate::support::*;

const TOKEN: &str = "walkthrough-admin-token-0123456789";

/// The target folder the host's build shares with every policy, so `core`
/// and `alloc` for wasm32 and the SDK are built once.
fn shared_policy_target() -> PathBuf {
    repo().join("target").join("policies")
}

/// Runs `switchyard ARGS` with the walkthrough's admin token, for at most `limit`.
async fn switchyard(args: &[&str], limit: Duration) -> Output {
    switchyard_with_env(args, &[("SWITCHYARD_ADMIN_TOKEN", TOKEN)], limit).await
}

/// Building a policy crate compiles it (and, on a cold target folder, the
/// SDK and the wasm32 standard library): minutes, not seconds.
const BUILD_LIMIT: Duration = Duration::from_secs(600);

const RUN_LIMIT: Duration = Duration::from_secs(60);

fn fixture_files(dir: &Path) -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| p.display().to_string())
        .collect();
    files.sort();
    files
}

#[tokio::test]
async fn every_builtin_policy_passes_its_fixtures() {
    let builtins = repo().join("policies/builtin");
    let mut tested = 0;
    for entry in std::fs::read_dir(&builtins).unwrap() {
        let dir = entry.unwrap().path();
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let fixtures = fixture_files(&dir.join("fixtures"));
        assert!(!fixtures.is_empty(), "{name} has fixtures");
        let component = policy_path(&name);
        let mut args = vec!["policy", "test", component.as_str()];
        args.extend(fixtures.iter().map(String::as_str));
        let out = succeeded(switchyard(&args, RUN_LIMIT).await);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains(" 0 failed"), "{name}: {stdout}");
        assert!(
            !stdout.contains("no `expect`"),
            "{name}: every fixture judges: {stdout}"
        );
        tested += 1;
    }
    assert_eq!(tested, switchyard::policy::builtin::ALL.len());
}

#[tokio::test]
async fn a_wrong_expectation_fails_with_a_readable_diff() {
    let fixture = repo().join("tests/fixtures/policy-test/priority-wrong-expectation.json");
    let component = policy_path("priority");
    let out = switchyard(
        &["policy", "test", &component, fixture.to_str().unwrap()],
        RUN_LIMIT,
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", command_output(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("PASS  the primary first"), "{stdout}");
    assert!(
        stdout.contains("FAIL  the backup first (deliberately wrong)"),
        "{stdout}"
    );
    assert!(stdout.contains("- expected: [backup, primary]"), "{stdout}");
    assert!(stdout.contains("+ actual:   [primary, backup]"), "{stdout}");
    assert!(
        stdout.contains("first difference at position 1: expected backup, got primary"),
        "{stdout}"
    );
    assert!(stdout.contains("1 passed, 1 failed"), "{stdout}");
}

#[tokio::test]
async fn fuel_is_the_same_on_every_run() {
    let fixtures = fixture_files(&repo().join("policies/builtin/hybrid/fixtures"));
    let component = policy_path("hybrid");
    let mut args = vec!["policy", "test", "--json", component.as_str()];
    args.extend(fixtures.iter().map(String::as_str));
    let fuel = |out: Output| -> Vec<(u64, u64)> {
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        report["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["fuel"].as_u64().expect("fuel is reported"),
                    r["peak_memory_bytes"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    let first = fuel(succeeded(switchyard(&args, RUN_LIMIT).await));
    let second = fuel(succeeded(switchyard(&args, RUN_LIMIT).await));
    assert!(first.iter().all(|&(f, m)| f > 0 && m > 0), "{first:?}");
    assert_eq!(first, second);
}

#[tokio::test]
async fn simulate_shows_the_adaptive_cooldown_over_ten_minutes() {
    let timeline = repo().join("examples/timelines/throttled-primary.toml");
    let out = succeeded(
        switchyard(
            &["policy", "simulate", "--json", timeline.to_str().unwrap()],
            RUN_LIMIT,
        )
        .await,
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let requests = report["requests"].as_array().unwrap();
    assert_eq!(requests.len(), 120, "600 s at one request per 5 s");
    // The primary's cooldowns while it is throttled: 10 s, 30 s, then 60 s
    // within a minute; then the window forgets the oldest throttles.
    let benches: Vec<u64> = requests
        .iter()
        .flat_map(|r| r["attempts"].as_array().unwrap())
        .filter(|a| a["deployment"] == "primary" && a["outcome"] == "throttled")
        .map(|a| a["cooldown_ms"].as_u64().unwrap())
        .collect();
    assert_eq!(&benches[..3], &[10_000, 30_000, 60_000], "{benches:?}");
    assert_eq!(report["failed"], 0);
    assert_eq!(report["deployments"]["primary"]["first_choice"], 91);

    // The same timeline with another cooldown policy, chosen on the command line.
    let out = succeeded(
        switchyard(
            &[
                "policy",
                "simulate",
                "--json",
                "--cooldown",
                "fixed",
                timeline.to_str().unwrap(),
            ],
            RUN_LIMIT,
        )
        .await,
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["policies"]["cooldown"], "builtin:fixed");
    let first = report["requests"][0]["attempts"][0]["cooldown_ms"].as_u64();
    assert_eq!(first, Some(10_000));
}

#[tokio::test]
async fn check_runs_the_load_gate() {
    let ok = succeeded(switchyard(&["policy", "check", &policy_path("adaptive")], RUN_LIMIT).await);
    assert!(
        String::from_utf8_lossy(&ok.stdout).contains("is a cooldown policy"),
        "{}",
        command_output(&ok)
    );
    let bad = switchyard(
        &[
            "policy",
            "check",
            &policy_path("adaptive"),
            "--params",
            r#"{"steps_ms": []}"#,
        ],
        RUN_LIMIT,
    )
    .await;
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("`steps_ms`: must not be empty"),
        "{}",
        command_output(&bad)
    );
}

#[tokio::test]
async fn the_cooldown_and_fallback_templates_build_and_pass_their_fixtures() {
    let work = ScratchDir::new("authoring");
    let target = shared_policy_target();
    for kind in ["cooldown", "fallback"] {
        let dir = work.join(format!("my-{kind}"));
        let dir_s = dir.to_str().unwrap();
        let name = format!("my-{kind}");
        succeeded(
            switchyard(
                &["policy", "new", &name, "--kind", kind, "--dir", dir_s],
                RUN_LIMIT,
            )
            .await,
        );
        let component = dir.join(format!("{name}.wasm"));
        let component = component.to_str().unwrap();
        succeeded(
            switchyard(
                &[
                    "policy",
                    "build",
                    dir_s,
                    "--target-dir",
                    target.to_str().unwrap(),
                    "--out",
                    component,
                ],
                BUILD_LIMIT,
            )
            .await,
        );
        let fixtures = fixture_files(&dir.join("fixtures"));
        let mut args = vec!["policy", "test", component];
        args.extend(fixtures.iter().map(String::as_str));
        let out = succeeded(switchyard(&args, RUN_LIMIT).await);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains(&format!("{kind} policy")), "{stdout}");
        assert!(stdout.contains(" 0 failed"), "{stdout}");
    }
}

/// The worked example, as it stands in `examples/custom-policy/`: it builds
/// to a component and passes its own fixtures.
#[tokio::test]
async fn the_custom_policy_example_builds_and_passes_its_fixtures() {
    let example = repo().join("examples/custom-policy");
    let work = ScratchDir::new("authoring");
    let component = work.join("cheapest-first.wasm");
    succeeded(
        switchyard(
            &[
                "policy",
                "build",
                example.to_str().unwrap(),
                "--target-dir",
                shared_policy_target().to_str().unwrap(),
                "--out",
                component.to_str().unwrap(),
            ],
            BUILD_LIMIT,
        )
        .await,
    );
    let fixtures = fixture_files(&example.join("fixtures"));
    let mut args = vec!["policy", "test", component.to_str().unwrap()];
    args.extend(fixtures.iter().map(String::as_str));
    let out = succeeded(switchyard(&args, RUN_LIMIT).await);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("3 passed, 0 failed"),
        "{}",
        command_output(&out)
    );
}

/// The walkthrough of `examples/custom-policy/README.md`, step by step:
/// scaffold a crate, put the example's logic and fixtures in it, build it,
/// test it, and push it to a running gateway, where it routes requests.
#[tokio::test]
async fn the_walkthrough_from_scaffold_to_a_live_policy() {
    let work = ScratchDir::new("authoring");
    let dir = work.join("cheapest-first");
    let dir_s = dir.to_str().unwrap();
    let target = shared_policy_target();

    // 1. Scaffold: the template builds and passes its own fixtures as it is.
    succeeded(
        switchyard(
            &[
                "policy",
                "new",
                "cheapest-first",
                "--kind",
                "selection",
                "--dir",
                dir_s,
            ],
            RUN_LIMIT,
        )
        .await,
    );
    for file in [
        "Cargo.toml",
        ".cargo/config.toml",
        "src/lib.rs",
        "fixtures/examples.json",
    ] {
        assert!(dir.join(file).is_file(), "{file} written");
    }
    let build = |out: &'static str| {
        let dir = dir_s.to_owned();
        let target = target.clone();
        async move {
            let out_path = Path::new(&dir).join(out);
            succeeded(
                switchyard(
                    &[
                        "policy",
                        "build",
                        &dir,
                        "--target-dir",
                        target.to_str().unwrap(),
                        "--out",
                        out_path.to_str().unwrap(),
                    ],
                    BUILD_LIMIT,
                )
                .await,
            );
            out_path.display().to_string()
        }
    };
    let template = build("template.wasm").await;
    let fixtures = fixture_files(&dir.join("fixtures"));
    let mut args = vec!["policy", "test", template.as_str()];
    args.extend(fixtures.iter().map(String::as_str));
    succeeded(switchyard(&args, RUN_LIMIT).await);

    // 2. Write the logic: the example's source and fixtures.
    let example = repo().join("examples/custom-policy");
    std::fs::copy(example.join("src/lib.rs"), dir.join("src/lib.rs")).unwrap();
    std::fs::remove_file(dir.join("fixtures/examples.json")).unwrap();
    std::fs::copy(
        example.join("fixtures/routing.json"),
        dir.join("fixtures/routing.json"),
    )
    .unwrap();

    // 3. Build and test it.
    let component = build("cheapest-first.wasm").await;
    let fixtures = fixture_files(&dir.join("fixtures"));
    let mut args = vec!["policy", "test", component.as_str()];
    args.extend(fixtures.iter().map(String::as_str));
    let out = succeeded(switchyard(&args, RUN_LIMIT).await);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("3 passed, 0 failed"),
        "{}",
        command_output(&out)
    );
    // As the README shows: with the template's stack, every call stays in
    // the memory the gateway keeps resident.
    let resident = format!(
        "memory {} KiB",
        switchyard::policy::KEEP_RESIDENT_BYTES / 1024
    );
    let passes: Vec<&str> = stdout.lines().filter(|l| l.starts_with("PASS")).collect();
    assert_eq!(passes.len(), 3, "{stdout}");
    assert!(
        passes.iter().all(|l| l.ends_with(&resident)),
        "every call within {resident}: {stdout}"
    );

    // 4. Push it to a running gateway, with its params.
    let clock = ManualClock::new(1_000_000);
    let sim = start_sim(
        vec![
            sim_model("anthropic.claude-3-5-sonnet-20240620-v1:0", None),
            sim_model("anthropic.claude-3-haiku-20240307-v1:0", None),
        ],
        clock.clone(),
    )
    .await;
    let config = format!(
        "[admin]\ntoken = \"{TOKEN}\"\n{}{}\n[[model_groups]]\nname = \"claude\"\ndeployments = [\"sonnet\", \"haiku\"]\n",
        deployment("sonnet", "anthropic.claude-3-5-sonnet-20240620-v1:0", 1, &sim),
        deployment("haiku", "anthropic.claude-3-haiku-20240307-v1:0", 2, &sim),
    );
    let gw = start_gateway(&config, clock).await;
    let client = sdk_client(&gw.url());
    let ask_as = |user: &'static str| {
        client
            .converse()
            .model_id("claude")
            .messages(user_message("hello"))
            .customize()
            .mutate_request(move |req| {
                req.headers_mut().insert("x-switchyard-user", user);
            })
            .send()
    };
    let calls = |model: &str| sim.counts(model).calls;
    const SONNET: &str = "anthropic.claude-3-5-sonnet-20240620-v1:0";
    const HAIKU: &str = "anthropic.claude-3-haiku-20240307-v1:0";

    // Before the push: priority, so the sonnet deployment answers everyone.
    ask_as("dev@example.com").await.expect("served");
    assert_eq!((calls(SONNET), calls(HAIKU)), (1, 0));

    // The push, with the policy's params (it refuses to load without prices).
    let params = serde_json::json!({
        "prices": {HAIKU: 25, SONNET: 300},
        "premium_users": ["ceo@example.com"]
    })
    .to_string();
    let push = |params: Option<&str>| {
        let mut args = vec![
            "policy".to_owned(),
            "push".into(),
            "--gateway".into(),
            gw.url(),
            "--group".into(),
            "claude".into(),
            "--kind".into(),
            "selection".into(),
            component.clone(),
        ];
        if let Some(p) = params {
            args.extend(["--params".into(), p.to_owned()]);
        }
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            switchyard(&args, RUN_LIMIT).await
        }
    };
    let refused = push(None).await;
    assert!(!refused.status.success(), "{}", command_output(&refused));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("`prices`"),
        "{}",
        command_output(&refused)
    );
    let out = succeeded(push(Some(&params)).await);
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["active"], true, "{answer}");

    // 5. It routes: a standard user goes to haiku, the premium one to sonnet.
    let answer = ask_as("dev@example.com").await.expect("served");
    assert_eq!((calls(SONNET), calls(HAIKU)), (1, 1), "{answer:?}");
    ask_as("ceo@example.com").await.expect("served");
    assert_eq!((calls(SONNET), calls(HAIKU)), (2, 1));

    drop(gw);
}
