//! Converse and InvokeModel without the SDK's orchestrator: the request is
//! signed with SigV4 (`super::sigv4`, checked against the SDK's own signer)
//! and sent over a pooled hyper client. The SDK's pipeline (runtime plugins, config bags,
//! interceptors, throughput checks) cost about a quarter of the gateway's
//! CPU per request under load (BENCHMARKS.md, "Overhead under many
//! connections"), and a pass-through needs none of it: the body goes out as
//! the client sent it and Bedrock's bytes come back unchanged.
//!
//! Streams take the same path: their event-stream body is handed to
//! `super::events`, which passes the frames through as they came.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use super::classify::{kind_of_code, kind_of_status, AttemptFailure};
use super::credentials::DeploymentCredentials;
use super::sigv4::Signer;
use crate::error_chain::render;
use crate::outcome::OutcomeKind;

/// What a path label keeps unescaped: RFC 3986's unreserved characters, as
/// the SDK encodes `{modelId}` (`:` and `/` of ids and ARNs are escaped).
const LABEL: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Bedrock's signing name.
const SERVICE: &str = "bedrock";

/// The connection pool: TLS for Bedrock, plain HTTP for a local endpoint
/// (the simulator).
#[derive(Debug, Clone)]
enum Transport {
    Plain(Client<HttpConnector, Full<Bytes>>),
    Tls(Client<HttpsConnector<HttpConnector>, Full<Bytes>>),
}

/// The connection pools of a set of deployments, one per endpoint:
/// deployments on one endpoint (accounts, roles and models of one region)
/// share its connections, since each request is signed on its own. A
/// group of 64 deployments in 3 regions keeps 3 pools of connections, not 64.
#[derive(Debug)]
pub struct ConnectionPools {
    connect_timeout: Duration,
    by_endpoint: HashMap<String, Transport>,
}

impl ConnectionPools {
    /// No pools yet; connections are given up after `connect_timeout`.
    pub fn new(connect_timeout: Duration) -> Self {
        Self {
            connect_timeout,
            by_endpoint: HashMap::new(),
        }
    }

    /// The pool for `endpoint` (`scheme://host[:port][/path]`), made the first time.
    fn transport(&mut self, endpoint: &str) -> Result<Transport, TransportError> {
        if let Some(transport) = self.by_endpoint.get(endpoint) {
            return Ok(transport.clone());
        }
        let transport = Transport::new(endpoint, self.connect_timeout)?;
        self.by_endpoint
            .insert(endpoint.to_owned(), transport.clone());
        Ok(transport)
    }
}

impl Transport {
    fn new(endpoint: &str, connect_timeout: Duration) -> Result<Self, TransportError> {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(connect_timeout));
        http.set_nodelay(true);
        let builder = Client::builder(TokioExecutor::new());
        if endpoint.starts_with("http://") {
            Ok(Self::Plain(builder.build(http)))
        } else if endpoint.starts_with("https://") {
            http.enforce_http(false);
            let provider = rustls::crypto::aws_lc_rs::default_provider();
            let https = hyper_rustls::HttpsConnectorBuilder::new()
                .with_provider_and_native_roots(provider)
                .map_err(|source| TransportError::NoRoots {
                    endpoint: endpoint.to_owned(),
                    source,
                })?
                .https_only()
                .enable_http1()
                .wrap_connector(http);
            Ok(Self::Tls(builder.build(https)))
        } else {
            Err(TransportError::BadEndpoint(endpoint.to_owned()))
        }
    }
}

/// A signed HTTP client for one deployment's endpoint and credentials.
#[derive(Debug, Clone)]
pub struct SignedClient {
    transport: Transport,
    /// `scheme://host[:port]`, no trailing slash.
    endpoint: String,
    /// The endpoint's `host[:port]`, as signed.
    authority: String,
    /// The endpoint's path before `/model/...`: empty, or `/prefix`.
    base_path: String,
    signer: Arc<Signer>,
    credentials: DeploymentCredentials,
}

/// Why the client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("endpoint `{0}` is not an http:// or https:// URL")]
    BadEndpoint(String),
    #[error("no TLS root certificates could be loaded for {endpoint} (install the ca-certificates package)")]
    NoRoots {
        endpoint: String,
        #[source]
        source: std::io::Error,
    },
}

/// A successful answer: its body, content type and the tokens Bedrock's
/// headers counted.
#[derive(Debug)]
pub struct Answer {
    pub body: Bytes,
    pub content_type: Option<String>,
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
}

impl SignedClient {
    /// A client for `endpoint` (Bedrock's regional one when `None`), on
    /// the connections `pools` keeps for it.
    pub fn new(
        endpoint: Option<&str>,
        region: &str,
        credentials: DeploymentCredentials,
        pools: &mut ConnectionPools,
    ) -> Result<Self, TransportError> {
        let endpoint = endpoint
            .map(|e| e.trim_end_matches('/').to_owned())
            .unwrap_or_else(|| format!("https://bedrock-runtime.{region}.amazonaws.com"));
        let transport = pools.transport(&endpoint)?;
        let (authority, base_path) = split_endpoint(&endpoint);
        Ok(Self {
            transport,
            authority: authority.to_owned(),
            base_path: base_path.to_owned(),
            endpoint,
            signer: Arc::new(Signer::new(region, SERVICE)),
            credentials,
        })
    }

