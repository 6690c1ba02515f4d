//! Write Switchyard routing policies in Rust.
//!
//! A policy is a WebAssembly component that implements one world of the
//! `switchyard:policy` contract (`wit/policy.wit` at the repository root):
//!
//! | world       | feature     | trait       | export macro        | question it answers |
//! |-------------|-------------|-------------|---------------------|---------------------|
//! | `selection` | `selection` | `Selection` | `export_selection!` | in which order should a request try the deployments? |
//! | `cooldown`  | `cooldown`  | `Cooldown`  | `export_cooldown!`  | how long is a deployment benched after an attempt? |
//! | `fallback`  | `fallback`  | `Fallback`  | `export_fallback!`  | an attempt failed: in which order to try what is left? |
//!
//! Only the trait and macro of the enabled feature exist in a build.
//!
//! This crate hides everything else: the generated bindings, the allocator,
//! the panic handler and the export glue. A policy crate is a `cdylib` that
//! enables exactly one of those features,
//!
//! ```toml
//! [lib]
//! crate-type = ["cdylib"]
//!
//! [dependencies]
//! switchyard-policy = { path = "../../sdk", features = ["selection"] }
//! ```
//!
//! and contains only its logic (a compiled version of each world's example is
//! on its export macro):
//!
//! ```ignore
//! #![no_std]
//! use switchyard_policy::prelude::*;
//! use switchyard_policy::serde::Deserialize;
//! use switchyard_policy::{pick, ParamsError, PolicyParams};
//!
//! #[derive(Deserialize)]
//! #[serde(crate = "switchyard_policy::serde", default, deny_unknown_fields)]
//! struct Params {
//!     max_in_flight: u32,
//! }
//!
//! impl Default for Params {
//!     fn default() -> Self {
//!         Self { max_in_flight: 8 }
//!     }
//! }
//!
//! impl PolicyParams for Params {
//!     fn validate(&self) -> Result<(), ParamsError> {
//!         match self.max_in_flight {
//!             0 => Err(ParamsError::invalid("max_in_flight", "must be at least 1")),
//!             _ => Ok(()),
//!         }
//!     }
//! }
//!
//! struct Capped;
//!
//! impl Selection for Capped {
//!     fn select(_req: RequestInfo, candidates: Vec<Candidate>) -> Vec<u32> {
//!         // On every call: a bad config is refused at the load check.
//!         let params: Params = switchyard_policy::params_or_reject();
//!         let mut order = pick::fit(&candidates, 2_000);
//!         order.retain(|&i| candidates[i as usize].in_flight < params.max_in_flight);
//!         order.sort_by_key(|&i| candidates[i as usize].in_flight);
//!         order
//!     }
//! }
//!
//! switchyard_policy::export_selection!(Capped);
//! ```
//!
//! Build it with `cargo build --release --target wasm32-unknown-unknown`, one
//! policy package per cargo invocation (cargo unifies features across the
//! packages of one build), and turn the core module into a component with
//! `wit-component`; `crates/policy-host/build.rs` does both for the built-in policies.
//!
//! Each call runs in a fresh instance: keep state that must outlive a call in
//! [`kv`], and take time and randomness from [`host`] only, so that tests can
//! fix them ([`pick`] has the common random choices and fitness filters). A
//! panic traps; the gateway then uses its safe order for that call and counts
//! a fault.
//!
//! Read the params from the config with [`params_or_reject`], into a type
//! implementing [`PolicyParams`], at the start of every call. The gateway
//! calls each policy once when it loads it (the load check); a policy whose
//! params are wrong then logs an error naming the param and traps, and the
//! gateway refuses to load it with that message, so an operator's typo never
//! silently runs on defaults.
//!
//! Off wasm32 the crate links `std` instead of its own runtime, so a policy's
//! logic can be unit-tested natively (see [`Candidate::new`] and
//! [`parse_params`]); the host imports are unavailable there and panic when
//! called.
#![no_std]
#![warn(missing_docs)]

extern crate alloc;
#[cfg(not(target_arch = "wasm32"))]
extern crate std;

#[cfg(not(any(feature = "selection", feature = "cooldown", feature = "fallback")))]
compile_error!(
    "switchyard-policy: enable exactly one of the features `selection`, `cooldown` or `fallback`"
);
#[cfg(any(
    all(feature = "selection", feature = "cooldown"),
    all(feature = "selection", feature = "fallback"),
    all(feature = "cooldown", feature = "fallback"),
))]
compile_error!(
    "switchyard-policy: enable only one of the features `selection`, `cooldown` or `fallback` \
     (a component implements one world; when several policy crates are built at once cargo \
     unifies their features, so build them one at a time with `cargo build -p NAME`)"
);

// Generated code: its shape follows the WIT, not clippy's taste.
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
mod alloc_arena;
#[doc(hidden)]
#[allow(clippy::too_many_arguments)]
pub mod bindings;
mod candidate;
pub mod host;
pub mod kv;
pub mod log;
mod params;
pub mod pick;
pub mod prelude;
mod rt;

pub use params::{
    params, params_or_default, params_or_reject, parse_params, ParamsError, PolicyParams,
};

/// Re-exported so that policies derive `Deserialize` for their params without
/// a `serde` dependency of their own (which must not enable `std`): write
/// `#[derive(Deserialize)] #[serde(crate = "switchyard_policy::serde")]`.
pub use serde;

