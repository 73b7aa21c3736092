//! A kube-router style cluster for `metalnet-router --run-router`: node namespaces on one
//! switch, each with one pod namespace behind a veth, Node manifests in a state directory,
//! one router process per node, and upstream BGP routers (BIRD, FRR) on the same segment.
//!
//! Addresses (documentation ranges only):
//!
//! - segment 192.0.2.0/24 and 2001:db8::/64: node `i` (1-based, named `n<i>`) is `.10+i` /
//!   `2001:db8::<10+i>`; the upstream BIRD is `.2` / `::2`, FRR `.3` / `::3`;
//! - pod CIDRs inside 198.51.100.0/24 (a /28 per node up to 16 nodes, a /30 up to 64) and
//!   `2001:db8:100:<i>::/64`; the node holds the first address of its pod CIDR on `pod0` (so
//!   the pod CIDR is routed to the pod) and the pod the second, with its default route via
//!   the node.
//!
//! Every veth has its checksum offloads off: a veth hands the peer packets with partial
//! checksums, which forwarding between namespaces would otherwise pass on unfinished.

use super::bird::{Bird, BirdConfig};
use super::frr::{Frr, FrrConfig};
use super::{BgpNeighbor, Host, Lab, LabError, Process, Result, Switch, base64, io_err, wait_for};
use ipnet::IpNet;
use metalnet::testing::{Manifest, node};
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The cluster's ASN (kube-router's default `--cluster-asn`).
pub const CLUSTER_ASN: u32 = 64512;
/// The upstream BIRD's ASN and addresses.
pub const BIRD_ASN: u32 = 64600;
pub const BIRD_V4: &str = "192.0.2.2";
pub const BIRD_V6: &str = "2001:db8::2";
/// The upstream FRR's ASN and addresses.
pub const FRR_ASN: u32 = 64601;
pub const FRR_V4: &str = "192.0.2.3";
pub const FRR_V6: &str = "2001:db8::3";
/// Where every router serves its metrics, inside its own node namespace.
pub const METRICS_ADDR: &str = "127.0.0.1:7475";
/// The route protocol kube-router (and metalnet-router) installs routes with.
pub const PROTO_KUBE_ROUTER: u8 = 17;

/// Options of [`RouterCluster::new`].
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Number of nodes (at most 64).
    pub nodes: usize,
    /// Create a pod namespace per node (the benchmarks skip them).
    pub pods: bool,
}

impl ClusterOptions {
    pub fn new(nodes: usize) -> Self {
        ClusterOptions { nodes, pods: true }
    }
}

/// One node: its namespace, its pod, its manifest's inputs and its router process.
pub struct ClusterNode {
    pub name: String,
    pub host: Host,
    pub pod: Option<Host>,
    pub v4: String,
    pub v6: String,
    /// `[v4, v6]` pod CIDRs as written in `spec.podCIDRs`.
    pub pod_cidrs: Vec<String>,
    /// The pod's addresses (`[v4, v6]`), when it has a pod.
    pub pod_ips: Vec<String>,
    pub annotations: BTreeMap<String, String>,
    /// Extra labels on the Node.
    pub labels: BTreeMap<String, String>,
    router: Option<Process>,
}

impl ClusterNode {
    pub fn pod_v4(&self) -> &str {
        &self.pod_ips[0]
    }
    pub fn pod_v6(&self) -> &str {
        &self.pod_ips[1]
    }
    /// The router process, when one runs.
    pub fn router(&self) -> Option<&Process> {
        self.router.as_ref()
    }
}

/// The cluster. Dropping it stops every process and removes every namespace (the [`Lab`]).
pub struct RouterCluster {
    pub nodes: Vec<ClusterNode>,
    pub sw: Switch,
    state: PathBuf,
    /// Arguments every router gets after the fixed ones (`--bgp-holdtime`, peers, ...).
    pub common_args: Vec<String>,
    /// When set, routers read the cluster through this kubeconfig (an API server) instead of
    /// the state directory; the Node objects are then the caller's to write there.
    pub kubeconfig: Option<PathBuf>,
    // Last: dropped after the processes above.
    pub lab: Lab,
}

/// The pod CIDR prefix length for `n` nodes inside 198.51.100.0/24.
fn pod_prefix_len(n: usize) -> Result<u8> {
    match n {
        0 => Err(LabError::Invalid(
            "a cluster needs at least one node".into(),
        )),
        1..=16 => Ok(28),
        17..=64 => Ok(30),
        _ => Err(LabError::Invalid(format!(
            "{n} nodes: at most 64 fit in 198.51.100.0/24"
        ))),
    }
}

/// `ethtool -K IF tx off rx off` inside a namespace.
pub fn offloads_off(netns: &str, ifname: &str) -> Result<()> {
    super::run(&[
        "ip", "netns", "exec", netns, "ethtool", "-K", ifname, "tx", "off", "rx", "off",
    ])?;
    Ok(())
}

/// The path of the `metalnet-router` binary (built when missing or stale).
pub fn router_binary() -> Result<PathBuf> {
    crate::bins::binary("metalnet-router").map_err(LabError::Invalid)
}

