//! `POST /v1/embeddings` for model groups of Bedrock embedding deployments:
//! Amazon Titan Text Embeddings (one text an InvokeModel call, so a list is
//! several calls) and Cohere Embed (up to 96 texts a call). The request
//! takes the same path as a chat one: fair queue, router, policies, quotas
//! and fallbacks. Every upstream call is admitted as a request would be
//! (the deployment's RPM, TPM and concurrency), not the request once. Every
//! text of one request is embedded by one model, so the vectors share one
//! space: a fallback to a deployment of the same model makes only the calls
//! still to make, one to another model starts over.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::{IntoResponse, Response};

use futures::StreamExt;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::super::error::unreadable_body;
use super::super::extract::{routed_headers, CallFacts};
use super::super::AppState;
use super::request::{check_unmapped, unsupported, Unsupported};
use super::{error_response, model_group, parse_body, refuse};
use crate::router::MoreCalls;
use crate::service::{estimate_tokens, Caller, ErrorCode, GatewayError, ModelCall, Operation};
use crate::upstream::{AttemptFailure, TokenUsage, Upstream};

/// Most inputs one request may hold (OpenAI's own limit).
const MAX_INPUTS: usize = 2_048;
/// Cohere Embed takes at most this many texts a call.
const COHERE_BATCH: usize = 96;
/// Calls in flight at once for one request's texts.
const CALLS_IN_FLIGHT: usize = 8;

/// The embedding families Bedrock serves, as the gateway calls them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EmbeddingModel {
    Titan,
    Cohere,
}

impl EmbeddingModel {
    /// The family of a deployment's model id (cross-region prefixes too).
    fn of(model_id: &str) -> Option<Self> {
        if model_id.contains("titan-embed") {
            Some(Self::Titan)
        } else if model_id.contains("cohere.embed") {
            Some(Self::Cohere)
        } else {
            None
        }
    }
}

/// A `POST /v1/embeddings` body.
#[derive(Debug, Deserialize)]
struct EmbeddingsRequest {
    model: String,
    input: Value,
    #[serde(default)]
    encoding_format: Option<String>,
    #[serde(default)]
    dimensions: Option<u32>,
    #[serde(default)]
    user: Option<String>,
    /// Cohere's `input_type` (`search_document` by default, or
    /// `search_query`, `classification`, `clustering`); Titan ignores it.
    #[serde(default)]
    input_type: Option<String>,
    #[serde(flatten)]
    other: Map<String, Value>,
}

/// What one request asks every attempt to embed.
#[derive(Debug)]
struct EmbeddingJob {
    texts: Vec<String>,
    dimensions: Option<u32>,
    input_type: String,
    /// The batches earlier attempts finished.
    done: Mutex<Finished>,
}

/// Batches an attempt finished, by index, and the model that made them: a
/// fallback to a deployment of the same model makes only the calls still
/// to make (another model's vectors would not compare with these).
#[derive(Debug, Default)]
struct Finished {
    model_id: String,
    batches: HashMap<usize, Embedded>,
}

/// The vectors, in input order, and the input tokens Bedrock counted.
#[derive(Debug)]
struct Embedded {
    vectors: Vec<Vec<f64>>,
    /// Tokens of every call.
    tokens: u64,
    /// Tokens of the call the attempt's own ticket covered (each further
    /// call settled its own share of the quota).
    attempt_tokens: u64,
}

impl EmbeddingsRequest {
    fn texts(&self) -> Result<Vec<String>, Unsupported> {
        let texts: Vec<String> = match &self.input {
            Value::String(s) => vec![s.clone()],
            Value::Array(items) => items
                .iter()
                .map(|i| i.as_str().map(str::to_owned))
                .collect::<Option<_>>()
                .ok_or_else(|| {
                    unsupported(
                        "input",
                        "must be a string or a list of strings: token arrays are not supported, since Bedrock's embedding models take text",
                    )
                })?,
            _ => return Err(unsupported("input", "must be a string or a list of strings")),
        };
        if texts.is_empty() || texts.len() > MAX_INPUTS {
            return Err(unsupported(
                "input",
                format!("must hold 1 to {MAX_INPUTS} texts, not {}", texts.len()),
            ));
        }
        if let Some(i) = texts.iter().position(|t| t.trim().is_empty()) {
            return Err(unsupported(format!("input[{i}]"), "is empty"));
        }
        Ok(texts)
    }
}

