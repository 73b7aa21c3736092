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
//!     ├── locks/controller.lock   # named locks: one daemon per role (holder pid and host)
//!     ├── last-good/services/web.yaml  # the last version of each manifest that parsed
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
//!   applied on top of your file whenever it is read. A patch whose object is gone is removed
//!   once the object has stayed gone for 1 s (also when it went while no daemon ran), as the
//!   API server removes an object's status with it: a Service deleted and created again is a
//!   new Service, and never brings back an address another Service may hold by then.
//! - **`status/objects/<Kind>/<namespace or _cluster>/<name>.yaml`**: whole objects the suite
//!   creates and deletes (ServiceL2Status, ServiceBGPStatus, Events).
//!   Events are `status/objects/Event/<namespace>/<object name>.<hash>.yaml`, one per
//!   (object, reason, message), with a `count`; they are not part of the snapshot.
//!
//! `status/locks/NAME.lock` are the named locks of [`super::ClusterState::lock`]: one
//! controller (`controller`) and one speaker per node (`speaker-<node>`) per directory.
//!
//! Files under `status/` are replaced atomically (temporary file, fsync, rename), so several
//! processes on one machine (the lab runs several daemons on one directory) may share `DIR`.
//! A Pod's status is renamed into place without the fsyncs: it describes a sandbox, which no
//! crash of the machine leaves alive.
//!
//! A write costs O(the written object), not O(the directory): with `status/.lock` held it
//! stats (and reads only if changed) the files of that one object, writes one file, records
//! it in memory as written and hands the core that one object, merged, so it is in the
//! snapshot when the call returns. The watcher's refresh (debounced) looks only at the
//! files its events name when they are status files or manifests it already knows (so the
//! refresh after a write costs one `stat`); a new manifest, a directory, a link or a hidden
//! entry changed (a ConfigMap volume's `..data` swap), lost events, or a re-check make it list
//! and stat the whole tree. Either way it reads only files whose (device, inode, size, mtime)
//! changed, and hands the core only the objects those files define.
//!
//! # Files being written
//!
//! A manifest written in place (a shell `>` redirect, an editor that does not rename) is
//! truncated and half-written for a moment. So that this never withdraws pools or moves
//! Services' addresses:
//!
//! - a manifest seen modified and not yet closed is not read until it is closed (at most
//!   2 s; a writer holding it open longer is read anyway);
//! - a manifest that does not parse keeps its previous objects until it parses again (the
//!   error is logged once per version of the file, naming the file and document);
//! - a manifest that still exists but lost every object at once keeps its previous version
//!   for 1 s, and loses its objects only if it stays so (a WARN says so, once).
//!
//! A process reading a manifest for the first time has no previous version in memory: the last
//! version that parsed with objects is kept under `status/last-good/` by whichever process read
//! it, and stands in for a manifest that does not parse at start, or that is without objects
//! and was emptied less than 1 s before (then held for what is left of that second).
//!
//! Deleting a file, or removing some objects from a file that parses, deletes them once the
//! file has stayed gone for 300 ms.
//!
//! # The directory itself
//!
//! If `DIR` is deleted, or replaced by another directory (re-created, renamed into place),
//! the last state stays in force while it is missing (a WARN says so, once) and
//! [`super::ClusterState::attached`] turns `false`, so that a daemon does not report ready
//! while blind. The path is checked every 500 ms; when a directory is there again, it is
//! watched and read, `status/` is re-created in it, and `attached` turns `true`. A `status/`
//! deleted by hand is re-created by the next write.
//!
//! # Limits
//!
//! A manifest over 64 MiB or 100,000 documents is not read (its previous objects stay in
//! force) and a directory holding over 256 MiB of manifests is refused at start and not
//! re-read afterwards (the last state stays in force); each is logged once, naming the file or
//! directory and the limit (see [`crate::manifest#limits`]). A directory that cannot be listed
//! or a symbolic link loop is logged once, not at every refresh.
//!
//! # Duplicates
//!
//! An object defined twice (in two files, or twice in one) is logged once, naming both places,
//! and recorded as a Warning Event `DuplicateObject` on the object (one Event however many
//! daemons read the directory);
//! the definition in force first stays in force (at start, the one in the file modified
//! longest ago), so a scratch copy never replaces an object in use. `metalnet-controller
//! validate DIR` reports the same duplicates (see [`crate::manifest::load_paths`]).

mod atomic;
mod events;
mod files;
mod last_good;
mod lock;
mod status;

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use notify::Watcher;
use serde_json::{Value, json};

use super::{Core, Delta, EventRecord, Kind, MetadataPatch, ObjectRef, StateError, merge_patch};
use crate::manifest;
use crate::manifest::RawObject;
use atomic::{Durability, remove_dead_writers_temp_files, write_atomic};
pub use events::{event_is_about, list_events, list_namespace_events};
use files::{Cached, Content, Files, Stamp, Suspect, read_stamped};
pub use lock::StateLock;
use status::{CLUSTER_DIR, StatusArea, StatusLock, compose_patch, read_status_file, status_ref};

/// How long to wait after a file-system event for more before re-reading: editors and
/// `kubectl`-style copies touch a file several times in quick succession.
const DEBOUNCE: Duration = Duration::from_millis(30);

/// How long a manifest seen being written (modified and not closed yet) is left unread at most:
/// a writer that keeps a file open longer is read anyway.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a manifest that lost every object at once while still existing (truncated by a
/// shell redirect, emptied by an editor before it writes) must stay so before its objects are
/// deleted. Until then the previous version stays in force.
const SHRINK_GRACE: Duration = Duration::from_secs(1);

/// How long a manifest must stay gone before its objects are deleted: `rm -rf DIR` and a
/// directory being replaced remove files one by one before the directory itself goes.
const DELETE_GRACE: Duration = Duration::from_millis(300);

/// How long an object must stay gone (as seen by this process, after [`DELETE_GRACE`] at
/// run time, or from the start) before its patch is removed: a directory being replaced at a
/// process's start looks empty for a moment.
const ORPHAN_GRACE: Duration = Duration::from_secs(1);

/// How often the watch loop checks that the directory it watches is still the one at the path
/// (it may have been deleted, or replaced by another one renamed into place).
const ATTACH_CHECK: Duration = Duration::from_millis(500);

pub struct DirBackend {
    inner: Arc<Inner>,
    /// The watch loop; it owns the watcher, which it replaces when the directory is.
    task: tokio::task::JoinHandle<()>,
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
    stats: Stats,
    /// Manifests seen opened for writing and not closed yet, since when: read only once closed
    /// (or after [`WRITE_TIMEOUT`]), so a half-written file is never taken for the new version.
    writing: Mutex<HashMap<PathBuf, Instant>>,
    /// When the watcher must look again although nothing changed (a file held back).
    recheck: Mutex<Option<Instant>>,
    /// What the watcher saw change since the last refresh.
    dirty: Mutex<Dirty>,
    /// Problems with objects (duplicates) found since they were last recorded as Events.
    problem_events: Mutex<Vec<(ObjectRef, String)>>,
    /// What the last listing could not read, as logged (see [`Inner::warn_once`]).
    listing_warned: Mutex<BTreeSet<String>>,
    /// The (device, inode) of the directory being watched; what is read under `root` counts
    /// only while the path still names this directory.
    watched: Mutex<Option<(u64, u64)>>,
    /// Whether the directory is watched (see [`super::ClusterState::attached`]).
    attached: tokio::sync::watch::Sender<bool>,
}

