//! A small client for a running gateway's `/admin` API, used by
//! `switchyard policy push`.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::policy::PolicyKind;

/// Why a push did not go through.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
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
) -> Result<serde_json::Value, PushError> {
    let base = gateway.trim_end_matches('/');
    if !base.starts_with("http://") {
        return Err(PushError::Url(gateway.to_owned()));
    }
    let group_segment: String =
        percent_encoding::utf8_percent_encode(group, percent_encoding::NON_ALPHANUMERIC).collect();
    let mut uri = format!(
        "{base}/admin/policies/{group_segment}/{}?activate={}",
        kind.world(),
        !stage_only
    );
    if let Some(params) = params {
        let encoded: String = percent_encoding::utf8_percent_encode(
            &params.to_string(),
            percent_encoding::NON_ALPHANUMERIC,
        )
        .collect();
        uri.push_str("&params=");
        uri.push_str(&encoded);
    }
    let request = hyper::Request::post(&uri)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/wasm")
        .body(Full::new(Bytes::from(component)))
        .map_err(|_| PushError::Url(gateway.to_owned()))?;
    let client = Client::builder(TokioExecutor::new()).build_http();
    let response = client.request(request).await.map_err(PushError::Connect)?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(PushError::Answer)?
        .to_bytes();
    if !(200..300).contains(&status) {
        return Err(PushError::Refused {
            status,
            body: String::from_utf8_lossy(&body).into_owned(),
        });
    }
    serde_json::from_slice(&body).map_err(|e| PushError::Refused {
        status,
        body: format!("unreadable answer: {e}"),
    })
}
