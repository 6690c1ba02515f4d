//! `/admin/keys` and `/admin/teams`: API keys and teams as data, made,
//! limited, disabled, rotated and deleted while the gateway serves. A
//! change is written to the key store and put in force here at once; the
//! other instances of a shared store follow within a second.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::unreadable_json;
use super::AppState;
use crate::keys::record::{self, name_problem};
use crate::keys::{KeyRecord, KeyStoreError, Limits, TeamRecord};
use crate::service::{ErrorCode, GatewayError};
use crate::spend::{self, prices::usd};

type Answer = Result<Response, GatewayError>;

fn body<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, GatewayError> {
    body.map(|Json(b)| b).map_err(|r| unreadable_json(&r))
}

fn store_error(e: KeyStoreError) -> GatewayError {
    GatewayError::refused(
        ErrorCode::KeyStoreUnavailable,
        crate::error_chain::render(&e),
    )
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Reads the store again and puts it in force here.
async fn refresh(state: &AppState) -> Result<(), GatewayError> {
    let stored = state.key_store.load().await.map_err(store_error)?;
    state.access.apply_stored(stored);
    Ok(())
}

fn invalid(message: impl Into<String>, param: &str) -> GatewayError {
    GatewayError::refused_param(ErrorCode::InvalidRequest, message, param)
}

fn check_limits(limits: &Limits) -> Result<(), GatewayError> {
    match limits.problem() {
        Some(problem) => Err(invalid(problem, "limits")),
        None => Ok(()),
    }
}

fn check_team_limits(limits: &Limits) -> Result<(), GatewayError> {
    match limits.team_problem() {
        Some(problem) => Err(invalid(problem, "limits")),
        None => Ok(()),
    }
}

/// Every team, stored or in the config (a stored team wins over a config
/// team of the same name, as in the access rules), sorted by name. A config
/// team's `created_at_ms` is 0.
pub(crate) fn all_teams(state: &AppState) -> Vec<TeamRecord> {
    let mut teams = state.access.stored().teams.clone();
    let configured = state
        .running_config
        .lock()
        .expect("config poisoned")
        .teams
        .clone();
    for t in configured {
        if !teams.iter().any(|stored| stored.name == t.name) {
            teams.push(TeamRecord {
                name: t.name,
                limits: t.limits,
                created_at_ms: 0,
            });
        }
    }
    teams.sort_by(|a, b| a.name.cmp(&b.name));
    teams
}

/// Whether a team of `name` exists (stored or in the config).
fn team_exists(state: &AppState, name: &str) -> bool {
    all_teams(state).iter().any(|t| t.name == name)
}

fn stored_key(state: &AppState, id: &str) -> Result<KeyRecord, GatewayError> {
    state
        .access
        .stored()
        .keys
        .iter()
        .find(|k| k.id == id)
        .cloned()
        .ok_or_else(|| GatewayError::refused(ErrorCode::UnknownKey, format!("no key `{id}`")))
}

fn stored_team(state: &AppState, name: &str) -> Result<TeamRecord, GatewayError> {
    state
        .access
        .stored()
        .teams
        .iter()
        .find(|t| t.name == name)
        .cloned()
        .ok_or_else(|| {
            GatewayError::refused(ErrorCode::UnknownTeam, format!("no stored team `{name}`"))
        })
}

/// How many keys team `name` has, stored or in the config.
fn keys_of(state: &AppState, name: &str) -> usize {
    let stored = state.access.stored();
    let configured = state
        .running_config
        .lock()
        .expect("config poisoned")
        .api_keys
        .iter()
        .filter(|k| k.team.as_deref() == Some(name))
        .count();
    stored.keys.iter().filter(|k| k.team == name).count() + configured
}

/// A key as the admin API shows it: never its secret.
fn key_view(key: &KeyRecord) -> Value {
    json!({
        "id": key.id,
        "team": key.team,
        "user": key.user,
        "name": key.name,
        "prefix": key.prefix,
        "model_groups": key.model_groups,
        "priority": key.priority,
        "limits": key.limits,
        "disabled": key.disabled,
        "expired": key.expired(now_ms()),
        "created_at_ms": key.created_at_ms,
        "expires_at_ms": key.expires_at_ms,
    })
}

async fn team_view(state: &AppState, team: &TeamRecord) -> Value {
    let name = &team.name;
    let keys = keys_of(state, name);
    let spend = match state
        .service
        .spending()
        .spent(&format!("team:{name}"))
        .await
    {
        Ok(periods) => {
            let mut spend = serde_json::Map::new();
            for (period, tokens, nano) in periods {
                let mut spent = json!({ "tokens": tokens, "usd": usd(nano) });
                let (token_budget, usd_budget) = spend::budgets(&team.limits, period);
                if let Some(budget) = token_budget {
                    spent["token_budget"] = json!(budget);
                    spent["tokens_left"] = json!(budget.saturating_sub(tokens));
                }
                if let Some(budget) = usd_budget {
                    spent["usd_budget"] = json!(budget);
                    spent["usd_left"] = json!((budget - usd(nano)).max(0.0));
                }
                spend.insert(period.name().to_owned(), spent);
            }
            Value::Object(spend)
        }
        Err(_) => Value::Null,
    };
    json!({
        "name": name,
        "limits": team.limits,
        "keys": keys,
        "created_at_ms": team.created_at_ms,
        "spend": spend,
    })
}

/// `POST /admin/teams`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewTeam {
    name: String,
    #[serde(default)]
    limits: Limits,
}