/// `POST /v1/embeddings`
pub async fn embeddings(
    State(state): State<Arc<AppState>>,
    facts: CallFacts,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let request_id = facts.request_id.clone();
    let trace = facts.trace.clone();
    let checked = facts.checked().and_then(|(caller, max_wait_ms)| {
        let body = body.map_err(|r| unreadable_body(&r))?;
        check(&state, caller, max_wait_ms, &request_id, body)
    });
    let (job, mut call, base64, model) = match checked {
        Ok(checked) => checked,
        Err(e) => return error_response(&e, &request_id),
    };
    call.trace = trace;
    let delivered = match state.service.call(call, &job).await {
        Err(e) => return error_response(&e, &request_id),
        Ok(admitted) => {
            let tokens = admitted.routed.value.attempt_tokens;
            admitted.delivered(Some(TokenUsage::input(tokens)))
        }
    };
    let Embedded {
        vectors, tokens, ..
    } = &delivered.value;
    let data: Vec<Value> = vectors
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let embedding = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| (*x as f32).to_le_bytes()).collect();
                json!(aws_smithy_types::base64::encode(bytes))
            } else {
                json!(v)
            };
            json!({ "object": "embedding", "index": i, "embedding": embedding })
        })
        .collect();
    let mut response = axum::Json(json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": { "prompt_tokens": tokens, "total_tokens": tokens },
    }))
    .into_response();
    routed_headers(
        &mut response,
        &delivered.request_id,
        &delivered.deployment,
        delivered.attempts,
    );
    response
}

/// Parses and checks the body: the job, the call to make, whether to
/// answer in base64, and the model group.
fn check(
    state: &AppState,
    caller: Caller,
    max_wait_ms: Option<u64>,
    request_id: &str,
    body: Bytes,
) -> Result<(EmbeddingJob, ModelCall, bool, String), GatewayError> {
    let request: EmbeddingsRequest = parse_body(&body, "an embeddings request")?;
    check_unmapped(&request.other, "").map_err(refuse)?;
    let group = model_group(state, &request.model)?;
    let chat_models: Vec<&str> = state
        .service
        .router()
        .group(&group)
        .map(|g| {
            g.members
                .iter()
                .map(|d| d.config.model_id.as_str())
                .filter(|m| EmbeddingModel::of(m).is_none())
                .collect()
        })
        .unwrap_or_default();
    if !chat_models.is_empty() {
        let message = format!(
            "model group `{group}` holds deployments that are not embedding models ({}); /v1/embeddings needs a group of Titan or Cohere embedding deployments",
            chat_models.join(", ")
        );
        return Err(GatewayError::refused_param(
            ErrorCode::NotAnEmbeddingModel,
            message,
            "model",
        ));
    }
    let base64 = match request.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(_) => {
            return Err(refuse(unsupported(
                "encoding_format",
                "must be float or base64",
            )))
        }
    };
    let texts = request.texts().map_err(refuse)?;
    let input_bytes: usize = texts.iter().map(String::len).sum();
    let call = ModelCall {
        group: group.clone(),
        caller: caller.or_named(request.user.as_deref())?,
        request_id: request_id.to_owned(),
        max_wait_ms,
        estimated_tokens: estimate_tokens(input_bytes, Some(0)),
        body,
        trace: None,
    };
    let job = EmbeddingJob {
        texts,
        dimensions: request.dimensions,
        input_type: request
            .input_type
            .unwrap_or_else(|| "search_document".to_owned()),
        done: Mutex::default(),
    };
    Ok((job, call, base64, group))
}

/// Each attempt embeds every text on one deployment (the body was only
/// checked: the texts travel in the job).
impl Operation for EmbeddingJob {
    const NAME: &'static str = "embeddings";
    type Reply = Embedded;

    async fn attempt(
        &self,
        upstream: Upstream,
        _body: Bytes,
        more: MoreCalls,
    ) -> Result<Embedded, AttemptFailure> {
        self.embed(&upstream, &more).await
    }
}

