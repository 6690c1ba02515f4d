//! The code `wit-bindgen` generates for the one world this build implements.
//!
//! Each `generate!` embeds a custom section describing its world, and
//! `wit-component` requires the module to export every function of every
//! world it finds. So exactly one world is generated per build, picked by the
//! crate's features. With `pub_export_macro`, the section with the exports is
//! emitted by the export macro inside the policy crate itself; the one emitted
//! here only describes imports, which `wit-component` drops when unused.
//!
//! Not part of the public API: the export macros reach into this module.

// One arm per world, each guarded so that a wrong feature set produces the
// single `compile_error!` in lib.rs rather than a flood of duplicate items.
#[cfg(all(
    feature = "selection",
    not(feature = "cooldown"),
    not(feature = "fallback")
))]
wit_bindgen::generate!({
    path: "../../wit",
    world: "selection",
    pub_export_macro: true,
    export_macro_name: "export_selection",
    default_bindings_module: "switchyard_policy::bindings",
    generate_unused_types: true,
    additional_derives: [PartialEq, Eq],
});

#[cfg(all(
    feature = "cooldown",
    not(feature = "selection"),
    not(feature = "fallback")
))]
wit_bindgen::generate!({
    path: "../../wit",
    world: "cooldown",
    pub_export_macro: true,
    export_macro_name: "export_cooldown",
    default_bindings_module: "switchyard_policy::bindings",
    generate_unused_types: true,
    additional_derives: [PartialEq, Eq],
});

#[cfg(all(
    feature = "fallback",
    not(feature = "selection"),
    not(feature = "cooldown")
))]
wit_bindgen::generate!({
    path: "../../wit",
    world: "fallback",
    pub_export_macro: true,
    export_macro_name: "export_fallback",
    default_bindings_module: "switchyard_policy::bindings",
    generate_unused_types: true,
    additional_derives: [PartialEq, Eq],
});
