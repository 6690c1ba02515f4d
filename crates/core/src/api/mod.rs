//! The HTTP API: Bedrock-compatible routes, the admin API, health and
//! metrics, and their errors.

pub mod access;
mod admin;
mod anthropic;
pub mod auth;
mod bedrock;
mod body;
mod body_shape;
pub mod coalesce;
mod error;
pub mod extract;
mod jobs;
pub(crate) mod keys;
mod openai;
mod reload;
mod sse;
pub mod stats;
mod usage;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::extract::{DefaultBodyLimit, State};
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Router as HttpRouter;

use crate::config::Config;
use crate::policy::PolicyRuntime;
use crate::service::{GatewayError, Service};
pub(crate) use reload::reload;

/// What every handler can reach.
pub struct AppState {
    /// Routing behind the fair queue: what every model call goes to.
    pub service: Service,
    /// Where keys and teams made through the admin API are kept.
    pub key_store: crate::keys::KeyStore,
    /// The client API keys, the admin token and who may read the stats.
    pub access: access::Access,
    /// Where quotas, cooldowns and the rest are shared with sibling instances.
    pub shared_state: Arc<dyn crate::state::StateBackend>,
    /// This instance's copy of the shared state (the backend holds it weakly).
    pub state_mirror: Arc<dyn crate::state::ChangeSink>,
    pub runtime: PolicyRuntime,
    /// The config the gateway runs, as last loaded.
    pub running_config: Mutex<Config>,
    /// Where the config came from, for reloads.
    pub config_path: Mutex<Option<PathBuf>>,
    /// One reload or file-triggered swap at a time.
    pub reloading: tokio::sync::Mutex<()>,
    /// Identical requests in flight, sharing one upstream call.
    pub coalescer: coalesce::Coalescer,
    /// The model groups that coalesce every non-streaming request.
    pub coalescing_groups: std::collections::HashSet<String>,
    /// Async jobs, when `[jobs]` is configured.
    pub jobs: Option<Arc<crate::jobs::Jobs>>,
    /// The last 15 minutes, for the status page's charts.
    pub history: crate::history::History,
}

impl AppState {
    /// Whether a request to `group` with `headers` shares an identical
    /// request's upstream call.
    pub fn coalesces(&self, group: &str, headers: &axum::http::HeaderMap) -> bool {
        self.coalescing_groups.contains(group) || coalesce::asked(headers)
    }

    /// The answer to the request `key` names, shared with an identical one
    /// in flight or made by `call`; a shared answer is counted for `group`.
    pub async fn answer_coalesced(
        &self,
        group: &str,
        key: [u8; 32],
        request_id: &str,
        call: impl FnOnce() -> futures::future::BoxFuture<'static, Response>,
    ) -> Response {
        let (response, shared) = self.coalescer.answer(key, request_id, call).await;
        if shared {
            self.service.router().metrics().coalesced(group);
        }
        response
    }
}

/// Largest component `/admin` accepts.
pub const MAX_COMPONENT_BYTES: usize = 16 * 1024 * 1024;

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let metrics = state.service.router().metrics();
    // Gauges of the present are read when scraped, not kept up to date.
    let now = state.service.router().clock().now_ms();
    for (id, d) in stats::deployments(&state) {
        let admission = d.admission.snapshot(now);
        metrics.deployment_state(
            &id,
            d.health.snapshot(now).cooldown_remaining_ms,
            admission.circuit,
            admission.quota_used_permille,
        );
    }
    let queue = state.service.queue().stats();
    metrics.queue_state(queue.queued, queue.running);
    metrics.shared_state(&state.shared_state.status());
    metrics.traces(crate::telemetry::counts());
    let mut response = metrics.render().into_response();
    response.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}

/// `GET /`: the live status page (plain HTML and JS; it reads `/model_stats`).
async fn status_page() -> Response {
    (
        [("content-type", "text/html; charset=utf-8")],
        include_str!("status.html"),
    )
        .into_response()
}

