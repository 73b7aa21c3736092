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
  ipFamilyPolicy: PreferDualStack
  ipFamilies: [IPv4, IPv6]
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10, "fd00:96::10"]
  ports: [{name: http, port: 80, targetPort: 80, nodePort: 30080, protocol: TCP}]
  selector: {app: web}
"#;

/// demo/web's cluster address and node port, as an API server would have allocated them.
pub const WEB_CLUSTER_IP: &str = "10.96.0.10";
pub const WEB_NODE_PORT: u16 = 30080;
/// The port demo/web's pods serve HTTP on (its `targetPort`).
pub const WEB_POD_PORT: u16 = 80;

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
fn demo_base_manifests(site: &DemoSite) -> String {
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
    s.push_str(DEMO_BGP_MANIFESTS);
    s
}

/// The demo's manifests with demo/web's EndpointSlice as it will be once its pods run: one
/// pod per node at the address host-local gives the node's first pod. For sites that attach
/// no pods (the demo itself writes the slice from the pods it attached, see [`start`]).
pub fn demo_manifests(site: &DemoSite) -> String {
    let predicted = |address: fn(usize) -> String| -> Vec<(String, String)> {
        site.nodes
            .iter()
            .enumerate()
            .map(|(i, host)| (address(i), host.name().to_string()))
            .collect()
    };
    demo_base_manifests(site)
        + &web_endpoint_slice("IPv4", &predicted(|i| format!("203.0.113.{}", i * 64 + 2)))
        + &web_endpoint_slice("IPv6", &predicted(|i| format!("2001:db8:100:{}::2", i + 1)))
}

