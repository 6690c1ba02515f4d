//! Typed access to the policy's params from the gateway config, and their
//! rejection at load when they are wrong.
//!
//! The gateway calls every policy once when it loads it (the "load check",
//! see the WIT). A policy that reads its params with [`params_or_reject`] on
//! every call therefore refuses a bad config there, with a message naming the
//! param, instead of running on defaults the operator did not ask for.

use core::fmt;

use alloc::borrow::ToOwned;
use alloc::format;
use alloc::string::{String, ToString};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

/// The policy's params are wrong: they do not parse into the type the policy
/// asked for, or [`PolicyParams::validate`] refused them.
///
/// It names the param at fault whenever one is: serde's messages already do
/// for unknown and missing fields, and for a value of the wrong type
/// [`parse_params`] finds the param by parsing each one on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamsError {
    param: Option<String>,
    message: String,
}

impl ParamsError {
    /// `param` has a value that makes no sense: `message` says why
    /// (`ParamsError::invalid("steps_ms", "must not be empty")`).
    pub fn invalid(param: &str, message: impl fmt::Display) -> Self {
        Self {
            param: Some(param.to_owned()),
            message: message.to_string(),
        }
    }

    /// The param at fault, when the error is about one.
    pub fn param(&self) -> Option<&str> {
        self.param.as_deref()
    }

    fn whole(message: impl fmt::Display) -> Self {
        Self {
            param: None,
            message: message.to_string(),
        }
    }
}

impl fmt::Display for ParamsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.param {
            Some(param) => write!(f, "invalid params: `{param}`: {}", self.message),
            None => write!(f, "invalid params: {}", self.message),
        }
    }
}

impl core::error::Error for ParamsError {}

/// A policy's params: something serde can read, with an optional check of the
/// values that parse but make no sense (an empty list, a share above 1).
///
/// Give the type `#[serde(default, deny_unknown_fields)]`: a config may then
/// set only some params, and a misspelt one is refused rather than ignored.
///
/// ```
/// use switchyard_policy::serde::Deserialize;
/// use switchyard_policy::{PolicyParams, ParamsError};
///
/// #[derive(Debug, Deserialize)]
/// #[serde(crate = "switchyard_policy::serde", default, deny_unknown_fields)]
/// struct Params {
///     steps_ms: Vec<u64>,
/// }
///
/// impl Default for Params {
///     fn default() -> Self {
///         Self { steps_ms: vec![10_000] }
///     }
/// }
///
/// impl PolicyParams for Params {
///     fn validate(&self) -> Result<(), ParamsError> {
///         if self.steps_ms.is_empty() {
///             return Err(ParamsError::invalid("steps_ms", "must not be empty"));
///         }
///         Ok(())
///     }
/// }
///
/// let err = switchyard_policy::parse_params::<Params>(r#"{"steps_ms": []}"#).unwrap_err();
/// assert_eq!(err.to_string(), "invalid params: `steps_ms`: must not be empty");
/// let err = switchyard_policy::parse_params::<Params>(r#"{"steps_ms": "soon"}"#).unwrap_err();
/// assert_eq!(err.param(), Some("steps_ms"));
/// ```
pub trait PolicyParams: DeserializeOwned {
    /// Checks the parsed values; an error names the param at fault (see
    /// [`ParamsError::invalid`]). Accepts everything by default.
    fn validate(&self) -> Result<(), ParamsError> {
        Ok(())
    }
}

/// Reads the policy's params (a JSON object from the gateway config) into `T`
/// and validates them. Returns the error so the policy decides what a bad
/// config means; most want [`params_or_reject`].
pub fn params<T: PolicyParams>() -> Result<T, ParamsError> {
    parse_params(&crate::host::params_json())
}

/// Reads and validates the policy's params, or refuses to run: on an error it
/// logs it at `error` level (naming the param) and traps.
///
/// Call it at the start of every call, on every path. The gateway's load
/// check then refuses a bad config when the policy is loaded, showing the
/// logged line (`invalid params: `skip_threshold_ms`: invalid type: string
/// "soon", expected u64`), so no request ever runs on params the operator did
/// not mean. Natively (in unit tests) it panics with the same message.
pub fn params_or_reject<T: PolicyParams>() -> T {
    params().unwrap_or_else(|err| reject(&err))
}

/// Like [`params`], but on an error it logs a warning and returns
/// `T::default()`: a bad config degrades the policy to its defaults. Prefer
/// [`params_or_reject`], which tells the operator at load instead.
pub fn params_or_default<T: PolicyParams + Default>() -> T {
    params().unwrap_or_else(|err| {
        crate::log::warn(&format!("{err}; using the defaults"));
        T::default()
    })
}

