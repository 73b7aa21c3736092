//! The Kubernetes API backend: one kube-runtime watcher per kind feeding the shared [`Core`],
//! and the suite's writes (status, metadata, owned objects, Events) as API calls.
//!
//! Each watcher's initial list (and every relist, e.g. after `410 Gone`) is delivered with
//! [`Core::replace_kinds`], so a relist reports only what really changed.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::{Core, Delta, EventRecord, Kind, MetadataPatch, ObjectRef, StateError};

/// The field manager named in server-side apply requests.
pub const FIELD_MANAGER: &str = "metalnet";

/// How long a recorded Event is remembered for counting repeats (kube's recorder uses 6 min).
const EVENT_CACHE_TTL: Duration = Duration::from_secs(6 * 60);

/// A client for the API server named by `kubeconfig`, else the in-cluster service account
/// (when `KUBERNETES_SERVICE_HOST` is set), else `$KUBECONFIG` / `~/.kube/config`.
pub async fn client(kubeconfig: Option<&Path>) -> Result<::kube::Client, StateError> {
    let config = match kubeconfig {
        Some(path) => {
            let what = format!("kubeconfig {}", path.display());
            let fail = |message: String| StateError::KubeApi {
                what: what.clone(),
                message,
            };
            let file = Kubeconfig::read_from(path).map_err(|e| fail(e.to_string()))?;
            ::kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .map_err(|e| fail(e.to_string()))?
        }
        None if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() => {
            ::kube::Config::incluster().map_err(|e| StateError::KubeApi {
                what: "in-cluster service account".into(),
                message: e.to_string(),
            })?
        }
        None => ::kube::Config::from_kubeconfig(&KubeConfigOptions::default())
            .await
            .map_err(|e| StateError::KubeApi {
                what: "default kubeconfig ($KUBECONFIG or ~/.kube/config)".into(),
                message: e.to_string(),
            })?,
    };
    ::kube::Client::try_from(config).map_err(|e| StateError::KubeApi {
        what: "building the client".into(),
        message: e.to_string(),
    })
}

/// The API resource of a kind, as kube's dynamic API wants it.
pub fn api_resource(kind: Kind) -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(kind.group(), kind.version(), kind.name()),
        kind.plural(),
    )
}

/// `group/version/plural` of a kind, as in error messages about a whole resource.
fn resource_name(kind: Kind) -> String {
    match kind.group() {
        "" => format!("{}/{}", kind.version(), kind.plural()),
        g => format!("{g}/{}/{}", kind.version(), kind.plural()),
    }
}

/// The object as the rest of the suite sees it: a JSON value with `apiVersion` and `kind`
/// (list responses of built-in kinds leave them out of each item).
fn to_raw(kind: Kind, obj: DynamicObject) -> Option<(ObjectRef, Value)> {
    let Some(name) = obj.metadata.name.clone() else {
        tracing::warn!(kind = %kind, "object without metadata.name ignored");
        return None;
    };
    let obj_ref = ObjectRef::new(kind, obj.metadata.namespace.as_deref(), &name);
    let mut value = match serde_json::to_value(&obj) {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(object = %obj_ref, error = %e, "object could not be re-encoded");
            return None;
        }
    };
    if let Some(map) = value.as_object_mut() {
        map.insert("apiVersion".into(), Value::String(kind.api_version()));
        map.insert("kind".into(), Value::String(kind.name().into()));
    }
    Some((obj_ref, value))
}

/// What a watcher task reports to [`KubeBackend::start`] before its first complete list.
type Ready = Result<(), StateError>;

