//! Presets: named sets of defaults for admission, timeouts and logging, for
//! the four ways the gateway is run. A preset sits between the built-in
//! defaults and the config file: every key the file sets still wins.
//!
//! Chosen by `preset = "..."` in the config or `switchyard serve --preset`
//! (which wins over the file's). `switchyard config show` prints the
//! effective config and where each value came from.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A named set of defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Preset {
    /// One developer, often against the simulator: debug logs, short waits
    /// and short breaker pauses so problems show at once, a quick shutdown.
    Development,
    /// One person's tools (an agent on a workstation): there is nobody to be
    /// fair to, so that user may run and queue as much as the gateway does,
    /// and a request waits for quota rather than fail.
    SingleUser,
    /// A team's service with modest quotas: JSON logs, fair shares of a
    /// small gateway, waits up to 30 s.
    ProductionLow,
    /// Many users on high quotas, often several instances: JSON logs, a
    /// large gateway with small per-user shares, and waits cut at 10 s so
    /// queues stay short under a surge (shedding beats timing out).
    ProductionHigh,
}

impl Preset {
    /// Every preset, in the order `--help` lists them.
    pub const ALL: [Preset; 4] = [
        Preset::Development,
        Preset::SingleUser,
        Preset::ProductionLow,
        Preset::ProductionHigh,
    ];

    /// The name a config or the command line uses.
    pub fn name(self) -> &'static str {
        match self {
            Preset::Development => "development",
            Preset::SingleUser => "single-user",
            Preset::ProductionLow => "production-low",
            Preset::ProductionHigh => "production-high",
        }
    }

    /// The values it sets, as the config file would write them.
    pub fn toml(self) -> &'static str {
        match self {
            Preset::Development => DEVELOPMENT,
            Preset::SingleUser => SINGLE_USER,
            Preset::ProductionLow => PRODUCTION_LOW,
            Preset::ProductionHigh => PRODUCTION_HIGH,
        }
    }

    /// [`toml`](Self::toml), parsed.
    pub fn values(self) -> toml::Table {
        toml::from_str(self.toml()).expect("a preset is valid TOML (unit-tested)")
    }
}

impl fmt::Display for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A name that is no preset.
#[derive(Debug, Clone, thiserror::Error)]
#[error("no preset `{0}` (presets: development, single-user, production-low, production-high)")]
pub struct UnknownPreset(pub String);

impl FromStr for Preset {
    type Err = UnknownPreset;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Preset::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| UnknownPreset(s.to_owned()))
    }
}

const DEVELOPMENT: &str = r#"
[logging]
level = "debug"
format = "text"
[admission]
max_wait_ms = 5000
[admission.breaker]
open_ms = 5000
[limits]
attempt_timeout_ms = 60000
[http]
max_connections = 256
shutdown_grace_ms = 1000
"#;

const SINGLE_USER: &str = r#"
[logging]
level = "info"
format = "text"
[admission]
max_concurrent = 32
max_per_user = 32
max_queued = 1024
max_queued_per_user = 1024
max_wait_ms = 120000
[http]
max_connections = 256
"#;

const PRODUCTION_LOW: &str = r#"
[logging]
level = "info"
format = "json"
[admission]
max_concurrent = 128
max_per_user = 4
max_queued = 1024
max_queued_per_user = 32
max_wait_ms = 30000
[http]
max_connections = 2048
shutdown_grace_ms = 30000
"#;

const PRODUCTION_HIGH: &str = r#"
[logging]
level = "info"
format = "json"
[admission]
max_concurrent = 2048
max_per_user = 4
max_queued = 16384
max_queued_per_user = 16
max_wait_ms = 10000
[admission.concurrency]
initial = 64
max = 1024
[http]
max_connections = 16384
header_read_timeout_ms = 5000
idle_timeout_ms = 30000
shutdown_grace_ms = 30000
"#;

/// `file` laid over `under`: a key the file sets wins, and tables merge key
/// by key, so a file that sets one admission value keeps the preset's others.
pub fn layer(under: toml::Table, file: &toml::Table) -> toml::Table {
    let mut merged = under;
    for (key, value) in file {
        match (merged.get_mut(key), value) {
            (Some(toml::Value::Table(below)), toml::Value::Table(above)) => {
                let below = std::mem::take(below);
                merged.insert(key.clone(), toml::Value::Table(layer(below, above)));
            }
            _ => {
                merged.insert(key.clone(), value.clone());
            }
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for preset in Preset::ALL {
            assert_eq!(preset.name().parse::<Preset>().unwrap(), preset);
        }
        assert!("fast".parse::<Preset>().is_err());
    }

    #[test]
    fn the_file_wins_key_by_key() {
        let preset = Preset::ProductionHigh.values();
        let file: toml::Table = toml::from_str("[admission]\nmax_wait_ms = 1\n").unwrap();
        let merged = layer(preset, &file);
        assert_eq!(merged["admission"]["max_wait_ms"].as_integer(), Some(1));
        assert_eq!(merged["admission"]["max_per_user"].as_integer(), Some(4));
        assert_eq!(merged["http"]["max_connections"].as_integer(), Some(16384));
    }
}
