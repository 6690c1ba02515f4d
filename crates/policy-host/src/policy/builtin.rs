//! The built-in policies, compiled to components by the build script and
//! embedded in the binary, so `switchyard serve` needs no policy files.

use super::PolicyKind;

/// The folder where the build script put every policy it compiled, as
/// components: the built-ins and the test fixtures of `policies/fixtures`.
pub const COMPILED_DIR: &str = env!("SWITCHYARD_POLICY_DIR");

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

/// Every built-in policy, grouped by kind.
pub const ALL: &[Builtin] = &[
    Builtin {
        name: "priority",
        kind: PolicyKind::Selection,
        summary: "configured priority order, per request; skips a deployment only while its cooldown has more than skip_threshold_ms (2000) left",
        component: component!("priority"),
    },
    Builtin {
        name: "round-robin",
        kind: PolicyKind::Selection,
        summary: "rotates across the fit deployments by the request's sequence number",
        component: component!("round-robin"),
    },
    Builtin {
        name: "lru",
        kind: PolicyKind::Selection,
        summary: "the least recently used fit deployment first (never used before all)",
        component: component!("lru"),
    },
    Builtin {
        name: "sticky",
        kind: PolicyKind::Selection,
        summary: "keeps a user on the deployment it last succeeded on until that one throttles or cools down, for ttl_ms (300000); then by priority",
        component: component!("sticky"),
    },
    Builtin {
        name: "greedy",
        kind: PolicyKind::Selection,
        summary: "the most quota headroom first, then by priority",
        component: component!("greedy"),
    },
    Builtin {
        name: "least-busy",
        kind: PolicyKind::Selection,
        summary: "the fewest attempts in flight first, then by priority",
        component: component!("least-busy"),
    },
    Builtin {
        name: "latency",
        kind: PolicyKind::Selection,
        summary: "the lowest latency EWMA first; an exploration share (0.05) starts on the stalest other deployment",
        component: component!("latency"),
    },
    Builtin {
        name: "weighted",
        kind: PolicyKind::Selection,
        summary: "random by the deployments' configured weights; weight 0 is a standby",
        component: component!("weighted"),
    },
    Builtin {
        name: "hybrid",
        kind: PolicyKind::Selection,
        summary: "0.6 x quota headroom + 0.4 x recency; the best jittered (5%) of the top 3, or 10% of the time the least recently used",
        component: component!("hybrid"),
    },
    Builtin {
        name: "priority-global",
        kind: PolicyKind::Selection,
        summary: "baseline: priority order, skipping any deployment cooling down at all, so one throttle benches it for everyone",
        component: component!("priority-global"),
    },
    Builtin {
        name: "adaptive",
        kind: PolicyKind::Cooldown,
        summary: "10 s, 30 s, then 60 s for the 1st, 2nd and later throttles within 60 s; a success clears the history",
        component: component!("adaptive"),
    },
    Builtin {
        name: "fixed",
        kind: PolicyKind::Cooldown,
        summary: "one constant cooldown_ms (10000) after any failure of the deployment; none for client errors",
        component: component!("fixed"),
    },
    Builtin {
        name: "exponential",
        kind: PolicyKind::Cooldown,
        summary: "base_ms x 2^n (1000) up to cap_ms (60000) with jitter (0.1) for throttles, at least Bedrock's retry-after",
        component: component!("exponential"),
    },
    Builtin {
        name: "error-aware",
        kind: PolicyKind::Cooldown,
        summary: "a cooldown per outcome kind (throttled 10 s, unavailable 5 s, timeout 5 s, server error 2 s); never for client errors",
        component: component!("error-aware"),
    },
    Builtin {
        name: "cascade",
        kind: PolicyKind::Fallback,
        summary: "the remaining deployments by priority, minus those cooling down past the threshold, never empty",
        component: component!("cascade"),
    },
    Builtin {
        name: "spread",
        kind: PolicyKind::Fallback,
        summary: "the remaining deployments one per (region, account) in turn, so retries leave a throttled quota or region",
        component: component!("spread"),
    },
    Builtin {
        name: "same-model-first",
        kind: PolicyKind::Fallback,
        summary: "the same model in other regions before a different model",
        component: component!("same-model-first"),
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