/// Follows one kind: delivers lists and changes to `core` until the task is aborted.
async fn follow_kind(
    client: ::kube::Client,
    kind: Kind,
    core: Arc<Core>,
    ready: mpsc::UnboundedSender<(Kind, Ready)>,
) {
    let api: Api<DynamicObject> = Api::all_with(client, &api_resource(kind));
    let resource = resource_name(kind);
    let kinds = BTreeSet::from([kind]);
    let mut stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut listing: Vec<(ObjectRef, Value)> = Vec::new();
    let mut ready = Some(ready);
    while let Some(event) = stream.next().await {
        match event {
            Ok(watcher::Event::Init) => listing.clear(),
            Ok(watcher::Event::InitApply(obj)) => listing.extend(to_raw(kind, obj)),
            Ok(watcher::Event::InitDone) => {
                let objects = std::mem::take(&mut listing);
                tracing::debug!(resource = %resource, objects = objects.len(), "listed");
                core.replace_kinds(&kinds, objects);
                if let Some(tx) = ready.take() {
                    let _ = tx.send((kind, Ok(())));
                }
            }
            Ok(watcher::Event::Apply(obj)) => {
                if let Some((r, v)) = to_raw(kind, obj) {
                    core.apply([Delta::Apply(r, v)]);
                }
            }
            Ok(watcher::Event::Delete(obj)) => {
                if let Some((r, _)) = to_raw(kind, obj) {
                    core.apply([Delta::Delete(r)]);
                }
            }
            Err(e) => {
                // 403/404 before the first list means the resource is not served to us (CRD
                // not installed, RBAC missing): retrying will not help, so fail the start.
                if let Some(tx) = &ready
                    && let watcher::Error::InitialListFailed(::kube::Error::Api(status)) = &e
                    && (status.code == 403 || status.code == 404)
                {
                    let hint = if status.code == 404 {
                        "resource not served (CRD not installed?)"
                    } else {
                        "forbidden (RBAC?)"
                    };
                    let _ = tx.send((
                        kind,
                        Err(StateError::KubeApi {
                            what: resource.clone(),
                            message: format!("{hint}: {}", status.message),
                        }),
                    ));
                    return;
                }
                if let watcher::Error::WatchError(status) = &e
                    && status.code == 410
                {
                    // Routine: the server's history moved past us; the watcher relists.
                    tracing::debug!(resource = %resource, "resource version expired; relisting");
                } else {
                    tracing::warn!(resource = %resource, error = %e, "watch failed; retrying with backoff");
                }
            }
        }
    }
}

/// The Kubernetes API backend.
pub struct KubeBackend {
    core: Arc<Core>,
    client: ::kube::Client,
    /// One watcher per kind; dropping the backend aborts them.
    _watchers: JoinSet<()>,
    events: Mutex<EventCache>,
}

impl KubeBackend {
    /// Starts a watcher for every kind the core keeps (Events are written, never read) and
    /// returns once each has delivered its first complete list.
    pub async fn start(client: ::kube::Client, core: Arc<Core>) -> Result<Self, StateError> {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut watchers = JoinSet::new();
        let mut waiting = BTreeSet::new();
        for &kind in core.kinds() {
            if kind == Kind::Event {
                continue;
            }
            waiting.insert(kind);
            watchers.spawn(follow_kind(client.clone(), kind, core.clone(), tx.clone()));
        }
        drop(tx);
        while !waiting.is_empty() {
            match rx.recv().await {
                Some((kind, Ok(()))) => {
                    waiting.remove(&kind);
                }
                Some((_, Err(e))) => return Err(e),
                None => {
                    return Err(StateError::KubeApi {
                        what: "watchers".into(),
                        message: "stopped before the initial list".into(),
                    });
                }
            }
        }
        Ok(KubeBackend {
            core,
            client,
            _watchers: watchers,
            events: Mutex::new(EventCache::default()),
        })
    }

