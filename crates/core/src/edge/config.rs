//! `[http]`: how long a client may take, and how many may be connected.

use serde::{Deserialize, Serialize};

/// The HTTP edge's limits. Every timeout is in milliseconds; 0 turns it off.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Time a client has to send a request's headers: from the connection's
    /// accept for its first request, from the first byte for later ones.
    /// A client that dribbles its headers (slowloris) is cut off by it.
    pub header_read_timeout_ms: u64,
    /// Time a client has to send a request's body, once its headers arrived.
    pub body_read_timeout_ms: u64,
    /// Time a keep-alive connection may sit idle between requests.
    pub idle_timeout_ms: u64,
    /// Time a client may take no bytes of a response the gateway is
    /// writing (it stopped reading but keeps its connection): past it the
    /// connection is closed, which ends the request or stream and frees
    /// its queue slot, concurrency slot and upstream stream.
    pub write_timeout_ms: u64,
    /// Most connections open at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// On SIGTERM or SIGINT the gateway stops accepting, lets in-flight
    /// requests and streams finish for up to this long, then exits.
    pub shutdown_grace_ms: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            header_read_timeout_ms: 10_000,
            body_read_timeout_ms: 30_000,
            idle_timeout_ms: 60_000,
            write_timeout_ms: 30_000,
            max_connections: 4_096,
            shutdown_grace_ms: 30_000,
        }
    }
}

impl HttpConfig {
    /// The key at fault and why, if a value cannot work.
    pub fn problem(&self) -> Option<(&'static str, &'static str)> {
        (self.max_connections == 0).then_some(("http.max_connections", "must be at least 1"))
    }
}
