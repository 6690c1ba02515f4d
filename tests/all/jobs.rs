//! Async jobs: `POST /v1/jobs` stores a request and answers 202; workers
//! run it through the synchronous route; `GET /v1/jobs/{id}` (and the
//! field's `/task_status/{id}`) shows it and, once ended, the route's
//! answer. Jobs survive the gateway being killed.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use switchyard::clock::SystemClock;
use switchyard::sim::{SimHandle, SimModelConfig};

use crate::support::*;

fn jobs_config(sim: &SimHandle, data_dir: &std::path::Path, workers: u32) -> String {
    format!(
        "[jobs]\ndata_dir = \"{}\"\nworkers = {workers}\n{}[[model_groups]]\nname = \"g\"\ndeployments = [\"a\"]\n",
        data_dir.display(),
        deployment("a", "model-a", 1, sim),
    )
}

async fn submit(addr: std::net::SocketAddr, job: &Value) -> String {
    let answer = raw_post(addr, "/v1/jobs", &[], job.to_string().as_bytes()).await;
    assert_eq!(answer.status, 202, "{}", answer.body_text());
    let body = answer.json();
    assert_eq!(body["status"], "queued", "{body}");
    assert_eq!(
        answer.headers["location"],
        format!("/v1/jobs/{}", body["id"].as_str().unwrap())
    );
    body["id"].as_str().unwrap().to_owned()
}

