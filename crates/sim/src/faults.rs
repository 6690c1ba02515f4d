//! Faults the simulator can produce instead of (or in the middle of) an answer.

use serde::{Deserialize, Serialize};

/// Something that goes wrong on one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    /// 429 ThrottlingException, as if the quota were spent.
    Throttle,
    /// 503 ServiceUnavailableException.
    Unavailable,
    /// 500 InternalServerException.
    Internal,
    /// Stall for the configured `stall_ms` before answering.
    Timeout,
    /// Send the status line, then drop the connection mid-body.
    Reset,
    /// Start a stream normally, then send a `throttlingException` frame after
    /// the first text delta. On Converse (not streaming) it acts as `Throttle`.
    StreamThrottle,
    /// Start a stream normally, then send a frame whose checksum is wrong
    /// after the first text delta, and end the stream. On Converse (not
    /// streaming) it acts as `Reset`.
    MalformedFrame,
}

/// A fault that happens at random with the given probability.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfiguredFault {
    /// What goes wrong.
    pub kind: Fault,
    /// Probability per call, between 0 and 1.
    pub probability: f64,
}
