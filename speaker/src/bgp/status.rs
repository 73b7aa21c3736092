//! ServiceBGPStatus objects, as MetalLB's speaker writes them: one per (Service, node) the
//! node announces, listing the BGPPeers it announces the Service to, labelled
//! `metallb.io/node`, `metallb.io/service-name`, `metallb.io/service-namespace`.
//!
//! The plan is pure ([`plan`]); the daemon applies it through [`planner`] on its own driver
//! (`metalnet::daemon::OwnedObjects`), which retries failed writes.

use metalnet::daemon::OwnedPlan;
use metalnet::model::ServiceBGPStatus;
use metalnet::state::{Kind, ObjectRef, Snapshot};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

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

/// The status planner of BGP mode for the owned-objects driver: this node's
/// ServiceBGPStatus objects for the latest planned Services.
pub fn planner(
    namespace: String,
    node: String,
) -> impl FnMut(&Snapshot, &PlannedServices) -> OwnedPlan + Send {
    move |snapshot, services| {
        let p = plan(snapshot, &namespace, &node, services.iter().map(|s| &**s));
        OwnedPlan {
            apply: p.apply,
            delete: p.delete,
            events: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bgp::plan::Contribution;
    use metalnet::testing::snapshot;
    use std::collections::BTreeSet;

    /// A Service announced at 192.0.2.200/32 to these peers.
    pub(super) fn service(name: &str, peers: &[&str]) -> ServiceBgp {
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

#[cfg(test)]
mod retry_tests {
    use super::*;
    use metalnet::daemon::{Driver, OwnedObjects, RetryPolicy, Shutdown};
    use metalnet::state::{ClusterState, Source};
    use std::sync::Arc;
    use std::time::Duration;

    /// A ServiceBGPStatus write that fails is retried while the plan stays the same (the
    /// writer used to remember the plan as done and skip it from then on).
    #[tokio::test]
    async fn a_failed_status_write_is_retried_without_a_new_plan() {
        let dir = tempfile::tempdir().unwrap();
        let state = Arc::new(
            ClusterState::start(Source::Dir(dir.path().into()), [Kind::ServiceBGPStatus])
                .await
                .unwrap(),
        );
        let name = status_name("n1", "default", "web");
        let target = dir
            .path()
            .join("status/objects/ServiceBGPStatus/metallb-system")
            .join(format!("{name}.yaml"));
        // A directory where the file must go: the atomic rename fails until it is gone.
        std::fs::create_dir_all(target.join("blocker")).unwrap();
        let (tx, rx) = tokio::sync::watch::channel(None);
        let shutdown = Shutdown::new();
        let driver = Driver::new(OwnedObjects::new(
            "bgp-status",
            state.clone(),
            rx,
            planner("metallb-system".into(), "n1".into()),
        ))
        .shutdown(shutdown.clone())
        .retry_policy(RetryPolicy {
            transient: Some((Duration::from_millis(50), Duration::from_millis(100))),
            ..RetryPolicy::default()
        });
        let s = state.clone();
        let task = tokio::spawn(async move { driver.run(&s).await });
        let services: PlannedServices = Arc::from(vec![Arc::new(super::tests::service(
            "web",
            &["metallb-system/p"],
        ))]);
        tx.send_replace(Some(services));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(target.is_dir(), "the write failed so far");
        std::fs::remove_dir_all(&target).unwrap();
        // No new plan is sent: only the retry can write it.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !target.is_file() && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(target.is_file(), "the failed write was retried");
        shutdown.request("test");
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
    }
}
