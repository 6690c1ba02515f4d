//! The simulator's HTTP server: Bedrock's Converse and ConverseStream routes,
//! plus `/sim/*` routes for tests and demos to inject faults and read counts.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::SinkExt;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::abandonable::Abandonable;
use super::config::{SimConfig, SimModelConfig};
use super::converse::{
    converse_from_anthropic, parse_prompt, reply_to, stream_events, Prompt, Reply,
};
use super::embed::{EmbeddingFamily, EmbeddingRequest};
use super::eventstream;
use super::faults::Fault;
use super::quota::RollingQuota;
use super::wire::{BedrockError, KeyRefusal};
use switchyard_clock::SharedClock;

/// Counts of what one simulated model saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ModelCounts {
    /// Calls received, whatever their ending.
    pub calls: u64,
    /// Calls answered successfully.
    pub successes: u64,
    /// Calls refused with a 429 (quota or injected).
    pub throttles: u64,
    /// Calls that ended in another injected fault.
    pub faults: u64,
    /// The number of its latest call among all the simulator's calls
    /// (numbered from 1; 0: never called), which tells the order in which
    /// models were called.
    pub last_call: u64,
}

struct ModelState {
    config: SimModelConfig,
    /// Quotas are per model and region, as Bedrock's are.
    quotas: HashMap<String, RollingQuota>,
    injected: VecDeque<Fault>,
    counts: ModelCounts,
    rng: fastrand::Rng,
}

impl ModelState {
    fn new(config: SimModelConfig) -> Self {
        let seed = config
            .model_id
            .bytes()
            .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
        Self {
            quotas: HashMap::new(),
            config,
            injected: VecDeque::new(),
            counts: ModelCounts::default(),
            rng: fastrand::Rng::with_seed(seed),
        }
    }

    fn next_fault(&mut self) -> Option<Fault> {
        if let Some(f) = self.injected.pop_front() {
            return Some(f);
        }
        let roll = self.rng.f64();
        let mut acc = 0.0;
        for f in &self.config.faults {
            acc += f.probability;
            if roll < acc {
                return Some(f.kind);
            }
        }
        None
    }
}

struct SimState {
    clock: SharedClock,
    stall: Duration,
    accept_any_model: bool,
    models: Mutex<HashMap<String, ModelState>>,
    request_ids: AtomicU64,
    /// Calls received so far, of every model.
    calls: AtomicU64,
    /// Streams whose client closed the connection before their end.
    abandoned_streams: Arc<AtomicU64>,
    /// Access keys it refuses, and how.
    refused_keys: Mutex<HashMap<String, KeyRefusal>>,
    /// Cached prompt prefixes, by model and prefix: when each expires.
    prompt_cache: Mutex<HashMap<(String, u64), u64>>,
    /// The W3C `traceparent` of the last calls that carried one (Bedrock
    /// ignores it; tests read it to see a trace reach the upstream).
    traceparents: Mutex<std::collections::VecDeque<String>>,
}

/// How many `traceparent` headers the simulator remembers.
const TRACEPARENTS_KEPT: usize = 64;

/// How long a cached prefix lives after its last use, as Bedrock's default.
const PROMPT_CACHE_TTL_MS: u64 = 5 * 60 * 1000;

/// What one call asks the simulator to produce, once read.
trait Work {
    /// Tokens in and out, for the TPM quota and the pace of the answer.
    fn tokens(&self) -> (u64, u64);
}

/// A chat answer: Converse, ConverseStream, or an Anthropic InvokeModel.
struct Chat {
    prompt: Prompt,
    reply: Reply,
}

impl Work for Chat {
    fn tokens(&self) -> (u64, u64) {
        (self.prompt.input_tokens, self.reply.output_tokens())
    }
}

impl Work for EmbeddingRequest {
    fn tokens(&self) -> (u64, u64) {
        (self.input_tokens(), 0)
    }
}

/// Reads a chat body for `model_id`: a Converse one, which an embedding
/// model does not take.
fn chat(state: &SimState, model_id: &str, converse_body: &[u8]) -> Result<Chat, String> {
    if EmbeddingFamily::of(model_id).is_some() {
        return Err("This model doesn't support the Converse API or chat messages.".into());
    }
    let mut prompt = parse_prompt(converse_body)?;
    state.use_prompt_cache(model_id, &mut prompt);
    let reply = reply_to(model_id, &prompt);
    Ok(Chat { prompt, reply })
}

