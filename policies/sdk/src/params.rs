//! Typed access to the policy's params from the gateway config.

use core::fmt;

use alloc::format;
use serde::de::DeserializeOwned;

/// The policy's params could not be parsed into the type it asked for.
#[derive(Debug)]
pub struct ParamsError(serde_json::Error);

impl fmt::Display for ParamsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid policy params: {}", self.0)
    }
}

impl core::error::Error for ParamsError {}

/// Parses the policy's params (a JSON object from the gateway config) into `T`.
///
/// Give `T` `#[serde(default)]` so that a config may set only some params.
/// Returns the parse error so the policy decides what a bad config means; see
/// [`params_or_default`] for the common choice.
pub fn params<T: DeserializeOwned>() -> Result<T, ParamsError> {
    parse_params(&crate::host::params_json())
}

/// Like [`params`], but on a parse error it logs a warning and returns
/// `T::default()`: a typo in the config degrades the policy to its defaults
/// instead of making every call fail.
pub fn params_or_default<T: DeserializeOwned + Default>() -> T {
    params().unwrap_or_else(|err| {
        crate::log::warn(&format!("{err}; using the defaults"));
        T::default()
    })
}

/// Parses params from `json` as [`params`] does from the host's. Lets a
/// policy's unit tests, which run natively without a host, check its params.
pub fn parse_params<T: DeserializeOwned>(json: &str) -> Result<T, ParamsError> {
    serde_json::from_str(json).map_err(ParamsError)
}