pub async fn create_team(
    State(state): State<Arc<AppState>>,
    new: Result<Json<NewTeam>, JsonRejection>,
) -> Answer {
    let new = body(new)?;
    if let Some(problem) = name_problem("name", &new.name) {
        return Err(invalid(problem, "name"));
    }
    check_team_limits(&new.limits)?;
    if team_exists(&state, &new.name) {
        return Err(GatewayError::refused(
            ErrorCode::TeamExists,
            format!("a team `{}` exists already", new.name),
        ));
    }
    let team = TeamRecord {
        name: new.name,
        limits: new.limits,
        created_at_ms: now_ms(),
    };
    state.key_store.put_team(&team).await.map_err(store_error)?;
    refresh(&state).await?;
    let view = team_view(&state, &team).await;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

/// `GET /admin/teams`: stored teams and the config's.
pub async fn list_teams(State(state): State<Arc<AppState>>) -> Answer {
    Ok(Json(json!({ "teams": team_views(&state).await })).into_response())
}

/// `GET /team_stats` (an observer's route, beside `/model_stats` and
/// `/metrics`, which carries the same spend per team): what each team spent
/// this UTC day, week and month and what is left of each budget, for the
/// status page. Its other limits (RPM, TPM) stay on the admin API.
pub async fn team_stats(State(state): State<Arc<AppState>>) -> Response {
    let mut teams = team_views(&state).await;
    for team in &mut teams {
        if let Some(team) = team.as_object_mut() {
            team.remove("limits");
            team.remove("created_at_ms");
        }
    }
    Json(json!({ "success": true, "teams": teams })).into_response()
}

/// Every team as the admin API shows it.
async fn team_views(state: &AppState) -> Vec<Value> {
    let teams = all_teams(state);
    let mut views = Vec::with_capacity(teams.len());
    for team in &teams {
        views.push(team_view(state, team).await);
    }
    views
}

/// `GET /admin/teams/{name}`.
pub async fn show_team(State(state): State<Arc<AppState>>, Path(name): Path<String>) -> Answer {
    let team = all_teams(&state)
        .into_iter()
        .find(|t| t.name == name)
        .ok_or_else(|| {
            GatewayError::refused(ErrorCode::UnknownTeam, format!("no team `{name}`"))
        })?;
    Ok(Json(team_view(&state, &team).await).into_response())
}

/// `PATCH /admin/teams/{name}`: its limits, replaced.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeamChange {
    limits: Limits,
}

pub async fn change_team(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    change: Result<Json<TeamChange>, JsonRejection>,
) -> Answer {
    let change = body(change)?;
    check_team_limits(&change.limits)?;
    let mut team = stored_team(&state, &name)?;
    team.limits = change.limits;
    state.key_store.put_team(&team).await.map_err(store_error)?;
    refresh(&state).await?;
    Ok(Json(team_view(&state, &team).await).into_response())
}

/// `DELETE /admin/teams/{name}`: only a team without keys.
pub async fn delete_team(State(state): State<Arc<AppState>>, Path(name): Path<String>) -> Answer {
    stored_team(&state, &name)?;
    let keys = keys_of(&state, &name);
    if keys > 0 {
        return Err(GatewayError::refused(
            ErrorCode::TeamHasKeys,
            format!("team `{name}` still has {keys} keys (stored, or `[[api_keys]]` in the config); delete them or move them to another team first"),
        ));
    }
    state
        .key_store
        .delete_team(&name)
        .await
        .map_err(store_error)?;
    refresh(&state).await?;
    Ok(Json(json!({ "deleted": name })).into_response())
}

/// `POST /admin/keys`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    team: String,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    model_groups: Vec<String>,
    /// Seconds from now until it stops working.
    #[serde(default)]
    expires_in_s: Option<u64>,
    #[serde(default)]
    priority: i32,
    #[serde(default)]
    limits: Limits,
}

fn check_model_groups(state: &AppState, groups: &[String]) -> Result<(), GatewayError> {
    for group in groups {
        state
            .service
            .group_for(group)
            .map_err(|e| GatewayError::refused_param(e.code(), e.to_string(), "model_groups"))?;
    }
    Ok(())
}

