//! The built-in policies, compiled to components by the build script and
//! embedded in the binary, so `switchyard serve` needs no policy files.

use super::PolicyKind;

macro_rules! component {
    ($file:literal) => {
        include_bytes!(concat!(env!("SWITCHYARD_POLICY_DIR"), "/", $file, ".wasm"))
    };
}

/// A built-in policy.
#[derive(Debug, Clone, Copy)]
pub struct Builtin {
    /// The name a config uses.
    pub name: &'static str,
    /// Its kind.
    pub kind: PolicyKind,
    /// One line on what it does.
    pub summary: &'static str,
    /// The component.
    pub component: &'static [u8],
}

/// Every built-in policy.
pub const ALL: &[Builtin] = &[
    Builtin {
        name: "priority",
        kind: PolicyKind::Selection,
        summary: "configured priority order, per request; skips a deployment only while its cooldown has more than skip_threshold_ms (2000) left",
        component: component!("priority"),
    },
    Builtin {
        name: "adaptive",
        kind: PolicyKind::Cooldown,
        summary: "10 s, 30 s, then 60 s for the 1st, 2nd and later throttles within 60 s; a success clears the history",
        component: component!("adaptive"),
    },
    Builtin {
        name: "cascade",
        kind: PolicyKind::Fallback,
        summary: "the remaining deployments by priority, minus those cooling down past the threshold, never empty",
        component: component!("cascade"),
    },
];

/// The built-in policy `name` of `kind`.
pub fn find(kind: PolicyKind, name: &str) -> Option<&'static Builtin> {
    ALL.iter().find(|b| b.kind == kind && b.name == name)
}

/// Names of the built-in policies of `kind`, for error messages.
pub fn names(kind: PolicyKind) -> Vec<&'static str> {
    ALL.iter()
        .filter(|b| b.kind == kind)
        .map(|b| b.name)
        .collect()
}
