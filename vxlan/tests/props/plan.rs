//! Plan convergence: from any observed kernel state, the steps of `diff` (recorded as the
//! agent records them after each successful op) reach the desired state, touch no route
//! outside the managed range, and a failed step's rollback leaves a state the next sync
//! repairs.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;
use metalnet_vxlan::annotations::{BackendData, Mac, NodeView};
use metalnet_vxlan::netconf::NetConf;
use metalnet_vxlan::plan::{
    Desired, DeviceOp, DeviceSpec, FamilyInput, Observed, ObservedDevice, ObservedRoute, Op,
    RouteDev, RouteSpec, Skipped, Step, Underlay, desired, device_ops, diff, is_managed_route,
};
use metalnet_vxlan::subnet::peer_subnet;
use proptest::prelude::*;

const ME: &str = "me";

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

fn net(a: IpAddr, len: u8) -> IpNet {
    IpNet::new(a, len).unwrap().trunc()
}

/// Small pools so that subnets, MACs and IPs collide often.
const MACS: [[u8; 6]; 6] = [
    [2, 0, 0, 0, 0, 1],
    [2, 0, 0, 0, 0, 2],
    [2, 0, 0, 0, 0, 3],
    [2, 0, 0, 0, 0, 4],
    [1, 0, 0x5e, 0, 0, 1], // multicast
    [0; 6],
];

fn mac() -> impl Strategy<Value = Mac> {
    (0..MACS.len()).prop_map(|i| Mac(MACS[i]))
}

/// Subnets in, around and outside the network 10.0.0.0/16 (own subnet 10.0.0.0/24 or 10.0.1.0/24).
fn subnet() -> impl Strategy<Value = IpNet> {
    prop_oneof![
        6 => (0u8..8).prop_map(|k| net(v4(10, 0, k, 0), 24)),
        1 => (0u8..8).prop_map(|k| net(v4(10, 0, k, 0), 23)),
        1 => (0u8..8, any::<bool>()).prop_map(|(k, hi)| net(v4(10, 0, k, if hi { 128 } else { 0 }), 25)),
        1 => (0u8..4).prop_map(|k| net(v4(10, 1, k, 0), 24)),
        1 => Just(net(v4(10, 0, 0, 0), 16)),
        1 => Just(net(v4(10, 0, 0, 0), 8)),
        1 => Just(net("2001:db8::".parse().unwrap(), 64)),
    ]
}

fn public_ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        (1u8..5).prop_map(|d| v4(192, 0, 2, d)),    // our segment
        (1u8..5).prop_map(|d| v4(198, 51, 100, d)), // elsewhere
    ]
}

fn peer(i: usize) -> impl Strategy<Value = NodeView> {
    (
        any::<bool>().prop_map(move |me| {
            if me && i == 0 {
                ME.to_string()
            } else {
                format!("n{i}")
            }
        }),
        proptest::collection::vec(subnet(), 0..3),
        proptest::option::weighted(0.3, subnet()),
        proptest::option::weighted(
            0.9,
            prop_oneof![4 => Just("vxlan"), 2 => Just("host-gw"), 1 => Just("udp")],
        ),
        proptest::option::weighted(0.85, (mac(), 0u32..3)),
        proptest::option::weighted(0.9, public_ip()),
    )
        .prop_map(|(name, pod_cidrs, lease, ty, data, public)| NodeView {
            name,
            pod_cidrs,
            lease_v4: lease.filter(|l| l.addr().is_ipv4()),
            backend_type: ty.map(str::to_string),
            backend_data: data.map(|(m, vni)| BackendData { vni, vtep_mac: m }),
            public_ip: public,
            ..Default::default()
        })
}

fn peers() -> impl Strategy<Value = Vec<NodeView>> {
    (0usize..10).prop_flat_map(|n| (0..n).map(peer).collect::<Vec<_>>())
}

#[derive(Clone, Debug)]
struct Setup {
    conf: NetConf,
    own_subnet: IpNet,
}