impl RouterCluster {
    /// Builds the topology and writes the Node manifests; no router runs yet.
    pub fn new(test: &str, opts: ClusterOptions) -> Result<RouterCluster> {
        let len = pod_prefix_len(opts.nodes)?;
        let lab = Lab::new(test)?;
        let sw = lab.switch("sw")?;
        let state = lab.dir().join("state");
        std::fs::create_dir_all(&state).map_err(io_err(format!("creating {}", state.display())))?;
        let mut nodes = Vec::new();
        for i in 1..=opts.nodes {
            let name = format!("n{i}");
            let host = lab.router(&name)?;
            let iface = lab.connect(&host, &sw, "eth0")?;
            offloads_off(&iface.netns, &iface.name)?;
            offloads_off(&iface.peer_netns, &iface.peer_name)?;
            let v4 = format!("192.0.2.{}", 10 + i);
            let v6 = format!("2001:db8::{}", 10 + i);
            host.add_addr("eth0", &format!("{v4}/24"))?;
            host.add_addr("eth0", &format!("{v6}/64"))?;
            let size = 1u32 << (32 - len);
            let base = (i as u32 - 1) * size;
            let net4 = Ipv4Addr::new(198, 51, 100, base as u8);
            let cidr4 = format!("{net4}/{len}");
            let cidr6 = format!("2001:db8:100:{i:x}::/64");
            let mut pod_ips = Vec::new();
            let pod = if opts.pods {
                let pod = lab.host(&format!("p{i}"))?;
                let link = lab.wire(&host, "pod0", &pod, "eth0")?;
                offloads_off(&link.netns, &link.name)?;
                offloads_off(&link.peer_netns, &link.peer_name)?;
                let gw4 = Ipv4Addr::new(198, 51, 100, base as u8 + 1);
                let ip4 = Ipv4Addr::new(198, 51, 100, base as u8 + 2);
                let gw6 = format!("2001:db8:100:{i:x}::1");
                let ip6 = format!("2001:db8:100:{i:x}::2");
                host.add_addr("pod0", &format!("{gw4}/{len}"))?;
                host.add_addr("pod0", &format!("{gw6}/64"))?;
                pod.add_addr("eth0", &format!("{ip4}/{len}"))?;
                pod.add_addr("eth0", &format!("{ip6}/64"))?;
                pod.add_route("default", &gw4.to_string())?;
                pod.add_route("default", &gw6)?;
                pod_ips = vec![ip4.to_string(), ip6];
                Some(pod)
            } else {
                None
            };
            nodes.push(ClusterNode {
                name,
                host,
                pod,
                v4,
                v6,
                pod_cidrs: vec![cidr4, cidr6],
                pod_ips,
                annotations: BTreeMap::new(),
                labels: BTreeMap::new(),
                router: None,
            });
        }
        let cluster = RouterCluster {
            nodes,
            sw,
            state,
            common_args: Vec::new(),
            kubeconfig: None,
            lab,
        };
        for i in 0..cluster.nodes.len() {
            cluster.write_node(i)?;
        }
        Ok(cluster)
    }

    /// The state directory every router reads.
    pub fn state_dir(&self) -> &Path {
        &self.state
    }

    /// Node `i` (0-based).
    pub fn node(&self, i: usize) -> &ClusterNode {
        &self.nodes[i]
    }

    /// Index of the node named `name`.
    pub fn index(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// The Node manifest of node `i` as it stands.
    pub fn node_manifest(&self, i: usize) -> Value {
        let n = &self.nodes[i];
        let mut b = node(&n.name)
            .ready()
            .internal_ip(&n.v4)
            .internal_ip(&n.v6)
            .pod_cidrs(&n.pod_cidrs);
        for (k, v) in &n.labels {
            b = b.label(k, v);
        }
        for (k, v) in &n.annotations {
            b = b.annotation(k, v);
        }
        b.json()
    }

    /// (Re)writes node `i`'s manifest atomically (a hidden temporary file renamed into place:
    /// the state directory never reads it half-written).
    pub fn write_node(&self, i: usize) -> Result<()> {
        let name = &self.nodes[i].name;
        self.write_manifest(&format!("node-{name}.json"), &self.node_manifest(i))
    }

    /// Writes any manifest (`file` relative to the state directory) atomically.
    pub fn write_manifest(&self, file: &str, manifest: &Value) -> Result<()> {
        let path = self.state.join(file);
        let tmp = self.state.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, manifest.to_string())
            .map_err(io_err(format!("writing {}", tmp.display())))?;
        std::fs::rename(&tmp, &path).map_err(io_err(format!("renaming to {}", path.display())))
    }

    /// Removes a manifest written with [`RouterCluster::write_manifest`].
    pub fn remove_manifest(&self, file: &str) -> Result<()> {
        let path = self.state.join(file);
        std::fs::remove_file(&path).map_err(io_err(format!("removing {}", path.display())))
    }

    /// Sets (or with `None` removes) an annotation of node `i` and rewrites its manifest.
    pub fn set_annotation(&mut self, i: usize, key: &str, value: Option<&str>) -> Result<()> {
        match value {
            Some(v) => self.nodes[i]
                .annotations
                .insert(key.to_string(), v.to_string()),
            None => self.nodes[i].annotations.remove(key),
        };
        self.write_node(i)
    }

    /// Sets annotations on node `i` before its manifest is written (no rewrite).
    pub fn annotate(&mut self, i: usize, key: &str, value: &str) {
        self.nodes[i]
            .annotations
            .insert(key.to_string(), value.to_string());
    }

