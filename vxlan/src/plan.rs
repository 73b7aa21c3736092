//! The kernel state we want, derived from the cluster snapshot, and the ordered operations
//! that bring the observed kernel state to it (pure).
//!
//! Desired and observed state have the same shape (device, neighbours, FDB entries, routes,
//! keyed maps), so the diff is a merge of sorted maps: programming 1,000 peers from scratch
//! is one pass, and one Node change against the cached observed state yields one step.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;

use crate::annotations::{Mac, NodeView};
use crate::netconf::{Backend, NetConf, Pool};
use crate::subnet::{overlaps, peer_subnet};

/// IPv4 VXLAN overhead (outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14); IPv6 adds 20.
pub const OVERHEAD_V4: u32 = 50;
pub const OVERHEAD_V6: u32 = 70;

/// Facts about this node's underlay, resolved by the kernel layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Underlay {
    pub index: u32,
    pub mtu: u32,
    /// The interface's addresses with their prefixes (to tell peers on the same segment).
    pub nets: Vec<IpNet>,
}

/// The VXLAN device of one family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceSpec {
    pub name: String,
    pub vni: u32,
    pub port: u16,
    pub local: IpAddr,
    pub underlay_index: u32,
    pub learning: bool,
    pub mtu: u32,
    pub mac: Mac,
    /// The node subnet's network address as a host address (/32 or /128).
    pub address: IpNet,
}

/// Which interface a route leaves by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum RouteDev {
    Vxlan,
    Underlay,
    /// Observed only: some other interface (kernel index).
    Other(u32),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteSpec {
    pub dst: IpNet,
    pub gw: IpAddr,
    pub dev: RouteDev,
    pub onlink: bool,
}

/// One family's desired kernel state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    pub v6: bool,
    pub device: Option<DeviceSpec>,
    pub neighs: BTreeMap<IpAddr, Mac>,
    pub fdb: BTreeMap<Mac, IpAddr>,
    pub routes: BTreeMap<IpNet, RouteSpec>,
    /// Routes inside this network (other than to the own subnet) are ours to manage.
    pub network: IpNet,
    pub own_subnet: IpNet,
    /// Peers programmed (for metrics).
    pub peers: usize,
}

/// The device as the kernel has it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObservedDevice {
    pub index: u32,
    pub is_vxlan: bool,
    pub vni: Option<u32>,
    pub port: Option<u16>,
    pub local: Option<IpAddr>,
    pub underlay_index: Option<u32>,
    pub learning: Option<bool>,
    pub mtu: u32,
    pub mac: Option<Mac>,
    pub addresses: Vec<IpNet>,
    pub up: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObservedRoute {
    pub spec: RouteSpec,
    /// Carries our route protocol number (else it is adopted by replacing it).
    pub ours: bool,
}

/// One family's kernel state as observed (or as cached after our own changes).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    pub device: Option<ObservedDevice>,
    /// Permanent neighbours on the device.
    pub neighs: BTreeMap<IpAddr, Mac>,
    /// FDB entries with a remote on the device.
    pub fdb: BTreeMap<Mac, IpAddr>,
    /// Managed routes (inside the network, not the own subnet), by destination.
    pub routes: BTreeMap<IpNet, ObservedRoute>,
}

/// Something seen about a peer that keeps it from being programmed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    pub node: String,
    pub reason: String,
}

/// Inputs for one family.
pub struct FamilyInput<'a> {
    pub conf: &'a NetConf,
    pub pool: &'a Pool,
    pub own_subnet: IpNet,
    pub public_ip: IpAddr,
    pub underlay: &'a Underlay,
    pub mac: Mac,
}

/// Flannel's device name for a family and VNI.
pub fn device_name(v6: bool, vni: u32) -> String {
    if v6 {
        format!("flannel-v6.{vni}")
    } else {
        format!("flannel.{vni}")
    }
}

