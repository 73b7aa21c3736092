//! The state-directory backend (the embedded default): the cluster state is a directory of
//! ordinary Kubernetes manifests, watched with inotify.
//!
//! # Layout
//!
//! ```text
//! DIR/
//! ├── pools.yaml                  # yours: any *.yaml, *.yml, *.json, in any subdirectory,
//! ├── services/web.yaml           #   several documents per file, `kind: List` too
//! ├── nodes.json
//! └── status/                     # metalnet's: written by the suite, never by you
//!     ├── .lock                   # flock taken around every read-modify-write
//!     ├── patches/                # JSON merge patches onto YOUR objects
//!     │   └── Service/default/web.yaml          # e.g. status.loadBalancer.ingress
//!     └── objects/                # whole objects the suite owns
//!         ├── ServiceL2Status/metallb-system/l2-web-node1.yaml
//!         └── Event/default/web.3f9a0c51d2.yaml # events: `metalnet explain` reads them
//! ```
//!
//! - **Your manifests**: everything under `DIR` except `DIR/status/`, read as `kubectl apply`
//!   would (see [`crate::manifest`]). Hidden files and directories and editor temporary files
//!   (`*~`, `#*`, `.*.swp`) are skipped; symbolic links are followed, so a ConfigMap volume
//!   works. A namespaced object without `metadata.namespace` is in `default`. The suite never
//!   rewrites your files: edit them freely, the change is picked up within a few tens of ms.
//! - **`status/patches/<Kind>/<namespace or _cluster>/<name>.yaml`**: what the suite changed on
//!   one of your objects (its `status`, labels, annotations), as a JSON merge patch (RFC 7386)
//!   applied on top of your file whenever it is read. A patch whose object is gone is ignored
//!   and kept (it applies again if the object comes back); delete it by hand to reset.
//! - **`status/objects/<Kind>/<namespace or _cluster>/<name>.yaml`**: whole objects the suite
//!   creates and deletes (ServiceL2Status, ServiceBGPStatus, Events).
//!   Events are `status/objects/Event/<namespace>/<object name>.<hash>.yaml`, one per
//!   (object, reason, message), with a `count`; they are not part of the snapshot.
//!
//! Files under `status/` are replaced atomically (temporary file, fsync, rename), so several
//! processes on one machine (the lab runs several daemons on one directory) may share `DIR`.
//!
//! A file that cannot be read is logged (naming the file and document) and skipped; when a file
//! that was good turns bad (an edit in progress), its previous objects are kept until it is
//! good again, so a half-saved file never withdraws pools or services. An object defined in
//! two files is logged; the first in path order is used.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use notify::Watcher;
use serde_json::{Value, json};

use super::{Core, EventRecord, Kind, MetadataPatch, ObjectRef, StateError, merge_patch};
use crate::manifest::{self, Location, RawObject};

/// How long to wait after a file-system event for more before re-reading: editors and
/// `kubectl`-style copies touch a file several times in quick succession.
const DEBOUNCE: Duration = Duration::from_millis(30);

/// The directory name for cluster-scoped objects (no namespace may contain `_`).
const CLUSTER_DIR: &str = "_cluster";

pub struct DirBackend {
    inner: Arc<Inner>,
    task: tokio::task::JoinHandle<()>,
    // Dropping the watcher stops its thread and closes the channel the task reads.
    _watcher: notify::RecommendedWatcher,
}

impl Drop for DirBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Inner {
    root: PathBuf,
    status: PathBuf,
    core: Arc<Core>,
    /// The kinds delivered to the core: Events stay on disk only, as recording one must not
    /// wake the components that record them.
    kinds: BTreeSet<Kind>,
    files: Mutex<Files>,
    /// Directory scans done, for tests.
    scans: AtomicU64,
}

#[derive(Default)]
struct Files {
    /// Every file read, with what it held when it had this stamp.
    cache: BTreeMap<PathBuf, Cached>,
    /// The user's objects currently in effect, and where each is defined.
    user: BTreeMap<ObjectRef, Location>,
    /// The suite's own objects currently on disk.
    owned: BTreeMap<ObjectRef, PathBuf>,
    /// Cross-file problems (duplicates) last logged, to log each once.
    warned: BTreeSet<String>,
}