    /// `POST /model/{model_id}/{operation}` with `body`, its whole answer
    /// read; a non-2xx answer or a failure on the way is a classified
    /// [`AttemptFailure`].
    pub async fn post(
        &self,
        model_id: &str,
        operation: &str,
        body: Bytes,
    ) -> Result<Answer, AttemptFailure> {
        let (parts, body) = self
            .send(model_id, operation, body, Accept::Json)
            .await?
            .into_parts();
        let body = read_whole(body, parts.status).await?;
        if !parts.status.is_success() {
            return Err(error_answer(parts.status, &parts.headers, &body));
        }
        let header = |name: &str| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        Ok(Answer {
            content_type: header("content-type"),
            input_tokens: header("x-amzn-bedrock-input-token-count").and_then(|v| v.parse().ok()),
            output_tokens: header("x-amzn-bedrock-output-token-count").and_then(|v| v.parse().ok()),
            body,
        })
    }

    /// `POST /model/{model_id}/{operation}` for an event stream: the body
    /// of a 2xx answer, unread; a non-2xx answer is read and classified.
    pub async fn open_stream(
        &self,
        model_id: &str,
        operation: &str,
        body: Bytes,
    ) -> Result<Incoming, AttemptFailure> {
        let (parts, body) = self
            .send(model_id, operation, body, Accept::EventStream)
            .await?
            .into_parts();
        if parts.status.is_success() {
            return Ok(body);
        }
        let body = read_whole(body, parts.status).await?;
        Err(error_answer(parts.status, &parts.headers, &body))
    }

    /// Signs and sends the request; any status is an answer.
    async fn send(
        &self,
        model_id: &str,
        operation: &str,
        body: Bytes,
        accept: Accept,
    ) -> Result<http::Response<Incoming>, AttemptFailure> {
        let path = format!(
            "{}/model/{}/{operation}",
            self.base_path,
            utf8_percent_encode(model_id, LABEL)
        );
        // Credentials that cannot be had are this deployment's failure:
        // another deployment (another account or role) may have its own.
        let credentials = self.credentials.get().await.map_err(|e| AttemptFailure {
            kind: OutcomeKind::Unavailable,
            status: None,
            retry_after_ms: None,
            detail: format!("no credentials for this deployment: {}", render(&e)),
        })?;
        let request = self.signed(&path, body, &credentials, accept)?;
        match &self.transport {
            Transport::Plain(c) => c.request(request).await,
            Transport::Tls(c) => c.request(request).await,
        }
        .map_err(|e| AttemptFailure {
            kind: transport_failure(&e),
            status: None,
            retry_after_ms: None,
            detail: format!("could not reach Bedrock: {}", render(&e)),
        })
    }

    /// The request to `path`, signed for now.
    fn signed(
        &self,
        path: &str,
        body: Bytes,
        credentials: &Credentials,
        accept: Accept,
    ) -> Result<Request<Full<Bytes>>, AttemptFailure> {
        let signature =
            self.signer
                .sign(credentials, SystemTime::now(), &self.authority, path, &body);
        let mut request = Request::post(format!("{}{path}", self.authority_url()))
            .header("content-type", "application/json")
            .header("x-amz-date", signature.amz_date)
            .header("authorization", signature.authorization);
        if let Some(token) = signature.security_token {
            request = request.header("x-amz-security-token", token);
        }
        request = match accept {
            Accept::Json => request.header("accept", "application/json"),
            // The event stream carries the model's JSON: InvokeModel's
            // streaming form is told so by Bedrock's own header.
            Accept::EventStream => request
                .header("accept", "application/vnd.amazon.eventstream")
                .header("x-amzn-bedrock-accept", "application/json"),
        };
        let mut request = request.body(Full::new(body)).map_err(|e| {
            AttemptFailure::server_error(&format!("could not build the request: {e}"))
        })?;
        // Unsigned, so a trace header never changes what was signed.
        crate::telemetry::inject(request.headers_mut());
        Ok(request)
    }

    /// `scheme://host[:port]`, without the endpoint's path.
    fn authority_url(&self) -> &str {
        &self.endpoint[..self.endpoint.len() - self.base_path.len()]
    }
}

/// What the answer is asked to be.
#[derive(Debug, Clone, Copy)]
enum Accept {
    Json,
    EventStream,
}

/// Reads a whole answer's body.
async fn read_whole(body: Incoming, status: StatusCode) -> Result<Bytes, AttemptFailure> {
    Ok(body
        .collect()
        .await
        .map_err(|e| AttemptFailure {
            kind: OutcomeKind::Unavailable,
            status: Some(status.as_u16()),
            retry_after_ms: None,
            detail: format!("the answer broke off: {}", render(&e)),
        })?
        .to_bytes())
}