    fn api(&self, obj: &ObjectRef) -> Api<DynamicObject> {
        let ar = api_resource(obj.kind);
        match &obj.namespace {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, &ar),
            None => Api::all_with(self.client.clone(), &ar),
        }
    }

    pub async fn patch_status(&self, obj: &ObjectRef, status: Value) -> Result<(), StateError> {
        let patch = json!({ "status": status });
        self.api(obj)
            .patch_status(&obj.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| object_error(obj, "patching status", e))?;
        Ok(())
    }

    pub async fn patch_metadata(
        &self,
        obj: &ObjectRef,
        patch: &MetadataPatch,
    ) -> Result<(), StateError> {
        let patch = patch.to_merge_patch();
        let api = self.api(obj);
        let params = PatchParams::default();
        // A Pod's labels and annotations can be written through its status subresource (the
        // pod status strategy keeps only the spec and owner references): per-node daemons
        // writing network-status then need RBAC on `pods/status` alone, not on `pods`.
        let written = if obj.kind == Kind::Pod {
            api.patch_status(&obj.name, &params, &Patch::Merge(&patch))
                .await
        } else {
            api.patch(&obj.name, &params, &Patch::Merge(&patch)).await
        };
        written.map_err(|e| object_error(obj, "patching metadata", e))?;
        Ok(())
    }

    /// Server-side applies the whole object, then its status (a separate subresource).
    pub async fn apply(&self, obj: &ObjectRef, value: Value) -> Result<(), StateError> {
        let Value::Object(mut body) = value else {
            return Err(StateError::Object {
                object: obj.clone(),
                message: "apply: the object is not a JSON object".into(),
                status: None,
            });
        };
        let status = body.remove("status");
        body.insert("apiVersion".into(), Value::String(obj.kind.api_version()));
        body.insert("kind".into(), Value::String(obj.kind.name().into()));
        let meta = body
            .entry("metadata")
            .or_insert_with(|| Value::Object(Default::default()));
        let Some(meta) = meta.as_object_mut() else {
            return Err(StateError::Object {
                object: obj.clone(),
                message: "apply: metadata is not a map".into(),
                status: None,
            });
        };
        meta.insert("name".into(), Value::String(obj.name.clone()));
        match &obj.namespace {
            Some(ns) => meta.insert("namespace".into(), Value::String(ns.clone())),
            None => meta.remove("namespace"),
        };
        // Server-side apply owns what we send; the resource version would only make a
        // conflicting write fail instead of being applied.
        meta.remove("resourceVersion");
        meta.remove("managedFields");
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let api = self.api(obj);
        api.patch(&obj.name, &params, &Patch::Apply(Value::Object(body)))
            .await
            .map_err(|e| object_error(obj, "applying", e))?;
        if let Some(status) = status {
            let mut meta = serde_json::Map::new();
            meta.insert("name".into(), Value::String(obj.name.clone()));
            if let Some(ns) = &obj.namespace {
                meta.insert("namespace".into(), Value::String(ns.clone()));
            }
            let status_body = json!({
                "apiVersion": obj.kind.api_version(),
                "kind": obj.kind.name(),
                "metadata": meta,
                "status": status,
            });
            api.patch_status(&obj.name, &params, &Patch::Apply(status_body))
                .await
                .map_err(|e| object_error(obj, "applying status", e))?;
        }
        Ok(())
    }

    pub async fn delete(&self, obj: &ObjectRef) -> Result<(), StateError> {
        match self
            .api(obj)
            .delete(&obj.name, &DeleteParams::default())
            .await
        {
            Ok(_) => Ok(()),
            Err(::kube::Error::Api(status)) if status.code == 404 => Ok(()),
            Err(e) => Err(object_error(obj, "deleting", e)),
        }
    }

    /// Every core/v1 Event in `namespace`, as JSON (listed, not watched).
    pub async fn list_events(&self, namespace: &str) -> Result<Vec<Value>, StateError> {
        let events: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), namespace, &api_resource(Kind::Event));
        let list = events
            .list(&Default::default())
            .await
            .map_err(|e| StateError::KubeApi {
                what: format!("listing events in namespace {namespace}"),
                message: e.to_string(),
            })?;
        Ok(list
            .items
            .into_iter()
            .filter_map(|e| serde_json::to_value(e).ok())
            .collect())
    }

    /// Records a core/v1 Event; a repeat of the same type, reason and message about the same
    /// object within a few minutes increments `count` on the Event already written.
    pub async fn record_event(
        &self,
        regarding: &ObjectRef,
        event: &EventRecord,
    ) -> Result<(), StateError> {
        let key = EventKey {
            regarding: regarding.clone(),
            type_: event.type_.as_str(),
            reason: event.reason.clone(),
            message: event.message.clone(),
            reporter: event.reporter.clone(),
        };
        let now = k8s_openapi::jiff::Timestamp::now();
        let now_s = now
            .round(k8s_openapi::jiff::Unit::Second)
            .unwrap_or(now)
            .to_string();
        // Cluster-scoped objects' events go to "default", as Kubernetes' recorders do.
        let namespace = regarding.namespace.clone().unwrap_or("default".into());
        let events: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), &namespace, &api_resource(Kind::Event));
        let seen = self.events.lock().unwrap().get(&key);
        if let Some((name, count)) = seen {
            let patch = json!({ "count": count + 1, "lastTimestamp": now_s });
            match events
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    self.events.lock().unwrap().put(key, name, count + 1);
                    return Ok(());
                }
                // Gone (expired or deleted): write a new one below.
                Err(::kube::Error::Api(status)) if status.code == 404 => {}
                Err(e) => return Err(object_error(regarding, "recording an event", e)),
            }
        }
        let name = format!(
            "{}.{:x}",
            regarding.name,
            now.as_nanosecond().unsigned_abs()
        );
        let uid = self
            .core
            .raw(regarding)
            .and_then(|v| v.pointer("/metadata/uid").cloned());
        let mut involved = json!({
            "apiVersion": regarding.kind.api_version(),
            "kind": regarding.kind.name(),
            "name": regarding.name,
        });
        if let Some(ns) = &regarding.namespace {
            involved["namespace"] = Value::String(ns.clone());
        }
        if let Some(uid) = uid {
            involved["uid"] = uid;
        }
        let body = json!({
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": { "name": name, "namespace": namespace },
            "involvedObject": involved,
            "type": event.type_.as_str(),
            "reason": event.reason,
            "message": event.message,
            "count": 1,
            "firstTimestamp": now_s,
            "lastTimestamp": now_s,
            "source": { "component": event.reporter },
            "reportingComponent": event.reporter,
            "reportingInstance": event.reporter,
        });
        let body: DynamicObject = serde_json::from_value(body).map_err(|e| StateError::Object {
            object: regarding.clone(),
            message: format!("encoding an event: {e}"),
            status: None,
        })?;
        events
            .create(&PostParams::default(), &body)
            .await
            .map_err(|e| object_error(regarding, "recording an event", e))?;
        self.events.lock().unwrap().put(key, name, 1);
        Ok(())
    }
}

