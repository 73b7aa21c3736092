//! metalnet's own files under `DIR/status/`: their names, their reading, and the lock taken
//! around every read-modify-write.

use std::path::Path;

use serde_json::{Value, json};

use super::files::Content;
use super::io_err;
use crate::state::{Kind, ObjectRef, StateError};

/// The directory name for cluster-scoped objects (no namespace may contain `_`).
pub(super) const CLUSTER_DIR: &str = "_cluster";

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum StatusArea {
    Patches,
    Objects,
}

impl StatusArea {
    pub(super) fn dir(self) -> &'static str {
        match self {
            StatusArea::Patches => "patches",
            StatusArea::Objects => "objects",
        }
    }
}

/// An exclusive `flock` on `status/.lock`, held while alive.
pub(super) struct StatusLock(#[allow(dead_code)] std::fs::File);

impl StatusLock {
    pub(super) fn acquire(status: &Path) -> Result<StatusLock, StateError> {
        // Re-created if deleted; never its parent (a missing state directory stays missing).
        match std::fs::create_dir(status) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                return Err(io_err(status)(e));
            }
            _ => {}
        }
        let path = status.join(".lock");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err(&path))?;
        // std's File::lock is flock(LOCK_EX) on Linux, retried on EINTR.
        file.lock().map_err(io_err(&path))?;
        Ok(StatusLock(file))
    }
}

/// The object a status file under `status/<area>` stands for.
pub(super) fn status_ref(status: &Path, area: StatusArea, path: &Path) -> Option<ObjectRef> {
    path.strip_prefix(status.join(area.dir()))
        .ok()
        .and_then(ref_from_relative_path)
}

pub(super) fn read_status_file(
    status: &Path,
    area: StatusArea,
    path: &Path,
    text: &str,
) -> Content {
    let Some(obj) = status_ref(status, area, path) else {
        return Content::Ignored;
    };
    let value = serde_saphyr::from_str::<Value>(text)
        .map_err(|e| e.to_string())
        .and_then(|v| {
            if v.is_object() {
                Ok(v)
            } else {
                Err("not a mapping".to_string())
            }
        });
    match value {
        Ok(v) => match area {
            StatusArea::Patches => Content::Patch(obj, v),
            StatusArea::Objects => Content::Owned(obj, v),
        },
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "unreadable status file, ignored");
            Content::Ignored
        }
    }
}

/// `Kind/namespace/name.yaml` (relative to `status/patches` or `status/objects`) to the
/// object it stands for.
pub(super) fn ref_from_relative_path(rel: &Path) -> Option<ObjectRef> {
    let parts: Vec<&str> = rel.iter().map(|c| c.to_str()).collect::<Option<_>>()?;
    let [kind, ns, file] = parts.as_slice() else {
        return None;
    };
    let kind = Kind::ALL.into_iter().find(|k| k.name() == *kind)?;
    let name = [".yaml", ".yml", ".json"]
        .iter()
        .find_map(|ext| file.strip_suffix(ext))?;
    let namespace = match (kind.namespaced(), *ns) {
        (true, CLUSTER_DIR) => return None,
        (true, ns) => Some(ns.to_string()),
        (false, CLUSTER_DIR) => None,
        (false, _) => return None,
    };
    Some(ObjectRef {
        kind,
        namespace,
        name: name.to_string(),
    })
}

/// Folds `patch` into the merge patch `base`, keeping `null`s (they delete fields of the
/// object the combined patch is applied to).
pub(super) fn compose_patch(base: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !base.is_object() {
                *base = json!({});
            }
            let Some(b) = base.as_object_mut() else {
                return;
            };
            for (k, v) in p {
                if v.is_object() {
                    compose_patch(b.entry(k.clone()).or_insert(Value::Null), v);
                } else {
                    b.insert(k.clone(), v.clone());
                }
            }
        }
        other => *base = other.clone(),
    }
}
