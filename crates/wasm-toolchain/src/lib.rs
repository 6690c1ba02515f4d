//! Finding a Rust toolchain that can build policies for `wasm32-unknown-unknown`,
//! and the `cargo build` command line for it.
//!
//! Shared by the gateway core's build script (which builds the built-in
//! policies and test fixtures) and `switchyard policy build`, so it is plain
//! `std` code that neither prints nor exits: callers decide how to report.
//!
//! Two routes, tried in this order:
//!
//! 1. **Prebuilt**: the `rustc` in use has the wasm32 standard library in its
//!    sysroot (`rustup target add wasm32-unknown-unknown`). Plain
//!    `cargo build --target wasm32-unknown-unknown`, linked by the default
//!    `rust-lld`.
//! 2. **Debian**: no such target, but Debian's `rustc-web` (`/usr/bin/rustc`),
//!    its library sources (`rust-web-src`) and `wasm-ld-19` (`lld-19`) are
//!    installed. Then `core` and `alloc` are rebuilt for wasm32 with
//!    `-Zbuild-std` (allowed on a stable toolchain by `RUSTC_BOOTSTRAP=1`) and
//!    linked by `wasm-ld-19`, because Debian's `rust-lld` points at an lld that
//!    is not installed. This is how machines without rustup downloads build.
//!
//! When neither is there, [`NotFound`] says what was checked and the commands
//! that fix it.

use std::ffi::OsStr;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The target policies are built for: no WASI, the component imports only the
/// Switchyard WIT.
pub const WASM_TARGET: &str = "wasm32-unknown-unknown";

/// Debian's `rustc-web` compiler, whose sysroot holds `rust-web-src`.
const DEBIAN_RUSTC: &str = "/usr/bin/rustc";

/// The linker for the Debian route (package `lld-19`).
const DEBIAN_LINKER: &str = "wasm-ld-19";

/// Commands that make a route available, one per route, for error messages:
/// the prebuilt target with rustup, or the Debian packages where rustup
/// cannot download.
pub const FIX_COMMANDS: &[&str] = &[
    "rustup target add wasm32-unknown-unknown",
    "apt-get update && apt-get install -y rustc-web rust-web-src lld-19",
];

/// The environment variables [`Toolchain::discover`] reads. A build script
/// should rerun when one of them changes.
pub const ENV_INPUTS: &[&str] = &["CARGO", "RUSTC", "PATH"];

/// How a [`Toolchain`] builds for wasm32.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// The compiler ships the wasm32 standard library (a rustup target).
    Prebuilt,
    /// `core` and `alloc` are rebuilt from source with `-Zbuild-std` and the
    /// module is linked by `linker`.
    BuildStd {
        /// The `wasm-ld` to link with, as found on `PATH`.
        linker: PathBuf,
    },
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Prebuilt => f.write_str("rustup's wasm32 target"),
            Self::BuildStd { linker } => write!(
                f,
                "core and alloc rebuilt for wasm32, linked by {}",
                linker.display()
            ),
        }
    }
}

/// A cargo and rustc pair that can build policies for wasm32.
#[derive(Debug, Clone)]
pub struct Toolchain {
    /// The cargo to run.
    pub cargo: PathBuf,
    /// The rustc that cargo is told to use (`RUSTC`).
    pub rustc: PathBuf,
    /// How it builds for wasm32.
    pub route: Route,
}

/// No toolchain here can build for wasm32. Its `Display` says what was checked
/// and how to fix it.
#[derive(Debug, Clone)]
pub struct NotFound {
    /// One line per thing that was checked and found missing.
    pub checked: Vec<String>,
}

impl fmt::Display for NotFound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "no Rust toolchain here can build policies for {WASM_TARGET}:"
        )?;
        for line in &self.checked {
            writeln!(f, "  - {line}")?;
        }
        write!(f, "Fix it with one of:")?;
        for command in FIX_COMMANDS {
            write!(f, "\n    {command}")?;
        }
        Ok(())
    }
}

impl std::error::Error for NotFound {}

impl Toolchain {
    /// Finds a toolchain, starting from the `cargo` and `rustc` in use: the
    /// `CARGO` and `RUSTC` environment variables (set by cargo for build
    /// scripts and `cargo run`), or `cargo` and `rustc` on `PATH`.
    pub fn discover() -> Result<Self, NotFound> {
        let from_env = |var: &str, default: &str| {
            std::env::var_os(var)
                .filter(|v| !v.is_empty())
                .map_or_else(|| PathBuf::from(default), PathBuf::from)
        };
        Self::discover_with(from_env("CARGO", "cargo"), from_env("RUSTC", "rustc"))
    }

