//! Async jobs: `POST /v1/jobs` stores a request and answers 202; workers
//! run it through the synchronous route; `GET /v1/jobs/{id}` (and the
//! field's `/task_status/{id}`) shows it and, once ended, the route's
//! answer. Jobs survive the gateway being killed.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use switchyard::clock::SystemClock;
use switchyard::sim::{SimHandle, SimModelConfig};

use crate::support::*;

/// A simulator whose `model-a` takes `ttft_ms` to answer.
async fn slow_sim(ttft_ms: u64) -> SimHandle {
    let model = SimModelConfig {
        ttft_ms,
        ..sim_model("model-a", None)
    };
    start_sim(vec![model], SystemClock::shared()).await
}

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
    let sim = slow_sim(1_500).await;
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
    let sim = slow_sim(3_000).await;
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
    let list = raw_get(first.addr, "/v1/jobs?limit=100").await.json();
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
            &["jobs", "list", "--limit", "100", "--gateway", &url],
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
    let sim = slow_sim(500).await;
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
            assert!(error.contains("not a public address"), "{shown}");
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
    let sim = slow_sim(2_000).await;
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

/// One client cannot fill the store: a user's jobs are capped in number
/// and in bytes, and the store's in all, each refused with 429
/// `job_quota_exceeded` in words that say which cap and nothing of other
/// users.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_past_their_job_caps_is_refused_with_429() {
    let sim = slow_sim(10_000).await;
    let dir = ScratchDir::new("jobs-caps");
    let config = jobs_config(&sim, &dir, 1).replace(
        "[jobs]\n",
        "[jobs]\nmax_jobs_per_user = 2\nmax_bytes_per_user = 4000\nmax_jobs = 3\n",
    );
    let gw = start_gateway(&config, SystemClock::shared()).await;
    let as_user = |user: &str, job: &Value| {
        let (user, body) = (user.to_owned(), job.to_string());
        let addr = gw.addr;
        async move {
            raw_post(
                addr,
                "/v1/jobs",
                &[("x-switchyard-user", &user)],
                body.as_bytes(),
            )
            .await
        }
    };
    for n in 0..2 {
        let ok = as_user("ann", &converse_job(&format!("ann {n}"))).await;
        assert_eq!(ok.status, 202, "{}", ok.body_text());
    }
    let third = as_user("ann", &converse_job("ann 2")).await;
    assert_eq!(third.status, 429, "{}", third.body_text());
    let body = third.json();
    assert_eq!(body["code"], "job_quota_exceeded", "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("max_jobs_per_user"),
        "{body}"
    );

    // Bytes: one request over the user's 4000 bytes.
    let big = converse_job(&"x".repeat(5_000));
    let refused = as_user("bo", &big).await;
    assert_eq!(refused.status, 429, "{}", refused.body_text());
    assert!(refused.json()["message"]
        .as_str()
        .unwrap()
        .contains("max_bytes_per_user"));

    // The store in all: two of ann's and one of bo's fill it.
    let ok = as_user("bo", &converse_job("bo 0")).await;
    assert_eq!(ok.status, 202, "{}", ok.body_text());
    let full = as_user("cy", &converse_job("cy 0")).await;
    assert_eq!(full.status, 429, "{}", full.body_text());
    let message = full.json()["message"].as_str().unwrap().to_owned();
    assert!(message.contains("full"), "{message}");
    assert!(
        !message.contains("ann") && !message.contains('3'),
        "{message}"
    );
}

