//! The last good version of each manifest, kept under `status/last-good/` with the manifest's
//! path relative to the directory, so that a process starting while a manifest is empty or
//! broken (a shell `>` redirect in progress, an edit gone wrong while every daemon was down)
//! does not take its objects for deleted: it reads them from here, as a running process keeps
//! them in memory.
//!
//! A copy is the text of a version that parsed with at least one object, with the manifest's
//! modification time as its own, so that of two processes the one that read the newer version
//! wins. Copies are not fsynced: after a crash of the machine a copy may be missing or older,
//! which only loses this protection for that file until it is read again.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::files::Stamp;

/// The folder under `status/` holding the copies.
pub(super) const DIR: &str = "last-good";

/// Where the copy of the manifest `path` (under `root`, never under `status`: callers pass
/// user manifests only) is kept, if it can be.
pub(super) fn copy_path(root: &Path, status: &Path, path: &Path) -> Option<PathBuf> {
    let rel = path.strip_prefix(root).ok()?;
    if rel.as_os_str().is_empty() {
        return None;
    }
    Some(status.join(DIR).join(rel))
}

/// The text of the copy of `path`, if there is one.
pub(super) fn read(copy: &Path) -> Option<String> {
    let len = std::fs::metadata(copy).ok()?.len();
    if len > crate::manifest::MAX_FILE_BYTES {
        return None;
    }
    std::fs::read_to_string(copy).ok()
}

/// Keeps `text`, the version of a manifest with `stamp`, as its last good version, unless the
/// copy already holds it or a newer one.
pub(super) fn keep(copy: &Path, text: &str, stamp: Stamp) {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let Some(modified) = stamp.modified_time() else {
        return;
    };
    if let Ok(meta) = std::fs::metadata(copy)
        && let Ok(copy_modified) = meta.modified()
        && (copy_modified > modified || (copy_modified == modified && meta.len() == stamp.len()))
    {
        return;
    }
    let Some(dir) = copy.parent() else { return };
    let name = copy.file_name().and_then(|n| n.to_str()).unwrap_or("copy");
    let tmp = dir.join(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        std::fs::create_dir_all(dir)?;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.set_modified(modified)?;
        std::fs::rename(&tmp, copy)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        tracing::debug!(copy = %copy.display(), error = %e, "cannot keep a manifest's last good version");
    }
}

/// Forgets the last good version of a manifest whose objects are deleted.
pub(super) fn forget(copy: &Path) {
    match std::fs::remove_file(copy) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::debug!(copy = %copy.display(), error = %e, "cannot remove a manifest's last good version")
        }
    }
}

/// Removes the copies of manifests that no longer exist (deleted while no process ran).
pub(super) fn remove_orphans(root: &Path, status: &Path) {
    fn walk(dir: &Path, root: &Path, base: &Path) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                walk(&path, root, base);
                // Removed only if empty.
                let _ = std::fs::remove_dir(&path);
            } else if let Ok(rel) = path.strip_prefix(base)
                && !root.join(rel).is_file()
            {
                forget(&path);
            }
        }
    }
    let base = status.join(DIR);
    walk(&base, root, &base);
}

/// How long ago `stamp`'s version was written (zero if in the future).
pub(super) fn age(stamp: Stamp) -> Option<Duration> {
    let modified = stamp.modified_time()?;
    Some(
        SystemTime::now()
            .duration_since(modified)
            .unwrap_or(Duration::ZERO),
    )
}

impl Stamp {
    /// The modification time as a `SystemTime`.
    pub(super) fn modified_time(&self) -> Option<SystemTime> {
        let (secs, nsecs) = self.modified();
        let secs = u64::try_from(secs).ok()?;
        let nsecs = u32::try_from(nsecs).ok()?;
        UNIX_EPOCH.checked_add(Duration::new(secs, nsecs))
    }
}