/// The (device, inode) of the directory at `path`, if there is one.
fn dir_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .ok()
        .filter(|m| m.is_dir())
        .map(|m| (m.dev(), m.ino()))
}

/// Creates `status/patches` and `status/objects` under an existing `root` (never `root`
/// itself: a missing state directory must not be re-created empty).
fn make_status_dirs(root: &Path, status: &Path) -> Result<(), StateError> {
    if dir_id(root).is_none() {
        return Err(StateError::Io {
            path: root.to_path_buf(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        });
    }
    for area in [StatusArea::Patches, StatusArea::Objects] {
        let dir = status.join(area.dir());
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    }
    Ok(())
}

/// What the backend did, for tests: writes must cost O(the written object).
#[derive(Default)]
struct Stats {
    /// Listings of the whole directory (the first load, watcher refreshes, and a write that
    /// did not find its object in memory).
    scans: AtomicU64,
    /// Of those, the ones a write made.
    write_scans: AtomicU64,
    /// Watcher refreshes that looked only at the files named by the events (no listing).
    path_refreshes: AtomicU64,
    /// Files read and parsed.
    parsed: AtomicU64,
    /// Listing problems logged (each once, not at every refresh).
    listing_warnings: AtomicU64,
}

pub(super) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn object_err(obj: &ObjectRef, message: impl Into<String>) -> StateError {
    StateError::Object {
        object: obj.clone(),
        message: message.into(),
        status: None,
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
        let status = path.join(manifest::STATUS_DIR);
        make_status_dirs(&path, &status)?;
        remove_dead_writers_temp_files(&status);
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
            stats: Stats::default(),
            writing: Mutex::new(HashMap::new()),
            recheck: Mutex::new(None),
            dirty: Mutex::new(Dirty::default()),
            problem_events: Mutex::new(Vec::new()),
            listing_warned: Mutex::new(BTreeSet::new()),
            watched: Mutex::new(None),
            attached: tokio::sync::watch::Sender::new(true),
        });
        *inner.watched.lock().unwrap_or_else(|e| e.into_inner()) = dir_id(&inner.root);

        // Watch before the first read so no change falls between the two.
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let watcher = new_watcher(&inner, tx.clone())?;

        let first = inner.clone();
        tokio::task::spawn_blocking(move || {
            first.reload()?;
            first.record_problem_events();
            Ok::<(), StateError>(())
        })
        .await
        .map_err(|e| StateError::Io {
            path: inner.root.clone(),
            source: std::io::Error::other(e),
        })??;
        last_good::remove_orphans(&inner.root, &inner.status);
        tracing::info!(dir = %inner.root.display(), "state directory loaded");
        let task = tokio::spawn(watch_loop(inner.clone(), watcher, tx, rx));
        Ok(DirBackend { inner, task })
    }

    /// Waits until the patches of objects found gone so far (at the start, or since) have
    /// stayed without their objects for the grace, and removes them (see
    /// [`Inner::remove_orphan_patches`]). For a process that reads once and exits (`--once`):
    /// it would otherwise leave them for the next one, and an object created again meanwhile
    /// would come back with its old status.
    pub async fn remove_deleted_objects_status(&self) -> Result<(), StateError> {
        let last_due = {
            let files = self.inner.files.lock().unwrap_or_else(|e| e.into_inner());
            files
                .orphans
                .values()
                .max()
                .map(|since| *since + ORPHAN_GRACE)
        };
        let Some(due) = last_due else {
            return Ok(());
        };
        tokio::time::sleep_until(tokio::time::Instant::from_std(due)).await;
        self.blocking(Inner::reload).await
    }

    /// Takes the lock `name` (`status/locks/NAME.lock`) if it is free.
    pub fn lock(&self, name: &str) -> Result<StateLock, StateError> {
        lock::try_lock(&self.inner.status, name)
    }

    /// Takes the lock `name`, waiting as long as another process holds it.
    pub async fn lock_wait(&self, name: &str) -> Result<StateLock, StateError> {
        lock::lock_wait(self.inner.status.clone(), name.to_string()).await
    }

    /// Whether the directory is watched now (see [`super::ClusterState::attached`]).
    pub fn attached(&self) -> tokio::sync::watch::Receiver<bool> {
        self.inner.attached.subscribe()
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

    /// Every Event in `namespace`, oldest first, as this backend knows them: the watcher
    /// keeps them current, so they are not read and parsed again from disk (a controller
    /// starting on 20,000 Services reads 20,000 Events at once).
    pub fn list_events(&self, namespace: &str) -> Vec<Value> {
        let files = self.inner.files.lock().unwrap_or_else(|e| e.into_inner());
        let mut events: Vec<Value> = files
            .owned
            .iter()
            .filter(|(obj, _)| {
                obj.kind == Kind::Event && obj.namespace.as_deref() == Some(namespace)
            })
            .filter_map(|(obj, paths)| {
                let canonical = self.inner.status_path(StatusArea::Objects, obj).ok();
                files
                    .status_value(Some(paths), canonical.as_deref())
                    .map(|(_, v)| v.clone())
            })
            .filter(Value::is_object)
            .collect();
        drop(files);
        events::sort_events(&mut events);
        events
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

/// A watcher of `inner.root` that notes which manifests are being written and wakes the watch
/// loop through `tx`.
fn new_watcher(
    inner: &Arc<Inner>,
    tx: tokio::sync::mpsc::UnboundedSender<()>,
) -> Result<notify::RecommendedWatcher, StateError> {
    use notify::EventKind;
    use notify::event::{AccessKind, AccessMode};
    // Weak: the watcher must not keep the backend alive.
    let weak: Weak<Inner> = Arc::downgrade(inner);
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        match res {
            Ok(ev) => {
                // Opening and reading (our own scans among them) change nothing.
                if matches!(ev.kind, EventKind::Access(a) if a != AccessKind::Close(AccessMode::Write))
                {
                    return;
                }
                let Some(inner) = weak.upgrade() else {
                    return;
                };
                inner.note_event(&ev);
                if inner.note_dirty(&ev) {
                    let _ = tx.send(());
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "watching the state directory; re-reading it");
                if let Some(inner) = weak.upgrade() {
                    inner.dirty.lock().unwrap_or_else(|e| e.into_inner()).full = true;
                }
                let _ = tx.send(());
            }
        }
    })?;
    watcher.watch(&inner.root, notify::RecursiveMode::Recursive)?;
    Ok(watcher)
}

