//! `/admin`: list, upload, activate, roll back and re-parameterise policies,
//! and reload the config, behind the bearer token from `[admin] token`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, JsonRejection};
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::error::{unreadable_body, unreadable_json};
use super::AppState;
use crate::policy::{PolicyKind, SlotError};
use crate::service::{ErrorCode, GatewayError};
use crate::swap::{SwapError, Swapper};

/// Largest body of the small admin calls (activate, params, rollback, reload).
pub const SMALL_BODY_BYTES: usize = 64 * 1024;

/// Runs before every `/admin` handler, so a caller without the token is
/// refused before a byte of its body is read.
pub async fn require_token(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    match authorize(&state, request.headers()) {
        Ok(()) => next.run(request).await,
        Err(e) => e.into_response(),
    }
}

/// Checks the bearer token in constant time.
fn authorize(state: &AppState, headers: &HeaderMap) -> Result<(), GatewayError> {
    let rules = state.access.rules();
    // Without a token there is no admin API at all, not a locked one.
    if rules.admin_token.is_none() {
        return Err(GatewayError::no_route());
    }
    let given = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if rules.is_admin_token(given) {
        Ok(())
    } else if rules.keys.is_client_key(given) {
        Err(GatewayError::refused(
            ErrorCode::Forbidden,
            "a client API key cannot use the admin API; use the admin token",
        ))
    } else {
        Err(GatewayError::refused(
            ErrorCode::Unauthorized,
            "missing or wrong admin token (send `authorization: Bearer <token>`)",
        ))
    }
}

fn kind(name: &str) -> Result<PolicyKind, GatewayError> {
    PolicyKind::ALL
        .into_iter()
        .find(|k| k.world() == name)
        .ok_or_else(|| {
            GatewayError::refused(
                ErrorCode::UnknownKind,
                format!("`{name}` is not a policy kind; use selection, cooldown or fallback"),
            )
        })
}

fn swap_error(error: SwapError) -> GatewayError {
    let message = crate::error_chain::render(&error);
    match error {
        SwapError::UnknownGroup(_) => GatewayError::refused(ErrorCode::UnknownModel, message),
        SwapError::Slot(SlotError::NoSuchVersion(_)) => {
            GatewayError::refused(ErrorCode::UnknownVersion, message)
        }
        SwapError::Slot(SlotError::NothingToRollBackTo) => {
            GatewayError::refused(ErrorCode::NothingToRollBackTo, message)
        }
        SwapError::Invalid(_) | SwapError::Resolve(_) => {
            GatewayError::refused(ErrorCode::InvalidPolicy, message)
        }
    }
}

fn swapper(state: &AppState) -> Swapper<'_> {
    Swapper {
        router: state.service.router(),
        runtime: &state.runtime,
    }
}

/// `GET /admin/policies`: every slot of every group, with its versions.
pub async fn list(State(state): State<Arc<AppState>>) -> Response {
    let mut groups: Vec<_> = state.service.router().groups().collect();
    groups.sort_by(|a, b| a.name.cmp(&b.name));
    let groups: Vec<_> = groups
        .into_iter()
        .map(|g| {
            let slots: serde_json::Map<_, _> = PolicyKind::ALL
                .into_iter()
                .map(|k| {
                    let slot = g.slots.get(k);
                    (
                        k.world().to_owned(),
                        json!({
                            "active": slot.current().number,
                            "versions": slot.versions(),
                        }),
                    )
                })
                .collect();
            json!({ "name": g.name, "policies": slots })
        })
        .collect();
    Json(json!({ "groups": groups })).into_response()
}

#[derive(Debug, Deserialize)]
pub struct UploadQuery {
    /// Activate at once (default) or only validate and add.
    #[serde(default = "yes")]
    activate: bool,
    /// The new version's params, as a JSON object; without it, the active
    /// version's params.
    #[serde(default)]
    params: Option<String>,
}

fn yes() -> bool {
    true
}

