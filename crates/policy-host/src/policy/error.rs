//! How loading or calling a policy can go wrong.

use super::call_state::PolicyLog;
use super::world::{WorldMismatch, PACKAGE, VERSION};

/// Why a component could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The bytes are not a valid component.
    #[error("not a valid WebAssembly component")]
    Invalid(#[source] wasmtime::Error),
    /// A component, but it exports none of the policy interfaces.
    #[error("not a valid WebAssembly component: it exports no policy of {PACKAGE}@{VERSION}")]
    NoPolicyExport,
    /// The component implements another world or version.
    #[error(transparent)]
    World(#[from] WorldMismatch),
    /// Linking failed although the names matched (types differ).
    #[error("component does not match world `{world}` of {PACKAGE}@{VERSION}")]
    Link {
        world: &'static str,
        #[source]
        source: wasmtime::Error,
    },
    /// The load check (one call on synthetic input) faulted.
    #[error("the load check call failed: {fault}{}", logged(.logs))]
    LoadCheck {
        fault: PolicyFault,
        logs: Vec<PolicyLog>,
    },
    /// The engine could not be set up.
    #[error("the policy engine could not be set up")]
    Engine(#[source] wasmtime::Error),
}

fn logged(logs: &[PolicyLog]) -> String {
    let lines: Vec<String> = logs
        .iter()
        .filter(|l| l.level == "error" || l.level == "warn")
        .map(|l| format!("{}: {}", l.level, l.message))
        .collect();
    if lines.is_empty() {
        String::new()
    } else {
        format!("; the policy logged: {}", lines.join(" | "))
    }
}

/// How a policy call went wrong. None of these fail the client's request.
///
/// Faults are values the gateway keeps (stats, logs, the rollback window)
/// and compares, so they carry the engine's words as text, not its error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyFault {
    /// The policy trapped (panic, unreachable, bad memory access...).
    #[error("trap: {0}")]
    Trap(String),
    /// The call ran past its deadline.
    #[error("deadline exceeded")]
    Timeout,
    /// The policy tried to grow its memory past the cap.
    #[error("out of memory")]
    OutOfMemory,
    /// The policy returned indices that are out of range or repeated.
    #[error("invalid result: {0}")]
    BadResult(String),
    /// No instance could be made (for example, the pool is exhausted).
    #[error("instantiation failed: {0}")]
    Instantiate(String),
}

impl PolicyFault {
    /// A short stable name, for metrics and logs.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Trap(_) => "trap",
            Self::Timeout => "timeout",
            Self::OutOfMemory => "out_of_memory",
            Self::BadResult(_) => "bad_result",
            Self::Instantiate(_) => "instantiate",
        }
    }
}
