//! Re-reading the config file while serving: its policy changes are
//! applied slot by slot (the admin API's `POST /admin/reload` and SIGHUP).

use crate::config::{Config, ConfigError};
use crate::swap::{ReloadReport, Swapper};

use super::AppState;

/// Re-reads the config file and applies its policy changes.
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
    let config = Config::load(&path)?;
    let running = state
        .running_config
        .lock()
        .expect("config poisoned")
        .clone();
    let swapper = Swapper {
        router: state.service.router(),
        runtime: &state.runtime,
    };
    let report = swapper.reload(&config, &running);
    *state.running_config.lock().expect("config poisoned") = config;
    Ok(report)
}