/// An endpoint URL's `host[:port]` as the `host` header carries it (a
/// scheme's default port left out, as hyper sends it) and its path (empty
/// or `/prefix`, no trailing slash).
fn split_endpoint(endpoint: &str) -> (&str, &str) {
    let (scheme, rest) = endpoint.split_once("://").unwrap_or(("", endpoint));
    let (authority, path) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
    let authority = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    let default_port = match scheme {
        "https" => ":443",
        "http" => ":80",
        _ => "",
    };
    let authority = match authority.strip_suffix(default_port) {
        Some(host) if !default_port.is_empty() => host,
        _ => authority,
    };
    (authority, path)
}

/// A non-2xx answer, classified like the SDK's errors: by the exception
/// name (`x-amzn-errortype`, or the body's `__type`/`code`), else the status.
fn error_answer(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> AttemptFailure {
    let json: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let code = headers
        .get("x-amzn-errortype")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(':').next().unwrap_or(v).to_owned())
        .or_else(|| {
            ["__type", "code"]
                .iter()
                .find_map(|k| json.get(*k).and_then(|v| v.as_str()))
                .map(|t| t.rsplit('#').next().unwrap_or(t).to_owned())
        });
    let message = ["message", "Message"]
        .iter()
        .find_map(|k| json.get(*k).and_then(|v| v.as_str()))
        .unwrap_or("(no message)");
    let retry_after_ms = headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| *s >= 0.0)
        .map(|s| (s * 1000.0) as u64);
    AttemptFailure {
        kind: code
            .as_deref()
            .and_then(kind_of_code)
            .unwrap_or_else(|| kind_of_status(status.as_u16())),
        status: Some(status.as_u16()),
        retry_after_ms,
        detail: format!("{}: {message}", code.as_deref().unwrap_or("UnknownError")),
    }
}

/// A call that got no answer: the connection failed or broke (unavailable,
/// as a reset is), unless Bedrock answered something unparseable.
fn transport_failure(error: &(dyn std::error::Error + 'static)) -> OutcomeKind {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = cause {
        if e.downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_parse)
        {
            return OutcomeKind::ServerError;
        }
        cause = e.source();
    }
    OutcomeKind::Unavailable
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn errors_are_classified_by_their_exception_name_then_status() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-amzn-errortype",
            HeaderValue::from_static(
                "ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/",
            ),
        );
        headers.insert("retry-after", HeaderValue::from_static("2"));
        let f = error_answer(
            StatusCode::TOO_MANY_REQUESTS,
            &headers,
            br#"{"message":"slow down"}"#,
        );
        assert_eq!(f.kind, OutcomeKind::Throttled);
        assert_eq!(f.retry_after_ms, Some(2_000));
        assert_eq!(f.detail, "ThrottlingException: slow down");
        let f = error_answer(
            StatusCode::BAD_REQUEST,
            &HeaderMap::new(),
            br#"{"__type":"com.amazon#AccessDeniedException","Message":"no"}"#,
        );
        assert_eq!(f.kind, OutcomeKind::Unavailable);
        assert_eq!(f.detail, "AccessDeniedException: no");
        let f = error_answer(StatusCode::BAD_GATEWAY, &HeaderMap::new(), b"<html>");
        assert_eq!(f.kind, OutcomeKind::Unavailable);
    }

    #[test]
    fn deployments_on_one_endpoint_share_its_connections() {
        let mut pools = ConnectionPools::new(Duration::from_secs(1));
        for endpoint in [
            "http://127.0.0.1:19001",
            "http://127.0.0.1:19001/",
            "http://127.0.0.1:19002",
        ] {
            pools.transport(endpoint.trim_end_matches('/')).unwrap();
        }
        assert_eq!(pools.by_endpoint.len(), 2);
        assert!(matches!(
            pools.transport("ftp://127.0.0.1"),
            Err(TransportError::BadEndpoint(_))
        ));
    }

    #[test]
    fn the_signed_host_is_the_one_hyper_sends() {
        for (endpoint, host, path) in [
            ("http://127.0.0.1:19001", "127.0.0.1:19001", ""),
            (
                "https://bedrock-runtime.us-east-1.amazonaws.com:443",
                "bedrock-runtime.us-east-1.amazonaws.com",
                "",
            ),
            (
                "http://proxy.internal:80/bedrock",
                "proxy.internal",
                "/bedrock",
            ),
            (
                "https://user@vpce.example.com:8443/x/y",
                "vpce.example.com:8443",
                "/x/y",
            ),
        ] {
            assert_eq!(split_endpoint(endpoint), (host, path), "{endpoint}");
        }
    }

    #[test]
    fn model_ids_are_escaped_as_the_sdk_escapes_labels() {
        let id = "arn:aws:bedrock:us-east-1:1:inference-profile/us.anthropic.claude-3-5-sonnet-20240620-v1:0";
        assert_eq!(
            utf8_percent_encode(id, LABEL).to_string(),
            "arn%3Aaws%3Abedrock%3Aus-east-1%3A1%3Ainference-profile%2Fus.anthropic.claude-3-5-sonnet-20240620-v1%3A0"
        );
    }
}