    /// Replaces node `i`'s pod CIDRs and rewrites its manifest.
    pub fn set_pod_cidrs(&mut self, i: usize, cidrs: &[&str]) -> Result<()> {
        self.nodes[i].pod_cidrs = cidrs.iter().map(|s| s.to_string()).collect();
        self.write_node(i)
    }

    /// The router's command line for node `i`: the fixed part (`--state-dir`, or
    /// `--kubeconfig` when [`Self::kubeconfig`] is set), [`Self::common_args`], `extra`.
    pub fn router_args(&self, i: usize, extra: &[&str]) -> Result<Vec<String>> {
        let bin = router_binary()?;
        let (source_flag, source) = match &self.kubeconfig {
            Some(k) => ("--kubeconfig", k.display().to_string()),
            None => ("--state-dir", self.state.display().to_string()),
        };
        let mut args = vec![
            bin.display().to_string(),
            "--run-router".into(),
            source_flag.into(),
            source,
            "--node-name".into(),
            self.nodes[i].name.clone(),
            "--metrics-addr".into(),
            METRICS_ADDR.into(),
        ];
        args.extend(self.common_args.iter().cloned());
        args.extend(extra.iter().map(|s| s.to_string()));
        Ok(args)
    }

    /// Starts the router of node `i` (stopping a previous one first).
    pub fn start_router(&mut self, i: usize, extra: &[&str]) -> Result<()> {
        self.stop_router(i);
        let args = self.router_args(i, extra)?;
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let env = [("RUST_LOG", "info")];
        let p = self.nodes[i]
            .host
            .spawn_env("metalnet-router", &argv, &env)?;
        self.nodes[i].router = Some(p);
        Ok(())
    }

    /// Starts every node's router.
    pub fn start_all(&mut self, extra: &[&str]) -> Result<()> {
        // Built once before the loop so that no router waits on cargo.
        router_binary()?;
        for i in 0..self.nodes.len() {
            self.start_router(i, extra)?;
        }
        Ok(())
    }

    /// SIGTERM (then SIGKILL after 10 s) and waits for the exit.
    pub fn stop_router(&mut self, i: usize) {
        if let Some(p) = self.nodes[i].router.take() {
            p.stop_within(Duration::from_secs(10));
        }
    }

    /// SIGKILL at once.
    pub fn kill_router(&mut self, i: usize) {
        if let Some(p) = self.nodes[i].router.take() {
            p.kill();
        }
    }

    /// Whether node `i`'s router is running.
    pub fn router_running(&self, i: usize) -> bool {
        self.nodes[i]
            .router
            .as_ref()
            .is_some_and(Process::is_running)
    }

    /// Every router's logs (the last `tail` lines of each), for failure messages.
    pub fn logs(&self) -> String {
        self.logs_tail(60)
    }

    pub fn logs_tail(&self, tail: usize) -> String {
        let mut s = String::new();
        for n in &self.nodes {
            if let Some(p) = &n.router {
                let logs = p.logs();
                let lines: Vec<&str> = logs.lines().collect();
                let start = lines.len().saturating_sub(tail);
                s.push_str(&format!(
                    "===== router {} (running: {}) =====\n{}\n",
                    n.name,
                    p.is_running(),
                    lines[start..].join("\n")
                ));
            }
        }
        s
    }

    /// The proto-17 routes of node `i`, IPv4 and IPv6: `(destination, next hop)`, one entry
    /// per next hop of a multipath route, `None` for a route without a gateway.
    pub fn routes_proto17(&self, i: usize) -> Result<Vec<(IpNet, Option<IpAddr>)>> {
        routes_with_proto(&self.nodes[i].host, PROTO_KUBE_ROUTER)
    }

    /// Just the destinations of [`Self::routes_proto17`].
    pub fn proto17_destinations(&self, i: usize) -> Vec<IpNet> {
        let mut d: Vec<IpNet> = self
            .routes_proto17(i)
            .unwrap_or_default()
            .into_iter()
            .map(|(d, _)| d)
            .collect();
        d.sort();
        d.dedup();
        d
    }

    /// The pod CIDRs node `i` should have routes to: every other node's, as `IpNet`s.
    pub fn expected_pod_routes(&self, i: usize) -> Vec<(IpNet, IpAddr)> {
        let mut want = Vec::new();
        for (j, n) in self.nodes.iter().enumerate() {
            if j == i {
                continue;
            }
            for c in &n.pod_cidrs {
                if let Ok(net) = c.parse::<IpNet>() {
                    let via: IpAddr = match net {
                        IpNet::V4(_) => n.v4.parse().expect("a node address"),
                        IpNet::V6(_) => n.v6.parse().expect("a node address"),
                    };
                    want.push((net, via));
                }
            }
        }
        want
    }

    /// Whether node `i` has a proto-17 route to every other node's pod CIDRs via that node.
    pub fn has_full_pod_routes(&self, i: usize) -> bool {
        let Ok(have) = self.routes_proto17(i) else {
            return false;
        };
        self.expected_pod_routes(i)
            .iter()
            .all(|(d, via)| have.iter().any(|(hd, hv)| hd == d && *hv == Some(*via)))
    }

