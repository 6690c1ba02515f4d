//! `switchyard policy new`: writes a policy crate that builds, tests and
//! loads as it is, from the templates in `crates/authoring/templates/policy/`.

use std::path::{Component, Path, PathBuf};

use switchyard_policy_host::policy::PolicyKind;

/// Where the SDK was when this binary was built: the default for crates
/// made on the machine that has the Switchyard checkout.
const BUILT_WITH_SDK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../policies/sdk");

const CARGO_TOML: &str = include_str!("../templates/policy/Cargo.toml.tmpl");
const CARGO_CONFIG: &str = include_str!("../templates/policy/dot-cargo/config.toml");
const GITIGNORE: &str = include_str!("../templates/policy/gitignore");

/// The template's source and fixture for `kind`.
fn sources(kind: PolicyKind) -> (&'static str, &'static str) {
    match kind {
        PolicyKind::Selection => (
            include_str!("../templates/policy/selection/lib.rs"),
            include_str!("../templates/policy/selection/fixture.json"),
        ),
        PolicyKind::Cooldown => (
            include_str!("../templates/policy/cooldown/lib.rs"),
            include_str!("../templates/policy/cooldown/fixture.json"),
        ),
        PolicyKind::Fallback => (
            include_str!("../templates/policy/fallback/lib.rs"),
            include_str!("../templates/policy/fallback/fixture.json"),
        ),
    }
}

/// Why a crate could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ScaffoldError {
    /// Not a valid crate name.
    #[error("`{0}` is not a valid policy name: use lowercase letters, digits and `-`, starting with a letter")]
    BadName(String),
    /// The folder exists and is not empty.
    #[error("{0} already exists and is not empty")]
    Exists(PathBuf),
    /// The SDK was not found.
    #[error("the policy SDK (switchyard-policy) is not at {0}; pass --sdk PATH to the `policies/sdk` folder of a Switchyard checkout")]
    NoSdk(PathBuf),
    /// Writing failed.
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What `new` wrote.
#[derive(Debug)]
pub struct Scaffolded {
    /// The crate's folder.
    pub dir: PathBuf,
    /// Its files, relative to `dir`.
    pub files: Vec<&'static str>,
}

/// Writes a `kind` policy crate called `name` into `dir` (made if missing),
/// depending on the SDK at `sdk` (by default the one this binary was built
/// from).
pub fn new_policy(
    dir: &Path,
    name: &str,
    kind: PolicyKind,
    sdk: Option<&Path>,
) -> Result<Scaffolded, ScaffoldError> {
    if !valid_name(name) {
        return Err(ScaffoldError::BadName(name.to_owned()));
    }
    if dir
        .read_dir()
        .is_ok_and(|mut entries| entries.next().is_some())
    {
        return Err(ScaffoldError::Exists(dir.to_owned()));
    }
    let sdk = sdk.map_or_else(|| PathBuf::from(BUILT_WITH_SDK), Path::to_path_buf);
    let sdk = sdk
        .canonicalize()
        .ok()
        .filter(|p| p.join("Cargo.toml").is_file())
        .ok_or(ScaffoldError::NoSdk(sdk))?;
    let write = |relative: &str, text: &str| {
        let path = dir.join(relative);
        path.parent()
            .map(std::fs::create_dir_all)
            .transpose()
            .and_then(|_| std::fs::write(&path, text))
            .map_err(|source| ScaffoldError::Write { path, source })
    };
    write("Cargo.toml", "")?;
    let dir_abs = dir.canonicalize().map_err(|source| ScaffoldError::Write {
        path: dir.to_owned(),
        source,
    })?;
    let sdk_path = relative_path(&dir_abs, &sdk);
    let fill = |text: &str| {
        text.replace("{{name}}", name)
            .replace("{{kind}}", kind.world())
            .replace("{{sdk_path}}", &sdk_path.to_string_lossy())
    };
    let (lib, fixture) = sources(kind);
    let files: [(&'static str, &str); 5] = [
        ("Cargo.toml", CARGO_TOML),
        (".cargo/config.toml", CARGO_CONFIG),
        (".gitignore", GITIGNORE),
        ("src/lib.rs", lib),
        ("fixtures/examples.json", fixture),
    ];
    for (relative, text) in files {
        write(relative, &fill(text))?;
    }
    Ok(Scaffolded {
        dir: dir.to_owned(),
        files: files.iter().map(|(f, _)| *f).collect(),
    })
}

/// A package name cargo accepts and a component can be named by.
fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

/// `to` relative to `from` (both absolute), so a crate made inside a
/// checkout keeps building when the checkout moves.
fn relative_path(from: &Path, to: &Path) -> PathBuf {
    let from: Vec<Component<'_>> = from.components().collect();
    let to_parts: Vec<Component<'_>> = to.components().collect();
    let common = from
        .iter()
        .zip(&to_parts)
        .take_while(|(a, b)| a == b)
        .count();
    // Only the root in common: an absolute path reads better.
    if common <= 1 {
        return to.to_owned();
    }
    let mut path = PathBuf::new();
    for _ in common..from.len() {
        path.push("..");
    }
    for part in &to_parts[common..] {
        path.push(part);
    }
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(valid_name("cheapest-first"));
        assert!(valid_name("p2"));
        assert!(!valid_name("2p"));
        assert!(!valid_name("Cheap"));
        assert!(!valid_name(""));
        assert!(!valid_name("a b"));
    }

    #[test]
    fn relative_paths_climb_to_the_common_folder() {
        assert_eq!(
            relative_path(Path::new("/w/examples/p"), Path::new("/w/policies/sdk")),
            PathBuf::from("../../policies/sdk")
        );
        assert_eq!(
            relative_path(Path::new("/tmp/p"), Path::new("/w/policies/sdk")),
            PathBuf::from("/w/policies/sdk")
        );
    }
}