/// demo/web's EndpointSlice of one family (`IPv4`, `IPv6`: `web-ipv4`, `web-ipv6`), as the
/// EndpointSlice controller publishes it: one ready endpoint per (pod address, node), port
/// `http` [`WEB_POD_PORT`]/TCP.
pub fn web_endpoint_slice(address_type: &str, endpoints: &[(String, String)]) -> String {
    endpoints
        .iter()
        .fold(
            endpoint_slice("web")
                .namespace("demo")
                .name(&format!("web-{}", address_type.to_ascii_lowercase()))
                .address_type(address_type)
                .field(
                    "ports",
                    serde_json::json!([{"name": "http", "port": WEB_POD_PORT, "protocol": "TCP"}]),
                ),
            |slice, (address, node)| slice.endpoint_at(address, node, Some(true)),
        )
        .document()
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
    std::fs::write(&manifests, demo_base_manifests(site))
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
    // The endpoint controller's part: the Service's pods, once they have their addresses
    // (before the speakers start, which announce only Services with a ready endpoint).
    let endpoints = |address: fn(&Pod) -> Option<&String>| -> Vec<(String, String)> {
        pods.iter()
            .zip(&site.nodes)
            .filter_map(|(pod, node)| Some((address(pod)?.clone(), node.name().to_string())))
            .collect()
    };
    let slices = web_endpoint_slice("IPv4", &endpoints(|p| p.v4.as_ref()))
        + &web_endpoint_slice("IPv6", &endpoints(|p| p.v6.as_ref()));
    let slice_path = state_dir.join("endpoints.yaml");
    std::fs::write(&slice_path, slices)
        .map_err(io_err(format!("writing {}", slice_path.display())))?;
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

/// demo/web's pods: the text each answers (`pod1 on node1`), also how the check tells which
/// pod answered.
pub fn web_answer(pod: &Pod, node: &super::Host) -> String {
    format!("{} on {}", pod.host.name(), node.name())
}

/// A minimal HTTP/1.1 server for the demo's pods: answers every request on `listen` with
/// `text` and closes the connection. Runs until the process is killed.
pub fn serve_http(listen: std::net::SocketAddr, text: &str) -> std::io::Result<()> {
    serve_http_on(std::net::TcpListener::bind(listen)?, text)
}

/// [`serve_http`] on a bound listener.
pub fn serve_http_on(listener: std::net::TcpListener, text: &str) -> std::io::Result<()> {
    use std::io::{Read, Write};
    let body = format!("{text}\n");
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let response = response.clone();
        // One thread per connection: a client that sends nothing cannot block the others.
        std::thread::spawn(move || {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 16 * 1024 {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let _ = stream.write_all(response.as_bytes());
        });
    }
    Ok(())
}

/// Starts demo/web's HTTP server in every pod (`program serve-http`, i.e. `metalnet-lab`),
/// listening on [`WEB_POD_PORT`] (IPv4 and IPv6), answering [`web_answer`].
pub fn start_web(site: &DemoSite, pods: &[Pod], program: &Path) -> Result<Vec<Process>> {
    let listen = format!("[::]:{WEB_POD_PORT}");
    pods.iter()
        .zip(&site.nodes)
        .map(|(pod, node)| {
            pod.host.spawn(
                "web",
                &[
                    &program.display().to_string(),
                    "serve-http",
                    "--listen",
                    &listen,
                    "--text",
                    &web_answer(pod, node),
                ],
            )
        })
        .collect()
}

/// What one node's service proxy owns outside its network namespace: a bpffs of its own
/// (maps and links are pinned there) and a cgroup of its own under the cgroup2 mount (the
/// socket hooks; never the machine's root cgroup). Unmounted and removed when dropped, after
/// the proxy has stopped.
#[derive(Debug)]
pub struct ProxyNodeDirs {
    pub bpf_dir: PathBuf,
    pub cgroup: PathBuf,
}

impl ProxyNodeDirs {
    fn create(lab: &Lab, node: &super::Host, cgroup2: &Path) -> Result<ProxyNodeDirs> {
        let cgroup = cgroup2.join(format!("{}-{}", lab.prefix(), node.name()));
        std::fs::create_dir(&cgroup).map_err(io_err(format!("creating {}", cgroup.display())))?;
        let bpf_dir = node.dir().join("bpffs");
        // From here on, drop removes what exists.
        let dirs = ProxyNodeDirs { bpf_dir, cgroup };
        std::fs::create_dir(&dirs.bpf_dir)
            .map_err(io_err(format!("creating {}", dirs.bpf_dir.display())))?;
        super::run(&[
            "mount",
            "-t",
            "bpf",
            "bpf",
            &dirs.bpf_dir.display().to_string(),
        ])?;
        Ok(dirs)
    }
}

impl Drop for ProxyNodeDirs {
    fn drop(&mut self) {
        let bpf = self.bpf_dir.display().to_string();
        if is_mount_point(&self.bpf_dir) && super::run(&["umount", &bpf]).is_err() {
            // Busy (a process still has a pinned object open): detach it now, freed later.
            let _ = super::run(&["umount", "-l", &bpf]);
        }
        let _ = std::fs::remove_dir(&self.bpf_dir);
        // rmdir fails while a process is still in the cgroup: the proxy's exit can lag.
        let _ = super::wait_for(
            &format!("removing {}", self.cgroup.display()),
            Duration::from_secs(3),
            || match std::fs::remove_dir(&self.cgroup) {
                Ok(()) => true,
                Err(e) => e.kind() == std::io::ErrorKind::NotFound,
            },
        );
    }
}

/// Whether `path` is a mount point in this process's mount namespace.
fn is_mount_point(path: &Path) -> bool {
    let target = path.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo").is_ok_and(|text| {
        text.lines()
            .any(|l| l.split_whitespace().nth(4) == Some(target.as_str()))
    })
}

/// The running service proxy of the demo: an HTTP server in every pod and
/// `metalnet-router --run-service-proxy` on every node.
pub struct ServiceProxy {
    /// One per pod, in pod order.
    pub web: Vec<Process>,
    /// One per node, in node order.
    pub proxies: Vec<Process>,
    /// Declared after the processes: dropped (unmounted, removed) once they have stopped.
    pub dirs: Vec<ProxyNodeDirs>,
    /// The `metalnet-router` binary (for `explain` and `dump`).
    pub router: PathBuf,
}

impl ServiceProxy {
    /// Stops the proxies (SIGTERM keeps their maps and attachments, as a restart would) and
    /// the web servers. The bpffs mounts and cgroups go when this is dropped.
    pub fn stop(&self) {
        for p in self.proxies.iter().chain(&self.web) {
            p.stop();
        }
    }

    /// Fails, naming the nodes and with the logs, when a proxy has exited (a daemon runs until
    /// it is stopped: an exit is a refused flag or a failed start).
    pub fn check_running(&self) -> Result<()> {
        let exited: Vec<String> = self
            .proxies
            .iter()
            .enumerate()
            .filter(|(_, p)| !p.is_running())
            .map(|(i, _)| format!("node{}", i + 1))
            .collect();
        if exited.is_empty() {
            Ok(())
        } else {
            Err(LabError::Invalid(format!(
                "metalnet-router --run-service-proxy exited on {}:\n{}",
                exited.join(", "),
                self.logs()
            )))
        }
    }

