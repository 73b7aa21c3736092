//! ServiceBGPStatus objects, as MetalLB's speaker writes them: one per (Service, node) the
//! node announces, listing the BGPPeers it announces the Service to, labelled
//! `metallb.io/node`, `metallb.io/service-name`, `metallb.io/service-namespace`.
//!
//! The plan is pure ([`plan`]); [`BgpStatusWriter`] applies it in its own task.

use std::collections::BTreeMap;
use std::sync::Arc;

use metalnet::model::ServiceBGPStatus;
use metalnet::state::{ClusterState, Kind, ObjectRef, Snapshot};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use super::plan::{PlannedServices, ServiceBgp};
use crate::status::{LABEL_NODE, LABEL_SERVICE_NAME, LABEL_SERVICE_NAMESPACE, Plan};

/// `bgp-` plus a hash of (node, Service): stable, so restarts rewrite rather than duplicate.
pub fn status_name(node: &str, namespace: &str, name: &str) -> String {
    let h = Sha256::digest(format!("{node}/{namespace}/{name}").as_bytes());
    let hex: String = h.iter().take(6).map(|b| format!("{b:02x}")).collect();
    format!("bgp-{hex}")
}

pub fn status_object(namespace: &str, node: &str, s: &ServiceBgp) -> Value {
    json!({
        "apiVersion": Kind::ServiceBGPStatus.api_version(),
        "kind": "ServiceBGPStatus",
        "metadata": {
            "name": status_name(node, &s.namespace, &s.name),
            "namespace": namespace,
            "labels": {
                LABEL_NODE: node,
                LABEL_SERVICE_NAME: s.name,
                LABEL_SERVICE_NAMESPACE: s.namespace,
            },
        },
        "spec": {},
        "status": {
            "node": node,
            "serviceName": s.name,
            "serviceNamespace": s.namespace,
            "peers": s.peers().into_iter().collect::<Vec<_>>(),
        },
    })
}

/// Whether the existing object already says what this node would write (compared typed:
/// this runs for every announced Service on every change).
fn same(existing: &ServiceBGPStatus, node: &str, s: &ServiceBgp) -> bool {
    let Some(status) = &existing.status else {
        return false;
    };
    let labels = existing.metadata.labels.as_ref();
    let label = |k: &str| labels.and_then(|l| l.get(k)).map(String::as_str);
    labels.is_some_and(|l| l.len() == 3)
        && label(LABEL_NODE) == Some(node)
        && label(LABEL_SERVICE_NAME) == Some(s.name.as_str())
        && label(LABEL_SERVICE_NAMESPACE) == Some(s.namespace.as_str())
        && status.node == node
        && status.service_name == s.name
        && status.service_namespace == s.namespace
        && status.peers.iter().eq(s.peers().iter())
}

/// The writes and deletes that leave exactly this node's objects for the Services it
/// announces (other nodes' objects are theirs to manage).
pub fn plan<'a>(
    snapshot: &Snapshot,
    namespace: &str,
    node: &str,
    services: impl IntoIterator<Item = &'a ServiceBgp>,
) -> Plan {
    let mut desired: BTreeMap<ObjectRef, &ServiceBgp> = services
        .into_iter()
        .filter(|s| !s.contributions.is_empty())
        .map(|s| {
            (
                ObjectRef::new(
                    Kind::ServiceBGPStatus,
                    Some(namespace),
                    &status_name(node, &s.namespace, &s.name),
                ),
                s,
            )
        })
        .collect();
    let mut out = Plan::default();
    for (key, existing) in snapshot.service_bgp_statuses.iter() {
        let r = ObjectRef::new(Kind::ServiceBGPStatus, key.namespace.as_deref(), &key.name);
        let ours = existing
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(LABEL_NODE))
            .map(String::as_str)
            == Some(node);
        match desired.get(&r) {
            Some(want) if same(existing, node, want) => {
                desired.remove(&r);
            }
            Some(_) => {}
            None if ours => out.delete.push(r),
            None => {}
        }
    }
    out.apply = desired
        .into_iter()
        .map(|(r, s)| (r, status_object(namespace, node, s)))
        .collect();
    out
}

