//! The live cluster state: a [`Core`] holding the current [`Snapshot`] and its subscribers,
//! fed by one of the two backends, and the writes a daemon makes through [`ClusterState`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use super::{
    Delta, EVENTS_SHOWN, EventRecord, MetadataPatch, Snapshot, StateError, StateLock, dir, kube,
    render_events,
};
use crate::model::{Kind, ObjectRef};

/// What a subscriber receives: the latest snapshot and every object that changed since the
/// subscriber's previous update (several changes in quick succession are coalesced).
#[derive(Clone, Debug)]
pub struct Update {
    pub snapshot: Arc<Snapshot>,
    pub changed: BTreeSet<ObjectRef>,
}

/// Where the state comes from.
#[derive(Clone)]
pub enum Source {
    /// The embedded default: a directory of manifests.
    Dir(PathBuf),
    /// A Kubernetes API server.
    Kube(::kube::Client),
}

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Dir(p) => write!(f, "Dir({})", p.display()),
            Source::Kube(_) => f.write_str("Kube"),
        }
    }
}

/// The shared heart of both backends: holds the current snapshot and the subscribers, and
/// turns raw objects into typed ones.
pub struct Core {
    kinds: BTreeSet<Kind>,
    state: Mutex<CoreState>,
}

struct CoreState {
    snapshot: Arc<Snapshot>,
    /// Raw objects as last delivered, to tell real changes from repeats.
    raw: BTreeMap<ObjectRef, serde_json::Value>,
    subscribers: Vec<Arc<SubscriberSlot>>,
}

struct SubscriberSlot {
    pending: Mutex<BTreeSet<ObjectRef>>,
    notify: Notify,
}

impl Core {
    pub fn new(kinds: impl IntoIterator<Item = Kind>) -> Arc<Core> {
        Arc::new(Core {
            kinds: kinds.into_iter().collect(),
            state: Mutex::new(CoreState {
                snapshot: Arc::new(Snapshot::default()),
                raw: BTreeMap::new(),
                subscribers: Vec::new(),
            }),
        })
    }

    /// Kinds this core keeps; backends watch only these.
    pub fn kinds(&self) -> &BTreeSet<Kind> {
        &self.kinds
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.state.lock().unwrap().snapshot.clone()
    }

    /// The raw object as last delivered (for backends that merge writes onto it).
    pub fn raw(&self, obj: &ObjectRef) -> Option<serde_json::Value> {
        self.state.lock().unwrap().raw.get(obj).cloned()
    }

    /// Every object of a kind currently held, raw.
    pub fn raw_refs(&self, kind: Kind) -> Vec<ObjectRef> {
        let st = self.state.lock().unwrap();
        st.raw.keys().filter(|r| r.kind == kind).cloned().collect()
    }

    /// Applies a batch of changes as one new snapshot and wakes the subscribers.
    /// Objects of kinds this core does not keep are ignored; repeats of the same content
    /// are not reported as changes.
    pub fn apply(&self, deltas: impl IntoIterator<Item = Delta>) {
        let mut guard = self.state.lock().unwrap();
        let st = &mut *guard;
        let mut changed = BTreeSet::new();
        // `make_mut` copies the snapshot (and then each kind's map it touches) only while a
        // reader still holds it, so a change costs O(1 object), not O(all objects), when
        // nobody kept the previous snapshot.
        for delta in deltas {
            match delta {
                Delta::Apply(obj, value) => {
                    if !self.kinds.contains(&obj.kind) || st.raw.get(&obj) == Some(&value) {
                        continue;
                    }
                    Arc::make_mut(&mut st.snapshot).insert(&obj, &value);
                    st.raw.insert(obj.clone(), value);
                    changed.insert(obj);
                }
                Delta::Delete(obj) => {
                    if st.raw.remove(&obj).is_some() {
                        Arc::make_mut(&mut st.snapshot).remove(&obj);
                        changed.insert(obj);
                    }
                }
            }
        }
        if changed.is_empty() {
            return;
        }
        for sub in &st.subscribers {
            sub.pending.lock().unwrap().extend(changed.iter().cloned());
            sub.notify.notify_one();
        }
    }

