//! `switchyard config show`: the effective config, as TOML, with where each
//! value came from (the config file, the preset, or the built-in default).
//! Secrets (API keys, the admin token, static AWS keys) are not printed.

use std::fmt::Write;
use std::path::Path;

use super::{read, Config, ConfigError, Preset};

/// Keys whose values are secrets, wherever they appear.
const SECRETS: &[&str] = &["key", "token", "secret_access_key", "session_token"];

/// The effective config of the file at `path` (with `preset` instead of the
/// one it names, if given), rendered with a comment on each value saying
/// where it came from.
pub fn show(path: &Path, preset: Option<Preset>) -> Result<String, ConfigError> {
    let text = read(path)?;
    let file: toml::Table = toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    let config = Config::load_with(path, preset)?;
    let mut effective = toml::Table::try_from(&config).map_err(|e| ConfigError::Parse {
        path: path.display().to_string(),
        message: format!("cannot show the effective config: {e}"),
    })?;
    redact(&mut effective);
    let sources = Sources {
        file: &file,
        preset: config.preset.map(|p| (p, p.values())),
        preset_from_command_line: preset.is_some(),
    };
    let mut out = format!(
        "# The effective config of {}{}.\n# Each value says where it came from: the config file, the preset, or the default.\n",
        path.display(),
        config
            .preset
            .map(|p| format!(" with preset {p}"))
            .unwrap_or_default()
    );
    render(&mut out, &mut Vec::new(), &effective, &sources);
    Ok(out)
}

struct Sources<'a> {
    file: &'a toml::Table,
    preset: Option<(Preset, toml::Table)>,
    /// `--preset` was given, so it wins over the file's `preset`.
    preset_from_command_line: bool,
}

impl Sources<'_> {
    fn of(&self, path: &[String]) -> String {
        if path == ["preset"] && self.preset_from_command_line {
            return "command line".to_owned();
        }
        if lookup(self.file, path).is_some() {
            return "config file".to_owned();
        }
        if let Some((last, parents)) = path.split_last() {
            let file_key = [parents, &[format!("{last}_file")]].concat();
            if let Some(file) = lookup(self.file, &file_key).and_then(toml::Value::as_str) {
                return format!("the file {file}");
            }
        }
        match &self.preset {
            Some((preset, values)) if lookup(values, path).is_some() => format!("preset {preset}"),
            _ => "default".to_owned(),
        }
    }
}

fn lookup<'t>(table: &'t toml::Table, path: &[String]) -> Option<&'t toml::Value> {
    let (last, parents) = path.split_last()?;
    let mut table = table;
    for key in parents {
        table = table.get(key)?.as_table()?;
    }
    table.get(last)
}

/// Writes `table`'s values, then its sub-tables under their own headers.
fn render(out: &mut String, path: &mut Vec<String>, table: &toml::Table, sources: &Sources<'_>) {
    for (key, value) in table.iter().filter(|(_, v)| !v.is_table()) {
        path.push(key.clone());
        let _ = writeln!(out, "{key} = {value}  # {}", sources.of(path));
        path.pop();
    }
    for (key, value) in table {
        if let toml::Value::Table(sub) = value {
            path.push(key.clone());
            let _ = writeln!(out, "\n[{}]", path.join("."));
            render(out, path, sub, sources);
            path.pop();
        }
    }
}

fn redact(table: &mut toml::Table) {
    // A value read from a `*_file` is a secret whatever its name (a Redis
    // URL with its password).
    let from_files: Vec<String> = table
        .keys()
        .filter_map(|k| k.strip_suffix("_file").map(str::to_owned))
        .collect();
    for (key, value) in table.iter_mut() {
        let secret = SECRETS.contains(&key.as_str()) || from_files.contains(key);
        if secret && value.is_str() {
            *value = toml::Value::String("<redacted>".to_owned());
        } else {
            redact_value(value);
        }
    }
}

fn redact_value(value: &mut toml::Value) {
    match value {
        toml::Value::Table(table) => redact(table),
        toml::Value::Array(items) => items.iter_mut().for_each(redact_value),
        _ => {}
    }
}