fn object_error(obj: &ObjectRef, doing: &str, e: ::kube::Error) -> StateError {
    let (message, status) = match &e {
        ::kube::Error::Api(status) => (
            format!(
                "{doing}: {} ({} {})",
                status.message, status.code, status.reason
            ),
            Some(status.code),
        ),
        // No answer from the API server (connection, TLS, timeout): a passing failure.
        other => (format!("{doing}: {other}"), Some(503)),
    };
    StateError::Object {
        object: obj.clone(),
        message,
        status,
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct EventKey {
    regarding: ObjectRef,
    type_: &'static str,
    reason: String,
    message: String,
    reporter: String,
}

/// Events recently written: name and count, to count repeats on one Event.
#[derive(Default)]
struct EventCache {
    entries: HashMap<EventKey, (String, i32, Instant)>,
}

impl EventCache {
    fn get(&mut self, key: &EventKey) -> Option<(String, i32)> {
        self.entries
            .retain(|_, (_, _, at)| at.elapsed() < EVENT_CACHE_TTL);
        self.entries
            .get(key)
            .map(|(name, count, _)| (name.clone(), *count))
    }

    fn put(&mut self, key: EventKey, name: String, count: i32) {
        self.entries.insert(key, (name, count, Instant::now()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn client_names_the_kubeconfig_that_failed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing-kubeconfig");
        let Err(e) = client(Some(&path)).await else {
            panic!("a client from a missing kubeconfig")
        };
        let e = e.to_string();
        assert!(e.contains(&path.display().to_string()), "{e}");
    }

    #[test]
    fn api_resources_match_kinds() {
        let ar = api_resource(Kind::BGPPeer);
        assert_eq!(ar.api_version, "metallb.io/v1beta2");
        assert_eq!(ar.plural, "bgppeers");
        assert_eq!(resource_name(Kind::Node), "v1/nodes");
        assert_eq!(
            resource_name(Kind::EndpointSlice),
            "discovery.k8s.io/v1/endpointslices"
        );
    }
}
