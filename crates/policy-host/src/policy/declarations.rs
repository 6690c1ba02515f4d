//! What a policy declares about itself in custom sections of its
//! component, outside the WIT contract, so a component built before a
//! declaration existed still loads (it declares nothing).
//!
//! - `switchyard:idempotent-successes` (cooldown policies, the SDK's
//!   `idempotent_successes!()`): a success after a success it judged, on a
//!   deployment not cooling down and without recent throttles, changes
//!   nothing, so the gateway need not call it then.

/// The custom section of `idempotent_successes!()`.
const IDEMPOTENT_SUCCESSES: &str = "switchyard:idempotent-successes";

/// What a component declares.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Declarations {
    /// See the module's docs.
    pub idempotent_successes: bool,
}

impl Declarations {
    /// The declarations in the component (or core module) `bytes`. Bytes
    /// that are not well-formed declare nothing: compiling them is what
    /// reports the error.
    pub fn of(bytes: &[u8]) -> Self {
        let mut found = Self::default();
        visit_custom_sections(bytes, 0, &mut |name, _| {
            if name == IDEMPOTENT_SUCCESSES {
                found.idempotent_successes = true;
            }
        });
        found
    }
}

/// Calls `visit` with each custom section's name and data in the binary
/// `bytes` and in the core modules and components nested in it.
fn visit_custom_sections(bytes: &[u8], depth: u32, visit: &mut impl FnMut(&str, &[u8])) {
    // wit-component nests a component's modules one level down; a deeper
    // nesting is not a policy's shape, and the bound keeps this finite.
    if depth > 4 || bytes.get(..4) != Some(b"\0asm") {
        return;
    }
    let mut rest = bytes.get(8..).unwrap_or_default();
    while let Some((&id, after_id)) = rest.split_first() {
        let Some((size, after_size)) = leb_u32(after_id) else {
            return;
        };
        let Some(payload) = after_size.get(..size as usize) else {
            return;
        };
        rest = &after_size[size as usize..];
        match id {
            0 => {
                if let Some((len, name_and_data)) = leb_u32(payload) {
                    if let (Some(name), Some(data)) = (
                        name_and_data.get(..len as usize),
                        name_and_data.get(len as usize..),
                    ) {
                        if let Ok(name) = std::str::from_utf8(name) {
                            visit(name, data);
                        }
                    }
                }
            }
            // In a component: a core module (1) or a component (4). In a
            // core module these ids are the type and function sections,
            // which do not start with the magic and are skipped.
            1 | 4 => visit_custom_sections(payload, depth + 1, visit),
            _ => {}
        }
    }
}

/// An unsigned LEB128 `u32` at the start of `bytes`, and what follows it.
fn leb_u32(bytes: &[u8]) -> Option<(u32, &[u8])> {
    let mut value: u32 = 0;
    for (i, &byte) in bytes.iter().enumerate().take(5) {
        value |= u32::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, &bytes[i + 1..]));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A custom section: id 0, size, name length, name, data.
    fn custom(name: &str, data: &[u8]) -> Vec<u8> {
        let mut body = vec![name.len() as u8];
        body.extend_from_slice(name.as_bytes());
        body.extend_from_slice(data);
        let mut section = vec![0, body.len() as u8];
        section.extend(body);
        section
    }

    fn binary(version: [u8; 4], sections: &[Vec<u8>]) -> Vec<u8> {
        let mut out = b"\0asm".to_vec();
        out.extend_from_slice(&version);
        for s in sections {
            out.extend_from_slice(s);
        }
        out
    }

    const MODULE: [u8; 4] = [1, 0, 0, 0];
    const COMPONENT: [u8; 4] = [0x0d, 0, 1, 0];

    #[test]
    fn a_declaration_is_found_in_a_module_nested_in_a_component() {
        let module = binary(
            MODULE,
            &[custom("other", b"x"), custom(IDEMPOTENT_SUCCESSES, &[1])],
        );
        let mut nested = vec![1];
        nested.push(module.len() as u8);
        nested.extend(module);
        let component = binary(COMPONENT, &[custom("producers", b""), nested]);
        assert!(Declarations::of(&component).idempotent_successes);
    }

    #[test]
    fn without_the_section_or_with_broken_bytes_nothing_is_declared() {
        let module = binary(MODULE, &[custom("name", b"abc")]);
        assert_eq!(Declarations::of(&module), Declarations::default());
        let declared = binary(MODULE, &[custom(IDEMPOTENT_SUCCESSES, &[1])]);
        for cut in 0..declared.len() - 1 {
            assert!(!Declarations::of(&declared[..cut]).idempotent_successes);
        }
        assert_eq!(Declarations::of(b"not wasm"), Declarations::default());
    }
}