    /// Replaces every object of `kinds` with `objects` (a full relist), reporting only the
    /// differences.
    pub fn replace_kinds(
        &self,
        kinds: &BTreeSet<Kind>,
        objects: Vec<(ObjectRef, serde_json::Value)>,
    ) {
        let present: BTreeSet<ObjectRef> = objects.iter().map(|(r, _)| r.clone()).collect();
        let gone: Vec<Delta> = {
            let st = self.state.lock().unwrap();
            st.raw
                .keys()
                .filter(|r| kinds.contains(&r.kind) && !present.contains(*r))
                .map(|r| Delta::Delete(r.clone()))
                .collect()
        };
        self.apply(
            gone.into_iter()
                .chain(objects.into_iter().map(|(r, v)| Delta::Apply(r, v))),
        );
    }

    pub fn subscribe(self: &Arc<Self>) -> Subscription {
        let slot = Arc::new(SubscriberSlot {
            pending: Mutex::new(BTreeSet::new()),
            notify: Notify::new(),
        });
        let mut st = self.state.lock().unwrap();
        // A new subscriber first sees everything present as changed.
        slot.pending.lock().unwrap().extend(st.raw.keys().cloned());
        slot.notify.notify_one();
        st.subscribers.push(slot.clone());
        Subscription {
            slot,
            core: self.clone(),
        }
    }
}

/// Receives [`Update`]s from a [`ClusterState`].
pub struct Subscription {
    slot: Arc<SubscriberSlot>,
    core: Arc<Core>,
}

impl Subscription {
    /// Waits for the next change and returns it with the snapshot current at that moment.
    pub async fn next(&mut self) -> Update {
        loop {
            self.slot.notify.notified().await;
            let changed = std::mem::take(&mut *self.slot.pending.lock().unwrap());
            if !changed.is_empty() {
                return Update {
                    snapshot: self.core.snapshot(),
                    changed,
                };
            }
        }
    }
}

enum Backend {
    Dir(dir::DirBackend),
    Kube(kube::KubeBackend),
}

/// The cluster state a component runs on: current objects, change notification, and the
/// writes the suite makes (status, annotations, objects it owns, events).
pub struct ClusterState {
    core: Arc<Core>,
    backend: Backend,
}

impl ClusterState {
    /// Starts watching `kinds` from `source` and returns once the initial state is loaded.
    pub async fn start(
        source: Source,
        kinds: impl IntoIterator<Item = Kind>,
    ) -> Result<Self, StateError> {
        let core = Core::new(kinds);
        let backend = match source {
            Source::Dir(path) => Backend::Dir(dir::DirBackend::start(path, core.clone()).await?),
            Source::Kube(client) => {
                Backend::Kube(kube::KubeBackend::start(client, core.clone()).await?)
            }
        };
        Ok(ClusterState { core, backend })
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.core.snapshot()
    }

    /// Takes the named lock if it is free, so that two daemons of one role (`controller`,
    /// `speaker-<node>`) never run on one state directory at once: held until the
    /// [`StateLock`] is dropped or the process dies. On a state directory it is a `flock` on
    /// `DIR/status/locks/NAME.lock`, which records the holder's pid and host; held by another
    /// process, the error ([`StateError::Locked`]) names the lock file and the holder. On
    /// Kubernetes there is no lock yet: `Ok(None)`.
    pub fn lock(&self, name: &str) -> Result<Option<StateLock>, StateError> {
        match &self.backend {
            Backend::Dir(b) => b.lock(name).map(Some),
            Backend::Kube(_) => Ok(None),
        }
    }

    /// Like [`ClusterState::lock`], but waits (standing by, with one WARN naming the holder)
    /// until the holder releases the lock.
    pub async fn lock_wait(&self, name: &str) -> Result<Option<StateLock>, StateError> {
        match &self.backend {
            Backend::Dir(b) => b.lock_wait(name).await.map(Some),
            Backend::Kube(_) => Ok(None),
        }
    }

    /// Waits until what the suite wrote onto objects found deleted is removed, as the API
    /// server removes an object's status with it. Only a state directory waits (a second at
    /// most, only when such objects were found): its removal waits until an object has stayed
    /// gone for a second, which a process that reads once and exits would not see.
    pub async fn remove_deleted_objects_status(&self) -> Result<(), StateError> {
        match &self.backend {
            Backend::Dir(b) => b.remove_deleted_objects_status().await,
            Backend::Kube(_) => Ok(()),
        }
    }

