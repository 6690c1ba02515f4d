//! The Bedrock client pool, one client per deployment built once: Converse
//! and InvokeModel go out signed over a pooled hyper client (`signed`);
//! the two streams through `aws-sdk-bedrockruntime`, with the SDK's retries
//! off (the router decides what to retry, and where) and explicit timeouts.
//!
//! Requests and responses pass through as raw bytes: the client's Converse
//! JSON becomes the upstream body and Bedrock's bytes come back unchanged,
//! so nothing a client sends (tools, images, guardrails) is lost in
//! translation. `classify` turns errors into outcomes.

mod classify;
mod credentials;
mod passthrough;
mod signed;
mod sigv4;
mod usage;

use std::time::Duration;

use aws_sdk_bedrockruntime::config::retry::RetryConfig;
use aws_sdk_bedrockruntime::config::timeout::TimeoutConfig;
use aws_sdk_bedrockruntime::config::{BehaviorVersion, Region};
use std::future::Future;

use aws_sdk_bedrockruntime::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_bedrockruntime::primitives::event_stream::EventReceiver;
use aws_sdk_bedrockruntime::primitives::Blob;
use aws_sdk_bedrockruntime::Client;
use aws_smithy_runtime_api::http::Response as HttpResponse;
use bytes::Bytes;
use futures::channel::mpsc;

pub use classify::AttemptFailure;
pub use credentials::DeploymentCredentials;
pub use signed::TransportError;
pub use usage::TokenUsage;

use crate::config::{DeploymentConfig, Limits};
use crate::outcome::OutcomeKind;
use passthrough::{RawRequestBody, StreamTee, TraceHeaders};
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
    client: Client,
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

