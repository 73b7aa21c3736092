//! Events in the state directory: one file per (object, reason, message), with a count.

use std::path::Path;

use serde_json::{Value, json};

use super::Inner;
use super::files::Content;
use super::status::StatusArea;
use crate::manifest;
use crate::state::{EventRecord, Kind, ObjectRef, StateError};

/// The reason of the Warning recorded on an object defined more than once.
pub const DUPLICATE_REASON: &str = "DuplicateObject";

impl Inner {
    /// Records the problems found with objects since the last call as Warning Events on
    /// them. Every process reading the directory finds the same problems: an Event already
    /// there is left as it is, so its count does not grow with the number of daemons.
    /// Not called with the status lock held (it takes it).
    pub(super) fn record_problem_events(&self) {
        let pending = std::mem::take(
            &mut *self
                .problem_events
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        for (obj, message) in pending {
            let event = EventRecord {
                type_: crate::state::EventType::Warning,
                reason: DUPLICATE_REASON.into(),
                message,
                reporter: "metalnet".into(),
            };
            if let Err(e) = self.record_event_with(&obj, &event, false) {
                tracing::debug!(object = %obj, error = %e, "cannot record a problem as an Event");
            }
        }
    }

    pub(super) fn record_event(
        &self,
        regarding: &ObjectRef,
        event: &EventRecord,
    ) -> Result<(), StateError> {
        self.record_event_with(regarding, event, true)
    }

    /// Records `event`; an Event of the same (object, reason, message) already there gets its
    /// count raised if `count_again`, else is left as it is.
    fn record_event_with(
        &self,
        regarding: &ObjectRef,
        event: &EventRecord,
        count_again: bool,
    ) -> Result<(), StateError> {
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
        self.write_op(|files, affected| {
            self.sync_path(files, &path, affected);
            let existing = match files.cache.get(&path).map(|c| &c.content) {
                Some(Content::Owned(_, v)) => Some(v.clone()),
                _ => None,
            };
            let value = match existing {
                Some(_) if !count_again => return Ok(()),
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
            self.write_status(files, &path, &event_ref, value, affected)
        })
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
    sort_events(&mut events);
    events
}

/// Oldest first: by `firstTimestamp`, then name.
pub(super) fn sort_events(events: &mut [Value]) {
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
}

/// Whether an Event's `involvedObject` is `regarding`.
pub fn event_is_about(event: &Value, regarding: &ObjectRef) -> bool {
    let inv = &event["involvedObject"];
    inv["kind"] == regarding.kind.name()
        && inv["name"] == regarding.name.as_str()
        && inv.get("namespace").and_then(Value::as_str) == regarding.namespace.as_deref()
}

/// FNV-1a, 64 bits: a hash that stays the same across builds and versions.
pub(super) fn fnv1a(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.bytes().chain([0xff]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

pub(super) fn now_rfc3339() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}
