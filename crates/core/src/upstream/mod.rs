//! The Bedrock client pool, one client per deployment built once: every
//! call (Converse, InvokeModel and their streams) goes out signed over a
//! pooled hyper client (`signed`), with explicit timeouts and no retries of
//! its own (the router decides what to retry, and where).
//!
//! Requests and responses pass through as raw bytes: the client's Converse
//! JSON becomes the upstream body and Bedrock's bytes (a stream's frames
//! included, `events`) come back unchanged, so nothing a client sends
//! (tools, images, guardrails) is lost in translation. `classify` turns
//! errors into outcomes.

mod classify;
mod credentials;
mod events;
mod signed;
mod sigv4;
mod usage;

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;

pub use classify::AttemptFailure;
pub use credentials::DeploymentCredentials;
pub(crate) use events::{exception_of, header};
pub use signed::{ConnectionPools, TransportError};
pub use usage::TokenUsage;

use crate::config::{DeploymentConfig, Limits};
use crate::outcome::OutcomeKind;
use events::StreamShape;
use signed::SignedClient;

/// Why a deployment's client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("deployment `{deployment}`")]
    Transport {
        deployment: String,
        #[source]
        source: TransportError,
    },
}

/// The pooled client of one deployment.
#[derive(Debug, Clone)]
pub struct Upstream {
    signed: SignedClient,
    credentials: DeploymentCredentials,
    model_id: String,
    attempt_timeout: Duration,
    stream_idle_timeout: Duration,
}

/// A finished Converse answer, as Bedrock's bytes.
#[derive(Debug)]
pub struct ConverseReply {
    /// The JSON body, unchanged.
    pub body: Bytes,
}

/// A finished InvokeModel answer, as the model's bytes.
#[derive(Debug)]
pub struct InvokeReply {
    /// The model's JSON, unchanged.
    pub body: Bytes,
    /// Its content type.
    pub content_type: String,
    /// The input tokens Bedrock counted (its `x-amzn-bedrock-input-token-count`).
    pub input_tokens: Option<u64>,
    /// The output tokens Bedrock counted (its `x-amzn-bedrock-output-token-count`).
    pub output_tokens: Option<u64>,
}

impl InvokeReply {
    /// The tokens the answer used: the Anthropic body's usage (which tells
    /// cache reads and writes apart), else Bedrock's counting headers.
    pub fn usage(&self) -> Option<TokenUsage> {
        let counted = self.input_tokens.map(|input| TokenUsage {
            input,
            output: self.output_tokens.unwrap_or(0),
            ..TokenUsage::default()
        });
        TokenUsage::of_invoke(&self.body, counted)
    }
}

/// A stream (ConverseStream or InvokeModelWithResponseStream) that has
/// produced its first event.
pub struct OpenStream {
    /// The raw event-stream frames, starting with the first one. Bounded:
    /// a slow client slows the reading from Bedrock. A stream that breaks
    /// without an exception frame (silence, a reset) ends with an `Err`, so
    /// the client's body breaks instead of ending cleanly. Dropping it
    /// closes the upstream stream.
    pub frames: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
    /// Resolves when the stream ends, with how it ended.
    pub finished: tokio::task::JoinHandle<StreamEnd>,
}

/// How a stream that had started ended.
#[derive(Debug, Clone)]
pub struct StreamEnd {
    /// Success, or the failure in mid-stream.
    pub kind: OutcomeKind,
    /// Bedrock's words for a failure.
    pub detail: Option<String>,
    /// The tokens the stream's last event reported, to settle the quota
    /// with instead of the reservation.
    pub usage: Option<TokenUsage>,
}

impl Upstream {
    /// Builds the client for `deployment`, on the connections `pools` keeps
    /// for its endpoint. `endpoint_override` replaces its `endpoint_url`
    /// (the in-process simulator uses it).
    pub fn new(
        deployment: &DeploymentConfig,
        limits: &Limits,
        endpoint_override: Option<&str>,
        pools: &mut ConnectionPools,
    ) -> Result<Self, UpstreamError> {
        let credentials = DeploymentCredentials::new(
            &deployment.credentials,
            deployment.assume_role.as_ref(),
            &deployment.region,
        );
        let endpoint = endpoint_override.or(deployment.endpoint_url.as_deref());
        let signed = SignedClient::new(endpoint, &deployment.region, credentials.clone(), pools)
            .map_err(|source| UpstreamError::Transport {
                deployment: deployment.id.clone(),
                source,
            })?;
        Ok(Self {
            signed,
            credentials,
            model_id: deployment.model_id.clone(),
            attempt_timeout: Duration::from_millis(limits.attempt_timeout_ms),
            stream_idle_timeout: Duration::from_millis(limits.stream_idle_timeout_ms),
        })
    }

