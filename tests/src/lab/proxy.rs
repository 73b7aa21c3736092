//! A cluster for `metalnet-router --run-service-proxy`: node namespaces on one segment, pods
//! as namespaces behind a bridge on their node, each pod running a real server that answers
//! with its own name, an outside client on the segment, one proxy per node.
//!
//! Addresses (documentation ranges for hosts; cluster ranges only inside the namespaces):
//!
//! - segment 192.0.2.0/24 and 2001:db8:0:1::/64: node `k` (1-based, named `node<k>`) is
//!   `.10+k` / `::<10+k>`; the outside client is `.100` / `::100` with a second address
//!   `.101` / `::101` (a client outside `loadBalancerSourceRanges`);
//! - pods of node `k`: 10.244.k.0/24 and fd00:244:k::/64 on the node's bridge `cni0`
//!   (gateway `.1` / `::1`), pod `j` of the node at `.10+j` / `::<10+j>`; every node routes the
//!   other nodes' pod CIDRs via them;
//! - Service addresses: ClusterIPs in 10.96.0.0/12 and fd00:96::/108, LoadBalancer addresses in
//!   203.0.113.0/24 and 2001:db8:0:203::/64, externalIPs in 198.51.100.0/24 and
//!   2001:db8:0:198::/64; the client routes all of them via one node ([`ProxyCluster::route_client_via`]).
//!
//! Every node has a cgroup of its own under the cgroup2 mount (its socket-LB hooks go there,
//! never on the machine's root cgroup); the node's processes and its pods join it. Every node
//! has a private bpffs mount in the lab directory for `--bpf-dir`. The proxy runs under
//! `nsenter --net` semantics: `ip netns exec` remounts /sys, which would hide the cgroup2
//! mount, so processes that need the machine's mounts re-enter the test's mount namespace.
//!
//! Every veth has its checksum offloads off: veth otherwise never verifies L4 checksums, so a
//! wrong rewrite by the data path would go unnoticed; [`ProxyCluster::csum_errors`] reads the
//! counters that catch it.
//!
//! Dropping the cluster stops the proxies, every process, deletes the namespaces, unmounts
//! the bpffs mounts and removes the cgroups, also while unwinding from a failed test.

use super::{Host, Lab, LabError, Process, Result, Switch, io_err, run, wait_for};
use metalnet::testing::{Manifest, node, yaml_stream};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The servers' and clients' script.
const PROBE_PY: &str = include_str!("proxy/probe.py");
/// The port every pod server listens on (TCP, UDP and SCTP when the kernel has it).
pub const SERVER_PORT: u16 = 8080;
/// Where every proxy serves its metrics and debug endpoints, inside its node namespace.
pub const METRICS_ADDR: &str = "127.0.0.1:7475";
/// The proxy's `--cluster-cidr`.
pub const CLUSTER_CIDRS: &str = "10.244.0.0/16,fd00:244::/48";
/// The outside client's addresses, and its second pair (for source ranges).
pub const CLIENT_V4: &str = "192.0.2.100";
pub const CLIENT_V6: &str = "2001:db8:0:1::100";
pub const CLIENT_ALT_V4: &str = "192.0.2.101";
pub const CLIENT_ALT_V6: &str = "2001:db8:0:1::101";
/// The prefixes the client routes via a node.
const CLIENT_ROUTED: [&str; 6] = [
    "10.96.0.0/12",
    "203.0.113.0/24",
    "198.51.100.0/24",
    "fd00:96::/108",
    "2001:db8:0:203::/64",
    "2001:db8:0:198::/64",
];

/// Where a probe runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum At {
    /// Pod `i` (index in [`ProxyCluster::pods`]), inside its node's cgroup (socket-LB applies).
    Pod(usize),
    /// A process of node `i` (0-based), inside the node's cgroup.
    Node(usize),
    /// The outside client: no socket-LB, the per-packet path of the node it routes through.
    Client,
}

/// One node.
pub struct ProxyNode {
    pub name: String,
    pub host: Host,
    pub v4: String,
    pub v6: String,
    /// The node's cgroup (`--cgroup-root`).
    pub cgroup: PathBuf,
    /// The node's bpffs mount (`--bpf-dir`).
    pub bpf_dir: PathBuf,
    proxy: Option<Process>,
    pods: usize,
}

impl ProxyNode {
    /// The running proxy, when one runs.
    pub fn proxy(&self) -> Option<&Process> {
        self.proxy.as_ref()
    }
}

/// One pod: a namespace behind the node's bridge, running the probe server.
pub struct ProxyPod {
    /// The pod's name; its server answers with it.
    pub name: String,
    pub host: Host,
    /// Index of its node.
    pub node: usize,
    pub v4: String,
    pub v6: String,
    server: Process,
}

impl ProxyPod {
    /// The pod's address of the family of `like` (an address or a prefix).
    pub fn ip_like(&self, like: &str) -> &str {
        if like.contains(':') {
            &self.v6
        } else {
            &self.v4
        }
    }
    pub fn server(&self) -> &Process {
        &self.server
    }
}

/// One probe's result (a connection or a datagram).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Answer {
    /// The server's line: `NAME PEER_IP PEER_PORT`.
    pub answer: Option<String>,
    /// What the client's socket names as its peer (`getpeername`, or `recvfrom`'s address).
    pub peer: Option<String>,
    /// The errno name (`ECONNREFUSED`, `timeout`, ...) when it failed.
    pub error: Option<String>,
    /// Milliseconds the probe took.
    pub ms: f64,
}

impl Answer {
    fn parse(line: &str) -> Result<Answer> {
        let v: Value = serde_json::from_str(line).map_err(|e| LabError::Parse {
            what: format!("probe output {line:?}"),
            reason: e.to_string(),
        })?;
        let s = |k: &str| v[k].as_str().map(str::to_string);
        Ok(Answer {
            answer: s("answer"),
            peer: s("peer"),
            error: s("error"),
            ms: v["ms"].as_f64().unwrap_or_default(),
        })
    }

