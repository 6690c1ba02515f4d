//! Keys and teams as live data across two instances sharing a real Redis:
//! a key made on one works on the other within a second, and so do its
//! disabling and rotation; a team's USD budget and a key's RPM hold
//! across both; the usage report adds up to the answers' priced usage.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use switchyard::clock::SystemClock;
use switchyard::sim::SimHandle;

use crate::redis_server::RedisServer;
use crate::support::*;

const TOKEN: &str = "admin-token-0123456789";
/// A model of the built-in price table.
const HAIKU: &str = "anthropic.claude-haiku-4-5-20251001-v1:0";

/// USD per million tokens of the test model: 100 in and out, so a
/// simulated answer of a few dozen tokens costs a few tenths of a cent.
const PRICE_PER_TOKEN_NANO_USD: u64 = 100_000;

fn config(sim: &SimHandle, redis: &RedisServer, prefix: &str) -> String {
    format!(
        r#"
{primary}
[[model_groups]]
name = "g"
deployments = ["primary"]

[admin]
token = "{TOKEN}"

[prices."priced-model"]
input = 100.0
output = 100.0

[state]
backend = "redis"
url = "{url}"
instances = 2
key_prefix = "{prefix}"
timeout_ms = 2000
"#,
        primary = deployment("primary", "priced-model", 1, sim),
        url = redis.url(),
    )
}

async fn two_instances(prefix: &str) -> (SimHandle, RedisServer, TestGateway, TestGateway) {
    let sim = start_sim(vec![sim_model("priced-model", None)], SystemClock::shared()).await;
    let redis = RedisServer::start();
    let config = config(&sim, &redis, prefix);
    let a = start_gateway(&config, SystemClock::shared()).await;
    let b = start_gateway(&config, SystemClock::shared()).await;
    (sim, redis, a, b)
}

async fn admin(gateway: &TestGateway, method: &str, path: &str, body: Value) -> RawResponse {
    let bearer = format!("Bearer {TOKEN}");
    let body = if body.is_null() {
        Vec::new()
    } else {
        body.to_string().into_bytes()
    };
    raw_request(
        gateway.addr,
        method,
        path,
        &[
            ("authorization", bearer.as_str()),
            ("content-type", "application/json"),
        ],
        &body,
    )
    .await
}

async fn converse(gateway: &TestGateway, secret: &str) -> RawResponse {
    let bearer = format!("Bearer {secret}");
    raw_post(
        gateway.addr,
        "/model/g/converse",
        &[
            ("authorization", bearer.as_str()),
            ("content-type", "application/json"),
        ],
        &converse_body("hello there"),
    )
    .await
}

/// Makes team `team` with `limits` and a key of it with `key_limits`; returns the key's id and secret.
async fn team_and_key(
    gateway: &TestGateway,
    team: &str,
    limits: Value,
    key_limits: Value,
) -> (String, String) {
    let made = admin(
        gateway,
        "POST",
        "/admin/teams",
        json!({"name": team, "limits": limits}),
    )
    .await;
    assert_eq!(made.status, 201, "{}", made.body_text());
    let key = admin(
        gateway,
        "POST",
        "/admin/keys",
        json!({"team": team, "user": "alice", "limits": key_limits}),
    )
    .await;
    assert_eq!(key.status, 201, "{}", key.body_text());
    let key = key.json();
    (
        key["key"]["id"].as_str().unwrap().to_owned(),
        key["secret"].as_str().unwrap().to_owned(),
    )
}

