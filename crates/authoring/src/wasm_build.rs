//! `switchyard policy build`: builds a policy crate for wasm32 and wraps the
//! module into a component, with the same toolchain discovery and cargo
//! command line as the host's own build of the built-in policies.

use std::path::{Path, PathBuf};
use std::process::Stdio;

pub use switchyard_wasm_toolchain::{NotFound, Route, Toolchain};

/// Why a policy crate did not build.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// No `Cargo.toml` with a package name.
    #[error("{0} has no Cargo.toml with a [package] name; pass the policy crate's folder")]
    NotACrate(PathBuf),
    /// No toolchain can build for wasm32.
    #[error(transparent)]
    Toolchain(#[from] NotFound),
    /// cargo failed; its output was shown.
    #[error("cargo build failed ({status}); command: {command}")]
    Cargo { status: String, command: String },
    /// The module could not be made a component.
    #[error("cannot make a component of {path}: {message}")]
    Componentize { path: PathBuf, message: String },
    /// Reading or writing a file failed.
    #[error("cannot use {path}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A built component.
#[derive(Debug)]
pub struct Built {
    /// Where it was written.
    pub component: PathBuf,
    /// Its size.
    pub bytes: usize,
    /// How it was built.
    pub route: Route,
}

/// Builds the policy crate in `crate_dir` into `target_dir` (default
/// `<crate_dir>/target`), and writes the component to `out` (default
/// `<target_dir>/<package>.wasm`). cargo's progress goes to stderr.
pub fn build_policy(
    crate_dir: &Path,
    target_dir: Option<&Path>,
    out: Option<&Path>,
) -> Result<Built, BuildError> {
    let manifest = crate_dir.join("Cargo.toml");
    let package =
        package_name(&manifest).ok_or_else(|| BuildError::NotACrate(crate_dir.to_owned()))?;
    let toolchain = Toolchain::discover()?;
    let target_dir = target_dir.map_or_else(|| crate_dir.join("target"), Path::to_path_buf);
    let target_dir = std::path::absolute(&target_dir).map_err(|source| BuildError::Io {
        path: target_dir.clone(),
        source,
    })?;
    let manifest = std::path::absolute(&manifest).map_err(|source| BuildError::Io {
        path: manifest.clone(),
        source,
    })?;
    let mut cmd = toolchain.build_command(&manifest, &package, &target_dir);
    // cargo writes progress to stderr; its stdout would mix with ours.
    cmd.stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit());
    let status = cmd.status().map_err(|source| BuildError::Io {
        path: toolchain.cargo.clone(),
        source,
    })?;
    if !status.success() {
        return Err(BuildError::Cargo {
            status: status.to_string(),
            command: format!("{cmd:?}"),
        });
    }
    let module = Toolchain::artifact(&target_dir, &package);
    let bytes = std::fs::read(&module).map_err(|source| BuildError::Io {
        path: module.clone(),
        source,
    })?;
    let component = componentize(&bytes).map_err(|message| BuildError::Componentize {
        path: module.clone(),
        message,
    })?;
    let dest = out.map_or_else(
        || target_dir.join(format!("{package}.wasm")),
        Path::to_path_buf,
    );
    std::fs::write(&dest, &component).map_err(|source| BuildError::Io {
        path: dest.clone(),
        source,
    })?;
    Ok(Built {
        component: dest,
        bytes: component.len(),
        route: toolchain.route,
    })
}

/// Wraps a core module into a component. The module names its world in the
/// custom sections `wit-bindgen` put there; the encoder validates the result.
pub fn componentize(module: &[u8]) -> Result<Vec<u8>, String> {
    wit_component::ComponentEncoder::default()
        .module(module)
        .and_then(|encoder| encoder.validate(true).encode())
        .map_err(|e| format!("{e:#}"))
}

/// The `[package] name` of a manifest.
fn package_name(manifest: &Path) -> Option<String> {
    let text = std::fs::read_to_string(manifest).ok()?;
    let table: toml::Table = toml::from_str(&text).ok()?;
    table
        .get("package")?
        .get("name")?
        .as_str()
        .map(str::to_owned)
}