/// Polls job `id` until it has ended.
async fn ended(addr: std::net::SocketAddr, id: &str, within: Duration) -> Value {
    let until = Instant::now() + within;
    loop {
        let job = raw_get(addr, &format!("/v1/jobs/{id}")).await.json();
        if ["succeeded", "failed", "cancelled"].contains(&job["status"].as_str().unwrap_or("")) {
            return job;
        }
        assert!(Instant::now() < until, "job {id} has not ended: {job}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn converse_job(text: &str) -> Value {
    json!({ "type": "converse", "model": "g", "body": serde_json::from_slice::<Value>(&converse_body(text)).unwrap() })
}

/// Jobs hold prompts and answers: the store is its user's alone (the
/// folder the gateway creates 0700, `jobs.redb` 0600).
#[cfg(unix)]
#[tokio::test]
async fn the_job_store_is_readable_by_its_user_alone() {
    use std::os::unix::fs::PermissionsExt;
    let sim = start_sim(vec![sim_model("model-a", None)], SystemClock::shared()).await;
    let scratch = ScratchDir::new("jobs-private");
    let dir = scratch.join("store");
    let _gw = start_gateway(&jobs_config(&sim, &dir, 1), SystemClock::shared()).await;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700, "{}", dir.display());
    assert_eq!(mode(&dir.join("jobs.redb")), 0o600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_answers_as_the_synchronous_route_would() {
    let sim = start_sim(vec![sim_model("model-a", None)], SystemClock::shared()).await;
    let dir = ScratchDir::new("jobs");
    let gw = start_gateway(&jobs_config(&sim, &dir, 2), SystemClock::shared()).await;

    let id = submit(gw.addr, &converse_job("hello job")).await;
    let job = ended(gw.addr, &id, Duration::from_secs(30)).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["runs"], 1, "{job}");
    assert!(job["created_ms"].as_u64() <= job["started_ms"].as_u64());
    assert!(job["started_ms"].as_u64() <= job["finished_ms"].as_u64());
    let sync = raw_post(
        gw.addr,
        "/model/g/converse",
        &[],
        &converse_body("hello job"),
    )
    .await;
    assert_eq!(sync.status, 200);
    let sync = sync.json();
    assert_eq!(job["answer"]["status"], 200);
    assert_eq!(job["answer"]["body"]["output"], sync["output"], "{job}");
    assert_eq!(job["answer"]["body"]["usage"], sync["usage"], "{job}");

    // The field's shape of the same job.
    let task = raw_get(gw.addr, &format!("/task_status/{id}")).await.json();
    assert_eq!(task["state"], "SUCCESS", "{task}");
    assert_eq!(task["result"]["output"], sync["output"], "{task}");

    // An OpenAI chat completion, too.
    let chat = json!({ "type": "chat_completions", "body": { "model": "g", "messages": [{ "role": "user", "content": "hi" }] } });
    let id = submit(gw.addr, &chat).await;
    let job = ended(gw.addr, &id, Duration::from_secs(30)).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["answer"]["body"]["object"], "chat.completion", "{job}");

    let list = raw_get(gw.addr, "/v1/jobs").await.json();
    assert_eq!(list["data"].as_array().unwrap().len(), 2, "{list}");
    assert_eq!(
        sim.counts("model-a").calls,
        3,
        "two jobs and one synchronous call"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_jobs_are_refused_and_a_queued_job_can_be_cancelled() {
    // One worker, held by a slow first job: the second waits in the queue.
    let sim = start_sim(
        vec![SimModelConfig {
            ttft_ms: 1_500,
            ..sim_model("model-a", None)
        }],
        SystemClock::shared(),
    )
    .await;
    let dir = ScratchDir::new("jobs");
    let gw = start_gateway(&jobs_config(&sim, &dir, 1), SystemClock::shared()).await;

    for (job, status, code) in [
        (
            json!({ "type": "converse", "model": "nope", "body": {} }),
            404,
            "unknown_model",
        ),
        (
            json!({ "type": "converse", "body": {} }),
            400,
            "invalid_job",
        ),
        (
            json!({ "type": "fax", "model": "g", "body": {} }),
            400,
            "invalid_job",
        ),
        (
            json!({ "type": "chat_completions", "body": { "model": "g", "stream": true, "messages": [] } }),
            400,
            "invalid_job",
        ),
    ] {
        let answer = raw_post(gw.addr, "/v1/jobs", &[], job.to_string().as_bytes()).await;
        assert_eq!(answer.status, status, "{job}: {}", answer.body_text());
        assert_eq!(answer.json()["code"], code, "{job}");
    }
    let unknown = raw_get(gw.addr, "/v1/jobs/job_nope").await;
    assert_eq!(
        (unknown.status, unknown.json()["code"].clone()),
        (404, json!("unknown_job"))
    );

    let first = submit(gw.addr, &converse_job("slow")).await;
    let second = submit(gw.addr, &converse_job("never")).await;
    let cancel = raw_request(gw.addr, "DELETE", &format!("/v1/jobs/{second}"), &[], b"").await;
    assert_eq!(cancel.status, 200, "{}", cancel.body_text());
    assert_eq!(cancel.json()["status"], "cancelled");
    let task = raw_get(gw.addr, &format!("/task_status/{second}"))
        .await
        .json();
    assert_eq!(task["state"], "REVOKED", "{task}");

    assert_eq!(
        ended(gw.addr, &first, Duration::from_secs(30)).await["status"],
        "succeeded"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        sim.counts("model-a").calls,
        1,
        "the cancelled job never ran"
    );
    let again = raw_request(gw.addr, "DELETE", &format!("/v1/jobs/{first}"), &[], b"").await;
    assert_eq!(
        (again.status, again.json()["code"].clone()),
        (409, json!("job_ended"))
    );
}

#[tokio::test]
async fn without_a_jobs_table_the_route_says_how_to_turn_it_on() {
    let sim = start_sim(vec![sim_model("model-a", None)], SystemClock::shared()).await;
    let config = format!(
        "{}[[model_groups]]\nname = \"g\"\ndeployments = [\"a\"]\n",
        deployment("a", "model-a", 1, &sim)
    );
    let gw = start_gateway(&config, SystemClock::shared()).await;
    let answer = raw_post(
        gw.addr,
        "/v1/jobs",
        &[],
        converse_job("x").to_string().as_bytes(),
    )
    .await;
    assert_eq!(answer.status, 404);
    let body = answer.json();
    assert_eq!(body["code"], "jobs_disabled");
    assert!(
        body["message"].as_str().unwrap().contains("[jobs]"),
        "{body}"
    );
}

/// 25 jobs, 5 running and 20 queued, when the gateway is killed with
/// SIGKILL; a new process on the same store finishes all 25, and only the
/// 5 that were running run again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_survive_the_gateway_being_killed() {
    let sim = start_sim(
        vec![SimModelConfig {
            ttft_ms: 3_000,
            ..sim_model("model-a", None)
        }],
        SystemClock::shared(),
    )
    .await;
    let dir = ScratchDir::new("jobs-store");
    let config = jobs_config(&sim, &dir, 5);
    let mut first = GatewayProcess::start("jobs", &config).await;
    let mut ids = Vec::new();
    for n in 0..25 {
        ids.push(submit(first.addr, &converse_job(&format!("job {n}"))).await);
    }
    let until = Instant::now() + Duration::from_secs(30);
    while sim.counts("model-a").calls < 5 {
        assert!(Instant::now() < until, "5 jobs started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let list = raw_get(first.addr, "/v1/jobs").await.json();
    let count = |status: &str| {
        list["data"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|j| j["status"] == status)
            .count()
    };
    assert_eq!((count("running"), count("queued")), (5, 20), "{list}");
    // SIGKILL, and wait until it is gone (it holds the store's lock).
    first.child.kill().await.unwrap();
    drop(first);

    let second = GatewayProcess::start("jobs-again", &config).await;
    let mut reruns = 0;
    for id in &ids {
        let job = ended(second.addr, id, Duration::from_secs(120)).await;
        assert_eq!(job["status"], "succeeded", "{job}");
        match job["runs"].as_u64() {
            Some(1) => {}
            Some(2) => reruns += 1,
            other => panic!("job {id} ran {other:?} times: {job}"),
        }
    }
    assert_eq!(reruns, 5, "the 5 interrupted jobs ran again, no other");
    assert_eq!(sim.counts("model-a").calls, 30, "25 jobs, 5 of them twice");

    // `switchyard jobs` reads the same.
    let url = format!("http://{}", second.addr);
    let out = succeeded(
        switchyard_with_env(
            &["jobs", "list", "--gateway", &url],
            &[],
            Duration::from_secs(60),
        )
        .await,
    );
    let table = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        table.lines().filter(|l| l.contains(" succeeded ")).count(),
        25,
        "{table}"
    );
    let out = succeeded(
        switchyard_with_env(
            &["jobs", "show", &ids[0], "--gateway", &url],
            &[],
            Duration::from_secs(60),
        )
        .await,
    );
    let shown: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["id"], ids[0].as_str());
    assert_eq!(shown["answer"]["status"], 200, "{shown}");
}

/// Jobs wait in the same fair queue as interactive requests, a rank below
/// them: with room for one request at a time, an interactive request that
/// arrives behind three waiting jobs runs before them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interactive_requests_go_before_waiting_jobs() {
    let sim = start_sim(
        vec![SimModelConfig {
            ttft_ms: 500,
            ..sim_model("model-a", None)
        }],
        SystemClock::shared(),
    )
    .await;
    let dir = ScratchDir::new("jobs");
    let config = format!(
        "[admission]\nmax_concurrent = 1\nmax_per_user = 1\nmax_wait_ms = 60000\n{}",
        jobs_config(&sim, &dir, 4)
    );
    let gw = start_gateway(&config, SystemClock::shared()).await;
    let mut ids = Vec::new();
    for n in 0..4 {
        ids.push(submit(gw.addr, &converse_job(&format!("job {n}"))).await);
    }
    let until = Instant::now() + Duration::from_secs(10);
    while raw_get(gw.addr, "/queue_stats").await.json()["queue"]["queued"] != 3 {
        assert!(Instant::now() < until, "one job runs, three wait");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let interactive = raw_post(gw.addr, "/model/g/converse", &[], &converse_body("now")).await;
    assert_eq!(interactive.status, 200, "{}", interactive.body_text());
    let mut done = 0;
    for id in &ids {
        let job = raw_get(gw.addr, &format!("/v1/jobs/{id}")).await.json();
        done += usize::from(job["status"] == "succeeded");
    }
    assert_eq!(done, 1, "only the job that was running finished before it");
    for id in &ids {
        assert_eq!(
            ended(gw.addr, id, Duration::from_secs(30)).await["status"],
            "succeeded"
        );
    }
}

/// With API keys, a job is its submitter's: it runs as their user, and
/// another key neither sees nor cancels it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_belongs_to_the_key_that_submitted_it() {
    const ALICE: &str = "alice-key-0123456789";
    const BOB: &str = "bob-key-0123456789ab";
    let sim = start_sim(vec![sim_model("model-a", None)], SystemClock::shared()).await;
    let dir = ScratchDir::new("jobs");
    let config = format!(
        "[[api_keys]]\nkey = \"{ALICE}\"\nuser = \"alice\"\n[[api_keys]]\nkey = \"{BOB}\"\nuser = \"bob\"\n{}",
        jobs_config(&sim, &dir, 2)
    );
    let gw = start_gateway(&config, SystemClock::shared()).await;
    let bearer = |key: &str| format!("Bearer {key}");
    let (alice, bob) = (bearer(ALICE), bearer(BOB));
    let job = converse_job("mine").to_string();
    let anonymous = raw_post(gw.addr, "/v1/jobs", &[], job.as_bytes()).await;
    assert_eq!(anonymous.status, 401, "{}", anonymous.body_text());
    let submitted = raw_post(
        gw.addr,
        "/v1/jobs",
        &[("authorization", alice.as_str())],
        job.as_bytes(),
    )
    .await;
    assert_eq!(submitted.status, 202, "{}", submitted.body_text());
    let id = submitted.json()["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/jobs/{id}");

    let by_bob = raw_request(
        gw.addr,
        "GET",
        &path,
        &[("authorization", bob.as_str())],
        b"",
    )
    .await;
    assert_eq!(by_bob.status, 404, "{}", by_bob.body_text());
    let cancel = raw_request(
        gw.addr,
        "DELETE",
        &path,
        &[("authorization", bob.as_str())],
        b"",
    )
    .await;
    assert_eq!(cancel.status, 404, "{}", cancel.body_text());
    let listed = raw_request(
        gw.addr,
        "GET",
        "/v1/jobs",
        &[("authorization", bob.as_str())],
        b"",
    )
    .await;
    assert_eq!(listed.json()["data"], json!([]));

    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let job = raw_request(
            gw.addr,
            "GET",
            &path,
            &[("authorization", alice.as_str())],
            b"",
        )
        .await
        .json();
        if job["status"] == "succeeded" {
            assert_eq!(job["user"], "alice", "{job}");
            break;
        }
        assert!(Instant::now() < until, "{job}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A job's callback URL gets the ended job, tried again after a failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ended_job_is_posted_to_its_callback_until_taken() {
    use std::sync::{Arc, Mutex};
    let received: Arc<Mutex<Vec<Value>>> = Arc::default();
    let taken = received.clone();
    let app = axum::Router::new().route(
        "/done",
        axum::routing::post(move |axum::Json(job): axum::Json<Value>| {
            let taken = taken.clone();
            async move {
                let mut taken = taken.lock().unwrap();
                taken.push(job);
                // The first try fails: the gateway tries again.
                if taken.len() == 1 {
                    axum::http::StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    axum::http::StatusCode::NO_CONTENT
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let sim = start_sim(vec![sim_model("model-a", None)], SystemClock::shared()).await;
    let dir = ScratchDir::new("jobs");
    // The hook listens on loopback, which callbacks may reach only when
    // allowed; first, not allowed.
    let refused = start_gateway(&jobs_config(&sim, &dir, 1), SystemClock::shared()).await;
    let mut job = converse_job("call me");
    job["callback_url"] = json!(format!("http://{hook}/done"));
    let id = submit(refused.addr, &job).await;
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let shown = raw_get(refused.addr, &format!("/v1/jobs/{id}"))
            .await
            .json();
        if let Some(error) = shown["callback"]["last_error"].as_str() {
            assert!(error.contains("inside the network"), "{shown}");
            assert_eq!(shown["callback"]["delivered"], false);
            break;
        }
        assert!(Instant::now() < until, "no callback try: {shown}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        received.lock().unwrap().is_empty(),
        "nothing reached the hook"
    );
    drop(refused);

    let dir = ScratchDir::new("jobs");
    let config =
        jobs_config(&sim, &dir, 1).replace("[jobs]\n", "[jobs]\nprivate_callbacks = true\n");
    let gw = start_gateway(&config, SystemClock::shared()).await;
    let mut job = converse_job("call me");
    job["callback_url"] = json!(format!("http://{hook}/done"));
    let id = submit(gw.addr, &job).await;

    let until = Instant::now() + Duration::from_secs(30);
    let shown = loop {
        let shown = raw_get(gw.addr, &format!("/v1/jobs/{id}")).await.json();
        if shown["callback"]["delivered"] == true {
            break shown;
        }
        assert!(Instant::now() < until, "callback not delivered: {shown}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(shown["callback"]["tries"], 2, "{shown}");
    let received = received.lock().unwrap().clone();
    assert_eq!(received.len(), 2);
    assert_eq!(received[1]["id"], id.as_str());
    assert_eq!(received[1]["status"], "succeeded");
    assert_eq!(received[1]["answer"]["status"], 200);

    let bad = raw_post(
        gw.addr,
        "/v1/jobs",
        &[],
        json!({ "type": "converse", "model": "g", "body": {}, "callback_url": "ftp://x" })
            .to_string()
            .as_bytes(),
    )
    .await;
    assert_eq!(bad.status, 400, "{}", bad.body_text());
    server.abort();
}

/// With the shared state on Redis, jobs live there: any instance runs any
/// job, and a job whose instance is killed mid-run is claimed and finished
/// by another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_redis_another_instance_finishes_a_killed_instances_job() {
    let redis = crate::redis_server::RedisServer::start();
    let sim = start_sim(
        vec![SimModelConfig {
            ttft_ms: 2_000,
            ..sim_model("model-a", None)
        }],
        SystemClock::shared(),
    )
    .await;
    let config = format!(
        "[state]\nbackend = \"redis\"\nurl = \"{}\"\ninstances = 2\nkey_prefix = \"jobs-{}\"\n[jobs]\nworkers = 1\nclaim_after_ms = 1500\n{}[[model_groups]]\nname = \"g\"\ndeployments = [\"a\"]\n",
        redis.url(),
        uuid::Uuid::new_v4().simple(),
        deployment("a", "model-a", 1, &sim),
    );
    let mut one = GatewayProcess::start("jobs-one", &config).await;
    let two = GatewayProcess::start("jobs-two", &config).await;
    let mut ids = Vec::new();
    for n in 0..4 {
        ids.push(submit(one.addr, &converse_job(&format!("shared {n}"))).await);
    }
    // Each instance runs one (one worker each): then one of them dies.
    let until = Instant::now() + Duration::from_secs(30);
    while sim.counts("model-a").calls < 2 {
        assert!(Instant::now() < until, "both instances started a job");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    one.child.kill().await.unwrap();
    drop(one);

    let mut runs = 0;
    for id in &ids {
        let job = ended(two.addr, id, Duration::from_secs(60)).await;
        assert_eq!(job["status"], "succeeded", "{job}");
        runs += job["runs"].as_u64().unwrap();
    }
    assert_eq!(
        runs, 5,
        "the killed instance's job ran again on the other, no other job did"
    );
    assert_eq!(sim.counts("model-a").calls, 5);
}
