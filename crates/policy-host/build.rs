//! Builds the policies workspace (`policies/` at the repository's root) for
//! wasm32 and turns every policy into a component in
//! `$OUT_DIR/policies/<package>.wasm`.
//!
//! The library embeds the built-ins from there (`SWITCHYARD_POLICY_DIR`,
//! published as `policy::builtin::COMPILED_DIR`) and the tests load the
//! fixtures from there, so a plain `cargo build` of the gateway always carries
//! policies that match `wit/` and `policies/`.
//!
//! Each package is built by its own `cargo build -p NAME`: the SDK picks the
//! world to generate with a cargo feature, and one cargo invocation would unify
//! the features of every package it builds. All of them share one target
//! directory, `<target>/policies`, so `core` and `alloc` (rebuilt from source
//! on the Debian route) and the SDK's dependencies are built once, and the
//! nested cargo never waits on the outer build's lock.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Instant;

use switchyard_wasm_toolchain::Toolchain;

/// The folders of `policies/` that hold one policy crate per subfolder. A
/// crate's folder name is its package name, and the name of its component.
const POLICY_GROUPS: &[&str] = &["builtin", "fixtures"];

fn main() {
    let manifest_dir = PathBuf::from(env_var("CARGO_MANIFEST_DIR"));
    let root = manifest_dir
        .ancestors()
        .nth(2)
        .expect("crates/policy-host/ is two folders below the repository")
        .to_path_buf();
    let workspace = root.join("policies");
    let out_dir = PathBuf::from(env_var("OUT_DIR")).join("policies");

    let packages = policy_packages(&workspace);
    emit_rerun_if(&root, &workspace);

    let toolchain = Toolchain::discover().unwrap_or_else(|err| panic!("{err}"));
    let target_dir = outer_target_dir().join("policies");
    let manifest = workspace.join("Cargo.toml");

    fs::create_dir_all(&out_dir)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", out_dir.display()));
    for package in &packages {
        let started = Instant::now();
        build(&toolchain, &manifest, package, &target_dir);
        let module = Toolchain::artifact(&target_dir, package);
        let component = componentize(&module);
        let dest = out_dir.join(format!("{package}.wasm"));
        fs::write(&dest, &component)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", dest.display()));
        // Visible with `cargo build -vv`; says where the time went.
        eprintln!(
            "policy {package}: {} bytes in {:.1?} ({:?})",
            component.len(),
            started.elapsed(),
            toolchain.route
        );
    }

    println!(
        "cargo:rustc-env=SWITCHYARD_POLICY_DIR={}",
        out_dir.display()
    );
}

/// Runs the nested `cargo build` of one package; on failure, stops the build
/// with the nested cargo's own output.
fn build(toolchain: &Toolchain, manifest: &Path, package: &str, target_dir: &Path) {
    let mut cmd = toolchain.build_command(manifest, package, target_dir);
    // The nested cargo's stdout must not reach ours: cargo reads `cargo:` lines there.
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", toolchain.cargo.display()));
    if !out.status.success() {
        panic!(
            "building policy `{package}` for wasm32 failed ({status}).\n\
             command: {cmd:?}\n\
             --- cargo's output ---\n{stdout}{stderr}",
            status = out.status,
            stdout = String::from_utf8_lossy(&out.stdout),
            stderr = String::from_utf8_lossy(&out.stderr),
        );
    }
}

/// Wraps the core module at `path` into a component. The module carries the
/// world it implements in its `component-type` custom sections (put there by
/// `wit-bindgen`), and the encoder validates the result.
fn componentize(path: &Path) -> Vec<u8> {
    let bytes = fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    wit_component::ComponentEncoder::default()
        .module(&bytes)
        .and_then(|encoder| encoder.validate(true).encode())
        .unwrap_or_else(|e| panic!("cannot make a component of {}: {e:?}", path.display()))
}

/// Every policy crate's package name, sorted.
fn policy_packages(workspace: &Path) -> Vec<String> {
    let mut packages = Vec::new();
    for group in POLICY_GROUPS {
        let group_dir = workspace.join(group);
        let entries = fs::read_dir(&group_dir)
            .unwrap_or_else(|e| panic!("cannot list {}: {e}", group_dir.display()));
        for entry in entries {
            let dir = entry.expect("readable policies folder").path();
            if dir.join("Cargo.toml").is_file() {
                let name = dir
                    .file_name()
                    .expect("a folder name")
                    .to_string_lossy()
                    .into_owned();
                packages.push(name);
            }
        }
    }
    packages.sort();
    packages
}

/// Reruns this script when the contract, the SDK, a policy or the toolchain
/// changes, and only then: not on the policies' own `target/`. Cargo scans a
/// folder recursively; a path that does not exist would rerun it every time.
fn emit_rerun_if(root: &Path, workspace: &Path) {
    let paths = [
        root.join("wit"),
        workspace.join("Cargo.toml"),
        workspace.join("Cargo.lock"),
        workspace.join(".cargo"),
        workspace.join("sdk"),
    ];
    let groups = POLICY_GROUPS.iter().map(|group| workspace.join(group));
    for path in paths.into_iter().chain(groups).filter(|p| p.exists()) {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    for var in switchyard_wasm_toolchain::ENV_INPUTS {
        println!("cargo:rerun-if-env-changed={var}");
    }
}

/// The outer build's target directory. `OUT_DIR` is
/// `<target>[/<triple>]/<profile>/build/<pkg>-<hash>/out`; cargo marks the
/// target directory itself with a `CACHEDIR.TAG`.
fn outer_target_dir() -> PathBuf {
    let out_dir = PathBuf::from(env_var("OUT_DIR"));
    out_dir
        .ancestors()
        .take(7)
        .find(|dir| dir.join("CACHEDIR.TAG").is_file())
        .or_else(|| out_dir.ancestors().nth(4))
        .unwrap_or(&out_dir)
        .to_path_buf()
}

fn env_var(name: &str) -> String {
    env::var(name).unwrap_or_else(|_| panic!("cargo sets {name} for build scripts"))
}