// The contract's types. Their documentation comes from the WIT.
pub use bindings::switchyard::policy::types::{
    Candidate, Circuit, CooldownDecision, DeploymentInfo, LastSuccess, Outcome, OutcomeKind,
    RequestInfo,
};

/// A selection policy: orders the deployments a new request should try.
///
/// `select` returns indices into `candidates`, in the order to try them. A
/// deployment left out is not tried; unknown or repeated indices are ignored
/// (and counted against the policy); an empty list means "nothing is fit to
/// call now" and the client gets 429 with `retry-after`.
///
/// Export the implementing type with [`export_selection!`].
#[cfg(feature = "selection")]
pub use bindings::Guest as Selection;

/// A cooldown policy: decides how long a deployment is benched after an
/// attempt, and whether its throttle history is forgotten.
///
/// `on_outcome` is called after every attempt, successful or not, with the
/// deployment's state from before the outcome was recorded.
///
/// Export the implementing type with [`export_cooldown!`].
#[cfg(feature = "cooldown")]
pub use bindings::Guest as Cooldown;

/// A fallback policy: reorders what is left after an attempt failed.
///
/// `next` returns indices into `remaining`, in the order to try them. An
/// empty list stops the request, and the client gets the attempts made so far
/// as its error.
///
/// Export the implementing type with [`export_fallback!`].
#[cfg(feature = "fallback")]
pub use bindings::Guest as Fallback;

/// Exports a type implementing [`Selection`] as this component's `select`.
///
/// Invoke it once, at the top level of the policy crate. Needs the SDK
/// feature `selection`.
///
/// ```
/// use switchyard_policy::prelude::*;
///
/// /// Every deployment, in the configured order.
/// struct InOrder;
///
/// impl Selection for InOrder {
///     fn select(_req: RequestInfo, candidates: Vec<Candidate>) -> Vec<u32> {
///         (0..candidates.len() as u32).collect()
///     }
/// }
///
/// switchyard_policy::export_selection!(InOrder);
/// # fn main() {}
/// ```
#[cfg(feature = "selection")]
#[macro_export]
macro_rules! export_selection {
    ($ty:ident) => {
        $crate::__export_selection_impl!($ty with_types_in $crate::bindings);
    };
}

/// Exports a type implementing [`Cooldown`] as this component's `on-outcome`.
///
/// Invoke it once, at the top level of the policy crate. Needs the SDK
/// feature `cooldown`.
///
/// ```
/// use switchyard_policy::prelude::*;
///
/// /// Benches a throttled deployment for as long as Bedrock asked, or 10 s.
/// struct RetryAfter;
///
/// impl Cooldown for RetryAfter {
///     fn on_outcome(o: Outcome, _c: Candidate) -> CooldownDecision {
///         let cooldown_ms = match o.kind {
///             OutcomeKind::Throttled => o.retry_after_ms.unwrap_or(10_000),
///             _ => 0,
///         };
///         CooldownDecision { cooldown_ms, clear_history: o.kind == OutcomeKind::Success }
///     }
/// }
///
/// switchyard_policy::export_cooldown!(RetryAfter);
/// # fn main() {}
/// ```
#[cfg(feature = "cooldown")]
#[macro_export]
macro_rules! export_cooldown {
    ($ty:ident) => {
        $crate::__export_cooldown_impl!($ty with_types_in $crate::bindings);
    };
}

/// Declares that this cooldown policy's decisions on successes are
/// idempotent: after it judged a success on a deployment, a further success
/// there, while the deployment is not cooling down and has no recent
/// throttles, would change nothing (no cooldown, no key-value write that
/// matters, nothing logged that matters). The gateway then skips that call,
/// which is most calls in steady traffic: a success is the common outcome.
///
/// The declaration is a custom section of the component
/// (`switchyard:idempotent-successes`), read when the policy loads. Leave
/// it out when a success can matter on its own, such as a policy that
/// cools down a deployment whose successes are slow.
///
/// ```
/// switchyard_policy::idempotent_successes!();
/// # fn main() {}
/// ```
#[cfg(feature = "cooldown")]
#[macro_export]
macro_rules! idempotent_successes {
    () => {
        #[cfg(target_arch = "wasm32")]
        #[used]
        #[unsafe(link_section = "switchyard:idempotent-successes")]
        static __SWITCHYARD_IDEMPOTENT_SUCCESSES: [u8; 1] = [1];
    };
}

/// Exports a type implementing [`Fallback`] as this component's `next`.
///
/// Invoke it once, at the top level of the policy crate. Needs the SDK
/// feature `fallback`.
///
/// ```
/// use switchyard_policy::prelude::*;
///
/// /// Tries what is left by how much of its quota is free, most first.
/// struct MostHeadroom;
///
/// impl Fallback for MostHeadroom {
///     fn next(_req: RequestInfo, _failed: Outcome, _tried: Vec<Candidate>, remaining: Vec<Candidate>) -> Vec<u32> {
///         let mut order: Vec<u32> = (0..remaining.len() as u32).collect();
///         order.sort_by_key(|&i| remaining[i as usize].quota_used_permille);
///         order
///     }
/// }
///
/// switchyard_policy::export_fallback!(MostHeadroom);
/// # fn main() {}
/// ```
#[cfg(feature = "fallback")]
#[macro_export]
macro_rules! export_fallback {
    ($ty:ident) => {
        $crate::__export_fallback_impl!($ty with_types_in $crate::bindings);
    };
}