fn setup() -> impl Strategy<Value = Setup> {
    (
        prop_oneof![
            Just(r#"{"Type":"vxlan"}"#),
            Just(r#"{"Type":"vxlan","DirectRouting":true}"#),
            Just(r#"{"Type":"host-gw"}"#),
        ],
        0u8..2,
    )
        .prop_map(|(backend, own)| Setup {
            conf: NetConf::parse(&format!(
                r#"{{"Network":"10.0.0.0/16","Backend":{backend}}}"#
            ))
            .unwrap(),
            own_subnet: net(v4(10, 0, own, 0), 24),
        })
}

fn underlay() -> Underlay {
    Underlay {
        index: 7,
        mtu: 1500,
        nets: vec![
            "192.0.2.1/24".parse().unwrap(),
            "203.0.113.9/32".parse().unwrap(),
        ],
    }
}

fn build(s: &Setup, nodes: &[NodeView]) -> (Desired, Vec<Skipped>) {
    let pool = s.conf.ipv4.clone().unwrap();
    let u = underlay();
    let input = FamilyInput {
        conf: &s.conf,
        pool: &pool,
        own_subnet: s.own_subnet,
        public_ip: v4(192, 0, 2, 1),
        underlay: &u,
        mac: Mac([2, 9, 9, 9, 9, 9]),
    };
    desired(&input, ME, nodes)
}

/// Kernel entries with no relation to the desired state.
#[derive(Clone, Debug)]
struct Junk {
    neighs: Vec<(IpAddr, Mac)>,
    fdb: Vec<(Mac, IpAddr)>,
    routes: Vec<(IpNet, IpAddr, u8, bool, bool)>,
}

fn junk() -> impl Strategy<Value = Junk> {
    let ip = || prop_oneof![(0u8..8).prop_map(|k| v4(10, 0, k, 0)), public_ip()];
    (
        proptest::collection::vec((ip(), mac()), 0..5),
        proptest::collection::vec((mac(), ip()), 0..5),
        proptest::collection::vec((subnet(), ip(), 0u8..3, any::<bool>(), any::<bool>()), 0..6),
    )
        .prop_map(|(neighs, fdb, routes)| Junk {
            neighs,
            fdb,
            routes,
        })
}

/// What the kernel shows: some of the desired entries as they should be, then junk on top,
/// keeping only managed routes (as `Kernel::observe` does).
fn observed(want: &Desired, keep: &[bool], junk: &Junk) -> Observed {
    let mut keep = keep.iter().cycle().copied();
    let mut o = Observed::default();
    for (ip, mac) in &want.neighs {
        if keep.next().unwrap_or(false) {
            o.neighs.insert(*ip, *mac);
        }
    }
    for (mac, dst) in &want.fdb {
        if keep.next().unwrap_or(false) {
            o.fdb.insert(*mac, *dst);
        }
    }
    for (dst, r) in &want.routes {
        if keep.next().unwrap_or(false) {
            let ours = keep.next().unwrap_or(true);
            o.routes.insert(*dst, ObservedRoute { spec: *r, ours });
        }
    }
    for (ip, mac) in &junk.neighs {
        o.neighs.insert(*ip, *mac);
    }
    for (mac, ip) in &junk.fdb {
        o.fdb.insert(*mac, *ip);
    }
    for (dst, gw, dev, onlink, ours) in &junk.routes {
        let dev = match dev {
            0 => RouteDev::Vxlan,
            1 => RouteDev::Underlay,
            _ => RouteDev::Other(3),
        };
        let spec = RouteSpec {
            dst: *dst,
            gw: *gw,
            dev,
            onlink: *onlink,
        };
        o.routes.insert(*dst, ObservedRoute { spec, ours: *ours });
    }
    o.routes
        .retain(|dst, _| is_managed_route(dst, &want.network, &want.own_subnet));
    o
}

/// A re-read of the kernel: only managed routes are seen.
fn reobserve(o: &Observed, want: &Desired) -> Observed {
    let mut o = o.clone();
    o.routes
        .retain(|dst, _| is_managed_route(dst, &want.network, &want.own_subnet));
    o
}

fn apply(o: &mut Observed, steps: &[Step], order: &[usize]) {
    // Steps of one list are independent: the agent runs them concurrently, in any order.
    let mut idx: Vec<usize> = (0..steps.len()).collect();
    for (i, k) in order.iter().enumerate().take(idx.len()) {
        let j = k % idx.len();
        idx.swap(i, j);
    }
    for i in idx {
        for op in &steps[i].ops {
            o.record(op);
        }
    }
}

fn same_entries(a: &Observed, b: &Observed) -> bool {
    a.neighs == b.neighs
        && a.fdb == b.fdb
        && a.routes
            .iter()
            .map(|(k, r)| (k, r.spec))
            .eq(b.routes.iter().map(|(k, r)| (k, r.spec)))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn desired_leaves_out_only_with_a_reason(s in setup(), nodes in peers()) {
        let (d, skipped) = build(&s, &nodes);
        // The own node plays no part.
        let others: Vec<NodeView> = nodes.iter().filter(|n| n.name != ME).cloned().collect();
        prop_assert_eq!(build(&s, &others), (d.clone(), skipped.clone()));
        prop_assert!(skipped.iter().all(|k| k.node != ME && !k.reason.is_empty()));
        let skipped_names: BTreeSet<&str> = skipped.iter().map(|k| k.node.as_str()).collect();
        prop_assert_eq!(skipped_names.len(), skipped.len(), "a node skipped twice: {:?}", skipped);
        let pool = s.conf.ipv4.clone().unwrap();
        let mut programmed = 0;
        for n in &others {
            let subnet = peer_subnet(&pool, n);
            let silent = matches!(subnet, Ok(None)) || (subnet.is_ok() && n.public_ip.is_none());
            if skipped_names.contains(n.name.as_str()) {
                prop_assert!(!silent, "{} skipped and silent", n.name);
                continue;
            }
            if silent {
                // Not (yet) a member: no podCIDR or lease of this family, or no agent there.
                continue;
            }
            // Neither skipped nor silent: programmed, with its subnet routed to it.
            let subnet = subnet.unwrap().unwrap();
            let r = d.routes.get(&subnet);
            prop_assert!(r.is_some(), "{} left out without a reason: {:?}", n.name, skipped);
            let r = r.unwrap();
            match r.dev {
                RouteDev::Underlay => prop_assert_eq!(Some(r.gw), n.public_ip),
                RouteDev::Vxlan => {
                    let mac = d.neighs[&r.gw];
                    prop_assert_eq!(Some(mac), n.backend_data.map(|b| b.vtep_mac));
                    prop_assert_eq!(Some(d.fdb[&mac]), n.public_ip);
                }
                RouteDev::Other(_) => prop_assert!(false, "desired route via another device"),
            }
            programmed += 1;
        }
        prop_assert_eq!(d.peers, programmed);
        prop_assert_eq!(d.routes.len(), programmed);
        // Routes are disjoint, managed (a re-read sees them) and not the own subnet.
        let routes: Vec<IpNet> = d.routes.keys().copied().collect();
        for (i, a) in routes.iter().enumerate() {
            prop_assert!(is_managed_route(a, &d.network, &d.own_subnet), "{a} unmanaged");
            for b in &routes[i + 1..] {
                prop_assert!(!a.contains(&b.network()) && !b.contains(&a.network()), "{a} {b}");
            }
        }
        let vx = d.routes.values().filter(|r| r.dev == RouteDev::Vxlan).count();
        prop_assert_eq!((d.neighs.len(), d.fdb.len()), (vx, vx));
        prop_assert!(d.fdb.keys().all(Mac::is_unicast));
    }

    #[test]
    fn diff_converges_and_spares_foreign_routes(
        s in setup(),
        nodes in peers(),
        keep in proptest::collection::vec(any::<bool>(), 1..32),
        junk in junk(),
        order in proptest::collection::vec(any::<usize>(), 0..16),
    ) {
        let (want, _) = build(&s, &nodes);
        let obs = observed(&want, &keep, &junk);
        let (removals, additions) = diff(&want, &obs);
        for op in removals.iter().chain(&additions).flat_map(|s| &s.ops) {
            match op {
                Op::RouteDel(r) => {
                    prop_assert!(is_managed_route(&r.dst, &want.network, &want.own_subnet));
                    prop_assert_eq!(obs.routes.get(&r.dst).map(|o| o.spec), Some(*r));
                    prop_assert!(!want.routes.contains_key(&r.dst));
                }
                Op::RouteSet(r) => prop_assert_eq!(want.routes.get(&r.dst), Some(r)),
                Op::NeighDel { ip, mac } => {
                    prop_assert_eq!(obs.neighs.get(ip), Some(mac));
                    prop_assert!(!want.neighs.contains_key(ip));
                }
                Op::NeighSet { ip, mac } => prop_assert_eq!(want.neighs.get(ip), Some(mac)),
                Op::FdbDel { mac, dst } => {
                    prop_assert_eq!(obs.fdb.get(mac), Some(dst));
                    prop_assert!(!want.fdb.contains_key(mac));
                }
                Op::FdbSet { mac, dst } => prop_assert_eq!(want.fdb.get(mac), Some(dst)),
            }
        }
        // Steps run concurrently: no two ops may touch the same kernel entry.
        let mut touched = BTreeSet::new();
        for s in removals.iter().chain(&additions) {
            prop_assert!(!s.ops.is_empty());
            for op in &s.ops {
                let key = match op {
                    Op::NeighSet { ip, .. } | Op::NeighDel { ip, .. } => format!("neigh {ip}"),
                    Op::FdbSet { mac, .. } | Op::FdbDel { mac, .. } => format!("fdb {mac}"),
                    Op::RouteSet(r) | Op::RouteDel(r) => format!("route {}", r.dst),
                };
                prop_assert!(touched.insert(key.clone()), "{} touched twice: {:?} {:?}", key, removals, additions);
            }
        }
        let mut after = obs.clone();
        apply(&mut after, &removals, &order);
        apply(&mut after, &additions, &order);
        prop_assert_eq!(diff(&want, &after), (vec![], vec![]));
        // A re-read of the kernel agrees, and the state is exactly the desired one.
        prop_assert_eq!(diff(&want, &reobserve(&after, &want)), (vec![], vec![]));
        prop_assert_eq!(&after.neighs, &want.neighs);
        prop_assert_eq!(&after.fdb, &want.fdb);
        prop_assert!(after.routes.iter().map(|(k, r)| (k, r.spec)).eq(want.routes.iter().map(|(k, r)| (k, *r))));
        prop_assert!(after.routes.values().all(|r| r.ours));
    }

    #[test]
    fn rollback_of_a_failed_step_is_repaired(
        s in setup(),
        nodes in peers(),
        keep in proptest::collection::vec(any::<bool>(), 1..32),
        junk in junk(),
        pick in any::<usize>(),
        fail_at in any::<usize>(),
    ) {
        let (want, _) = build(&s, &nodes);
        let obs = observed(&want, &keep, &junk);
        let (removals, additions) = diff(&want, &obs);
        let steps: Vec<&Step> = removals.iter().chain(&additions).collect();
        prop_assume!(!steps.is_empty());
        let step = steps[pick % steps.len()];
        let k = fail_at % step.ops.len();
        // The kernel: ops before k succeed, op k fails, the done ones are undone in reverse.
        let mut kernel = obs.clone();
        for op in &step.ops[..k] {
            kernel.record(op);
        }
        for op in step.ops[..k].iter().rev() {
            kernel.record(&op.undo());
        }
        // Each entry is back as it was, or gone when the step had replaced a wrong one.
        for (ip, mac) in &obs.neighs {
            let now = kernel.neighs.get(ip);
            prop_assert!(now == Some(mac) || (now.is_none() && want.neighs.get(ip) != Some(mac)));
        }
        for (mac, dst) in &obs.fdb {
            let now = kernel.fdb.get(mac);
            prop_assert!(now == Some(dst) || (now.is_none() && want.fdb.get(mac) != Some(dst)));
        }
        for (dst, r) in &obs.routes {
            let now = kernel.routes.get(dst).map(|r| r.spec);
            prop_assert!(now == Some(r.spec) || (now.is_none() && want.routes.get(dst) != Some(&r.spec)));
        }
        prop_assert!(kernel.neighs.keys().all(|k| obs.neighs.contains_key(k)));
        prop_assert!(kernel.fdb.keys().all(|k| obs.fdb.contains_key(k)));
        prop_assert!(kernel.routes.keys().all(|k| obs.routes.contains_key(k)));
        if step.ops[..k].iter().all(|op| match op {
            Op::NeighSet { ip, .. } => !obs.neighs.contains_key(ip),
            Op::FdbSet { mac, .. } => !obs.fdb.contains_key(mac),
            Op::RouteSet(r) => !obs.routes.contains_key(&r.dst),
            _ => true,
        }) {
            prop_assert!(same_entries(&kernel, &obs), "rollback did not restore");
        }
        // The agent records nothing of a failed step; the next sync repairs the kernel.
        let mut cache = obs.clone();
        let (rem, add) = diff(&want, &cache);
        for s in rem.iter().chain(&add) {
            for op in &s.ops {
                kernel.record(op);
                cache.record(op);
            }
        }
        prop_assert_eq!(diff(&want, &reobserve(&kernel, &want)), (vec![], vec![]));
    }

    #[test]
    fn device_ops_converge(
        vni in 1u32..4, port in prop_oneof![Just(8472u16), Just(4789)], learning in any::<bool>(),
        mtu in 1400u32..1451, mac_i in 0usize..4,
        obs in proptest::option::of((
            any::<bool>(), proptest::option::of(1u32..4), proptest::option::of(prop_oneof![Just(8472u16), Just(4789)]),
            any::<bool>(), proptest::option::of(any::<bool>()), 1400u32..1451, proptest::option::of(0usize..4),
            proptest::collection::vec(0usize..5, 0..4), any::<bool>(),
        )),
    ) {
        let addrs: [IpNet; 5] = [
            "10.0.0.0/32".parse().unwrap(),
            "10.0.1.0/32".parse().unwrap(),
            "10.0.0.0/24".parse().unwrap(),
            "fe80::1/64".parse().unwrap(),
            "2001:db8::1/128".parse().unwrap(),
        ];
        let spec = DeviceSpec {
            name: format!("flannel.{vni}"),
            vni, port, local: v4(192, 0, 2, 1), underlay_index: 7, learning, mtu,
            mac: Mac(MACS[mac_i]), address: addrs[0],
        };
        let mut dev = obs.map(|(is_vxlan, vni, port, local_ok, learning, mtu, mac, a, up)| ObservedDevice {
            index: 9, is_vxlan, vni, port,
            local: Some(if local_ok { spec.local } else { v4(192, 0, 2, 2) }),
            underlay_index: Some(7), learning, mtu,
            mac: mac.map(|i| Mac(MACS[i])),
            addresses: a.into_iter().map(|i| addrs[i]).collect::<BTreeSet<_>>().into_iter().collect(),
            up,
        });
        for op in device_ops(&spec, dev.as_ref()) {
            match op {
                DeviceOp::Create(s) | DeviceOp::Recreate(s) => {
                    dev = Some(ObservedDevice {
                        index: 10, is_vxlan: true, vni: Some(s.vni), port: Some(s.port),
                        local: Some(s.local), underlay_index: Some(s.underlay_index),
                        learning: Some(s.learning), mtu: s.mtu, mac: Some(s.mac),
                        addresses: vec![], up: false,
                    })
                }
                DeviceOp::SetMac(m) => dev.as_mut().unwrap().mac = Some(m),
                DeviceOp::SetMtu(m) => dev.as_mut().unwrap().mtu = m,
                DeviceOp::AddAddress(a) => dev.as_mut().unwrap().addresses.push(a),
                DeviceOp::DelAddress(a) => dev.as_mut().unwrap().addresses.retain(|x| *x != a),
                DeviceOp::Up => dev.as_mut().unwrap().up = true,
            }
        }
        prop_assert_eq!(device_ops(&spec, dev.as_ref()), vec![]);
    }
}
