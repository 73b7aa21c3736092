//! ServiceBGPStatus objects, as MetalLB's speaker writes them: one per (Service, node) the
//! node announces, listing the BGPPeers it announces the Service to, labelled
//! `metallb.io/node`, `metallb.io/service-name`, `metallb.io/service-namespace`.
//!
//! The plan is pure ([`plan`]); [`BgpStatusWriter`] applies it in its own task.

use std::collections::BTreeMap;
use std::sync::Arc;

use metalnet_config::model::ServiceBGPStatus;
use metalnet_config::state::{ClusterState, Kind, ObjectRef, Snapshot};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use super::plan::ServiceBgp;
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

fn same(existing: &ServiceBGPStatus, desired: &Value) -> bool {
    let want_labels: BTreeMap<String, String> =
        serde_json::from_value(desired["metadata"]["labels"].clone()).unwrap_or_default();
    let want_status = serde_json::from_value(desired["status"].clone()).ok();
    existing.metadata.labels.clone().unwrap_or_default() == want_labels
        && existing.status == want_status
}

/// The writes and deletes that leave exactly this node's objects for the Services it
/// announces (other nodes' objects are theirs to manage).
pub fn plan(snapshot: &Snapshot, namespace: &str, node: &str, services: &[ServiceBgp]) -> Plan {
    let mut desired: BTreeMap<ObjectRef, Value> = services
        .iter()
        .filter(|s| !s.contributions.is_empty())
        .map(|s| {
            (
                ObjectRef::new(
                    Kind::ServiceBGPStatus,
                    Some(namespace),
                    &status_name(node, &s.namespace, &s.name),
                ),
                status_object(namespace, node, s),
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
            Some(want) if same(existing, want) => {
                desired.remove(&r);
            }
            Some(_) => {}
            None if ours => out.delete.push(r),
            None => {}
        }
    }
    out.apply = desired.into_iter().collect();
    out
}

/// Applies status plans in its own task, so slow writes never hold up announcing.
pub struct BgpStatusWriter {
    tx: watch::Sender<Option<(Arc<Snapshot>, Arc<Vec<ServiceBgp>>)>>,
}

impl BgpStatusWriter {
    pub fn start(state: Arc<ClusterState>, namespace: String, node: String) -> BgpStatusWriter {
        let (tx, mut rx) = watch::channel::<Option<(Arc<Snapshot>, Arc<Vec<ServiceBgp>>)>>(None);
        tokio::spawn(async move {
            let mut last: Option<Plan> = None;
            while rx.changed().await.is_ok() {
                let Some((snapshot, services)) = rx.borrow_and_update().clone() else {
                    continue;
                };
                let p = plan(&snapshot, &namespace, &node, &services);
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

    pub fn update(&self, snapshot: Arc<Snapshot>, services: Arc<Vec<ServiceBgp>>) {
        self.tx.send_replace(Some((snapshot, services)));
    }
}
