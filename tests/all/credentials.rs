//! AWS credentials as operators provide them: a `credential_process` whose
//! short-lived keys expire mid-run keeps requests succeeding, and a
//! deployment whose credentials Bedrock refuses falls back to the next.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use switchyard::clock::SystemClock;
use switchyard::sim::{KeyRefusal, SimHandle};

use crate::support::*;

/// A `credential_process` that hands out a new key on every call
/// (`AKIDROTATE1`, `AKIDROTATE2`, ...), each expiring `lifetime_s` later,
/// and logs when it issued which.
fn rotating_process(dir: &std::path::Path, lifetime_s: u64) -> std::path::PathBuf {
    executable(
        dir,
        "issue-credentials.sh",
        &format!(
            r#"#!/bin/sh
set -e
cd "{dir}"
n=$(( $(cat counter 2>/dev/null || echo 0) + 1 ))
echo "$n" > counter
echo "AKIDROTATE$n $(date +%s)" >> issued
printf '{{"Version": 1, "AccessKeyId": "AKIDROTATE%s", "SecretAccessKey": "secret-%s", "SessionToken": "token-%s", "Expiration": "%s"}}\n' \
  "$n" "$n" "$n" "$(date -u -d "+{lifetime_s} seconds" +%Y-%m-%dT%H:%M:%SZ)"
"#,
            dir = dir.display()
        ),
    )
}

/// A gateway process whose one deployment signs with a profile that gets
/// its keys from `credential_process`, and no credentials file: nothing
/// else on the machine is used.
async fn gateway_with_process(
    sim: &SimHandle,
    dir: &std::path::Path,
    credential_process: &str,
) -> GatewayProcess {
    let aws_config = dir.join("aws-config");
    std::fs::write(
        &aws_config,
        format!("[profile p]\ncredential_process = {credential_process}\n"),
    )
    .unwrap();
    let no_credentials_file = dir.join("no-credentials");
    GatewayProcess::start_with_env(
        "credentials",
        &format!(
            "[admin]\nwatch_interval_ms = 0\n[[deployments]]\nid = \"a\"\nmodel_id = \"model-a\"\nendpoint_url = \"{}\"\ncredentials = {{ source = \"profile\", name = \"p\" }}\n[[model_groups]]\nname = \"g\"\ndeployments = [\"a\"]\n",
            sim.url()
        ),
        &[
            ("AWS_CONFIG_FILE", aws_config.to_str().unwrap()),
            (
                "AWS_SHARED_CREDENTIALS_FILE",
                no_credentials_file.to_str().unwrap(),
            ),
        ],
    )
    .await
}

/// Writes `text` to an executable script `name` in `dir`.
fn executable(dir: &std::path::Path, name: &str, text: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let script = dir.join(name);
    std::fs::write(&script, text).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script
}