    /// Waits until every node in `which` has routes to every other node's pod CIDRs.
    pub fn wait_full_mesh_routes(&self, which: &[usize], timeout: Duration) -> Result<()> {
        for &i in which {
            wait_for(
                &format!(
                    "{} to route every other node's pod CIDRs",
                    self.nodes[i].name
                ),
                timeout,
                || self.has_full_pod_routes(i),
            )
            .map_err(|e| self.with_context(e, i))?;
        }
        Ok(())
    }

    /// `e` with node `i`'s routes and every router's logs appended.
    pub fn with_context(&self, e: LabError, i: usize) -> LabError {
        LabError::Invalid(format!(
            "{e}\nproto 17 routes of {}: {:?}\n{}",
            self.nodes[i].name,
            self.routes_proto17(i),
            self.logs()
        ))
    }

    /// One ping from node `from`'s pod to `addr`.
    pub fn pod_ping(&self, from: usize, addr: &str) -> bool {
        self.nodes[from].pod.as_ref().is_some_and(|p| p.ping(addr))
    }

    /// Waits until node `from`'s pod reaches `addr`.
    pub fn wait_pod_ping(&self, from: usize, addr: &str, timeout: Duration) -> Result<()> {
        let pod = self.nodes[from]
            .pod
            .as_ref()
            .ok_or_else(|| LabError::Invalid(format!("{} has no pod", self.nodes[from].name)))?;
        pod.wait_ping(addr, timeout)
    }

    /// Every pod pings every other pod over IPv4 and IPv6.
    pub fn wait_all_pods_ping(&self, timeout: Duration) -> Result<()> {
        for a in 0..self.nodes.len() {
            for b in 0..self.nodes.len() {
                if a == b || self.nodes[b].pod_ips.is_empty() {
                    continue;
                }
                for ip in &self.nodes[b].pod_ips {
                    self.wait_pod_ping(a, ip, timeout).map_err(|e| {
                        LabError::Invalid(format!(
                            "pod of {} -> pod of {} ({ip}): {e}\nroutes of {}: {:?}",
                            self.nodes[a].name,
                            self.nodes[b].name,
                            self.nodes[a].name,
                            self.routes_proto17(a)
                        ))
                    })?;
                }
            }
        }
        Ok(())
    }

    /// The router's metrics of node `i` (Prometheus text), fetched inside its namespace.
    pub fn metrics(&self, i: usize) -> Result<String> {
        self.nodes[i].host.exec_ok(&[
            "curl",
            "-sf",
            "--max-time",
            "2",
            &format!("http://{METRICS_ADDR}/metrics"),
        ])
    }

    /// `GET http://METRICS_ADDR{path}` inside node `i`'s namespace (the router's debug
    /// endpoints, e.g. `/debug/routing/node?name=n1`).
    pub fn router_get(&self, i: usize, path: &str) -> Result<String> {
        self.nodes[i].host.exec_ok(&[
            "curl",
            "-sf",
            "--max-time",
            "2",
            &format!("http://{METRICS_ADDR}{path}"),
        ])
    }

    /// The router's own view of its sessions (from `explain node <itself>`):
    /// `peer -> (state, seconds Established)`.
    pub fn router_sessions(&self, i: usize) -> Result<BTreeMap<IpAddr, (String, Option<u64>)>> {
        let name = &self.nodes[i].name;
        let text = self.router_get(i, &format!("/debug/routing/node?name={name}"))?;
        Ok(parse_explain_sessions(&text))
    }

    /// The TCP peers of established BGP connections in node `i`'s namespace (`ss -tn`, port
    /// 179 on either side).
    pub fn bgp_connections(&self, i: usize) -> Result<Vec<IpAddr>> {
        let out = self.nodes[i]
            .host
            .exec_ok(&["ss", "-Htn", "state", "established"])?;
        let mut peers = Vec::new();
        for line in out.lines() {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // Recv-Q Send-Q Local:Port Peer:Port [Process]
            if cols.len() < 4 {
                continue;
            }
            let (local, peer) = (cols[2], cols[3]);
            if !(local.ends_with(":179") || peer.ends_with(":179")) {
                continue;
            }
            if let Some(ip) = socket_ip(peer)
                && !peers.contains(&ip)
            {
                peers.push(ip);
            }
        }
        peers.sort();
        Ok(peers)
    }

    /// A `kube-router.io/peers` value for node `i` naming each `(v4, v6, asn)` router by both
    /// addresses; the IPv6 entry has `localip` set to the node's IPv6 address (without it the
    /// source would be the node's primary, IPv4, address and the peer is skipped).
    pub fn peers_annotation(
        &self,
        i: usize,
        routers: &[(&str, &str, u32)],
        password: Option<&str>,
    ) -> String {
        let pw = password
            .map(|p| format!("  password: {}\n", base64(p.as_bytes())))
            .unwrap_or_default();
        let mut y = String::new();
        for (v4, v6, asn) in routers {
            y.push_str(&format!("- remoteip: {v4}\n  remoteasn: {asn}\n{pw}"));
            y.push_str(&format!(
                "- remoteip: {v6}\n  remoteasn: {asn}\n  localip: {}\n{pw}",
                self.nodes[i].v6
            ));
        }
        y
    }

    /// Events recorded about Node `name` in the state directory: `(type, reason, message)`.
    pub fn node_events(&self, name: &str) -> Vec<(String, String, String)> {
        node_events(&self.state, name)
    }