impl SimState {
    /// A prompt with a cached prefix reads it from the cache if it is
    /// there (a second identical prefix within 5 minutes), else writes it;
    /// either way those tokens leave `input_tokens`, as Bedrock counts them.
    fn use_prompt_cache(&self, model_id: &str, prompt: &mut Prompt) {
        let Some(prefix) = prompt.cache_prefix else {
            return;
        };
        let now = self.clock.now_ms();
        let mut cache = self.prompt_cache.lock().expect("simulator state poisoned");
        cache.retain(|_, expires| *expires > now);
        let key = (model_id.to_owned(), prefix.key);
        match cache.insert(key, now + PROMPT_CACHE_TTL_MS) {
            Some(_) => prompt.cache_read_tokens = prefix.tokens,
            None => prompt.cache_write_tokens = prefix.tokens,
        }
        prompt.input_tokens = prompt.input_tokens.saturating_sub(prefix.tokens).max(1);
    }
}

/// What the simulator decided for one call, before any waiting.
enum Plan<W> {
    Answer(Answer<W>),
    Refuse(BedrockError),
    Stall,
    Reset,
}

impl SimState {
    fn plan<W: Work>(
        &self,
        model_id: &str,
        region: &str,
        read: impl FnOnce() -> Result<W, String>,
        streaming: bool,
    ) -> Plan<W> {
        let mut models = self.models.lock().expect("simulator state poisoned");
        if !models.contains_key(model_id) {
            if !self.accept_any_model {
                return Plan::Refuse(BedrockError::validation(
                    "The provided model identifier is invalid.",
                ));
            }
            models.insert(
                model_id.to_owned(),
                ModelState::new(SimModelConfig::unlimited(model_id)),
            );
        }
        let model = models.get_mut(model_id).expect("inserted above");
        model.counts.calls += 1;
        model.counts.last_call = self.calls.fetch_add(1, Ordering::Relaxed) + 1;
        let work = match read() {
            Ok(w) => w,
            Err(message) => return Plan::Refuse(BedrockError::validation(message)),
        };
        let fault = model.next_fault();
        match fault {
            Some(Fault::Throttle) | Some(Fault::StreamThrottle) if !streaming => {
                model.counts.throttles += 1;
                return Plan::Refuse(BedrockError::throttling(
                    "Too many requests, please wait before trying again.",
                    1_000,
                ));
            }
            Some(Fault::Throttle) => {
                model.counts.throttles += 1;
                return Plan::Refuse(BedrockError::throttling(
                    "Too many requests, please wait before trying again.",
                    1_000,
                ));
            }
            Some(Fault::Unavailable) => {
                model.counts.faults += 1;
                return Plan::Refuse(BedrockError::unavailable());
            }
            Some(Fault::Internal) => {
                model.counts.faults += 1;
                return Plan::Refuse(BedrockError::internal());
            }
            Some(Fault::Timeout) => {
                model.counts.faults += 1;
                return Plan::Stall;
            }
            Some(Fault::Reset) | Some(Fault::MalformedFrame) if !streaming => {
                model.counts.faults += 1;
                return Plan::Reset;
            }
            _ => {}
        }
        let now = self.clock.now_ms();
        let (input_tokens, output_tokens) = work.tokens();
        let tokens = input_tokens + output_tokens;
        let (rpm, tpm) = (model.config.rpm, model.config.tpm);
        let quota = model
            .quotas
            .entry(region.to_owned())
            .or_insert_with(|| RollingQuota::new(rpm, tpm));
        if let Err(refusal) = quota.try_admit(now, tokens) {
            let retry_after_ms = quota.retry_after_ms(now);
            model.counts.throttles += 1;
            return Plan::Refuse(BedrockError::throttling(refusal.message(), retry_after_ms));
        }
        match fault {
            Some(Fault::StreamThrottle) => model.counts.throttles += 1,
            Some(Fault::Reset) | Some(Fault::MalformedFrame) => model.counts.faults += 1,
            _ => model.counts.successes += 1,
        }
        let per_token = match model.config.tokens_per_s {
            0 => Duration::ZERO,
            tps => Duration::from_secs_f64(1.0 / f64::from(tps)),
        };
        Plan::Answer(Answer {
            work,
            ttft: Duration::from_millis(model.config.ttft_ms),
            per_token,
            fault,
        })
    }

