//! The Kubernetes code path of the real daemons, end to end: `metalnet-controller`, a
//! `metalnet-speaker` and a `metalnet-vxlan` per node of the demo site, all started with
//! `--kubeconfig`, against the in-repo API-server stand-in ([`ApiServer`], not a real API
//! server) listening on a lab host of its own (`api`, 192.0.2.5:6443 on the site switch), so
//! every node reaches it over the lab's links. Needs root (network namespaces).
//!
//! Checked through the stand-in and the lab: the controller writes the Service's address
//! through the status subresource; the client's `arping` gets exactly one answer, from the
//! elected node; the speakers publish ServiceL2Status objects and the `nodeAssigned` Event;
//! every Node carries Flannel's annotations and pods on different nodes reach each other over
//! VXLAN; deleting the Service stops the answers.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use metalnet::state::Kind;
use metalnet_lab::apiserver::ApiServer;
use metalnet_lab::lab::components::{
    DEMO_BGP_MANIFESTS, DEMO_NET_CONF, demo_manifests, vxlan_flannel_args,
};
use metalnet_lab::lab::demo::{DemoSite, node_v4};
use metalnet_lab::lab::pods::{self, Pod};
use metalnet_lab::lab::{wait_for, wait_for_value};
use metalnet_lab::{Host, Lab, Process, bins};
use metalnet_speaker::layer2::election::first_ranked;
use serde_json::Value;

/// How long any one step may take.
const STEP: Duration = Duration::from_secs(30);

/// The stand-in's lab host and where it listens (a free address of the site segment).
const API_HOST: &str = "api";
const API_V4: &str = "192.0.2.5";
const API_PORT: u16 = 6443;

/// The Service the demo manifests define.
const SVC_NAMESPACE: &str = "demo";
const SVC_NAME: &str = "web";

fn binary(name: &str) -> PathBuf {
    bins::binary(name).unwrap_or_else(|e| panic!("{e}"))
}

/// The daemons of one test run; their logs for failure messages.
struct Daemons {
    controller: Process,
    speakers: Vec<Process>,
    vxlan: Vec<Process>,
}

impl Daemons {
    fn logs(&self) -> String {
        let tail = |p: &Process| {
            let logs = p.logs();
            let lines: Vec<&str> = logs.lines().collect();
            let from = lines.len().saturating_sub(30);
            format!("--- {} ---\n{}\n", p.name(), lines[from..].join("\n"))
        };
        std::iter::once(&self.controller)
            .chain(&self.speakers)
            .chain(&self.vxlan)
            .map(tail)
            .collect()
    }
}

/// The stand-in's own host on the site switch.
fn api_host(lab: &Lab, site: &DemoSite) -> Host {
    let host = lab.host(API_HOST).unwrap();
    lab.connect(&host, &site.site, "eth0").unwrap();
    host.add_addr("eth0", &format!("{API_V4}/24")).unwrap();
    host
}

/// `--kubeconfig PATH` plus the node's name and metrics address, as a DaemonSet would set them.
fn per_node_args(kubeconfig: &Path, node: &Host, metrics_port: u16, index: usize) -> Vec<String> {
    vec![
        "--kubeconfig".into(),
        kubeconfig.display().to_string(),
        "--node-name".into(),
        node.name().into(),
        "--metrics-addr".into(),
        format!("{}:{metrics_port}", node_v4(index)),
    ]
}

fn spawn(host: &Host, name: &str, bin: &Path, args: &[String]) -> Process {
    let mut argv = vec![bin.to_str().unwrap()];
    argv.extend(args.iter().map(String::as_str));
    host.spawn(name, &argv).unwrap()
}

fn start_daemons(lab: &Lab, site: &DemoSite, kubeconfig: &Path) -> Daemons {
    let controller_bin = binary("metalnet-controller");
    let speaker_bin = binary("metalnet-speaker");
    let vxlan_bin = binary("metalnet-vxlan");
    let net_conf = lab.dir().join("net-conf.json");
    std::fs::write(&net_conf, DEMO_NET_CONF).unwrap();

    // The controller on node1, as a Deployment's single replica would run somewhere.
    let controller = spawn(
        &site.nodes[0],
        "metalnet-controller",
        &controller_bin,
        &[
            "--kubeconfig".into(),
            kubeconfig.display().to_string(),
            "--metrics-addr".into(),
            format!("{}:7472", node_v4(0)),
        ],
    );
    let mut speakers = Vec::new();
    let mut vxlan = Vec::new();
    for (i, node) in site.nodes.iter().enumerate() {
        let mut args = per_node_args(kubeconfig, node, 7474, i);
        args.extend(vxlan_flannel_args(node, &net_conf));
        vxlan.push(spawn(node, "metalnet-vxlan", &vxlan_bin, &args));
        let args = per_node_args(kubeconfig, node, 7473, i);
        speakers.push(spawn(node, "metalnet-speaker", &speaker_bin, &args));
    }
    Daemons {
        controller,
        speakers,
        vxlan,
    }
}

