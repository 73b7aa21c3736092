//! The text of `metalnet-router explain node NAME` (sessions, state, routes sent and
//! received, why a peering does or does not exist) and `explain route CIDR`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;

use std::fmt::Write as _;

use super::loc_rib::Desired;
use super::options::fmt_duration;
use super::topology::{PeerKind, PeerSpec};

/// What the daemon knows of one running session, for `explain node`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionView {
    /// The FSM state (`Established`, `Active`, ...).
    pub state: String,
    /// Time since the session became Established.
    pub uptime: Option<Duration>,
    pub last_error: Option<String>,
    /// Routes sent to the peer.
    pub sent: usize,
    /// Routes received from the peer.
    pub received: usize,
}

fn kind(p: &PeerSpec) -> String {
    match &p.kind {
        PeerKind::Node { name } => format!("node {name}"),
        PeerKind::GlobalExternal => "external router (--peer-router-ips)".into(),
        PeerKind::AnnotatedExternal => "external router (kube-router.io/peers)".into(),
    }
}

fn peer_line(out: &mut String, p: &PeerSpec, s: Option<&SessionView>) {
    let _ = write!(
        out,
        "  {} {}: {} AS {} -> AS {}, port {}, {}",
        p.address,
        kind(p),
        if p.is_ibgp() { "iBGP" } else { "eBGP" },
        p.local_asn,
        p.peer_asn,
        p.port,
        if p.passive {
            "waits for its connection (higher address)"
        } else {
            "connects"
        },
    );
    if p.rr_client {
        out.push_str(", route-reflector client");
    }
    if p.password.is_some() {
        out.push_str(", TCP MD5");
    }
    if let Some(ttl) = p.multihop_ttl {
        let _ = write!(out, ", multihop TTL {ttl}");
    }
    if let Some(l) = p.local_address {
        let _ = write!(out, ", from {l}");
    }
    out.push('\n');
    match s {
        Some(s) => {
            let _ = write!(out, "    session {}", s.state);
            if let Some(up) = s.uptime {
                let _ = write!(
                    out,
                    " for {}",
                    fmt_duration(Duration::from_secs(up.as_secs()))
                );
            }
            let _ = write!(out, ", routes sent {}, received {}", s.sent, s.received);
            if let Some(e) = &s.last_error {
                let _ = write!(out, ", last error: {e}");
            }
            out.push('\n');
        }
        None => out.push_str("    session not running yet\n"),
    }
}

/// `explain node NAME`: for the local node its sessions, their state and routes; for another
/// node whether and why a peering with it exists.
pub fn node(desired: &Desired, sessions: &BTreeMap<IpAddr, SessionView>, name: &str) -> String {
    let plan = &desired.plan;
    let mut out = String::new();
    if name == desired.node {
        let _ = write!(out, "node {name} (this node): ");
        match (plan.local_asn, plan.router_id) {
            (Some(asn), Some(id)) => {
                let _ = write!(out, "BGP AS {asn}, router id {id}");
                if let Some(c) = plan.cluster_id {
                    let _ = write!(out, ", route reflector for cluster id {c}");
                }
                out.push('\n');
            }
            _ => {
                let _ = writeln!(
                    out,
                    "BGP not running: {}",
                    plan.not_running.as_deref().unwrap_or("unknown reason")
                );
            }
        }
        let _ = writeln!(out, "sessions ({}):", plan.peers.len());
        for (addr, p) in &plan.peers {
            peer_line(&mut out, p, sessions.get(addr));
            if let Some(why) = plan.reasons.get(addr) {
                let _ = writeln!(out, "    why: {why}");
            }
            let sent = desired.exports.get(addr).map_or(0, BTreeMap::len);
            let _ = writeln!(out, "    routes wanted out: {sent}");
        }
        let stray: Vec<_> = sessions
            .keys()
            .filter(|a| !plan.peers.contains_key(a))
            .collect();
        for a in stray {
            let _ = writeln!(
                out,
                "  {a}: session running but no longer planned (being removed)"
            );
        }
        if !plan.skipped.is_empty() {
            let _ = writeln!(out, "not peered with ({}):", plan.skipped.len());
            for s in &plan.skipped {
                let _ = writeln!(out, "  {}: {}", s.node, s.reason);
            }
        }
        let _ = writeln!(
            out,
            "routes: {} best, {} in the kernel, {} rejected, {} not best",
            desired.best.len(),
            desired.kernel.len(),
            desired.rejected.len(),
            desired.lost.len()
        );
        return out;
    }
    let peer = plan
        .peers
        .values()
        .find(|p| matches!(&p.kind, PeerKind::Node { name: n } if n == name));
    if let Some(p) = peer {
        let _ = writeln!(out, "node {name}: peered with from {}:", desired.node);
        peer_line(&mut out, p, sessions.get(&p.address));
        if let Some(why) = plan.reasons.get(&p.address) {
            let _ = writeln!(out, "  why: {why}");
        }
        let learned: Vec<String> = desired
            .best
            .iter()
            .filter(|(_, b)| b.peer == p.address)
            .map(|(prefix, _)| prefix.to_string())
            .collect();
        let _ = writeln!(
            out,
            "  best routes from it: {}",
            if learned.is_empty() {
                "none".to_string()
            } else {
                learned.join(", ")
            }
        );
        let sent = desired.exports.get(&p.address).map_or(0, BTreeMap::len);
        let _ = writeln!(out, "  routes wanted out to it: {sent}");
    } else if let Some(s) = plan.skipped.iter().find(|s| s.node == name) {
        let _ = writeln!(
            out,
            "node {name}: no peering from {}: {}",
            desired.node, s.reason
        );
    } else {
        let _ = writeln!(
            out,
            "node {name}: not a known node (no Node object with that name)"
        );
    }
    out
}

