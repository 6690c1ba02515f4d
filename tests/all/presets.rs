//! Presets: `serve --preset` and `preset = "..."` start from a named set of
//! defaults that the config file still overrides, and `config show` says
//! where each effective value came from.

use std::time::Duration;

use switchyard::clock::SystemClock;

use crate::support::*;

const ADMIN_TOKEN: &str = "admin-token-that-must-not-print";
const API_KEY: &str = "client-key-that-must-not-print";

fn config_text(extra: &str, sim: &switchyard::sim::SimHandle) -> String {
    format!(
        "{extra}\n{}[[model_groups]]\nname = \"g\"\ndeployments = [\"a\"]\n",
        deployment("a", "model-a", 1, sim)
    )
}

async fn queue_caps(gateway: &GatewayProcess) -> serde_json::Value {
    let stats = raw_get(gateway.addr, "/queue_stats").await.json();
    let queue = &stats["queue"];
    serde_json::json!([
        queue["max_per_user"],
        queue["max_queued"],
        queue["max_queued_per_user"]
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_starts_from_the_preset_and_the_file_still_wins() {
    let sim = start_sim(vec![sim_model("model-a", None)], SystemClock::shared()).await;
    let config = config_text("[admission]\nmax_queued = 7\n", &sim);

    let plain = GatewayProcess::start("no-preset", &config).await;
    assert_eq!(
        queue_caps(&plain).await,
        serde_json::json!([2, 7, 64]),
        "the defaults, and the file's max_queued"
    );
    drop(plain);

    let single_user =
        GatewayProcess::start_with("single-user", &config, &["--preset", "single-user"], &[]).await;
    assert_eq!(
        queue_caps(&single_user).await,
        serde_json::json!([32, 7, 1024]),
        "the preset's per-user caps, and the file's max_queued"
    );
    let answer = raw_post(
        single_user.addr,
        "/model/g/converse",
        &[],
        &converse_body("hi"),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body_text());
}

#[tokio::test]
async fn config_show_says_where_each_value_came_from_and_hides_secrets() {
    let sim = start_sim(vec![sim_model("model-a", None)], SystemClock::shared()).await;
    let dir = ScratchDir::new("presets");
    let path = dir.join("switchyard.toml");
    std::fs::write(
        &path,
        config_text(
            &format!(
                "preset = \"production-low\"\n[admission]\nmax_wait_ms = 1234\n[admin]\ntoken = \"{ADMIN_TOKEN}\"\n[[api_keys]]\nkey = \"{API_KEY}\"\nuser = \"alice\"\n"
            ),
            &sim,
        ),
    )
    .unwrap();
    let path = path.to_str().unwrap();

    let out = succeeded(
        switchyard_with_env(
            &["config", "show", "--config", path],
            &[],
            Duration::from_secs(60),
        )
        .await,
    );
    let text = String::from_utf8(out.stdout).unwrap();
    for line in [
        "preset = \"production-low\"  # config file",
        "max_wait_ms = 1234  # config file",
        "max_queued_per_user = 32  # preset production-low",
        "format = \"json\"  # preset production-low",
        "quota_margin_ms = 1000  # default",
        "token = \"<redacted>\"  # config file",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "no line `{line}` in:\n{text}"
        );
    }
    assert!(
        !text.contains(ADMIN_TOKEN) && !text.contains(API_KEY),
        "{text}"
    );

    // The command line's preset wins over the file's; the file still wins
    // over both.
    let out = succeeded(
        switchyard_with_env(
            &[
                "config",
                "show",
                "--config",
                path,
                "--preset",
                "development",
            ],
            &[],
            Duration::from_secs(60),
        )
        .await,
    );
    let text = String::from_utf8(out.stdout).unwrap();
    for line in [
        "preset = \"development\"  # command line",
        "level = \"debug\"  # preset development",
        "max_wait_ms = 1234  # config file",
        "max_queued_per_user = 64  # default",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "no line `{line}` in:\n{text}"
        );
    }

    // A preset that does not exist is refused with the ones that do.
    let out = switchyard_with_env(
        &["config", "show", "--config", path, "--preset", "fast"],
        &[],
        Duration::from_secs(60),
    )
    .await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no preset `fast`") && stderr.contains("production-high"),
        "{stderr}"
    );
}
