//! Client API keys: who may call, as whom, and that a client key is not an
//! admin token.

use switchyard::clock::ManualClock;

use crate::support::*;

const ADMIN: &str = "admin-token-0123456789abcdef";
const ALICE: &str = "sk-alice-0123456789abcdef";

async fn gateway_with_keys() -> (switchyard::sim::SimHandle, TestGateway) {
    let clock = ManualClock::new(1_000_000);
    let sim = start_sim(vec![sim_model("model-a", None)], clock.clone()).await;
    let config = format!(
        "[admin]\ntoken = \"{ADMIN}\"\n[[api_keys]]\nkey = \"{ALICE}\"\nuser = \"alice\"\npriority = 1\n{}[[model_groups]]\nname = \"g\"\ndeployments = [\"a\"]\n",
        deployment("a", "model-a", 1, &sim)
    );
    let gw = start_gateway(&config, clock).await;
    (sim, gw)
}

#[tokio::test]
async fn requests_need_a_known_key() {
    let (sim, gw) = gateway_with_keys().await;
    let body = converse_body("x");

    let raw = raw_post(gw.addr, "/model/g/converse", &[], &body).await;
    assert_eq!(raw.status, 401);
    assert_eq!(raw.json()["code"], "missing_api_key");

    let raw = raw_post(
        gw.addr,
        "/model/g/converse",
        &[("authorization", "Bearer sk-wrong-0123456789")],
        &body,
    )
    .await;
    assert_eq!(raw.status, 401);
    assert_eq!(raw.json()["code"], "invalid_api_key");

    let chat = br#"{"model": "g", "messages": [{"role": "user", "content": "x"}]}"#;
    let raw = raw_post(
        gw.addr,
        "/v1/chat/completions",
        &[("x-api-key", "nope-nope-nope-nope")],
        chat,
    )
    .await;
    assert_eq!(raw.status, 401);
    assert_eq!(raw.json()["error"]["code"], "invalid_api_key");
    assert_eq!(raw.json()["error"]["type"], "authentication_error");
    assert_eq!(raw_get(gw.addr, "/v1/models").await.status, 401);
    assert_eq!(sim.counts("model-a").calls, 0, "nothing reached Bedrock");

    let bearer = format!("Bearer {ALICE}");
    let raw = raw_post(
        gw.addr,
        "/model/g/converse",
        &[("authorization", &bearer)],
        &body,
    )
    .await;
    assert_eq!(raw.status, 200);
    let raw = raw_post(
        gw.addr,
        "/v1/chat/completions",
        &[("x-api-key", ALICE)],
        chat,
    )
    .await;
    assert_eq!(raw.status, 200, "{}", String::from_utf8_lossy(&raw.body));
    assert_eq!(sim.counts("model-a").calls, 2);
}

#[tokio::test]
async fn a_client_key_cannot_use_the_admin_api() {
    let (_sim, gw) = gateway_with_keys().await;
    let client = format!("Bearer {ALICE}");
    let raw = raw_request(
        gw.addr,
        "GET",
        "/admin/policies",
        &[("authorization", &client)],
        b"",
    )
    .await;
    assert_eq!(raw.status, 403);
    assert_eq!(raw.json()["code"], "forbidden");
    let raw = raw_request(
        gw.addr,
        "GET",
        "/admin/policies",
        &[("authorization", "Bearer not-a-key-at-all")],
        b"",
    )
    .await;
    assert_eq!(raw.status, 401);
    let admin = format!("Bearer {ADMIN}");
    let raw = raw_request(
        gw.addr,
        "GET",
        "/admin/policies",
        &[("authorization", &admin)],
        b"",
    )
    .await;
    assert_eq!(raw.status, 200);
}

#[tokio::test]
async fn a_config_with_a_short_or_repeated_key_is_refused() {
    let group = "[[deployments]]\nid = \"a\"\nmodel_id = \"m\"\n[[model_groups]]\nname = \"g\"\ndeployments = [\"a\"]\n";
    let short = format!("{group}[[api_keys]]\nkey = \"short\"\nuser = \"a\"\n");
    let err = switchyard::config::Config::parse(&short, "t")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("api_keys[0].key") && err.contains("16"),
        "{err}"
    );
    let twice = format!("{group}[[api_keys]]\nkey = \"{ALICE}\"\nuser = \"a\"\n[[api_keys]]\nkey = \"{ALICE}\"\nuser = \"b\"\n");
    let err = switchyard::config::Config::parse(&twice, "t")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("api_keys[1].key") && err.contains("twice"),
        "{err}"
    );
}

#[tokio::test]
async fn with_require_key_the_stats_need_a_client_key_or_the_admin_token() {
    let clock = ManualClock::new(1_000_000);
    let sim = start_sim(vec![sim_model("model-a", None)], clock.clone()).await;
    let config = format!(
        "[observability]\nrequire_key = true\n[admin]\ntoken = \"{ADMIN}\"\n[[api_keys]]\nkey = \"{ALICE}\"\nuser = \"alice\"\n{}[[model_groups]]\nname = \"g\"\ndeployments = [\"a\"]\n",
        deployment("a", "model-a", 1, &sim)
    );
    let gw = start_gateway(&config, clock).await;
    for path in [
        "/",
        "/metrics",
        "/model_stats",
        "/cooldowns",
        "/queue_stats",
        "/state_stats",
    ] {
        let raw = raw_get(gw.addr, path).await;
        assert_eq!(raw.status, 401, "{path}");
        assert_eq!(raw.json()["code"], "observer_key_required", "{path}");
        // A browser is asked for the key as a password.
        assert_eq!(
            raw.headers["www-authenticate"], r#"Basic realm="switchyard stats", charset="UTF-8""#,
            "{path}"
        );
        for key in [ALICE, ADMIN] {
            let bearer = format!("Bearer {key}");
            let raw = raw_request(gw.addr, "GET", path, &[("authorization", &bearer)], b"").await;
            assert_eq!(raw.status, 200, "{path} with a key");
            // What a browser sends once its user typed the key (any name).
            use base64::Engine;
            let pair = base64::engine::general_purpose::STANDARD.encode(format!("me:{key}"));
            let basic = format!("Basic {pair}");
            let raw = raw_request(gw.addr, "GET", path, &[("authorization", &basic)], b"").await;
            assert_eq!(raw.status, 200, "{path} with the key as a password");
        }
        let wrong = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "me:nope");
        let raw = raw_request(
            gw.addr,
            "GET",
            path,
            &[("authorization", &format!("Basic {wrong}"))],
            b"",
        )
        .await;
        assert_eq!(raw.status, 401, "{path} with a wrong password");
    }
    // Probes stay open for orchestrators.
    assert_eq!(raw_get(gw.addr, "/healthz").await.status, 200);
    assert_eq!(raw_get(gw.addr, "/readyz").await.status, 200);
}
