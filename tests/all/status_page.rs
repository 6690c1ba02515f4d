//! The live status page at `/`, in headless Chromium (Debian's `chromium`):
//! a forced throttle shows as a cooldown, and the screenshot is kept in
//! `target/artifacts/status-page.png` for CI.

use std::path::{Path, PathBuf};
use std::time::Duration;

use switchyard::clock::ManualClock;
use switchyard::sim::Fault;

use crate::support::*;

fn chromium() -> PathBuf {
    let path = PathBuf::from("/usr/bin/chromium");
    assert!(
        path.is_file(),
        "Chromium is missing; install it with: apt-get install -y chromium (./dev test does)"
    );
    path
}

/// Runs headless Chromium on `url` with `args`, each run in a profile of
/// its own, with the flags that keep it off the network.
async fn headless(url: &str, args: &[String]) -> std::process::Output {
    let profile = ScratchDir::new("chromium-profile");
    let run = tokio::process::Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            // Let the page's first fetch and render finish before the dump.
            "--virtual-time-budget=3000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(90), run)
        .await
        .expect("chromium finished in time")
        .expect("chromium ran");
    out
}

const KEY: &str = "status-page-key-0123456789";

#[tokio::test]
async fn the_status_page_shows_a_cooldown_after_a_throttle_and_a_teams_spend() {
    let clock = ManualClock::new(1_000_000);
    let sim = start_sim(
        vec![sim_model("model-a", None), sim_model("model-b", None)],
        clock.clone(),
    )
    .await;
    // A team with a daily budget, and a price for model-b, so its spend shows.
    let config = format!(
        r#"{}{}[[model_groups]]
name = "claude"
deployments = ["a", "b"]
[[teams]]
name = "search"
limits = {{ daily_usd = 5.0 }}
[[api_keys]]
key = "{KEY}"
user = "alice"
team = "search"
[prices."model-b"]
input = 1000.0
output = 1000.0
"#,
        deployment("a", "model-a", 1, &sim),
        deployment("b", "model-b", 2, &sim),
    );
    let gw = start_gateway(&config, clock).await;
    let url = format!("{}/", gw.url());

    let before = headless(&url, &["--dump-dom".to_owned()]).await;
    let dom = String::from_utf8_lossy(&before.stdout);
    assert!(
        dom.contains(r#"data-deployment="a" data-status="available""#),
        "{dom}"
    );
    assert!(dom.contains("priority v1"), "the active policies: {dom}");

    sim.inject("model-a", Fault::Throttle, 1);
    let bearer = format!("Bearer {KEY}");
    let raw = raw_post(
        gw.addr,
        "/model/claude/converse",
        &[("authorization", bearer.as_str())],
        &converse_body("x"),
    )
    .await;
    assert_eq!(raw.headers["x-switchyard-deployment"], "b");

    // The history is sampled every 2 s: wait for a sample with the throttle.
    let until = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let history = raw_get(gw.addr, "/status_history").await.json();
        let total = |deployment: &str, series: &str| -> u64 {
            history["deployments"][deployment][series]
                .as_array()
                .map_or(0, |t| t.iter().filter_map(|v| v.as_u64()).sum())
        };
        // Both attempts' ends sampled: a's throttle and b's answer.
        if total("a", "throttles") >= 1 && total("b", "requests") >= 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < until,
            "no sample with the throttle: {history}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let after = headless(&url, &["--dump-dom".to_owned()]).await;
    let dom = String::from_utf8_lossy(&after.stdout);
    assert!(
        dom.contains(r#"data-deployment="a" data-status="in_cooldown""#),
        "{dom}"
    );
    // The charts: a's throttle as a bar, its cooldown on the timeline, and
    // b's answer among its requests.
    assert!(
        dom.contains(r#"data-series="throttles" data-deployment="a" data-total="1""#),
        "a's throttle on its chart: {dom}"
    );
    assert!(
        dom.contains(
            r#"data-series="cooldowns" data-deployment="a" data-count="1"><rect class="cooldown""#
        ),
        "a's cooldown on its timeline: {dom}"
    );
    assert!(
        dom.contains(r#"data-series="throttles" data-deployment="b" data-total="0""#),
        "b was not throttled: {dom}"
    );
    assert!(
        dom.contains(r#"data-series="requests" data-deployment="b" data-total="1""#),
        "b answered once: {dom}"
    );
    assert!(dom.contains("priority v1"), "the policy versions: {dom}");
    // The team's spend today over the last minutes (read every 30 s: the
    // gateway's first reading, before the call, is there).
    assert!(
        dom.contains(r#"data-series="spend_today_usd""#),
        "the team's spend chart: {dom}"
    );
    let history = raw_get(gw.addr, "/status_history").await.json();
    assert!(
        history["team_spend_today_usd"]["search"]["usd"].is_array(),
        "{history}"
    );
    assert!(
        dom.contains(r#"data-deployment="b" data-status="available""#),
        "{dom}"
    );
    assert!(
        dom.contains("in cooldown"),
        "the pill reads in cooldown: {dom}"
    );
    // The team's row: what it spent today of its $5.00 budget.
    assert!(
        dom.contains(r#"<tr data-team="search"><td>search</td><td class="num">1</td>"#),
        "the team and its one (config) key: {dom}"
    );
    assert!(dom.contains(" of $5.00 ("), "the day's budget: {dom}");
    assert!(
        !dom.contains("$0.00 of $5.00"),
        "the answer was booked: {dom}"
    );
    // The JSON behind it tells spend and budgets, not the team's other limits.
    let stats = raw_get(gw.addr, "/team_stats").await.json();
    let team = &stats["teams"][0];
    assert_eq!(team["name"], "search", "{stats}");
    assert_eq!(team["spend"]["day"]["usd_budget"], 5.0, "{stats}");
    assert!(
        team["spend"]["day"]["usd_left"].as_f64().unwrap() < 5.0,
        "{stats}"
    );
    assert!(team.get("limits").is_none(), "{stats}");

    let artifacts = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let shot = artifacts.join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    headless(
        &url,
        &[
            "--window-size=1400,1100".to_owned(),
            format!("--screenshot={}", shot.display()),
        ],
    )
    .await;
    let png = std::fs::read(&shot).expect("the screenshot was written");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
}
