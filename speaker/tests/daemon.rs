//! The speaker's daemon loop through its library API, in a throwaway network namespace: it
//! elects, writes the ServiceL2Status, reports ready, and stops within the leave grace when
//! asked. No process is started.

use std::sync::Arc;
use std::time::{Duration, Instant};

use metalnet::daemon::{Health, Shutdown};
use metalnet::state::{ClusterState, Source};
use metalnet::testing::{Manifest, Netns, endpoint_slice, l2_advertisement, node, pool, service};
use metalnet_speaker::daemon::{self, GossipSettings, KINDS, Options};
use metalnet_speaker::metrics::Metrics;

#[test]
fn runs_writes_status_and_stops_on_request() {
    let Some(ns) = Netns::with_veth("spkd") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let manifests = [
        node("n1").ready().internal_ip("192.0.2.1").document(),
        pool("p", ["192.0.2.200/32"]).document(),
        l2_advertisement("l2").document(),
        service("web").ingress(["192.0.2.200"]).document(),
        endpoint_slice("web").ready_on("n1").document(),
    ];
    std::fs::write(dir.path().join("site.yaml"), manifests.concat()).unwrap();
    let path = dir.path().to_path_buf();
    let statuses = dir
        .path()
        .join("status/objects/ServiceL2Status/metallb-system");
    let stop_took = ns.block_on(move || async move {
        let state = Arc::new(ClusterState::start(Source::Dir(path), KINDS).await.unwrap());
        let health = Health::default();
        let shutdown = Shutdown::new();
        let opts = Options {
            node: "n1".into(),
            namespace: "metallb-system".into(),
            gossip: None,
            settle: Duration::ZERO,
            leave_grace: Duration::from_millis(100),
            ignore_exclude_label: false,
        };
        let task = tokio::spawn(daemon::run(
            state,
            opts,
            Arc::new(Metrics::default()),
            health.clone(),
            shutdown.clone(),
        ));
        let deadline = Instant::now() + Duration::from_secs(20);
        let written = || std::fs::read_dir(&statuses).is_ok_and(|d| d.count() > 0);
        while !(health.is_ready() && written()) {
            assert!(
                Instant::now() < deadline,
                "ready {} (waiting for {:?}), status written {}",
                health.is_ready(),
                health.not_ready(),
                written()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let asked = Instant::now();
        shutdown.request("test");
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("stops")
            .unwrap()
            .unwrap();
        asked.elapsed()
    });
    assert!(
        stop_took < Duration::from_secs(2),
        "stopped in {stop_took:?}"
    );
}

/// With gossip on and a Node whose speaker never shows up, the speaker settles when the
/// settle time has passed, and must announce then, although nothing changed at that moment.
#[test]
fn announces_when_settled_by_time_with_a_node_missing() {
    let Some(ns) = Netns::with_veth("spks") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let manifests = [
        node("n1").ready().internal_ip("192.0.2.1").document(),
        // Its speaker never runs: gossip never shows it, so only the settle time settles.
        node("n2").ready().internal_ip("192.0.2.2").document(),
        pool("p", ["192.0.2.200/32"]).document(),
        l2_advertisement("l2").document(),
        service("web").ingress(["192.0.2.200"]).document(),
        endpoint_slice("web").ready_on("n1").document(),
    ];
    std::fs::write(dir.path().join("site.yaml"), manifests.concat()).unwrap();
    let path = dir.path().to_path_buf();
    let announced_after = ns.block_on(move || async move {
        let state = Arc::new(ClusterState::start(Source::Dir(path), KINDS).await.unwrap());
        let health = Health::default();
        let shutdown = Shutdown::new();
        let metrics = Arc::new(Metrics::default());
        let opts = Options {
            node: "n1".into(),
            namespace: "metallb-system".into(),
            gossip: Some(GossipSettings {
                port: 7946,
                address: Some("192.0.2.1".parse().unwrap()),
                probe_period: Duration::from_millis(100),
                suspect_timeout: Duration::from_millis(100),
            }),
            settle: Duration::from_millis(300),
            leave_grace: Duration::from_millis(100),
            ignore_exclude_label: false,
        };
        let task = tokio::spawn(daemon::run(
            state,
            opts,
            metrics.clone(),
            health.clone(),
            shutdown.clone(),
        ));
        let started = Instant::now();
        let deadline = started + Duration::from_secs(10);
        let mut announced = None;
        while Instant::now() < deadline {
            if metrics.announced_addresses.get() == 1 {
                announced = Some(started.elapsed());
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        shutdown.request("test");
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        announced
    });
    assert!(
        announced_after.is_some(),
        "nothing announced 10 s after start (settle time 300 ms)"
    );
}