/// `GET /v1/jobs` answers a page at a time, newest first, with each job's
/// record and answer status but not its answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_are_listed_a_page_at_a_time_without_their_answers() {
    let sim = start_sim(vec![sim_model("model-a", None)], SystemClock::shared()).await;
    let dir = ScratchDir::new("jobs-pages");
    let gw = start_gateway(&jobs_config(&sim, &dir, 2), SystemClock::shared()).await;
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(submit(gw.addr, &converse_job(&format!("page {n}"))).await);
    }
    for id in &ids {
        ended(gw.addr, id, Duration::from_secs(30)).await;
    }
    let mut seen = Vec::new();
    let mut path = "/v1/jobs?limit=2".to_owned();
    let mut pages = 0;
    loop {
        let page = raw_get(gw.addr, &path).await;
        assert_eq!(page.status, 200, "{}", page.body_text());
        let page = page.json();
        pages += 1;
        for job in page["data"].as_array().unwrap() {
            assert!(job.get("answer").is_none(), "a list shows no answer: {job}");
            assert_eq!(job["answer_status"], 200, "{job}");
            seen.push(job["id"].as_str().unwrap().to_owned());
        }
        if page["has_more"] == false {
            break;
        }
        path = format!(
            "/v1/jobs?limit=2&after={}",
            page["last_id"].as_str().unwrap()
        );
    }
    assert_eq!(pages, 3);
    ids.reverse();
    assert_eq!(seen, ids, "newest first, each once");
    let bad = raw_get(gw.addr, "/v1/jobs?limit=1000").await;
    assert_eq!(bad.status, 400, "{}", bad.body_text());
}

/// A job whose run kills its gateway (here: the gateway is killed each
/// time it runs) runs at most `max_runs` times across restarts, then
/// fails with `job_interrupted`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_interrupted_on_every_run_ends_after_max_runs() {
    let sim = slow_sim(60_000).await;
    let dir = ScratchDir::new("jobs-interrupted");
    let config = jobs_config(&sim, &dir, 1).replace("[jobs]\n", "[jobs]\nmax_runs = 2\n");
    let mut gateway = GatewayProcess::start("interrupted-1", &config).await;
    let id = submit(gateway.addr, &converse_job("deadly")).await;
    for run in 1..=2 {
        let until = Instant::now() + Duration::from_secs(30);
        while sim.counts("model-a").calls < run {
            assert!(Instant::now() < until, "run {run} started");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        gateway.child.kill().await.unwrap();
        drop(gateway);
        gateway = GatewayProcess::start(&format!("interrupted-{}", run + 1), &config).await;
    }
    let job = ended(gateway.addr, &id, Duration::from_secs(30)).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["runs"], 2, "{job}");
    assert_eq!(job["answer"]["body"]["code"], "job_interrupted", "{job}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sim.counts("model-a").calls, 2, "no third run");
}

/// A hook on loopback whose answers the test sets; it keeps what it got.
struct Hook {
    addr: std::net::SocketAddr,
    received: std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
    answer: std::sync::Arc<std::sync::atomic::AtomicU16>,
    server: tokio::task::JoinHandle<()>,
}