/// Parses and validates params from `json` as [`params`] does from the host's.
/// Lets a policy's unit tests, which run natively without a host, check them.
pub fn parse_params<T: PolicyParams>(json: &str) -> Result<T, ParamsError> {
    // serde would read a struct from an array too; params are named.
    if !json.trim_start().starts_with('{') {
        return Err(diagnose::<T>(json, None));
    }
    // The common case, a good config, costs one parse.
    let params: T = match serde_json::from_str(json) {
        Ok(params) => params,
        Err(err) => return Err(diagnose::<T>(json, Some(err))),
    };
    params.validate()?;
    Ok(params)
}

/// Finds which param a failed parse was about. serde names unknown and
/// missing fields itself, but a value of the wrong type is only reported with
/// its position; parsing each param on its own (the others defaulted) finds
/// the one that fails.
fn diagnose<T: DeserializeOwned>(json: &str, err: Option<serde_json::Error>) -> ParamsError {
    let object = match serde_json::from_str::<Value>(json) {
        Ok(Value::Object(object)) => object,
        Ok(other) => {
            return ParamsError::whole(format!(
                "params must be a JSON object, not {}",
                kind_of(&other)
            ))
        }
        Err(e) => return ParamsError::whole(err.unwrap_or(e)),
    };
    for (key, value) in object {
        let mut alone = Map::new();
        alone.insert(key.clone(), value);
        if let Err(e) = serde_json::from_value::<T>(Value::Object(alone)) {
            let message = e.to_string();
            if message.starts_with("unknown field") {
                // Already names the field, and lists the known ones.
                return ParamsError::whole(message);
            }
            if !message.starts_with("missing field") {
                return ParamsError::invalid(&key, message);
            }
        }
    }
    // Not attributable to one param (a missing required field, say): serde's
    // message, without the position, which means nothing in a TOML config.
    let message = err.map_or_else(|| "they do not parse".to_string(), |e| e.to_string());
    let message = match message.find(" at line ") {
        Some(at) => message[..at].to_owned(),
        None => message,
    };
    ParamsError::whole(message)
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Logs `err` and traps: the end of a call whose params are wrong.
fn reject(err: &ParamsError) -> ! {
    #[cfg(target_arch = "wasm32")]
    {
        crate::log::error(&format!("{err}"));
        // Not `panic!`: the panic handler would log the message a second
        // time, with a source location that means nothing to an operator.
        core::arch::wasm32::unreachable()
    }
    #[cfg(not(target_arch = "wasm32"))]
    panic!("{err}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(crate = "serde", default, deny_unknown_fields)]
    struct P {
        skip_threshold_ms: u64,
        steps_ms: Vec<u64>,
        share: f64,
    }

    impl Default for P {
        fn default() -> Self {
            Self {
                skip_threshold_ms: 2000,
                steps_ms: alloc::vec![1],
                share: 0.1,
            }
        }
    }

    impl PolicyParams for P {
        fn validate(&self) -> Result<(), ParamsError> {
            if !(0.0..=1.0).contains(&self.share) {
                return Err(ParamsError::invalid("share", "must be between 0 and 1"));
            }
            Ok(())
        }
    }

    fn error(json: &str) -> String {
        parse_params::<P>(json).unwrap_err().to_string()
    }

    #[test]
    fn good_params_parse_and_missing_ones_default() {
        let p: P = parse_params(r#"{"steps_ms": [3]}"#).unwrap();
        assert_eq!(
            p,
            P {
                steps_ms: alloc::vec![3],
                ..P::default()
            }
        );
    }

    #[test]
    fn every_error_names_the_param() {
        assert_eq!(
            error(r#"{"steps_ms": [1], "skip_threshold_ms": "soon"}"#),
            "invalid params: `skip_threshold_ms`: invalid type: string \"soon\", expected u64"
        );
        assert!(error(r#"{"steps_ms": [1, -2]}"#).starts_with("invalid params: `steps_ms`: "));
        assert!(
            error(r#"{"foo": 1}"#).starts_with(
                "invalid params: unknown field `foo`, expected one of `skip_threshold_ms`"
            ),
            "{}",
            error(r#"{"foo": 1}"#)
        );
        assert_eq!(
            error(r#"{"share": 2.5}"#),
            "invalid params: `share`: must be between 0 and 1"
        );
        assert_eq!(
            error("[1]"),
            "invalid params: params must be a JSON object, not an array"
        );
        assert!(error("{").starts_with("invalid params: EOF"));
    }
}
