//! Secrets kept out of the config file: `[[api_keys]] key_file`, `[admin]
//! token_file` and `[state] url_file` name a file that holds the value, as a
//! mounted Kubernetes or Docker secret does. They are read when the config
//! is loaded, so a reload (SIGHUP or `POST /admin/reload`) picks up a
//! rotated secret.

use std::path::{Path, PathBuf};

use super::{invalid, Config, ConfigError};

impl Config {
    /// Reads each `*_file` into the value it stands for. A value may be
    /// written in the file or in the config, not both.
    pub(super) fn read_secret_files(&mut self, base: &Path) -> Result<(), ConfigError> {
        for (i, k) in self.api_keys.iter_mut().enumerate() {
            match (&k.key_file, k.key.is_empty()) {
                (Some(_), false) => {
                    return Err(invalid(
                        format!("api_keys[{i}].key_file"),
                        "set `key` or `key_file`, not both",
                    ))
                }
                (Some(file), true) => {
                    k.key = read_secret(base, file, &format!("api_keys[{i}].key_file"))?;
                }
                (None, true) => {
                    return Err(invalid(
                        format!("api_keys[{i}].key"),
                        "is required (or `key_file`, a file holding it)",
                    ))
                }
                (None, false) => {}
            }
        }
        if let Some(file) = &self.admin.token_file {
            if self.admin.token.is_some() {
                return Err(invalid(
                    "admin.token_file",
                    "set `token` or `token_file`, not both",
                ));
            }
            self.admin.token = Some(read_secret(base, file, "admin.token_file")?);
        }
        if let Some(file) = &self.state.url_file {
            if self.state.url.is_some() {
                return Err(invalid(
                    "state.url_file",
                    "set `url` or `url_file`, not both",
                ));
            }
            self.state.url = Some(read_secret(base, file, "state.url_file")?);
        }
        Ok(())
    }
}

/// The secret in `file` (relative to `base`), without the line break an
/// editor or `kubectl create secret --from-file` leaves at its end.
fn read_secret(base: &Path, file: &Path, key: &str) -> Result<String, ConfigError> {
    let path: PathBuf = base.join(file);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| invalid(key, format!("cannot read {}: {e}", path.display())))?;
    let secret = text.trim_end_matches(['\n', '\r']);
    if secret.is_empty() {
        return Err(invalid(key, format!("{} is empty", path.display())));
    }
    Ok(secret.to_owned())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::{Config, ConfigError};

    /// `text` with one deployment and group, written to a config file in `dir`.
    fn load(dir: &Path, text: &str) -> Result<Config, ConfigError> {
        let path = dir.join("switchyard.toml");
        let group = "[[deployments]]\nid = \"a\"\nmodel_id = \"m\"\n\
                     [[model_groups]]\nname = \"g\"\ndeployments = [\"a\"]\n";
        std::fs::write(&path, format!("{group}{text}")).unwrap();
        Config::load(&path)
    }

    fn problem(result: Result<Config, ConfigError>) -> String {
        result.expect_err("the config must be refused").to_string()
    }

    #[test]
    fn secrets_come_from_files_relative_to_the_config() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("secrets")).unwrap();
        std::fs::write(dir.path().join("secrets/alice"), "alice-key-0123456789\n").unwrap();
        std::fs::write(dir.path().join("secrets/admin"), "admin-token-0123456789").unwrap();
        std::fs::write(
            dir.path().join("secrets/redis"),
            "redis://:pw@127.0.0.1:1/\r\n",
        )
        .unwrap();
        let config = load(
            dir.path(),
            r#"
            [admin]
            token_file = "secrets/admin"
            [state]
            backend = "redis"
            url_file = "secrets/redis"
            [[api_keys]]
            key_file = "secrets/alice"
            user = "alice"
            "#,
        )
        .unwrap();
        assert_eq!(config.api_keys[0].key, "alice-key-0123456789");
        assert_eq!(
            config.admin.token.as_deref(),
            Some("admin-token-0123456789")
        );
        assert_eq!(
            config.state.url.as_deref(),
            Some("redis://:pw@127.0.0.1:1/")
        );

        let shown = crate::config::show::show(&dir.path().join("switchyard.toml"), None).unwrap();
        for secret in ["alice-key", "admin-token", ":pw@"] {
            assert!(
                !shown.contains(secret),
                "`config show` printed {secret}:\n{shown}"
            );
        }
        assert!(shown.contains("token_file = \"secrets/admin\""), "{shown}");
    }

    #[test]
    fn a_missing_empty_or_doubled_secret_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("empty"), "\n").unwrap();
        let missing = problem(load(
            dir.path(),
            "[[api_keys]]\nkey_file = \"nowhere\"\nuser = \"a\"\n",
        ));
        assert!(
            missing.contains("api_keys[0].key_file") && missing.contains("cannot read"),
            "{missing}"
        );
        let empty = problem(load(dir.path(), "[admin]\ntoken_file = \"empty\"\n"));
        assert!(
            empty.contains("admin.token_file") && empty.contains("is empty"),
            "{empty}"
        );
        let both = problem(load(
            dir.path(),
            "[admin]\ntoken = \"admin-token-0123456789\"\ntoken_file = \"empty\"\n",
        ));
        assert!(both.contains("not both"), "{both}");
        let neither = problem(load(dir.path(), "[[api_keys]]\nuser = \"a\"\n"));
        assert!(
            neither.contains("api_keys[0].key") && neither.contains("required"),
            "{neither}"
        );
    }
}
