//! Cluster state: the objects a component needs, kept current, with change notification,
//! from one of two backends behind the same type:
//!
//! - [`Source::Dir`]: the embedded default, a directory of ordinary YAML manifests watched
//!   with inotify; what the suite writes goes under `DIR/status/` ([`dir`]).
//! - [`Source::Kube`]: a Kubernetes API server through kube-runtime watchers ([`kube`]).
//!
//! Both backends deliver raw objects (JSON values) to one [`Core`], which decodes them into
//! typed objects the same way for both, so no component logic knows which backend it runs on.

pub mod dir;
pub mod kube;
pub mod names;

pub use dir::StateLock;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::de::DeserializeOwned;
use tokio::sync::Notify;

use crate::model::core::{EndpointSlice, Namespace, Node, Pod, Secret, Service};
use crate::model::{
    BGPAdvertisement, BGPPeer, Community, IPAddressPool, L2Advertisement,
    NetworkAttachmentDefinition, ServiceBGPStatus, ServiceL2Status,
};

/// Every kind of object the suite reads or writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Service,
    EndpointSlice,
    Node,
    Pod,
    Secret,
    Namespace,
    IPAddressPool,
    L2Advertisement,
    BGPAdvertisement,
    Community,
    BGPPeer,
    NetworkAttachmentDefinition,
    ServiceL2Status,
    ServiceBGPStatus,
    Event,
}

impl Kind {
    pub const ALL: [Kind; 15] = [
        Kind::Service,
        Kind::EndpointSlice,
        Kind::Node,
        Kind::Pod,
        Kind::Secret,
        Kind::Namespace,
        Kind::IPAddressPool,
        Kind::L2Advertisement,
        Kind::BGPAdvertisement,
        Kind::Community,
        Kind::BGPPeer,
        Kind::NetworkAttachmentDefinition,
        Kind::ServiceL2Status,
        Kind::ServiceBGPStatus,
        Kind::Event,
    ];

    /// API group ("" for core).
    pub fn group(self) -> &'static str {
        match self {
            Kind::Service
            | Kind::Node
            | Kind::Pod
            | Kind::Secret
            | Kind::Namespace
            | Kind::Event => "",
            Kind::EndpointSlice => "discovery.k8s.io",
            Kind::NetworkAttachmentDefinition => "k8s.cni.cncf.io",
            _ => "metallb.io",
        }
    }

    pub fn version(self) -> &'static str {
        match self {
            Kind::Service
            | Kind::Node
            | Kind::Pod
            | Kind::Secret
            | Kind::Namespace
            | Kind::Event => "v1",
            Kind::EndpointSlice | Kind::NetworkAttachmentDefinition => "v1",
            Kind::BGPPeer => "v1beta2",
            _ => "v1beta1",
        }
    }

    /// `apiVersion` as written in manifests.
    pub fn api_version(self) -> String {
        match self.group() {
            "" => self.version().to_string(),
            g => format!("{g}/{}", self.version()),
        }
    }

    /// `kind` as written in manifests.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Node => "Node",
            Kind::Pod => "Pod",
            Kind::Secret => "Secret",
            Kind::Namespace => "Namespace",
            Kind::IPAddressPool => "IPAddressPool",
            Kind::L2Advertisement => "L2Advertisement",
            Kind::BGPAdvertisement => "BGPAdvertisement",
            Kind::Community => "Community",
            Kind::BGPPeer => "BGPPeer",
            Kind::NetworkAttachmentDefinition => "NetworkAttachmentDefinition",
            Kind::ServiceL2Status => "ServiceL2Status",
            Kind::ServiceBGPStatus => "ServiceBGPStatus",
            Kind::Event => "Event",
        }
    }

    /// The resource's plural, as in API paths.
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Service => "services",
            Kind::EndpointSlice => "endpointslices",
            Kind::Node => "nodes",
            Kind::Pod => "pods",
            Kind::Secret => "secrets",
            Kind::Namespace => "namespaces",
            Kind::IPAddressPool => "ipaddresspools",
            Kind::L2Advertisement => "l2advertisements",
            Kind::BGPAdvertisement => "bgpadvertisements",
            Kind::Community => "communities",
            Kind::BGPPeer => "bgppeers",
            Kind::NetworkAttachmentDefinition => "network-attachment-definitions",
            Kind::ServiceL2Status => "servicel2statuses",
            Kind::ServiceBGPStatus => "servicebgpstatuses",
            Kind::Event => "events",
        }
    }

    pub fn namespaced(self) -> bool {
        !matches!(self, Kind::Node | Kind::Namespace)
    }

    /// The kind named by a manifest's `apiVersion` and `kind`; older metallb.io versions of a
    /// kind are accepted (their fields are a subset of the current ones).
    pub fn from_manifest(api_version: &str, kind: &str) -> Option<Kind> {
        let k = Kind::ALL.into_iter().find(|k| k.name() == kind)?;
        let group = api_version.rsplit_once('/').map(|(g, _)| g).unwrap_or("");
        (group == k.group()).then_some(k)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Names one object: `Kind/namespace/name` (cluster-scoped kinds have no namespace).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectRef {
    pub kind: Kind,
    pub namespace: Option<String>,
    pub name: String,
}

impl ObjectRef {
    pub fn new(kind: Kind, namespace: Option<&str>, name: &str) -> Self {
        ObjectRef {
            kind,
            namespace: if kind.namespaced() {
                Some(namespace.unwrap_or("default").to_string())
            } else {
                None
            },
            name: name.to_string(),
        }
    }

    /// The object a manifest names by `apiVersion`, `kind` and `metadata`; `None` for a kind
    /// the suite does not know or a manifest without a name.
    pub fn of_manifest(value: &serde_json::Value) -> Option<ObjectRef> {
        let kind = Kind::from_manifest(value["apiVersion"].as_str()?, value["kind"].as_str()?)?;
        let name = value["metadata"]["name"].as_str()?;
        Some(ObjectRef::new(
            kind,
            value["metadata"]["namespace"].as_str(),
            name,
        ))
    }

    pub fn key(&self) -> ObjectKey {
        ObjectKey {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }
}

impl fmt::Display for ObjectRef {
    // Names come from outside: escaped, so a newline in one cannot forge a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = names::escape(&self.name);
        match &self.namespace {
            Some(ns) => write!(f, "{}/{}/{name}", self.kind, names::escape(ns)),
            None => write!(f, "{}/{name}", self.kind),
        }
    }
}

/// Namespace and name of an object within one kind's map.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub namespace: Option<String>,
    pub name: String,
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = names::escape(&self.name);
        match &self.namespace {
            Some(ns) => write!(f, "{}/{name}", names::escape(ns)),
            None => f.write_str(&name),
        }
    }
}