pub async fn create_key(
    State(state): State<Arc<AppState>>,
    new: Result<Json<NewKey>, JsonRejection>,
) -> Answer {
    let new = body(new)?;
    if !team_exists(&state, &new.team) {
        return Err(GatewayError::refused_param(
            ErrorCode::UnknownTeam,
            format!("no team `{}`; make it first (POST /admin/teams)", new.team),
            "team",
        ));
    }
    for (field, value) in [("user", &new.user), ("name", &new.name)] {
        if let Some(problem) = value.as_deref().and_then(|v| name_problem(field, v)) {
            return Err(invalid(problem, field));
        }
    }
    check_limits(&new.limits)?;
    check_model_groups(&state, &new.model_groups)?;
    let now = now_ms();
    let mut key = KeyRecord {
        id: record::new_key_id(),
        digest: String::new(),
        prefix: String::new(),
        team: new.team,
        user: new.user,
        name: new.name,
        model_groups: new.model_groups,
        priority: new.priority,
        limits: new.limits,
        disabled: false,
        created_at_ms: now,
        expires_at_ms: new
            .expires_in_s
            .map(|s| now.saturating_add(s.saturating_mul(1000))),
    };
    let secret = record::new_secret();
    key.set_secret(&secret);
    state.key_store.put_key(&key).await.map_err(store_error)?;
    refresh(&state).await?;
    let answer = json!({ "key": key_view(&key), "secret": secret });
    Ok((StatusCode::CREATED, Json(answer)).into_response())
}

/// `GET /admin/keys?team=`.
#[derive(Deserialize)]
pub struct KeyFilter {
    team: Option<String>,
}

pub async fn list_keys(
    State(state): State<Arc<AppState>>,
    Query(filter): Query<KeyFilter>,
) -> Answer {
    let stored = state.access.stored();
    let mut keys: Vec<&KeyRecord> = stored
        .keys
        .iter()
        .filter(|k| filter.team.as_ref().is_none_or(|t| *t == k.team))
        .collect();
    keys.sort_by(|a, b| (&a.team, a.created_at_ms).cmp(&(&b.team, b.created_at_ms)));
    let views: Vec<Value> = keys.into_iter().map(key_view).collect();
    Ok(Json(json!({ "keys": views })).into_response())
}

/// `GET /admin/keys/{id}`.
pub async fn show_key(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Answer {
    Ok(Json(key_view(&stored_key(&state, &id)?)).into_response())
}

/// `PATCH /admin/keys/{id}`: its limits (replaced), model groups or rank.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyChange {
    #[serde(default)]
    limits: Option<Limits>,
    #[serde(default)]
    model_groups: Option<Vec<String>>,
    #[serde(default)]
    priority: Option<i32>,
}

pub async fn change_key(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    change: Result<Json<KeyChange>, JsonRejection>,
) -> Answer {
    let change = body(change)?;
    let mut key = stored_key(&state, &id)?;
    if let Some(limits) = change.limits {
        check_limits(&limits)?;
        key.limits = limits;
    }
    if let Some(groups) = change.model_groups {
        check_model_groups(&state, &groups)?;
        key.model_groups = groups;
    }
    if let Some(priority) = change.priority {
        key.priority = priority;
    }
    save(&state, &key).await?;
    Ok(Json(key_view(&key)).into_response())
}

async fn save(state: &AppState, key: &KeyRecord) -> Result<(), GatewayError> {
    state.key_store.put_key(key).await.map_err(store_error)?;
    refresh(state).await
}

/// `POST /admin/keys/{id}/disable`.
pub async fn disable_key(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Answer {
    let mut key = stored_key(&state, &id)?;
    key.disabled = true;
    save(&state, &key).await?;
    Ok(Json(key_view(&key)).into_response())
}

/// `POST /admin/keys/{id}/enable`.
pub async fn enable_key(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Answer {
    let mut key = stored_key(&state, &id)?;
    key.disabled = false;
    save(&state, &key).await?;
    Ok(Json(key_view(&key)).into_response())
}

/// `POST /admin/keys/{id}/rotate`: a new secret; the old one stops.
pub async fn rotate_key(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Answer {
    let mut key = stored_key(&state, &id)?;
    let secret = record::new_secret();
    key.set_secret(&secret);
    save(&state, &key).await?;
    Ok(Json(json!({ "key": key_view(&key), "secret": secret })).into_response())
}

/// `DELETE /admin/keys/{id}`.
pub async fn delete_key(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Answer {
    stored_key(&state, &id)?;
    state.key_store.delete_key(&id).await.map_err(store_error)?;
    refresh(&state).await?;
    Ok(Json(json!({ "deleted": id })).into_response())
}