/// The gateway's routes.
pub fn routes(state: Arc<AppState>, max_body_bytes: usize) -> HttpRouter {
    let small = || DefaultBodyLimit::max(admin::SMALL_BODY_BYTES);
    let admin = HttpRouter::new()
        .route("/admin/policies", get(admin::list))
        .route(
            "/admin/policies/{group}/{kind}",
            post(admin::upload).layer(DefaultBodyLimit::max(MAX_COMPONENT_BYTES)),
        )
        .route(
            "/admin/policies/{group}/{kind}/activate",
            post(admin::activate).layer(small()),
        )
        .route(
            "/admin/policies/{group}/{kind}/rollback",
            post(admin::rollback).layer(small()),
        )
        .route(
            "/admin/policies/{group}/{kind}/params",
            put(admin::params).layer(small()),
        )
        .route("/admin/reload", post(admin::reload).layer(small()))
        .route(
            "/admin/teams",
            post(keys::create_team).get(keys::list_teams).layer(small()),
        )
        .route(
            "/admin/teams/{name}",
            get(keys::show_team)
                .patch(keys::change_team)
                .delete(keys::delete_team)
                .layer(small()),
        )
        .route(
            "/admin/keys",
            post(keys::create_key).get(keys::list_keys).layer(small()),
        )
        .route(
            "/admin/keys/{id}",
            get(keys::show_key)
                .patch(keys::change_key)
                .delete(keys::delete_key)
                .layer(small()),
        )
        .route("/admin/keys/{id}/disable", post(keys::disable_key))
        .route("/admin/keys/{id}/enable", post(keys::enable_key))
        .route("/admin/keys/{id}/rotate", post(keys::rotate_key))
        .route("/admin/usage", get(usage::usage))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            admin::require_token,
        ));
    // Each group refuses a body declared too large in its own error shape.
    let refuse_over = |render: body::Render| {
        axum::middleware::from_fn(move |request, next| {
            body::refuse_declared_over(max_body_bytes, render, request, next)
        })
    };
    let gateway_shape: body::Render = |e, request_id| error::error_response(e, Some(request_id));
    let openai_routes = HttpRouter::new()
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/embeddings", post(openai::embeddings))
        .route_layer(refuse_over(openai::error_response));
    let anthropic_routes = HttpRouter::new()
        .route("/v1/messages", post(anthropic::messages))
        .route("/v1/messages/count_tokens", post(anthropic::count_tokens))
        .route_layer(refuse_over(anthropic::error_response));
    let api = HttpRouter::new()
        .route("/model/{model_id}/converse", post(bedrock::converse))
        .route(
            "/model/{model_id}/converse-stream",
            post(bedrock::converse_stream),
        )
        .route("/model/{model_id}/invoke", post(bedrock::invoke))
        .route(
            "/model/{model_id}/invoke-with-response-stream",
            post(bedrock::invoke_stream),
        )
        .route("/v1/jobs", post(jobs::submit).get(jobs::list))
        .route("/v1/jobs/{id}", get(jobs::show).delete(jobs::cancel))
        .route("/task_status/{id}", get(jobs::task_status))
        .route_layer(refuse_over(gateway_shape))
        .merge(openai_routes)
        .merge(anthropic_routes)
        .layer(DefaultBodyLimit::max(max_body_bytes));
    let observability = HttpRouter::new()
        .route("/", get(status_page))
        .route("/metrics", get(metrics))
        .route("/model_stats", get(stats::model_stats))
        .route("/status_history", get(stats::status_history))
        .route("/team_stats", get(keys::team_stats))
        .route("/cooldowns", get(stats::cooldowns))
        .route("/queue_stats", get(stats::queue_stats))
        .route("/state_stats", get(stats::state_stats))
        // Always layered: a reload may turn `require_key` on or off.
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            stats::require_observer,
        ));
    HttpRouter::new()
        .merge(api)
        .merge(admin)
        .merge(observability)
        // Probes stay open: orchestrators call them without keys.
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(stats::readyz))
        .route("/v1/models", get(openai::models))
        .fallback(|| async { GatewayError::no_route() })
        .with_state(state)
}