impl EmbeddingJob {
    /// Embeds every text on `upstream`: the batches no earlier attempt
    /// finished on the same model, as many at once as the attempt has
    /// places of concurrency (at most 8), each call after the first
    /// admitted on its own.
    async fn embed(
        &self,
        upstream: &Upstream,
        more: &MoreCalls,
    ) -> Result<Embedded, AttemptFailure> {
        let model = EmbeddingModel::of(upstream.model_id()).ok_or_else(|| {
            AttemptFailure::server_error("the deployment is not an embedding model")
        })?;
        let batch = match model {
            EmbeddingModel::Titan => 1,
            EmbeddingModel::Cohere => COHERE_BATCH,
        };
        let batches = self.texts.len().div_ceil(batch);
        let todo: Vec<usize> = {
            let mut done = self.done.lock().expect("embedding batches poisoned");
            if done.model_id != upstream.model_id() {
                *done = Finished {
                    model_id: upstream.model_id().to_owned(),
                    batches: HashMap::new(),
                };
            }
            (0..batches)
                .filter(|i| !done.batches.contains_key(i))
                .collect()
        };
        let lanes = more.lanes(CALLS_IN_FLIGHT);
        // Owned batches: a stream over borrowed chunks trips the compiler's
        // higher-ranked lifetime check for Send futures.
        let calls: Vec<_> = todo
            .into_iter()
            .enumerate()
            .map(|(n, index)| {
                let texts =
                    self.texts[index * batch..((index + 1) * batch).min(self.texts.len())].to_vec();
                async move {
                    // The attempt's own ticket covers its first call.
                    let grant = match n {
                        0 => None,
                        _ => {
                            let bytes: usize = texts.iter().map(String::len).sum();
                            Some(more.admit(bytes.div_ceil(4) as u64).await?)
                        }
                    };
                    let embedded = self.call(upstream, model, texts).await;
                    let covered = grant.is_none();
                    if let Some(grant) = grant {
                        grant.finish(
                            embedded.is_ok(),
                            embedded.as_ref().ok().map(|e| TokenUsage::input(e.tokens)),
                        );
                    }
                    embedded.map(|mut e| {
                        e.attempt_tokens = if covered { e.tokens } else { 0 };
                        (index, e)
                    })
                }
            })
            .collect();
        let mut finished = futures::stream::iter(calls).buffer_unordered(lanes.count());
        let mut attempt_tokens = 0;
        while let Some(result) = finished.next().await {
            let (index, embedded) = result?;
            attempt_tokens += embedded.attempt_tokens;
            self.done
                .lock()
                .expect("embedding batches poisoned")
                .batches
                .insert(index, embedded);
        }
        drop(finished);
        drop(lanes);
        let mut done = self.done.lock().expect("embedding batches poisoned");
        let mut all = Embedded {
            vectors: Vec::with_capacity(self.texts.len()),
            tokens: 0,
            attempt_tokens,
        };
        for index in 0..batches {
            let b = done
                .batches
                .remove(&index)
                .expect("every batch is finished");
            all.vectors.extend(b.vectors);
            all.tokens += b.tokens;
        }
        Ok(all)
    }

    /// One InvokeModel call for `texts`.
    async fn call(
        &self,
        upstream: &Upstream,
        model: EmbeddingModel,
        texts: Vec<String>,
    ) -> Result<Embedded, AttemptFailure> {
        let mut body = match model {
            EmbeddingModel::Titan => json!({ "inputText": texts[0] }),
            EmbeddingModel::Cohere => json!({
                "texts": texts,
                "input_type": self.input_type,
                "embedding_types": ["float"],
            }),
        };
        if let Some(d) = self.dimensions {
            let field = match model {
                EmbeddingModel::Titan => "dimensions",
                EmbeddingModel::Cohere => "output_dimension",
            };
            body[field] = json!(d);
        }
        let reply = upstream.invoke(Bytes::from(body.to_string())).await?;
        let answer: Value = serde_json::from_slice(&reply.body)
            .map_err(|_| AttemptFailure::server_error("the embedding answer is not JSON"))?;
        let vectors: Option<Vec<Vec<f64>>> = match model {
            EmbeddingModel::Titan => vector(answer.get("embedding")).map(|v| vec![v]),
            EmbeddingModel::Cohere => answer
                .pointer("/embeddings/float")
                .or_else(|| answer.get("embeddings"))
                .and_then(Value::as_array)
                .and_then(|list| list.iter().map(|v| vector(Some(v))).collect()),
        };
        let vectors = vectors
            .filter(|v| v.len() == texts.len())
            .ok_or_else(|| AttemptFailure::server_error("the embedding answer has no vectors"))?;
        // Bedrock's count; a rough 4 bytes a token only if it sent none.
        let tokens = answer
            .get("inputTextTokenCount")
            .and_then(Value::as_u64)
            .or(reply.input_tokens)
            .unwrap_or_else(|| texts.iter().map(|t| t.len().div_ceil(4) as u64).sum());
        Ok(Embedded {
            vectors,
            tokens,
            attempt_tokens: tokens,
        })
    }
}

fn vector(value: Option<&Value>) -> Option<Vec<f64>> {
    value?.as_array()?.iter().map(Value::as_f64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(input: Value) -> EmbeddingsRequest {
        serde_json::from_value(json!({"model": "m", "input": input})).unwrap()
    }

    #[test]
    fn inputs_are_texts() {
        assert_eq!(request(json!("a")).texts().unwrap(), ["a"]);
        assert_eq!(request(json!(["a", "b"])).texts().unwrap(), ["a", "b"]);
        assert_eq!(request(json!([[1, 2]])).texts().unwrap_err().param, "input");
        assert_eq!(
            request(json!(["a", " "])).texts().unwrap_err().param,
            "input[1]"
        );
        assert_eq!(request(json!([])).texts().unwrap_err().param, "input");
    }

    #[test]
    fn families_are_read_from_model_ids() {
        assert_eq!(
            EmbeddingModel::of("amazon.titan-embed-text-v2:0"),
            Some(EmbeddingModel::Titan)
        );
        assert_eq!(
            EmbeddingModel::of("us.cohere.embed-v4:0"),
            Some(EmbeddingModel::Cohere)
        );
        assert_eq!(
            EmbeddingModel::of("anthropic.claude-3-haiku-20240307-v1:0"),
            None
        );
    }
}
