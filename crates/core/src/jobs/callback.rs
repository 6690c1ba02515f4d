//! Completion callbacks: when a job with a `callback_url` ends (also when
//! it is cancelled), the URL gets a POST of the job as `GET /v1/jobs/{id}`
//! shows it, again with backoff (1, 2, 4, 8, 16 s) until it answers 2xx, at
//! most [`MAX_TRIES`] times. What happened is kept on the job (`callback`).
//!
//! A callback to make waits in a durable outbox, written in the same
//! transaction that ends the job, and one deliverer an instance takes what
//! is due: a restart, or a crash mid-try, delays a callback but never loses
//! it. A try in progress keeps its entry due later, so a crash mid-try is
//! tried again, and two instances never make the same try at once.
//!
//! A callback is the gateway making a request where a client says, so it
//! goes only to public addresses unless `jobs.private_callbacks` allows
//! others: a client could otherwise probe what only the gateway can reach
//! (a cloud's metadata service, a database's port). The address checked is
//! the address connected to (a name is resolved once, by the connector
//! itself), and a refusal says no more than that the host is not public.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use http_body_util::Full;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};

use super::{now_ms, Backend, Edit, Job, Jobs, StoreError};

/// Tries of one callback.
pub const MAX_TRIES: u32 = 6;
/// How long one try may take.
const TRY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a try keeps its entry: past this, a try cut short (the
/// instance died) is made again.
const TRY_CLAIM_MS: u64 = 15_000;
/// Callbacks tried at once by one instance.
const BATCH: usize = 16;

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

/// Whether `ip` is reachable on the public internet: not loopback,
/// private, link-local, shared (CGNAT), reserved, documentation,
/// benchmarking, multicast or broadcast, and not an IPv6 form that carries
/// or translates to an IPv4 address (mapped, NAT64, 6to4, Teredo), whose
/// far end could be any of those.
pub fn is_global(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_global_v4(v4),
        IpAddr::V6(v6) => is_global_v6(v6),
    }
}

fn is_global_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    let inside = a == 0 // "this network"
        || a == 10
        || a == 127
        || (a == 100 && (b & 0xc0) == 64) // shared address space (CGNAT)
        || (a == 169 && b == 254) // link-local, cloud metadata
        || (a == 172 && (b & 0xf0) == 16)
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 192 && b == 0 && c == 2) // documentation
        || (a == 192 && b == 88 && c == 99) // 6to4 relay anycast
        || (a == 192 && b == 168)
        || (a == 198 && (b & 0xfe) == 18) // benchmarking
        || (a == 198 && b == 51 && c == 100) // documentation
        || (a == 203 && b == 0 && c == 113) // documentation
        || a >= 224; // multicast, reserved, broadcast
    !inside
}

fn is_global_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_global_v4(v4);
    }
    let s = ip.segments();
    // Global unicast is 2000::/3; everything else (loopback, unspecified,
    // IPv4-compatible, discard, unique local, link- and site-local,
    // multicast) is not.
    if (s[0] & 0xe000) != 0x2000 {
        return false;
    }
    // 2001::/23 (IETF protocol assignments, Teredo), 2001:db8::/32
    // (documentation).
    let inside = (s[0] == 0x2001 && (s[1] < 0x0200 || s[1] == 0x0db8))
        || s[0] == 0x2002 // 6to4
        || (s[0] & 0xfff0) == 0x3ff0; // documentation (3fff::/20)
                                      // NAT64 (64:ff9b::/96, 64:ff9b:1::/48) is outside 2000::/3 already.
    !inside
}

/// The resolver callbacks connect through: it resolves a host once and
/// gives the connector only its public addresses, so the address checked
/// is the address connected to (a second lookup could answer otherwise).
#[derive(Clone)]
struct PublicOnly {
    private_allowed: bool,
}

/// Why a callback's host was refused. Says nothing of what it resolved to.
#[derive(Debug, thiserror::Error)]
enum HostRefused {
    #[error("the callback URL's host does not resolve")]
    Unresolved,
    #[error("the callback URL's host is not a public address; set jobs.private_callbacks = true to allow hosts inside the network")]
    NotPublic,
}

