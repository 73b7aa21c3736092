//! The stored objects: one global resource version, the change history watches replay, and
//! what the server remembers about requests.

use metalnet::state::Kind;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};

use super::{RequestRecord, Shared};

/// Kinds whose `.status` is a subresource: written only through `/status`.
pub(super) fn has_status_subresource(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::Service
            | Kind::Node
            | Kind::Pod
            | Kind::IPAddressPool
            | Kind::ServiceL2Status
            | Kind::ServiceBGPStatus
    )
}

/// Built-in kinds: their list items carry no `apiVersion`/`kind` (custom resources' do).
pub(super) fn is_builtin(kind: Kind) -> bool {
    matches!(kind.group(), "" | "discovery.k8s.io")
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Key {
    pub(super) kind: Kind,
    pub(super) namespace: Option<String>,
    pub(super) name: String,
}

pub(super) struct Change {
    pub(super) rv: u64,
    pub(super) key: Key,
    pub(super) type_: &'static str,
    pub(super) object: Value,
}

pub(super) struct Store {
    /// The global resource version: bumped by every write.
    pub(super) rv: u64,
    pub(super) objects: BTreeMap<Key, Value>,
    /// Every change since the last compaction, oldest first.
    pub(super) history: Vec<Change>,
    /// Watches from a resource version below this get 410 Gone.
    pub(super) compacted: u64,
    /// Bumped by compaction: open watches end, so their clients come back with old versions.
    pub(super) epoch: u64,
    pub(super) uids: u64,
    pub(super) requests: Vec<RequestRecord>,
    /// Kinds answered 404, as a resource whose CRD is not installed.
    pub(super) unserved: BTreeSet<Kind>,
}

pub(super) fn key_of(kind: Kind, namespace: Option<&str>, name: &str) -> Key {
    Key {
        kind,
        namespace: kind
            .namespaced()
            .then(|| namespace.unwrap_or("default").to_string()),
        name: name.to_string(),
    }
}

impl Store {
    /// Stores `object` under `key` as a create or update, filling in the server-set metadata;
    /// returns it as stored. An update that changes nothing is not recorded.
    pub(super) fn write(&mut self, shared: &Shared, key: &Key, mut object: Value) -> Value {
        let old = self.objects.get(key).cloned();
        if !object.is_object() {
            object = json!({});
        }
        object["apiVersion"] = Value::String(key.kind.api_version());
        object["kind"] = Value::String(key.kind.name().into());
        if !object["metadata"].is_object() {
            object["metadata"] = json!({});
        }
        let meta = &mut object["metadata"];
        meta["name"] = Value::String(key.name.clone());
        match &key.namespace {
            Some(ns) => meta["namespace"] = Value::String(ns.clone()),
            None => {
                if let Some(m) = meta.as_object_mut() {
                    m.remove("namespace");
                }
            }
        }
        match &old {
            Some(old) => {
                for field in ["uid", "creationTimestamp", "resourceVersion"] {
                    meta[field] = old["metadata"][field].clone();
                }
                if let Some(m) = meta.as_object_mut() {
                    m.retain(|_, v| !v.is_null());
                }
                let generation = old["metadata"]["generation"].as_i64().unwrap_or(1);
                let spec_changed = spec_of(old) != spec_of(&object);
                object["metadata"]["generation"] = json!(if spec_changed {
                    generation + 1
                } else {
                    generation
                });
                if *old == object {
                    return object;
                }
            }
            None => {
                self.uids += 1;
                let n = self.uids;
                let i = shared.instance;
                meta["uid"] = Value::String(format!(
                    "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
                    (i >> 32) as u32,
                    (i >> 16) as u16,
                    i as u16 & 0xfff,
                    (n >> 48) as u16 & 0xfff,
                    n & 0xffff_ffff_ffff
                ));
                meta["creationTimestamp"] = Value::String(now_seconds());
                meta["generation"] = json!(1);
            }
        }
        self.rv += 1;
        object["metadata"]["resourceVersion"] = Value::String(self.rv.to_string());
        let type_ = if old.is_some() { "MODIFIED" } else { "ADDED" };
        self.objects.insert(key.clone(), object.clone());
        self.record(shared, key, type_, object.clone());
        object
    }

    pub(super) fn remove(&mut self, shared: &Shared, key: &Key) -> Option<Value> {
        let mut object = self.objects.remove(key)?;
        self.rv += 1;
        object["metadata"]["resourceVersion"] = Value::String(self.rv.to_string());
        self.record(shared, key, "DELETED", object.clone());
        Some(object)
    }

    pub(super) fn record(
        &mut self,
        shared: &Shared,
        key: &Key,
        type_: &'static str,
        object: Value,
    ) {
        self.history.push(Change {
            rv: self.rv,
            key: key.clone(),
            type_,
            object,
        });
        shared.rv_tx.send_replace(self.rv);
    }
}

/// What `generation` counts changes of: everything but metadata and status.
pub(super) fn spec_of(object: &Value) -> Value {
    let mut v = object.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
    }
    v
}

pub(super) fn now_seconds() -> String {
    let now = k8s_openapi::jiff::Timestamp::now();
    now.round(k8s_openapi::jiff::Unit::Second)
        .unwrap_or(now)
        .to_string()
}