    /// An upstream BIRD on the segment (`.2`/`::2`, AS [`BIRD_ASN`]) with a v4 and a v6
    /// session to each node (protocols `n<i>_v4` with both families, `n<i>_v6` IPv6 only), MD5 with
    /// `password` when given, routes into its kernel table (ECMP merged). `edit` may change
    /// the configuration (static routes, policies) before start.
    pub fn start_bird(
        &self,
        password: Option<&str>,
        edit: impl FnOnce(&mut BirdConfig),
    ) -> Result<Bird> {
        let host = self.upstream_host("bird", BIRD_V4, BIRD_V6)?;
        let mut cfg = BirdConfig::new(BIRD_V4.parse().expect("an address"), BIRD_ASN);
        cfg.kernel_export = true;
        cfg.neighbors = self.upstream_neighbors(password, |_| {});
        edit(&mut cfg);
        Bird::start(&host, cfg)
    }

    /// An upstream FRR on the segment (`.3`/`::3`, AS [`FRR_ASN`]), like [`Self::start_bird`]
    /// (neighbors are the node addresses).
    pub fn start_frr(
        &self,
        password: Option<&str>,
        edit: impl FnOnce(&mut FrrConfig),
    ) -> Result<Frr> {
        let host = self.upstream_host("frr", FRR_V4, FRR_V6)?;
        let mut cfg = FrrConfig::new(FRR_V4.parse().expect("an address"), FRR_ASN);
        cfg.neighbors = self.upstream_neighbors(password, |_| {});
        edit(&mut cfg);
        Frr::start(&host, cfg)
    }

    /// The neighbors an upstream router has: each node's v4 (IPv4 and IPv6) and v6 (IPv6
    /// only) address, named `n<i>_v4`/`n<i>_v6`, AS [`CLUSTER_ASN`].
    pub fn upstream_neighbors(
        &self,
        password: Option<&str>,
        edit: impl Fn(&mut BgpNeighbor),
    ) -> Vec<BgpNeighbor> {
        let mut out = Vec::new();
        for n in &self.nodes {
            for (af, addr) in [("v4", &n.v4), ("v6", &n.v6)] {
                let mut nb = BgpNeighbor::new(addr.parse().expect("an address"), CLUSTER_ASN)
                    .named(&format!("{}_{af}", n.name));
                // The v4 session carries both families (MP-BGP, as global peers given by
                // IPv4 address do); the v6 one only IPv6.
                nb.ipv4 = af == "v4";
                nb.ipv6 = true;
                nb.password = password.map(str::to_string);
                edit(&mut nb);
                out.push(nb);
            }
        }
        out
    }

    /// A host on the segment with these addresses (forwarding on, offloads off).
    pub fn upstream_host(&self, name: &str, v4: &str, v6: &str) -> Result<Host> {
        let host = self.lab.router(name)?;
        let iface = self.lab.connect(&host, &self.sw, "eth0")?;
        offloads_off(&iface.netns, &iface.name)?;
        offloads_off(&iface.peer_netns, &iface.peer_name)?;
        host.add_addr("eth0", &format!("{v4}/24"))?;
        host.add_addr("eth0", &format!("{v6}/64"))?;
        Ok(host)
    }
}

/// The IP of `ss` address `1.2.3.4:179`, `[2001:db8::1]:179` or `[::ffff:1.2.3.4]:179`.
fn socket_ip(s: &str) -> Option<IpAddr> {
    let (host, _) = s.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let host = host.split('%').next()?;
    let ip: IpAddr = host.parse().ok()?;
    Some(match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    })
}

/// The sessions of `explain node <this node>` text, `peer -> (state, seconds Established)`.
/// Two layouts are read: a peer line `  ADDR node n2: iBGP ...` followed by `    session
/// Established for 1m2s, routes sent ...`, and the one-line `  session ADDR (node) AS N:
/// Established for 12s, ...`.
pub fn parse_explain_sessions(text: &str) -> BTreeMap<IpAddr, (String, Option<u64>)> {
    let mut out = BTreeMap::new();
    let mut current: Option<IpAddr> = None;
    for line in text.lines() {
        let trimmed = line.trim_start();
        if let Some(rest) = trimmed.strip_prefix("session ") {
            // One-line layout: `session ADDR (...) ...: STATE ...`.
            let (addr, state_part) = match rest.split_once(' ') {
                Some((a, r)) if a.parse::<IpAddr>().is_ok() => (
                    a.parse::<IpAddr>().ok(),
                    r.split_once(": ").map(|(_, s)| s).unwrap_or_default(),
                ),
                _ => (current, rest),
            };
            let Some(addr) = addr else { continue };
            let state_part = state_part.split(',').next().unwrap_or_default().trim();
            let (state, secs) = match state_part.split_once(" for ") {
                Some((s, up)) => (s.to_string(), parse_go_secs(up)),
                None => (state_part.to_string(), None),
            };
            out.insert(addr, (state, secs));
            continue;
        }
        // A peer line: two spaces, an address, a space.
        if line.starts_with("  ") && !line.starts_with("   ") {
            current = trimmed
                .split_whitespace()
                .next()
                .map(|a| a.trim_end_matches(':'))
                .and_then(|a| a.parse().ok());
        }
    }
    out
}