/// What identifies a version of a file without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: i64,
    mtime_nsec: i64,
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Stamp {
        Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime: meta.mtime(),
            mtime_nsec: meta.mtime_nsec(),
        }
    }
}

struct Cached {
    stamp: Stamp,
    content: Content,
}

enum Content {
    /// A user manifest: the objects in effect from it.
    User(Vec<RawObject>),
    /// A merge patch onto a user object.
    Patch(ObjectRef, Value),
    /// An object the suite owns.
    Owned(ObjectRef, Value),
    /// A status file that could not be read (already logged).
    Unreadable,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum StatusArea {
    Patches,
    Objects,
}

impl StatusArea {
    fn dir(self) -> &'static str {
        match self {
            StatusArea::Patches => "patches",
            StatusArea::Objects => "objects",
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn object_err(obj: &ObjectRef, message: impl Into<String>) -> StateError {
    StateError::Object {
        object: obj.clone(),
        message: message.into(),
    }
}

impl DirBackend {
    /// Loads `path` and starts watching it; returns once the initial state is in `core`.
    pub async fn start(path: PathBuf, core: Arc<Core>) -> Result<Self, StateError> {
        match std::fs::metadata(&path) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(StateError::Io {
                    path,
                    source: std::io::Error::other("not a directory"),
                });
            }
            Err(source) => return Err(StateError::Io { path, source }),
        }
        let status = path.join("status");
        for area in [StatusArea::Patches, StatusArea::Objects] {
            let dir = status.join(area.dir());
            std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        }
        let kinds = core
            .kinds()
            .iter()
            .copied()
            .filter(|k| *k != Kind::Event)
            .collect();
        let inner = Arc::new(Inner {
            root: path,
            status,
            core,
            kinds,
            files: Mutex::new(Files::default()),
            scans: AtomicU64::new(0),
        });

        // Watch before the first read so no change falls between the two.
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let mut watcher =
            notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
                use notify::EventKind;
                use notify::event::{AccessKind, AccessMode};
                match res {
                    // Opening and reading (our own scans among them) change nothing.
                    Ok(ev)
                        if matches!(ev.kind, EventKind::Access(a)
                        if a != AccessKind::Close(AccessMode::Write)) => {}
                    Ok(_) => {
                        let _ = tx.send(());
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "watching the state directory; re-reading it");
                        let _ = tx.send(());
                    }
                }
            })?;
        watcher.watch(&inner.root, notify::RecursiveMode::Recursive)?;

        let first = inner.clone();
        tokio::task::spawn_blocking(move || first.reload())
            .await
            .map_err(|e| StateError::Io {
                path: inner.root.clone(),
                source: std::io::Error::other(e),
            })?;
        tracing::info!(dir = %inner.root.display(), "state directory loaded");
        let task = tokio::spawn(watch_loop(inner.clone(), rx));
        Ok(DirBackend {
            inner,
            task,
            _watcher: watcher,
        })
    }

    pub async fn patch_status(
        &self,
        obj: &ObjectRef,
        status: serde_json::Value,
    ) -> Result<(), StateError> {
        self.patch(obj, json!({ "status": status })).await
    }

    pub async fn patch_metadata(
        &self,
        obj: &ObjectRef,
        patch: &MetadataPatch,
    ) -> Result<(), StateError> {
        self.patch(obj, patch.to_merge_patch()).await
    }

    pub async fn apply(&self, obj: &ObjectRef, value: serde_json::Value) -> Result<(), StateError> {
        let obj = obj.clone();
        self.blocking(move |inner| inner.apply(&obj, value)).await
    }

    pub async fn delete(&self, obj: &ObjectRef) -> Result<(), StateError> {
        let obj = obj.clone();
        self.blocking(move |inner| inner.delete(&obj)).await
    }

    pub fn list_events(&self, namespace: &str) -> Vec<Value> {
        list_namespace_events(&self.inner.root, namespace)
    }

    pub async fn record_event(
        &self,
        regarding: &ObjectRef,
        event: &EventRecord,
    ) -> Result<(), StateError> {
        let regarding = regarding.clone();
        let event = event.clone();
        self.blocking(move |inner| inner.record_event(&regarding, &event))
            .await
    }

    async fn patch(&self, obj: &ObjectRef, patch: Value) -> Result<(), StateError> {
        let obj = obj.clone();
        self.blocking(move |inner| inner.patch(&obj, &patch)).await
    }

    /// Runs file-system work off the async threads.
    async fn blocking<F>(&self, f: F) -> Result<(), StateError>
    where
        F: FnOnce(&Inner) -> Result<(), StateError> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| StateError::Io {
                path: self.inner.root.clone(),
                source: std::io::Error::other(e),
            })?
    }
}