    /// Where this deployment's credentials come from.
    pub fn credentials(&self) -> &DeploymentCredentials {
        &self.credentials
    }

    /// The Bedrock model id (or inference profile) this client calls.
    pub fn model_id(&self) -> &str {
        &self.model_id
    }

    /// One Converse attempt with the client's raw JSON `body`.
    pub async fn converse(&self, body: Bytes) -> Result<ConverseReply, AttemptFailure> {
        let answer = self.signed_call("converse", body).await?;
        Ok(ConverseReply { body: answer.body })
    }

    /// One signed call of `operation` within the attempt timeout.
    async fn signed_call(
        &self,
        operation: &str,
        body: Bytes,
    ) -> Result<signed::Answer, AttemptFailure> {
        let call = self.signed.post(&self.model_id, operation, body);
        in_time(
            self.attempt_timeout,
            "no answer within the attempt timeout",
            call,
        )
        .await
    }

    /// One ConverseStream attempt. Returns once the first event has arrived,
    /// so a stream that fails before it can still fall back.
    pub async fn converse_stream(&self, body: Bytes) -> Result<OpenStream, AttemptFailure> {
        self.stream("converse-stream", body, StreamShape::Converse)
            .await
    }

    /// One InvokeModel attempt: `body` goes to the model as it is, and its
    /// answer comes back as it is.
    pub async fn invoke(&self, body: Bytes) -> Result<InvokeReply, AttemptFailure> {
        let answer = self.signed_call("invoke", body).await?;
        Ok(InvokeReply {
            body: answer.body,
            content_type: answer
                .content_type
                .unwrap_or_else(|| "application/json".to_owned()),
            input_tokens: answer.input_tokens,
            output_tokens: answer.output_tokens,
        })
    }

    /// One CountTokens call for the InvokeModel body `body`: the input
    /// tokens Bedrock counts in it.
    pub async fn count_tokens(&self, body: &[u8]) -> Result<u64, AttemptFailure> {
        #[derive(serde::Deserialize)]
        struct Counted {
            #[serde(rename = "inputTokens")]
            input_tokens: u64,
        }
        let request = serde_json::json!({
            "input": { "invokeModel": { "body": aws_smithy_types::base64::encode(body) } }
        });
        let answer = self
            .signed_call("count-tokens", Bytes::from(request.to_string()))
            .await?;
        serde_json::from_slice::<Counted>(&answer.body)
            .map(|c| c.input_tokens)
            .map_err(|_| {
                AttemptFailure::server_error("the token count is not JSON with inputTokens")
            })
    }

    /// One InvokeModelWithResponseStream attempt. Returns once the first
    /// event has arrived, like [`converse_stream`](Self::converse_stream).
    pub async fn invoke_stream(&self, body: Bytes) -> Result<OpenStream, AttemptFailure> {
        self.stream("invoke-with-response-stream", body, StreamShape::Invoke)
            .await
    }

    /// Opens the stream `operation` and reads it to its first event, all
    /// within the attempt timeout; then its idle timeout holds between chunks.
    async fn stream(
        &self,
        operation: &str,
        body: Bytes,
        shape: StreamShape,
    ) -> Result<OpenStream, AttemptFailure> {
        let open = async {
            let events = self
                .signed
                .open_stream(&self.model_id, operation, body)
                .await?;
            events::follow(events, shape, self.stream_idle_timeout).await
        };
        in_time(
            self.attempt_timeout,
            "no first event within the attempt timeout",
            open,
        )
        .await
    }
}

/// `call`'s result, or a timeout failure saying `late` past `limit`.
async fn in_time<T>(
    limit: Duration,
    late: &str,
    call: impl Future<Output = Result<T, AttemptFailure>>,
) -> Result<T, AttemptFailure> {
    tokio::time::timeout(limit, call)
        .await
        .unwrap_or_else(|_| Err(AttemptFailure::timeout(late)))
}