    /// Finds a toolchain that runs `cargo`, trying `rustc` first and then the
    /// Debian route (see the module docs).
    pub fn discover_with(cargo: PathBuf, rustc: PathBuf) -> Result<Self, NotFound> {
        let mut checked = Vec::new();

        match sysroot(&rustc) {
            Some(root)
                if root
                    .join("lib/rustlib")
                    .join(WASM_TARGET)
                    .join("lib")
                    .is_dir() =>
            {
                return Ok(Self {
                    cargo,
                    rustc,
                    route: Route::Prebuilt,
                });
            }
            Some(root) => checked.push(format!(
                "`{}` (sysroot {}) has no {WASM_TARGET} standard library",
                rustc.display(),
                root.display()
            )),
            None => checked.push(format!("`{} --print sysroot` did not run", rustc.display())),
        }

        let debian_rustc = PathBuf::from(DEBIAN_RUSTC);
        let prebuilt_problems = checked.len();
        match sysroot(&debian_rustc).map(|root| root.join("lib/rustlib/src/rust/library")) {
            None => checked.push(format!("{DEBIAN_RUSTC} is missing (package rustc-web)")),
            Some(library) if !library.is_dir() => checked.push(format!(
                "{} is missing (package rust-web-src)",
                library.display()
            )),
            Some(_) => {}
        }
        let linker = find_on_path(DEBIAN_LINKER);
        match linker {
            Some(linker) if checked.len() == prebuilt_problems => Ok(Self {
                cargo,
                rustc: debian_rustc,
                route: Route::BuildStd { linker },
            }),
            Some(_) => Err(NotFound { checked }),
            None => {
                checked.push(format!("{DEBIAN_LINKER} is not on PATH (package lld-19)"));
                Err(NotFound { checked })
            }
        }
    }

    /// The `cargo build` that builds `package` of the workspace at
    /// `manifest_path` for wasm32 in release mode, into `target_dir`.
    ///
    /// Its environment is the caller's minus everything that configures the
    /// caller's own cargo build (see [`scrub_env`]); its working directory is
    /// the workspace's, so the workspace's `.cargo/config.toml` applies.
    pub fn build_command(&self, manifest_path: &Path, package: &str, target_dir: &Path) -> Command {
        let mut cmd = Command::new(&self.cargo);
        scrub_env(&mut cmd);
        if let Some(dir) = manifest_path.parent() {
            cmd.current_dir(dir);
        }
        cmd.env("RUSTC", &self.rustc)
            .arg("build")
            .arg("--release")
            .arg("--target")
            .arg(WASM_TARGET)
            .arg("--manifest-path")
            .arg(manifest_path)
            .arg("--target-dir")
            .arg(target_dir)
            .arg("-p")
            .arg(package);
        if let Route::BuildStd { linker } = &self.route {
            // The stable cargo and Debian's rustc accept -Z flags only with
            // RUSTC_BOOTSTRAP; nothing else in the nested build sees it.
            cmd.env("RUSTC_BOOTSTRAP", "1")
                .arg("-Zbuild-std=core,alloc")
                .arg("--config")
                .arg(format!(
                    "target.{WASM_TARGET}.linker={}",
                    toml_string(&linker.to_string_lossy())
                ));
        }
        cmd
    }

    /// Where [`build_command`](Self::build_command) leaves the core module of
    /// `package` (a `cdylib`) inside `target_dir`.
    pub fn artifact(target_dir: &Path, package: &str) -> PathBuf {
        target_dir
            .join(WASM_TARGET)
            .join("release")
            .join(format!("{}.wasm", package.replace('-', "_")))
    }
}

/// Removes from `cmd`'s environment what cargo sets for (or users set on) the
/// *outer* build and must not leak into a nested cargo: its rustc and wrappers,
/// its flags (`CARGO_ENCODED_RUSTFLAGS` would override everything), its target
/// and target dir, its jobserver, and the per-package variables cargo sets for
/// build scripts. Registry, network and terminal settings pass through.
pub fn scrub_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        if is_outer_build_var(&key) {
            cmd.env_remove(&key);
        }
    }
}

/// Whether `key` configures the calling cargo build rather than the machine.
fn is_outer_build_var(key: &OsStr) -> bool {
    const EXACT: &[&str] = &[
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_LINKER",
        "RUSTDOC",
        "RUSTFLAGS",
        "RUSTDOCFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_ENCODED_RUSTDOCFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_MAKEFLAGS",
        "MAKEFLAGS",
        "MFLAGS",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_CRATE_NAME",
        "CARGO_BIN_NAME",
        "CARGO_RUSTC_CURRENT_DIR",
        "TARGET",
        "HOST",
        "PROFILE",
        "OPT_LEVEL",
        "DEBUG",
        "OUT_DIR",
        "NUM_JOBS",
    ];
    // CARGO_BUILD_* covers target, target-dir, rustflags, rustc and wrappers;
    // CARGO_PROFILE_* would override the policies' size-tuned profile.
    const PREFIXES: &[&str] = &[
        "CARGO_BUILD_",
        "CARGO_PROFILE_",
        "CARGO_CFG_",
        "CARGO_FEATURE_",
        "CARGO_PKG_",
        "CARGO_MANIFEST_",
        "DEP_",
        "__CARGO",
    ];
    let Some(key) = key.to_str() else {
        return false;
    };
    EXACT.contains(&key) || PREFIXES.iter().any(|p| key.starts_with(p))
}

/// `rustc --print sysroot`, or `None` when `rustc` does not run.
fn sysroot(rustc: &Path) -> Option<PathBuf> {
    let mut cmd = Command::new(rustc);
    scrub_env(&mut cmd);
    let out = cmd.arg("--print").arg("sysroot").output().ok()?;
    if !out.status.success() {
        return None;
    }
    let root = String::from_utf8(out.stdout).ok()?;
    Some(PathBuf::from(root.trim()))
}

/// The first executable file called `name` in a `PATH` directory.
fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

#[cfg(unix)]
fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(not(unix))]
fn is_executable(path: &Path) -> bool {
    path.is_file()
}

/// `s` as a TOML basic string, for `cargo --config KEY=VALUE`.
fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