impl tower::Service<Name> for PublicOnly {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = HostRefused;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let private_allowed = self.private_allowed;
        Box::pin(async move {
            let resolved: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), 0))
                .await
                .map_err(|_| HostRefused::Unresolved)?
                .collect();
            if resolved.is_empty() {
                return Err(HostRefused::Unresolved);
            }
            let usable: Vec<SocketAddr> = resolved
                .into_iter()
                .filter(|a| private_allowed || is_global(a.ip()))
                .collect();
            if usable.is_empty() {
                return Err(HostRefused::NotPublic);
            }
            Ok(usable.into_iter())
        })
    }
}

type CallbackClient = Client<hyper_rustls::HttpsConnector<HttpConnector<PublicOnly>>, Full<Bytes>>;

/// The client of one instance's callbacks.
struct Caller {
    client: CallbackClient,
    private_allowed: bool,
}

impl Caller {
    fn new(private_allowed: bool) -> Result<Self, String> {
        let mut http = HttpConnector::new_with_resolver(PublicOnly { private_allowed });
        http.enforce_http(false);
        http.set_connect_timeout(Some(TRY_TIMEOUT));
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(provider)
            .map_err(|e| format!("no TLS roots: {e}"))?
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Ok(Self {
            client: Client::builder(TokioExecutor::new()).build(https),
            private_allowed,
        })
    }

    /// One try: Ok on a 2xx answer, else why not.
    async fn post(&self, url: &str, body: String) -> Result<(), String> {
        let uri: http::Uri = url.parse().map_err(|e| format!("bad callback URL: {e}"))?;
        // An address written in the URL is not resolved, so it is checked
        // here; names are checked by the resolver as they are connected to.
        let host = uri.host().ok_or("the callback URL has no host")?;
        let literal = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = literal.parse::<IpAddr>() {
            if !self.private_allowed && !is_global(ip) {
                return Err(HostRefused::NotPublic.to_string());
            }
        }
        let request = http::Request::post(uri)
            .header("content-type", "application/json")
            .header("user-agent", "switchyard-jobs")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| format!("bad callback URL: {e}"))?;
        match tokio::time::timeout(TRY_TIMEOUT, self.client.request(request)).await {
            Err(_) => Err(format!("no answer within {} s", TRY_TIMEOUT.as_secs())),
            Ok(Err(e)) => Err(refusal_or_chain(&e)),
            Ok(Ok(response)) if response.status().is_success() => Ok(()),
            Ok(Ok(response)) => Err(format!("answered {}", response.status())),
        }
    }
}

/// A failed try in words: the resolver's refusal as it is, else the error
/// chain.
fn refusal_or_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut source = Some(e);
    while let Some(e) = source {
        if let Some(refused) = e.downcast_ref::<HostRefused>() {
            return refused.to_string();
        }
        source = e.source();
    }
    crate::error_chain::render(e)
}

/// Delivers this instance's share of the due callbacks until the jobs are
/// gone.
pub(super) fn deliver(jobs: Weak<Jobs>) {
    tokio::spawn(async move {
        let caller = {
            let Some(jobs) = jobs.upgrade() else {
                return;
            };
            match Caller::new(jobs.config.private_callbacks) {
                Ok(caller) => caller,
                Err(e) => {
                    tracing::error!(error = %e, "cannot make callbacks: no HTTP client");
                    return;
                }
            }
        };
        loop {
            let Some(jobs) = jobs.upgrade() else {
                return;
            };
            let now = now_ms();
            match jobs.take_due_callbacks(now, now + TRY_CLAIM_MS).await {
                Ok(due) => {
                    let tries = due.iter().map(|id| jobs.try_callback(&caller, id));
                    futures::future::join_all(tries).await;
                    if due.len() == BATCH {
                        continue;
                    }
                }
                Err(e) => {
                    let error = crate::error_chain::render(&e);
                    tracing::warn!(%error, "cannot read the callback outbox; trying again in 1 s");
                }
            }
            // Woken when a job with a callback ends; else a retry's time
            // comes within a second.
            let _ = tokio::time::timeout(Duration::from_secs(1), jobs.callbacks.notified()).await;
        }
    });
}

impl Jobs {
    /// Wakes the deliverer: a job with a callback may have ended.
    pub(super) fn callbacks_waiting(&self) {
        self.callbacks.notify_one();
    }