/// Keys the process has issued, with the Unix second of each.
fn issued(dir: &std::path::Path) -> Vec<(String, u64)> {
    std::fs::read_to_string(dir.join("issued"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(key, at)| (key.to_owned(), at.parse().unwrap()))
        .collect()
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_lived_credentials_from_a_process_are_renewed_before_bedrock_refuses_them() {
    const LIFETIME_S: u64 = 13;
    let sim = start_sim(vec![sim_model("model-a", None)], SystemClock::shared()).await;
    let dir = ScratchDir::new("credentials");
    let script = rotating_process(&dir, LIFETIME_S);
    let gateway = gateway_with_process(&sim, &dir, &script.display().to_string()).await;

    // Requests for 16 s; Bedrock (the simulator) refuses each key from
    // the moment it expires, as it refuses an expired session.
    let started = Instant::now();
    let mut refused = HashMap::new();
    let mut answered = 0;
    while started.elapsed() < Duration::from_secs(16) {
        let now = unix_now();
        for (key, at) in issued(&dir) {
            if at + LIFETIME_S <= now && !refused.contains_key(&key) {
                sim.refuse_access_key(&key, KeyRefusal::Expired);
                refused.insert(key, now);
            }
        }
        // Converse goes through the signed pass-through, ConverseStream
        // through the SDK's client: both sign with the renewed keys.
        let path = if answered % 2 == 0 {
            "/model/g/converse"
        } else {
            "/model/g/converse-stream"
        };
        let answer = raw_post(gateway.addr, path, &[], &converse_body("hi")).await;
        assert_eq!(
            answer.status,
            200,
            "{path} after {:?} with {refused:?} expired: {}",
            started.elapsed(),
            answer.body_text()
        );
        answered += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(answered > 50, "{answered} requests answered");
    assert!(
        !refused.is_empty(),
        "a key expired during the run: {:?}",
        issued(&dir)
    );
    assert!(issued(&dir).len() >= 3, "keys renewed: {:?}", issued(&dir));
}

/// A refresh ahead of expiry that fails (the process, STS or IMDS briefly
/// away) keeps the keys in hand until they really expire, instead of
/// failing requests that those keys could still sign.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_refresh_keeps_the_keys_in_hand_until_they_expire() {
    let sim = start_sim(vec![sim_model("model-a", None)], SystemClock::shared()).await;
    let dir = ScratchDir::new("credentials");
    // Keys for 14 s on the first call; every later call fails.
    let script = executable(
        &dir,
        "issue-once.sh",
        &format!(
            r#"#!/bin/sh
cd "{dir}"
echo call >> calls
[ -e issued ] && {{ echo "the issuer is down" >&2; exit 1; }}
touch issued
printf '{{"Version": 1, "AccessKeyId": "AKIDONCE", "SecretAccessKey": "s", "SessionToken": "t", "Expiration": "%s"}}\n' \
  "$(date -u -d "+14 seconds" +%Y-%m-%dT%H:%M:%SZ)"
"#,
            dir = dir.display()
        ),
    );
    let gateway = gateway_with_process(&sim, &dir, &script.display().to_string()).await;
    let first = raw_post(gateway.addr, "/model/g/converse", &[], &converse_body("hi")).await;
    assert_eq!(first.status, 200, "{}", first.body_text());
    // Inside the 10 s before expiry: the gateway tries to refresh, fails,
    // and signs with the keys it has.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let later = raw_post(gateway.addr, "/model/g/converse", &[], &converse_body("hi")).await;
    assert_eq!(later.status, 200, "{}", later.body_text());
    let calls = std::fs::read_to_string(dir.join("calls")).unwrap_or_default();
    assert!(calls.lines().count() >= 2, "a refresh was tried: {calls:?}");
}

/// Credentials that cannot be had are the deployment's failure
/// (`unavailable`, counted against it) on the streaming path too, which
/// goes through the SDK rather than the signed pass-through, and the
/// attempt says so (it said "could not reach Bedrock: dispatch failure").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_whose_credentials_cannot_be_had_is_the_deployments_failure() {
    let sim = start_sim(vec![sim_model("model-a", None)], SystemClock::shared()).await;
    let dir = ScratchDir::new("credentials");
    let gateway = gateway_with_process(&sim, &dir, "false").await;
    for path in ["/model/g/converse-stream", "/model/g/converse"] {
        let answer = raw_post(gateway.addr, path, &[], &converse_body("hi")).await;
        let json = answer.json();
        assert_eq!(
            json["attempts"][0]["outcome"], "unavailable",
            "{path}: {json}"
        );
        assert!(
            json["attempts"][0]["detail"]
                .as_str()
                .unwrap()
                .starts_with("no credentials for this deployment"),
            "{path}: {json}"
        );
    }
}

#[tokio::test]
async fn a_deployment_whose_credentials_are_denied_falls_back_to_the_next() {
    let clock = SystemClock::shared();
    let sim = start_sim(
        vec![sim_model("model-a", None), sim_model("model-b", None)],
        clock.clone(),
    )
    .await;
    sim.refuse_access_key("AKIDDENIED", KeyRefusal::Denied);
    let deployment = |id: &str, model: &str, priority: u32, key: &str| {
        format!(
            "[[deployments]]\nid = \"{id}\"\nmodel_id = \"{model}\"\npriority = {priority}\nendpoint_url = \"{}\"\ncredentials = {{ source = \"static\", access_key_id = \"{key}\", secret_access_key = \"s\" }}\n",
            sim.url()
        )
    };
    // A circuit that opens on one failure shows that the refusal counted.
    let config = format!(
        "[admission.breaker]\nconsecutive_failures = 1\n{}{}[[model_groups]]\nname = \"g\"\ndeployments = [\"a\", \"b\"]\n",
        deployment("a", "model-a", 1, "AKIDDENIED"),
        deployment("b", "model-b", 2, "AKIDGOOD")
    );
    let gw = start_gateway(&config, clock).await;
    let answer = raw_post(gw.addr, "/model/g/converse", &[], &converse_body("hi")).await;
    assert_eq!(answer.status, 200, "{}", answer.body_text());
    assert_eq!(answer.headers["x-switchyard-deployment"], "b");
    assert_eq!(answer.headers["x-switchyard-attempts"], "2");
    // The refusal counts against deployment a, as any outage of it does.
    let stats = raw_get(gw.addr, "/model_stats").await.json();
    let a = &stats["stats"]["models"][0];
    assert_eq!(a["id"], "a");
    assert_eq!(a["total_attempts"], 1, "{stats}");
    assert_eq!(a["successful_requests"], 0, "{stats}");
    assert_ne!(a["status"], "available", "{stats}");
    assert_eq!(a["circuit"], "open", "{stats}");
}

/// `--simulate` sends every deployment without an endpoint to the
/// simulator with stand-in keys; a deployment that assumes a role must not
/// call the real STS for one (it did, and failed every request).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_simulate_a_deployment_with_a_role_to_assume_is_served_by_the_simulator() {
    let sim = start_sim(vec![sim_model("model-a", None)], SystemClock::shared()).await;
    let config = r#"
[[deployments]]
id = "a"
model_id = "model-a"
assume_role = { role_arn = "arn:aws:iam::123456789012:role/bedrock", external_id = "x" }
[[model_groups]]
name = "g"
deployments = ["a"]
"#;
    let gw = start_gateway_on(
        config,
        SystemClock::shared(),
        &switchyard::gateway::Upstreams::Simulator(sim.url()),
    )
    .await;
    let answer = raw_post(gw.addr, "/model/g/converse", &[], &converse_body("hi")).await;
    assert_eq!(answer.status, 200, "{}", answer.body_text());
}

