//! `GET /admin/usage`: who spent what, from the books every instance
//! writes to, grouped by team, key, user, model, model group, deployment,
//! account or day, as JSON or CSV.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::AppState;
use crate::service::{ErrorCode, GatewayError};
use crate::spend::ledger::{self, GroupBy};
use crate::spend::period::{civil, date, days_from_civil, parse_date};

/// The longest span one report covers, in days (what the books keep).
const MAX_DAYS: u64 = 400;

#[derive(Deserialize)]
pub struct UsageQuery {
    #[serde(default)]
    group_by: Option<String>,
    /// First day, `YYYY-MM-DD` (default: the first of this month).
    #[serde(default)]
    from: Option<String>,
    /// Last day, included (default: today).
    #[serde(default)]
    to: Option<String>,
    /// `json` (default) or `csv`.
    #[serde(default)]
    format: Option<String>,
}

fn bad(message: String, param: &str) -> GatewayError {
    GatewayError::refused_param(ErrorCode::InvalidRequest, message, param)
}

fn day(text: Option<&str>, default: u64, param: &str) -> Result<u64, GatewayError> {
    match text {
        None => Ok(default),
        Some(t) => parse_date(t).ok_or_else(|| {
            bad(
                format!("`{param}` must be a date as YYYY-MM-DD, not `{t}`"),
                param,
            )
        }),
    }
}

pub async fn usage(
    State(state): State<Arc<AppState>>,
    Query(query): Query<UsageQuery>,
) -> Result<Response, GatewayError> {
    let name = query.group_by.as_deref().unwrap_or("team");
    let group_by = serde_json::from_value::<GroupBy>(json!(name)).map_err(|_| {
        bad(
            format!("`group_by` must be team, key, user, model, group, deployment, account or day, not `{name}`"),
            "group_by",
        )
    })?;
    let spending = state.service.spending();
    let today = spending.today();
    let (year, month, _) = civil(today);
    let from = day(
        query.from.as_deref(),
        days_from_civil(year, month, 1),
        "from",
    )?;
    let to = day(query.to.as_deref(), today, "to")?;
    if from > to {
        return Err(bad("`from` must not be after `to`".into(), "from"));
    }
    if to - from >= MAX_DAYS {
        return Err(bad(
            format!("a report covers at most {MAX_DAYS} days"),
            "from",
        ));
    }
    let days = spending.usage(from, to).await.map_err(|e| {
        GatewayError::refused(
            ErrorCode::KeyStoreUnavailable,
            crate::error_chain::render(&e),
        )
    })?;
    let rows = ledger::report(&days, group_by);
    match query.format.as_deref() {
        Some("csv") => Ok((
            [("content-type", "text/csv; charset=utf-8")],
            ledger::csv(group_by, &rows),
        )
            .into_response()),
        None | Some("json") => {
            let name = group_by.name();
            let listed: Vec<_> = rows
                .iter()
                .map(|(value, totals)| ledger::row_json(name, value, totals))
                .collect();
            Ok(Json(json!({
                "group_by": name,
                "from": date(from),
                "to": date(to),
                "rows": listed,
                "total": ledger::totals_json(&ledger::total(&rows)),
            }))
            .into_response())
        }
        Some(other) => Err(bad(
            format!("`format` must be json or csv, not `{other}`"),
            "format",
        )),
    }
}