/// One kind's objects. Each map is behind an `Arc` so a new snapshot copies only the kind
/// that changed.
pub type Objects<T> = Arc<BTreeMap<ObjectKey, Arc<T>>>;

/// The current objects, typed, at one moment.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub services: Objects<Service>,
    pub endpoint_slices: Objects<EndpointSlice>,
    pub nodes: Objects<Node>,
    pub pods: Objects<Pod>,
    pub secrets: Objects<Secret>,
    pub namespaces: Objects<Namespace>,
    pub ip_address_pools: Objects<IPAddressPool>,
    pub l2_advertisements: Objects<L2Advertisement>,
    pub bgp_advertisements: Objects<BGPAdvertisement>,
    pub communities: Objects<Community>,
    pub bgp_peers: Objects<BGPPeer>,
    pub network_attachment_definitions: Objects<NetworkAttachmentDefinition>,
    pub service_l2_statuses: Objects<ServiceL2Status>,
    pub service_bgp_statuses: Objects<ServiceBGPStatus>,
    /// Objects that could not be read: what is wrong with each, naming the field where
    /// serde can tell. They are left out of the typed maps; the rest keeps working.
    pub invalid: Arc<BTreeMap<ObjectRef, String>>,
}

impl Snapshot {
    /// A snapshot of these manifests, decoded as a backend would decode them (for tests and
    /// tools that work on objects in hand). Manifests naming no known object are skipped.
    pub fn from_manifests(manifests: impl IntoIterator<Item = serde_json::Value>) -> Arc<Snapshot> {
        let core = Core::new(Kind::ALL);
        core.apply(
            manifests
                .into_iter()
                .filter_map(|v| Some(Delta::Apply(ObjectRef::of_manifest(&v)?, v))),
        );
        core.snapshot()
    }
}

/// What a subscriber receives: the latest snapshot and every object that changed since the
/// subscriber's previous update (several changes in quick succession are coalesced).
#[derive(Clone, Debug)]
pub struct Update {
    pub snapshot: Arc<Snapshot>,
    pub changed: BTreeSet<ObjectRef>,
}

