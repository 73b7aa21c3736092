//! Running metalnet's own daemons on the demo site, on one shared state directory (the
//! embedded default), the way the demo and the end-to-end tests use them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use metalnet::testing::{Manifest, endpoint_slice, node};

use super::demo::{DemoSite, node_v4, node_v6};
use super::pods::{self, Pod};
use super::{Lab, LabError, Process, Result, io_err};

const DEMO_MANIFESTS: &str = r#"# The demo's cluster state: edit this file (or add others) and watch metalnet react.
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata: {name: demo, namespace: metallb-system}
spec:
  addresses: ["192.0.2.200-192.0.2.219", "2001:db8:0:1::200/124"]
---
apiVersion: metallb.io/v1beta1
kind: L2Advertisement
metadata: {name: demo, namespace: metallb-system}
spec:
  ipAddressPools: [demo]
---
apiVersion: v1
kind: Namespace
metadata: {name: demo}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo}
spec:
  type: LoadBalancer
  ports: [{name: http, port: 80, protocol: TCP}]
  selector: {app: web}
"#;

/// Flannel's net-conf.json for the demo's pod network (documentation ranges).
pub const DEMO_NET_CONF: &str = r#"{"Network": "203.0.113.0/24", "SubnetLen": 26, "EnableIPv6": true, "IPv6Network": "2001:db8:100::/56", "IPv6SubnetLen": 64, "Backend": {"Type": "vxlan"}}"#;

/// metalnet-vxlan's Flannel-side flags on a lab node: the net-conf.json, `subnet.env` in the
/// node's directory, the underlay `eth0`, and Flannel's `--ip-masq`.
pub fn vxlan_flannel_args(node: &super::Host, net_conf: &Path) -> [String; 7] {
    [
        "--net-config-path".into(),
        net_conf.display().to_string(),
        "--subnet-file".into(),
        node.dir().join("subnet.env").display().to_string(),
        "--iface".into(),
        "eth0".into(),
        "--ip-masq".into(),
    ]
}

/// Node `index`'s pod subnet (its `spec.podCIDR`).
pub fn pod_cidr_v4(index: usize) -> String {
    format!("203.0.113.{}/26", index * 64)
}

pub fn pod_cidr_v6(index: usize) -> String {
    format!("2001:db8:100:{}::/64", index + 1)
}

/// The manifests the demo starts from: a pool on the site segment, an L2Advertisement, the
/// three Nodes, and one LoadBalancer Service. Plain YAML a user could `kubectl apply`.
pub fn demo_manifests(site: &DemoSite) -> String {
    let mut s = String::from(DEMO_MANIFESTS);
    for (i, host) in site.nodes.iter().enumerate() {
        let name = host.name();
        s.push_str(
            &node(name)
                .label("kubernetes.io/hostname", name)
                .pod_cidrs([pod_cidr_v4(i), pod_cidr_v6(i)])
                .internal_ip(&node_v4(i))
                .internal_ip(&node_v6(i))
                .ready()
                .document(),
        );
    }
    // The Service's pods, one per node (what kubelet and the EndpointSlice controller would
    // publish): the address host-local gives the node's first pod.
    let slice = site.nodes.iter().enumerate().fold(
        endpoint_slice("web").namespace("demo"),
        |slice, (i, host)| {
            slice.endpoint_at(
                &format!("203.0.113.{}", i * 64 + 2),
                host.name(),
                Some(true),
            )
        },
    );
    s.push_str(&slice.document());
    s.push_str(DEMO_BGP_MANIFESTS);
    s
}

/// Where the metalnet binaries are: `bin_dir` when given, else beside the running executable
/// (cargo puts every binary of the workspace in one directory).
pub fn bin_dir(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(d) = explicit {
        return Ok(d.to_path_buf());
    }
    let exe = std::env::current_exe().map_err(io_err("locating the running executable"))?;
    exe.parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| LabError::Invalid(format!("{} has no directory", exe.display())))
}

fn binary(bin_dir: &Path, name: &str) -> Result<PathBuf> {
    let p = bin_dir.join(name);
    if p.is_file() {
        Ok(p)
    } else {
        Err(LabError::Invalid(format!(
            "{} not found: build it first (cargo build --bins)",
            p.display()
        )))
    }
}