/// Whole seconds of a Go duration (`1h2m3s`, `45s`, `1.5s`).
fn parse_go_secs(s: &str) -> Option<u64> {
    let mut total = 0f64;
    let mut num = String::new();
    for ch in s.trim().chars() {
        match ch {
            '0'..='9' | '.' => num.push(ch),
            'h' | 'm' | 's' => {
                let v: f64 = num.parse().ok()?;
                total += v * match ch {
                    'h' => 3600.0,
                    'm' => 60.0,
                    _ => 1.0,
                };
                num.clear();
            }
            _ => return None,
        }
    }
    num.is_empty().then_some(total as u64)
}

/// The routes of `host`'s main table with protocol `proto`, IPv4 and IPv6.
pub fn routes_with_proto(host: &Host, proto: u8) -> Result<Vec<(IpNet, Option<IpAddr>)>> {
    let proto = proto.to_string();
    let mut out = Vec::new();
    for family in ["-4", "-6"] {
        let text = host.exec_ok(&["ip", "-j", family, "route", "show", "proto", &proto])?;
        out.extend(parse_ip_routes(&text)?);
    }
    Ok(out)
}

/// Parses `ip -j route show`: `(dst, gateway)`, one entry per next hop.
pub fn parse_ip_routes(text: &str) -> Result<Vec<(IpNet, Option<IpAddr>)>> {
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    let v: Value = serde_json::from_str(text).map_err(|e| LabError::Parse {
        what: "`ip -j route show`".into(),
        reason: e.to_string(),
    })?;
    let mut out = Vec::new();
    for r in v.as_array().into_iter().flatten() {
        let Some(dst) = r.get("dst").and_then(Value::as_str) else {
            continue;
        };
        let dst: IpNet = match dst {
            "default" => {
                if dst_is_v6(r) {
                    "::/0".parse().expect("a prefix")
                } else {
                    "0.0.0.0/0".parse().expect("a prefix")
                }
            }
            d if d.contains('/') => d.parse().map_err(|e| LabError::Parse {
                what: format!("route destination {d:?}"),
                reason: format!("{e}"),
            })?,
            d => {
                let ip: IpAddr = d.parse().map_err(|e| LabError::Parse {
                    what: format!("route destination {d:?}"),
                    reason: format!("{e}"),
                })?;
                IpNet::from(ip)
            }
        };
        let gw = |v: &Value| {
            v.get("gateway")
                .and_then(Value::as_str)
                .and_then(|s| s.parse::<IpAddr>().ok())
        };
        match r.get("nexthops").and_then(Value::as_array) {
            Some(hops) => {
                for h in hops {
                    out.push((dst, gw(h)));
                }
            }
            None => out.push((dst, gw(r))),
        }
    }
    Ok(out)
}

fn dst_is_v6(r: &Value) -> bool {
    r.get("gateway")
        .and_then(Value::as_str)
        .is_some_and(|g| g.contains(':'))
}

/// Events in a state directory about Node `name`: `(type, reason, message)`, oldest first
/// by `lastTimestamp`.
pub fn node_events(state: &Path, name: &str) -> Vec<(String, String, String)> {
    let mut events: Vec<Value> = Vec::new();
    let root = state.join("status/objects/Event");
    for ns in std::fs::read_dir(&root).into_iter().flatten().flatten() {
        for f in std::fs::read_dir(ns.path()).into_iter().flatten().flatten() {
            let Ok(text) = std::fs::read_to_string(f.path()) else {
                continue;
            };
            if let Ok(v) = serde_saphyr::from_str::<Value>(&text) {
                events.push(v);
            }
        }
    }
    events.retain(|e| {
        let inv = if e["involvedObject"].is_object() {
            &e["involvedObject"]
        } else {
            &e["regarding"]
        };
        inv["kind"] == "Node" && inv["name"] == name
    });
    events.sort_by_key(|e| e["lastTimestamp"].as_str().unwrap_or_default().to_string());
    events
        .iter()
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap_or_default().to_string();
            (s("type"), s("reason"), s("message"))
        })
        .collect()
}

/// Session uptimes of an FRR: `peer address -> (state, established since, Unix seconds)`.
pub fn frr_peer_uptimes(frr: &Frr) -> Result<BTreeMap<String, (String, Option<u64>)>> {
    let text = frr.vtysh(&["show bgp summary json"])?;
    let v: Value = serde_json::from_str(&text).map_err(|e| LabError::Parse {
        what: "FRR `show bgp summary json`".into(),
        reason: e.to_string(),
    })?;
    let mut out = BTreeMap::new();
    for fam in v.as_object().into_iter().flat_map(|m| m.values()) {
        for (addr, p) in fam
            .get("peers")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            let state = p
                .get("state")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let since = p.get("peerUptimeEstablishedEpoch").and_then(Value::as_u64);
            out.entry(addr.clone()).or_insert((state, since));
        }
    }
    Ok(out)
}

/// Session "since" of a BIRD: `protocol -> (info, since)` (the `Since` column of `show
/// protocols`, which changes whenever the protocol changes state).
pub fn bird_protocol_since(bird: &Bird) -> Result<BTreeMap<String, (String, String)>> {
    let text = bird.birdc(&["show", "protocols"])?;
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let tokens: Vec<&str> = line.split_whitespace().collect();
        if tokens.len() < 5 || tokens[0] == "BIRD" || tokens[0] == "Name" || tokens[1] != "BGP" {
            continue;
        }
        let mut since = Vec::new();
        let mut rest = &tokens[4..];
        while let Some(first) = rest.first() {
            if first
                .chars()
                .all(|c| c.is_ascii_digit() || ":.-".contains(c))
            {
                since.push(*first);
                rest = &rest[1..];
            } else {
                break;
            }
        }
        out.insert(tokens[0].to_string(), (rest.join(" "), since.join(" ")));
    }
    Ok(out)
}