    /// Plans a call and carries out anything but an answer (a refusal; a
    /// stall, after waiting; a reset), or hands back the answer to give.
    async fn answer_or_refuse<W: Work>(
        &self,
        model_id: &str,
        headers: &HeaderMap,
        read: impl FnOnce() -> Result<W, String>,
        streaming: bool,
    ) -> Result<Answer<W>, Response> {
        if let Some(traceparent) = headers.get("traceparent").and_then(|v| v.to_str().ok()) {
            let mut kept = self.traceparents.lock().expect("simulator state poisoned");
            if kept.len() == TRACEPARENTS_KEPT {
                kept.pop_front();
            }
            kept.push_back(traceparent.to_owned());
        }
        let key = access_key(headers);
        let refusal = self
            .refused_keys
            .lock()
            .expect("simulator state poisoned")
            .get(&key)
            .copied();
        if let Some(refusal) = refusal {
            return Err(BedrockError::refused_credentials(refusal, &key).into_response());
        }
        match self.plan(model_id, &signed_region(headers), read, streaming) {
            Plan::Answer(answer) => Ok(answer),
            Plan::Refuse(err) => Err(err.into_response()),
            Plan::Stall => {
                tokio::time::sleep(self.stall).await;
                Err(BedrockError::unavailable().into_response())
            }
            Plan::Reset => Err(reset_response()),
        }
    }

    fn request_id(&self) -> String {
        format!(
            "sim-{:016x}",
            self.request_ids.fetch_add(1, Ordering::Relaxed)
        )
    }
}

fn with_request_id(mut response: Response, id: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(id) {
        response.headers_mut().insert("x-amzn-requestid", v);
    }
    response
}

/// The access key a call was signed with (the start of SigV4's credential scope).
fn access_key(headers: &HeaderMap) -> String {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|auth| auth.split("Credential=").nth(1))
        .and_then(|scope| scope.split('/').next())
        .unwrap_or_default()
        .to_owned()
}

/// The region a call was signed for (SigV4's credential scope), which is
/// the region of the client's config; `us-east-1` when unsigned.
fn signed_region(headers: &HeaderMap) -> String {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|auth| auth.split("Credential=").nth(1))
        .and_then(|scope| scope.split('/').nth(2))
        .filter(|r| !r.is_empty())
        .unwrap_or("us-east-1")
        .to_owned()
}

async fn converse(
    State(state): State<Arc<SimState>>,
    Path(model_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request_id = state.request_id();
    let started = Instant::now();
    let response = match state
        .answer_or_refuse(
            &model_id,
            &headers,
            || chat(&state, &model_id, &body),
            false,
        )
        .await
    {
        Err(response) => response,
        Ok(answer) => {
            pause(answer.duration()).await;
            let Chat { prompt, reply } = answer.work;
            let body = json!({
                "output": {"message": {"role": "assistant", "content": reply.content_blocks()}},
                "stopReason": reply.stop_reason,
                "usage": usage(&prompt, &reply),
                "metrics": {"latencyMs": started.elapsed().as_millis() as u64},
            });
            (StatusCode::OK, Json(body)).into_response()
        }
    };
    with_request_id(response, &request_id)
}

fn usage(prompt: &Prompt, reply: &Reply) -> serde_json::Value {
    let cached = prompt.cache_read_tokens + prompt.cache_write_tokens;
    let mut usage = json!({
        "inputTokens": prompt.input_tokens,
        "outputTokens": reply.output_tokens(),
        "totalTokens": prompt.input_tokens + cached + reply.output_tokens(),
    });
    if prompt.cache_prefix.is_some() {
        usage["cacheReadInputTokens"] = json!(prompt.cache_read_tokens);
        usage["cacheWriteInputTokens"] = json!(prompt.cache_write_tokens);
    }
    usage
}

/// A 200 whose body fails at once: the client sees the connection drop.
fn reset_response() -> Response {
    let failing = futures::stream::once(async {
        Err::<Bytes, _>(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "simulated connection reset",
        ))
    });
    let mut response = Response::new(Body::from_stream(failing));
    response
        .headers_mut()
        .insert("content-type", HeaderValue::from_static("application/json"));
    response
}