/// The IPv4 addresses in the Service's `status.loadBalancer.ingress`, as the stand-in holds it.
fn service_ingress_v4(api: &ApiServer) -> Vec<String> {
    let Some(svc) = api.get(Kind::Service, Some(SVC_NAMESPACE), SVC_NAME) else {
        return Vec::new();
    };
    svc.pointer("/status/loadBalancer/ingress")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|i| i["ip"].as_str())
        .filter(|ip| ip.parse::<IpAddr>().is_ok_and(|a| a.is_ipv4()))
        .map(str::to_string)
        .collect()
}

/// The nodes the speakers' ServiceL2Status objects in the stand-in name for the Service.
fn l2_status_nodes(api: &ApiServer) -> Vec<String> {
    let mut nodes: Vec<String> = api
        .list(Kind::ServiceL2Status)
        .iter()
        .map(|o| &o["status"])
        .filter(|st| st["serviceNamespace"] == SVC_NAMESPACE && st["serviceName"] == SVC_NAME)
        .filter_map(|st| st["node"].as_str().map(str::to_string))
        .collect();
    nodes.sort();
    nodes
}

/// The `nodeAssigned` Events about the Service, as (source component, message).
fn node_assigned_events(api: &ApiServer) -> Vec<(String, String)> {
    api.list(Kind::Event)
        .iter()
        .filter(|e| {
            e["reason"] == "nodeAssigned"
                && e["involvedObject"]["kind"] == "Service"
                && e["involvedObject"]["namespace"] == SVC_NAMESPACE
                && e["involvedObject"]["name"] == SVC_NAME
        })
        .map(|e| {
            (
                e["source"]["component"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                e["message"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// Attaches one pod per node from the node's subnet.env, once the agent has written it.
fn attach_pods(lab: &Lab, site: &DemoSite, daemons: &Daemons) -> Vec<Pod> {
    site.nodes
        .iter()
        .enumerate()
        .map(|(i, node)| {
            let env_path = node.dir().join("subnet.env");
            wait_for(&env_path.display().to_string(), STEP, || env_path.exists())
                .unwrap_or_else(|e| panic!("{e}\n{}", daemons.logs()));
            let env = pods::read_subnet_env(&env_path).unwrap();
            pods::attach_pod(lab, node, &format!("pod{}", i + 1), &env).unwrap()
        })
        .collect()
}

#[test]
fn daemons_on_the_kubernetes_path_assign_announce_and_connect_pods() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let lab = Lab::new("kube_e2e").unwrap();
    let site = DemoSite::build(&lab).unwrap();
    let api_host = api_host(&lab, &site);
    let api = runtime
        .block_on(ApiServer::start_in_netns(
            api_host.netns(),
            SocketAddr::new(API_V4.parse().unwrap(), API_PORT),
        ))
        .unwrap();
    // The demo's objects without its BGP peers (this site runs no router daemon).
    let manifests = demo_manifests(&site).replace(DEMO_BGP_MANIFESTS, "");
    api.apply_yaml(&manifests).unwrap();
    let kubeconfig = api.kubeconfig(lab.dir()).unwrap();
    let daemons = start_daemons(&lab, &site, &kubeconfig);

    // The controller assigns the first address of the pool, through the status subresource.
    let ip = wait_for_value("the Service to get an address", STEP, || {
        service_ingress_v4(&api).into_iter().next()
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", daemons.logs()));
    assert_eq!(ip, "192.0.2.200");
    let status_path = format!("/api/v1/namespaces/{SVC_NAMESPACE}/services/{SVC_NAME}/status");
    // (The stand-in records a request after answering it: wait for the record.)
    let status_written = |api: &ApiServer| {
        api.requests().iter().any(|r| {
            r.path == status_path && matches!(r.method.as_str(), "PATCH" | "PUT") && r.status == 200
        })
    };
    wait_for("the record of the status write", STEP, || {
        status_written(&api)
    })
    .unwrap_or_else(|e| {
        let service_requests: Vec<_> = api
            .requests()
            .into_iter()
            .filter(|r| r.path.contains("/services") && !r.is_watch())
            .collect();
        panic!(
            "{e}: the Service status was not written through {status_path}: {service_requests:?}"
        )
    });

    // Exactly one answer per ARP request, from the node MetalLB's ordering elects.
    let names: Vec<&str> = site.nodes.iter().map(Host::name).collect();
    let elected = first_ranked(&names, &ip.parse::<IpAddr>().unwrap())
        .unwrap()
        .to_string();
    let elected_mac = site.node(&elected).unwrap().mac("eth0").unwrap();
    wait_for(&format!("an ARP answer for {ip}"), STEP, || {
        !site.client.arping("eth0", &ip, 1).unwrap().is_empty()
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", daemons.logs()));
    assert_eq!(
        site.client.arping("eth0", &ip, 3).unwrap(),
        vec![elected_mac; 3],
        "{ip}: exactly one answer per request, from {elected}\n{}",
        daemons.logs()
    );

    // The speakers' objects in the API: one ServiceL2Status (the elected node's) and the
    // nodeAssigned Event.
    wait_for("the ServiceL2Status of the elected node", STEP, || {
        l2_status_nodes(&api) == vec![elected.clone()]
    })
    .unwrap_or_else(|e| panic!("{e}: {:?}\n{}", l2_status_nodes(&api), daemons.logs()));
    let events = wait_for_value("the nodeAssigned Event", STEP, || {
        let events = node_assigned_events(&api);
        (!events.is_empty()).then_some(events)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", daemons.logs()));
    assert!(
        events
            .iter()
            .all(|(_, message)| message.contains(&format!("node \"{elected}\""))),
        "nodeAssigned Events naming {elected}: {events:?}"
    );

    // Flannel's annotations on every Node: the VTEP MAC of that node's flannel.1, its public
    // address, the backend type.
    for (i, node) in site.nodes.iter().enumerate() {
        let annotations = wait_for_value(
            &format!("Flannel's annotations on Node {}", node.name()),
            STEP,
            || {
                let n = api.get(Kind::Node, None, node.name())?;
                let a = n.pointer("/metadata/annotations")?.clone();
                a.get("flannel.alpha.coreos.com/backend-data")
                    .is_some()
                    .then_some(a)
            },
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", daemons.logs()));
        let backend_data: Value = serde_json::from_str(
            annotations["flannel.alpha.coreos.com/backend-data"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        let vtep_mac = node.mac("flannel.1").unwrap();
        assert_eq!(
            backend_data["VtepMAC"].as_str().map(str::to_lowercase),
            Some(vtep_mac),
            "Node {}: {annotations}",
            node.name()
        );
        assert_eq!(
            annotations["flannel.alpha.coreos.com/public-ip"],
            node_v4(i),
            "Node {}: {annotations}",
            node.name()
        );
        assert_eq!(
            annotations["flannel.alpha.coreos.com/backend-type"],
            "vxlan",
            "Node {}: {annotations}",
            node.name()
        );
    }

    // Pods on different nodes reach each other over VXLAN, v4 and v6.
    let pods = attach_pods(&lab, &site, &daemons);
    for (from, to) in [(0, 1), (1, 2), (2, 0)] {
        for addr in [&pods[to].v4, &pods[to].v6] {
            let addr = addr
                .as_deref()
                .expect("the pod got an address of each family");
            pods[from]
                .host
                .wait_ping(addr, STEP)
                .unwrap_or_else(|e| panic!("{e}\n{}", daemons.logs()));
        }
    }

    // Deleting the Service in the API stops the answers and removes the status object.
    assert!(api.delete(Kind::Service, Some(SVC_NAMESPACE), SVC_NAME));
    wait_for(&format!("{ip} to go unanswered"), STEP, || {
        site.client.arping("eth0", &ip, 1).unwrap().is_empty()
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", daemons.logs()));
    assert!(
        site.client.arping("eth0", &ip, 2).unwrap().is_empty(),
        "{ip} answered after the Service was deleted\n{}",
        daemons.logs()
    );
    wait_for("the ServiceL2Status to go", STEP, || {
        l2_status_nodes(&api).is_empty()
    })
    .unwrap_or_else(|e| panic!("{e}: {:?}\n{}", l2_status_nodes(&api), daemons.logs()));

    // The daemons ran on the Kubernetes path the whole time.
    for p in std::iter::once(&daemons.controller)
        .chain(&daemons.speakers)
        .chain(&daemons.vxlan)
    {
        assert!(p.is_running(), "{} exited\n{}", p.name(), daemons.logs());
    }
    // Every request the daemons made was one the stand-in serves: none malformed, of a
    // method or patch type it lacks, or rejected as invalid.
    let refused: Vec<_> = api
        .requests()
        .into_iter()
        .filter(|r| matches!(r.status, 400 | 405 | 415 | 422) || r.status >= 500)
        .collect();
    assert!(refused.is_empty(), "requests refused: {refused:?}");
    drop(daemons);
    drop(api);
}
