//! Completion callbacks: when a job with a `callback_url` ends, the URL gets
//! a POST of the job as `GET /v1/jobs/{id}` shows it, again with backoff
//! (1, 2, 4, 8, 16 s) until it answers 2xx, at most [`MAX_TRIES`] times. What
//! happened is kept on the job (`callback`).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};

use super::{Job, Jobs};

/// Tries of one callback.
pub const MAX_TRIES: u32 = 6;
/// How long one try may take.
const TRY_TIMEOUT: Duration = Duration::from_secs(10);

/// How a job's callback went.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallbackState {
    /// The URL answered 2xx.
    pub delivered: bool,
    /// Tries so far.
    pub tries: u32,
    /// Why the last try failed, if it did.
    pub last_error: Option<String>,
}

/// Whether `url` can take callbacks.
pub fn valid_url(url: &str) -> bool {
    (url.starts_with("http://") || url.starts_with("https://"))
        && url.len() <= 2_048
        && url.parse::<http::Uri>().is_ok()
}

impl Jobs {
    /// Delivers `job`'s callback in the background, if it has one.
    pub(super) fn call_back(self: &Arc<Self>, job: &Job) {
        let Some(url) = job.callback_url.clone() else {
            return;
        };
        let jobs = Arc::downgrade(self);
        let (id, body) = (job.id.clone(), job.view().to_string());
        tokio::spawn(async move {
            let mut state = CallbackState::default();
            loop {
                state.tries += 1;
                let outcome = post(&url, body.clone()).await;
                state.delivered = outcome.is_ok();
                state.last_error = outcome.err();
                let Some(jobs) = jobs.upgrade() else {
                    return;
                };
                jobs.record_callback(&id, &state).await;
                if state.delivered || state.tries >= MAX_TRIES {
                    if !state.delivered {
                        tracing::warn!(job = %id, %url, error = ?state.last_error, "a job's callback was never taken");
                    }
                    return;
                }
                drop(jobs);
                tokio::time::sleep(Duration::from_secs(1 << (state.tries - 1))).await;
            }
        });
    }

    async fn record_callback(self: &Arc<Self>, id: &str, state: &CallbackState) {
        if let Ok(Some(mut job)) = self.get(id).await {
            job.callback = Some(state.clone());
            self.save(&job).await;
        }
    }
}

/// One try: Ok on a 2xx answer, else why not.
async fn post(url: &str, body: String) -> Result<(), String> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_native_roots(provider)
        .map_err(|e| format!("no TLS roots: {e}"))?
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    let client = Client::builder(TokioExecutor::new()).build(https);
    let request = http::Request::post(url)
        .header("content-type", "application/json")
        .header("user-agent", "switchyard-jobs")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| format!("bad callback URL: {e}"))?;
    match tokio::time::timeout(TRY_TIMEOUT, client.request(request)).await {
        Err(_) => Err(format!("no answer within {} s", TRY_TIMEOUT.as_secs())),
        Ok(Err(e)) => Err(crate::error_chain::render(&e)),
        Ok(Ok(response)) if response.status().is_success() => Ok(()),
        Ok(Ok(response)) => Err(format!("answered {}", response.status())),
    }
}
