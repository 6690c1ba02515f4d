//! Re-reading the config file while serving (`POST /admin/reload` and
//! SIGHUP). A reload applies what it can: the client keys, the admin token
//! and `require_key` at once, and each group's policies through the gate.
//! Everything else that changed is named in `needs_restart`, and the
//! running config keeps its old value, so the next reload names it again
//! until a restart applies it.

use crate::config::{changes, Config, ConfigError};
use crate::swap::{ReloadReport, Swapper};

use super::AppState;

/// Re-reads the config file and applies what can change while serving.
pub(crate) async fn reload(state: &AppState) -> Result<ReloadReport, ConfigError> {
    let _guard = state.reloading.lock().await;
    let path = state
        .config_path
        .lock()
        .expect("config path poisoned")
        .clone()
        .ok_or_else(|| ConfigError::Invalid {
            key: "(config file)".into(),
            problem: "this gateway was not started from a config file".into(),
        })?;
    let wanted = Config::load(&path)?;
    let running = state
        .running_config
        .lock()
        .expect("config poisoned")
        .clone();
    let swapper = Swapper {
        router: state.service.router(),
        runtime: &state.runtime,
    };
    let mut report = swapper.reload(&wanted);
    let mut applied = running.clone();
    applied.api_keys.clone_from(&wanted.api_keys);
    applied.admin.token.clone_from(&wanted.admin.token);
    applied
        .admin
        .token_file
        .clone_from(&wanted.admin.token_file);
    applied.observability.require_key = wanted.observability.require_key;
    applied.teams.clone_from(&wanted.teams);
    if let Ok(prices) = crate::spend::prices::PriceTable::with(&wanted.prices) {
        applied.prices.clone_from(&wanted.prices);
        state.service.spending().set_prices(prices);
    }
    // A policy the gate refused stays refused on the next reload too: the
    // swapper compares with the active version, not with this config.
    for group in &mut applied.model_groups {
        if let Some(w) = wanted.model_groups.iter().find(|w| w.name == group.name) {
            group.policies = w.policies.clone();
        }
    }
    report.applied = changes::differences(&applied, &running);
    if !report.applied.is_empty() {
        state.access.apply_config(&applied);
    }
    report.needs_restart = changes::differences(&wanted, &applied);
    *state.running_config.lock().expect("config poisoned") = applied;
    Ok(report)
}
