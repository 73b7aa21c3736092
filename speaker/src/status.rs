//! What the speaker tells the cluster: a ServiceL2Status per Service it announces (as
//! MetalLB's speaker does), an Event on the Service when it becomes the announcing node, and
//! a Warning Event when it won an address but none of the interfaces the L2Advertisement
//! names is usable here (MetalLB's `announceFailed`; no status object then, as MetalLB).
//!
//! The plan is pure ([`plan`], [`failure_events`], [`L2StatusPlanner`]); the daemon runs it
//! on its own driver (`metalnet::daemon::OwnedObjects`), so slow writes never hold up
//! answering ARP or taking over addresses, and failed writes are retried.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use metalnet::daemon::{OwnedPlan, OwnedPlanner};
use metalnet::model::ServiceL2Status;
use metalnet::state::{EventRecord, EventType, Kind, ObjectRef, Snapshot};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::layer2::AnnounceFailure;
use crate::layer2::election::{Interfaces, ServiceElection, Verdict};

pub const LABEL_NODE: &str = "metallb.io/node";
pub const LABEL_SERVICE_NAME: &str = "metallb.io/service-name";
pub const LABEL_SERVICE_NAMESPACE: &str = "metallb.io/service-namespace";
/// MetalLB's event reason when a speaker starts announcing a Service.
pub const REASON_NODE_ASSIGNED: &str = "nodeAssigned";
/// MetalLB's event reason when the announcing node cannot announce an address on the
/// interfaces its L2Advertisements name.
pub const REASON_ANNOUNCE_FAILED: &str = "announceFailed";
pub const REPORTER: &str = "metalnet-speaker";

/// The name of the status object for (node, service): MetalLB generates `l2-<random>`; ours
/// is `l2-` plus a hash, stable so restarts rewrite rather than duplicate it.
pub fn status_name(node: &str, namespace: &str, name: &str) -> String {
    let h = Sha256::digest(format!("{node}/{namespace}/{name}").as_bytes());
    let hex: String = h.iter().take(6).map(|b| format!("{b:02x}")).collect();
    format!("l2-{hex}")
}

/// The ServiceL2Status object this node should hold for a Service it announces.
pub fn status_object(namespace: &str, node: &str, e: &ServiceElection, ifs: &Interfaces) -> Value {
    let mut status = json!({
        "node": node,
        "serviceName": e.name,
        "serviceNamespace": e.namespace,
    });
    if let Interfaces::Only(names) = ifs {
        status["interfaces"] = names.iter().map(|n| json!({"name": n})).collect();
    }
    json!({
        "apiVersion": Kind::ServiceL2Status.api_version(),
        "kind": "ServiceL2Status",
        "metadata": {
            "name": status_name(node, &e.namespace, &e.name),
            "namespace": namespace,
            "labels": {
                LABEL_NODE: node,
                LABEL_SERVICE_NAME: e.name,
                LABEL_SERVICE_NAMESPACE: e.namespace,
            },
        },
        "spec": {},
        "status": status,
    })
}

/// Addresses this node won but cannot announce, with why (see [`crate::layer2::announce_failures`]).
pub type Failures = BTreeMap<IpAddr, AnnounceFailure>;

/// Whether this node announces the Service: it won it and can announce at least one of its
/// addresses.
fn announces(e: &ServiceElection, node: &str, failures: &Failures) -> bool {
    e.winner() == Some(node) && e.ips.iter().any(|ip| !failures.contains_key(ip))
}

/// The Services this node announces, as (namespace, name).
pub fn announcing(
    elections: &[ServiceElection],
    node: &str,
    failures: &Failures,
) -> BTreeSet<(String, String)> {
    elections
        .iter()
        .filter(|e| announces(e, node, failures))
        .map(|e| (e.namespace.clone(), e.name.clone()))
        .collect()
}

/// A Service address whose announcement failed on this node.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct FailedAddress {
    pub namespace: String,
    pub name: String,
    pub ip: IpAddr,
}

/// The `announceFailed` Warning Event for every address of a Service this node won but
/// cannot announce (MetalLB's wording, plus the interfaces and why each is unusable).
pub fn failure_events(
    elections: &[ServiceElection],
    node: &str,
    failures: &Failures,
) -> BTreeMap<FailedAddress, EventRecord> {
    let mut out = BTreeMap::new();
    for e in elections.iter().filter(|e| e.winner() == Some(node)) {
        for ip in &e.ips {
            let Some(failure) = failures.get(ip) else {
                continue;
            };
            let event = EventRecord {
                type_: EventType::Warning,
                reason: REASON_ANNOUNCE_FAILED.into(),
                message: format!(
                    "the interfaces specified by LB IP \"{ip}\" don't exist or are not usable in assigned node \"{node}\" with protocol \"layer2\": {failure}"
                ),
                reporter: REPORTER.into(),
            };
            let key = FailedAddress {
                namespace: e.namespace.clone(),
                name: e.name.clone(),
                ip: *ip,
            };
            out.insert(key, event);
        }
    }
    out
}