    /// The name of the pod that answered.
    pub fn backend(&self) -> Option<&str> {
        self.answer.as_deref()?.split_whitespace().next()
    }

    /// The source address the backend saw.
    pub fn source(&self) -> Option<&str> {
        self.answer.as_deref()?.split_whitespace().nth(1)
    }

    /// The address part of [`Answer::peer`].
    pub fn peer_ip(&self) -> Option<&str> {
        self.peer.as_deref()?.split_whitespace().next()
    }

    pub fn ok(&self) -> bool {
        self.answer.is_some()
    }
}

/// Options of a TCP probe.
#[derive(Debug, Clone)]
pub struct Probe {
    pub count: usize,
    /// A fixed source port (0: any); connections close with RST so it is reusable at once.
    pub sport: u16,
    /// A source address to bind (empty: the kernel's choice).
    pub src: String,
    /// Per-connection timeout in seconds.
    pub timeout: f64,
    /// `tcp` or `sctp`.
    pub proto: &'static str,
}

impl Default for Probe {
    fn default() -> Self {
        Probe {
            count: 1,
            sport: 0,
            src: String::new(),
            timeout: 2.0,
            proto: "tcp",
        }
    }
}

impl Probe {
    pub fn count(n: usize) -> Probe {
        Probe {
            count: n,
            ..Probe::default()
        }
    }
    fn args(&self) -> Vec<String> {
        let mut a = vec![
            "--count".into(),
            self.count.to_string(),
            "--timeout".into(),
            self.timeout.to_string(),
            "--proto".into(),
            self.proto.into(),
        ];
        if self.sport != 0 {
            a.extend(["--sport".into(), self.sport.to_string()]);
        }
        if !self.src.is_empty() {
            a.extend(["--src".into(), self.src.clone()]);
        }
        a
    }
}

/// An endpoint as an endpoint controller writes it: a pod and its conditions.
#[derive(Debug, Clone, Copy)]
pub struct Ep {
    pub pod: usize,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
}

impl Ep {
    pub fn ready(pod: usize) -> Ep {
        Ep {
            pod,
            ready: true,
            serving: true,
            terminating: false,
        }
    }
    /// Serving but terminating (not ready): used only when no ready endpoint remains.
    pub fn terminating(pod: usize) -> Ep {
        Ep {
            pod,
            ready: false,
            serving: true,
            terminating: true,
        }
    }
    /// Terminating and no longer serving.
    pub fn gone(pod: usize) -> Ep {
        Ep {
            pod,
            ready: false,
            serving: false,
            terminating: true,
        }
    }
}

/// A Service manifest under construction (`default/NAME`), dual-stack, ports `tcp` 80 and
/// `udp` 80 to the servers' port.
#[derive(Debug, Clone)]
pub struct Svc(pub Value);

impl Svc {
    /// A ClusterIP Service with these cluster IPs (first one is `spec.clusterIP`).
    pub fn cluster_ip(name: &str, ips: &[&str]) -> Svc {
        let families: Vec<&str> = ips
            .iter()
            .map(|ip| if ip.contains(':') { "IPv6" } else { "IPv4" })
            .collect();
        Svc(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {
                "type": "ClusterIP",
                "clusterIP": ips.first().copied().unwrap_or("None"),
                "clusterIPs": ips,
                "ipFamilies": families,
                "ipFamilyPolicy": if ips.len() > 1 { "RequireDualStack" } else { "SingleStack" },
                "ports": [
                    {"name": "tcp", "port": 80, "targetPort": SERVER_PORT, "protocol": "TCP"},
                    {"name": "udp", "port": 80, "targetPort": SERVER_PORT, "protocol": "UDP"},
                ],
                "sessionAffinity": "None",
                "internalTrafficPolicy": "Cluster",
            },
        }))
    }

    pub fn name(&self) -> String {
        self.0["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    fn spec(mut self, key: &str, v: Value) -> Svc {
        self.0["spec"][key] = v;
        self
    }

    /// `type: NodePort` with this node port on the `tcp` port and `np + 1` on `udp`.
    pub fn node_port(mut self, np: u16) -> Svc {
        if self.0["spec"]["type"] == "ClusterIP" {
            self.0["spec"]["type"] = json!("NodePort");
        }
        self.0["spec"]["ports"][0]["nodePort"] = json!(np);
        self.0["spec"]["ports"][1]["nodePort"] = json!(np + 1);
        self.0["spec"]["externalTrafficPolicy"] = json!("Cluster");
        self
    }

    /// `type: LoadBalancer` (with node ports) and these addresses in
    /// `status.loadBalancer.ingress`, as the controller writes them.
    pub fn load_balancer(mut self, np: u16, ips: &[&str]) -> Svc {
        self.0["spec"]["type"] = json!("LoadBalancer");
        self = self.node_port(np);
        let ingress: Vec<Value> = ips.iter().map(|ip| json!({"ip": ip})).collect();
        self.0["status"] = json!({"loadBalancer": {"ingress": ingress}});
        self
    }

    pub fn external_ips(self, ips: &[&str]) -> Svc {
        self.spec("externalIPs", json!(ips))
    }

    /// `externalTrafficPolicy: Local` with this `healthCheckNodePort`.
    pub fn etp_local(self, health_port: u16) -> Svc {
        self.spec("externalTrafficPolicy", json!("Local"))
            .spec("healthCheckNodePort", json!(health_port))
    }

    pub fn itp_local(self) -> Svc {
        self.spec("internalTrafficPolicy", json!("Local"))
    }

    /// `sessionAffinity: ClientIP` with this timeout.
    pub fn affinity(self, timeout_s: u32) -> Svc {
        self.spec("sessionAffinity", json!("ClientIP")).spec(
            "sessionAffinityConfig",
            json!({"clientIP": {"timeoutSeconds": timeout_s}}),
        )
    }

    pub fn source_ranges(self, cidrs: &[&str]) -> Svc {
        self.spec("loadBalancerSourceRanges", json!(cidrs))
    }

    pub fn label(mut self, key: &str, value: &str) -> Svc {
        self.0["metadata"]["labels"][key] = json!(value);
        self
    }

    /// Sets the `tcp` port's service port (the `udp` one keeps 80).
    pub fn tcp_port(mut self, port: u16) -> Svc {
        self.0["spec"]["ports"][0]["port"] = json!(port);
        self
    }

    /// Adds an SCTP port 80 to the servers' port.
    pub fn with_sctp(mut self) -> Svc {
        if let Some(ports) = self.0["spec"]["ports"].as_array_mut() {
            ports.push(
                json!({"name": "sctp", "port": 80, "targetPort": SERVER_PORT, "protocol": "SCTP"}),
            );
        }
        self
    }
}

