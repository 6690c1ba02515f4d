//! Lines in the gateway's log, tagged by the host with the policy and request.
//!
//! Logging is a host call; keep it off the hot path of a policy that runs on
//! every request, or gate it on something rare.

// Documented in the WIT (`host.log-level`).
pub use crate::bindings::switchyard::policy::host::LogLevel as Level;

/// Writes `message` to the gateway's log at `level`.
pub fn log(level: Level, message: &str) {
    crate::bindings::switchyard::policy::host::log(level, message)
}

/// Writes `message` at [`Level::Trace`].
pub fn trace(message: &str) {
    log(Level::Trace, message)
}

/// Writes `message` at [`Level::Debug`].
pub fn debug(message: &str) {
    log(Level::Debug, message)
}

/// Writes `message` at [`Level::Info`].
pub fn info(message: &str) {
    log(Level::Info, message)
}

/// Writes `message` at [`Level::Warn`].
pub fn warn(message: &str) {
    log(Level::Warn, message)
}

/// Writes `message` at [`Level::Error`].
pub fn error(message: &str) {
    log(Level::Error, message)
}