/// Builds one family's desired state from the peers' views.
pub fn desired(input: &FamilyInput<'_>, me: &str, nodes: &[NodeView]) -> (Desired, Vec<Skipped>) {
    let v6 = input.pool.network.addr().is_ipv6();
    let backend = &input.conf.backend;
    let device = match backend {
        Backend::Vxlan(vx) => Some(DeviceSpec {
            name: device_name(v6, vx.vni),
            vni: vx.vni,
            port: vx.port,
            local: input.public_ip,
            underlay_index: input.underlay.index,
            learning: vx.learning,
            mtu: vx.mtu.unwrap_or_else(|| {
                input
                    .underlay
                    .mtu
                    .saturating_sub(if v6 { OVERHEAD_V6 } else { OVERHEAD_V4 })
            }),
            mac: input.mac,
            address: IpNet::new(input.own_subnet.network(), if v6 { 128 } else { 32 })
                .expect("host prefix is valid"),
        }),
        Backend::HostGw => None,
    };
    let direct_ok = match backend {
        Backend::Vxlan(vx) => vx.direct_routing,
        Backend::HostGw => true,
    };
    let mut d = Desired {
        v6,
        device,
        neighs: BTreeMap::new(),
        fdb: BTreeMap::new(),
        routes: BTreeMap::new(),
        network: input.pool.network,
        own_subnet: input.own_subnet,
        peers: 0,
    };
    let mut skipped = Vec::new();
    let mut skip = |node: &NodeView, reason: String| {
        skipped.push(Skipped {
            node: node.name.clone(),
            reason,
        })
    };
    let mut macs_seen: BTreeSet<Mac> = BTreeSet::new();
    for node in nodes.iter().filter(|n| n.name != me) {
        let subnet = match peer_subnet(input.pool, node) {
            Ok(Some(s)) => s,
            Ok(None) => continue, // not (yet) a member of this family
            Err(e) => {
                skip(node, e.to_string());
                continue;
            }
        };
        let Some(public) = node.public(v6) else {
            continue; // no agent running there yet
        };
        if node.backend_type.as_deref() != Some(backend.type_name()) {
            skip(
                node,
                format!(
                    "backend-type {:?} differs from ours ({})",
                    node.backend_type.as_deref().unwrap_or(""),
                    backend.type_name()
                ),
            );
            continue;
        }
        if overlaps(&subnet, &input.own_subnet) {
            skip(
                node,
                format!("subnet {subnet} overlaps ours ({})", input.own_subnet),
            );
            continue;
        }
        // Subnets taken so far are disjoint, so only the neighbours in address order can
        // overlap a new one (O(log n) instead of a scan: this keeps 1,000 peers cheap).
        let before = d.routes.range(..=subnet).next_back().map(|(k, _)| *k);
        let after = d.routes.range(subnet..).next().map(|(k, _)| *k);
        if let Some(prev) = [before, after]
            .into_iter()
            .flatten()
            .find(|r| overlaps(r, &subnet))
        {
            skip(
                node,
                format!("subnet {subnet} overlaps another node's {prev}"),
            );
            continue;
        }
        let same_segment = input
            .underlay
            .nets
            .iter()
            .any(|n| n.contains(&public) && n.prefix_len() < n.max_prefix_len());
        if direct_ok && same_segment {
            d.routes.insert(
                subnet,
                RouteSpec {
                    dst: subnet,
                    gw: public,
                    dev: RouteDev::Underlay,
                    onlink: false,
                },
            );
            d.peers += 1;
            continue;
        }
        if matches!(backend, Backend::HostGw) {
            skip(
                node,
                format!("public IP {public} is not on our segment (host-gw)"),
            );
            continue;
        }
        let Some(data) = node.data(v6) else {
            skip(node, "no VtepMAC in backend-data".into());
            continue;
        };
        if !data.vtep_mac.is_unicast() || !macs_seen.insert(data.vtep_mac) {
            skip(
                node,
                format!("VtepMAC {} is not a unique unicast MAC", data.vtep_mac),
            );
            continue;
        }
        let gw = subnet.network();
        d.neighs.insert(gw, data.vtep_mac);
        d.fdb.insert(data.vtep_mac, public);
        d.routes.insert(
            subnet,
            RouteSpec {
                dst: subnet,
                gw,
                dev: RouteDev::Vxlan,
                onlink: true,
            },
        );
        d.peers += 1;
    }
    (d, skipped)
}

/// One change to the device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceOp {
    Create(DeviceSpec),
    /// Delete the existing device (other parameters, or not a vxlan device) and create anew.
    Recreate(DeviceSpec),
    SetMac(Mac),
    SetMtu(u32),
    AddAddress(IpNet),
    DelAddress(IpNet),
    Up,
}

