//! metalnet-controller's behaviour, the same scenarios against both cluster-state backends
//! (the state directory and the API stand-in, `metalnet_lab::apiserver`), with the
//! reconciler running in-process through its library API (`run::run`, `run::reconcile_once`).

use std::sync::Arc;
use std::time::Duration;

use metalnet::daemon::{Health, Shutdown};
use metalnet::state::{ClusterState, Kind, ObjectRef, Snapshot};
use metalnet::testing::{Manifest, ServiceBuilder, patient, pool, service};
use metalnet_controller::metrics::Metrics;
use metalnet_controller::reconcile::Options;
use metalnet_controller::run;
use metalnet_lab::backends::{DirHarness, Harness, KubeHarness};
use serde_json::Value;

/// Bound on every test.
const LIMIT: Duration = Duration::from_secs(60);
/// Bound on one awaited change.
const STEP: Duration = Duration::from_secs(15);

fn summarize(events: impl IntoIterator<Item = Value>) -> Vec<(String, String)> {
    events
        .into_iter()
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap_or_default().to_string();
            (s("reason"), s("message"))
        })
        .collect()
}

// ---- objects ------------------------------------------------------------------------------

/// A LoadBalancer Service in the namespace `shop`.
fn svc(name: &str) -> ServiceBuilder {
    service(name).namespace("shop")
}

fn svc_ref(name: &str) -> ObjectRef {
    ObjectRef::new(Kind::Service, Some("shop"), name)
}

fn pool_ref(name: &str) -> ObjectRef {
    ObjectRef::new(Kind::IPAddressPool, Some("metallb-system"), name)
}

fn ingress(snap: &Snapshot, name: &str) -> Vec<String> {
    snap.services
        .get(&svc_ref(name).key())
        .and_then(|s| s.status.as_ref())
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .map(|i| i.iter().filter_map(|i| i.ip.clone()).collect())
        .unwrap_or_default()
}

fn pool_annotation(snap: &Snapshot, name: &str) -> Option<String> {
    snap.services
        .get(&svc_ref(name).key())
        .and_then(|s| s.metadata.annotations.as_ref())
        .and_then(|a| a.get("metallb.io/ip-allocated-from-pool").cloned())
}