/// Errors from a cluster-state backend.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state directory {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Manifest { path: PathBuf, message: String },
    #[error("kubernetes API: {0}")]
    Kube(#[from] ::kube::Error),
    /// A Kubernetes failure about something other than one object: the client configuration
    /// (`what` names the source tried) or a whole resource (`metallb.io/v1beta1/ipaddresspools`).
    #[error("kubernetes API: {what}: {message}")]
    KubeApi { what: String, message: String },
    #[error("{object}: {message}")]
    Object { object: ObjectRef, message: String },
    #[error("watching the state directory: {0}")]
    Watch(#[from] notify::Error),
    /// A lock another process holds (see [`ClusterState::lock`]).
    #[error("{}: {holder}", path.display())]
    Locked { path: PathBuf, holder: String },
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

/// The event type of a Kubernetes Event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

/// An Event to record about an object (`IPAllocated`, `AllocationFailed`, ...).
#[derive(Clone, Debug)]
pub struct EventRecord {
    pub type_: EventType,
    pub reason: String,
    pub message: String,
    /// The component reporting it, e.g. `metalnet-controller`.
    pub reporter: String,
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

/// A change delivered by a backend.
#[derive(Clone, Debug)]
pub enum Delta {
    /// The object exists with this content (created or modified).
    Apply(ObjectRef, serde_json::Value),
    /// The object is gone.
    Delete(ObjectRef),
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

fn decode<T: DeserializeOwned>(value: &serde_json::Value) -> Result<T, String> {
    // serde_path_to_error would name the field; serde_json's message already does for most.
    T::deserialize(value).map_err(|e| e.to_string())
}

macro_rules! snapshot_kinds {
    ($( $kind:ident => $field:ident : $ty:ty ),* $(,)?) => {
        impl Snapshot {
            fn insert(&mut self, obj: &ObjectRef, value: &serde_json::Value) {
                let invalid = Arc::make_mut(&mut self.invalid);
                if let Err(e) = names::check_names(obj) {
                    self.remove(obj);
                    Arc::make_mut(&mut self.invalid)
                        .insert(obj.clone(), format!("{}: {}", e.field, e.message));
                    return;
                }
                match obj.kind {
                    $( Kind::$kind => match decode::<$ty>(&crate::model::normalize(obj.kind, value)) {
                        Ok(t) => {
                            Arc::make_mut(&mut self.$field).insert(obj.key(), Arc::new(t));
                            invalid.remove(obj);
                        }
                        Err(e) => {
                            Arc::make_mut(&mut self.$field).remove(&obj.key());
                            invalid.insert(obj.clone(), e);
                        }
                    }, )*
                    Kind::Event => {}
                }
            }

            fn remove(&mut self, obj: &ObjectRef) {
                Arc::make_mut(&mut self.invalid).remove(obj);
                match obj.kind {
                    $( Kind::$kind => { Arc::make_mut(&mut self.$field).remove(&obj.key()); } )*
                    Kind::Event => {}
                }
            }
        }
    };
}

snapshot_kinds! {
    Service => services: Service,
    EndpointSlice => endpoint_slices: EndpointSlice,
    Node => nodes: Node,
    Pod => pods: Pod,
    Secret => secrets: Secret,
    Namespace => namespaces: Namespace,
    IPAddressPool => ip_address_pools: IPAddressPool,
    L2Advertisement => l2_advertisements: L2Advertisement,
    BGPAdvertisement => bgp_advertisements: BGPAdvertisement,
    Community => communities: Community,
    BGPPeer => bgp_peers: BGPPeer,
    NetworkAttachmentDefinition => network_attachment_definitions: NetworkAttachmentDefinition,
    ServiceL2Status => service_l2_statuses: ServiceL2Status,
    ServiceBGPStatus => service_bgp_statuses: ServiceBGPStatus,
}

/// A merge patch of an object's labels and annotations: `Some` sets, `None` removes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MetadataPatch {
    pub annotations: BTreeMap<String, Option<String>>,
    pub labels: BTreeMap<String, Option<String>>,
}

impl MetadataPatch {
    /// The JSON merge patch (RFC 7386) this stands for.
    pub fn to_merge_patch(&self) -> serde_json::Value {
        let map = |m: &BTreeMap<String, Option<String>>| {
            serde_json::Value::Object(
                m.iter()
                    .map(|(k, v)| {
                        (
                            k.clone(),
                            v.clone()
                                .map_or(serde_json::Value::Null, serde_json::Value::String),
                        )
                    })
                    .collect(),
            )
        };
        let mut meta = serde_json::Map::new();
        if !self.annotations.is_empty() {
            meta.insert("annotations".into(), map(&self.annotations));
        }
        if !self.labels.is_empty() {
            meta.insert("labels".into(), map(&self.labels));
        }
        serde_json::json!({ "metadata": meta })
    }
}

/// Applies a JSON merge patch (RFC 7386) to `target`.
pub fn merge_patch(target: &mut serde_json::Value, patch: &serde_json::Value) {
    use serde_json::Value;
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = Value::Object(Default::default());
            }
            let t = target.as_object_mut().expect("made an object above");
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
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

/// How many of the latest Events the `explain` commands show.
pub const EVENTS_SHOWN: usize = 10;

/// Renders the last `shown` of `events` (core/v1 Event objects, oldest first) as an
/// `events (latest last):` block, one `TIME TYPE REASON: MESSAGE (xCOUNT)` line each.
pub fn render_events(events: &[serde_json::Value], shown: usize) -> String {
    use std::fmt::Write as _;
    let mut text = String::new();
    if events.is_empty() {
        return text;
    }
    let _ = writeln!(text, "events (latest last):");
    for e in events.iter().skip(events.len().saturating_sub(shown)) {
        let s = |k: &str| e[k].as_str().unwrap_or_default();
        let count = e["count"].as_u64().unwrap_or(1);
        let times = if count > 1 {
            format!(" (x{count})")
        } else {
            String::new()
        };
        let _ = writeln!(
            text,
            "  {} {} {}: {}{times}",
            s("lastTimestamp"),
            s("type"),
            s("reason"),
            s("message")
        );
    }
    text
}