/// `POST /admin/policies/{group}/{kind}[?activate=false][&params=JSON]`: the
/// body is the component.
pub async fn upload(
    State(state): State<Arc<AppState>>,
    Path((group, kind_name)): Path<(String, String)>,
    Query(query): Query<UploadQuery>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let kind = match kind(&kind_name) {
        Ok(k) => k,
        Err(e) => return e.into_response(),
    };
    let body = match body {
        Ok(b) => b,
        Err(r) => return unreadable_body(&r).into_response(),
    };
    let params = match query
        .params
        .as_deref()
        .map(serde_json::from_str::<serde_json::Value>)
    {
        None => None,
        Some(Ok(params @ serde_json::Value::Object(_))) => Some(params),
        Some(_) => {
            return GatewayError::refused(
                ErrorCode::InvalidParams,
                "the `params` query parameter must be a JSON object",
            )
            .into_response()
        }
    };
    // Compiling takes milliseconds of CPU: keep it off the async workers.
    let worker_state = state.clone();
    let result = tokio::task::spawn_blocking(move || {
        swapper(&worker_state).upload(&group, kind, body.to_vec(), params, query.activate)
    })
    .await;
    match result {
        Ok(Ok(uploaded)) => (StatusCode::CREATED, Json(uploaded)).into_response(),
        Ok(Err(e)) => swap_error(e).into_response(),
        Err(e) => GatewayError::internal(format!("the upload task failed: {e}")).into_response(),
    }
}

#[derive(Debug, Deserialize)]
pub struct Activate {
    version: u32,
}

/// `POST /admin/policies/{group}/{kind}/activate` with `{"version": N}`.
pub async fn activate(
    State(state): State<Arc<AppState>>,
    Path((group, kind_name)): Path<(String, String)>,
    body: Result<Json<Activate>, JsonRejection>,
) -> Response {
    let kind = match kind(&kind_name) {
        Ok(k) => k,
        Err(e) => return e.into_response(),
    };
    let Json(req) = match body {
        Ok(b) => b,
        Err(r) => return unreadable_json(&r).into_response(),
    };
    match swapper(&state).activate(&group, kind, req.version) {
        Ok(()) => Json(json!({ "active": req.version })).into_response(),
        Err(e) => swap_error(e).into_response(),
    }
}

/// `POST /admin/policies/{group}/{kind}/rollback`.
pub async fn rollback(
    State(state): State<Arc<AppState>>,
    Path((group, kind_name)): Path<(String, String)>,
) -> Response {
    let kind = match kind(&kind_name) {
        Ok(k) => k,
        Err(e) => return e.into_response(),
    };
    match swapper(&state).rollback(&group, kind) {
        Ok(version) => Json(json!({ "active": version })).into_response(),
        Err(e) => swap_error(e).into_response(),
    }
}

/// `PUT /admin/policies/{group}/{kind}/params` with the params object.
pub async fn params(
    State(state): State<Arc<AppState>>,
    Path((group, kind_name)): Path<(String, String)>,
    body: Result<Json<serde_json::Value>, JsonRejection>,
) -> Response {
    let kind = match kind(&kind_name) {
        Ok(k) => k,
        Err(e) => return e.into_response(),
    };
    let params = match body {
        Ok(Json(p)) if p.is_object() => p,
        Ok(_) => {
            return GatewayError::refused(ErrorCode::InvalidRequest, "params must be a JSON object")
                .into_response()
        }
        Err(r) => return unreadable_json(&r).into_response(),
    };
    let worker_state = state.clone();
    let result = tokio::task::spawn_blocking(move || {
        swapper(&worker_state).set_params(&group, kind, params)
    })
    .await;
    match result {
        Ok(Ok(version)) => Json(json!({ "active": version })).into_response(),
        Ok(Err(e)) => swap_error(e).into_response(),
        Err(e) => GatewayError::internal(format!("the params task failed: {e}")).into_response(),
    }
}

/// `POST /admin/reload`: re-read the config file and apply its policy changes.
pub async fn reload(State(state): State<Arc<AppState>>) -> Response {
    match super::reload(&state).await {
        Ok(report) => Json(report).into_response(),
        Err(e) => GatewayError::refused(ErrorCode::InvalidConfig, crate::error_chain::render(&e))
            .into_response(),
    }
}