/// A provider that takes seconds to fail is asked once for all the
/// requests waiting on it, which share its failure and fall over at once
/// (ten requests ended after 2, 4, ... 20 s, each asking it in turn), and
/// the requests right after fail without asking it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_failing_provider_is_asked_once_for_every_waiting_request() {
    let sim = start_sim(vec![sim_model("model-a", None)], SystemClock::shared()).await;
    let dir = ScratchDir::new("credentials-slow");
    let process = executable(
        &dir,
        "slow-failure.sh",
        &format!(
            "#!/bin/sh\necho asked >> \"{}/asked\"\nsleep 2\nexit 1\n",
            dir.display()
        ),
    );
    let gateway = gateway_with_process(&sim, &dir, process.to_str().unwrap()).await;
    let asked = || {
        std::fs::read_to_string(dir.join("asked"))
            .unwrap_or_default()
            .lines()
            .count()
    };
    let requests: Vec<_> = (0..10)
        .map(|n| {
            let addr = gateway.addr;
            tokio::spawn(async move {
                // Requests that find the deployment failed give up at once
                // rather than wait for it to recover.
                let headers = [("x-switchyard-max-wait-ms", "1000")];
                raw_post(
                    addr,
                    "/model/g/converse",
                    &headers,
                    &converse_body(&format!("n{n}")),
                )
                .await
            })
        })
        .collect();
    let mut without_credentials = 0;
    for request in requests {
        let answer = request.await.unwrap();
        assert_ne!(answer.status, 200, "{}", answer.body_text());
        let json = answer.json();
        without_credentials += usize::from(
            json["attempts"][0]["detail"]
                .as_str()
                .is_some_and(|d| d.starts_with("no credentials for this deployment")),
        );
    }
    assert!(
        without_credentials >= 1,
        "the attempts failed for want of credentials"
    );
    assert_eq!(asked(), 1, "the provider was asked once for ten requests");
    let headers = [("x-switchyard-max-wait-ms", "0")];
    let right_after = raw_post(
        gateway.addr,
        "/model/g/converse",
        &headers,
        &converse_body("again"),
    )
    .await;
    assert_ne!(right_after.status, 200);
    assert_eq!(
        asked(),
        1,
        "a remembered failure is not asked again at once"
    );
}