async fn wait_for(state: &ClusterState, what: &str, cond: impl Fn(&Snapshot) -> bool) {
    let waited = tokio::time::timeout(patient(STEP), async {
        while !cond(&state.snapshot()) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    if waited.is_err() {
        let snap = state.snapshot();
        let all: Vec<(String, Vec<String>)> = snap
            .services
            .keys()
            .map(|k| (k.to_string(), ingress(&snap, &k.name)))
            .collect();
        panic!("timed out waiting for {what}; services: {all:?}");
    }
}

/// The controller running in the background on its own `ClusterState`.
struct Running {
    state: Arc<ClusterState>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    health: Health,
}

impl Running {
    async fn start(h: &impl Harness, opts: Options) -> Running {
        let state = Arc::new(h.open(&run::KINDS).await);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let health = Health::default();
        let task = {
            let state = state.clone();
            let health = health.clone();
            tokio::spawn(async move {
                let mut registry = prometheus_client::registry::Registry::default();
                let metrics = Metrics::new(&mut registry);
                let shutdown = Shutdown::new();
                let s = shutdown.clone();
                tokio::spawn(async move {
                    let _ = stopped.await;
                    s.request("test");
                });
                run::run(&state, &opts, &metrics, &health, &shutdown).await;
            })
        };
        Running {
            state,
            stop: Some(stop),
            task,
            health,
        }
    }

    async fn ready(&self) {
        let health = self.health.clone();
        tokio::time::timeout(patient(STEP), async move {
            while !health.is_ready() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("ready after the first reconcile");
    }

    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        tokio::time::timeout(patient(STEP), &mut self.task)
            .await
            .expect("stops on the shutdown signal")
            .expect("the controller task");
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---- the scenarios ------------------------------------------------------------------------

/// Status and annotation written; a new Service later gets the next address.
async fn allocates_and_follows_changes(h: impl Harness) {
    h.put(&pool("a", ["192.0.2.0/30"]).yaml()).await;
    h.put(&svc("web").yaml()).await;
    let c = Running::start(&h, Options::default()).await;
    c.ready().await;
    wait_for(&c.state, "web's address", |s| {
        ingress(s, "web") == ["192.0.2.0"] && pool_annotation(s, "web").as_deref() == Some("a")
    })
    .await;
    h.put(&svc("db").yaml()).await;
    wait_for(&c.state, "db's address", |s| {
        ingress(s, "db") == ["192.0.2.1"]
    })
    .await;
    let events = summarize(h.events(&svc_ref("db")).await);
    assert!(
        events
            .iter()
            .any(|(r, m)| r == "IPAllocated" && m.contains("192.0.2.1")),
        "{events:?}"
    );
    c.stop().await;
}

/// A second controller (a restart) adopts everything and writes nothing.
async fn restart_changes_nothing(h: impl Harness) {
    h.put(&pool("a", ["192.0.2.0/29"]).yaml()).await;
    for name in ["a1", "a2", "a3"] {
        h.put(&svc(name).yaml()).await;
    }
    h.put(&svc("fixed").lb_ip("192.0.2.5").yaml()).await;
    let state = h.open(&run::KINDS).await;
    let first = run::reconcile_once(&state, &Options::default(), &Shutdown::new())
        .await
        .expect("first run");
    assert_eq!(first.allocated, 4);
    wait_for(&state, "all addresses", |s| {
        ingress(s, "a3") == ["192.0.2.2"] && ingress(s, "fixed") == ["192.0.2.5"]
    })
    .await;
    drop(state);
    // A new Service that would take a lower address if the others were not adopted first.
    let state = h.open(&run::KINDS).await;
    let again = run::reconcile_once(&state, &Options::default(), &Shutdown::new())
        .await
        .expect("second run");
    assert_eq!(again.writes, 0, "{again:?}");
    let snap = state.snapshot();
    assert_eq!(ingress(&snap, "a1"), ["192.0.2.0"]);
    assert_eq!(ingress(&snap, "a2"), ["192.0.2.1"]);
}

/// Shrinking a pool takes addresses only from the Services whose address left it, with an
/// event saying why.
async fn pool_shrink_frees_only_affected(h: impl Harness) {
    h.put(&pool("a", ["192.0.2.0/30"]).yaml()).await;
    h.put(&svc("keep").lb_ip("192.0.2.1").yaml()).await;
    h.put(&svc("lose").lb_ip("192.0.2.3").yaml()).await;
    let c = Running::start(&h, Options::default()).await;
    wait_for(&c.state, "both addresses", |s| {
        ingress(s, "keep") == ["192.0.2.1"] && ingress(s, "lose") == ["192.0.2.3"]
    })
    .await;
    h.put(&pool("a", ["192.0.2.0/31"]).yaml()).await;
    wait_for(&c.state, "lose's address cleared", |s| {
        ingress(s, "lose").is_empty() && pool_annotation(s, "lose").is_none()
    })
    .await;
    assert_eq!(ingress(&c.state.snapshot(), "keep"), ["192.0.2.1"]);
    let events = summarize(h.events(&svc_ref("lose")).await);
    assert!(
        events.iter().any(|(r, m)| r == "ClearAssignment"
            && m.contains("192.0.2.3")
            && m.contains("pool changed or was removed")),
        "{events:?}"
    );
    assert!(
        events.iter().any(|(r, _)| r == "AllocationFailed"),
        "{events:?}"
    );
    let keep_events = summarize(h.events(&svc_ref("keep")).await);
    assert!(
        !keep_events.iter().any(|(r, _)| r == "ClearAssignment"),
        "{keep_events:?}"
    );
    c.stop().await;
}

/// An invalid pool is reported and ignored; a pool turning invalid keeps its last valid
/// version, so no address is removed.
async fn invalid_pools_take_nothing_away(h: impl Harness) {
    h.put(&pool("good", ["192.0.2.0/30"]).yaml()).await;
    h.put(&pool("broken", ["not-an-address"]).yaml()).await;
    h.put(&svc("web").yaml()).await;
    let c = Running::start(&h, Options::default()).await;
    wait_for(&c.state, "web's address from the good pool", |s| {
        ingress(s, "web") == ["192.0.2.0"]
    })
    .await;
    let broken = summarize(h.events(&pool_ref("broken")).await);
    assert!(
        broken
            .iter()
            .any(|(r, m)| r == "InvalidConfiguration" && m.contains("spec.addresses[0]")),
        "{broken:?}"
    );
    // The good pool turns invalid: web keeps its address; a new Service still gets one.
    h.put(&pool("good", ["192.0.2.0/30", "192.0.2.999"]).yaml())
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    h.put(&svc("late").yaml()).await;
    wait_for(&c.state, "late's address from the last valid pool", |s| {
        ingress(s, "late") == ["192.0.2.1"]
    })
    .await;
    assert_eq!(ingress(&c.state.snapshot(), "web"), ["192.0.2.0"]);
    let good = summarize(h.events(&pool_ref("good")).await);
    assert!(
        good.iter().any(|(r, m)| r == "InvalidConfiguration"
            && m.contains("spec.addresses[1]")
            && m.contains("last valid version")),
        "{good:?}"
    );
    c.stop().await;
}

/// A Service that stops being a LoadBalancer, or is deleted, frees its address (a waiting
/// Service gets it) and its status is cleared.
async fn type_change_and_delete_free_addresses(h: impl Harness) {
    h.put(&pool("a", ["192.0.2.0/32"]).yaml()).await;
    h.put(&svc("first").yaml()).await;
    let c = Running::start(&h, Options::default()).await;
    wait_for(&c.state, "first's address", |s| {
        ingress(s, "first") == ["192.0.2.0"]
    })
    .await;
    h.put(&svc("second").yaml()).await;
    wait_for(&c.state, "second waiting", |_| true).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(ingress(&c.state.snapshot(), "second").is_empty());
    // first becomes a ClusterIP Service: cleared, and second gets the address.
    h.put(&svc("first").type_("ClusterIP").yaml()).await;
    wait_for(&c.state, "the address moved to second", |s| {
        ingress(s, "first").is_empty()
            && pool_annotation(s, "first").is_none()
            && ingress(s, "second") == ["192.0.2.0"]
    })
    .await;
    // second is deleted: a third Service gets the address.
    h.put(&svc("third").yaml()).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    h.delete(&svc_ref("second")).await;
    wait_for(&c.state, "the address moved to third", |s| {
        ingress(s, "third") == ["192.0.2.0"]
    })
    .await;
    c.stop().await;
}

/// Services of another class are never touched; `--lb-class` serves exactly that class.
async fn other_classes_untouched(h: impl Harness) {
    h.put(&pool("a", ["192.0.2.0/30"]).yaml()).await;
    h.put(&svc("plain").yaml()).await;
    h.put(
        &svc("classed")
            .spec("loadBalancerClass", "example.com/other".into())
            .yaml(),
    )
    .await;
    let state = h.open(&run::KINDS).await;
    run::reconcile_once(&state, &Options::default(), &Shutdown::new())
        .await
        .expect("default class");
    wait_for(&state, "plain's address", |s| {
        ingress(s, "plain") == ["192.0.2.0"]
    })
    .await;
    let snap = state.snapshot();
    assert!(ingress(&snap, "classed").is_empty());
    assert!(pool_annotation(&snap, "classed").is_none());
    assert!(summarize(h.events(&svc_ref("classed")).await).is_empty());
    drop(state);

    let state = h.open(&run::KINDS).await;
    let opts = Options {
        lb_class: Some("example.com/other".into()),
        ..Default::default()
    };
    run::reconcile_once(&state, &opts, &Shutdown::new())
        .await
        .expect("--lb-class");
    // This controller does not count the other class's Services (as MetalLB): two classes
    // are meant to have pools of their own.
    wait_for(&state, "classed's address", |s| {
        ingress(s, "classed") == ["192.0.2.0"]
    })
    .await;
    // The class-less Service is not ours under --lb-class: left as it is.
    assert_eq!(ingress(&state.snapshot(), "plain"), ["192.0.2.0"]);
}

// ---- every scenario on both backends -------------------------------------------------------

macro_rules! both_backends {
    ($($scenario:ident),* $(,)?) => {
        mod dir {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
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
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
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
    allocates_and_follows_changes,
    restart_changes_nothing,
    pool_shrink_frees_only_affected,
    invalid_pools_take_nothing_away,
    type_change_and_delete_free_addresses,
    other_classes_untouched,
);