async fn converse_stream(
    State(state): State<Arc<SimState>>,
    Path(model_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request_id = state.request_id();
    let response = match state
        .answer_or_refuse(&model_id, &headers, || chat(&state, &model_id, &body), true)
        .await
    {
        Err(response) => response,
        Ok(Answer {
            work: Chat { prompt, reply },
            ttft,
            per_token,
            fault,
        }) => {
            let (tx, rx) = futures::channel::mpsc::channel::<Result<Bytes, std::io::Error>>(16);
            tokio::spawn(send_converse_stream(
                tx, prompt, reply, ttft, per_token, fault,
            ));
            let mut response = Response::new(Body::from_stream(Abandonable::new(
                rx,
                state.abandoned_streams.clone(),
            )));
            response.headers_mut().insert(
                "content-type",
                HeaderValue::from_static("application/vnd.amazon.eventstream"),
            );
            response
        }
    };
    with_request_id(response, &request_id)
}

/// Sends a ConverseStream answer at its pace. After the first delta the
/// stream breaks when `fault` asks for it (a throttle or a reset in
/// mid-stream).
async fn send_converse_stream(
    mut tx: futures::channel::mpsc::Sender<Result<Bytes, std::io::Error>>,
    prompt: Prompt,
    reply: Reply,
    ttft: Duration,
    per_token: Duration,
    fault: Option<Fault>,
) {
    let started = Instant::now();
    pause(ttft).await;
    if tx
        .send(Ok(eventstream::event(
            "messageStart",
            json!({"role": "assistant"}),
        )))
        .await
        .is_err()
    {
        return;
    }
    let mut first_delta = true;
    for event in stream_events(&reply) {
        if tx
            .send(Ok(eventstream::event(event.event_type, event.payload)))
            .await
            .is_err()
        {
            return;
        }
        if !event.is_delta {
            continue;
        }
        if std::mem::take(&mut first_delta) && fault.is_some() {
            // One token's time after the first delta, so a paced stream
            // breaks after its first frames have reached the client.
            pause(per_token).await;
            match fault {
                Some(Fault::StreamThrottle) => {
                    let _ = tx
                        .send(Ok(eventstream::exception(
                            "throttlingException",
                            "Too many requests, please wait before trying again.",
                        )))
                        .await;
                    return;
                }
                Some(Fault::MalformedFrame) => {
                    let _ = tx
                        .send(Ok(eventstream::corrupted(eventstream::event(
                            "contentBlockDelta",
                            json!({"contentBlockIndex": 0, "delta": {"text": "?"}}),
                        ))))
                        .await;
                    return;
                }
                Some(Fault::Reset) => {
                    let _ = tx
                        .send(Err(std::io::Error::new(
                            std::io::ErrorKind::ConnectionReset,
                            "simulated connection reset",
                        )))
                        .await;
                    return;
                }
                _ => {}
            }
        }
        pause(per_token).await;
    }
    let end = [
        eventstream::event("messageStop", json!({"stopReason": reply.stop_reason})),
        eventstream::event(
            "metadata",
            json!({
                "usage": usage(&prompt, &reply),
                "metrics": {"latencyMs": started.elapsed().as_millis() as u64},
            }),
        ),
    ];
    for frame in end {
        if tx.send(Ok(frame)).await.is_err() {
            return;
        }
    }
}

/// The Anthropic Messages answer of InvokeModel.
fn anthropic_message(
    request_id: &str,
    model_id: &str,
    prompt: &Prompt,
    reply: &Reply,
) -> serde_json::Value {
    json!({
        "id": format!("msg_{request_id}"),
        "type": "message",
        "role": "assistant",
        "model": model_id,
        "content": crate::anthropic::message_content(reply),
        "stop_reason": reply.stop_reason,
        "stop_sequence": null,
        "usage": {
            "input_tokens": prompt.input_tokens,
            "output_tokens": reply.output_tokens(),
            "cache_creation_input_tokens": prompt.cache_write_tokens,
            "cache_read_input_tokens": prompt.cache_read_tokens,
        },
    })
}

fn token_count_headers(response: &mut Response, input_tokens: u64, output_tokens: u64) {
    let headers = response.headers_mut();
    headers.insert(
        "x-amzn-bedrock-input-token-count",
        HeaderValue::from(input_tokens),
    );
    headers.insert(
        "x-amzn-bedrock-output-token-count",
        HeaderValue::from(output_tokens),
    );
}

/// `POST /model/{modelId}/invoke`, for bodies in Anthropic's Messages format.
async fn invoke(
    State(state): State<Arc<SimState>>,
    Path(model_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request_id = state.request_id();
    if let Some(family) = EmbeddingFamily::of(&model_id) {
        let read = || EmbeddingRequest::parse(family, &model_id, &body);
        let response = match state
            .answer_or_refuse(&model_id, &headers, read, false)
            .await
        {
            Err(response) => response,
            Ok(answer) => {
                pause(answer.duration()).await;
                let embedded = answer.work.answer(&model_id, &request_id);
                let mut response = (StatusCode::OK, Json(embedded)).into_response();
                token_count_headers(&mut response, answer.work.input_tokens(), 0);
                response
            }
        };
        return with_request_id(response, &request_id);
    }
    let response = match invoke_answer(&state, &model_id, &headers, &body, false).await {
        Err(response) => response,
        Ok(answer) => {
            pause(answer.duration()).await;
            let Chat { prompt, reply } = &answer.work;
            let message = anthropic_message(&request_id, &model_id, prompt, reply);
            let mut response = (StatusCode::OK, Json(message)).into_response();
            token_count_headers(&mut response, prompt.input_tokens, reply.output_tokens());
            response
        }
    };
    with_request_id(response, &request_id)
}

/// [`SimState::answer_or_refuse`] for an InvokeModel body.
async fn invoke_answer(
    state: &SimState,
    model_id: &str,
    headers: &HeaderMap,
    body: &[u8],
    streaming: bool,
) -> Result<Answer<Chat>, Response> {
    if EmbeddingFamily::of(model_id).is_some() {
        let message = "The model does not support streaming; call InvokeModel.";
        return Err(BedrockError::validation(message).into_response());
    }
    let converse_body = converse_from_anthropic(body)
        .map_err(|message| BedrockError::validation(message).into_response())?;
    state
        .answer_or_refuse(
            model_id,
            headers,
            || chat(state, model_id, &converse_body),
            streaming,
        )
        .await
}

/// `POST /model/{modelId}/invoke-with-response-stream`: Anthropic's stream
/// events, each as the base64 `bytes` of a `chunk` event.
async fn invoke_stream(
    State(state): State<Arc<SimState>>,
    Path(model_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request_id = state.request_id();
    let response = match invoke_answer(&state, &model_id, &headers, &body, true).await {
        Err(response) => response,
        Ok(Answer {
            work: Chat { prompt, reply },
            ttft,
            per_token,
            fault,
        }) => {
            let chunk = |event: serde_json::Value| {
                eventstream::event(
                    "chunk",
                    json!({ "bytes": aws_smithy_types::base64::encode(event.to_string()) }),
                )
            };
            let mut message = anthropic_message(&request_id, &model_id, &prompt, &reply);
            message["content"] = json!([]);
            message["usage"]["output_tokens"] = json!(0);
            let (mut tx, rx) = futures::channel::mpsc::channel::<Result<Bytes, std::io::Error>>(16);
            tokio::spawn(async move {
                pause(ttft).await;
                // Each frame, and whether it is the first text delta (a
                // fault breaks the stream after it).
                let mut frames = vec![(
                    chunk(json!({"type": "message_start", "message": message})),
                    false,
                )];
                for (event, first_delta) in crate::anthropic::content_events(&reply) {
                    frames.push((chunk(event), first_delta));
                }
                frames.push((
                    chunk(json!({
                        "type": "message_delta",
                        "delta": {"stop_reason": reply.stop_reason, "stop_sequence": null},
                        "usage": {"output_tokens": reply.output_tokens()},
                    })),
                    false,
                ));
                // Bedrock adds its own count of the call to the last chunk.
                let metrics = json!({
                    "inputTokenCount": prompt.input_tokens,
                    "outputTokenCount": reply.output_tokens(),
                    "cacheReadInputTokenCount": prompt.cache_read_tokens,
                    "cacheWriteInputTokenCount": prompt.cache_write_tokens,
                    "invocationLatency": 0,
                    "firstByteLatency": 0,
                });
                frames.push((
                    chunk(json!({"type": "message_stop", "amazon-bedrock-invocationMetrics": metrics})),
                    false,
                ));
                for (f, first_delta) in frames {
                    let delta = f.clone();
                    if tx.send(Ok(f)).await.is_err() {
                        return;
                    }
                    pause(per_token).await;
                    if !first_delta {
                        continue;
                    }
                    let broken = match fault {
                        Some(Fault::StreamThrottle) => Ok(eventstream::exception(
                            "throttlingException",
                            "Too many requests, please wait before trying again.",
                        )),
                        Some(Fault::MalformedFrame) => Ok(eventstream::corrupted(delta)),
                        Some(Fault::Reset) => Err(std::io::Error::new(
                            std::io::ErrorKind::ConnectionReset,
                            "simulated connection reset",
                        )),
                        _ => continue,
                    };
                    let _ = tx.send(broken).await;
                    return;
                }
            });
            let mut response = Response::new(Body::from_stream(Abandonable::new(
                rx,
                state.abandoned_streams.clone(),
            )));
            response.headers_mut().insert(
                "content-type",
                HeaderValue::from_static("application/vnd.amazon.eventstream"),
            );
            response
        }
    };
    with_request_id(response, &request_id)
}

/// `POST /model/{modelId}/count-tokens`: the input tokens of an
/// InvokeModel body (base64 in `input.invokeModel.body`), as Bedrock's
/// CountTokens counts them for Claude. Counting takes none of the model's
/// quota.
async fn count_tokens(
    State(state): State<Arc<SimState>>,
    Path(model_id): Path<String>,
    body: Bytes,
) -> Response {
    #[derive(Deserialize)]
    struct CountTokens {
        input: CountInput,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct CountInput {
        invoke_model: Option<InvokeModelInput>,
    }
    #[derive(Deserialize)]
    struct InvokeModelInput {
        body: String,
    }
    let request_id = state.request_id();
    let counted = (|| {
        let request: CountTokens =
            serde_json::from_slice(&body).map_err(|e| format!("Malformed input request: {e}"))?;
        let invoke = request
            .input
            .invoke_model
            .ok_or("The simulator counts the tokens of `invokeModel` inputs only.")?;
        let body = aws_smithy_types::base64::decode(&invoke.body)
            .map_err(|_| "invokeModel.body is not base64".to_owned())?;
        if EmbeddingFamily::of(&model_id).is_some() {
            return Err("The provided model doesn't support counting tokens.".to_owned());
        }
        let converse = converse_from_anthropic(&body)?;
        parse_prompt(&converse).map(|prompt| prompt.input_tokens)
    })();
    let response = match counted {
        Ok(tokens) => (StatusCode::OK, Json(json!({ "inputTokens": tokens }))).into_response(),
        Err(message) => BedrockError::validation(message).into_response(),
    };
    with_request_id(response, &request_id)
}

/// Body of `POST /sim/faults`.
#[derive(Debug, Deserialize)]
struct InjectFaults {
    model_id: String,
    fault: Fault,
    #[serde(default = "one")]
    count: u32,
}

fn one() -> u32 {
    1
}

async fn inject_faults(
    State(state): State<Arc<SimState>>,
    Json(req): Json<InjectFaults>,
) -> Response {
    state.inject(&req.model_id, req.fault, req.count);
    (StatusCode::OK, Json(json!({"injected": req.count}))).into_response()
}

async fn stats(State(state): State<Arc<SimState>>) -> Response {
    let models = state.models.lock().expect("simulator state poisoned");
    let counts: HashMap<&str, ModelCounts> = models
        .iter()
        .map(|(id, m)| (id.as_str(), m.counts))
        .collect();
    Json(json!({ "models": counts })).into_response()
}

impl SimState {
    fn inject(&self, model_id: &str, fault: Fault, count: u32) {
        let mut models = self.models.lock().expect("simulator state poisoned");
        let model = models
            .entry(model_id.to_owned())
            .or_insert_with(|| ModelState::new(SimModelConfig::unlimited(model_id)));
        model
            .injected
            .extend(std::iter::repeat_n(fault, count as usize));
    }
}

/// An answer the simulator will give, with its latency profile.
struct Answer<W> {
    work: W,
    ttft: Duration,
    per_token: Duration,
    fault: Option<Fault>,
}

impl<W: Work> Answer<W> {
    /// How long the whole answer takes.
    fn duration(&self) -> Duration {
        let (_, output_tokens) = self.work.tokens();
        self.ttft + self.per_token * u32::try_from(output_tokens).unwrap_or(u32::MAX)
    }
}

/// Waits `d`; not at all when it is zero, which tokio's timer would round
/// up to its next millisecond tick.
async fn pause(d: Duration) {
    if !d.is_zero() {
        tokio::time::sleep(d).await;
    }
}

/// A configured simulator, ready to start.
pub struct Simulator {
    state: Arc<SimState>,
}

impl Simulator {
    /// A simulator for `config` whose quotas run on `clock`.
    pub fn new(config: &SimConfig, clock: SharedClock) -> Self {
        let models = config
            .models
            .iter()
            .map(|m| (m.model_id.clone(), ModelState::new(m.clone())))
            .collect();
        Self {
            state: Arc::new(SimState {
                clock,
                stall: Duration::from_millis(config.stall_ms),
                accept_any_model: config.accept_any_model,
                models: Mutex::new(models),
                abandoned_streams: Arc::new(AtomicU64::new(0)),
                refused_keys: Mutex::new(HashMap::new()),
                prompt_cache: Mutex::new(HashMap::new()),
                traceparents: Mutex::default(),
                request_ids: AtomicU64::new(1),
                calls: AtomicU64::new(0),
            }),
        }
    }

    /// The simulator's routes, for embedding or serving.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/model/{model_id}/converse", post(converse))
            .route("/model/{model_id}/converse-stream", post(converse_stream))
            .route("/model/{model_id}/invoke", post(invoke))
            .route(
                "/model/{model_id}/invoke-with-response-stream",
                post(invoke_stream),
            )
            .route("/model/{model_id}/count-tokens", post(count_tokens))
            .route("/sim/faults", post(inject_faults))
            .route("/sim/stats", get(stats))
            .with_state(self.state.clone())
    }

    /// Serves on `listener` in a background task.
    pub fn start(self, listener: TcpListener) -> std::io::Result<SimHandle> {
        let addr = listener.local_addr()?;
        let app = self.router();
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "simulator stopped");
            }
        });
        Ok(SimHandle {
            addr,
            state: self.state,
            task,
        })
    }

    /// Binds `addr` and serves in a background task.
    pub async fn bind(self, addr: SocketAddr) -> std::io::Result<SimHandle> {
        let listener = TcpListener::bind(addr).await?;
        self.start(listener)
    }
}