/// Options of [`ProxyCluster::new`].
#[derive(Debug, Clone)]
pub struct ProxyOptions {
    pub nodes: usize,
    /// Pods per node, in node order (`pods[k]` pods on node `k`), named `<node letter><j>`:
    /// `a1`, `a2` on node1, `b1` on node2, ...
    pub pods: Vec<usize>,
}

impl ProxyOptions {
    pub fn new(pods: &[usize]) -> ProxyOptions {
        ProxyOptions {
            nodes: pods.len(),
            pods: pods.to_vec(),
        }
    }
}

/// The cluster. Dropping it cleans everything up.
pub struct ProxyCluster {
    pub nodes: Vec<ProxyNode>,
    pub pods: Vec<ProxyPod>,
    pub client: Host,
    pub sw: Switch,
    state: PathBuf,
    probe: PathBuf,
    python: String,
    /// Arguments every proxy gets after the fixed ones.
    pub common_args: Vec<String>,
    mounts: Vec<PathBuf>,
    cgroups: Vec<PathBuf>,
    via: usize,
    // Last: dropped after the processes above.
    pub lab: Lab,
}

/// The cgroup2 mount point, from /proc/self/mountinfo.
pub fn cgroup2_mount() -> Result<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(io_err("reading /proc/self/mountinfo"))?;
    parse_cgroup2_mount(&text).ok_or_else(|| LabError::Parse {
        what: "/proc/self/mountinfo".into(),
        reason: "no cgroup2 mount".into(),
    })
}

fn parse_cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        (right.split_whitespace().next()? == "cgroup2")
            .then(|| left.split_whitespace().nth(4).map(PathBuf::from))?
    })
}

/// The real python3 (not a pyenv shim, which costs a shell per start).
fn python() -> String {
    Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "python3".into())
}

/// `sh -c` script that moves itself into a cgroup (when given) and execs its arguments.
fn join_and_exec(cgroup: Option<&Path>) -> String {
    match cgroup {
        Some(cg) => format!("echo $$ > '{}/cgroup.procs' && exec \"$@\"", cg.display()),
        None => "exec \"$@\"".into(),
    }
}

/// The test process's mount namespace, which `ip netns exec` leaves (it remounts /sys).
fn own_mount_ns() -> String {
    format!("--mount=/proc/{}/ns/mnt", std::process::id())
}

/// `ethtool -K IF tx off rx off` inside a namespace.
fn offloads_off(netns: &str, ifname: &str) -> Result<()> {
    super::router::offloads_off(netns, ifname)
}

/// The family flag of an address or prefix.
fn family(s: &str) -> &'static str {
    if s.contains(':') { "-6" } else { "-4" }
}

/// `addr:port` with brackets for IPv6.
pub fn hostport(addr: &str, port: u16) -> String {
    if addr.contains(':') {
        format!("[{addr}]:{port}")
    } else {
        format!("{addr}:{port}")
    }
}

impl ProxyCluster {
    /// Builds the topology, starts the pods' servers and writes the Node manifests; no proxy
    /// runs yet.
    pub fn new(test: &str, opts: ProxyOptions) -> Result<ProxyCluster> {
        if opts.nodes == 0 || opts.nodes > 9 || opts.pods.len() != opts.nodes {
            return Err(LabError::Invalid(format!(
                "a proxy cluster has 1 to 9 nodes with a pod count each, not {} nodes and {:?}",
                opts.nodes, opts.pods
            )));
        }
        let lab = Lab::new(test)?;
        let sw = lab.switch("sw")?;
        let state = lab.dir().join("state");
        std::fs::create_dir_all(&state).map_err(io_err(format!("creating {}", state.display())))?;
        let probe = lab.dir().join("probe.py");
        std::fs::write(&probe, PROBE_PY).map_err(io_err(format!("writing {}", probe.display())))?;
        let client = lab.host("client")?;
        let mut cluster = ProxyCluster {
            nodes: Vec::new(),
            pods: Vec::new(),
            client,
            sw,
            state,
            probe,
            python: python(),
            common_args: Vec::new(),
            mounts: Vec::new(),
            cgroups: Vec::new(),
            via: 0,
            lab,
        };
        let cg_root = cgroup2_mount()?;
        for k in 1..=opts.nodes {
            cluster.add_node(k, &cg_root)?;
        }
        // Pod CIDRs of the other nodes, via them.
        for (i, n) in cluster.nodes.iter().enumerate() {
            for (j, other) in cluster.nodes.iter().enumerate() {
                if i != j {
                    n.host
                        .add_route(&format!("10.244.{}.0/24", j + 1), &other.v4)?;
                    n.host
                        .add_route(&format!("fd00:244:{}::/64", j + 1), &other.v6)?;
                }
            }
        }
        let iface = cluster.lab.connect(&cluster.client, &cluster.sw, "eth0")?;
        offloads_off(&iface.netns, &iface.name)?;
        offloads_off(&iface.peer_netns, &iface.peer_name)?;
        for a in [CLIENT_V4, CLIENT_ALT_V4] {
            cluster.client.add_addr("eth0", &format!("{a}/24"))?;
        }
        cluster
            .client
            .add_addr("eth0", &format!("{CLIENT_V6}/64"))?;
        // Deprecated: never chosen as a source unless bound (the second IPv4 address is a
        // secondary one, never chosen either).
        cluster.client.exec(&[
            "ip",
            "-6",
            "addr",
            "add",
            &format!("{CLIENT_ALT_V6}/64"),
            "dev",
            "eth0",
            "nodad",
            "preferred_lft",
            "0",
        ])?;
        cluster.route_client_via(0)?;
        for (k, count) in opts.pods.iter().enumerate() {
            for _ in 0..*count {
                cluster.add_pod(k)?;
            }
        }
        for i in 0..cluster.nodes.len() {
            cluster.write_node(i)?;
        }
        for p in 0..cluster.pods.len() {
            cluster.wait_server(p)?;
        }
        Ok(cluster)
    }