/// The time it took `probe` to hold, polling every `every`; `None` after `timeout`.
pub fn time_until(
    timeout: Duration,
    every: Duration,
    mut probe: impl FnMut() -> bool,
) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if probe() {
            return Some(start.elapsed());
        }
        if start.elapsed() >= timeout {
            return None;
        }
        std::thread::sleep(every);
    }
}

/// One end of a link: a host, its interface, and the addresses it holds there.
pub struct LinkEnd<'a> {
    pub host: &'a Host,
    pub ifname: &'a str,
    pub addrs: Vec<String>,
}

/// Permanent neighbour entries between every pair of `ends` (one link or segment), IPv4 and
/// IPv6. The kernel's ARP and ND tables are one for all namespaces, capped at 1,024
/// entries that it may collect (`gc_thresh3`, settable only in the machine's own namespace);
/// a 50-node full mesh needs 2,450 and a big lab fills them for every other test ("neighbor
/// table overflow"), after which new neighbours never resolve. Permanent entries are exempt
/// from that cap. Neighbour resolution is the kernel's, not the router's, so nothing under
/// test is bypassed. One `ip -batch` per end.
pub fn pin_neighbours(ends: &[LinkEnd]) -> Result<()> {
    let macs = ends
        .iter()
        .map(|e| e.host.mac(e.ifname))
        .collect::<Result<Vec<String>>>()?;
    for (a, end) in ends.iter().enumerate() {
        let mut batch = String::new();
        for (b, other) in ends.iter().enumerate() {
            if a == b {
                continue;
            }
            for addr in &other.addrs {
                batch.push_str(&format!(
                    "neigh replace {addr} lladdr {} dev {} nud permanent\n",
                    macs[b], end.ifname
                ));
            }
        }
        if batch.is_empty() {
            continue;
        }
        let file = std::env::temp_dir().join(format!(
            "mnl-neigh-{}-{}.batch",
            std::process::id(),
            end.host.netns()
        ));
        std::fs::write(&file, &batch).map_err(io_err(file.display().to_string()))?;
        let path = file.to_string_lossy().into_owned();
        let done = end.host.exec_ok(&["ip", "-batch", &path]);
        let _ = std::fs::remove_file(&file);
        done?;
    }
    Ok(())
}