/// Waits until `gateway` knows key `id` (its admin API shows it); panics past 1 s.
async fn known_within_a_second(gateway: &TestGateway, id: &str) {
    let start = Instant::now();
    while admin(gateway, "GET", &format!("/admin/keys/{id}"), Value::Null)
        .await
        .status
        != 200
    {
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "key {id} unknown after 1 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How long until `secret` gets `status` on `gateway`, polled; panics past 1 s.
async fn within_a_second(gateway: &TestGateway, secret: &str, status: u16) -> Duration {
    let start = Instant::now();
    loop {
        let answer = converse(gateway, secret).await;
        if answer.status == status {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "still {} after 1 s, wanted {status}: {}",
            answer.status,
            answer.body_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_made_disabled_and_rotated_on_one_instance_follows_on_the_other() {
    let (_sim, _redis, a, b) = two_instances("keys-follow").await;
    let (id, secret) = team_and_key(&a, "search", json!({}), json!({})).await;
    assert!(secret.starts_with("sk-sy-"), "{secret}");
    // The list shows the key without its secret.
    let listed = admin(&a, "GET", "/admin/keys", Value::Null).await;
    assert!(!listed.body_text().contains(&secret));
    assert_eq!(listed.json()["keys"][0]["id"], id.as_str());

    // Before it knows of any key, b runs open: wait for the key itself.
    known_within_a_second(&b, &id).await;
    assert_eq!(converse(&b, &secret).await.status, 200);
    // With stored keys, the gateway needs one: an unknown key is refused.
    assert_eq!(converse(&b, "sk-sy-not-a-key").await.status, 401);

    let disabled = admin(
        &a,
        "POST",
        &format!("/admin/keys/{id}/disable"),
        Value::Null,
    )
    .await;
    assert_eq!(disabled.status, 200, "{}", disabled.body_text());
    within_a_second(&b, &secret, 401).await;
    let refused = converse(&b, &secret).await.json();
    assert_eq!(refused["code"], "invalid_api_key", "{refused}");
    assert!(refused["message"].as_str().unwrap().contains("disabled"));

    admin(&a, "POST", &format!("/admin/keys/{id}/enable"), Value::Null).await;
    within_a_second(&b, &secret, 200).await;
    let rotated = admin(&a, "POST", &format!("/admin/keys/{id}/rotate"), Value::Null).await;
    assert_eq!(rotated.status, 200, "{}", rotated.body_text());
    let new_secret = rotated.json()["secret"].as_str().unwrap().to_owned();
    within_a_second(&b, &secret, 401).await;
    within_a_second(&b, &new_secret, 200).await;
    assert_eq!(converse(&a, &secret).await.status, 401);
}

/// What an answer's usage costs at the test price, and its tokens.
fn priced(answer: &Value) -> (u64, u64) {
    let usage = &answer["usage"];
    let tokens: u64 = [
        "inputTokens",
        "outputTokens",
        "cacheReadInputTokens",
        "cacheWriteInputTokens",
    ]
    .iter()
    .map(|k| usage[k].as_u64().unwrap_or(0))
    .sum();
    (tokens, tokens * PRICE_PER_TOKEN_NANO_USD)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_teams_usd_budget_stops_it_across_two_instances_until_the_next_utc_day() {
    let (_sim, _redis, a, b) = two_instances("team-budget").await;
    let budget_usd = 0.02;
    let (id, secret) = team_and_key(&a, "ads", json!({"daily_usd": budget_usd}), json!({})).await;
    known_within_a_second(&b, &id).await;
    let mut refused = None;
    let mut refused_at = 0;
    for i in 0..200 {
        let gateway = if i % 2 == 0 { &a } else { &b };
        let answer = converse(gateway, &secret).await;
        if answer.status == 429 {
            refused_at = i;
            refused = Some(answer);
            break;
        }
        assert_eq!(answer.status, 200, "{}", answer.body_text());
        priced(&answer.json());
    }
    let refused = refused.expect("the team was never stopped");
    let body = refused.json();
    assert_eq!(body["code"], "team_budget_exhausted", "{body}");
    let retry_after: u64 = refused.headers["retry-after"].parse().unwrap();
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let to_midnight = 86_400 - now_s % 86_400;
    assert!(
        retry_after.abs_diff(to_midnight) <= 5,
        "retry-after {retry_after} s, next UTC day in {to_midnight} s"
    );
    // The other instance refuses it too.
    let other = converse(&b, &secret).await;
    assert_eq!(
        other.status,
        429,
        "{} after {refused_at}; a: {} b: {}",
        other.body_text(),
        admin(&a, "GET", "/admin/teams/ads", Value::Null)
            .await
            .body_text(),
        admin(&b, "GET", "/admin/teams/ads", Value::Null)
            .await
            .body_text()
    );

    // The report's sum is the sum of the answers' usage, priced.
    let report = admin(&a, "GET", "/admin/usage?group_by=team", Value::Null)
        .await
        .json();
    let row = report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["team"] == "ads")
        .cloned()
        .unwrap_or_else(|| panic!("no row of team ads: {report}"));
    let tokens = row["input_tokens"].as_u64().unwrap() + row["output_tokens"].as_u64().unwrap();
    let usd = row["usd"].as_f64().unwrap();
    let expected = (tokens * PRICE_PER_TOKEN_NANO_USD) as f64 / 1e9;
    assert!(
        (usd - expected).abs() < 1e-9,
        "{usd} USD for {tokens} tokens: {row}"
    );
    // Stopped within one request's cost of the budget.
    let one_request = usd / row["requests"].as_f64().unwrap();
    assert!(
        usd >= budget_usd,
        "stopped before the budget was spent: {row}"
    );
    assert!(
        usd < budget_usd + 2.0 * one_request,
        "ran past the budget: {row}"
    );
    let csv = raw_request(
        a.addr,
        "GET",
        "/admin/usage?group_by=team&format=csv",
        &[("authorization", &format!("Bearer {TOKEN}"))],
        b"",
    )
    .await;
    assert!(
        csv.body_text().starts_with("team,requests,"),
        "{}",
        csv.body_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keys_rpm_holds_across_two_instances() {
    let (_sim, _redis, a, b) = two_instances("key-rpm").await;
    let (id, secret) = team_and_key(&a, "infra", json!({}), json!({"rpm": 5})).await;
    known_within_a_second(&b, &id).await;
    let mut answered = 0;
    let mut limited = Vec::new();
    for i in 0..12 {
        let gateway = if i % 2 == 0 { &a } else { &b };
        let answer = converse(gateway, &secret).await;
        match answer.status {
            200 => answered += 1,
            429 => limited.push(answer),
            other => panic!("{other}: {}", answer.body_text()),
        }
    }
    assert_eq!(answered, 5, "the key's RPM is 5 across both instances");
    for answer in &limited {
        assert_eq!(answer.json()["code"], "key_rate_limited");
        let retry_after: u64 = answer.headers["retry-after"].parse().unwrap();
        assert!((1..=61).contains(&retry_after), "{retry_after}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_makes_a_team_and_a_key_kept_in_the_embedded_store() {
    let sim = start_sim(vec![sim_model(HAIKU, None)], SystemClock::shared()).await;
    let dir = ScratchDir::new("key-store");
    let config = format!(
        r#"
{primary}
[[model_groups]]
name = "g"
deployments = ["primary"]

[admin]
token = "{TOKEN}"

[key_store]
data_dir = "{dir}"
"#,
        primary = deployment(
            "primary",
            "anthropic.claude-haiku-4-5-20251001-v1:0",
            1,
            &sim
        ),
        dir = dir.display(),
    );
    let gateway = start_gateway(&config, SystemClock::shared()).await;
    let url = gateway.url();
    let cli = async |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--gateway", url.as_str()]);
        succeeded(
            switchyard_with_env(
                &all,
                &[("SWITCHYARD_ADMIN_TOKEN", TOKEN)],
                Duration::from_secs(30),
            )
            .await,
        )
    };
    cli(&["teams", "create", "web", "--daily-usd", "5"]).await;
    let made = cli(&["keys", "create", "--team", "web", "--user", "bob"]).await;
    let secret = String::from_utf8(made.stdout).unwrap().trim().to_owned();
    assert!(secret.starts_with("sk-sy-"), "{secret}");
    assert_eq!(converse(&gateway, &secret).await.status, 200);
    assert_eq!(converse(&gateway, "sk-sy-unknown").await.status, 401);
    let listed = cli(&["keys", "list", "--json"]).await;
    let listed: Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(listed["keys"][0]["user"], "bob", "{listed}");
    let usage = cli(&["usage", "--group-by", "user", "--csv"]).await;
    let usage = String::from_utf8(usage.stdout).unwrap();
    assert!(usage.lines().any(|l| l.starts_with("bob,1,")), "{usage}");

    // The store outlives the gateway: a new one on the same folder knows the key.
    drop(gateway);
    let again = start_gateway(&config, SystemClock::shared()).await;
    let start = Instant::now();
    while converse(&again, &secret).await.status != 200 || converse(&again, "x").await.status != 401
    {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the stored key was not loaded"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A job is its key's: its run is booked to the key and stopped by the
/// key's budget, and every route (Bedrock, OpenAI, Anthropic, both kinds
/// of job) answers that budget in its own API's error shape.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keys_jobs_are_booked_and_limited_as_the_key_and_every_route_says_so_in_its_shape() {
    let sim = start_sim(vec![sim_model("priced-model", None)], SystemClock::shared()).await;
    let dir = ScratchDir::new("keyed-jobs");
    let config = format!(
        r#"
{primary}
[[model_groups]]
name = "g"
deployments = ["primary"]

[admin]
token = "{TOKEN}"

[key_store]
data_dir = "{keys}"

[jobs]
data_dir = "{jobs}"
workers = 1
max_runs = 1
"#,
        primary = deployment("primary", "priced-model", 1, &sim),
        keys = dir.join("keys").display(),
        jobs = dir.join("jobs").display(),
    );
    let gateway = start_gateway(&config, SystemClock::shared()).await;
    let (id, secret) = team_and_key(&gateway, "batch", json!({}), json!({"daily_tokens": 1})).await;
    let bearer = format!("Bearer {secret}");
    let keyed = [
        ("authorization", bearer.as_str()),
        ("content-type", "application/json"),
    ];
    let run_job = async |job: Value| -> Value {
        let answer = raw_post(gateway.addr, "/v1/jobs", &keyed, job.to_string().as_bytes()).await;
        assert_eq!(answer.status, 202, "{}", answer.body_text());
        let id = answer.json()["id"].as_str().unwrap().to_owned();
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            let job = raw_request(gateway.addr, "GET", &format!("/v1/jobs/{id}"), &keyed, b"")
                .await
                .json();
            if ["succeeded", "failed"].contains(&job["status"].as_str().unwrap_or("")) {
                return job;
            }
            assert!(Instant::now() < until, "job {id} has not ended: {job}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let converse_job = json!({ "type": "converse", "model": "g", "body": serde_json::from_slice::<Value>(&converse_body("hi")).unwrap() });
    let chat = json!({ "model": "g", "messages": [{ "role": "user", "content": "hi" }] });

    // The first job runs and is booked to its key: its tokens spend the
    // key's budget of one token a day.
    let job = run_job(converse_job.clone()).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let report = admin(&gateway, "GET", "/admin/usage?group_by=key", Value::Null)
        .await
        .json();
    let row = report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["key"] == id.as_str())
        .cloned()
        .unwrap_or_else(|| panic!("the job was not booked to key {id}: {report}"));
    assert_eq!(row["requests"], 1, "{row}");
    assert!(row["output_tokens"].as_u64().unwrap() > 0, "{row}");

    // Now every route refuses the key, each in its own shape.
    let job = run_job(converse_job).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["answer"]["status"], 429, "{job}");
    assert_eq!(
        job["answer"]["body"]["code"], "key_budget_exhausted",
        "{job}"
    );
    let job = run_job(json!({ "type": "chat_completions", "body": chat })).await;
    assert_eq!(job["answer"]["status"], 429, "{job}");
    let error = &job["answer"]["body"]["error"];
    assert_eq!(error["code"], "key_budget_exhausted", "{job}");
    assert_eq!(error["type"], "rate_limit_error", "{job}");

    let bedrock = converse(&gateway, &secret).await;
    assert_eq!(bedrock.status, 429, "{}", bedrock.body_text());
    assert_eq!(bedrock.json()["code"], "key_budget_exhausted");
    let openai = raw_post(
        gateway.addr,
        "/v1/chat/completions",
        &keyed,
        chat.to_string().as_bytes(),
    )
    .await;
    assert_eq!(openai.status, 429, "{}", openai.body_text());
    let body = openai.json();
    assert_eq!(body["error"]["code"], "key_budget_exhausted", "{body}");
    assert_eq!(body["error"]["type"], "rate_limit_error", "{body}");
    let messages = json!({ "model": "g", "max_tokens": 16, "messages": [{ "role": "user", "content": "hi" }] });
    let anthropic = raw_post(
        gateway.addr,
        "/v1/messages",
        &keyed,
        messages.to_string().as_bytes(),
    )
    .await;
    assert_eq!(anthropic.status, 429, "{}", anthropic.body_text());
    let body = anthropic.json();
    assert_eq!(body["type"], "error", "{body}");
    assert_eq!(body["error"]["type"], "rate_limit_error", "{body}");
    assert_eq!(body["error"]["code"], "key_budget_exhausted", "{body}");
    // Each says when the budget renews: the next UTC midnight.
    for answer in [&bedrock, &openai, &anthropic] {
        let retry_after: u64 = answer.headers["retry-after"].parse().unwrap();
        assert!((1..=86_400).contains(&retry_after), "{retry_after}");
    }
}