/// Changes to make to the status objects.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    pub apply: Vec<(ObjectRef, Value)>,
    pub delete: Vec<ObjectRef>,
}

fn labels(s: &ServiceL2Status) -> BTreeMap<String, String> {
    s.metadata.labels.clone().unwrap_or_default()
}

fn same(existing: &ServiceL2Status, desired: &Value) -> bool {
    let want_labels: BTreeMap<String, String> =
        serde_json::from_value(desired["metadata"]["labels"].clone()).unwrap_or_default();
    let want_status = serde_json::from_value(desired["status"].clone()).ok();
    labels(existing) == want_labels && existing.status == want_status
}

/// The status objects to write and delete so that this node holds exactly one per Service it
/// announces, and no other node's object remains for those Services (as MetalLB's leader).
/// A Service whose every address failed ([`Failures`]) gets none, as in MetalLB.
pub fn plan(
    snapshot: &Snapshot,
    namespace: &str,
    node: &str,
    elections: &[ServiceElection],
    failures: &Failures,
) -> Plan {
    let mut desired: BTreeMap<ObjectRef, Value> = BTreeMap::new();
    let mut won: BTreeSet<(String, String)> = BTreeSet::new();
    for e in elections {
        if let Verdict::Announced {
            node: winner,
            interfaces,
        } = &e.verdict
            && winner == node
            && announces(e, node, failures)
        {
            let obj = status_object(namespace, node, e, interfaces);
            let r = ObjectRef::new(
                Kind::ServiceL2Status,
                Some(namespace),
                &status_name(node, &e.namespace, &e.name),
            );
            desired.insert(r, obj);
            won.insert((e.namespace.clone(), e.name.clone()));
        }
    }
    let mut plan = Plan::default();
    for (key, existing) in snapshot.service_l2_statuses.iter() {
        let r = ObjectRef::new(Kind::ServiceL2Status, key.namespace.as_deref(), &key.name);
        let l = labels(existing);
        let svc = (
            l.get(LABEL_SERVICE_NAMESPACE).cloned().unwrap_or_default(),
            l.get(LABEL_SERVICE_NAME).cloned().unwrap_or_default(),
        );
        let ours = l.get(LABEL_NODE).map(String::as_str) == Some(node);
        match desired.get(&r) {
            Some(want) if same(existing, want) => {
                desired.remove(&r);
            }
            Some(_) => {}
            // Ours but no longer announced, or another node's for a Service we announce now.
            None if ours || won.contains(&svc) => plan.delete.push(r),
            None => {}
        }
    }
    plan.apply = desired.into_iter().collect();
    plan
}

/// What the status writer needs for one round: the decision of the layer 2 loop.
#[derive(Clone)]
pub struct Round {
    pub elections: Arc<Vec<ServiceElection>>,
    /// Addresses won but not announceable here (none of the named interfaces usable).
    pub failures: Arc<Failures>,
}

/// Plans the writes of one round: status objects ([`plan`]), the `nodeAssigned` Event when
/// this node starts announcing a Service, and `announceFailed` Events when they change.
/// Events are best effort, as Kubernetes' recorder: one that fails is not recorded again.
pub struct L2StatusPlanner {
    namespace: String,
    node: String,
    /// Services this node announced at the last round, for the nodeAssigned Event.
    announced: BTreeSet<(String, String)>,
    /// announceFailed Events of the last round: recorded again only when they change.
    failed: BTreeMap<FailedAddress, EventRecord>,
}

impl L2StatusPlanner {
    pub fn new(namespace: String, node: String) -> Self {
        L2StatusPlanner {
            namespace,
            node,
            announced: BTreeSet::new(),
            failed: BTreeMap::new(),
        }
    }
}

