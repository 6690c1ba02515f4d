//! Host-side bindings for the three policy worlds, generated from `wit/`.
//!
//! The `types` and `host` interfaces are generated once (with the selection
//! world) and shared by the other two, so one linker serves every policy.

#![allow(missing_docs)]

pub mod selection {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "selection",
        additional_derives: [PartialEq],
    });
}

pub mod cooldown {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "cooldown",
        with: {
            "switchyard:policy/types": super::selection::switchyard::policy::types,
            "switchyard:policy/host": super::selection::switchyard::policy::host,
        },
    });
}

pub mod fallback {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "fallback",
        with: {
            "switchyard:policy/types": super::selection::switchyard::policy::types,
            "switchyard:policy/host": super::selection::switchyard::policy::host,
        },
    });
}

pub use selection::switchyard::policy::host;
pub use selection::switchyard::policy::types;