    async fn take_due_callbacks(
        self: &Arc<Self>,
        now_ms: u64,
        retry_at_ms: u64,
    ) -> Result<Vec<String>, StoreError> {
        match &self.backend {
            Backend::Local { store, .. } => {
                let store = store.clone();
                tokio::task::spawn_blocking(move || {
                    store.take_due_callbacks(now_ms, retry_at_ms, BATCH)
                })
                .await
                .expect("the job store does not panic")
            }
            Backend::Redis(redis) => redis.take_due_callbacks(now_ms, retry_at_ms, BATCH).await,
        }
    }

    async fn callback_again(self: &Arc<Self>, id: &str, at_ms: Option<u64>) {
        let id = id.to_owned();
        let result = match (&self.backend, at_ms) {
            (Backend::Local { store, .. }, at) => {
                let (store, id) = (store.clone(), id.clone());
                tokio::task::spawn_blocking(move || match at {
                    Some(at) => store.callback_due(&id, at),
                    None => store.callback_done(&id),
                })
                .await
                .expect("the job store does not panic")
            }
            (Backend::Redis(redis), Some(at)) => redis.callback_due(&id, at).await,
            (Backend::Redis(redis), None) => redis.callback_done(&id).await,
        };
        if let Err(e) = result {
            let error = crate::error_chain::render(&e);
            tracing::warn!(job = %id, %error, "cannot update the callback outbox; the callback may be tried again");
        }
    }

    /// One try of job `id`'s callback, and what follows: recorded on the
    /// job, then out of the outbox or due again after a backoff.
    async fn try_callback(self: &Arc<Self>, caller: &Caller, id: &str) {
        let job = match self.get(id).await {
            Ok(Some(job)) => job,
            Ok(None) => return self.callback_again(id, None).await,
            Err(e) => {
                let error = crate::error_chain::render(&e);
                return tracing::warn!(job = id, %error, "cannot read a job to call back; tried again later");
            }
        };
        let (Some(url), false) = (
            job.callback_url.clone(),
            job.callback.as_ref().is_some_and(|c| c.delivered),
        ) else {
            return self.callback_again(id, None).await;
        };
        let answer = match self.answer(&job).await {
            Ok(answer) => answer,
            Err(e) => {
                let error = crate::error_chain::render(&e);
                return tracing::warn!(job = id, %error, "cannot read a job's answer to call back; tried again later");
            }
        };
        let outcome = caller.post(&url, job.view(answer.as_ref())).await;
        let mut state = job.callback.clone().unwrap_or_default();
        state.tries += 1;
        state.delivered = outcome.is_ok();
        state.last_error = outcome.err();
        self.record_callback(id, &state).await;
        if state.delivered {
            self.callback_again(id, None).await;
        } else if state.tries >= MAX_TRIES {
            tracing::warn!(job = %id, error = ?state.last_error, "a job's callback was never taken");
            self.callback_again(id, None).await;
        } else {
            let backoff_ms = 1_000u64 << (state.tries - 1);
            self.callback_again(id, Some(now_ms() + backoff_ms)).await;
        }
    }

    async fn record_callback(self: &Arc<Self>, id: &str, state: &CallbackState) {
        let state = state.clone();
        let change = Arc::new(move |job: &mut Job| {
            job.callback = Some(state.clone());
            Edit::Write
        });
        if let Err(e) = self.update(id, change).await {
            let error = crate::error_chain::render(&e);
            tracing::warn!(job = id, %error, "cannot record how a job's callback went");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::is_global;

    #[test]
    fn only_public_addresses_are_global() {
        for inside in [
            "0.1.2.3",
            "10.0.0.1",
            "100.64.0.1",
            "127.0.0.1",
            "169.254.169.254",
            "172.16.0.1",
            "192.0.0.8",
            "192.0.2.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.19.255.255",
            "203.0.113.5",
            "224.0.0.1",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "64:ff9b::a00:1",
            "64:ff9b:1::1",
            "100::1",
            "2001::1",
            "2001:db8::1",
            "2002:a00:1::1",
            "3fff::1",
            "fc00::1",
            "fd12::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
        ] {
            assert!(
                !is_global(inside.parse().unwrap()),
                "{inside} is not public"
            );
        }
        for public in [
            "1.1.1.1",
            "8.8.8.8",
            "52.94.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(is_global(public.parse().unwrap()), "{public} is public");
        }
    }
}
