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
///
/// An artefact is native code the gateway runs, so the folder must be the
/// gateway's alone: it is created 0700, and a folder that is not owned by
/// the gateway's user or that others can write is not used (components are
/// compiled in memory instead, and the gateway says why). Each file starts
/// with the SHA-256 of the component it was compiled from and of its own
/// bytes, both checked before it is loaded, so a file put in another's
/// place, cut short or changed is compiled afresh instead of run.
#[derive(Debug, Clone)]
pub struct CompileCache {
    dir: PathBuf,
    engine_key: String,
}

/// What every artefact file starts with.
const MAGIC: &[u8; 8] = b"SYCC\x01\0\0\0";
/// The magic, the component's SHA-256 and the artefact's.
const HEADER_BYTES: usize = MAGIC.len() + 32 + 32;

/// Why a folder cannot hold compiled code.
#[derive(Debug, thiserror::Error)]
pub enum CacheDirError {
    #[error("cannot create or read {}", .0.display())]
    Io(PathBuf, #[source] std::io::Error),
    #[error("{} is not a folder", .0.display())]
    NotAFolder(PathBuf),
    #[error("{} belongs to another user (uid {owner}); the gateway runs as uid {me}", .path.display())]
    NotOurs { path: PathBuf, owner: u32, me: u32 },
    #[error("{} can be written by others (mode {mode:o}); run chmod 700 on it", .path.display())]
    WritableByOthers { path: PathBuf, mode: u32 },
}

impl CompileCache {
    /// A cache in `dir` for components compiled by `engine`, once `dir` is
    /// made (0700) or checked to be this user's alone.
    pub fn new(dir: &Path, engine: &Engine) -> Result<Self, CacheDirError> {
        private_dir(dir)?;
        let mut hasher = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Ok(Self {
            dir: dir.to_owned(),
            engine_key: format!("{:016x}", hasher.finish()),
        })
    }

    fn path_for(&self, sha256: &str) -> PathBuf {
        self.dir.join(format!("{sha256}-{}.cwasm", self.engine_key))
    }

    /// The compiled `bytes`: from the cache when present and verified,
    /// otherwise compiled now and stored for next time.
    pub fn compile(&self, engine: &Engine, bytes: &[u8]) -> wasmtime::Result<Component> {
        let component_sha = Sha256::digest(bytes);
        let path = self.path_for(&sha256_hex(bytes));
        match read_verified(&path, &component_sha) {
            Ok(Some(artefact)) => {
                // SAFETY: `artefact` was written by this cache with
                // `Component::serialize` from the component whose SHA-256
                // heads the file, for an engine of the same compatibility
                // hash (in its name); its own SHA-256 matched, and the file
                // and its folder are this user's alone. wasmtime checks its
                // header again; a failure is recompiled below.
                match unsafe { Component::deserialize(engine, &artefact) } {
                    Ok(component) => return Ok(component),
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "ignoring an unreadable compile cache entry")
                    }
                }
            }
            Ok(None) => {}
            Err(why) => {
                tracing::warn!(path = %path.display(), %why, "ignoring a compile cache entry that does not verify; compiling afresh")
            }
        }
        let component = Component::new(engine, bytes)?;
        if let Err(e) = self.store(&path, &component_sha, &component) {
            tracing::warn!(path = %path.display(), error = %e, "could not write the compile cache");
        }
        Ok(component)
    }

    fn store(
        &self,
        path: &Path,
        component_sha: &[u8],
        component: &Component,
    ) -> std::io::Result<()> {
        let artefact = component
            .serialize()
            .map_err(|e| std::io::Error::other(format!("{e:#}")))?;
        let mut file = Vec::with_capacity(HEADER_BYTES + artefact.len());
        file.extend_from_slice(MAGIC);
        file.extend_from_slice(component_sha);
        file.extend_from_slice(&Sha256::digest(&artefact));
        file.extend_from_slice(&artefact);
        // Write then rename, so a reader never sees half a file.
        let tmp = path.with_extension(format!(
            "tmp-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        write_private(&tmp, &file)?;
        std::fs::rename(&tmp, path)
    }
}

/// The artefact in `path` (without its header), if there is a file there:
/// an error when it is not this user's regular file, not for the component
/// of `component_sha`, or not what was written.
fn read_verified(path: &Path, component_sha: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read it: {e}")),
    };
    if !meta.file_type().is_file() {
        return Err("not a regular file".into());
    }
    check_private(path, &meta).map_err(|e| e.to_string())?;
    let file = std::fs::read(path).map_err(|e| format!("cannot read it: {e}"))?;
    if file.len() < HEADER_BYTES || &file[..MAGIC.len()] != MAGIC {
        return Err("not a compile cache entry".into());
    }
    let (for_component, rest) = file[MAGIC.len()..].split_at(32);
    let (artefact_sha, artefact) = rest.split_at(32);
    if for_component != component_sha {
        return Err("compiled from another component".into());
    }
    if Sha256::digest(artefact).as_slice() != artefact_sha {
        return Err("its bytes changed since they were written".into());
    }
    Ok(Some(artefact.to_vec()))
}

/// Makes `dir` (0700, with the folders above it that it creates) or checks
/// that it is this user's alone.
fn private_dir(dir: &Path) -> Result<(), CacheDirError> {
    let io = |e| CacheDirError::Io(dir.to_owned(), e);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io)?;
    }
    #[cfg(not(unix))]
    std::fs::create_dir_all(dir).map_err(io)?;
    let meta = std::fs::metadata(dir).map_err(io)?;
    if !meta.is_dir() {
        return Err(CacheDirError::NotAFolder(dir.to_owned()));
    }
    check_private(dir, &meta)
}

/// Whether `path` (with `meta`) belongs to this user and no one else can
/// write it.
fn check_private(path: &Path, meta: &std::fs::Metadata) -> Result<(), CacheDirError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        // SAFETY: geteuid has no preconditions and cannot fail.
        let me = unsafe { libc::geteuid() };
        if meta.uid() != me {
            return Err(CacheDirError::NotOurs {
                path: path.to_owned(),
                owner: meta.uid(),
                me,
            });
        }
        let mode = meta.mode() & 0o7777;
        if mode & 0o022 != 0 {
            return Err(CacheDirError::WritableByOthers {
                path: path.to_owned(),
                mode,
            });
        }
    }
    let _ = (path, meta);
    Ok(())
}

/// Writes `bytes` to a new file at `path` that only this user can read.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)?.write_all(bytes)
}