fn origin(o: u8) -> &'static str {
    match o {
        0 => "IGP",
        1 => "EGP",
        _ => "incomplete",
    }
}

fn peer_name(desired: &Desired, addr: &IpAddr) -> String {
    desired
        .plan
        .peers
        .get(addr)
        .map_or_else(|| addr.to_string(), |p| format!("{addr} ({})", kind(p)))
}

/// `explain route CIDR`: the best route, the other candidates and why they lost or were
/// rejected, and the kernel route.
pub fn route(desired: &Desired, prefix: IpNet) -> String {
    let prefix = prefix.trunc();
    let mut out = String::new();
    let _ = writeln!(out, "route {prefix} on node {}:", desired.node);
    match desired.best.get(&prefix) {
        Some(b) => {
            let r = &b.route;
            let _ = write!(
                out,
                "  best: from {}, next hop {}, AS_PATH [{}], ORIGIN {}",
                peer_name(desired, &b.peer),
                r.next_hop,
                r.as_path
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(" "),
                origin(r.origin)
            );
            if let Some(lp) = r.local_pref {
                let _ = write!(out, ", LOCAL_PREF {lp}");
            }
            if let Some(med) = r.med {
                let _ = write!(out, ", MED {med}");
            }
            if let Some(o) = r.originator_id {
                let _ = write!(out, ", ORIGINATOR_ID {o}");
            }
            if !r.cluster_list.is_empty() {
                let ids: Vec<String> = r.cluster_list.iter().map(ToString::to_string).collect();
                let _ = write!(out, ", CLUSTER_LIST [{}]", ids.join(" "));
            }
            if r.stale {
                out.push_str(", stale (graceful restart)");
            }
            out.push('\n');
        }
        None => out.push_str("  best: none received\n"),
    }
    if let Some(own) = desired.pod_cidrs.iter().find(|c| c.contains(&prefix)) {
        let _ = writeln!(
            out,
            "  inside this node's own pod CIDR {own}: never learned, only announced"
        );
    }
    for l in desired.lost.iter().filter(|l| l.prefix == prefix) {
        let _ = writeln!(
            out,
            "  candidate from {}: {}",
            peer_name(desired, &l.peer),
            l.reason
        );
    }
    for r in desired.rejected.iter().filter(|r| r.prefix == prefix) {
        let _ = writeln!(out, "  from {}: {}", peer_name(desired, &r.peer), r.reason);
    }
    match desired.kernel.get(&prefix) {
        Some(k) => {
            let _ = writeln!(out, "  kernel: {} via {} proto 17", k.dst, k.gateway);
        }
        None => out.push_str("  kernel: no route\n"),
    }
    for v in desired
        .vips
        .iter()
        .filter(|v| IpNet::from(v.address) == prefix)
    {
        let _ = writeln!(
            out,
            "  Service address: {:?} of {}, {}",
            v.kind,
            v.service,
            if v.announced() {
                "announced to external peers"
            } else if !v.advertise {
                "not advertised (flags and annotations)"
            } else {
                "not announced: local traffic policy and no ready local endpoint"
            }
        );
    }
    let to: Vec<String> = desired
        .exports
        .iter()
        .filter_map(|(addr, t)| {
            t.get(&prefix).map(|a| {
                let nh = a
                    .next_hop
                    .map_or_else(|| "self".to_string(), |n| n.to_string());
                format!("{addr} (next hop {nh})")
            })
        })
        .collect();
    let _ = writeln!(
        out,
        "  announced to: {}",
        if to.is_empty() {
            "nobody".to_string()
        } else {
            to.join(", ")
        }
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::loc_rib::{Inputs, desired};
    use crate::routing::options::RoutingOptions;
    use crate::routing::topology::testing::{node as view, with};
    use metalnet::bgp::ReceivedRoute;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }
    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }
    fn rx(nh: &str) -> ReceivedRoute {
        ReceivedRoute {
            next_hop: ip(nh),
            origin: 0,
            as_path: vec![],
            med: None,
            local_pref: Some(100),
            communities: vec![],
            large_communities: vec![],
            originator_id: None,
            cluster_list: vec![],
            stale: false,
        }
    }

    fn setup() -> Desired {
        let nodes = vec![
            view("n1", &["192.0.2.1"], &["10.244.1.0/24"]),
            view("n2", &["192.0.2.2"], &["10.244.2.0/24"]),
            view("n3", &["192.0.2.3"], &["10.244.3.0/24"]),
            with(view("c1", &["192.0.2.4"], &[]), |b| {
                b.rr_client = Some("0.0.0.1".parse().unwrap())
            }),
        ];
        let mut received: BTreeMap<IpAddr, BTreeMap<IpNet, ReceivedRoute>> = BTreeMap::new();
        received
            .entry(ip("192.0.2.2"))
            .or_default()
            .insert(net("10.244.2.0/24"), rx("192.0.2.2"));
        received.entry(ip("192.0.2.3")).or_default().insert(
            net("10.244.2.0/24"),
            ReceivedRoute {
                local_pref: Some(50),
                ..rx("192.0.2.3")
            },
        );
        received
            .entry(ip("192.0.2.3"))
            .or_default()
            .insert(net("0.0.0.0/0"), rx("192.0.2.3"));
        received
            .entry(ip("192.0.2.3"))
            .or_default()
            .insert(net("10.244.3.0/24"), rx("198.51.100.3"));
        desired(Inputs {
            opts: &RoutingOptions::default(),
            local: &nodes[0],
            nodes: &nodes,
            vips: &[],
            received: &received,
            connected: &[net("192.0.2.0/24")],
        })
    }

    #[test]
    fn local_node() {
        let d = setup();
        let mut s = BTreeMap::new();
        s.insert(
            ip("192.0.2.2"),
            SessionView {
                state: "Established".into(),
                uptime: Some(Duration::from_secs(3723)),
                last_error: None,
                sent: 1,
                received: 1,
            },
        );
        s.insert(
            ip("192.0.2.3"),
            SessionView {
                state: "Active".into(),
                last_error: Some("connection refused".into()),
                ..SessionView::default()
            },
        );
        let t = node(&d, &s, "n1");
        assert!(
            t.contains("node n1 (this node): BGP AS 64512, router id 192.0.2.1"),
            "{t}"
        );
        assert!(
            t.contains(
                "192.0.2.2 node n2: iBGP AS 64512 -> AS 64512, port 179, connects, from 192.0.2.1"
            ),
            "{t}"
        );
        assert!(
            t.contains("session Established for 1h2m3s, routes sent 1, received 1"),
            "{t}"
        );
        assert!(t.contains("last error: connection refused"), "{t}");
        assert!(
            t.contains("c1: we are not a route-reflector server")
                || t.contains("c1: it is a route-reflector client"),
            "{t}"
        );
        assert!(t.contains("routes: 2 best, 1 in the kernel"), "{t}");
    }

    #[test]
    fn other_nodes() {
        let d = setup();
        let t = node(&d, &BTreeMap::new(), "n2");
        assert!(t.contains("node n2: peered with from n1"), "{t}");
        assert!(t.contains("session not running yet"), "{t}");
        assert!(t.contains("best routes from it: 10.244.2.0/24"), "{t}");
        assert!(
            t.contains("why: full mesh (--nodes-full-mesh): iBGP in the cluster AS 64512"),
            "{t}"
        );
        let t = node(&d, &BTreeMap::new(), "c1");
        assert!(
            t.contains("node c1: no peering from n1: it is a route-reflector client"),
            "{t}"
        );
        let t = node(&d, &BTreeMap::new(), "zz");
        assert!(t.contains("not a known node"), "{t}");
    }

    #[test]
    fn not_running() {
        let nodes = vec![view("v6", &["2001:db8::1"], &[])];
        let d = desired(Inputs {
            opts: &RoutingOptions::default(),
            local: &nodes[0],
            nodes: &nodes,
            vips: &[],
            received: &BTreeMap::new(),
            connected: &[],
        });
        let t = node(&d, &BTreeMap::new(), "v6");
        assert!(
            t.contains("BGP not running: the primary address 2001:db8::1 is IPv6"),
            "{t}"
        );
    }

    #[test]
    fn routes() {
        let d = setup();
        let t = route(&d, net("10.244.2.0/24"));
        assert!(
            t.contains("best: from 192.0.2.2 (node n2), next hop 192.0.2.2"),
            "{t}"
        );
        assert!(
            t.contains("candidate from 192.0.2.3 (node n3): not best: lost to the route from 192.0.2.2 on LOCAL_PREF"),
            "{t}"
        );
        assert!(
            t.contains("kernel: 10.244.2.0/24 via 192.0.2.2 proto 17"),
            "{t}"
        );
        let t = route(&d, net("0.0.0.0/0"));
        assert!(
            t.contains("best: none received") && t.contains("default route"),
            "{t}"
        );
        let t = route(&d, net("10.244.3.0/24"));
        assert!(
            t.contains("no connected subnet") && t.contains("kernel: no route"),
            "{t}"
        );
        let t = route(&d, net("10.244.1.0/24"));
        assert!(
            t.contains("inside this node's own pod CIDR 10.244.1.0/24"),
            "{t}"
        );
        assert!(
            t.contains(
                "announced to: 192.0.2.2 (next hop 192.0.2.1), 192.0.2.3 (next hop 192.0.2.1)"
            ),
            "{t}"
        );
    }
}