/// What brings the observed device to the spec.
pub fn device_ops(spec: &DeviceSpec, obs: Option<&ObservedDevice>) -> Vec<DeviceOp> {
    let Some(o) = obs else {
        return vec![
            DeviceOp::Create(spec.clone()),
            DeviceOp::AddAddress(spec.address),
            DeviceOp::Up,
        ];
    };
    let compatible = o.is_vxlan
        && o.vni == Some(spec.vni)
        && o.port == Some(spec.port)
        && o.local == Some(spec.local)
        && o.underlay_index == Some(spec.underlay_index)
        && o.learning == Some(spec.learning);
    if !compatible {
        return vec![
            DeviceOp::Recreate(spec.clone()),
            DeviceOp::AddAddress(spec.address),
            DeviceOp::Up,
        ];
    }
    let mut ops = Vec::new();
    if o.mac != Some(spec.mac) {
        ops.push(DeviceOp::SetMac(spec.mac));
    }
    if o.mtu != spec.mtu {
        ops.push(DeviceOp::SetMtu(spec.mtu));
    }
    for a in &o.addresses {
        if *a != spec.address && a.addr().is_ipv6() == spec.address.addr().is_ipv6() {
            // Link-local IPv6 addresses belong to the kernel.
            if let IpAddr::V6(v6) = a.addr()
                && v6.segments()[0] & 0xffc0 == 0xfe80
            {
                continue;
            }
            ops.push(DeviceOp::DelAddress(*a));
        }
    }
    if !o.addresses.contains(&spec.address) {
        ops.push(DeviceOp::AddAddress(spec.address));
    }
    if !o.up {
        ops.push(DeviceOp::Up);
    }
    ops
}

/// One kernel entry change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    NeighSet { ip: IpAddr, mac: Mac },
    NeighDel { ip: IpAddr, mac: Mac },
    FdbSet { mac: Mac, dst: IpAddr },
    FdbDel { mac: Mac, dst: IpAddr },
    RouteSet(RouteSpec),
    RouteDel(RouteSpec),
}

impl Op {
    /// The operation undoing this one when a later op of its step fails.
    pub fn undo(&self) -> Op {
        match *self {
            Op::NeighSet { ip, mac } => Op::NeighDel { ip, mac },
            Op::NeighDel { ip, mac } => Op::NeighSet { ip, mac },
            Op::FdbSet { mac, dst } => Op::FdbDel { mac, dst },
            Op::FdbDel { mac, dst } => Op::FdbSet { mac, dst },
            Op::RouteSet(r) => Op::RouteDel(r),
            Op::RouteDel(r) => Op::RouteSet(r),
        }
    }
}

/// Operations applied in order and rolled back together: one peer's entries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub ops: Vec<Op>,
}

/// The entry changes bringing `obs` to `want`: first the removal steps (route, FDB,
/// neighbour: the reverse of adding), then one step per added or changed peer (neighbour,
/// FDB, route). Steps of one list are independent of one another.
pub fn diff(want: &Desired, obs: &Observed) -> (Vec<Step>, Vec<Step>) {
    let mut removals = Vec::new();
    let mut stale_neighs: BTreeMap<IpAddr, Mac> = obs
        .neighs
        .iter()
        .filter(|(ip, _)| !want.neighs.contains_key(ip))
        .map(|(ip, mac)| (*ip, *mac))
        .collect();
    let mut stale_fdb: BTreeMap<Mac, IpAddr> = obs
        .fdb
        .iter()
        .filter(|(mac, _)| !want.fdb.contains_key(mac))
        .map(|(m, d)| (*m, *d))
        .collect();
    for (dst, r) in &obs.routes {
        if want.routes.contains_key(dst) {
            continue;
        }
        let mut ops = vec![Op::RouteDel(r.spec)];
        if let Some(mac) = stale_neighs.remove(&dst.network()) {
            if let Some(fdst) = stale_fdb.remove(&mac) {
                ops.push(Op::FdbDel { mac, dst: fdst });
            }
            ops.push(Op::NeighDel {
                ip: dst.network(),
                mac,
            });
        }
        removals.push(Step { ops });
    }
    for (mac, dst) in stale_fdb {
        removals.push(Step {
            ops: vec![Op::FdbDel { mac, dst }],
        });
    }
    for (ip, mac) in stale_neighs {
        removals.push(Step {
            ops: vec![Op::NeighDel { ip, mac }],
        });
    }
    let mut additions = Vec::new();
    for (dst, r) in &want.routes {
        let mut ops = Vec::new();
        if r.dev == RouteDev::Vxlan {
            let ip = r.gw;
            if let Some(mac) = want.neighs.get(&ip) {
                if obs.neighs.get(&ip) != Some(mac) {
                    ops.push(Op::NeighSet { ip, mac: *mac });
                }
                if let Some(fdst) = want.fdb.get(mac)
                    && obs.fdb.get(mac) != Some(fdst)
                {
                    ops.push(Op::FdbSet {
                        mac: *mac,
                        dst: *fdst,
                    });
                }
            }
        }
        match obs.routes.get(dst) {
            Some(o) if o.ours && o.spec == *r => {}
            _ => ops.push(Op::RouteSet(*r)),
        }
        if !ops.is_empty() {
            additions.push(Step { ops });
        }
    }
    (removals, additions)
}

