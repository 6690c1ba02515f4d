//! Checks that a component implements the world its slot expects, before
//! linking, so a wrong upload is refused with a message a person can act on.

use wasmtime::component::Component;
use wasmtime::Engine;

use super::PolicyKind;

/// The WIT package and version this gateway implements.
pub const PACKAGE: &str = "switchyard:policy";
/// The WIT version this gateway implements.
pub const VERSION: &str = "0.2.0";

/// Why a component does not fit a slot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorldMismatch {
    /// Built against another version of the contract.
    #[error("component was built against {PACKAGE}@{found}, but this gateway implements {PACKAGE}@{VERSION} (expected world `{expected}`); rebuild it against wit/ version {VERSION}")]
    Version { found: String, expected: String },
    /// Imports something policies are not given.
    #[error("component imports `{import}`, but policies may only import `{PACKAGE}/host@{VERSION}` (expected world `{expected}`); build for wasm32-unknown-unknown without WASI")]
    ForeignImport { import: String, expected: String },
    /// Implements another world, or none.
    #[error("component does not implement world `{expected}`: it lacks the export `{export}` (it exports [{found}]){hint}")]
    MissingExport {
        expected: String,
        export: &'static str,
        found: String,
        hint: String,
    },
}

/// The world a component implements, judged by its exports: the first kind
/// whose export it has, or `None`. [`check`] then judges the rest.
pub fn detect(engine: &Engine, component: &Component) -> Option<PolicyKind> {
    let ty = component.component_type();
    let exports: Vec<String> = ty.exports(engine).map(|(n, _)| n.to_owned()).collect();
    PolicyKind::ALL
        .into_iter()
        .find(|k| exports.iter().any(|e| e == k.export()))
}

/// Checks the component's imports and exports against `kind`'s world.
pub fn check(
    engine: &Engine,
    component: &Component,
    kind: PolicyKind,
) -> Result<(), WorldMismatch> {
    let expected = format!("{PACKAGE}/{}@{VERSION}", kind.world());
    let ty = component.component_type();
    for (name, _) in ty.imports(engine) {
        match name.strip_prefix(PACKAGE).and_then(|r| r.strip_prefix('/')) {
            Some(rest) => {
                let version = rest.split_once('@').map(|(_, v)| v).unwrap_or("(none)");
                if version != VERSION {
                    return Err(WorldMismatch::Version {
                        found: version.to_owned(),
                        expected,
                    });
                }
            }
            None => {
                return Err(WorldMismatch::ForeignImport {
                    import: name.to_owned(),
                    expected,
                })
            }
        }
    }
    let exports: Vec<String> = ty.exports(engine).map(|(n, _)| n.to_owned()).collect();
    if !exports.iter().any(|e| e == kind.export()) {
        let hint = PolicyKind::ALL
            .iter()
            .find(|k| exports.iter().any(|e| e == k.export()))
            .map(|k| format!("; it looks like a {} policy", k.world()))
            .unwrap_or_default();
        return Err(WorldMismatch::MissingExport {
            expected,
            export: kind.export(),
            found: exports.join(", "),
            hint,
        });
    }
    Ok(())
}