/// A running simulator. Dropping it stops the server.
pub struct SimHandle {
    addr: SocketAddr,
    state: Arc<SimState>,
    task: JoinHandle<()>,
}

impl SimHandle {
    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its base URL, for a deployment's `endpoint_url`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Makes the next `count` calls to `model_id` end in `fault`.
    pub fn inject(&self, model_id: &str, fault: Fault, count: u32) {
        self.state.inject(model_id, fault, count);
    }

    /// Drops the faults injected for `model_id` that no call has met yet.
    pub fn clear_injected(&self, model_id: &str) {
        let mut models = self.state.models.lock().expect("simulator state poisoned");
        if let Some(model) = models.get_mut(model_id) {
            model.injected.clear();
        }
    }

    /// What `model_id` has seen so far.
    pub fn counts(&self, model_id: &str) -> ModelCounts {
        let models = self.state.models.lock().expect("simulator state poisoned");
        models.get(model_id).map(|m| m.counts).unwrap_or_default()
    }

    /// Refuses calls signed with `access_key` from now on, as Bedrock
    /// refuses an expired session or a role without access.
    pub fn refuse_access_key(&self, access_key: &str, refusal: KeyRefusal) {
        self.state
            .refused_keys
            .lock()
            .expect("simulator state poisoned")
            .insert(access_key.to_owned(), refusal);
    }

    /// The `traceparent` headers of the last calls that carried one
    /// (at most 64), oldest first.
    pub fn traceparents(&self) -> Vec<String> {
        let kept = self
            .state
            .traceparents
            .lock()
            .expect("simulator state poisoned");
        kept.iter().cloned().collect()
    }

    /// Streams whose client (the gateway) closed the connection before the
    /// stream's end.
    pub fn abandoned_streams(&self) -> u64 {
        self.state.abandoned_streams.load(Ordering::SeqCst)
    }

    /// Waits until the server task ends (it runs until dropped).
    pub async fn wait(mut self) {
        let _ = (&mut self.task).await;
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_region_comes_from_the_signature_scope() {
        let mut headers = HeaderMap::new();
        assert_eq!(signed_region(&headers), "us-east-1");
        headers.insert(
            "authorization",
            HeaderValue::from_static(
                "AWS4-HMAC-SHA256 Credential=AKID/20261123/eu-west-1/bedrock/aws4_request, SignedHeaders=host, Signature=abc",
            ),
        );
        assert_eq!(signed_region(&headers), "eu-west-1");
    }
}
