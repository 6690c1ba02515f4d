//! What operators look at: `GET /model_stats` (every deployment's health, in
//! the shape operators know from the field) and `GET /cooldowns` (what is
//! benched now, why, and until when).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::json;

use super::AppState;
use crate::health::breaker::BreakerState;
use crate::outcome::OutcomeKind;
use crate::policy::PolicyKind;
use crate::router::Deployment;
use crate::service::{ErrorCode, GatewayError};

/// One deployment in `/model_stats`.
#[derive(Debug, Serialize)]
struct ModelStats {
    id: String,
    model_id: String,
    region: String,
    account: String,
    /// The quota books it spends from (`account/region/model_id`), shared
    /// with the deployments of the same account, region and model.
    quota_pool: String,
    priority: u32,
    /// `available`, `in_cooldown`, `circuit_open` or `circuit_half_open`.
    status: &'static str,
    cooldown_remaining_ms: u64,
    total_attempts: u64,
    successful_requests: u64,
    /// Percent of all attempts that succeeded (100 before the first attempt).
    success_rate: f64,
    recent_throttles_60s: u32,
    in_flight: u32,
    latency_ewma_ms: u32,
    /// Latency percentiles over its last 100 attempts.
    latency_p50_ms: u32,
    latency_p95_ms: u32,
    /// The fuller of its RPM and TPM quotas, in percent.
    quota_used_percent: f64,
    rpm_limit: Option<u64>,
    rpm_available: Option<u64>,
    tpm_limit: Option<u64>,
    tpm_available: Option<u64>,
    /// Its adaptive concurrency limit now.
    concurrency_limit: u32,
    circuit: BreakerState,
    circuit_open_remaining_ms: u64,
    /// Its account's daily and weekly budgets and what is spent of them.
    #[serde(skip_serializing_if = "Option::is_none")]
    budget: Option<crate::state::BudgetUse>,
}

/// Every deployment once, by id (groups may share deployments).
pub fn deployments(state: &AppState) -> BTreeMap<String, Arc<Deployment>> {
    state
        .service
        .router()
        .groups()
        .flat_map(|g| g.members.iter())
        .map(|d| (d.config.id.clone(), d.clone()))
        .collect()
}

/// `GET /model_stats`
pub async fn model_stats(State(state): State<Arc<AppState>>) -> Response {
    let now = state.service.router().clock().now_ms();
    let models: Vec<ModelStats> = deployments(&state)
        .into_values()
        .map(|d| {
            let h = d.health.snapshot(now);
            let a = d.admission.snapshot(now);
            ModelStats {
                id: d.config.id.clone(),
                model_id: d.config.model_id.clone(),
                region: d.config.region.clone(),
                account: d.config.account.clone(),
                quota_pool: d.config.quota_pool(),
                priority: d.config.priority,
                status: match a.circuit {
                    BreakerState::Open => "circuit_open",
                    BreakerState::HalfOpen => "circuit_half_open",
                    BreakerState::Closed if h.cooldown_remaining_ms > 0 => "in_cooldown",
                    BreakerState::Closed => "available",
                },
                cooldown_remaining_ms: h.cooldown_remaining_ms,
                total_attempts: h.total_attempts,
                successful_requests: h.successful_attempts,
                success_rate: if h.total_attempts == 0 {
                    100.0
                } else {
                    (h.successful_attempts as f64 * 1000.0 / h.total_attempts as f64).round() / 10.0
                },
                recent_throttles_60s: h.recent_throttles,
                in_flight: h.in_flight,
                latency_ewma_ms: h.latency_ewma_ms,
                latency_p50_ms: h.latency_p50_ms,
                latency_p95_ms: h.latency_p95_ms,
                quota_used_percent: f64::from(a.quota_used_permille) / 10.0,
                rpm_limit: a.rpm_limit,
                rpm_available: a.rpm_available,
                tpm_limit: a.tpm_limit,
                tpm_available: a.tpm_available,
                concurrency_limit: a.concurrency_limit,
                circuit: a.circuit,
                circuit_open_remaining_ms: a.circuit_open_remaining_ms,
                budget: a.budget,
            }
        })
        .collect();
    let active_cooldowns = models.iter().filter(|m| m.status == "in_cooldown").count();
    let policies: BTreeMap<&str, serde_json::Value> = state
        .service
        .router()
        .groups()
        .map(|g| {
            let slots: serde_json::Map<String, serde_json::Value> = PolicyKind::ALL
                .into_iter()
                .map(|k| {
                    let v = g.slots.get(k).current();
                    (
                        k.world().to_owned(),
                        json!({ "name": v.policy.name(), "version": v.number }),
                    )
                })
                .collect();
            (g.name.as_str(), serde_json::Value::Object(slots))
        })
        .collect();
    Json(json!({
        "success": true,
        "version": env!("CARGO_PKG_VERSION"),
        "stats": {
            "total_models": models.len(),
            "active_cooldowns": active_cooldowns,
            "models": models,
            "policies": policies,
        }
    }))
    .into_response()
}