async fn watch_loop(
    inner: Arc<Inner>,
    watcher: notify::RecommendedWatcher,
    tx: tokio::sync::mpsc::UnboundedSender<()>,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<()>,
) {
    // Dropping a watcher stops its thread; replaced when the directory is.
    let mut watcher = Some(watcher);
    loop {
        let recheck = inner
            .recheck
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .map(tokio::time::Instant::from_std);
        let tick = tokio::time::Instant::now() + ATTACH_CHECK;
        let until = recheck.map_or(tick, |r| r.min(tick));
        let event = match tokio::time::timeout_at(until, rx.recv()).await {
            Ok(None) => return,
            Ok(Some(())) => true,
            Err(_) => false,
        };
        let due = recheck.is_some_and(|r| r <= tokio::time::Instant::now());
        let watched = *inner.watched.lock().unwrap_or_else(|e| e.into_inner());
        let now = dir_id(&inner.root);
        if now.is_none() {
            // Gone: nothing is read (an empty listing is not "everything deleted").
            watcher = None;
            *inner.watched.lock().unwrap_or_else(|e| e.into_inner()) = None;
            if inner.attached.send_replace(false) {
                tracing::warn!(
                    dir = %inner.root.display(),
                    "the state directory is gone; keeping the last state until it is back"
                );
            }
            continue;
        }
        let reattached = now != watched || watcher.is_none();
        if reattached {
            watcher = None;
            *inner.watched.lock().unwrap_or_else(|e| e.into_inner()) = None;
            match new_watcher(&inner, tx.clone()) {
                Ok(w) => {
                    watcher = Some(w);
                    *inner.watched.lock().unwrap_or_else(|e| e.into_inner()) = now;
                    if let Err(e) = make_status_dirs(&inner.root, &inner.status) {
                        tracing::warn!(error = %e, "re-creating the status directory");
                    }
                    inner.attached.send_replace(true);
                    tracing::warn!(dir = %inner.root.display(), "the state directory was replaced; watching it again");
                }
                Err(e) => {
                    if inner.attached.send_replace(false) {
                        tracing::warn!(dir = %inner.root.display(), error = %e, "cannot watch the state directory; keeping the last state");
                    }
                    continue;
                }
            }
        } else if !event && !due {
            if let Some(r) = recheck {
                inner.recheck_at(r.into_std());
            }
            continue;
        }
        if let Some(r) = recheck.filter(|_| !due) {
            // Not due yet: a refresh of some paths must not drop it.
            inner.recheck_at(r.into_std());
        }
        tokio::time::sleep(DEBOUNCE).await;
        while rx.try_recv().is_ok() {}
        let dirty = std::mem::take(&mut *inner.dirty.lock().unwrap_or_else(|e| e.into_inner()));
        // A re-check, a re-attached directory or an event the paths alone do not explain
        // (a directory or link changed, events lost) lists the whole tree; otherwise only the
        // files named by the events are looked at, so a refresh after our own writes costs
        // O(those writes), not O(the directory).
        let full = dirty.full || due || reattached || !event;
        let inner = inner.clone();
        let refresh = move || {
            let result = if full {
                inner.reload()
            } else {
                inner.refresh_paths(dirty.paths)
            };
            inner.record_problem_events();
            result
        };
        match tokio::task::spawn_blocking(refresh).await {
            Ok(Ok(())) => {}
            // Already logged (once) by the listing.
            Ok(Err(_)) => {}
            Err(e) => tracing::error!(error = %e, "re-reading the state directory failed"),
        }
    }
}

/// What the watcher saw change since the last refresh.
#[derive(Default)]
struct Dirty {
    /// Something the paths alone do not explain: list the whole tree.
    full: bool,
    /// Files created, changed or removed.
    paths: BTreeSet<PathBuf>,
}

/// What one path in a file-system event asks of the next refresh.
#[derive(Debug, PartialEq, Eq)]
enum Wants {
    /// Nothing: our own temporary files, locks, and other files no listing includes.
    Nothing,
    /// A look at this file.
    Path,
    /// A listing of the whole tree: a directory, a link or a hidden entry changed (a
    /// ConfigMap volume swaps its `..data` link), or a path outside what is known.
    Full,
}

/// What a change at `path` asks of the next refresh, for a state directory at `root` with
/// its status directory `status`. Pure, on the path alone: a file named like a manifest is
/// looked at on its own; anything else that a listing may see lists the tree.
fn wants(root: &Path, status: &Path, path: &Path) -> Wants {
    let Ok(relative) = path.strip_prefix(root) else {
        return Wants::Full;
    };
    let name = relative.file_name().and_then(|n| n.to_str());
    if let Ok(in_status) = path.strip_prefix(status) {
        let parts: Vec<&str> = in_status
            .components()
            .map(|c| c.as_os_str().to_str().unwrap_or_default())
            .collect();
        return match parts.as_slice() {
            // `status/` itself or a whole area: every file in it may have changed.
            [] | ["patches" | "objects"] => Wants::Full,
            [_, .., n] if atomic::temp_file_writer(n).is_some() => Wants::Nothing,
            // `AREA/KIND/NAMESPACE/NAME.yaml`
            ["patches" | "objects", _, _, n] if manifest::is_manifest_name(n) => Wants::Path,
            // A kind's or a namespace's directory, or a stray file: let the listing judge.
            ["patches" | "objects", ..] => Wants::Full,
            // `status/.lock`, `status/locks/`: not state.
            _ => Wants::Nothing,
        };
    }
    let hidden = relative
        .components()
        .any(|c| c.as_os_str().to_str().is_none_or(|s| s.starts_with('.')));
    match name {
        Some(n) if !hidden && manifest::is_manifest_name(n) => Wants::Path,
        _ => Wants::Full,
    }
}

impl Inner {
    /// Records in [`Inner::dirty`] what one file-system event asks of the next refresh;
    /// returns whether a refresh is needed at all.
    fn note_dirty(&self, ev: &notify::Event) -> bool {
        let mut dirty = self.dirty.lock().unwrap_or_else(|e| e.into_inner());
        if ev.need_rescan() || ev.paths.is_empty() {
            dirty.full = true;
            return true;
        }
        let mut wake = false;
        for path in &ev.paths {
            match wants(&self.root, &self.status, path) {
                Wants::Nothing => {}
                Wants::Path => {
                    dirty.paths.insert(path.clone());
                    wake = true;
                }
                Wants::Full => {
                    dirty.full = true;
                    wake = true;
                }
            }
        }
        wake
    }