async fn watch_loop(inner: Arc<Inner>, mut rx: tokio::sync::mpsc::UnboundedReceiver<()>) {
    while rx.recv().await.is_some() {
        tokio::time::sleep(DEBOUNCE).await;
        while rx.try_recv().is_ok() {}
        let inner = inner.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || inner.reload()).await {
            tracing::error!(error = %e, "re-reading the state directory failed");
        }
    }
}

/// An exclusive `flock` on `status/.lock`, held while alive.
struct StatusLock(#[allow(dead_code)] std::fs::File);

impl StatusLock {
    fn acquire(status: &Path) -> Result<StatusLock, StateError> {
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

impl Inner {
    /// Re-reads what changed on disk and hands the result to the core.
    fn reload(&self) {
        let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        self.refresh(&mut files);
    }

    fn refresh(&self, files: &mut Files) {
        self.scans.fetch_add(1, Ordering::Relaxed);
        let mut errors = Vec::new();
        let mut user_paths = Vec::new();
        manifest::manifest_files(&self.root, Some(&self.status), &mut user_paths, &mut errors);
        let mut status_paths = Vec::new();
        for area in [StatusArea::Patches, StatusArea::Objects] {
            let dir = self.status.join(area.dir());
            if dir.is_dir() {
                let mut paths = Vec::new();
                manifest::manifest_files(&dir, None, &mut paths, &mut errors);
                status_paths.extend(paths.into_iter().map(|p| (p, Some(area))));
            }
        }
        for e in errors {
            tracing::warn!(error = %e, "reading the state directory");
        }

        let mut cache = BTreeMap::new();
        let all = user_paths
            .into_iter()
            .map(|p| (p, None))
            .chain(status_paths);
        for (path, area) in all {
            let Ok(meta) = std::fs::metadata(&path) else {
                continue; // gone since listed
            };
            let stamp = Stamp::of(&meta);
            let previous = files.cache.remove(&path);
            if let Some(prev) = &previous
                && prev.stamp == stamp
            {
                cache.insert(path, previous.expect("checked above"));
                continue;
            }
            let content = match area {
                None => self.read_user_file(&path, previous),
                Some(area) => self.read_status_file(&path, area),
            };
            if let Some(content) = content {
                cache.insert(path, Cached { stamp, content });
            }
        }
        files.cache = cache;
        self.publish(files);
    }

    fn read_user_file(&self, path: &Path, previous: Option<Cached>) -> Option<Content> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "cannot read manifest");
                return previous.map(|p| p.content);
            }
        };
        let (objects, errors) = manifest::parse_manifests(path, &text);
        if errors.is_empty() {
            return Some(Content::User(objects));
        }
        let keep_previous = matches!(
            previous,
            Some(Cached {
                content: Content::User(_),
                ..
            })
        );
        for e in &errors {
            tracing::warn!(
                file = %path.display(),
                error = %e,
                keeping_previous_version = keep_previous,
                "invalid manifest"
            );
        }
        match previous {
            Some(p) if keep_previous => Some(p.content),
            _ => Some(Content::User(objects)),
        }
    }

    fn read_status_file(&self, path: &Path, area: StatusArea) -> Option<Content> {
        let base = self.status.join(area.dir());
        let Some(obj) = path
            .strip_prefix(&base)
            .ok()
            .and_then(ref_from_relative_path)
        else {
            tracing::debug!(file = %path.display(), "ignoring a file not named like a status file");
            return None;
        };
        let value = std::fs::read_to_string(path)
            .map_err(|e| e.to_string())
            .and_then(|t| serde_saphyr::from_str::<Value>(&t).map_err(|e| e.to_string()))
            .and_then(|v| {
                if v.is_object() {
                    Ok(v)
                } else {
                    Err("not a mapping".to_string())
                }
            });
        Some(match value {
            Ok(v) => match area {
                StatusArea::Patches => Content::Patch(obj, v),
                StatusArea::Objects => Content::Owned(obj, v),
            },
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "unreadable status file, ignored");
                Content::Unreadable
            }
        })
    }

    /// Merges user objects, patches and owned objects and delivers them to the core.
    fn publish(&self, files: &mut Files) {
        let mut user = Vec::new();
        let mut patches = BTreeMap::new();
        let mut owned = BTreeMap::new();
        for (path, cached) in &files.cache {
            match &cached.content {
                Content::User(objs) => user.extend(objs.iter().cloned()),
                Content::Patch(obj, v) => {
                    patches.insert(obj.clone(), v);
                }
                Content::Owned(obj, v) => {
                    owned.insert(obj.clone(), (path.clone(), v));
                }
                Content::Unreadable => {}
            }
        }
        let (user, duplicates) = manifest::dedup(user);
        let mut warnings: BTreeSet<String> = duplicates.iter().map(|e| e.to_string()).collect();

        let mut out = Vec::with_capacity(user.len() + owned.len());
        files.user.clear();
        for o in user {
            files.user.insert(o.obj.clone(), o.source);
            let mut value = o.value;
            if let Some(p) = patches.get(&o.obj) {
                merge_patch(&mut value, p);
            }
            if self.kinds.contains(&o.obj.kind) {
                out.push((o.obj, value));
            }
        }
        files.owned.clear();
        for (obj, (path, value)) in owned {
            if let Some(loc) = files.user.get(&obj) {
                warnings.insert(format!(
                    "{obj} is defined both in {loc} and by metalnet in {}; using {loc}",
                    path.display()
                ));
            } else if self.kinds.contains(&obj.kind) {
                out.push((obj.clone(), value.clone()));
            }
            files.owned.insert(obj, path);
        }
        for w in warnings.difference(&files.warned) {
            tracing::warn!(problem = %w, "state directory");
        }
        files.warned = warnings;
        self.core.replace_kinds(&self.kinds, out);
    }

    fn status_path(&self, area: StatusArea, obj: &ObjectRef) -> Result<PathBuf, StateError> {
        let name_ok = |s: &str| {
            !s.is_empty() && !s.starts_with('.') && !s.contains(['/', '\0']) && s.len() <= 253
        };
        if !name_ok(&obj.name) || !obj.namespace.as_deref().is_none_or(name_ok) {
            return Err(object_err(obj, "name or namespace cannot name a file"));
        }
        Ok(self
            .status
            .join(area.dir())
            .join(obj.kind.name())
            .join(obj.namespace.as_deref().unwrap_or(CLUSTER_DIR))
            .join(format!("{}.yaml", obj.name)))
    }

    fn patch(&self, obj: &ObjectRef, patch: &Value) -> Result<(), StateError> {
        let _lock = StatusLock::acquire(&self.status)?;
        let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        self.refresh(&mut files);
        let (path, value) = if let Some(path) = files.owned.get(obj).cloned() {
            // The suite's own object: patch it in place.
            let Some(Content::Owned(_, current)) = files.cache.get(&path).map(|c| &c.content)
            else {
                return Err(object_err(obj, format!("{} is unreadable", path.display())));
            };
            let mut value = current.clone();
            merge_patch(&mut value, patch);
            (path, value)
        } else if files.user.contains_key(obj) {
            let path = self.status_path(StatusArea::Patches, obj)?;
            let mut value = match files.cache.get(&path).map(|c| &c.content) {
                Some(Content::Patch(_, v)) => v.clone(),
                _ => json!({}),
            };
            compose_patch(&mut value, patch);
            (path, value)
        } else {
            return Err(object_err(obj, "not found"));
        };
        write_atomic(&path, &value)?;
        self.refresh(&mut files);
        Ok(())
    }

    fn apply(&self, obj: &ObjectRef, mut value: Value) -> Result<(), StateError> {
        let path = self.status_path(StatusArea::Objects, obj)?;
        let Some(map) = value.as_object_mut() else {
            return Err(object_err(obj, "an object must be a mapping"));
        };
        map.entry("apiVersion")
            .or_insert_with(|| Value::String(obj.kind.api_version()));
        map.entry("kind")
            .or_insert_with(|| Value::String(obj.kind.name().to_string()));
        let meta = map.entry("metadata").or_insert_with(|| json!({}));
        if !meta.is_object() {
            *meta = json!({});
        }
        meta["name"] = Value::String(obj.name.clone());
        if let Some(ns) = &obj.namespace {
            meta["namespace"] = Value::String(ns.clone());
        }
        let _lock = StatusLock::acquire(&self.status)?;
        let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        self.refresh(&mut files);
        if let Some(loc) = files.user.get(obj) {
            return Err(object_err(
                obj,
                format!("defined in {loc}, not owned by metalnet"),
            ));
        }
        write_atomic(&path, &value)?;
        self.refresh(&mut files);
        Ok(())
    }

    fn delete(&self, obj: &ObjectRef) -> Result<(), StateError> {
        let _lock = StatusLock::acquire(&self.status)?;
        let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        self.refresh(&mut files);
        if let Some(path) = files.owned.get(obj).cloned() {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&path)(e)),
            }
            self.refresh(&mut files);
            return Ok(());
        }
        if let Some(loc) = files.user.get(obj) {
            return Err(object_err(
                obj,
                format!("defined in {loc}, not owned by metalnet"),
            ));
        }
        Ok(())
    }

    fn record_event(&self, regarding: &ObjectRef, event: &EventRecord) -> Result<(), StateError> {
        let namespace = regarding.namespace.as_deref().unwrap_or("default");
        let hash = fnv1a(&[
            regarding.kind.name(),
            event.type_.as_str(),
            &event.reason,
            &event.message,
        ]);
        let name = format!("{}.{:010x}", regarding.name, hash & 0xff_ffff_ffff);
        let event_ref = ObjectRef::new(Kind::Event, Some(namespace), &name);
        let path = self.status_path(StatusArea::Objects, &event_ref)?;
        let now = now_rfc3339();
        let _lock = StatusLock::acquire(&self.status)?;
        let existing = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| serde_saphyr::from_str::<Value>(&t).ok())
            .filter(|v| v.is_object());
        let value = match existing {
            Some(mut v) => {
                let count = v.get("count").and_then(Value::as_u64).unwrap_or(1);
                v["count"] = json!(count + 1);
                v["lastTimestamp"] = json!(now);
                v
            }
            None => {
                let mut involved = json!({
                    "apiVersion": regarding.kind.api_version(),
                    "kind": regarding.kind.name(),
                    "name": regarding.name,
                });
                if let Some(ns) = &regarding.namespace {
                    involved["namespace"] = json!(ns);
                }
                json!({
                    "apiVersion": "v1",
                    "kind": "Event",
                    "metadata": { "name": name, "namespace": namespace },
                    "involvedObject": involved,
                    "reason": event.reason,
                    "message": event.message,
                    "type": event.type_.as_str(),
                    "count": 1,
                    "firstTimestamp": now,
                    "lastTimestamp": now,
                    "source": { "component": event.reporter },
                    "reportingComponent": event.reporter,
                })
            }
        };
        write_atomic(&path, &value)
    }
}

