//! Cluster state: the objects a component needs, kept current, with change notification,
//! from one of two backends behind the same type:
//!
//! - [`Source::Dir`]: the embedded default, a directory of ordinary YAML manifests watched
//!   with inotify; what the suite writes goes under `DIR/status/` ([`dir`]).
//! - [`Source::Kube`]: a Kubernetes API server through kube-runtime watchers ([`kube`]).
//!
//! Both backends deliver raw objects (JSON values) to one [`Core`], which decodes them into
//! typed objects the same way for both, so no component logic knows which backend it runs on.
//!
//! The snapshot, the object vocabulary, errors and event records are pure (no I/O crate);
//! the live state and its backends are behind the `io` feature.

#[cfg(feature = "io")]
mod cluster;
#[cfg(feature = "io")]
pub mod dir;
mod error;
#[cfg(feature = "io")]
pub mod kube;
mod snapshot;

use std::collections::BTreeMap;

#[cfg(feature = "io")]
pub use cluster::{ClusterState, Core, Source, Subscription, Update};
#[cfg(feature = "io")]
pub use dir::StateLock;
pub use error::{ErrorClass, StateError};
pub use snapshot::{Delta, Objects, Snapshot};
// The object vocabulary lives with the model; named here too, where it is used most.
pub use crate::model::{Kind, ObjectKey, ObjectRef, names};

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