impl Observed {
    /// Records an applied operation, so the cache matches the kernel without a re-read.
    pub fn record(&mut self, op: &Op) {
        match *op {
            Op::NeighSet { ip, mac } => {
                self.neighs.insert(ip, mac);
            }
            Op::NeighDel { ip, .. } => {
                self.neighs.remove(&ip);
            }
            Op::FdbSet { mac, dst } => {
                self.fdb.insert(mac, dst);
            }
            Op::FdbDel { mac, .. } => {
                self.fdb.remove(&mac);
            }
            Op::RouteSet(spec) => {
                self.routes
                    .insert(spec.dst, ObservedRoute { spec, ours: true });
            }
            Op::RouteDel(spec) => {
                self.routes.remove(&spec.dst);
            }
        }
    }

    /// Forgets everything that lived on the device (it was deleted or recreated).
    pub fn forget_device_entries(&mut self) {
        self.neighs.clear();
        self.fdb.clear();
        self.routes.retain(|_, r| r.spec.dev != RouteDev::Vxlan);
    }
}

/// Whether a route the kernel shows is one this family manages.
pub fn is_managed_route(dst: &IpNet, network: &IpNet, own_subnet: &IpNet) -> bool {
    network.contains(dst) && dst.prefix_len() > network.prefix_len() && !overlaps(dst, own_subnet)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::annotations::BackendData;

    fn conf(backend: &str) -> NetConf {
        NetConf::parse(&format!(
            r#"{{"Network":"10.0.0.0/8","Backend":{backend}}}"#
        ))
        .unwrap()
    }

    fn underlay() -> Underlay {
        Underlay {
            index: 7,
            mtu: 1500,
            nets: vec!["192.0.2.1/24".parse().unwrap()],
        }
    }

    fn peer(i: u32, public: &str) -> NodeView {
        NodeView {
            name: format!("node-{i:04}"),
            pod_cidrs: vec![
                IpNet::new(
                    IpAddr::V4((u32::from(std::net::Ipv4Addr::new(10, 0, 0, 0)) + (i << 8)).into()),
                    24,
                )
                .unwrap(),
            ],
            backend_type: Some("vxlan".into()),
            backend_data: Some(BackendData {
                vni: 1,
                vtep_mac: Mac([2, 0, 0, 1, (i >> 8) as u8, i as u8]),
            }),
            public_ip: Some(public.parse().unwrap()),
            ..Default::default()
        }
    }

    fn build(c: &NetConf, nodes: &[NodeView]) -> (Desired, Vec<Skipped>) {
        let pool = c.ipv4.clone().unwrap();
        let u = underlay();
        let input = FamilyInput {
            conf: c,
            pool: &pool,
            own_subnet: "10.0.0.0/24".parse().unwrap(),
            public_ip: "192.0.2.1".parse().unwrap(),
            underlay: &u,
            mac: Mac([2, 9, 9, 9, 9, 9]),
        };
        desired(&input, "me", nodes)
    }

    fn apply_all(obs: &mut Observed, steps: &[Step]) {
        for s in steps {
            for op in &s.ops {
                obs.record(op);
            }
        }
    }

    #[test]
    fn device_defaults() {
        let c = conf(r#"{"Type":"vxlan"}"#);
        let (d, _) = build(&c, &[]);
        let dev = d.device.unwrap();
        assert_eq!(dev.name, "flannel.1");
        assert_eq!(
            (dev.vni, dev.port, dev.mtu, dev.learning),
            (1, 8472, 1450, false)
        );
        assert_eq!(dev.address.to_string(), "10.0.0.0/32");
        assert_eq!(device_name(true, 1), "flannel-v6.1");
    }

    #[test]
    fn vxlan_peer_entries_in_order() {
        let c = conf(r#"{"Type":"vxlan"}"#);
        let (d, skipped) = build(&c, &[peer(1, "198.51.100.2")]);
        assert!(skipped.is_empty());
        let (rem, add) = diff(&d, &Observed::default());
        assert!(rem.is_empty());
        assert_eq!(add.len(), 1);
        let ops = &add[0].ops;
        assert!(matches!(ops[0], Op::NeighSet { ip, .. } if ip.to_string() == "10.0.1.0"));
        assert!(matches!(ops[1], Op::FdbSet { dst, .. } if dst.to_string() == "198.51.100.2"));
        assert!(
            matches!(ops[2], Op::RouteSet(r) if r.onlink && r.dev == RouteDev::Vxlan && r.gw.to_string() == "10.0.1.0")
        );
    }

    #[test]
    fn thousand_peers_then_one_change() {
        let c = conf(r#"{"Type":"vxlan"}"#);
        let mut nodes: Vec<NodeView> = (1..=1000).map(|i| peer(i, "198.51.100.2")).collect();
        let (d, _) = build(&c, &nodes);
        assert_eq!(d.peers, 1000);
        let mut obs = Observed::default();
        let (rem, add) = diff(&d, &obs);
        assert_eq!((rem.len(), add.len()), (0, 1000));
        apply_all(&mut obs, &add);
        // Adopting an identical kernel: nothing to do.
        assert_eq!(diff(&d, &obs), (vec![], vec![]));
        // One peer moves: one step, FDB only.
        nodes[10].public_ip = Some("198.51.100.9".parse().unwrap());
        let (d2, _) = build(&c, &nodes);
        let (rem, add) = diff(&d2, &obs);
        assert!(rem.is_empty());
        assert_eq!(add.len(), 1);
        assert!(matches!(add[0].ops[..], [Op::FdbSet { .. }]));
        // One peer leaves: route, FDB, neighbour removed in that order.
        nodes.remove(20);
        let (d3, _) = build(&c, &nodes);
        apply_all(&mut obs, &add);
        let (rem, add) = diff(&d3, &obs);
        assert!(add.is_empty());
        assert_eq!(rem.len(), 1);
        assert!(matches!(
            rem[0].ops[..],
            [Op::RouteDel(_), Op::FdbDel { .. }, Op::NeighDel { .. }]
        ));
    }

    #[test]
    fn foreign_route_is_adopted_by_replacing() {
        let c = conf(r#"{"Type":"vxlan"}"#);
        let (d, _) = build(&c, &[peer(1, "198.51.100.2")]);
        let mut obs = Observed::default();
        let (_, add) = diff(&d, &obs);
        apply_all(&mut obs, &add);
        for r in obs.routes.values_mut() {
            r.ours = false; // as flanneld left it (proto boot)
        }
        let (_, add) = diff(&d, &obs);
        assert!(matches!(add[0].ops[..], [Op::RouteSet(_)]));
    }

    #[test]
    fn direct_routing_and_host_gw() {
        let c = conf(r#"{"Type":"vxlan","DirectRouting":true}"#);
        let nodes = [peer(1, "192.0.2.2"), peer(2, "198.51.100.3")];
        let (d, _) = build(&c, &nodes);
        assert_eq!(d.routes.len(), 2);
        let near = d.routes[&"10.0.1.0/24".parse().unwrap()];
        assert_eq!(
            (near.dev, near.gw.to_string(), near.onlink),
            (RouteDev::Underlay, "192.0.2.2".into(), false)
        );
        assert_eq!(d.neighs.len(), 1);
        let c = conf(r#"{"Type":"host-gw"}"#);
        let mut nodes = nodes.to_vec();
        for n in &mut nodes {
            n.backend_type = Some("host-gw".into());
        }
        let (d, skipped) = build(&c, &nodes);
        assert!(d.device.is_none());
        assert_eq!(d.routes.len(), 1);
        assert!(d.neighs.is_empty() && d.fdb.is_empty());
        assert_eq!(skipped.len(), 1);
    }

    #[test]
    fn skips_bad_peers() {
        let c = conf(r#"{"Type":"vxlan"}"#);
        let mut wrong_type = peer(1, "198.51.100.2");
        wrong_type.backend_type = Some("host-gw".into());
        let mut outside = peer(2, "198.51.100.3");
        outside.pod_cidrs = vec!["11.9.0.0/24".parse().unwrap()];
        let mut overlapping = peer(3, "198.51.100.4");
        overlapping.pod_cidrs = vec!["10.0.0.0/25".parse().unwrap()];
        let mut no_mac = peer(4, "198.51.100.5");
        no_mac.backend_data = None;
        let (d, skipped) = build(&c, &[wrong_type, outside, overlapping, no_mac]);
        assert_eq!(d.peers, 0);
        assert_eq!(skipped.len(), 4, "{skipped:?}");
        assert!(skipped[1].reason.contains("outside"));
    }

    #[test]
    fn overlapping_peers_first_by_name_wins() {
        let c = conf(r#"{"Type":"vxlan"}"#);
        let mut wide = peer(1, "198.51.100.2");
        wide.pod_cidrs = vec!["10.0.4.0/22".parse().unwrap()];
        let mut inside = peer(2, "198.51.100.3");
        inside.pod_cidrs = vec!["10.0.6.0/24".parse().unwrap()];
        let mut before = peer(3, "198.51.100.4");
        before.pod_cidrs = vec!["10.0.3.0/24".parse().unwrap()];
        let (d, skipped) = build(&c, &[wide, inside, before]);
        assert_eq!(d.peers, 2);
        assert_eq!(skipped.len(), 1);
        assert!(
            skipped[0]
                .reason
                .contains("overlaps another node's 10.0.4.0/22"),
            "{skipped:?}"
        );
    }

    #[test]
    fn device_diff() {
        let c = conf(r#"{"Type":"vxlan"}"#);
        let (d, _) = build(&c, &[]);
        let spec = d.device.unwrap();
        assert!(matches!(device_ops(&spec, None)[0], DeviceOp::Create(_)));
        let good = ObservedDevice {
            index: 9,
            is_vxlan: true,
            vni: Some(1),
            port: Some(8472),
            local: Some(spec.local),
            underlay_index: Some(7),
            learning: Some(false),
            mtu: 1450,
            mac: Some(spec.mac),
            addresses: vec![spec.address],
            up: true,
        };
        assert!(device_ops(&spec, Some(&good)).is_empty());
        let other_vni = ObservedDevice {
            vni: Some(2),
            ..good.clone()
        };
        assert!(matches!(
            device_ops(&spec, Some(&other_vni))[0],
            DeviceOp::Recreate(_)
        ));
        let drift = ObservedDevice {
            mtu: 1400,
            addresses: vec!["10.1.0.0/32".parse().unwrap()],
            up: false,
            ..good
        };
        assert_eq!(
            device_ops(&spec, Some(&drift)),
            vec![
                DeviceOp::SetMtu(1450),
                DeviceOp::DelAddress("10.1.0.0/32".parse().unwrap()),
                DeviceOp::AddAddress(spec.address),
                DeviceOp::Up
            ]
        );
    }

    #[test]
    fn managed_routes() {
        let net: IpNet = "10.244.0.0/16".parse().unwrap();
        let own: IpNet = "10.244.0.0/24".parse().unwrap();
        assert!(is_managed_route(
            &"10.244.3.0/24".parse().unwrap(),
            &net,
            &own
        ));
        assert!(!is_managed_route(&own, &net, &own));
        assert!(!is_managed_route(&net, &net, &own));
        assert!(!is_managed_route(
            &"10.9.0.0/24".parse().unwrap(),
            &net,
            &own
        ));
    }
}