/// The running components of the demo.
pub struct Components {
    pub controller: Process,
    /// One overlay agent per node.
    pub vxlan: Vec<Process>,
    /// One pod per node, attached by the real bridge CNI plugin from the agent's subnet.env.
    pub pods: Vec<Pod>,
    /// One speaker per node (layer 2 and BGP).
    pub speakers: Vec<Process>,
}

impl Components {
    /// Stops every daemon (SIGTERM, then SIGKILL).
    pub fn stop(&self) {
        self.controller.stop();
        for p in self.vxlan.iter().chain(&self.speakers) {
            p.stop();
        }
    }
}

/// Writes the demo manifests into `state_dir`, starts the controller (on node1, as a
/// Deployment's single replica would run somewhere in the cluster) and an overlay agent on
/// every node, and attaches one pod per node.
pub fn start(lab: &Lab, site: &DemoSite, state_dir: &Path, bin_dir: &Path) -> Result<Components> {
    let manifests = state_dir.join("demo.yaml");
    std::fs::write(&manifests, demo_manifests(site))
        .map_err(io_err(format!("writing {}", manifests.display())))?;
    let controller_bin = binary(bin_dir, "metalnet-controller")?;
    let state = state_dir.display().to_string();
    let controller = site.nodes[0].spawn(
        "metalnet-controller",
        &[
            controller_bin.to_str().unwrap_or("metalnet-controller"),
            "--state-dir",
            &state,
            "--metrics-addr",
            &format!("{}:7472", node_v4(0)),
        ],
    )?;
    let vxlan = start_vxlan(lab, site, state_dir, bin_dir)?;
    let mut pods = Vec::new();
    for (i, node) in site.nodes.iter().enumerate() {
        let env_path = node.dir().join("subnet.env");
        super::wait_for(
            &format!("{}", env_path.display()),
            Duration::from_secs(20),
            || env_path.exists(),
        )
        .map_err(|e| {
            LabError::Invalid(format!(
                "{e}; metalnet-vxlan on {}:\n{}",
                node.name(),
                vxlan[i].logs()
            ))
        })?;
        let env = pods::read_subnet_env(&env_path)?;
        pods.push(pods::attach_pod(lab, node, &format!("pod{}", i + 1), &env)?);
    }
    // kube-proxy's part on each node: accept traffic for Service addresses (put on `lo`, see
    // `expose_on_nodes`) without answering ARP for them, which is the speaker's job.
    for node in &site.nodes {
        node.sysctl("net.ipv4.conf.all.arp_ignore", "1")?;
        node.sysctl("net.ipv4.conf.all.arp_announce", "2")?;
    }
    let speakers = start_speakers(site, state_dir, bin_dir)?;
    Ok(Components {
        controller,
        vxlan,
        pods,
        speakers,
    })
}

/// Starts `metalnet-vxlan` on every node with Flannel's flags.
fn start_vxlan(
    lab: &Lab,
    site: &DemoSite,
    state_dir: &Path,
    bin_dir: &Path,
) -> Result<Vec<Process>> {
    let bin = binary(bin_dir, "metalnet-vxlan")?;
    let net_conf = lab.dir().join("net-conf.json");
    std::fs::write(&net_conf, DEMO_NET_CONF)
        .map_err(io_err(format!("writing {}", net_conf.display())))?;
    let mut agents = Vec::new();
    for (i, node) in site.nodes.iter().enumerate() {
        let args = [
            bin.display().to_string(),
            "--state-dir".into(),
            state_dir.display().to_string(),
            "--node-name".into(),
            node.name().to_string(),
            "--metrics-addr".into(),
            format!("{}:7474", node_v4(i)),
        ];
        let args: Vec<String> = args
            .into_iter()
            .chain(vxlan_flannel_args(node, &net_conf))
            .collect();
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        agents.push(node.spawn("metalnet-vxlan", &argv)?);
    }
    Ok(agents)
}