    /// Keeps [`Inner::writing`] up to date from one file-system event.
    fn note_event(&self, ev: &notify::Event) {
        use notify::EventKind;
        use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind};
        let opened = match ev.kind {
            EventKind::Create(CreateKind::File) | EventKind::Modify(ModifyKind::Data(_)) => true,
            EventKind::Access(AccessKind::Close(AccessMode::Write))
            | EventKind::Remove(_)
            | EventKind::Modify(ModifyKind::Name(_)) => false,
            _ => return,
        };
        let mut writing = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        for path in &ev.paths {
            let is_manifest = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(manifest::is_manifest_name);
            if !is_manifest || path.starts_with(&self.status) {
                continue;
            }
            // A symbolic link is created whole: no close follows its creation.
            let is_link = std::fs::symlink_metadata(path).is_ok_and(|m| m.is_symlink());
            if opened && !is_link {
                writing.entry(path.clone()).or_insert_with(Instant::now);
            } else {
                writing.remove(path);
            }
        }
    }

    /// Whether `path` is being written now; if so, a re-check is scheduled for when it will be
    /// read anyway.
    fn being_written(&self, path: &Path) -> bool {
        let since = self
            .writing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(path)
            .copied();
        match since {
            Some(since) if since.elapsed() < WRITE_TIMEOUT => {
                self.recheck_at(since + WRITE_TIMEOUT);
                true
            }
            _ => false,
        }
    }

    /// Asks the watcher to look again at `at` at the latest.
    fn recheck_at(&self, at: Instant) {
        let mut recheck = self.recheck.lock().unwrap_or_else(|e| e.into_inner());
        *recheck = Some(recheck.map_or(at, |r| r.min(at)));
    }

    /// Re-reads what changed on disk and hands the changed objects to the core. The listing
    /// is made without holding `files`, so writes go on meanwhile.
    /// Errors when the directory holds more than [`manifest::MAX_TOTAL_BYTES`] of manifests
    /// (the last state stays in force).
    fn reload(&self) -> Result<(), StateError> {
        let listing = self.list()?;
        let watched = *self.watched.lock().unwrap_or_else(|e| e.into_inner());
        if watched.is_none() || dir_id(&self.root) != watched {
            // Gone or replaced while listed: the watch loop re-attaches and reads it again.
            return Ok(());
        }
        {
            let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
            let mut affected = BTreeSet::new();
            self.merge_listing(&mut files, listing, &mut affected);
            self.deliver(&mut files, affected);
        }
        self.remove_orphan_patches();
        Ok(())
    }

    /// Looks at the files `paths` named by the watcher's events, without listing the tree:
    /// status files, and manifests already known (edited or removed). A manifest new to this
    /// backend, or a path that is no longer a file, lists the tree instead, so that what the
    /// listing decides (which links are followed, which file is older, the size limit of
    /// the whole directory) stays decided in one place.
    fn refresh_paths(&self, paths: BTreeSet<PathBuf>) -> Result<(), StateError> {
        if paths.is_empty() {
            return Ok(());
        }
        let watched = *self.watched.lock().unwrap_or_else(|e| e.into_inner());
        if watched.is_none() || dir_id(&self.root) != watched {
            return Ok(());
        }
        let mut present = Vec::new();
        let mut gone = Vec::new();
        for path in paths {
            let user = self.status_area(&path).is_none();
            match std::fs::metadata(&path) {
                Ok(meta) if meta.is_file() => {
                    if user && !self.is_cached(&path) {
                        return self.reload();
                    }
                    present.push((path, Stamp::of(&meta)));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => gone.push(path),
                // A directory, or unreadable: the listing reports it.
                _ => return self.reload(),
            }
        }
        if present.iter().any(|(p, _)| self.status_area(p).is_none())
            && self.user_bytes_with(&present) > manifest::MAX_TOTAL_BYTES
        {
            // The listing refuses it and says so, once.
            return self.reload();
        }
        self.stats.path_refreshes.fetch_add(1, Ordering::Relaxed);
        // Oldest first, as the listing reads them.
        present.sort_by(|(pa, a), (pb, b)| (a.modified(), pa).cmp(&(b.modified(), pb)));
        let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        let mut affected = BTreeSet::new();
        for path in gone {
            if files.cache.contains_key(&path) {
                self.note_missing(&mut files, &path, &mut affected);
            }
        }
        for (path, stamp) in &present {
            files.missing.remove(path);
            if files.cache.get(path).is_none_or(|c| c.stamp != *stamp) {
                self.sync_path(&mut files, path, &mut affected);
            }
        }
        self.deliver(&mut files, affected);
        Ok(())
    }

    fn is_cached(&self, path: &Path) -> bool {
        self.files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .cache
            .contains_key(path)
    }

    /// The bytes of user manifests if the files `changed` had the sizes of their stamps.
    fn user_bytes_with(&self, changed: &[(PathBuf, Stamp)]) -> u64 {
        let files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        let changed: HashMap<&Path, u64> = changed
            .iter()
            .filter(|(p, _)| self.status_area(p).is_none())
            .map(|(p, s)| (p.as_path(), s.len()))
            .collect();
        files
            .cache
            .iter()
            .filter(|(p, c)| {
                matches!(c.content, Content::User(_)) || changed.contains_key(p.as_path())
            })
            .map(|(p, c)| changed.get(p.as_path()).copied().unwrap_or(c.stamp.len()))
            .sum()
    }

    /// A file known here is no longer on disk: its objects are deleted once it has stayed
    /// gone for [`DELETE_GRACE`] (`rm -rf` and a directory being replaced remove files one
    /// by one before the directory itself goes), if the directory is still there then.
    /// Status files too: a Service must not lose its address for a moment.
    fn note_missing(&self, files: &mut Files, path: &Path, affected: &mut BTreeSet<ObjectRef>) {
        let now = Instant::now();
        let since = *files.missing.entry(path.to_path_buf()).or_insert(now);
        if now.duration_since(since) >= DELETE_GRACE {
            files.missing.remove(path);
            files.set(path, None, affected);
            if self.status_area(path).is_none()
                && let Some(copy) = last_good::copy_path(&self.root, &self.status, path)
            {
                last_good::forget(&copy);
            }
        } else {
            self.recheck_at(since + DELETE_GRACE);
        }
    }

    /// Lists every manifest and status file with its stamp. What cannot be listed (an
    /// unreadable directory, a symbolic link loop) is logged once, not at every refresh; more
    /// than [`manifest::MAX_TOTAL_BYTES`] of manifests is an error.
    fn list(&self) -> Result<Vec<(PathBuf, Stamp)>, StateError> {
        self.stats.scans.fetch_add(1, Ordering::Relaxed);
        let mut errors = Vec::new();
        let mut paths = Vec::new();
        manifest::manifest_files(&self.root, Some(&self.status), &mut paths, &mut errors);
        for area in [StatusArea::Patches, StatusArea::Objects] {
            let dir = self.status.join(area.dir());
            if dir.is_dir() {
                manifest::manifest_files(&dir, None, &mut paths, &mut errors);
            }
        }
        let listing: Vec<(PathBuf, Stamp)> = paths
            .into_iter()
            // A file gone since listed is left out.
            .filter_map(|p| Some((Stamp::of(&std::fs::metadata(&p).ok()?), p)))
            .map(|(stamp, p)| (p, stamp))
            .collect();
        let total: u64 = listing
            .iter()
            .filter(|(p, _)| self.status_area(p).is_none())
            .map(|(_, s)| s.len())
            .sum();
        let mut problems: BTreeSet<String> = errors.iter().map(|e| e.to_string()).collect();
        let over = (total > manifest::MAX_TOTAL_BYTES).then(|| {
            format!(
                "{} of manifests, over the limit of {} per state directory; keeping the last state",
                manifest::human_bytes(total),
                manifest::human_bytes(manifest::MAX_TOTAL_BYTES)
            )
        });
        problems.extend(over.clone());
        let logged = self.warn_once(problems);
        self.stats
            .listing_warnings
            .fetch_add(logged as u64, Ordering::Relaxed);
        match over {
            Some(message) => Err(StateError::Manifest {
                path: self.root.clone(),
                message,
            }),
            None => Ok(listing),
        }
    }

    /// Logs the problems of a listing not logged at the previous one: a file that stays
    /// unreadable is reported once, and again only after it was fine for a while.
    /// Returns how many were logged.
    fn warn_once(&self, problems: BTreeSet<String>) -> usize {
        let mut warned = self
            .listing_warned
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let mut logged = 0;
        for p in problems.difference(&warned) {
            tracing::warn!(problem = %p, "reading the state directory");
            logged += 1;
        }
        *warned = problems;
        logged
    }

    /// Brings `files` in line with `listing` (made earlier, perhaps before some writes),
    /// reading only the files whose stamp changed.
    fn merge_listing(
        &self,
        files: &mut Files,
        mut listing: Vec<(PathBuf, Stamp)>,
        affected: &mut BTreeSet<ObjectRef>,
    ) {
        // Files are read oldest first, so that of two files new to this backend defining the
        // same object (at start, say) the older one's definition is in force.
        listing.sort_by(|(pa, a), (pb, b)| (a.modified(), pa).cmp(&(b.modified(), pb)));
        let listed: HashSet<&Path> = listing.iter().map(|(p, _)| p.as_path()).collect();
        let unlisted: Vec<PathBuf> = files
            .cache
            .keys()
            .filter(|p| !listed.contains(p.as_path()))
            .cloned()
            .collect();
        for path in unlisted {
            if self.status_area(&path).is_some() && path.exists() {
                // Written by us after the listing was made: look again.
                self.sync_path(files, &path, affected);
            } else {
                self.note_missing(files, &path, affected);
            }
        }
        files.missing.retain(|p, _| !listed.contains(p.as_path()));
        for (path, stamp) in &listing {
            if files.cache.get(path).is_none_or(|c| c.stamp != *stamp) {
                // Changed, or the listing is older than a write of ours: look again.
                self.sync_path(files, path, affected);
            }
        }
    }

    /// Which status area `path` is in (`None`: a user file).
    fn status_area(&self, path: &Path) -> Option<StatusArea> {
        [StatusArea::Patches, StatusArea::Objects]
            .into_iter()
            .find(|area| path.starts_with(self.status.join(area.dir())))
    }

    /// Brings the cache entry of one file in line with the disk: a `stat`, and a read only
    /// if its stamp changed.
    fn sync_path(&self, files: &mut Files, path: &Path, affected: &mut BTreeSet<ObjectRef>) {
        let stamp = match std::fs::metadata(path) {
            Ok(meta) => Stamp::of(&meta),
            Err(_) => {
                files.set(path, None, affected);
                return;
            }
        };
        if files.cache.get(path).is_some_and(|c| c.stamp == stamp) {
            return;
        }
        let area = self.status_area(path);
        if area.is_none() && self.being_written(path) {
            tracing::debug!(file = %path.display(), "being written; read once closed");
            return;
        }
        if area.is_none()
            && let Some(e) = manifest::file_too_large(path, stamp.len())
        {
            // Logged once per version of the file: the stamp is recorded with what stays.
            let previous = match files.cache.get(path).map(|c| &c.content) {
                Some(Content::User(objects)) => objects.clone(),
                _ => Vec::new(),
            };
            tracing::warn!(
                file = %path.display(),
                error = %e,
                keeping_previous_version = !previous.is_empty(),
                "manifest not read"
            );
            let kept = Cached {
                stamp,
                content: Content::User(previous),
            };
            files.set(path, Some(kept), affected);
            return;
        }
        if let Some(area) = area
            && status_ref(&self.status, area, path).is_none()
        {
            tracing::debug!(file = %path.display(), "ignoring a file not named like a status file");
            let ignored = Cached {
                stamp,
                content: Content::Ignored,
            };
            files.set(path, Some(ignored), affected);
            return;
        }
        self.stats.parsed.fetch_add(1, Ordering::Relaxed);
        let read = read_stamped(path);
        if let Err(e) = &read
            && e.kind() == std::io::ErrorKind::NotFound
        {
            files.set(path, None, affected);
            return;
        }
        let (stamp, content) = match area {
            None => {
                let previous = files.cache.get(path).map(|c| &c.content);
                match read {
                    Ok((stamp, text)) => match self.read_user_file(files, path, stamp, &text) {
                        Some(read) => read,
                        // Held back: the cache keeps the previous version and its stamp,
                        // so the file is read again at the next refresh.
                        None => return,
                    },
                    Err(e) => {
                        tracing::warn!(file = %path.display(), error = %e, "cannot read manifest");
                        match previous {
                            Some(Content::User(objects)) => (stamp, Content::User(objects.clone())),
                            // Not cached: tried again at the next refresh.
                            _ => return,
                        }
                    }
                }
            }
            Some(area) => match read {
                Ok((stamp, text)) => (stamp, read_status_file(&self.status, area, path, &text)),
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "unreadable status file, ignored");
                    (stamp, Content::Ignored)
                }
            },
        };
        files.set(path, Some(Cached { stamp, content }), affected);
    }

    /// A user manifest's objects with the stamp to cache them under, or `None` to keep the
    /// previous version in force for now.
    ///
    /// A file that does not parse keeps its previous objects until it does (an edit in
    /// progress). A file that parses but lost every object at once while still existing is
    /// held back for [`SHRINK_GRACE`] (a truncation before a write); if it stays so, its
    /// objects are deleted. Each is logged once per episode, not at every refresh.
    ///
    /// A file read for the first time by this process has no previous version in memory; its
    /// last good version kept on disk (see [`last_good`]) stands in for it, so that a daemon
    /// starting while a manifest is being rewritten or is broken does not take its objects
    /// for deleted. Every version that parses with objects is kept so.
    fn read_user_file(
        &self,
        files: &mut Files,
        path: &Path,
        stamp: Stamp,
        text: &str,
    ) -> Option<(Stamp, Content)> {
        let (objects, errors) = manifest::parse_manifests(path, text);
        let copy = last_good::copy_path(&self.root, &self.status, path);
        let cached = files.cache.get(path).map(|c| &c.content);
        // Borrowed from the cache: cloned only when it stays in force.
        let mut previous: Option<Cow<'_, [RawObject]>> = match cached {
            Some(Content::User(objects)) if !objects.is_empty() => Some(Cow::Borrowed(objects)),
            _ => None,
        };
        let first_read = cached.is_none();
        if first_read && (!errors.is_empty() || objects.is_empty()) {
            previous = copy
                .as_deref()
                .and_then(last_good::read)
                .map(|kept| manifest::parse_manifests(path, &kept))
                .filter(|(kept, kept_errors)| !kept.is_empty() && kept_errors.is_empty())
                .map(|(kept, _)| Cow::Owned(kept));
        }
        if !errors.is_empty() {
            files.suspects.remove(path);
            for e in &errors {
                tracing::warn!(
                    file = %path.display(),
                    error = %e,
                    keeping_previous_version = previous.is_some(),
                    "invalid manifest"
                );
            }
            if first_read && previous.is_some() {
                tracing::info!(
                    file = %path.display(),
                    "using the last good version of the manifest until it parses again"
                );
            }
            return Some((
                stamp,
                Content::User(previous.map_or(objects, Cow::into_owned)),
            ));
        }
        let Some(previous) = previous.filter(|_| objects.is_empty()) else {
            if files.suspects.remove(path).is_some() {
                tracing::info!(file = %path.display(), "manifest readable again");
            }
            if let Some(copy) = &copy {
                if objects.is_empty() {
                    last_good::forget(copy);
                } else {
                    last_good::keep(copy, text, stamp);
                }
            }
            return Some((stamp, Content::User(objects)));
        };
        let now = Instant::now();
        if first_read {
            // Emptied before this process started: held back for what is left of the grace
            // period since it was, under a stamp no file has, so that it is read again.
            let age = last_good::age(stamp).unwrap_or(SHRINK_GRACE);
            if age >= SHRINK_GRACE {
                if let Some(copy) = &copy {
                    last_good::forget(copy);
                }
                tracing::info!(
                    file = %path.display(),
                    objects = previous.len(),
                    "manifest has been without objects since before start; not using its last good version"
                );
                return Some((stamp, Content::User(objects)));
            }
            tracing::warn!(
                file = %path.display(),
                objects = previous.len(),
                emptied_ago = ?age,
                grace = ?SHRINK_GRACE,
                "manifest without objects at start, emptied just before (truncated, or being \
                 written?); using its last good version until it stays so"
            );
            let since = now.checked_sub(age).unwrap_or(now);
            files
                .suspects
                .insert(path.to_path_buf(), Suspect { stamp, since });
            self.recheck_at(since + SHRINK_GRACE);
            return Some((stamp.unread(), Content::User(previous.into_owned())));
        }
        let suspect = files.suspects.entry(path.to_path_buf()).or_insert_with(|| {
            tracing::warn!(
                file = %path.display(),
                objects = previous.len(),
                grace = ?SHRINK_GRACE,
                "manifest lost all its objects at once (truncated, or being written?); \
                 keeping its previous version until it stays so"
            );
            Suspect { stamp, since: now }
        });
        if suspect.stamp != stamp {
            // Changed again: the grace period starts over.
            *suspect = Suspect { stamp, since: now };
        }
        let until = suspect.since + SHRINK_GRACE;
        if now < until {
            self.recheck_at(until);
            return None;
        }
        files.suspects.remove(path);
        if let Some(copy) = &copy {
            last_good::forget(copy);
        }
        tracing::warn!(
            file = %path.display(),
            objects = previous.len(),
            "manifest has stayed without objects; deleting its previous objects"
        );
        Some((stamp, Content::User(objects)))
    }

    /// The object `obj` as in effect: your object with its patch, or the suite's own.
    fn effective(&self, files: &Files, obj: &ObjectRef) -> Option<Value> {
        if let Some(user) = files.user_object(obj) {
            let mut value = user.value.clone();
            let canonical = self.status_path(StatusArea::Patches, obj).ok();
            if let Some((_, patch)) =
                files.status_value(files.patches.get(obj), canonical.as_deref())
            {
                merge_patch(&mut value, patch);
            }
            return Some(value);
        }
        let canonical = self.status_path(StatusArea::Objects, obj).ok();
        files
            .status_value(files.owned.get(obj), canonical.as_deref())
            .map(|(_, v)| v.clone())
    }

    /// Hands the objects in `affected` to the core as they are now in effect, and logs new
    /// problems with them.
    fn deliver(&self, files: &mut Files, affected: BTreeSet<ObjectRef>) {
        let mut deltas = Vec::new();
        for obj in affected {
            self.note_orphan(files, &obj);
            let problems = self.problems(files, &obj);
            let logged = files.warned.remove(&obj).unwrap_or_default();
            for p in problems.difference(&logged) {
                tracing::warn!(problem = %p, "state directory");
                self.problem_events
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((obj.clone(), p.clone()));
            }
            if !problems.is_empty() {
                files.warned.insert(obj.clone(), problems);
            }
            if self.kinds.contains(&obj.kind) {
                deltas.push(match self.effective(files, &obj) {
                    Some(value) => Delta::Apply(obj, value),
                    None => Delta::Delete(obj),
                });
            }
        }
        if !deltas.is_empty() {
            self.core.apply(deltas);
        }
    }

    /// Starts or stops the clock on `obj`'s patch when it has no object (see
    /// [`Inner::remove_orphan_patches`]).
    fn note_orphan(&self, files: &mut Files, obj: &ObjectRef) {
        let orphan =
            files.patches.get(obj).is_some_and(|p| !p.is_empty()) && !files.user.contains_key(obj);
        if !orphan {
            files.orphans.remove(obj);
        } else if !files.orphans.contains_key(obj) {
            let now = Instant::now();
            files.orphans.insert(obj.clone(), now);
            self.recheck_at(now + ORPHAN_GRACE);
        }
    }

    /// Removes the patches of objects gone for [`ORPHAN_GRACE`]. Without this a deleted
    /// Service's status would come back with a Service of that name, claiming an address
    /// that another Service may have been given meanwhile (and, after a controller restart,
    /// winning it). Under the status lock the tree is listed again first, so an object that
    /// came back since the last refresh keeps its patch.
    fn remove_orphan_patches(&self) {
        let due: Vec<ObjectRef> = {
            let files = self.files.lock().unwrap_or_else(|e| e.into_inner());
            files
                .orphans
                .iter()
                .filter(|(_, since)| since.elapsed() >= ORPHAN_GRACE)
                .map(|(obj, _)| obj.clone())
                .collect()
        };
        if due.is_empty() {
            return;
        }
        let result = self.write_op(|files, affected| {
            let listing = self.list()?;
            self.merge_listing(files, listing, affected);
            for obj in &due {
                // Tried once: a failure is not retried until the object changes again.
                if files.orphans.remove(obj).is_none() || files.user.contains_key(obj) {
                    continue;
                }
                for path in files.patches.get(obj).cloned().unwrap_or_default() {
                    match std::fs::remove_file(&path) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => return Err(io_err(&path)(e)),
                    }
                    files.set(&path, None, affected);
                    tracing::info!(object = %obj, file = %path.display(), "removed the status of a deleted object");
                }
            }
            Ok(())
        });
        if let Err(e) = result {
            tracing::warn!(error = %e, "cannot remove the status of a deleted object");
        }
    }

    /// Objects defined twice, or defined by you and by the suite.
    fn problems(&self, files: &Files, obj: &ObjectRef) -> BTreeSet<String> {
        let mut problems = BTreeSet::new();
        let locations = files.user_locations(obj);
        let Some((first, others)) = locations.split_first() else {
            return problems;
        };
        for second in others {
            let dup = manifest::ManifestError::Duplicate {
                object: obj.clone(),
                first: (*first).clone(),
                second: (*second).clone(),
            };
            problems.insert(dup.to_string());
        }
        let canonical = self.status_path(StatusArea::Objects, obj).ok();
        if let Some((path, _)) = files.status_value(files.owned.get(obj), canonical.as_deref()) {
            problems.insert(format!(
                "{obj} is defined both in {first} and by metalnet in {}; using {first}",
                path.display()
            ));
        }
        problems
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

    /// Runs one write with the status lock and `files` held, then delivers what it changed
    /// (also when it failed part way: what it found on disk is delivered).
    fn write_op<F>(&self, f: F) -> Result<(), StateError>
    where
        F: FnOnce(&mut Files, &mut BTreeSet<ObjectRef>) -> Result<(), StateError>,
    {
        let _lock = StatusLock::acquire(&self.status)?;
        let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        let mut affected = BTreeSet::new();
        let result = f(&mut files, &mut affected);
        self.deliver(&mut files, affected);
        result
    }

    /// Brings the suite's own files for `obj` in line with the disk (another process may
    /// have written them) and returns the one in effect.
    fn sync_owned(
        &self,
        files: &mut Files,
        obj: &ObjectRef,
        affected: &mut BTreeSet<ObjectRef>,
    ) -> Option<PathBuf> {
        let canonical = self.status_path(StatusArea::Objects, obj).ok();
        let mut paths: BTreeSet<PathBuf> = files.owned.get(obj).cloned().unwrap_or_default();
        paths.extend(canonical.clone());
        for path in &paths {
            self.sync_path(files, path, affected);
        }
        files
            .status_value(files.owned.get(obj), canonical.as_deref())
            .map(|(p, _)| p.clone())
    }

    /// Writes `value` to the status file `path` (which the caller synced) unless it holds
    /// that already, and records it in `files` as read back.
    fn write_status(
        &self,
        files: &mut Files,
        path: &Path,
        obj: &ObjectRef,
        value: Value,
        affected: &mut BTreeSet<ObjectRef>,
    ) -> Result<(), StateError> {
        if let Some(Cached {
            content: Content::Patch(_, current) | Content::Owned(_, current),
            ..
        }) = files.cache.get(path)
            && *current == value
        {
            return Ok(());
        }
        // A Pod's status (Multus's network-status) describes a sandbox, and no sandbox
        // survives a crash of the machine: the runtime recreates it and the plugin's ADD
        // writes the status again. Its fsyncs would only slow every pod's ADD (1.5 ms).
        let durability = if obj.kind == Kind::Pod {
            Durability::Volatile
        } else {
            Durability::Synced
        };
        let stamp = write_atomic(path, &value, durability)?;
        let content = match self.status_area(path) {
            Some(StatusArea::Patches) => Content::Patch(obj.clone(), value),
            _ => Content::Owned(obj.clone(), value),
        };
        files.set(path, Some(Cached { stamp, content }), affected);
        Ok(())
    }

    fn patch(&self, obj: &ObjectRef, patch: &Value) -> Result<(), StateError> {
        self.write_op(|files, affected| {
            let mut owned = self.sync_owned(files, obj, affected);
            if owned.is_none() && !files.user.contains_key(obj) {
                // Not known here: maybe created since the last refresh.
                self.stats.write_scans.fetch_add(1, Ordering::Relaxed);
                let listing = self.list()?;
                self.merge_listing(files, listing, affected);
                owned = self.sync_owned(files, obj, affected);
            }
            if let Some(path) = owned {
                // The suite's own object: patch it in place.
                let Some(Content::Owned(_, current)) = files.cache.get(&path).map(|c| &c.content)
                else {
                    return Err(object_err(obj, format!("{} is unreadable", path.display())));
                };
                let mut value = current.clone();
                merge_patch(&mut value, patch);
                self.write_status(files, &path, obj, value, affected)
            } else if files.user.contains_key(obj) {
                let path = self.status_path(StatusArea::Patches, obj)?;
                self.sync_path(files, &path, affected);
                let mut value = match files.cache.get(&path).map(|c| &c.content) {
                    Some(Content::Patch(_, v)) => v.clone(),
                    _ => json!({}),
                };
                compose_patch(&mut value, patch);
                self.write_status(files, &path, obj, value, affected)
            } else {
                Err(object_err(obj, "not found"))
            }
        })
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
        self.write_op(|files, affected| {
            if let Some(loc) = files.user_locations(obj).first() {
                return Err(object_err(
                    obj,
                    format!("defined in {loc}, not owned by metalnet"),
                ));
            }
            self.sync_path(files, &path, affected);
            self.write_status(files, &path, obj, value, affected)
        })
    }

    fn delete(&self, obj: &ObjectRef) -> Result<(), StateError> {
        self.write_op(|files, affected| {
            self.sync_owned(files, obj, affected);
            if let Some(paths) = files.owned.get(obj).cloned() {
                for path in paths {
                    match std::fs::remove_file(&path) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => return Err(io_err(&path)(e)),
                    }
                    files.set(&path, None, affected);
                }
                return Ok(());
            }
            if let Some(loc) = files.user_locations(obj).first() {
                return Err(object_err(
                    obj,
                    format!("defined in {loc}, not owned by metalnet"),
                ));
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::atomic::{temp_file_writer, to_yaml};
    use super::status::ref_from_relative_path;
    use super::*;
    use crate::testing::{Manifest, node, service};

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
    fn dead_writers_temp_files_are_removed_live_ones_kept() {
        assert_eq!(temp_file_writer(".web.yaml.4242.7.tmp"), Some(4242));
        for other in [
            "web.yaml",
            ".web.yaml.tmp",
            ".web.yaml.x.7.tmp",
            "..4242.7.tmp",
        ] {
            assert_eq!(temp_file_writer(other), None, "{other}");
        }
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("patches/Service/default");
        std::fs::create_dir_all(&sub).unwrap();
        // pid_max is at most 2^22, so this pid cannot run.
        let dead = sub.join(".web.yaml.99999999.0.tmp");
        let live = sub.join(format!(".web.yaml.{}.0.tmp", std::process::id()));
        let user = sub.join("web.yaml");
        for f in [&dead, &live, &user] {
            std::fs::write(f, "x").unwrap();
        }
        remove_dead_writers_temp_files(dir.path());
        assert!(!dead.exists());
        assert!(live.exists() && user.exists());
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

    fn ingress_ip(snap: &super::super::Snapshot, svc: &ObjectRef) -> Option<String> {
        snap.services
            .get(&svc.key())?
            .status
            .as_ref()?
            .load_balancer
            .as_ref()?
            .ingress
            .as_ref()?
            .first()?
            .ip
            .clone()
    }

    /// Complexity guard: with 2,000 Services, 2,000 `apply` and 2,000 `patch_status` calls
    /// complete, each visible when it returns, none rescanning the directory, and the watcher
    /// refreshes they cause re-read none of the files written.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_touch_only_their_object() {
        const N: usize = 2_000;
        let dir = tempfile::tempdir().unwrap();
        let services = dir.path().join("services");
        std::fs::create_dir(&services).unwrap();
        for i in 0..N {
            let name = format!("svc-{i}");
            std::fs::write(services.join(format!("{name}.yaml")), service(&name).yaml()).unwrap();
        }
        let core = Core::new(Kind::ALL);
        let backend = DirBackend::start(dir.path().to_path_buf(), core.clone())
            .await
            .unwrap();
        assert_eq!(core.snapshot().services.len(), N);
        let stats = &backend.inner.stats;
        let parsed_before = stats.parsed.load(Ordering::Relaxed);
        let scans_before = stats.scans.load(Ordering::Relaxed);

        let writes = async {
            for i in 0..N {
                let name = format!("svc-{i}");
                let svc = ObjectRef::new(Kind::Service, Some("default"), &name);
                let ip = format!("203.0.113.{}", i % 250 + 1);
                let status = json!({"loadBalancer": {"ingress": [{"ip": ip}]}});
                backend.patch_status(&svc, status).await.unwrap();
                let l2 = ObjectRef::new(
                    Kind::ServiceL2Status,
                    Some("metallb-system"),
                    &format!("l2-{name}"),
                );
                let value = json!({"spec": {}, "status": {
                    "node": "node-1", "serviceName": name, "serviceNamespace": "default"}});
                backend.apply(&l2, value).await.unwrap();
                let snap = core.snapshot();
                assert_eq!(ingress_ip(&snap, &svc), Some(ip), "{svc}");
                assert!(snap.service_l2_statuses.contains_key(&l2.key()), "{l2}");
            }
        };
        tokio::time::timeout(Duration::from_secs(60), writes)
            .await
            .expect("4,000 writes on 2,000 Services took over 60 s");
        assert_eq!(
            stats.write_scans.load(Ordering::Relaxed),
            0,
            "a write rescanned the directory"
        );
        // Let the watcher catch up with the last writes, then check it re-read nothing.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let before = stats.scans.load(Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(300)).await;
            if stats.scans.load(Ordering::Relaxed) == before {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "endless rescans");
        }
        assert_eq!(
            stats.parsed.load(Ordering::Relaxed) - parsed_before,
            0,
            "a refresh re-read a file this backend wrote"
        );
        // The refreshes our writes cause look at the written files only (listing the whole
        // tree after each burst of writes made a run of N writes cost O(N²)); the first
        // writes create status directories, which are listed.
        let scans = stats.scans.load(Ordering::Relaxed) - scans_before;
        assert!(
            scans <= 5,
            "{scans} refreshes after our own writes listed the whole directory"
        );
        assert!(stats.path_refreshes.load(Ordering::Relaxed) > 0);
        let snap = core.snapshot();
        assert_eq!(snap.services.len(), N);
        assert_eq!(snap.service_l2_statuses.len(), N);
    }

    /// A write hands the core its one object; the refresh it causes hands it nothing more.
    #[tokio::test]
    async fn a_write_delivers_only_its_object() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["a", "b", "c"] {
            std::fs::write(
                dir.path().join(format!("{name}.yaml")),
                service(name).yaml(),
            )
            .unwrap();
        }
        let core = Core::new(Kind::ALL);
        let backend = DirBackend::start(dir.path().to_path_buf(), core.clone())
            .await
            .unwrap();
        let mut sub = core.subscribe();
        let first = tokio::time::timeout(Duration::from_secs(5), sub.next())
            .await
            .unwrap();
        assert_eq!(first.changed.len(), 3);
        let stats = &backend.inner.stats;
        let refreshes =
            || stats.scans.load(Ordering::Relaxed) + stats.path_refreshes.load(Ordering::Relaxed);
        let scans = refreshes();

        let b = ObjectRef::new(Kind::Service, Some("default"), "b");
        let status = json!({"loadBalancer": {"ingress": [{"ip": "192.0.2.7"}]}});
        backend.patch_status(&b, status).await.unwrap();
        let u = tokio::time::timeout(Duration::from_secs(5), sub.next())
            .await
            .unwrap();
        assert_eq!(u.changed, BTreeSet::from([b.clone()]));
        assert_eq!(ingress_ip(&u.snapshot, &b).as_deref(), Some("192.0.2.7"));

        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while refreshes() == scans {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no refresh after the write"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let quiet = tokio::time::timeout(Duration::from_millis(300), sub.next()).await;
        assert!(
            quiet.is_err(),
            "redelivered: {:?}",
            quiet.map(|u| u.changed)
        );
    }

    /// Events are listed from what the backend holds, as on disk, without reading files.
    #[tokio::test]
    async fn events_are_listed_from_memory_as_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yaml"), service("a").yaml()).unwrap();
        let core = Core::new(Kind::ALL);
        let backend = DirBackend::start(dir.path().to_path_buf(), core.clone())
            .await
            .unwrap();
        let a = ObjectRef::new(Kind::Service, Some("default"), "a");
        for (reason, times) in [("IPAllocated", 2), ("Other", 1)] {
            let event = EventRecord {
                type_: super::super::EventType::Normal,
                reason: reason.into(),
                message: "m".into(),
                reporter: "test".into(),
            };
            for _ in 0..times {
                backend.record_event(&a, &event).await.unwrap();
            }
        }
        // Another process's Event, seen through the watcher.
        let other = backend.inner.status_path(
            StatusArea::Objects,
            &ObjectRef::new(Kind::Event, Some("default"), "a.other"),
        );
        let other = other.unwrap();
        write_atomic(
            &other,
            &json!({"apiVersion": "v1", "kind": "Event",
                "metadata": {"name": "a.other", "namespace": "default"},
                "involvedObject": {"kind": "Service", "name": "a", "namespace": "default"},
                "reason": "FromElsewhere", "firstTimestamp": "2000-01-01T00:00:00Z"}),
            Durability::Synced,
        )
        .unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while backend.list_events("default").len() < 3 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the other Event never listed"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let parsed = backend.inner.stats.parsed.load(Ordering::Relaxed);
        let listed = backend.list_events("default");
        assert_eq!(backend.inner.stats.parsed.load(Ordering::Relaxed), parsed);
        assert_eq!(listed, list_namespace_events(dir.path(), "default"));
        assert_eq!(listed[0]["reason"], "FromElsewhere");
        assert!(backend.list_events("elsewhere").is_empty());
    }

    #[test]
    fn what_a_change_asks_of_the_refresh() {
        let root = Path::new("/d");
        let status = Path::new("/d/status");
        let cases = [
            ("/d/pools.yaml", Wants::Path),
            ("/d/services/web.yml", Wants::Path),
            ("/d/nodes.json", Wants::Path),
            // Directories, links and hidden entries (a ConfigMap's `..data`) list the tree.
            ("/d/services", Wants::Full),
            ("/d/..data", Wants::Full),
            ("/d/..2024_01_01/pools.yaml", Wants::Full),
            ("/d/.pools.yaml.swp", Wants::Full),
            ("/d", Wants::Full),
            ("/elsewhere/x.yaml", Wants::Full),
            ("/d/status/patches/Service/default/web.yaml", Wants::Path),
            (
                "/d/status/objects/Event/default/web.0123456789.yaml",
                Wants::Path,
            ),
            (
                "/d/status/patches/Service/default/.web.yaml.42.7.tmp",
                Wants::Nothing,
            ),
            ("/d/status/.lock", Wants::Nothing),
            ("/d/status/locks/controller.lock", Wants::Nothing),
            ("/d/status", Wants::Full),
            ("/d/status/patches", Wants::Full),
            ("/d/status/patches/Service/default", Wants::Full),
            ("/d/status/objects/Event", Wants::Full),
        ];
        for (path, want) in cases {
            assert_eq!(wants(root, status, Path::new(path)), want, "{path}");
        }
    }

    #[tokio::test]
    async fn idle_directory_is_not_rescanned_and_drop_stops_the_watcher() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("n.yaml"), node("n1").yaml()).unwrap();
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
            let before = backend.inner.stats.scans.load(Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(300)).await;
            if backend.inner.stats.scans.load(Ordering::Relaxed) == before {
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

    /// An unreadable entry (here a symbolic link loop) is logged once, not at every refresh,
    /// and again once it comes back after being fixed.
    #[tokio::test]
    async fn a_listing_problem_is_logged_once() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("b.yaml", dir.path().join("a.yaml")).unwrap();
        std::os::unix::fs::symlink("a.yaml", dir.path().join("b.yaml")).unwrap();
        let core = Core::new(Kind::ALL);
        let backend = DirBackend::start(dir.path().to_path_buf(), core.clone())
            .await
            .unwrap();
        let inner = backend.inner.clone();
        let warnings = || inner.stats.listing_warnings.load(Ordering::Relaxed);
        assert_eq!(warnings(), 2);
        for _ in 0..5 {
            inner.reload().unwrap();
        }
        assert_eq!(warnings(), 2);
        std::fs::remove_file(dir.path().join("b.yaml")).unwrap();
        inner.reload().unwrap();
        std::os::unix::fs::symlink("a.yaml", dir.path().join("b.yaml")).unwrap();
        inner.reload().unwrap();
        assert_eq!(warnings(), 4);
    }
}