    fn add_node(&mut self, k: usize, cg_root: &Path) -> Result<()> {
        let name = format!("node{k}");
        let host = self.lab.router(&name)?;
        let iface = self.lab.connect(&host, &self.sw, "eth0")?;
        offloads_off(&iface.netns, &iface.name)?;
        offloads_off(&iface.peer_netns, &iface.peer_name)?;
        let v4 = format!("192.0.2.{}", 10 + k);
        let v6 = format!("2001:db8:0:1::{}", 10 + k);
        host.add_addr("eth0", &format!("{v4}/24"))?;
        host.add_addr("eth0", &format!("{v6}/64"))?;
        // A node forwarding back out of eth0 (to a backend on another node) must not tell the
        // client to go there directly.
        for key in ["all", "default", "eth0"] {
            host.sysctl(&format!("net.ipv4.conf.{key}.send_redirects"), "0")?;
        }
        host.exec(&["ip", "link", "add", "cni0", "type", "bridge"])?;
        host.add_addr("cni0", &format!("10.244.{k}.1/24"))?;
        host.add_addr("cni0", &format!("fd00:244:{k}::1/64"))?;
        host.set_up("cni0")?;
        let cgroup = cg_root.join(format!("{}-{name}", self.lab.prefix()));
        std::fs::create_dir(&cgroup).map_err(io_err(format!("creating {}", cgroup.display())))?;
        self.cgroups.push(cgroup.clone());
        let bpf_dir = host.dir().join("bpf");
        std::fs::create_dir_all(&bpf_dir)
            .map_err(io_err(format!("creating {}", bpf_dir.display())))?;
        run(&["mount", "-t", "bpf", "bpf", &bpf_dir.display().to_string()])?;
        self.mounts.push(bpf_dir.clone());
        self.nodes.push(ProxyNode {
            name,
            host,
            v4,
            v6,
            cgroup,
            bpf_dir,
            proxy: None,
            pods: 0,
        });
        Ok(())
    }

    /// Adds a pod on node `node` (0-based) and starts its server; returns its index.
    pub fn add_pod(&mut self, node: usize) -> Result<usize> {
        let k = node + 1;
        let j = {
            let n = &mut self.nodes[node];
            n.pods += 1;
            n.pods
        };
        let letter = (b'a' + node as u8) as char;
        let name = format!("{letter}{j}");
        let host = self.lab.host(&name)?;
        let node_host = &self.nodes[node].host;
        let port = format!("v{name}");
        let link = self.lab.wire(node_host, &port, &host, "eth0")?;
        offloads_off(&link.netns, &link.name)?;
        offloads_off(&link.peer_netns, &link.peer_name)?;
        node_host.exec(&["ip", "link", "set", &port, "master", "cni0"])?;
        // As the CNI bridge plugin with `hairpinMode: true` (Flannel's configuration): with
        // br_netfilter loaded, a pod's hairpinned reply is bridged back out of its own port.
        node_host.exec(&[
            "ip",
            "link",
            "set",
            &port,
            "type",
            "bridge_slave",
            "hairpin",
            "on",
        ])?;
        let v4 = format!("10.244.{k}.{}", 10 + j);
        let v6 = format!("fd00:244:{k}::{}", 10 + j);
        host.add_addr("eth0", &format!("{v4}/24"))?;
        host.add_addr("eth0", &format!("{v6}/64"))?;
        host.add_route("default", &format!("10.244.{k}.1"))?;
        host.add_route("default", &format!("fd00:244:{k}::1"))?;
        let server = self.spawn_in(
            &host,
            Some(&self.nodes[node].cgroup),
            "server",
            &["serve", &name, &SERVER_PORT.to_string()],
        )?;
        self.pods.push(ProxyPod {
            name,
            host,
            node,
            v4,
            v6,
            server,
        });
        Ok(self.pods.len() - 1)
    }

    /// Waits until pod `p`'s server listens.
    pub fn wait_server(&self, p: usize) -> Result<()> {
        let pod = &self.pods[p];
        wait_for(
            &format!("the server of pod {}", pod.name),
            // A python start on a loaded machine.
            Duration::from_secs(30),
            || pod.server.logs().contains("serving"),
        )
        .map_err(|e| LabError::Invalid(format!("{e}: {}", pod.server.logs())))
    }

    /// Spawns the probe script in `host` (and `cgroup`), in the test's mount namespace.
    fn spawn_in(
        &self,
        host: &Host,
        cgroup: Option<&Path>,
        name: &str,
        args: &[&str],
    ) -> Result<Process> {
        let script = join_and_exec(cgroup);
        let mnt = own_mount_ns();
        let probe = self.probe.display().to_string();
        let mut argv = vec![
            "nsenter",
            mnt.as_str(),
            "--",
            "sh",
            "-c",
            script.as_str(),
            "sh",
            self.python.as_str(),
            probe.as_str(),
        ];
        argv.extend_from_slice(args);
        host.spawn(name, &argv)
    }

    /// The state directory every proxy reads.
    pub fn state_dir(&self) -> &Path {
        &self.state
    }

    /// Node `i` (0-based).
    pub fn node(&self, i: usize) -> &ProxyNode {
        &self.nodes[i]
    }

