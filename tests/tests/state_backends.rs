//! The same cluster-state scenarios against both backends: the state directory and the
//! Kubernetes API (through the in-repo stand-in, `metalnet_lab::apiserver`, which is a test
//! double, not a real API server).

use std::collections::BTreeSet;
use std::future::Future;
use std::time::Duration;

use metalnet::state::{
    ClusterState, EventRecord, EventType, Kind, MetadataPatch, ObjectRef, Snapshot, Source,
    Subscription,
};
use metalnet::testing::{
    METALLB_NS, Manifest, PoolBuilder, ServiceBuilder, node, patient, pool, service,
};
use metalnet_lab::backends::{DirHarness, Harness, KubeHarness};
use serde_json::{Value, json};

/// Bound on every test.
const LIMIT: Duration = Duration::from_secs(30);
/// Bound on one awaited change.
const STEP: Duration = Duration::from_secs(10);

/// An event as the scenarios compare them: type, reason, message, count.
type EventSummary = (String, String, String, u64);

fn summarize(events: impl IntoIterator<Item = Value>) -> Vec<EventSummary> {
    let mut v: Vec<EventSummary> = events
        .into_iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap_or_default().to_string(),
                e["reason"].as_str().unwrap_or_default().to_string(),
                e["message"].as_str().unwrap_or_default().to_string(),
                e["count"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    v.sort();
    v
}

/// The Service every scenario allocates for.
fn web() -> ServiceBuilder {
    service("web").namespace("shop")
}

/// The pool every scenario allocates from.
fn pool_a() -> PoolBuilder {
    pool("pool-a", ["192.0.2.0/28"])
}

fn service_ref() -> ObjectRef {
    web().object_ref()
}

fn pool_ref(name: &str) -> ObjectRef {
    ObjectRef::new(Kind::IPAddressPool, Some(METALLB_NS), name)
}

fn node_ref() -> ObjectRef {
    node("node1").object_ref()
}

async fn bounded<F: Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(patient(STEP), f)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// Waits until the snapshot satisfies `cond`.
async fn wait_for(state: &ClusterState, what: &str, cond: impl Fn(&Snapshot) -> bool) {
    bounded(what, async {
        while !cond(&state.snapshot()) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

/// The next update's changed objects.
async fn next_changed(sub: &mut Subscription, what: &str) -> BTreeSet<ObjectRef> {
    bounded(what, sub.next()).await.changed
}

/// Updates until their changed objects add up to at least `want`; returns them all.
async fn changes_until(
    sub: &mut Subscription,
    want: &BTreeSet<ObjectRef>,
    what: &str,
) -> BTreeSet<ObjectRef> {
    let mut seen = BTreeSet::new();
    while !want.is_subset(&seen) {
        seen.extend(next_changed(sub, what).await);
    }
    seen
}

fn ingress_ips(snap: &Snapshot, obj: &ObjectRef) -> Vec<String> {
    snap.services
        .get(&obj.key())
        .and_then(|s| s.status.as_ref())
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .map(|i| i.iter().filter_map(|i| i.ip.clone()).collect())
        .unwrap_or_default()
}

// ---- the scenarios -----------------------------------------------------------------------

async fn initial_load(h: impl Harness) {
    h.put(&web().yaml()).await;
    h.put(&pool_a().yaml()).await;
    h.put(&node("node1").yaml()).await;
    let state = h.open(&Kind::ALL).await;
    let snap = state.snapshot();
    assert!(snap.services.contains_key(&service_ref().key()));
    let pool = snap
        .ip_address_pools
        .get(&pool_ref("pool-a").key())
        .expect("the pool is loaded");
    assert_eq!(pool.spec.addresses, ["192.0.2.0/28"]);
    assert!(snap.nodes.contains_key(&node_ref().key()));
    assert!(snap.invalid.is_empty(), "{:?}", snap.invalid);
}

async fn subscriber_sees_exact_changes(h: impl Harness) {
    h.put(&web().yaml()).await;
    h.put(&pool_a().yaml()).await;
    h.put(&node("node1").yaml()).await;
    let state = h.open(&Kind::ALL).await;
    let mut sub = state.subscribe();
    assert_eq!(
        next_changed(&mut sub, "the initial update").await,
        BTreeSet::from([service_ref(), pool_ref("pool-a"), node_ref()])
    );

    h.put(&pool("pool-b", ["198.51.100.0/28"]).yaml()).await;
    assert_eq!(
        next_changed(&mut sub, "an added pool").await,
        BTreeSet::from([pool_ref("pool-b")])
    );
    assert_eq!(state.snapshot().ip_address_pools.len(), 2);

    h.put(&pool("pool-a", ["203.0.113.0/28"]).yaml()).await;
    assert_eq!(
        next_changed(&mut sub, "a modified pool").await,
        BTreeSet::from([pool_ref("pool-a")])
    );
    let snap = state.snapshot();
    assert_eq!(
        snap.ip_address_pools[&pool_ref("pool-a").key()]
            .spec
            .addresses,
        ["203.0.113.0/28"]
    );

    h.delete(&node_ref()).await;
    assert_eq!(
        next_changed(&mut sub, "a deleted node").await,
        BTreeSet::from([node_ref()])
    );
    assert!(state.snapshot().nodes.is_empty());
}

async fn patch_status_persists(h: impl Harness) {
    h.put(&web().yaml()).await;
    let svc = service_ref();
    {
        let state = h.open(&Kind::ALL).await;
        state
            .patch_status(
                &svc,
                json!({ "loadBalancer": { "ingress": [{ "ip": "192.0.2.10" }] } }),
            )
            .await
            .expect("patching the status");
        wait_for(&state, "the ingress in the snapshot", |s| {
            ingress_ips(s, &svc) == ["192.0.2.10"]
        })
        .await;
        assert_eq!(
            state.snapshot().services[&svc.key()]
                .spec
                .as_ref()
                .and_then(|s| s.type_.as_deref()),
            Some("LoadBalancer"),
            "the spec is kept"
        );
    }
    let reopened = h.open(&Kind::ALL).await;
    assert_eq!(ingress_ips(&reopened.snapshot(), &svc), ["192.0.2.10"]);
}

async fn patch_metadata_sets_and_removes(h: impl Harness) {
    h.put(&web().yaml()).await;
    let svc = service_ref();
    let state = h.open(&Kind::ALL).await;
    let annotation = |s: &Snapshot| {
        s.services[&svc.key()]
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("metalnet.io/allocated-from").cloned())
    };
    let mut patch = MetadataPatch::default();
    patch
        .annotations
        .insert("metalnet.io/allocated-from".into(), Some("pool-a".into()));
    state.patch_metadata(&svc, &patch).await.expect("setting");
    wait_for(&state, "the annotation set", |s| {
        annotation(s).as_deref() == Some("pool-a")
    })
    .await;
    patch
        .annotations
        .insert("metalnet.io/allocated-from".into(), None);
    state.patch_metadata(&svc, &patch).await.expect("removing");
    wait_for(&state, "the annotation removed", |s| {
        annotation(s).is_none()
    })
    .await;
}

const POD: &str = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  namespace: ns1\n  annotations:\n    k8s.v1.cni.cncf.io/networks: net-a\nspec:\n  nodeName: node1\n  containers:\n  - name: c\n    image: i\n";

/// network-status as multus-shim writes it: an annotation on a Pod, the Pod's other
/// annotations kept.
async fn patch_metadata_of_a_pod(h: impl Harness) {
    h.put(POD).await;
    let pod = ObjectRef::new(Kind::Pod, Some("ns1"), "p");
    let state = h.open(&Kind::ALL).await;
    let mut patch = MetadataPatch::default();
    patch.annotations.insert(
        "k8s.v1.cni.cncf.io/network-status".into(),
        Some("[]".into()),
    );
    state.patch_metadata(&pod, &patch).await.expect("setting");
    wait_for(&state, "network-status on the Pod", |s| {
        s.pods.get(&pod.key()).is_some_and(|p| {
            let a = p.metadata.annotations.clone().unwrap_or_default();
            a.get("k8s.v1.cni.cncf.io/network-status")
                .map(String::as_str)
                == Some("[]")
                && a.get("k8s.v1.cni.cncf.io/networks").map(String::as_str) == Some("net-a")
        })
    })
    .await;
}

/// Kubernetes only: a Pod's metadata is patched through `pods/NAME/status` (RBAC on
/// `pods/status` suffices), other kinds' through the object itself.
async fn pod_metadata_goes_through_the_status_subresource(h: KubeHarness) {
    h.put(POD).await;
    h.put(&web().yaml()).await;
    let state = h.open(&Kind::ALL).await;
    let mut patch = MetadataPatch::default();
    patch.annotations.insert("a".into(), Some("1".into()));
    let pod = ObjectRef::new(Kind::Pod, Some("ns1"), "p");
    state.patch_metadata(&pod, &patch).await.expect("pod");
    state
        .patch_metadata(&service_ref(), &patch)
        .await
        .expect("service");
    let patches: Vec<String> = h
        .server
        .requests()
        .into_iter()
        .filter(|r| r.method == "PATCH")
        .map(|r| r.path)
        .collect();
    assert_eq!(
        patches,
        [
            "/api/v1/namespaces/ns1/pods/p/status",
            "/api/v1/namespaces/shop/services/web",
        ]
    );
}

async fn apply_and_delete_owned_object(h: impl Harness) {
    h.put(&web().yaml()).await;
    let state = h.open(&Kind::ALL).await;
    let l2 = ObjectRef::new(Kind::ServiceL2Status, Some("shop"), "l2-web-node1");
    let value = |node: &str| {
        json!({
            "apiVersion": "metallb.io/v1beta1",
            "kind": "ServiceL2Status",
            "metadata": {
                "name": "l2-web-node1",
                "namespace": "shop",
                "labels": { "metallb.io/node": node },
            },
            "spec": {},
            "status": {
                "node": node,
                "serviceName": "web",
                "serviceNamespace": "shop",
                "interfaces": [{ "name": "eth0" }],
            },
        })
    };
    let node_of = |s: &Snapshot| {
        s.service_l2_statuses
            .get(&l2.key())
            .and_then(|o| o.status.as_ref())
            .map(|st| st.node.clone())
    };
    state.apply(&l2, value("node1")).await.expect("applying");
    wait_for(&state, "the ServiceL2Status", |s| {
        node_of(s).as_deref() == Some("node1")
    })
    .await;
    // Applying again replaces.
    state.apply(&l2, value("node2")).await.expect("re-applying");
    wait_for(&state, "the ServiceL2Status updated", |s| {
        node_of(s).as_deref() == Some("node2")
    })
    .await;
    let snap = state.snapshot();
    let obj = &snap.service_l2_statuses[&l2.key()];
    assert_eq!(obj.status.as_ref().unwrap().interfaces[0].name, "eth0");
    state.delete(&l2).await.expect("deleting");
    wait_for(&state, "the ServiceL2Status gone", |s| {
        s.service_l2_statuses.is_empty()
    })
    .await;
    state
        .delete(&l2)
        .await
        .expect("deleting what is gone is not an error");
}

async fn record_event_counts_repeats(h: impl Harness) {
    h.put(&web().yaml()).await;
    let svc = service_ref();
    let state = h.open(&Kind::ALL).await;
    let allocated = EventRecord {
        type_: EventType::Normal,
        reason: "IPAllocated".into(),
        message: "Assigned IP [\"192.0.2.10\"]".into(),
        reporter: "metalnet-controller".into(),
    };
    let failed = EventRecord {
        type_: EventType::Warning,
        reason: "AllocationFailed".into(),
        message: "no available IPs".into(),
        reporter: "metalnet-controller".into(),
    };
    for e in [&allocated, &allocated, &failed] {
        state.record_event(&svc, e).await.expect("recording");
    }
    assert_eq!(
        summarize(h.events(&svc).await),
        [
            (
                "Normal".into(),
                "IPAllocated".into(),
                allocated.message.clone(),
                2
            ),
            (
                "Warning".into(),
                "AllocationFailed".into(),
                "no available IPs".into(),
                1
            ),
        ]
    );
    // Cluster-scoped objects get events too.
    state
        .record_event(&node_ref(), &allocated)
        .await
        .expect("recording about a Node");
}

async fn invalid_pool_is_reported_not_fatal(h: impl Harness) {
    h.put(&pool_a().yaml()).await;
    // `addresses` must be a list.
    h.put(
        &pool("broken", [""; 0])
            .spec("addresses", json!("192.0.2.64/28"))
            .yaml(),
    )
    .await;
    let state = h.open(&Kind::ALL).await;
    let snap = state.snapshot();
    assert!(
        snap.ip_address_pools
            .contains_key(&pool_ref("pool-a").key())
    );
    assert!(
        !snap
            .ip_address_pools
            .contains_key(&pool_ref("broken").key())
    );
    let why = snap
        .invalid
        .get(&pool_ref("broken"))
        .expect("the broken pool is reported");
    assert!(!why.is_empty());
}

/// Kubernetes only: after the watch history is compacted, the watchers get 410 Gone, relist,
/// and report exactly what changed meanwhile: nothing lost, nothing repeated.
async fn relist_after_410(h: KubeHarness) {
    h.put(&web().yaml()).await;
    h.put(&pool_a().yaml()).await;
    h.put(&node("node1").yaml()).await;
    let state = h.open(&Kind::ALL).await;
    let mut sub = state.subscribe();
    next_changed(&mut sub, "the initial update").await;

    h.server.compact();
    h.put(&pool("pool-b", ["198.51.100.0/28"]).yaml()).await;
    h.delete(&service_ref()).await;

    let want = BTreeSet::from([pool_ref("pool-b"), service_ref()]);
    let seen = changes_until(&mut sub, &want, "the changes made across the relist").await;
    assert_eq!(seen, want, "only what changed is reported");
    bounded("a 410 answered and a relist", async {
        loop {
            let requests = h.server.requests();
            let expired = requests.iter().any(|r| r.watch_expired);
            let lists = requests
                .iter()
                .filter(|r| r.path == "/apis/metallb.io/v1beta1/ipaddresspools" && !r.is_watch())
                .count();
            if expired && lists >= 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    // Let every kind settle after its relist: no spurious updates follow.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let more = tokio::time::timeout(Duration::from_millis(200), sub.next()).await;
    assert!(
        more.is_err(),
        "no further changes: {:?}",
        more.map(|u| u.changed)
    );
    let snap = state.snapshot();
    assert_eq!(snap.ip_address_pools.len(), 2);
    assert!(snap.services.is_empty());
    assert_eq!(snap.nodes.len(), 1);

    // The watches are live again.
    h.put(&pool("pool-c", ["203.0.113.0/28"]).yaml()).await;
    assert_eq!(
        next_changed(&mut sub, "a change after the relist").await,
        BTreeSet::from([pool_ref("pool-c")])
    );
}

/// Kubernetes only: a resource the server does not serve (CRD not installed) fails the
/// start, naming it.
async fn missing_resource_names_it(h: KubeHarness) {
    h.server.unserve(Kind::BGPPeer);
    let result = ClusterState::start(Source::Kube(h.server.client()), Kind::ALL).await;
    let Err(e) = result else {
        panic!("started without bgppeers served")
    };
    let message = e.to_string();
    assert!(
        message.contains("metallb.io/v1beta2/bgppeers"),
        "names the resource: {message}"
    );
    // Without that kind, the rest starts.
    let kinds = Kind::ALL.into_iter().filter(|k| *k != Kind::BGPPeer);
    ClusterState::start(Source::Kube(h.server.client()), kinds)
        .await
        .expect("starting without bgppeers");
}

/// Kubernetes only: dropping the state stops its watchers (no more requests).
async fn drop_stops_watchers(h: KubeHarness) {
    h.put(&pool_a().yaml()).await;
    let state = h.open(&Kind::ALL).await;
    drop(state);
    // Give aborted tasks a moment, then nothing may come back even when provoked.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = h.server.requests().len();
    h.server.compact();
    h.put(&pool("pool-b", ["198.51.100.0/28"]).yaml()).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = h.server.requests();
    assert_eq!(
        after.len(),
        before,
        "requests after drop: {:?}",
        &after[before..]
    );
}

// ---- the tests: every scenario on both backends ------------------------------------------

macro_rules! both_backends {
    ($($scenario:ident),* $(,)?) => {
        mod dir {
            use super::*;
            $(
                #[tokio::test]
                async fn $scenario() {
                    tokio::time::timeout(patient(LIMIT), super::$scenario(DirHarness::new()))
                        .await
                        .expect("bounded");
                }
            )*
        }
        mod kube {
            use super::*;
            $(
                #[tokio::test]
                async fn $scenario() {
                    tokio::time::timeout(patient(LIMIT), async {
                        super::$scenario(KubeHarness::new().await).await
                    })
                    .await
                    .expect("bounded");
                }
            )*
        }
    };
}

both_backends!(
    initial_load,
    subscriber_sees_exact_changes,
    patch_status_persists,
    patch_metadata_sets_and_removes,
    patch_metadata_of_a_pod,
    apply_and_delete_owned_object,
    record_event_counts_repeats,
    invalid_pool_is_reported_not_fatal,
);

#[tokio::test]
async fn kube_relist_after_410() {
    tokio::time::timeout(patient(LIMIT), async {
        relist_after_410(KubeHarness::new().await).await
    })
    .await
    .expect("bounded");
}

#[tokio::test]
async fn kube_missing_resource_names_it() {
    tokio::time::timeout(patient(LIMIT), async {
        missing_resource_names_it(KubeHarness::new().await).await
    })
    .await
    .expect("bounded");
}

#[tokio::test]
async fn kube_drop_stops_watchers() {
    tokio::time::timeout(patient(LIMIT), async {
        drop_stops_watchers(KubeHarness::new().await).await
    })
    .await
    .expect("bounded");
}

#[tokio::test]
async fn kube_pod_metadata_goes_through_the_status_subresource() {
    tokio::time::timeout(patient(LIMIT), async {
        pod_metadata_goes_through_the_status_subresource(KubeHarness::new().await).await
    })
    .await
    .expect("bounded");
}
