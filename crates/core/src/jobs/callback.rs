//! Completion callbacks: when a job with a `callback_url` ends, the URL gets
//! a POST of the job as `GET /v1/jobs/{id}` shows it, again with backoff
//! (1, 2, 4, 8, 16 s) until it answers 2xx, at most [`MAX_TRIES`] times. What
//! happened is kept on the job (`callback`).
//!
//! A callback is the gateway making a request where a client says, so it
//! refuses addresses inside the network (loopback, private, link-local, such
//! as a cloud's metadata service) unless `jobs.private_callbacks` allows
//! them: a client could otherwise probe what only the gateway can reach.

use std::net::IpAddr;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};

use super::{Job, Jobs};

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// One client for every callback (loading the system's roots is slow).
static CLIENT: LazyLock<Result<HttpsClient, String>> = LazyLock::new(|| {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_native_roots(provider)
        .map_err(|e| format!("no TLS roots: {e}"))?
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new()).build(https))
});

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
        let private_allowed = self.config.private_callbacks;
        tokio::spawn(async move {
            let mut state = CallbackState::default();
            loop {
                state.tries += 1;
                let outcome = post(&url, body.clone(), private_allowed).await;
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
        let state = state.clone();
        let change = Arc::new(move |job: &mut Job| {
            job.callback = Some(state.clone());
            true
        });
        if let Err(e) = self.update(id, change).await {
            let error = crate::error_chain::render(&e);
            tracing::warn!(job = id, %error, "cannot record how a job's callback went");
        }
    }
}

/// Whether `ip` is inside the network: loopback, private, link-local,
/// unspecified, or the IPv6 forms of those.
fn internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback() || v4.is_private() || v4.is_link_local() || v4.is_unspecified()
                // 100.64.0.0/10, carrier-grade NAT.
                || (v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64)
        }
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || (v6.segments()[0] & 0xfe00) == 0xfc00
                || (v6.segments()[0] & 0xffc0) == 0xfe80
                || v6
                    .to_ipv4_mapped()
                    .is_some_and(|v4| internal(IpAddr::V4(v4)))
        }
    }
}

/// Refuses `uri` when its host is, or resolves to, an internal address.
async fn check_host(uri: &http::Uri) -> Result<(), String> {
    let host = uri.host().ok_or("the callback URL has no host")?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(80);
    let addresses: Vec<IpAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| format!("cannot resolve {host}: {e}"))?
            .map(|a| a.ip())
            .collect(),
    };
    match addresses.into_iter().find(|ip| internal(*ip)) {
        Some(ip) => Err(format!(
            "{host} is an address inside the network ({ip}); set jobs.private_callbacks = true to allow it"
        )),
        None => Ok(()),
    }
}

/// One try: Ok on a 2xx answer, else why not.
async fn post(url: &str, body: String, private_allowed: bool) -> Result<(), String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("bad callback URL: {e}"))?;
    if !private_allowed {
        check_host(&uri).await?;
    }
    let client = CLIENT.as_ref().map_err(Clone::clone)?;
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
