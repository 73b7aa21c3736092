//! Atomic replacement of status files, and the clean-up of what killed writers left.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::Value;

use super::files::Stamp;
use super::io_err;
use crate::state::StateError;

/// YAML for a status file; JSON (also YAML) if the YAML would not read back identically.
pub(super) fn to_yaml(value: &Value) -> String {
    if let Ok(s) = serde_saphyr::to_string(value)
        && serde_saphyr::from_str::<Value>(&s).ok().as_ref() == Some(value)
    {
        return s;
    }
    let mut s = serde_json::to_string_pretty(value).unwrap_or_else(|_| "{}".into());
    s.push('\n');
    s
}

/// Whether a write must reach the disk before it counts as done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Durability {
    /// fsync of the file and of its directory: the write survives a crash of the machine.
    Synced,
    /// Atomic (rename) but left to the kernel's writeback: after a crash of the machine the
    /// file may hold its previous content. For what cannot outlive such a crash anyway.
    Volatile,
}

/// Replaces `path` with `value` atomically: a temporary file in the same directory, fsync
/// (when `durability` asks for it), rename, fsync of the directory (likewise).
/// Returns the stamp of the file written.
pub(super) fn write_atomic(
    path: &Path,
    value: &Value,
    durability: Durability,
) -> Result<Stamp, StateError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = path.parent().ok_or_else(|| StateError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other("no parent directory"),
    })?;
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let file_name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("object");
    let tmp = dir.join(format!(
        ".{file_name}.{}.{}.tmp",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(to_yaml(value).as_bytes())?;
        if durability == Durability::Synced {
            f.sync_all()?;
        }
        // Renaming keeps the inode and mtime: this is the stamp `path` will have.
        let stamp = Stamp::of(&f.metadata()?);
        std::fs::rename(&tmp, path)?;
        if durability == Durability::Synced {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(stamp)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io_err(path))
}

/// The writer's pid in the name of a temporary file `write_atomic` makes
/// (`.NAME.PID.N.tmp`), or None for any other name.
pub(super) fn temp_file_writer(name: &str) -> Option<u32> {
    let rest = name.strip_prefix('.')?.strip_suffix(".tmp")?;
    let mut parts = rest.rsplitn(3, '.');
    let counter = parts.next()?;
    let pid = parts.next()?;
    let file = parts.next()?;
    if file.is_empty() || !counter.bytes().all(|b| b.is_ascii_digit()) || counter.is_empty() {
        return None;
    }
    pid.parse().ok()
}

/// Removes the temporary files that writers killed mid-write (SIGKILL, power loss) left under
/// `dir`: those whose pid no longer runs. A live writer's file is left alone. Best effort:
/// the backend ignores dot files anyway; this only keeps the directory from filling up.
pub(super) fn remove_dead_writers_temp_files(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            remove_dead_writers_temp_files(&path);
            continue;
        }
        let Some(pid) = entry.file_name().to_str().and_then(temp_file_writer) else {
            continue;
        };
        if !Path::new("/proc").join(pid.to_string()).exists() {
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    tracing::info!(path = %path.display(), pid, "removed a dead writer's temporary file")
                }
                Err(e) => {
                    tracing::debug!(path = %path.display(), error = %e, "removing a temporary file")
                }
            }
        }
    }
}
