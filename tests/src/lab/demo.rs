//! The demo site: three nodes, an upstream router and a client on one switch, plus a remote
//! client on an uplink segment behind the router.
//!
//! ```text
//!   node1 .11 ─┐
//!   node2 .12 ─┤  switch "site"            switch "uplink"
//!   node3 .13 ─┼─ 192.0.2.0/24 ── router ── 198.51.100.0/24 ── remote .100
//!   client .100┘  2001:db8:0:1::/64  .1 / .1  2001:db8:0:2::/64
//! ```

use super::{Host, Lab, Result, Switch};

pub const SITE_V4: &str = "192.0.2.0/24";
pub const SITE_V6: &str = "2001:db8:0:1::/64";
pub const UPLINK_V4: &str = "198.51.100.0/24";
pub const UPLINK_V6: &str = "2001:db8:0:2::/64";
pub const ROUTER_ASN: u32 = 64512;
pub const NODE_ASN: u32 = 64513;

/// Handles to every part of the demo site.
#[derive(Debug, Clone)]
pub struct DemoSite {
    pub site: Switch,
    pub uplink: Switch,
    /// Forwards between `site` (eth0) and `uplink` (eth1).
    pub router: Host,
    /// `node1..3`, `eth0` on `site`, default route via the router.
    pub nodes: Vec<Host>,
    /// On `site`, default route via the router.
    pub client: Host,
    /// On `uplink`, default route via the router.
    pub remote: Host,
}

/// The site addresses of one demo node (`index` 0..3).
pub fn node_v4(index: usize) -> String {
    format!("192.0.2.{}", 11 + index)
}

pub fn node_v6(index: usize) -> String {
    format!("2001:db8:0:1::{}", 11 + index)
}

pub const ROUTER_SITE_V4: &str = "192.0.2.1";
pub const ROUTER_SITE_V6: &str = "2001:db8:0:1::1";
pub const ROUTER_UPLINK_V4: &str = "198.51.100.1";
pub const ROUTER_UPLINK_V6: &str = "2001:db8:0:2::1";
pub const CLIENT_V4: &str = "192.0.2.100";
pub const CLIENT_V6: &str = "2001:db8:0:1::100";
pub const REMOTE_V4: &str = "198.51.100.100";
pub const REMOTE_V6: &str = "2001:db8:0:2::100";

fn attach(lab: &Lab, host: &Host, switch: &Switch, ifname: &str, v4: &str, v6: &str) -> Result<()> {
    lab.connect(host, switch, ifname)?;
    host.add_addr(ifname, &format!("{v4}/24"))?;
    host.add_addr(ifname, &format!("{v6}/64"))?;
    Ok(())
}

fn default_via(host: &Host, v4: &str, v6: &str) -> Result<()> {
    host.add_route("default", v4)?;
    host.add_route("default", v6)?;
    Ok(())
}

impl DemoSite {
    /// Builds the topology (namespaces, links, addresses, routes). No daemons are started.
    pub fn build(lab: &Lab) -> Result<DemoSite> {
        let site = lab.switch("site")?;
        let uplink = lab.switch("uplink")?;
        let router = lab.router("router")?;
        attach(lab, &router, &site, "eth0", ROUTER_SITE_V4, ROUTER_SITE_V6)?;
        attach(
            lab,
            &router,
            &uplink,
            "eth1",
            ROUTER_UPLINK_V4,
            ROUTER_UPLINK_V6,
        )?;

        let mut nodes = Vec::new();
        for i in 0..3 {
            let node = lab.host(&format!("node{}", i + 1))?;
            attach(lab, &node, &site, "eth0", &node_v4(i), &node_v6(i))?;
            default_via(&node, ROUTER_SITE_V4, ROUTER_SITE_V6)?;
            nodes.push(node);
        }
        let client = lab.host("client")?;
        attach(lab, &client, &site, "eth0", CLIENT_V4, CLIENT_V6)?;
        default_via(&client, ROUTER_SITE_V4, ROUTER_SITE_V6)?;

        let remote = lab.host("remote")?;
        attach(lab, &remote, &uplink, "eth0", REMOTE_V4, REMOTE_V6)?;
        default_via(&remote, ROUTER_UPLINK_V4, ROUTER_UPLINK_V6)?;
        // IPv6 ECMP hashes the flow label too: with none, all the remote client's connections
        // take one path, as its IPv4 ones do (the demo shows which node they reach).
        remote.sysctl("net.ipv6.auto_flowlabels", "0")?;

        Ok(DemoSite {
            site,
            uplink,
            router,
            nodes,
            client,
            remote,
        })
    }

