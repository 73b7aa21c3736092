//! The speaker's layer 2 mode on the demo site: three nodes and a client on one switch, a
//! state directory with the cluster objects, one `metalnet-speaker` per node. Shared by the
//! `speaker_l2` tests and the `l2_failover` bench.
//!
//! As kube-proxy's IPVS mode does, a node can carry Service addresses on `lo` with
//! `arp_ignore=1`, so the kernel accepts traffic for them but never answers ARP for them:
//! only the speaker does.

use std::path::Path;
use std::time::Duration;

use metalnet::testing::{
    AdvertisementBuilder, Manifest, NodeBuilder, endpoint_slice, node, pool, service,
};

use super::{DemoSite, Host, Lab, LabError, Process, Result, io_err, wait_for};
use crate::bins;

/// The nodes of the demo site.
pub const NODES: [&str; 3] = ["node1", "node2", "node3"];
/// Where each speaker serves its metrics, inside its node's namespace.
pub const METRICS_ADDR: &str = "127.0.0.1:7473";

/// Node `NODES[index]` with InternalIP 192.0.2.(11 + index), node1 in zone a and the others
/// in zone b; without conditions.
pub fn site_node(index: usize) -> NodeBuilder {
    node(NODES[index])
        .label("zone", if index == 0 { "a" } else { "b" })
        .internal_ip(&format!("192.0.2.{}", 11 + index))
}

/// The three [`site_node`]s, Ready.
pub fn nodes_yaml() -> String {
    (0..NODES.len())
        .map(|i| site_node(i).ready().document())
        .collect()
}

/// A LoadBalancer Service default/`name` with its address already in status (as the
/// controller writes it) and an EndpointSlice with one ready endpoint on each of
/// `endpoint_nodes`.
pub fn service_yaml(name: &str, ips: &[&str], policy: &str, endpoint_nodes: &[&str]) -> String {
    let slice = endpoint_nodes
        .iter()
        .fold(endpoint_slice(name), |s, n| s.ready_on(n));
    let svc = service(name)
        .traffic_policy(policy)
        .families_of(ips)
        .ingress(ips);
    svc.document() + &slice.document()
}

/// One pool `site` of `addresses`, advertised by `l2`, and the Services (name, address),
/// each with an endpoint on node1 (policy Cluster: any node may announce).
pub fn site_objects(
    addresses: &[&str],
    l2: AdvertisementBuilder,
    services: &[(&str, &str)],
) -> String {
    let mut out = pool("site", addresses).document();
    out.push_str(&l2.document());
    for (name, ip) in services {
        out.push_str(&service_yaml(name, &[ip], "Cluster", &["node1"]));
    }
    out
}

/// `ip` as a host route prefix (/32 or /128).
pub fn host_cidr(ip: &str) -> String {
    if ip.contains(':') {
        format!("{ip}/128")
    } else {
        format!("{ip}/32")
    }
}

/// The MAC `host`'s neighbour table holds for `ip` on eth0, lower case.
pub fn neighbour_mac(host: &Host, ip: &str) -> Option<String> {
    let out = host
        .exec_ok(&["ip", "neigh", "show", ip, "dev", "eth0"])
        .ok()?;
    let mut words = out.split_whitespace();
    while let Some(w) = words.next() {
        if w == "lladdr" {
            return words.next().map(str::to_lowercase);
        }
    }
    None
}

/// The demo site with a state directory holding [`nodes_yaml`] plus the caller's objects.
pub struct L2Site {
    // Dropped first: stops the speakers and deletes the namespaces.
    pub lab: Lab,
    pub demo: DemoSite,
    state: tempfile::TempDir,
    /// Passed to every speaker started, before the caller's own.
    speaker_args: Vec<String>,
}

impl L2Site {
    /// Builds the site; every node carries `vips_on_lo` on `lo` (see the module comment).
    pub fn new(test: &str, objects: &str, vips_on_lo: &[&str]) -> Result<L2Site> {
        let lab = Lab::new(test)?;
        let demo = DemoSite::build(&lab)?;
        for node in &demo.nodes {
            node.sysctl("net.ipv4.conf.all.arp_ignore", "1")?;
            node.sysctl("net.ipv4.conf.all.arp_announce", "2")?;
            for vip in vips_on_lo {
                node.add_addr("lo", &host_cidr(vip))?;
            }
        }
        let state = tempfile::tempdir().map_err(io_err("creating the state directory"))?;
        let cluster = state.path().join("cluster.yaml");
        std::fs::write(&cluster, format!("{}{objects}", nodes_yaml()))
            .map_err(io_err(format!("writing {}", cluster.display())))?;
        Ok(L2Site {
            lab,
            demo,
            state,
            speaker_args: Vec::new(),
        })
    }

    /// Passes `args` to every speaker this site starts (e.g. a `--log-level`).
    pub fn with_speaker_args(mut self, args: &[&str]) -> L2Site {
        self.speaker_args = args.iter().map(|a| a.to_string()).collect();
        self
    }

    /// The node called `name`.
    ///
    /// # Panics
    /// When the demo site has no such node (a mistake in the calling test).
    pub fn node(&self, name: &str) -> &Host {
        self.demo
            .node(name)
            .unwrap_or_else(|| panic!("the demo site has no node {name}"))
    }

    /// The MAC of `node`'s eth0.
    pub fn mac(&self, node: &str) -> Result<String> {
        self.node(node).mac("eth0")
    }

    pub fn state_dir(&self) -> &Path {
        self.state.path()
    }

    /// Starts `metalnet-speaker` on `node` as process `process` (its logs are
    /// `<node dir>/<process>.out|.err`), on the site's state directory.
    pub fn start(&self, node: &str, process: &str, extra: &[&str]) -> Result<Process> {
        let bin = bins::binary("metalnet-speaker").map_err(LabError::Invalid)?;
        let bin = bin.display().to_string();
        let dir = self.state_dir().display().to_string();
        let mut args = vec![
            bin.as_str(),
            "--state-dir",
            &dir,
            "--node-name",
            node,
            "--metrics-addr",
            METRICS_ADDR,
        ];
        args.extend(self.speaker_args.iter().map(String::as_str));
        args.extend_from_slice(extra);
        self.node(node).spawn(process, &args)
    }

    /// Starts a speaker (process `speaker`) on every node, in [`NODES`] order.
    pub fn start_all(&self, extra: &[&str]) -> Result<Vec<Process>> {
        NODES
            .iter()
            .map(|n| self.start(n, "speaker", extra))
            .collect()
    }

    /// The speaker's metrics text on `node` (empty when it does not answer).
    pub fn metrics(&self, node: &str) -> String {
        let url = format!("http://{METRICS_ADDR}/metrics");
        self.node(node)
            .exec_ok(&["curl", "-s", "--max-time", "2", &url])
            .unwrap_or_default()
    }

    /// Waits until the client pings `ip` and resolves it to `via`'s eth0.
    pub fn wait_reached(&self, ip: &str, via: &str, timeout: Duration) -> Result<()> {
        let mac = self.mac(via)?;
        wait_for(
            &format!("the client to reach {ip} through {via}"),
            timeout,
            || {
                self.demo.client.ping(ip)
                    && neighbour_mac(&self.demo.client, ip).as_deref() == Some(mac.as_str())
            },
        )
    }

    /// `node` stops serving `ip` (takes it off `lo`), as a dead or drained node would.
    pub fn stop_serving(&self, node: &str, ip: &str) -> Result<()> {
        self.node(node)
            .exec_ok(&["ip", "addr", "del", &host_cidr(ip), "dev", "lo"])
            .map(drop)
    }
}