/// The Events recorded about `regarding` in the state directory `dir`, oldest first.
pub fn list_events(dir: &Path, regarding: &ObjectRef) -> Vec<Value> {
    list_namespace_events(dir, regarding.namespace.as_deref().unwrap_or("default"))
        .into_iter()
        .filter(|v| event_is_about(v, regarding))
        .collect()
}

/// Every Event recorded in `namespace` in the state directory `dir`, oldest first
/// (by `firstTimestamp`, then name).
pub fn list_namespace_events(dir: &Path, namespace: &str) -> Vec<Value> {
    let ns_dir = dir
        .join("status")
        .join(StatusArea::Objects.dir())
        .join(Kind::Event.name())
        .join(namespace);
    let Ok(entries) = std::fs::read_dir(&ns_dir) else {
        return Vec::new();
    };
    let mut events: Vec<Value> = entries
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(manifest::is_manifest_name)
        })
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|t| serde_saphyr::from_str::<Value>(&t).ok())
        .filter(Value::is_object)
        .collect();
    events.sort_by(|a, b| {
        let key = |v: &Value| {
            (
                v["firstTimestamp"].as_str().unwrap_or_default().to_string(),
                v["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        };
        key(a).cmp(&key(b))
    });
    events
}

/// Whether an Event's `involvedObject` is `regarding`.
pub fn event_is_about(event: &Value, regarding: &ObjectRef) -> bool {
    let inv = &event["involvedObject"];
    inv["kind"] == regarding.kind.name()
        && inv["name"] == regarding.name.as_str()
        && inv.get("namespace").and_then(Value::as_str) == regarding.namespace.as_deref()
}

/// `Kind/namespace/name.yaml` (relative to `status/patches` or `status/objects`) to the
/// object it stands for.
fn ref_from_relative_path(rel: &Path) -> Option<ObjectRef> {
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
fn compose_patch(base: &mut Value, patch: &Value) {
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

/// YAML for a status file; JSON (also YAML) if the YAML would not read back identically.
fn to_yaml(value: &Value) -> String {
    if let Ok(s) = serde_saphyr::to_string(value)
        && serde_saphyr::from_str::<Value>(&s).ok().as_ref() == Some(value)
    {
        return s;
    }
    let mut s = serde_json::to_string_pretty(value).unwrap_or_else(|_| "{}".into());
    s.push('\n');
    s
}

/// Replaces `path` with `value` atomically: a temporary file in the same directory, fsync,
/// rename, fsync of the directory.
fn write_atomic(path: &Path, value: &Value) -> Result<(), StateError> {
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
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io_err(path))
}

/// FNV-1a, 64 bits: a hash that stays the same across builds and versions.
fn fnv1a(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.bytes().chain([0xff]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

fn now_rfc3339() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_paths_name_objects() {
        let r = ref_from_relative_path(Path::new("Service/default/web.yaml")).unwrap();
        assert_eq!(r, ObjectRef::new(Kind::Service, Some("default"), "web"));
        let r = ref_from_relative_path(Path::new("Node/_cluster/n1.yaml")).unwrap();
        assert_eq!(r, ObjectRef::new(Kind::Node, None, "n1"));
        for bad in [
            "Node/default/n1.yaml",
            "Service/_cluster/web.yaml",
            "Deployment/default/x.yaml",
            "Service/default/web.txt",
            "Service/web.yaml",
        ] {
            assert_eq!(ref_from_relative_path(Path::new(bad)), None, "{bad}");
        }
    }

    #[test]
    fn composed_patches_keep_deletions() {
        let mut base = json!({"metadata": {"annotations": {"a": "1"}}, "status": {"x": 1}});
        compose_patch(
            &mut base,
            &json!({"metadata": {"annotations": {"a": null, "b": "2"}}}),
        );
        assert_eq!(
            base,
            json!({"metadata": {"annotations": {"a": null, "b": "2"}}, "status": {"x": 1}})
        );
        let mut target = json!({"metadata": {"name": "s", "annotations": {"a": "0", "c": "3"}}});
        merge_patch(&mut target, &base);
        assert_eq!(
            target,
            json!({"metadata": {"name": "s", "annotations": {"b": "2", "c": "3"}}, "status": {"x": 1}})
        );
    }

    #[test]
    fn yaml_round_trips_awkward_strings() {
        let v = json!({"a": "yes", "b": "1.0", "c": "", "d": "x: y", "e": "0x10", "f": "~", "g": 1.5, "h": "- a", "i": "line\nline\n"});
        let text = to_yaml(&v);
        assert_eq!(serde_saphyr::from_str::<Value>(&text).unwrap(), v, "{text}");
    }

    #[tokio::test]
    async fn idle_directory_is_not_rescanned_and_drop_stops_the_watcher() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("n.yaml"),
            "apiVersion: v1\nkind: Node\nmetadata: {name: n1}\n",
        )
        .unwrap();
        let core = Core::new(Kind::ALL);
        let backend = DirBackend::start(dir.path().to_path_buf(), core.clone())
            .await
            .unwrap();
        let regarding = ObjectRef::new(Kind::Node, None, "n1");
        let event = EventRecord {
            type_: super::super::EventType::Normal,
            reason: "R".into(),
            message: "m".into(),
            reporter: "test".into(),
        };
        backend.record_event(&regarding, &event).await.unwrap();
        // Our write causes one more scan; our own scans must not cause further ones, so
        // the count must come to rest (within 5 s, however slow the machine).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let before = backend.inner.scans.load(Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(300)).await;
            if backend.inner.scans.load(Ordering::Relaxed) == before {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the directory is rescanned endlessly"
            );
        }

        drop(backend);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while Arc::strong_count(&core) > 1 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "watch task still holds the core"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
