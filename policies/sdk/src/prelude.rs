//! What almost every policy uses: `use switchyard_policy::prelude::*;`.
//!
//! Brings the contract's types, the trait of the enabled world and the `alloc`
//! items a `#![no_std]` policy needs (`Vec`, `String`, `vec!`, `format!`).

pub use alloc::{
    format,
    string::{String, ToString},
    vec,
    vec::Vec,
};

#[cfg(feature = "cooldown")]
pub use crate::Cooldown;
#[cfg(feature = "fallback")]
pub use crate::Fallback;
#[cfg(feature = "selection")]
pub use crate::Selection;
pub use crate::{
    Candidate, Circuit, CooldownDecision, DeploymentInfo, LastSuccess, Outcome, OutcomeKind,
    RequestInfo,
};