impl OwnedPlanner<Round> for L2StatusPlanner {
    fn plan(&mut self, snapshot: &Snapshot, round: &Round) -> OwnedPlan {
        let node = &self.node;
        let mut out = OwnedPlan::default();
        let now = announcing(&round.elections, node, &round.failures);
        for (ns, name) in now.difference(&self.announced) {
            let svc = ObjectRef::new(Kind::Service, Some(ns), name);
            let event = EventRecord {
                type_: EventType::Normal,
                reason: REASON_NODE_ASSIGNED.into(),
                message: format!("announcing from node \"{node}\" with protocol \"layer2\""),
                reporter: REPORTER.into(),
            };
            out.events.push((svc, event));
        }
        self.announced = now;
        let failed_now = failure_events(&round.elections, node, &round.failures);
        for (at, event) in &failed_now {
            if self.failed.get(at).map(|e| &e.message) == Some(&event.message) {
                continue;
            }
            let svc = ObjectRef::new(Kind::Service, Some(&at.namespace), &at.name);
            tracing::warn!(service = %svc, ip = %at.ip, message = %event.message, "cannot announce");
            out.events.push((svc, event.clone()));
        }
        self.failed = failed_now;
        let p = plan(
            snapshot,
            &self.namespace,
            node,
            &round.elections,
            &round.failures,
        );
        if p != Plan::default() {
            tracing::debug!(
                known = snapshot.service_l2_statuses.len(),
                apply = ?p.apply.iter().map(|(r, _)| r.name.as_str()).collect::<Vec<_>>(),
                delete = ?p.delete.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
                "status plan"
            );
        }
        out.apply = p.apply;
        out.delete = p.delete;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use metalnet::testing::snapshot;

    fn election(name: &str, winner: &str) -> ServiceElection {
        ServiceElection {
            namespace: "default".into(),
            name: name.into(),
            ips: vec!["192.0.2.200".parse().unwrap()],
            pool: None,
            advertisements: vec![],
            external_traffic_local: false,
            endpoint_nodes: Default::default(),
            serving_endpoints: 1,
            ranking: vec![],
            excluded: Default::default(),
            verdict: Verdict::Announced {
                node: winner.into(),
                interfaces: Interfaces::Only(["eth0".to_string()].into()),
            },
        }
    }

    #[test]
    fn writes_ours_and_removes_stale_and_foreign() {
        let web = election("web", "node1");
        let mine = status_object("metallb-system", "node1", &web, &Interfaces::All);
        let other_for_web = status_object("metallb-system", "node2", &web, &Interfaces::All);
        let old = status_object(
            "metallb-system",
            "node1",
            &election("old", "node1"),
            &Interfaces::All,
        );
        let unrelated = status_object(
            "metallb-system",
            "node3",
            &election("db", "node3"),
            &Interfaces::All,
        );
        let snap = snapshot(vec![
            mine.clone(),
            other_for_web.clone(),
            old.clone(),
            unrelated,
        ]);
        let p = plan(
            &snap,
            "metallb-system",
            "node1",
            std::slice::from_ref(&web),
            &Failures::new(),
        );
        // Interfaces changed (All -> eth0): rewritten.
        assert_eq!(p.apply.len(), 1);
        assert_eq!(p.apply[0].1["status"]["interfaces"][0]["name"], "eth0");
        assert_eq!(p.apply[0].1["metadata"]["labels"][LABEL_NODE], "node1");
        let deleted: BTreeSet<String> = p.delete.iter().map(|r| r.name.clone()).collect();
        assert_eq!(
            deleted,
            [
                other_for_web["metadata"]["name"]
                    .as_str()
                    .unwrap()
                    .to_string(),
                old["metadata"]["name"].as_str().unwrap().to_string()
            ]
            .into()
        );
        // Once written, nothing more to do.
        let snap = snapshot(vec![p.apply[0].1.clone()]);
        assert_eq!(
            plan(&snap, "metallb-system", "node1", &[web], &Failures::new()),
            Plan::default()
        );
    }

    fn missing(ip: &str) -> Failures {
        let failure = AnnounceFailure {
            interfaces: [("does-not-exist".to_string(), None)].into(),
        };
        [(ip.parse().unwrap(), failure)].into()
    }

    #[test]
    fn failed_addresses_get_a_warning_and_no_status_object() {
        let web = election("web", "node1");
        let failures = missing("192.0.2.200");
        let mine = status_object("metallb-system", "node1", &web, &Interfaces::All);
        let snap = snapshot(vec![mine.clone()]);
        // Won but not announceable: not announcing, and its object goes (as MetalLB).
        let p = plan(
            &snap,
            "metallb-system",
            "node1",
            std::slice::from_ref(&web),
            &failures,
        );
        assert!(p.apply.is_empty());
        assert_eq!(p.delete.len(), 1);
        assert!(announcing(std::slice::from_ref(&web), "node1", &failures).is_empty());
        let events = failure_events(std::slice::from_ref(&web), "node1", &failures);
        let (at, event) = events.iter().next().expect("one event");
        assert_eq!(events.len(), 1);
        assert_eq!(
            (at.namespace.as_str(), at.name.as_str(), at.ip.to_string()),
            ("default", "web", "192.0.2.200".to_string())
        );
        assert_eq!(event.type_, EventType::Warning);
        assert_eq!(event.reason, REASON_ANNOUNCE_FAILED);
        for part in [
            "\"192.0.2.200\"",
            "\"node1\"",
            "does-not-exist (does not exist)",
        ] {
            assert!(event.message.contains(part), "{part} in {}", event.message);
        }
        // Another node's win, or an address that did not fail: no event.
        assert!(failure_events(&[election("web", "node2")], "node1", &failures).is_empty());
        assert!(
            failure_events(std::slice::from_ref(&web), "node1", &missing("192.0.2.9")).is_empty()
        );
        assert_eq!(
            announcing(&[web], "node1", &Failures::new()),
            [("default".to_string(), "web".to_string())].into()
        );
    }
}