impl Hook {
    async fn start(status: u16) -> Self {
        use std::sync::atomic::{AtomicU16, Ordering};
        use std::sync::{Arc, Mutex};
        let received: Arc<Mutex<Vec<Value>>> = Arc::default();
        let answer = Arc::new(AtomicU16::new(status));
        let (taken, status) = (received.clone(), answer.clone());
        let app = axum::Router::new().route(
            "/done",
            axum::routing::post(move |axum::Json(job): axum::Json<Value>| {
                let (taken, status) = (taken.clone(), status.clone());
                async move {
                    taken.lock().unwrap().push(job);
                    axum::http::StatusCode::from_u16(status.load(Ordering::SeqCst)).unwrap()
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self {
            addr,
            received,
            answer,
            server,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/done", self.addr)
    }

    fn received(&self) -> Vec<Value> {
        self.received.lock().unwrap().clone()
    }
}

impl Drop for Hook {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Polls job `id` until `done` holds of it.
async fn job_until(
    addr: std::net::SocketAddr,
    id: &str,
    within: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let until = Instant::now() + within;
    loop {
        let job = raw_get(addr, &format!("/v1/jobs/{id}")).await.json();
        if done(&job) {
            return job;
        }
        assert!(Instant::now() < until, "job {id}: {job}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A callback waits in a durable outbox: the gateway killed between two
/// tries delivers it after its restart. A cancelled job calls back too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callbacks_survive_a_restart_and_cancelled_jobs_call_back() {
    let hook = Hook::start(500).await;
    let sim = start_sim(vec![sim_model("model-a", None)], SystemClock::shared()).await;
    let dir = ScratchDir::new("jobs-outbox");
    let config =
        jobs_config(&sim, &dir, 1).replace("[jobs]\n", "[jobs]\nprivate_callbacks = true\n");
    let mut first = GatewayProcess::start("outbox-1", &config).await;
    let mut job = converse_job("call me");
    job["callback_url"] = json!(hook.url());
    let id = submit(first.addr, &job).await;
    job_until(first.addr, &id, Duration::from_secs(30), |j| {
        j["callback"]["tries"] == 1
    })
    .await;
    // Killed before the second try (due 1 s after the first).
    first.child.kill().await.unwrap();
    drop(first);
    hook.answer.store(204, std::sync::atomic::Ordering::SeqCst);

    let second = GatewayProcess::start("outbox-2", &config).await;
    let shown = job_until(second.addr, &id, Duration::from_secs(30), |j| {
        j["callback"]["delivered"] == true
    })
    .await;
    assert_eq!(shown["callback"]["tries"], 2, "{shown}");
    let received = hook.received();
    assert_eq!(received.len(), 2, "{received:?}");
    assert_eq!(received[1]["status"], "succeeded");
    assert_eq!(received[1]["answer"]["status"], 200);

    // A cancelled job's callback.
    let slow_sim = slow_sim(5_000).await;
    let dir = ScratchDir::new("jobs-outbox-cancel");
    let config =
        jobs_config(&slow_sim, &dir, 1).replace("[jobs]\n", "[jobs]\nprivate_callbacks = true\n");
    let gw = start_gateway(&config, SystemClock::shared()).await;
    let busy = submit(gw.addr, &converse_job("holds the worker")).await;
    let waiting = submit(gw.addr, &job).await;
    let cancel = raw_request(gw.addr, "DELETE", &format!("/v1/jobs/{waiting}"), &[], b"").await;
    assert_eq!(cancel.status, 200, "{}", cancel.body_text());
    job_until(gw.addr, &waiting, Duration::from_secs(30), |j| {
        j["callback"]["delivered"] == true
    })
    .await;
    let received = hook.received();
    let last = received.last().unwrap();
    assert_eq!(
        (last["id"].as_str(), &last["status"]),
        (Some(waiting.as_str()), &json!("cancelled"))
    );
    let _ = busy;
}

/// Callbacks go to public addresses only: a name that resolves inside the
/// network, and an address in a range that is not global, are refused, in
/// words that do not say what the name resolved to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callbacks_to_addresses_inside_the_network_are_refused_without_naming_them() {
    let hook = Hook::start(204).await;
    let sim = start_sim(vec![sim_model("model-a", None)], SystemClock::shared()).await;
    let dir = ScratchDir::new("jobs-ssrf");
    let gw = start_gateway(&jobs_config(&sim, &dir, 1), SystemClock::shared()).await;
    let port = hook.addr.port();
    for url in [
        format!("http://localhost:{port}/done"),
        format!("http://127.0.0.1:{port}/done"),
        "http://198.18.0.1/done".to_owned(),
        "http://[64:ff9b::7f00:1]/done".to_owned(),
        "http://[2002:7f00:1::1]/done".to_owned(),
        "http://192.0.0.170/done".to_owned(),
        "http://240.0.0.1/done".to_owned(),
    ] {
        let mut job = converse_job("probe");
        job["callback_url"] = json!(url);
        let id = submit(gw.addr, &job).await;
        let shown = job_until(gw.addr, &id, Duration::from_secs(30), |j| {
            j["callback"]["last_error"].is_string()
        })
        .await;
        let error = shown["callback"]["last_error"].as_str().unwrap();
        assert!(error.contains("not a public address"), "{url}: {error}");
        for leak in ["127.0.0.1", "::1", "[::1]"] {
            assert!(!error.contains(leak), "{url}: {error}");
        }
    }
    assert!(hook.received().is_empty(), "nothing reached the hook");
}

/// On Redis, a user's list is theirs however busy others are (it was the
/// newest 1,000 of everyone's, filtered), and every record expires, an
/// unfinished one too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_redis_a_users_jobs_are_listed_whoever_else_is_busy() {
    const ALICE: &str = "alice-key-0123456789";
    const BOB: &str = "bob-key-0123456789ab";
    let redis = crate::redis_server::RedisServer::start();
    let sim = slow_sim(30_000).await;
    let prefix = format!("jobs-{}", uuid::Uuid::new_v4().simple());
    let config = format!(
        "[[api_keys]]\nkey = \"{ALICE}\"\nuser = \"alice\"\n[[api_keys]]\nkey = \"{BOB}\"\nuser = \"bob\"\n[state]\nbackend = \"redis\"\nurl = \"{}\"\nkey_prefix = \"{prefix}\"\n[jobs]\nworkers = 1\nmax_jobs_per_user = 5000\n{}[[model_groups]]\nname = \"g\"\ndeployments = [\"a\"]\n",
        redis.url(),
        deployment("a", "model-a", 1, &sim),
    );
    let gw = start_gateway(&config, SystemClock::shared()).await;
    let (alice, bob) = (format!("Bearer {ALICE}"), format!("Bearer {BOB}"));
    let job = converse_job("queued").to_string();
    let submitted = raw_post(
        gw.addr,
        "/v1/jobs",
        &[("authorization", alice.as_str())],
        job.as_bytes(),
    )
    .await;
    assert_eq!(submitted.status, 202, "{}", submitted.body_text());
    let id = submitted.json()["id"].as_str().unwrap().to_owned();
    for _ in 0..1_001 {
        let answer = raw_post(
            gw.addr,
            "/v1/jobs",
            &[("authorization", bob.as_str())],
            job.as_bytes(),
        )
        .await;
        assert_eq!(answer.status, 202, "{}", answer.body_text());
    }
    let listed = raw_request(
        gw.addr,
        "GET",
        "/v1/jobs",
        &[("authorization", alice.as_str())],
        b"",
    )
    .await;
    let listed = listed.json();
    let data = listed["data"].as_array().unwrap();
    assert_eq!(data.len(), 1, "{listed}");
    assert_eq!(data[0]["id"], id.as_str());
    assert_eq!(listed["has_more"], false);

    // A queued job's record has a time to live.
    let ttl = redis
        .command(&format!("PTTL {prefix}:jobrec:{id}"))
        .expect("redis answers");
    let ttl: i64 = ttl.trim().trim_start_matches(':').parse().unwrap();
    assert!(ttl > 0, "an unfinished job's record expires: PTTL {ttl}");
}

/// A job runs as its submitter whatever their name: a user whose name is
/// not ASCII keeps their cap of running requests (jobs once travelled back
/// into the gateway with the user in a header, and such a name made the job
/// anonymous, free of the cap).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_keeps_its_submitters_cap_whatever_their_name() {
    const KEY: &str = "zoe-key-0123456789ab";
    let sim = slow_sim(3_000).await;
    let dir = ScratchDir::new("jobs-identity");
    let config = format!(
        "[[api_keys]]\nkey = \"{KEY}\"\nuser = \"Zoë Ødegård\"\nmax_concurrent = 1\n{}",
        jobs_config(&sim, &dir, 2)
    );
    let gw = start_gateway(&config, SystemClock::shared()).await;
    let bearer = format!("Bearer {KEY}");
    let mut ids = Vec::new();
    for n in 0..2 {
        let job = converse_job(&format!("mine {n}")).to_string();
        let answer = raw_post(
            gw.addr,
            "/v1/jobs",
            &[("authorization", bearer.as_str())],
            job.as_bytes(),
        )
        .await;
        assert_eq!(answer.status, 202, "{}", answer.body_text());
        ids.push(answer.json()["id"].as_str().unwrap().to_owned());
    }
    // Two workers, one running place for the user: one call at a time.
    let until = Instant::now() + Duration::from_secs(30);
    while sim.counts("model-a").calls < 1 {
        assert!(Instant::now() < until, "a job started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert_eq!(
        sim.counts("model-a").calls,
        1,
        "the second job waits for the user's one running place"
    );
    for id in &ids {
        let job = raw_request(
            gw.addr,
            "GET",
            &format!("/v1/jobs/{id}"),
            &[("authorization", bearer.as_str())],
            b"",
        )
        .await
        .json();
        assert_eq!(job["user"], "Zoë Ødegård", "{job}");
    }
}