/// Frames held for a client that reads slower than Bedrock sends.
const CLIENT_BUFFER_FRAMES: usize = 32;

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
    /// Builds the client for `deployment`. `endpoint_override` replaces its
    /// `endpoint_url` (the in-process simulator uses it).
    pub fn new(
        deployment: &DeploymentConfig,
        limits: &Limits,
        endpoint_override: Option<&str>,
    ) -> Result<Self, UpstreamError> {
        let credentials = DeploymentCredentials::new(
            &deployment.credentials,
            deployment.assume_role.as_ref(),
            &deployment.region,
        );
        let endpoint = endpoint_override.or(deployment.endpoint_url.as_deref());
        let signed = SignedClient::new(
            endpoint,
            &deployment.region,
            credentials.clone(),
            Duration::from_millis(limits.connect_timeout_ms),
        )
        .map_err(|source| UpstreamError::Transport {
            deployment: deployment.id.clone(),
            source,
        })?;
        let mut builder = aws_sdk_bedrockruntime::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(deployment.region.clone()))
            .credentials_provider(credentials.provider())
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_millis(limits.connect_timeout_ms))
                    .read_timeout(Duration::from_millis(limits.attempt_timeout_ms))
                    .build(),
            );
        if let Some(url) = endpoint {
            builder = builder.endpoint_url(url);
        }
        Ok(Self {
            client: Client::from_conf(builder.build()),
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
        match tokio::time::timeout(self.attempt_timeout, call).await {
            Err(_) => Err(AttemptFailure::timeout(
                "no answer within the attempt timeout",
            )),
            Ok(result) => result,
        }
    }

    /// Awaits an SDK call within the attempt timeout; an error is classified.
    async fn in_time<T, E>(
        &self,
        call: impl Future<Output = Result<T, SdkError<E, HttpResponse>>>,
    ) -> Result<T, AttemptFailure>
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        match tokio::time::timeout(self.attempt_timeout, call).await {
            Err(_) => Err(AttemptFailure::timeout(
                "no answer within the attempt timeout",
            )),
            Ok(Err(e)) => Err(classify::sdk_error(&e)),
            Ok(Ok(output)) => Ok(output),
        }
    }

    /// One ConverseStream attempt. Returns once the first event has arrived,
    /// so a stream that fails before it can still fall back.
    pub async fn converse_stream(&self, body: Bytes) -> Result<OpenStream, AttemptFailure> {
        let (tx, raw) = mpsc::unbounded();
        let call = self
            .client
            .converse_stream()
            .model_id(&self.model_id)
            .customize()
            .interceptor(RawRequestBody::new(body))
            .interceptor(TraceHeaders::current())
            .interceptor(StreamTee::new(tx))
            .send();
        let output = self.in_time(call).await?;
        self.follow(
            output.stream,
            raw,
            classify::converse_stream_exception,
            TokenUsage::of_converse_stream,
        )
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
        let (tx, raw) = mpsc::unbounded();
        let call = self
            .client
            .invoke_model_with_response_stream()
            .model_id(&self.model_id)
            .content_type("application/json")
            .accept("application/json")
            .body(Blob::new(body))
            .customize()
            .interceptor(TraceHeaders::current())
            .interceptor(StreamTee::new(tx))
            .send();
        let output = self.in_time(call).await?;
        self.follow(
            output.body,
            raw,
            classify::invoke_stream_exception,
            TokenUsage::of_invoke_stream,
        )
        .await
    }

    /// Waits for a stream's first event (so a stream that fails before it
    /// can still fall back), then follows the rest in a task that says how
    /// it ended. The SDK pulls bytes through the tee as it decodes them.
    async fn follow<T, E>(
        &self,
        mut events: EventReceiver<T, E>,
        raw: mpsc::UnboundedReceiver<Bytes>,
        exception: fn(&E) -> Option<&'static str>,
        usage: fn(&T) -> Option<TokenUsage>,
    ) -> Result<OpenStream, AttemptFailure>
    where
        T: Send + 'static,
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        // The SDK pulls bytes through the tee as it decodes; the first event
        // proves the stream is good before anything reaches the client.
        let first = match tokio::time::timeout(self.attempt_timeout, events.recv()).await {
            Err(_) => {
                return Err(AttemptFailure::timeout(
                    "no first event within the attempt timeout",
                ))
            }
            Ok(Err(e)) => return Err(classify::stream_error(&e, exception)),
            Ok(Ok(None)) => {
                return Err(AttemptFailure::server_error(
                    "the stream ended before its first event",
                ))
            }
            Ok(Ok(Some(first))) => first,
        };
        let idle = self.stream_idle_timeout;
        let (to_client, frames) = tokio::sync::mpsc::channel(CLIENT_BUFFER_FRAMES);
        let finished = tokio::spawn(async move {
            let mut raw = raw;
            let mut used = usage(&first);
            let end = loop {
                // Forward what the SDK has decoded so far; waiting here for
                // the client's room is the backpressure on Bedrock.
                while let Ok(frame) = raw.try_recv() {
                    if to_client.send(Ok(frame)).await.is_err() {
                        return client_left();
                    }
                }
                let next = tokio::select! {
                    () = to_client.closed() => return client_left(),
                    next = tokio::time::timeout(idle, events.recv()) => next,
                };
                match next {
                    Ok(Ok(Some(event))) => {
                        used = usage(&event).or(used);
                        continue;
                    }
                    Ok(Ok(None)) => {
                        while let Ok(frame) = raw.try_recv() {
                            if to_client.send(Ok(frame)).await.is_err() {
                                return client_left();
                            }
                        }
                        return StreamEnd {
                            kind: OutcomeKind::Success,
                            detail: None,
                            usage: used,
                        };
                    }
                    Err(_) => break AttemptFailure::timeout("the stream went silent"),
                    Ok(Err(e)) => {
                        let failure = classify::stream_error(&e, exception);
                        // An exception frame came through: it is the client's error event.
                        if matches!(e, SdkError::ServiceError(_)) {
                            while let Ok(frame) = raw.try_recv() {
                                let _ = to_client.send(Ok(frame)).await;
                            }
                            return StreamEnd {
                                kind: failure.kind,
                                detail: Some(failure.detail),
                                usage: used,
                            };
                        }
                        break failure;
                    }
                }
            };
            // No exception frame to tell the client: break its body.
            let _ = to_client
                .send(Err(std::io::Error::other(end.detail.clone())))
                .await;
            StreamEnd {
                kind: end.kind,
                detail: Some(end.detail),
                usage: used,
            }
        });
        Ok(OpenStream { frames, finished })
    }
}

/// The client went away mid-stream: the upstream stream is dropped (its
/// connection closes) and the deployment is not blamed.
fn client_left() -> StreamEnd {
    StreamEnd {
        kind: OutcomeKind::Success,
        detail: Some("the client left mid-stream; the upstream stream was closed".into()),
        // Unknown: the reservation settles it.
        usage: None,
    }
}