/// One round for the writer: the snapshot and the planned Services.
type Round = Option<(Arc<Snapshot>, PlannedServices)>;

/// Applies status plans in its own task, so slow writes never hold up announcing.
pub struct BgpStatusWriter {
    tx: watch::Sender<Round>,
}

impl BgpStatusWriter {
    pub fn start(state: Arc<ClusterState>, namespace: String, node: String) -> BgpStatusWriter {
        let (tx, mut rx) = watch::channel::<Round>(None);
        tokio::spawn(async move {
            let mut last: Option<Plan> = None;
            while rx.changed().await.is_ok() {
                let Some((snapshot, services)) = rx.borrow_and_update().clone() else {
                    continue;
                };
                let p = plan(&snapshot, &namespace, &node, services.iter().map(|s| &**s));
                // The same plan again means our writes have not shown up yet: skip.
                if last.as_ref() == Some(&p) {
                    continue;
                }
                for (r, value) in &p.apply {
                    if let Err(e) = state.apply(r, value.clone()).await {
                        tracing::warn!(object = %r, error = %e, "writing ServiceBGPStatus failed");
                    }
                }
                for r in &p.delete {
                    if let Err(e) = state.delete(r).await {
                        tracing::warn!(object = %r, error = %e, "deleting ServiceBGPStatus failed");
                    }
                }
                last = Some(p);
            }
        });
        BgpStatusWriter { tx }
    }

    pub fn update(&self, snapshot: Arc<Snapshot>, services: PlannedServices) {
        self.tx.send_replace(Some((snapshot, services)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bgp::plan::Contribution;
    use metalnet::state::{Core, Delta};
    use std::collections::BTreeSet;

    fn service(name: &str, peers: &[&str]) -> ServiceBgp {
        ServiceBgp {
            namespace: "default".into(),
            name: name.into(),
            ips: vec!["192.0.2.200".parse().unwrap()],
            pools: BTreeSet::new(),
            advertisements: BTreeSet::new(),
            external_traffic_local: false,
            serving_endpoints: 1,
            endpoint_nodes: BTreeSet::new(),
            contributions: vec![Contribution {
                ip: "192.0.2.200".parse().unwrap(),
                prefix: "192.0.2.200/32".parse().unwrap(),
                advertisement: "metallb-system/a".into(),
                advertisement_index: 0,
                peers: peers.iter().map(|p| p.to_string()).collect(),
            }],
            unsent: Vec::new(),
            not_announced: None,
        }
    }

    fn snapshot(objects: Vec<Value>) -> Arc<Snapshot> {
        let core = Core::new(Kind::ALL);
        core.apply(objects.into_iter().map(|v| {
            let r = ObjectRef::new(
                Kind::ServiceBGPStatus,
                v["metadata"]["namespace"].as_str(),
                v["metadata"]["name"].as_str().unwrap(),
            );
            Delta::Apply(r, v)
        }));
        core.snapshot()
    }

    #[test]
    fn writes_missing_keeps_equal_deletes_ours_only() {
        let web = service("web", &["router-v4", "router-v6"]);
        let obj = status_object("metallb-system", "node1", &web);
        assert_eq!(obj["status"]["peers"], json!(["router-v4", "router-v6"]));
        assert_eq!(obj["metadata"]["labels"][LABEL_NODE], "node1");

        let p = plan(&snapshot(vec![]), "metallb-system", "node1", [&web]);
        assert_eq!((p.apply.len(), p.delete.len()), (1, 0));

        // Already there: nothing to do. A stale one of ours goes; another node's stays.
        let stale = status_object("metallb-system", "node1", &service("old", &["x"]));
        let other = status_object("metallb-system", "node2", &service("old", &["x"]));
        let snap = snapshot(vec![obj, stale, other]);
        let p = plan(&snap, "metallb-system", "node1", [&web]);
        assert!(p.apply.is_empty(), "{p:?}");
        assert_eq!(p.delete.len(), 1);
        assert_eq!(p.delete[0].name, status_name("node1", "default", "old"));

        // A peer more: rewritten.
        let web2 = service("web", &["router-v4"]);
        let p = plan(&snap, "metallb-system", "node1", [&web2]);
        assert_eq!(p.apply.len(), 1);
    }
}