    /// What the proxy on demo node `index` says about demo/web and its maps
    /// (`metalnet-router explain service demo/web` and `dump`, asked through its metrics
    /// port): for error messages.
    pub fn diagnose(&self, site: &DemoSite, index: usize) -> String {
        let Some(node) = site.nodes.get(index) else {
            return format!("no demo node {index}");
        };
        let router = self.router.display().to_string();
        let addr = format!("{}:7475", node_v4(index));
        [
            vec!["explain", "service", "demo/web", "--router", &addr],
            vec!["dump", "--router", &addr],
        ]
        .into_iter()
        .map(|args| {
            let mut argv = vec![router.as_str()];
            argv.extend(args.iter().copied());
            let text = match node.exec_status(&argv) {
                Ok(o) => format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                ),
                Err(e) => e.to_string(),
            };
            format!(
                "--- metalnet-router {} on {} ---\n{text}",
                args.join(" "),
                node.name()
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
    }

    /// The proxy's data path counter `event` on demo node `index`
    /// (`metalnet_proxy_datapath_total`, read from its metrics; `None` when unreadable).
    pub fn datapath_counter(&self, site: &DemoSite, index: usize, event: &str) -> Option<u64> {
        let url = format!("http://{}:7475/metrics", node_v4(index));
        let text = site
            .nodes
            .get(index)?
            .exec_ok(&["curl", "-sS", "--max-time", "2", &url])
            .ok()?;
        datapath_counter_in(&text, event)
    }

    /// Every proxy's log, headed by its node.
    pub fn logs(&self) -> String {
        self.proxies
            .iter()
            .enumerate()
            .map(|(i, p)| format!("--- metalnet-router on node{} ---\n{}", i + 1, p.logs()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The flags of the service proxy on demo node `index` (see the router's `--help`): the proxy
/// alone (`--run-router=false`), the shared state directory, its bpffs and cgroup, the pod
/// network as the cluster CIDRs, metrics on the node's address.
pub fn proxy_args(index: usize, node: &str, state_dir: &Path, dirs: &ProxyNodeDirs) -> Vec<String> {
    [
        "--run-router=false",
        "--run-service-proxy",
        "--state-dir",
        &state_dir.display().to_string(),
        "--node-name",
        node,
        "--metrics-addr",
        &format!("{}:7475", node_v4(index)),
        "--bpf-dir",
        &dirs.bpf_dir.display().to_string(),
        "--cgroup-root",
        &dirs.cgroup.display().to_string(),
        "--cluster-cidr",
        "203.0.113.0/24,2001:db8:100::/56",
    ]
    .into_iter()
    .map(str::to_string)
    .collect()
}

/// Starts demo/web's HTTP servers in the pods (`web_program serve-http`) and the service
/// proxy on every node, each with a bpffs and a cgroup of its own.
pub fn start_service_proxy(
    lab: &Lab,
    site: &DemoSite,
    pods: &[Pod],
    state_dir: &Path,
    bin_dir: &Path,
    web_program: &Path,
) -> Result<ServiceProxy> {
    let router = binary(bin_dir, "metalnet-router")?;
    let cgroup2 = super::proxy::cgroup2_mount()?;
    let web = start_web(site, pods, web_program)?;
    let mut proxy = ServiceProxy {
        web,
        proxies: Vec::new(),
        dirs: Vec::new(),
        router: router.clone(),
    };
    // `ip netns exec` (how lab processes start) gives the process a mount namespace with a
    // /sys of its own, where the bpffs and the cgroup2 mount are missing: the proxy goes
    // back to the lab's mount namespace and keeps only the node's network namespace.
    let mount_ns = format!("--mount=/proc/{}/ns/mnt", std::process::id());
    for (i, node) in site.nodes.iter().enumerate() {
        let dirs = ProxyNodeDirs::create(lab, node, &cgroup2)?;
        let mut argv = vec![
            "nsenter".to_string(),
            mount_ns.clone(),
            "--".to_string(),
            router.display().to_string(),
        ];
        argv.extend(proxy_args(i, node.name(), state_dir, &dirs));
        proxy.dirs.push(dirs);
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        proxy.proxies.push(node.spawn("metalnet-router", &argv)?);
    }
    Ok(proxy)
}

/// `metalnet_proxy_datapath_total{event="EVENT"}` in a Prometheus text exposition.
pub fn datapath_counter_in(metrics: &str, event: &str) -> Option<u64> {
    let series = format!("metalnet_proxy_datapath_total{{event=\"{event}\"}}");
    metrics.lines().find_map(|l| {
        let value = l.strip_prefix(&series)?;
        value.trim().parse::<f64>().ok().map(|v| v as u64)
    })
}

/// The next hop (an address) in `ip route get` output (`... via 192.0.2.12 dev eth0 ...`).
pub fn route_get_via(output: &str) -> Option<String> {
    let mut words = output.split_whitespace();
    words.find(|w| *w == "via")?;
    words.next().map(str::to_string)
}

/// `TcpInCsumErrors` from a `/proc/net/snmp` text (the `Tcp:` header and value lines).
pub fn tcp_in_csum_errors(snmp: &str) -> Option<u64> {
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let (header, values) = (tcp.next()?, tcp.next()?);
    let column = header
        .split_whitespace()
        .position(|h| h == "InCsumErrors")?;
    values.split_whitespace().nth(column)?.parse().ok()
}

/// Turns TX and RX checksum offload off on every veth of the lab (hosts and switches): veth
/// verifies no L4 checksum otherwise, so a wrong NAT rewrite would go unnoticed.
pub fn checksum_offloads_off(lab: &Lab) -> Result<()> {
    for netns in lab.namespaces() {
        let out = super::run(&["ip", "-n", &netns, "-j", "link", "show", "type", "veth"])?;
        let links: serde_json::Value =
            serde_json::from_slice(&out.stdout).map_err(|e| LabError::Parse {
                what: format!("`ip -j link show type veth` in {netns}"),
                reason: e.to_string(),
            })?;
        for name in links
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| l["ifname"].as_str())
        {
            super::run(&[
                "ip", "netns", "exec", &netns, "ethtool", "-K", name, "tx", "off", "rx", "off",
            ])?;
        }
    }
    Ok(())
}

/// `TcpInCsumErrors` of a host (0 when the data path's rewrites keep checksums right).
pub fn host_tcp_in_csum_errors(host: &super::Host) -> Result<u64> {
    let snmp = host.exec_ok(&["cat", "/proc/net/snmp"])?;
    tcp_in_csum_errors(&snmp).ok_or_else(|| LabError::Parse {
        what: format!("/proc/net/snmp of {}", host.name()),
        reason: "no Tcp InCsumErrors".into(),
    })
}

/// What the demo's HTTP step saw.
#[derive(Debug, Clone)]
pub struct HttpCheck {
    /// `http://VIP/` (brackets around an IPv6 address).
    pub url: String,
    /// The node the router's ECMP route sends the remote client's traffic to, and its index.
    pub delivered_to: String,
    pub delivered_index: usize,
    /// Each answer (`pod2 on node2`) and how many requests got it.
    pub answers: std::collections::BTreeMap<String, usize>,
    pub requests: usize,
    /// Requests that got no answer (after the first answer came).
    pub failed: usize,
}

impl HttpCheck {
    /// Whether an answer came from a pod on a node other than the one BGP delivered to,
    /// i.e. the proxy sent it on over the overlay.
    pub fn crossed_nodes(&self) -> bool {
        self.answers
            .keys()
            .any(|a| a.rsplit(" on ").next() != Some(self.delivered_to.as_str()))
    }
}

/// The remote client (behind the BGP router) asks `http://VIP/` `requests` times; the router
/// delivers to one node (ECMP hashes addresses, and for IPv6 the flow label the remote
/// client leaves at 0 and the protocol, so the same one every time: `ip route get` on the
/// router names it) and that node's proxy picks the pod.
/// Waits up to `timeout` for the first answer (the proxies program their maps at start).
pub fn http_through_proxy(
    site: &DemoSite,
    vip: &str,
    requests: usize,
    timeout: Duration,
) -> Result<HttpCheck> {
    let url = if vip.contains(':') {
        format!("http://[{vip}]/")
    } else {
        format!("http://{vip}/")
    };
    let remote_addr = if vip.contains(':') {
        super::demo::REMOTE_V6
    } else {
        super::demo::REMOTE_V4
    };
    // The protocol goes into the IPv6 hash (next header): ask for a TCP flow.
    let route = site.router.exec_ok(&[
        "ip",
        "route",
        "get",
        vip,
        "from",
        remote_addr,
        "iif",
        "eth1",
        "ipproto",
        "tcp",
    ])?;
    let via = route_get_via(&route).ok_or_else(|| LabError::Parse {
        what: format!("the router's route to {vip}: {route:?}"),
        reason: "no next hop".into(),
    })?;
    let delivered_index = (0..site.nodes.len())
        .find(|&i| node_v4(i) == via || node_v6(i) == via)
        .ok_or_else(|| LabError::Invalid(format!("the router sends {vip} to {via}, no node")))?;
    let delivered_to = site.nodes[delivered_index].name().to_string();
    let curl = || -> Option<String> {
        let out = site
            .remote
            .exec_timeout(
                &["curl", "-sS", "--max-time", "2", &url],
                Duration::from_secs(3),
            )
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (!text.is_empty()).then_some(text)
    };
    let first = super::wait_for_value(&format!("an answer from {url}"), timeout, curl)?;
    let mut answers = std::collections::BTreeMap::new();
    *answers.entry(first).or_insert(0) += 1;
    let mut failed = 0;
    for _ in 1..requests {
        match curl() {
            Some(answer) => *answers.entry(answer).or_insert(0) += 1,
            None => failed += 1,
        }
    }
    Ok(HttpCheck {
        url,
        delivered_to,
        delivered_index,
        answers,
        requests,
        failed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_next_hop_of_route_get() {
        let out = "192.0.2.200 from 198.51.100.100 via 192.0.2.12 dev eth0 iif eth1 \n    cache \n";
        assert_eq!(route_get_via(out).as_deref(), Some("192.0.2.12"));
        assert_eq!(route_get_via("192.0.2.200 dev eth0 src 192.0.2.1"), None);
    }

    #[test]
    fn reads_a_datapath_counter() {
        let text = "# TYPE metalnet_proxy_datapath counter\n\
metalnet_proxy_datapath_total{event=\"lb_new\"} 15\n\
metalnet_proxy_datapath_total{event=\"rev_nat\"} 73\n";
        assert_eq!(datapath_counter_in(text, "lb_new"), Some(15));
        assert_eq!(datapath_counter_in(text, "rev_nat"), Some(73));
        assert_eq!(datapath_counter_in(text, "reject"), None);
    }

    #[test]
    fn reads_tcp_checksum_errors() {
        let snmp = "Ip: Forwarding DefaultTTL\nIp: 1 64\n\
Tcp: RtoAlgorithm RtoMin InErrs OutRsts InCsumErrors\nTcp: 1 200 0 3 7\n";
        assert_eq!(tcp_in_csum_errors(snmp), Some(7));
        assert_eq!(tcp_in_csum_errors("Ip: 1 64\n"), None);
    }

    #[test]
    fn an_answer_from_another_node_crossed_the_overlay() {
        let check = |answers: &[&str]| HttpCheck {
            url: "http://192.0.2.200/".into(),
            delivered_to: "node2".into(),
            delivered_index: 1,
            answers: answers.iter().map(|a| (a.to_string(), 1)).collect(),
            requests: answers.len(),
            failed: 0,
        };
        assert!(!check(&["pod2 on node2"]).crossed_nodes());
        assert!(check(&["pod2 on node2", "pod3 on node3"]).crossed_nodes());
    }

    #[test]
    fn the_web_slice_names_the_pods_nodes_and_port() {
        let yaml = web_endpoint_slice(
            "IPv4",
            &[
                ("203.0.113.2".into(), "node1".into()),
                ("203.0.113.66".into(), "node2".into()),
            ],
        );
        let v: serde_json::Value =
            serde_saphyr::from_str(yaml.trim_start_matches("---\n")).unwrap();
        assert_eq!(v["metadata"]["namespace"], "demo");
        assert_eq!(v["metadata"]["name"], "web-ipv4");
        assert_eq!(v["addressType"], "IPv4");
        assert_eq!(v["metadata"]["labels"]["kubernetes.io/service-name"], "web");
        assert_eq!(v["ports"][0]["port"], 80);
        assert_eq!(v["endpoints"][1]["addresses"][0], "203.0.113.66");
        assert_eq!(v["endpoints"][1]["nodeName"], "node2");
        assert_eq!(v["endpoints"][1]["conditions"]["ready"], true);
    }

    #[test]
    fn the_web_server_answers_with_its_text() {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || serve_http_on(listener, "pod1 on node1"));
        let mut conn = std::net::TcpStream::connect(addr).unwrap();
        conn.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut answer = String::new();
        conn.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(answer.ends_with("\r\n\r\npod1 on node1\n"), "{answer}");
    }
}