impl RouterCluster {
    /// The segment's end of every node, plus `extra` hosts on it (`eth0`, v4 and v6).
    pub fn segment_ends<'a>(&'a self, extra: &[(&'a Host, &str, &str)]) -> Vec<LinkEnd<'a>> {
        let mut ends: Vec<LinkEnd> = self
            .nodes
            .iter()
            .map(|n| LinkEnd {
                host: &n.host,
                ifname: "eth0",
                addrs: vec![n.v4.clone(), n.v6.clone()],
            })
            .collect();
        for (host, v4, v6) in extra {
            ends.push(LinkEnd {
                host,
                ifname: "eth0",
                addrs: vec![v4.to_string(), v6.to_string()],
            });
        }
        ends
    }

    /// Pins the neighbours of the segment (nodes and `extra` hosts) and of every node's pod
    /// link (the node's gateway addresses on `pod0`, the pod's on its `eth0`); see
    /// [`pin_neighbours`].
    pub fn pin_neighbours(&self, extra: &[(&Host, &str, &str)]) -> Result<()> {
        pin_neighbours(&self.segment_ends(extra))?;
        for n in &self.nodes {
            let Some(pod) = &n.pod else { continue };
            let gateways: Vec<String> = n
                .host
                .exec_ok(&["ip", "-j", "addr", "show", "dev", "pod0"])
                .ok()
                .and_then(|t| serde_json::from_str::<Value>(&t).ok())
                .into_iter()
                .flat_map(|v| {
                    v.as_array()
                        .into_iter()
                        .flatten()
                        .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
                        .filter(|a| a["scope"] == "global")
                        .filter_map(|a| a["local"].as_str().map(str::to_string))
                        .collect::<Vec<_>>()
                })
                .collect();
            pin_neighbours(&[
                LinkEnd {
                    host: &n.host,
                    ifname: "pod0",
                    addrs: gateways,
                },
                LinkEnd {
                    host: pod,
                    ifname: "eth0",
                    addrs: n.pod_ips.clone(),
                },
            ])?;
        }
        Ok(())
    }
}

/// A router's sessions at one moment (from its `explain node`), to check later that none was
/// reset in between.
pub struct SessionSnapshot {
    pub at: Instant,
    pub node: usize,
    pub map: BTreeMap<IpAddr, (String, Option<u64>)>,
}

impl RouterCluster {
    /// Node `i`'s sessions now; panics with the routers' logs when its router cannot say.
    pub fn session_snapshot(&self, i: usize) -> SessionSnapshot {
        let map = self
            .router_sessions(i)
            .unwrap_or_else(|e| panic!("explain on {}: {e}\n{}", self.nodes[i].name, self.logs()));
        SessionSnapshot {
            at: Instant::now(),
            node: i,
            map,
        }
    }

    /// Every session of `before` towards one of `peers` that was Established is still
    /// Established now, with an uptime that kept counting (not reset in between).
    pub fn assert_sessions_kept(&self, before: &SessionSnapshot, peers: &[IpAddr]) {
        let now = self.session_snapshot(before.node);
        let elapsed = before.at.elapsed().as_secs();
        let mut checked = 0;
        for p in peers {
            let Some((state, Some(up))) = before.map.get(p) else {
                continue;
            };
            if state != "Established" {
                continue;
            }
            checked += 1;
            let after = now.map.get(p);
            let kept =
                matches!(after, Some((s, Some(u))) if s == "Established" && *u + 2 >= up + elapsed);
            assert!(
                kept,
                "{}'s session to {p} was reset: before {:?}, {elapsed}s later {after:?}\n{}",
                self.nodes[before.node].name,
                (state, up),
                self.logs()
            );
        }
        assert!(
            checked > 0,
            "{}: no Established session to {peers:?} to check: {:?}",
            self.nodes[before.node].name,
            before.map
        );
    }

    /// Both addresses of node `j`.
    pub fn node_addrs(&self, j: usize) -> [IpAddr; 2] {
        let parse = |a: &str| a.parse().expect("the lab's own node address");
        [parse(&self.nodes[j].v4), parse(&self.nodes[j].v6)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ip_json_routes() {
        let text = r#"[{"dst":"198.51.100.16/28","gateway":"192.0.2.12","dev":"eth0","protocol":"17","flags":[]},
{"dst":"203.0.113.10","nexthops":[{"gateway":"192.0.2.11","dev":"eth0","weight":1,"flags":[]},{"gateway":"192.0.2.12","dev":"eth0","weight":1,"flags":[]}]},
{"dst":"default","gateway":"2001:db8::2","dev":"eth0"}]"#;
        let r = parse_ip_routes(text).unwrap();
        assert_eq!(r.len(), 4);
        assert_eq!(r[0].0.to_string(), "198.51.100.16/28");
        assert_eq!(r[0].1, Some("192.0.2.12".parse().unwrap()));
        assert_eq!(r[1].0.to_string(), "203.0.113.10/32");
        assert_eq!(r[2].1, Some("192.0.2.12".parse().unwrap()));
        assert_eq!(r[3].0.to_string(), "::/0");
        assert!(parse_ip_routes("").unwrap().is_empty());
    }

    #[test]
    fn parses_explain_sessions() {
        let text = "node n1 (this node)\n  kernel routes (proto 17): 4\n  session 192.0.2.12 (node) AS 64512: Established for 12s, 2 sent, 2 received\n  session 2001:db8::2 (external) AS 64600: Active, 0 sent, 0 received\n    last error: refused\n";
        let s = parse_explain_sessions(text);
        assert_eq!(s.len(), 2);
        assert_eq!(
            s[&"192.0.2.12".parse::<IpAddr>().unwrap()],
            ("Established".to_string(), Some(12))
        );
        assert_eq!(
            s[&"2001:db8::2".parse::<IpAddr>().unwrap()],
            ("Active".to_string(), None)
        );
        let text = "node n1 (this node): BGP AS 64512, router id 192.0.2.11\nsessions (2):\n  192.0.2.12 node n2: iBGP AS 64512 -> AS 64512, port 179, connects\n    session Established for 1h2m3s, routes sent 1, received 1\n    routes wanted out: 2\n  192.0.2.2 external router (--peer-router-ips): eBGP AS 64512 -> AS 64600, port 179, connects\n    session not running yet\n";
        let s = parse_explain_sessions(text);
        assert_eq!(
            s[&"192.0.2.12".parse::<IpAddr>().unwrap()],
            ("Established".to_string(), Some(3723))
        );
        assert_eq!(
            s[&"192.0.2.2".parse::<IpAddr>().unwrap()].0,
            "not running yet"
        );
        assert_eq!(parse_go_secs("1.5s"), Some(1));
        assert_eq!(parse_go_secs("x"), None);
    }

    #[test]
    fn parses_ss_addresses() {
        assert_eq!(
            socket_ip("192.0.2.11:179"),
            Some("192.0.2.11".parse().unwrap())
        );
        assert_eq!(
            socket_ip("[2001:db8::11]:41000"),
            Some("2001:db8::11".parse().unwrap())
        );
        assert_eq!(
            socket_ip("[::ffff:192.0.2.12]:179"),
            Some("192.0.2.12".parse().unwrap())
        );
        assert_eq!(socket_ip("nonsense"), None);
    }

    #[test]
    fn base64_pads() {
        assert_eq!(base64(b"a"), "YQ==");
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(base64(b"abc"), "YWJj");
        assert_eq!(base64(b"lab-md5-secret"), "bGFiLW1kNS1zZWNyZXQ=");
    }

    #[test]
    fn pod_prefix_fits_the_node_count() {
        assert_eq!(pod_prefix_len(5).unwrap(), 28);
        assert_eq!(pod_prefix_len(50).unwrap(), 30);
        assert!(pod_prefix_len(65).is_err());
        assert!(pod_prefix_len(0).is_err());
    }
}
