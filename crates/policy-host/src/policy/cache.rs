//! The compile cache: compiled policy artefacts kept on disk, keyed by the
//! SHA-256 of the component and the engine's compatibility hash, so a restart
//! (or a re-upload of a known component) skips Cranelift.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::Engine;

/// The SHA-256 of `bytes`, as lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The default cache folder: `$XDG_CACHE_HOME/switchyard/policies`, else
/// `$HOME/.cache/switchyard/policies`.
pub fn default_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("switchyard").join("policies"))
}

/// Compiled artefacts in one folder.
#[derive(Debug, Clone)]
pub struct CompileCache {
    dir: PathBuf,
    engine_key: String,
}

impl CompileCache {
    /// A cache in `dir` for components compiled by `engine`.
    pub fn new(dir: &Path, engine: &Engine) -> Self {
        let mut hasher = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Self {
            dir: dir.to_owned(),
            engine_key: format!("{:016x}", hasher.finish()),
        }
    }

    fn path_for(&self, sha256: &str) -> PathBuf {
        self.dir.join(format!("{sha256}-{}.cwasm", self.engine_key))
    }

    /// The compiled `bytes`: from the cache when present and readable,
    /// otherwise compiled now and stored for next time.
    pub fn compile(&self, engine: &Engine, bytes: &[u8]) -> wasmtime::Result<Component> {
        let path = self.path_for(&sha256_hex(bytes));
        if path.exists() {
            // SAFETY: the file is one this cache wrote with `Component::serialize`
            // for an engine with the same compatibility hash (both are in its
            // name), in a folder only the gateway writes to. A file that fails
            // wasmtime's own header checks is recompiled below.
            match unsafe { Component::deserialize_file(engine, &path) } {
                Ok(component) => return Ok(component),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "ignoring an unreadable compile cache entry")
                }
            }
        }
        let component = Component::new(engine, bytes)?;
        if let Err(e) = self.store(&path, &component) {
            tracing::warn!(path = %path.display(), error = %e, "could not write the compile cache");
        }
        Ok(component)
    }

    fn store(&self, path: &Path, component: &Component) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let compiled = component
            .serialize()
            .map_err(|e| std::io::Error::other(format!("{e:#}")))?;
        // Write then rename, so a reader never sees half a file.
        let tmp = path.with_extension(format!(
            "tmp-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::write(&tmp, compiled)?;
        std::fs::rename(&tmp, path)
    }
}
