//! `metalnet-controller explain NAMESPACE/NAME`: why a Service has its address, or none,
//! from the current state (the reconciler run in memory, nothing written) and the Events
//! recorded about it.

use metalnet::state::{ClusterState, Kind, ObjectRef, StateError};

use crate::allocator::ServiceKey;
use crate::reconcile::{Options, Reconciler};

/// Parses `NAMESPACE/NAME` (a bare `NAME` is in `default`).
pub fn parse_key(s: &str) -> Result<ServiceKey, String> {
    let (ns, name) = s.split_once('/').unwrap_or(("default", s));
    if ns.is_empty() || name.is_empty() || name.contains('/') {
        return Err(format!("{s:?}: expected NAMESPACE/NAME"));
    }
    Ok(ServiceKey::new(ns, name))
}

/// The explanation for `key`; `None` when there is no such Service.
pub async fn explain(
    state: &ClusterState,
    opts: &Options,
    key: &ServiceKey,
) -> Result<Option<String>, StateError> {
    let snapshot = state.snapshot();
    let mut r = Reconciler::new(opts.clone());
    // What the controller would do now; only the in-memory allocator changes.
    let _ = r.reconcile(&snapshot, None);
    let Some(mut text) = r.explain(&snapshot, key) else {
        return Ok(None);
    };
    let obj = ObjectRef::new(Kind::Service, Some(&key.namespace), &key.name);
    text.push_str(&state.render_events_about(&obj).await?);
    Ok(Some(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        assert_eq!(parse_key("ns/web").unwrap(), ServiceKey::new("ns", "web"));
        assert_eq!(parse_key("web").unwrap(), ServiceKey::new("default", "web"));
        assert!(parse_key("/web").is_err());
        assert!(parse_key("a/b/c").is_err());
    }
}
