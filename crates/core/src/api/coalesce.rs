//! Request coalescing: identical requests in flight at the same time share
//! one upstream call, and each gets the answer.
//!
//! Opted in per model group (`coalesce = true`) or per request
//! (`x-switchyard-coalesce: true`), for non-streaming calls only. Requests
//! are identical when they go to the same route and model group with the
//! same body once its JSON keys are sorted. The first one (the leader) runs
//! as usual (fair queue, quotas, policies, fallbacks) in a task of its own,
//! so it finishes for the others even if its own client leaves; the others
//! wait for its answer without taking a place in the queue or any quota.
//! When the last client waiting for a call leaves, the call is aborted: its
//! place in the queue, its quota and its upstream connection are freed.
//! Each answer carries its own request id in its headers (an error body
//! names the request that ran), and the ones that shared carry
//! `x-switchyard-coalesced: true`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::future::{BoxFuture, FutureExt, Shared};
use http_body_util::BodyExt;
use sha2::{Digest, Sha256};
use tokio::task::AbortHandle;

/// The request header that opts one request in.
pub const COALESCE_HEADER: &str = "x-switchyard-coalesce";

/// Largest answer shared between coalesced requests; a larger one fails
/// the waiters with a 502 instead of being held in memory for each.
const MAX_SHARED_BODY: usize = 32 * 1024 * 1024;

/// An answer, kept whole so that every waiter gets a copy.
#[derive(Clone)]
struct SharedAnswer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl SharedAnswer {
    async fn of(response: Response) -> Self {
        let (parts, body) = response.into_parts();
        match http_body_util::Limited::new(body, MAX_SHARED_BODY)
            .collect()
            .await
        {
            Ok(collected) => Self {
                status: parts.status,
                headers: parts.headers,
                body: collected.to_bytes(),
            },
            Err(_) => Self::failed(
                StatusCode::BAD_GATEWAY,
                "coalesced_answer_unreadable",
                "the shared answer could not be read whole",
            ),
        }
    }

    /// An error answer in the gateway's JSON shape.
    fn failed(status: StatusCode, code: &str, message: &str) -> Self {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        let body = serde_json::json!({ "code": code, "message": message }).to_string();
        Self {
            status,
            headers,
            body: Bytes::from(body),
        }
    }

    /// This copy as `request_id`'s response.
    fn respond(&self, request_id: &str, coalesced: bool) -> Response {
        let mut response = (self.status, Body::from(self.body.clone())).into_response();
        *response.headers_mut() = self.headers.clone();
        if let Ok(id) = HeaderValue::from_str(request_id) {
            let headers = response.headers_mut();
            if headers.contains_key("x-request-id") {
                headers.insert("x-request-id", id.clone());
            }
            if headers.contains_key("x-amzn-requestid") {
                headers.insert("x-amzn-requestid", id);
            }
        }
        if coalesced {
            response
                .headers_mut()
                .insert("x-switchyard-coalesced", HeaderValue::from_static("true"));
        }
        response
    }
}

type Pending = Shared<BoxFuture<'static, SharedAnswer>>;

/// A shared call in flight: its answer to come, who waits for it, and how
/// to stop it.
struct InFlight {
    pending: Pending,
    /// Tells this call from a later one of the same key.
    generation: u64,
    waiters: usize,
    task: AbortHandle,
}

type Table = Arc<Mutex<HashMap<[u8; 32], InFlight>>>;

/// Takes a key out of the table when the call it names has ended (unless
/// a later call of the same key has its place by then).
struct Forget {
    table: Table,
    key: [u8; 32],
    generation: u64,
}

impl Drop for Forget {
    fn drop(&mut self) {
        if let Ok(mut table) = self.table.lock() {
            if table.get(&self.key).map(|f| f.generation) == Some(self.generation) {
                table.remove(&self.key);
            }
        }
    }
}

/// One client waiting for a shared call: when the last one goes (its
/// client left, so its handler was dropped), the call is aborted and its
/// key forgotten at once, so a later identical request starts afresh.
struct Waiting {
    table: Table,
    key: [u8; 32],
    generation: u64,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let Ok(mut table) = self.table.lock() else {
            return;
        };
        let Some(in_flight) = table.get_mut(&self.key) else {
            return;
        };
        if in_flight.generation != self.generation {
            return;
        }
        in_flight.waiters -= 1;
        if in_flight.waiters == 0 {
            in_flight.task.abort();
            table.remove(&self.key);
        }
    }
}

/// The identical requests in flight, by key.
#[derive(Default)]
pub struct Coalescer {
    in_flight: Table,
    generations: AtomicU64,
}

impl std::fmt::Debug for Coalescer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coalescer").finish_non_exhaustive()
    }
}

/// What makes two requests identical: the route, the model group and the
/// body with its JSON keys sorted (not its whitespace or key order).
pub fn key(route: &str, group: &str, body: &[u8]) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update(route.as_bytes());
    hash.update([0]);
    hash.update(group.as_bytes());
    hash.update([0]);
    // serde_json's maps are sorted by key, so this is one spelling per value.
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(value) => hash.update(value.to_string().as_bytes()),
        Err(_) => hash.update(body),
    }
    hash.finalize().into()
}

/// Whether `headers` opt this request in.
pub fn asked(headers: &HeaderMap) -> bool {
    headers
        .get(COALESCE_HEADER)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

impl Coalescer {
    /// The answer to the request `key` names, for `request_id`: the answer
    /// of an identical request in flight, or of `call`, run now in a task of
    /// its own. The flag says whether it was shared.
    pub async fn answer(
        &self,
        key: [u8; 32],
        request_id: &str,
        call: impl FnOnce() -> BoxFuture<'static, Response>,
    ) -> (Response, bool) {
        let (pending, shared, waiting) = {
            let mut in_flight = self.in_flight.lock().expect("coalescer poisoned");
            match in_flight.get_mut(&key) {
                Some(call) => {
                    call.waiters += 1;
                    let waiting = Waiting {
                        table: self.in_flight.clone(),
                        key,
                        generation: call.generation,
                    };
                    (call.pending.clone(), true, waiting)
                }
                None => {
                    let call = call();
                    let generation = self.generations.fetch_add(1, Ordering::Relaxed);
                    let forget = Forget {
                        table: self.in_flight.clone(),
                        key,
                        generation,
                    };
                    let task = tokio::spawn(async move {
                        // Later identical requests make a call of their
                        // own, even if this one panics.
                        let _forget = forget;
                        SharedAnswer::of(call.await).await
                    });
                    let abort = task.abort_handle();
                    let pending = async move {
                        task.await.unwrap_or_else(|_| {
                            SharedAnswer::failed(
                                StatusCode::INTERNAL_SERVER_ERROR,
                                "internal",
                                "the shared request's task failed",
                            )
                        })
                    }
                    .boxed()
                    .shared();
                    in_flight.insert(
                        key,
                        InFlight {
                            pending: pending.clone(),
                            generation,
                            waiters: 1,
                            task: abort,
                        },
                    );
                    let waiting = Waiting {
                        table: self.in_flight.clone(),
                        key,
                        generation,
                    };
                    (pending, false, waiting)
                }
            }
        };
        let answer = pending.await;
        drop(waiting);
        (answer.respond(request_id, shared), shared)
    }
}