/// The addresses in a Service's status as the state directory holds them (status patch
/// merged), read straight from the files so the lab needs no client of its own.
pub fn service_ingress(state_dir: &Path, namespace: &str, name: &str) -> Vec<String> {
    let path = state_dir
        .join("status/patches/Service")
        .join(namespace)
        .join(format!("{name}.yaml"));
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Vec::new();
    };
    let Ok(value) = serde_saphyr::from_str::<serde_json::Value>(&text) else {
        return Vec::new();
    };
    value
        .pointer("/status/loadBalancer/ingress")
        .and_then(|v| v.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|i| i.get("ip").and_then(|ip| ip.as_str()).map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until the Service has an address in its status.
pub fn wait_service_ingress(
    state_dir: &Path,
    namespace: &str,
    name: &str,
    timeout: Duration,
) -> Result<Vec<String>> {
    super::wait_for_value(
        &format!("Service {namespace}/{name} to get an address"),
        timeout,
        || {
            let ips = service_ingress(state_dir, namespace, name);
            (!ips.is_empty()).then_some(ips)
        },
    )
}

/// BGP mode for the demo: one BGPPeer per address family of the router (the
/// router's BIRD, [`DemoSite::router_bird_config`], expects a v4 and a v6 session from each
/// node) and a BGPAdvertisement of the demo pool. Append to the demo manifests.
pub const DEMO_BGP_MANIFESTS: &str = r#"---
apiVersion: metallb.io/v1beta2
kind: BGPPeer
metadata: {name: router-v4, namespace: metallb-system}
spec: {myASN: 64513, peerASN: 64512, peerAddress: "192.0.2.1"}
---
apiVersion: metallb.io/v1beta2
kind: BGPPeer
metadata: {name: router-v6, namespace: metallb-system}
spec: {myASN: 64513, peerASN: 64512, peerAddress: "2001:db8:0:1::1"}
---
apiVersion: metallb.io/v1beta1
kind: BGPAdvertisement
metadata: {name: demo, namespace: metallb-system}
spec:
  ipAddressPools: [demo]
"#;

/// Starts `metalnet-speaker` on every node of the demo site (as its DaemonSet would), on the
/// shared state directory, metrics on the node's address port 7473. The lead wires this into
/// the demo; the BGP lab tests use it too.
pub fn start_speakers(site: &DemoSite, state_dir: &Path, bin_dir: &Path) -> Result<Vec<Process>> {
    (0..site.nodes.len())
        .map(|i| start_speaker(site, i, state_dir, bin_dir))
        .collect()
}

/// Starts `metalnet-speaker` on node `index` (see [`start_speakers`]).
pub fn start_speaker(
    site: &DemoSite,
    index: usize,
    state_dir: &Path,
    bin_dir: &Path,
) -> Result<Process> {
    let speaker_bin = binary(bin_dir, "metalnet-speaker")?;
    let node = &site.nodes[index];
    node.spawn(
        "metalnet-speaker",
        &[
            speaker_bin.to_str().unwrap_or("metalnet-speaker"),
            "--state-dir",
            &state_dir.display().to_string(),
            "--node-name",
            node.name(),
            "--metrics-addr",
            &format!("{}:7473", node_v4(index)),
        ],
    )
}

/// kube-proxy's part, which the lab has no kube-proxy for: every node accepts traffic for a
/// Service address (on `lo`; ARP for it stays the speaker's job, see `arp_ignore`).
pub fn expose_on_nodes(site: &DemoSite, ip: &str) -> Result<()> {
    let cidr = if ip.contains(':') {
        format!("{ip}/128")
    } else {
        format!("{ip}/32")
    };
    for node in &site.nodes {
        node.add_addr("lo", &cidr)?;
    }
    Ok(())
}

/// The node announcing a Service by layer 2, from the ServiceL2Status objects the speakers
/// wrote to the state directory (see [`l2_announcers`]).
pub fn l2_announcer(state_dir: &Path, namespace: &str, name: &str) -> Option<String> {
    l2_announcers(state_dir, namespace, name).into_iter().next()
}

/// Every node with a ServiceL2Status for the Service in the state directory, sorted: one once
/// the speakers agree. Dot files (the temporary files of a write, left behind when its writer
/// was SIGKILLed) are skipped, as the state-directory backend skips them.
pub fn l2_announcers(state_dir: &Path, namespace: &str, name: &str) -> Vec<String> {
    let mut nodes = Vec::new();
    let mut stack = vec![state_dir.join("status/objects/ServiceL2Status")];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            let Ok(v) = serde_saphyr::from_str::<serde_json::Value>(&text) else {
                continue;
            };
            let st = &v["status"];
            if st["serviceNamespace"] == namespace
                && st["serviceName"] == name
                && let Some(node) = st["node"].as_str()
            {
                nodes.push(node.to_string());
            }
        }
    }
    nodes.sort();
    nodes
}
