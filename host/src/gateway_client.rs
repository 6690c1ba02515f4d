//! A small client for a running gateway, used by `switchyard policy push`
//! (its `/admin` API) and `switchyard jobs` (its `/v1/jobs` API).

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::policy::PolicyKind;

/// Why a call did not go through.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The gateway URL is not usable.
    #[error("invalid gateway URL `{0}` (expected http://HOST:PORT)")]
    Url(String),
    /// The gateway could not be reached.
    #[error("cannot reach the gateway")]
    Connect(#[source] hyper_util::client::legacy::Error),
    /// The gateway's answer broke off.
    #[error("the gateway's answer broke off")]
    Answer(#[source] hyper::Error),
    /// The gateway refused, with its error body.
    #[error("the gateway refused ({status}): {body}")]
    Refused { status: u16, body: String },
}

/// One call: `method` on `path` of `gateway`, with `bearer` as the
/// authorization and `body` of `content_type`. Returns the JSON answer.
pub async fn call(
    gateway: &str,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<(&'static str, Vec<u8>)>,
) -> Result<serde_json::Value, ClientError> {
    let (status, body) = exchange(gateway, method, path, bearer, body).await?;
    serde_json::from_slice(&body).map_err(|e| ClientError::Refused {
        status,
        body: format!("unreadable answer: {e}"),
    })
}

/// A GET of `path` whose answer is text (a CSV report, say).
pub async fn get_text(gateway: &str, path: &str, bearer: &str) -> Result<String, ClientError> {
    let (_, body) = exchange(gateway, "GET", path, Some(bearer), None).await?;
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// A GET of `path` with no credentials (a probe): Ok on a 2xx answer.
pub async fn probe(gateway: &str, path: &str) -> Result<(), ClientError> {
    exchange(gateway, "GET", path, None, None).await.map(|_| ())
}

/// Sends one request; a 2xx answer's status and body, else `Refused`.
async fn exchange(
    gateway: &str,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<(&'static str, Vec<u8>)>,
) -> Result<(u16, Bytes), ClientError> {
    let base = gateway.trim_end_matches('/');
    if !base.starts_with("http://") {
        return Err(ClientError::Url(gateway.to_owned()));
    }
    let mut request = hyper::Request::builder()
        .method(method)
        .uri(format!("{base}{path}"));
    if let Some(token) = bearer {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let (content_type, bytes) = body.unwrap_or(("application/json", Vec::new()));
    let request = request
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(bytes)))
        .map_err(|_| ClientError::Url(gateway.to_owned()))?;
    let client = Client::builder(TokioExecutor::new()).build_http();
    let response = client
        .request(request)
        .await
        .map_err(ClientError::Connect)?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(ClientError::Answer)?
        .to_bytes();
    if !(200..300).contains(&status) {
        return Err(ClientError::Refused {
            status,
            body: String::from_utf8_lossy(&body).into_owned(),
        });
    }
    Ok((status, body))
}

/// Uploads `component` into `group`'s `kind` slot; activates it unless
/// `stage_only`. Returns the gateway's answer (version, sha256, active).
pub async fn push(
    gateway: &str,
    token: &str,
    group: &str,
    kind: PolicyKind,
    component: Vec<u8>,
    params: Option<&serde_json::Value>,
    stage_only: bool,
) -> Result<serde_json::Value, ClientError> {
    let encode = |text: &str| -> String {
        percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC).collect()
    };
    let mut path = format!(
        "/admin/policies/{}/{}?activate={}",
        encode(group),
        kind.world(),
        !stage_only
    );
    if let Some(params) = params {
        path.push_str("&params=");
        path.push_str(&encode(&params.to_string()));
    }
    call(
        gateway,
        "POST",
        &path,
        Some(token),
        Some(("application/wasm", component)),
    )
    .await
}
