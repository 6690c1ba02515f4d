//! The component a config's policy reference names: a built-in by name,
//! or a component file by path.

use std::sync::Arc;

use crate::policy::{builtin, PolicyKind, PolicySource};
use crate::settings::PolicyRef;

/// Why a policy reference names no component.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// A built-in name that does not exist.
    #[error("no built-in {kind} policy `{name}` (built-in {kind} policies: {known})")]
    UnknownBuiltin {
        kind: PolicyKind,
        name: String,
        known: String,
    },
    /// A policy file could not be read.
    #[error("cannot read {path}")]
    File {
        path: String,
        source: std::io::Error,
    },
}

/// The component and its source that `policy` names, for a `kind` slot.
pub fn resolve(
    kind: PolicyKind,
    policy: &PolicyRef,
) -> Result<(PolicySource, Arc<[u8]>), ResolveError> {
    match (&policy.name, &policy.path) {
        (Some(name), _) => {
            let b = builtin::find(kind, name).ok_or_else(|| ResolveError::UnknownBuiltin {
                kind,
                name: name.clone(),
                known: builtin::names(kind).join(", "),
            })?;
            Ok((
                PolicySource::Builtin(b.name.to_owned()),
                Arc::from(b.component),
            ))
        }
        (None, Some(path)) => {
            let bytes = std::fs::read(path).map_err(|source| ResolveError::File {
                path: path.display().to_string(),
                source,
            })?;
            Ok((PolicySource::File(path.clone()), Arc::from(bytes)))
        }
        (None, None) => unreachable!("config validation requires a name or a path"),
    }
}