    /// The index of the pod named `name`.
    pub fn pod(&self, name: &str) -> usize {
        self.pods
            .iter()
            .position(|p| p.name == name)
            .unwrap_or_else(|| panic!("no pod {name} in the lab"))
    }

    /// Node addresses of the family of `like`.
    pub fn node_ip(&self, i: usize, like: &str) -> &str {
        if like.contains(':') {
            &self.nodes[i].v6
        } else {
            &self.nodes[i].v4
        }
    }

    fn write_node(&self, i: usize) -> Result<()> {
        let n = &self.nodes[i];
        let k = i + 1;
        let m = node(&n.name)
            .ready()
            .internal_ip(&n.v4)
            .internal_ip(&n.v6)
            .pod_cidrs([format!("10.244.{k}.0/24"), format!("fd00:244:{k}::/64")])
            .json();
        self.write_file(&format!("node-{}.yaml", n.name), &yaml_stream([&m]))
    }

    /// Writes a file of the state directory atomically (a hidden temporary file renamed into
    /// place: the state directory skips hidden files and never reads it half-written).
    pub fn write_file(&self, file: &str, text: &str) -> Result<()> {
        let path = self.state.join(file);
        let tmp = self.state.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, text).map_err(io_err(format!("writing {}", tmp.display())))?;
        std::fs::rename(&tmp, &path).map_err(io_err(format!("renaming to {}", path.display())))
    }

    /// Removes a file of the state directory.
    pub fn remove_file(&self, file: &str) -> Result<()> {
        let path = self.state.join(file);
        std::fs::remove_file(&path).map_err(io_err(format!("removing {}", path.display())))
    }

    /// Writes (or replaces) a Service: `svc-NAME.yaml`.
    pub fn apply_service(&self, svc: &Svc) -> Result<()> {
        self.write_file(&format!("svc-{}.yaml", svc.name()), &yaml_stream([&svc.0]))
    }

    /// The EndpointSlices an endpoint controller writes for `service` with these endpoints:
    /// one per family, ports `tcp`, `udp` (and `sctp`) to the servers' port.
    pub fn endpoint_slices(&self, service: &str, eps: &[Ep]) -> Vec<Value> {
        ["IPv4", "IPv6"]
            .iter()
            .map(|family| {
                let endpoints: Vec<Value> = eps
                    .iter()
                    .map(|ep| {
                        let pod = &self.pods[ep.pod];
                        let addr = if *family == "IPv4" { &pod.v4 } else { &pod.v6 };
                        json!({
                            "addresses": [addr],
                            "nodeName": self.nodes[pod.node].name,
                            "conditions": {"ready": ep.ready, "serving": ep.serving,
                                           "terminating": ep.terminating},
                            "targetRef": {"kind": "Pod", "namespace": "default", "name": pod.name},
                        })
                    })
                    .collect();
                let suffix = if *family == "IPv4" { "v4" } else { "v6" };
                json!({
                    "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                    "metadata": {
                        "name": format!("{service}-{suffix}"), "namespace": "default",
                        "labels": {
                            "kubernetes.io/service-name": service,
                            "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
                        },
                    },
                    "addressType": family,
                    "endpoints": endpoints,
                    "ports": [
                        {"name": "tcp", "port": SERVER_PORT, "protocol": "TCP"},
                        {"name": "udp", "port": SERVER_PORT, "protocol": "UDP"},
                        {"name": "sctp", "port": SERVER_PORT, "protocol": "SCTP"},
                    ],
                })
            })
            .collect()
    }

    /// Writes (or replaces) the EndpointSlices of `service`: `eps-NAME.yaml`.
    pub fn set_endpoints(&self, service: &str, eps: &[Ep]) -> Result<()> {
        let slices = self.endpoint_slices(service, eps);
        self.write_file(&format!("eps-{service}.yaml"), &yaml_stream(&slices))
    }

    /// A Service and its ready endpoints on these pods.
    pub fn apply(&self, svc: &Svc, pods: &[usize]) -> Result<()> {
        let eps: Vec<Ep> = pods.iter().map(|p| Ep::ready(*p)).collect();
        self.set_endpoints(&svc.name(), &eps)?;
        self.apply_service(svc)
    }

    /// Routes the client's Service prefixes via node `i`.
    pub fn route_client_via(&mut self, i: usize) -> Result<()> {
        for prefix in CLIENT_ROUTED {
            let via = self.node_ip(i, prefix).to_string();
            self.client.exec(&[
                "ip",
                family(prefix),
                "route",
                "replace",
                prefix,
                "via",
                &via,
            ])?;
        }
        self.via = i;
        Ok(())
    }

    /// The node the client routes through.
    pub fn client_via(&self) -> usize {
        self.via
    }

    /// The proxy's command line for node `i`.
    pub fn proxy_args(&self, i: usize, extra: &[&str]) -> Result<Vec<String>> {
        let bin = super::router::router_binary()?;
        let n = &self.nodes[i];
        let mut args = vec![
            bin.display().to_string(),
            "--run-router=false".into(),
            "--run-service-proxy".into(),
            "--state-dir".into(),
            self.state.display().to_string(),
            "--node-name".into(),
            n.name.clone(),
            "--bpf-dir".into(),
            n.bpf_dir.display().to_string(),
            "--cgroup-root".into(),
            n.cgroup.display().to_string(),
            "--cluster-cidr".into(),
            CLUSTER_CIDRS.into(),
            "--metrics-addr".into(),
            METRICS_ADDR.into(),
        ];
        args.extend(self.common_args.iter().cloned());
        args.extend(extra.iter().map(|s| s.to_string()));
        Ok(args)
    }

    /// Starts the proxy of node `i` (stopping a previous one first) and waits until it is
    /// ready (`/readyz`).
    pub fn start_proxy(&mut self, i: usize, extra: &[&str]) -> Result<()> {
        self.stop_proxy(i);
        let args = self.proxy_args(i, extra)?;
        let mnt = own_mount_ns();
        // `ip netns exec` (how processes are spawned) remounts /sys, hiding the cgroup2 mount:
        // the proxy goes back to the test's mount namespace and keeps only the network one.
        let mut argv: Vec<&str> = vec!["nsenter", mnt.as_str(), "--"];
        argv.extend(args.iter().map(String::as_str));
        let env = [("RUST_LOG", "info")];
        let p = self.nodes[i]
            .host
            .spawn_env("metalnet-router", &argv, &env)?;
        self.nodes[i].proxy = Some(p);
        self.wait_ready(i)
    }

    /// Starts every node's proxy.
    pub fn start_all(&mut self, extra: &[&str]) -> Result<()> {
        super::router::router_binary()?;
        for i in 0..self.nodes.len() {
            self.start_proxy(i, extra)?;
        }
        Ok(())
    }

    /// Waits until node `i`'s proxy answers `/readyz` with 200.
    pub fn wait_ready(&self, i: usize) -> Result<()> {
        let n = &self.nodes[i];
        let url = format!("http://{METRICS_ADDR}/readyz");
        let r = wait_for(
            &format!("the proxy of {} to be ready", n.name),
            Duration::from_secs(30),
            || {
                if !n.proxy.as_ref().is_some_and(Process::is_running) {
                    return true;
                }
                n.host
                    .exec_ok(&[
                        "curl",
                        "-s",
                        "-o",
                        "/dev/null",
                        "-w",
                        "%{http_code}",
                        "-m",
                        "1",
                        &url,
                    ])
                    .is_ok_and(|code| code.trim() == "200")
            },
        );
        let running = n.proxy.as_ref().is_some_and(Process::is_running);
        match r {
            Ok(()) if running => Ok(()),
            Ok(()) => Err(LabError::Invalid(format!(
                "the proxy of {} exited: {}",
                n.name,
                self.logs_tail(40)
            ))),
            Err(e) => Err(LabError::Invalid(format!("{e}\n{}", self.logs_tail(40)))),
        }
    }

    /// SIGTERM (then SIGKILL after 10 s) and waits for the exit.
    pub fn stop_proxy(&mut self, i: usize) {
        if let Some(p) = self.nodes[i].proxy.take() {
            p.stop_within(Duration::from_secs(10));
        }
    }

    /// Every proxy's logs (the last `tail` lines of each), for failure messages.
    pub fn logs_tail(&self, tail: usize) -> String {
        let mut s = String::new();
        for n in &self.nodes {
            if let Some(p) = &n.proxy {
                let logs = p.logs();
                let lines: Vec<&str> = logs.lines().collect();
                let start = lines.len().saturating_sub(tail);
                s.push_str(&format!(
                    "===== proxy {} (running: {}) =====\n{}\n",
                    n.name,
                    p.is_running(),
                    lines[start..].join("\n")
                ));
            }
        }
        s
    }

    pub fn logs(&self) -> String {
        self.logs_tail(60)
    }

    fn place(&self, from: At) -> (&Host, Option<&Path>) {
        match from {
            At::Pod(p) => {
                let pod = &self.pods[p];
                (&pod.host, Some(self.nodes[pod.node].cgroup.as_path()))
            }
            At::Node(i) => (&self.nodes[i].host, Some(self.nodes[i].cgroup.as_path())),
            At::Client => (&self.client, None),
        }
    }

    /// Runs the probe script `from` somewhere, bounded by `limit`; returns its stdout.
    pub fn run_probe(&self, from: At, args: &[String], limit: Duration) -> Result<String> {
        let (host, cgroup) = self.place(from);
        let secs = format!("{:.1}", super::patient(limit).as_secs_f64());
        let script = join_and_exec(cgroup);
        let net = format!("--net=/run/netns/{}", host.netns());
        let out = Command::new("timeout")
            .args([
                "-k", "1", &secs, "sh", "-c", &script, "sh", "nsenter", &net, "--",
            ])
            .arg(&self.python)
            .arg(&self.probe)
            .args(args)
            .output()
            .map_err(io_err(format!(
                "running the probe {args:?} in {}",
                host.netns()
            )))?;
        if !out.status.success() {
            return Err(LabError::Command {
                command: format!("probe {} in {}", args.join(" "), host.netns()),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn answers(&self, from: At, args: Vec<String>, limit: Duration) -> Result<Vec<Answer>> {
        self.run_probe(from, &args, limit)?
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(Answer::parse)
            .collect()
    }

    /// TCP (or SCTP) connections `from` to `addr:port`, one answer each.
    pub fn tcp(&self, from: At, addr: &str, port: u16, probe: &Probe) -> Result<Vec<Answer>> {
        let mut args = vec!["tcp".to_string(), addr.to_string(), port.to_string()];
        args.extend(probe.args());
        let limit = Duration::from_secs_f64(5.0 + probe.count as f64 * (probe.timeout + 0.2));
        self.answers(from, args, limit)
    }

    /// One TCP connection `from` to `addr:port`.
    pub fn connect(&self, from: At, addr: &str, port: u16) -> Answer {
        self.tcp(from, addr, port, &Probe::default())
            .ok()
            .and_then(|mut v| v.pop())
            .unwrap_or_else(|| Answer {
                error: Some("the probe failed".into()),
                ..Answer::default()
            })
    }

    /// `count` UDP request/answer exchanges, each on a new socket, connected or not.
    pub fn udp(
        &self,
        from: At,
        addr: &str,
        port: u16,
        connected: bool,
        count: usize,
    ) -> Result<Vec<Answer>> {
        let mut args = vec![
            "udp".to_string(),
            addr.to_string(),
            port.to_string(),
            "--count".into(),
            count.to_string(),
        ];
        if connected {
            args.push("--connected".into());
        }
        let limit = Duration::from_secs_f64(5.0 + count as f64 * 2.2);
        self.answers(from, args, limit)
    }

    /// Connects every 20 ms until an answer (from `want` when given) comes or `deadline`
    /// passes; the answer's `ms` is the time it took.
    pub fn until(
        &self,
        from: At,
        addr: &str,
        port: u16,
        deadline: Duration,
        want: Option<&str>,
    ) -> Result<Answer> {
        let deadline = super::patient(deadline);
        let mut args = vec![
            "until".to_string(),
            addr.to_string(),
            port.to_string(),
            format!("{:.2}", deadline.as_secs_f64()),
        ];
        if let Some(w) = want {
            args.extend(["--want".into(), w.into()]);
        }
        self.answers(from, args, deadline + Duration::from_secs(5))?
            .pop()
            .ok_or_else(|| LabError::Parse {
                what: "the until probe".into(),
                reason: "no output".into(),
            })
    }

    /// Opens `n` long-lived connections (or with `udp` one connected UDP socket per `n`)
    /// `from` to `addr:port`; see [`Held`].
    pub fn hold(&self, from: At, addr: &str, port: u16, n: usize, udp: bool) -> Result<Held> {
        let (host, cgroup) = self.place(from);
        let control = self
            .lab
            .dir()
            .join(format!("hold-{}", self.lab.shared.next_id()));
        let (n_s, ctl, port_s) = (
            n.to_string(),
            control.display().to_string(),
            port.to_string(),
        );
        let mut args = vec!["hold", addr, port_s.as_str(), n_s.as_str(), ctl.as_str()];
        if udp {
            args.push("--udp");
        }
        let proc = self.spawn_in(host, cgroup, "hold", &args)?;
        Ok(Held {
            proc,
            control,
            next: 1,
        })
    }

    /// `TcpInCsumErrors` + `UdpInCsumErrors` of a namespace.
    pub fn csum_errors(netns: &str) -> Result<u64> {
        let out = run(&["ip", "netns", "exec", netns, "cat", "/proc/net/snmp"])?;
        parse_csum_errors(&String::from_utf8_lossy(&out.stdout)).ok_or_else(|| LabError::Parse {
            what: format!("/proc/net/snmp of {netns}"),
            reason: "no InCsumErrors counters".into(),
        })
    }

    /// Every namespace of the lab whose checksum error counters are not 0, with them.
    pub fn csum_error_report(&self) -> Vec<(String, u64)> {
        self.lab
            .namespaces()
            .into_iter()
            .filter_map(|ns| match Self::csum_errors(&ns) {
                Ok(0) => None,
                Ok(n) => Some((ns, n)),
                Err(_) => None,
            })
            .collect()
    }

    /// Runs `metalnet-router ARGS` inside node `i` (the subcommands ask the running proxy
    /// through its metrics endpoint); stdout, or the error with stderr.
    pub fn router_cli(&self, i: usize, args: &[&str]) -> Result<String> {
        let bin = super::router::router_binary()?;
        let bin = bin.display().to_string();
        let mut argv = vec![bin.as_str()];
        argv.extend_from_slice(args);
        self.nodes[i].host.exec_ok(&argv)
    }

    /// Node `i`'s `/metrics` text.
    pub fn metrics(&self, i: usize) -> Result<String> {
        let url = format!("http://{METRICS_ADDR}/metrics");
        self.nodes[i].host.exec_ok(&["curl", "-s", "-m", "3", &url])
    }

    /// Runs the proxy's command line of node `i` with `extra` to completion (e.g.
    /// `--cleanup-config`), in the node's network namespace only, bounded by 60 s.
    pub fn run_proxy_once(&self, i: usize, extra: &[&str]) -> Result<std::process::Output> {
        let args = self.proxy_args(i, extra)?;
        let net = format!("--net=/run/netns/{}", self.nodes[i].host.netns());
        let secs = format!(
            "{:.0}",
            super::patient(Duration::from_secs(60)).as_secs_f64()
        );
        Command::new("timeout")
            .args(["-k", "1", &secs, "nsenter", &net, "--"])
            .args(&args)
            .env("RUST_LOG", "info")
            .output()
            .map_err(io_err(format!("running {}", args.join(" "))))
    }

    /// `metalnet-router explain service NS/NAME` on node `i`.
    pub fn explain(&self, i: usize, service: &str) -> Result<String> {
        self.router_cli(i, &["explain", "service", service])
    }

    /// `metalnet-router dump` on node `i`.
    pub fn dump(&self, i: usize) -> Result<String> {
        self.router_cli(i, &["dump"])
    }

    /// An HTTP GET `from` the client to `http://addr:port/`: (status, body); status 0 when
    /// nothing answered.
    pub fn http_get(&self, addr: &str, port: u16) -> Result<(u16, String)> {
        let url = format!("http://{}/", hostport(addr, port));
        let out =
            self.client
                .exec_status(&["curl", "-s", "-m", "3", "-w", "\n%{http_code}", &url])?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", text.as_str()));
        Ok((code.trim().parse().unwrap_or(0), body.to_string()))
    }

    fn cleanup(&mut self) {
        for i in 0..self.nodes.len() {
            self.stop_proxy(i);
        }
        // Kills every process left in the namespaces and deletes them.
        self.lab.teardown();
        for m in self.mounts.drain(..) {
            if let Err(e) = run(&["umount", "-l", &m.display().to_string()]) {
                tracing::warn!(mount = %m.display(), error = %e, "unmounting the bpffs failed");
            }
        }
        let cgroups = std::mem::take(&mut self.cgroups);
        for cg in cgroups {
            remove_cgroup(&cg);
        }
    }
}

/// Moves what is left in a cgroup to its parent and removes it (retried while killed
/// processes finish exiting).
fn remove_cgroup(cg: &Path) {
    let parent_procs = cg
        .parent()
        .map(|p| p.join("cgroup.procs"))
        .unwrap_or_default();
    for _ in 0..50 {
        if let Ok(procs) = std::fs::read_to_string(cg.join("cgroup.procs")) {
            for pid in procs.split_whitespace() {
                let _ = std::fs::write(&parent_procs, pid);
            }
        }
        match std::fs::remove_dir(cg) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
    tracing::warn!(cgroup = %cg.display(), "removing the cgroup failed");
}

impl Drop for ProxyCluster {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// Sum of `InCsumErrors` over the Tcp and Udp lines of /proc/net/snmp.
fn parse_csum_errors(snmp: &str) -> Option<u64> {
    let lines: Vec<&str> = snmp.lines().collect();
    let mut total = None;
    for pair in lines.windows(2) {
        let (head, vals) = (pair[0], pair[1]);
        let Some((proto, names)) = head.split_once(':') else {
            continue;
        };
        if !matches!(proto, "Tcp" | "Udp") || !vals.starts_with(&format!("{proto}:")) {
            continue;
        }
        let Some((_, values)) = vals.split_once(':') else {
            continue;
        };
        if names
            .split_whitespace()
            .next()
            .is_some_and(|f| f.parse::<i64>().is_ok())
        {
            continue;
        }
        let idx = names.split_whitespace().position(|n| n == "InCsumErrors");
        if let Some(v) = idx.and_then(|i| values.split_whitespace().nth(i)) {
            total = Some(total.unwrap_or(0) + v.parse::<u64>().unwrap_or(0));
        }
    }
    total
}

/// Long-lived connections opened by [`ProxyCluster::hold`].
pub struct Held {
    proc: Process,
    control: PathBuf,
    next: u32,
}

/// What [`Held`] reports: after opening (`round` 0) and after each round of exchanges.
#[derive(Debug, Clone)]
pub struct HeldReport {
    /// Connections open (after opening) or that exchanged a line (after a round).
    pub ok: usize,
    /// The first errors, by errno name.
    pub errors: Vec<String>,
    /// The distinct backends that answered.
    pub answers: Vec<String>,
}

impl Held {
    fn line(&self, pick: impl Fn(&Value) -> bool, timeout: Duration) -> Result<Value> {
        let mut found = None;
        wait_for("the held connections to report", timeout, || {
            found = std::fs::read_to_string(self.proc.stdout_path())
                .unwrap_or_default()
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(|v| pick(v));
            found.is_some() || !self.proc.is_running()
        })?;
        found.ok_or_else(|| LabError::Invalid(format!("hold exited: {}", self.proc.logs())))
    }

    fn report(v: &Value, key: &str) -> HeldReport {
        let strings = |k: &str| -> Vec<String> {
            v[k].as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        };
        HeldReport {
            ok: v[key].as_u64().unwrap_or_default() as usize,
            errors: strings("errors"),
            answers: strings("answers"),
        }
    }

    /// Waits until every connection is open (or failed).
    pub fn opened(&self, timeout: Duration) -> Result<HeldReport> {
        let v = self.line(|v| v.get("opened").is_some(), timeout)?;
        Ok(Self::report(&v, "opened"))
    }

    /// One more round: a line sent and answered on every connection.
    pub fn exchange(&mut self, timeout: Duration) -> Result<HeldReport> {
        let k = self.next;
        self.next += 1;
        let flag = PathBuf::from(format!("{}.{k}", self.control.display()));
        std::fs::write(&flag, "").map_err(io_err(format!("writing {}", flag.display())))?;
        let v = self.line(|v| v["round"].as_u64() == Some(u64::from(k)), timeout)?;
        Ok(Self::report(&v, "ok"))
    }

    pub fn logs(&self) -> String {
        self.proc.logs()
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let _ = std::fs::write(format!("{}.stop", self.control.display()), "");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_mount() {
        let text = "35 24 0:30 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n\
                    41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(
            parse_cgroup2_mount(text),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            parse_cgroup2_mount("35 24 0:30 / /x rw - tmpfs tmpfs rw\n"),
            None
        );
    }

    #[test]
    fn sums_checksum_errors() {
        let snmp = "Ip: Forwarding DefaultTTL\nIp: 1 64\n\
                    Tcp: RtoAlgorithm RtoMin InErrs InCsumErrors\nTcp: 1 200 0 3\n\
                    Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors\n\
                    Udp: 5 0 0 5 0 0 2\n\
                    UdpLite: InDatagrams InCsumErrors\nUdpLite: 0 7\n";
        assert_eq!(parse_csum_errors(snmp), Some(5));
        assert_eq!(parse_csum_errors("Ip: a\nIp: 1\n"), None);
    }

    #[test]
    fn parses_answers() {
        let a = Answer::parse(
            r#"{"answer": "a1 10.244.1.10 4000", "peer": "10.96.0.10 80", "error": null, "ms": 1.5}"#,
        )
        .unwrap();
        assert_eq!(a.backend(), Some("a1"));
        assert_eq!(a.source(), Some("10.244.1.10"));
        assert_eq!(a.peer_ip(), Some("10.96.0.10"));
        assert!(a.ok());
        let e =
            Answer::parse(r#"{"answer": null, "peer": null, "error": "ECONNREFUSED", "ms": 0.2}"#)
                .unwrap();
        assert_eq!(e.error.as_deref(), Some("ECONNREFUSED"));
        assert_eq!(e.backend(), None);
        assert!(Answer::parse("nonsense").is_err());
    }

    #[test]
    fn services_carry_the_fields_kube_proxy_reads() {
        let s = Svc::cluster_ip("web", &["10.96.0.10", "fd00:96::10"])
            .load_balancer(30080, &["203.0.113.10"])
            .etp_local(32000)
            .affinity(5)
            .label("service.kubernetes.io/service-proxy-name", "other");
        assert_eq!(s.0["spec"]["type"], "LoadBalancer");
        assert_eq!(s.0["spec"]["ipFamilies"], json!(["IPv4", "IPv6"]));
        assert_eq!(s.0["spec"]["ports"][1]["nodePort"], 30081);
        assert_eq!(
            s.0["status"]["loadBalancer"]["ingress"][0]["ip"],
            "203.0.113.10"
        );
        assert_eq!(s.0["spec"]["healthCheckNodePort"], 32000);
        assert_eq!(
            s.0["spec"]["sessionAffinityConfig"]["clientIP"]["timeoutSeconds"],
            5
        );
        assert_eq!(hostport("fd00:96::10", 80), "[fd00:96::10]:80");
    }
}