/// `GET /status_history`: the last 15 minutes, sampled every 2 s.
pub async fn status_history(State(state): State<Arc<AppState>>) -> Response {
    let now = state.service.router().clock().now_ms();
    Json(state.history.report(now)).into_response()
}

/// One entry of `/cooldowns`.
#[derive(Debug, Serialize)]
struct Cooldown {
    deployment: String,
    model_id: String,
    /// The outcome that started it.
    reason: Option<OutcomeKind>,
    remaining_ms: u64,
    /// When it ends, on the gateway's clock (Unix milliseconds in production).
    until_ms: u64,
}

/// `GET /cooldowns`
pub async fn cooldowns(State(state): State<Arc<AppState>>) -> Response {
    let now = state.service.router().clock().now_ms();
    let cooldowns: Vec<Cooldown> = deployments(&state)
        .into_values()
        .filter_map(|d| {
            let h = d.health.snapshot(now);
            (h.cooldown_remaining_ms > 0).then(|| Cooldown {
                deployment: d.config.id.clone(),
                model_id: d.config.model_id.clone(),
                reason: h.cooldown_reason,
                remaining_ms: h.cooldown_remaining_ms,
                until_ms: now + h.cooldown_remaining_ms,
            })
        })
        .collect();
    Json(json!({ "cooldowns": cooldowns })).into_response()
}

/// Runs before the stats routes: with `[observability] require_key` on,
/// lets only a client key or the admin token through.
pub async fn require_observer(
    State(state): State<Arc<AppState>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let rules = state.access.rules();
    let allowed = !rules.require_key
        || super::auth::presented_observer_key(request.headers())
            .is_some_and(|key| rules.keys.is_client_key(&key) || rules.is_admin_token(&key));
    if allowed {
        next.run(request).await
    } else {
        let mut refused = GatewayError::refused(ErrorCode::ObserverKeyRequired,
            "this gateway's stats need a client API key or the admin token (`authorization: Bearer <key>`; a browser asks for it as a password)",
        )
        .into_response();
        // A browser asks its user for the key and sends it with the
        // status page's own requests from then on.
        refused.headers_mut().insert(
            axum::http::header::WWW_AUTHENTICATE,
            axum::http::HeaderValue::from_static(
                r#"Basic realm="switchyard stats", charset="UTF-8""#,
            ),
        );
        refused
    }
}

/// `GET /queue_stats`: the fair queue now: requests running and waiting, per
/// user, and how long admitted requests waited.
pub async fn queue_stats(State(state): State<Arc<AppState>>) -> Response {
    Json(json!({ "success": true, "queue": state.service.queue().stats() })).into_response()
}

/// `GET /state_stats`: where shared state lives and how the link to it is doing.
pub async fn state_stats(State(state): State<Arc<AppState>>) -> Response {
    Json(json!({ "success": true, "state": state.shared_state.status() })).into_response()
}

/// `GET /readyz`: 200 when the gateway can serve (its config and policies
/// are loaded, which they are once it listens, and some deployment's circuit
/// is not open); 503 with the reason otherwise.
pub async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let now = state.service.router().clock().now_ms();
    let all = deployments(&state);
    let open: Vec<&String> = all
        .iter()
        .filter(|(_, d)| d.admission.snapshot(now).circuit == BreakerState::Open)
        .map(|(id, _)| id)
        .collect();
    let groups = state.service.router().groups().count();
    if !all.is_empty() && open.len() == all.len() {
        let body = json!({
            "ready": false,
            "reason": "every deployment's circuit is open",
            "circuit_open": open,
        });
        return (axum::http::StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    }
    Json(json!({
        "ready": true,
        "model_groups": groups,
        "deployments": all.len(),
        "circuit_open": open,
    }))
    .into_response()
}
