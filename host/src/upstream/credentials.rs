//! Where a deployment's AWS credentials come from: the environment, the
//! config itself, or a named profile in the shared credentials file.

use std::path::PathBuf;

use aws_sdk_bedrockruntime::config::Credentials;

use crate::config::CredentialsConfig;

/// Why a deployment's credentials could not be found.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// An environment variable is missing.
    #[error("deployment `{deployment}`: credentials source `env` needs {variable} to be set")]
    MissingEnv {
        deployment: String,
        variable: &'static str,
    },
    /// The shared credentials file or profile is missing or incomplete.
    #[error("deployment `{deployment}`: profile `{profile}` in {file}: {problem}")]
    Profile {
        deployment: String,
        profile: String,
        file: String,
        problem: String,
    },
}

/// Reads the credentials `source` names, once, at start.
pub fn resolve(
    source: &CredentialsConfig,
    deployment: &str,
) -> Result<Credentials, CredentialsError> {
    match source {
        CredentialsConfig::Static {
            access_key_id,
            secret_access_key,
            session_token,
        } => Ok(Credentials::new(
            access_key_id,
            secret_access_key,
            session_token.clone(),
            None,
            "switchyard-config",
        )),
        CredentialsConfig::Env => {
            let var = |variable: &'static str| {
                std::env::var(variable).map_err(|_| CredentialsError::MissingEnv {
                    deployment: deployment.to_owned(),
                    variable,
                })
            };
            Ok(Credentials::new(
                var("AWS_ACCESS_KEY_ID")?,
                var("AWS_SECRET_ACCESS_KEY")?,
                std::env::var("AWS_SESSION_TOKEN").ok(),
                None,
                "switchyard-env",
            ))
        }
        CredentialsConfig::Profile { name } => from_profile(name, deployment),
    }
}

/// The shared credentials file: `AWS_SHARED_CREDENTIALS_FILE`, else `~/.aws/credentials`.
pub fn shared_credentials_file() -> Option<PathBuf> {
    if let Ok(path) = std::env::var("AWS_SHARED_CREDENTIALS_FILE") {
        return Some(PathBuf::from(path));
    }
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".aws").join("credentials"))
}

fn from_profile(profile: &str, deployment: &str) -> Result<Credentials, CredentialsError> {
    let file = shared_credentials_file().unwrap_or_else(|| PathBuf::from("~/.aws/credentials"));
    let error = |problem: String| CredentialsError::Profile {
        deployment: deployment.to_owned(),
        profile: profile.to_owned(),
        file: file.display().to_string(),
        problem,
    };
    let text = std::fs::read_to_string(&file).map_err(|e| error(e.to_string()))?;
    let keys = parse_profile(&text, profile).ok_or_else(|| error("no such profile".into()))?;
    let get = |k: &str| {
        keys.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    let id =
        get("aws_access_key_id").ok_or_else(|| error("aws_access_key_id is missing".into()))?;
    let secret = get("aws_secret_access_key")
        .ok_or_else(|| error("aws_secret_access_key is missing".into()))?;
    Ok(Credentials::new(
        id,
        secret,
        get("aws_session_token"),
        None,
        "switchyard-profile",
    ))
}

/// The `key = value` lines of `[profile]` in an INI credentials file.
fn parse_profile(text: &str, profile: &str) -> Option<Vec<(String, String)>> {
    let mut current: Option<&str> = None;
    let mut found = None::<Vec<(String, String)>>;
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(section) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = Some(section.trim());
            if current == Some(profile) {
                found.get_or_insert_with(Vec::new);
            }
            continue;
        }
        if current == Some(profile) {
            if let Some((k, v)) = line.split_once('=') {
                found
                    .get_or_insert_with(Vec::new)
                    .push((k.trim().to_owned(), v.trim().to_owned()));
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_named_profile_only() {
        let text = "[default]\naws_access_key_id = A\naws_secret_access_key = B\n\n[other]\naws_access_key_id=C\naws_secret_access_key=D\naws_session_token=E\n";
        let other = parse_profile(text, "other").unwrap();
        assert_eq!(
            other,
            vec![
                ("aws_access_key_id".into(), "C".into()),
                ("aws_secret_access_key".into(), "D".into()),
                ("aws_session_token".into(), "E".into())
            ]
        );
        assert!(parse_profile(text, "missing").is_none());
    }
}