    /// A node by name (`node1`..`node3`).
    pub fn node(&self, name: &str) -> Option<&Host> {
        self.nodes.iter().find(|n| n.name() == name)
    }

    /// BIRD configuration for the router: passive eBGP towards every node (v4 session with the
    /// ipv4 channel, v6 session with the ipv6 channel), learned routes installed into the
    /// router's kernel table with ECMP.
    pub fn router_bird_config(&self) -> super::BirdConfig {
        let mut cfg = super::BirdConfig::new(
            ROUTER_SITE_V4.parse().expect("constant address"),
            ROUTER_ASN,
        );
        cfg.kernel_export = true;
        for (i, node) in self.nodes.iter().enumerate() {
            for (v4, addr) in [(true, node_v4(i)), (false, node_v6(i))] {
                let mut n =
                    super::BgpNeighbor::new(addr.parse().expect("constant address"), NODE_ASN)
                        .named(&format!("{}_{}", node.name(), if v4 { "v4" } else { "v6" }))
                        .passive();
                n.ipv4 = v4;
                n.ipv6 = !v4;
                n.local_address = Some(
                    if v4 { ROUTER_SITE_V4 } else { ROUTER_SITE_V6 }
                        .parse()
                        .expect("constant address"),
                );
                cfg.neighbors.push(n);
            }
        }
        cfg
    }

    /// A human-readable description of the site and things to try.
    pub fn describe(&self) -> String {
        let ns = |h: &Host| h.netns().to_string();
        let mut s = String::new();
        s.push_str("metalnet demo site\n\n");
        s.push_str(&format!(
            "  switch site   ({SITE_V4}, {SITE_V6})   namespace {}\n",
            self.site.netns()
        ));
        s.push_str(&format!(
            "  switch uplink ({UPLINK_V4}, {UPLINK_V6})   namespace {}\n\n",
            self.uplink.netns()
        ));
        s.push_str(&format!(
            "  router  {ROUTER_SITE_V4} / {ROUTER_SITE_V6} (eth0), {ROUTER_UPLINK_V4} / {ROUTER_UPLINK_V6} (eth1)   ns {}   AS{ROUTER_ASN}\n",
            ns(&self.router)
        ));
        for (i, n) in self.nodes.iter().enumerate() {
            s.push_str(&format!(
                "  {}   {} / {}   ns {}   AS{NODE_ASN}\n",
                n.name(),
                node_v4(i),
                node_v6(i),
                ns(n)
            ));
        }
        s.push_str(&format!(
            "  client  {CLIENT_V4} / {CLIENT_V6}   ns {}\n",
            ns(&self.client)
        ));
        s.push_str(&format!(
            "  remote  {REMOTE_V4} / {REMOTE_V6}   ns {}\n\n",
            ns(&self.remote)
        ));
        s.push_str("Try:\n");
        s.push_str(&format!(
            "  ip netns exec {} ping -c1 {}\n",
            ns(&self.remote),
            node_v4(0)
        ));
        s.push_str(&format!("  ip netns exec {} ip route\n", ns(&self.router)));
        s.push_str(&format!(
            "  ip netns exec {} bash     # a shell on node1\n",
            ns(&self.nodes[0])
        ));
        s
    }
}