    /// Whether the backend currently sees its source: `false` while the state directory is
    /// missing or replaced and not watched yet (the last state stays in force meanwhile), so a
    /// daemon never reports ready while blind. Always `true` on Kubernetes.
    pub fn attached(&self) -> tokio::sync::watch::Receiver<bool> {
        match &self.backend {
            Backend::Dir(b) => b.attached(),
            Backend::Kube(_) => {
                static ALWAYS: std::sync::OnceLock<tokio::sync::watch::Sender<bool>> =
                    std::sync::OnceLock::new();
                ALWAYS
                    .get_or_init(|| tokio::sync::watch::Sender::new(true))
                    .subscribe()
            }
        }
    }

    /// Subscribes to changes; the first update reports every object present.
    pub fn subscribe(&self) -> Subscription {
        self.core.subscribe()
    }

    /// Merge-patches the object's `status` (status subresource on Kubernetes).
    pub async fn patch_status(
        &self,
        obj: &ObjectRef,
        status: serde_json::Value,
    ) -> Result<(), StateError> {
        match &self.backend {
            Backend::Dir(b) => b.patch_status(obj, status).await,
            Backend::Kube(b) => b.patch_status(obj, status).await,
        }
    }

    /// Merge-patches the object's labels and annotations.
    pub async fn patch_metadata(
        &self,
        obj: &ObjectRef,
        patch: &MetadataPatch,
    ) -> Result<(), StateError> {
        match &self.backend {
            Backend::Dir(b) => b.patch_metadata(obj, patch).await,
            Backend::Kube(b) => b.patch_metadata(obj, patch).await,
        }
    }

    /// Creates or replaces an object the suite owns (e.g. a ServiceL2Status), status included.
    pub async fn apply(&self, obj: &ObjectRef, value: serde_json::Value) -> Result<(), StateError> {
        match &self.backend {
            Backend::Dir(b) => b.apply(obj, value).await,
            Backend::Kube(b) => b.apply(obj, value).await,
        }
    }

    /// Deletes an object the suite owns; deleting one that is gone is not an error.
    pub async fn delete(&self, obj: &ObjectRef) -> Result<(), StateError> {
        match &self.backend {
            Backend::Dir(b) => b.delete(obj).await,
            Backend::Kube(b) => b.delete(obj).await,
        }
    }

    /// Every Event in `namespace` (to read back what was recorded, e.g. for `explain`).
    pub async fn list_events(&self, namespace: &str) -> Result<Vec<serde_json::Value>, StateError> {
        match &self.backend {
            Backend::Dir(b) => Ok(b.list_events(namespace)),
            Backend::Kube(b) => b.list_events(namespace).await,
        }
    }

    /// Events about `regarding`, oldest first (by `lastTimestamp`).
    pub async fn events_about(
        &self,
        regarding: &ObjectRef,
    ) -> Result<Vec<serde_json::Value>, StateError> {
        let namespace = regarding.namespace.as_deref().unwrap_or("default");
        let mut events: Vec<_> = self
            .list_events(namespace)
            .await?
            .into_iter()
            .filter(|e| dir::event_is_about(e, regarding))
            .collect();
        events.sort_by(|a, b| {
            let t =
                |v: &serde_json::Value| v["lastTimestamp"].as_str().unwrap_or_default().to_string();
            t(a).cmp(&t(b))
        });
        Ok(events)
    }

    /// The latest [`EVENTS_SHOWN`] Events about `regarding`, rendered for `explain` commands
    /// (latest last, one line each); empty when there are none.
    pub async fn render_events_about(&self, regarding: &ObjectRef) -> Result<String, StateError> {
        Ok(render_events(
            &self.events_about(regarding).await?,
            EVENTS_SHOWN,
        ))
    }

    /// Records an Event about `regarding`; repeats of the same reason and message are
    /// counted on one Event, as Kubernetes' event recorder does.
    pub async fn record_event(
        &self,
        regarding: &ObjectRef,
        event: &EventRecord,
    ) -> Result<(), StateError> {
        match &self.backend {
            Backend::Dir(b) => b.record_event(regarding, event).await,
            Backend::Kube(b) => b.record_event(regarding, event).await,
        }
    }
}
