//! The speaker's status writer on the Kubernetes API (through the in-repo stand-in, a test
//! double): ServiceL2Status objects as MetalLB's speaker writes them, the `nodeAssigned`
//! Event, and clean-up when the node stops announcing. (The state-directory path is covered
//! by the layer 2 lab tests.)

use std::sync::Arc;
use std::time::Duration;

use metalnet::daemon::{Driver, OwnedObjects, Shutdown};
use metalnet::state::{ClusterState, Kind, Source};
use metalnet::testing::{Manifest, patient, service};
use metalnet_lab::apiserver::ApiServer;
use metalnet_speaker::layer2::election::{Interfaces, ServiceElection, Verdict};
use metalnet_speaker::status::{L2StatusPlanner, Round};
use serde_json::Value;

fn election(winner: &str) -> ServiceElection {
    ServiceElection {
        namespace: "default".into(),
        name: "web".into(),
        ips: vec!["192.0.2.200".parse().unwrap()],
        pool: Some("metallb-system/site".into()),
        advertisements: vec!["metallb-system/l2".into()],
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

async fn wait(what: &str, mut cond: impl FnMut() -> bool) {
    tokio::time::timeout(patient(Duration::from_secs(10)), async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
}

#[tokio::test]
async fn status_objects_and_events_on_the_api() {
    let server = ApiServer::start().await.unwrap();
    server.apply_yaml(&service("web").yaml()).unwrap();
    let state = Arc::new(
        ClusterState::start(
            Source::Kube(server.client()),
            [Kind::Service, Kind::ServiceL2Status, Kind::Event],
        )
        .await
        .unwrap(),
    );
    let (writer, rx) = tokio::sync::watch::channel(None);
    let shutdown = Shutdown::new();
    let driver = Driver::new(OwnedObjects::new(
        "layer2-status",
        state.clone(),
        rx,
        L2StatusPlanner::new("metallb-system".into(), "node1".into()),
    ))
    .shutdown(shutdown.clone());
    let s = state.clone();
    let task = tokio::spawn(async move { driver.run(&s).await });
    writer.send_replace(Some(Round {
        elections: Arc::new(vec![election("node1")]),
        failures: Default::default(),
    }));
    wait("the ServiceL2Status", || {
        server.list(Kind::ServiceL2Status).len() == 1
    })
    .await;
    let obj = &server.list(Kind::ServiceL2Status)[0];
    assert_eq!(obj["metadata"]["namespace"], "metallb-system");
    assert!(obj["metadata"]["name"].as_str().unwrap().starts_with("l2-"));
    assert_eq!(obj["metadata"]["labels"]["metallb.io/node"], "node1");
    assert_eq!(obj["metadata"]["labels"]["metallb.io/service-name"], "web");
    assert_eq!(
        obj["metadata"]["labels"]["metallb.io/service-namespace"],
        "default"
    );
    assert_eq!(obj["status"]["node"], "node1");
    assert_eq!(obj["status"]["serviceName"], "web");
    assert_eq!(obj["status"]["interfaces"][0]["name"], "eth0");
    wait("the nodeAssigned event", || {
        server.list(Kind::Event).iter().any(|e: &Value| {
            e["reason"] == "nodeAssigned"
                && e["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("announcing from node \"node1\""))
        })
    })
    .await;

    // node1 no longer wins: its object goes.
    wait("the object in the snapshot", || {
        !state.snapshot().service_l2_statuses.is_empty()
    })
    .await;
    writer.send_replace(Some(Round {
        elections: Arc::new(vec![election("node2")]),
        failures: Default::default(),
    }));
    wait("the ServiceL2Status to be deleted", || {
        server.list(Kind::ServiceL2Status).is_empty()
    })
    .await;
    shutdown.request("test");
    task.await.unwrap();
}
