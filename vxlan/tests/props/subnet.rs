//! Subnet leasing: a chosen subnet lies in the pool, overlaps no subnet in use (or, when it
//! is the node's kept lease, none of a node that wins a conflict over it), and the same node
//! gets its lease back.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use metalnet_vxlan::annotations::NodeView;
use metalnet_vxlan::netconf::{NetConf, Pool, ord};
use metalnet_vxlan::subnet::{Choice, SubnetError, choose, overlaps};
use proptest::prelude::*;

/// Small pools (a handful to a few hundred subnets) so that collisions and exhaustion happen.
fn pool() -> impl Strategy<Value = Pool> {
    (any::<bool>(), 0u8..5, 1u8..6, 0u64..40, 0u64..40).prop_map(|(v6, shorter, bits, a, b)| {
        let (network, len) = if v6 {
            (format!("2001:db8::/{}", 56 + shorter), 56 + shorter + bits)
        } else {
            (format!("10.0.0.0/{}", 20 + shorter), 20 + shorter + bits)
        };
        let net: IpNet = network.parse().unwrap();
        let last = (1u64 << bits) - 1;
        let min = subnet_at(&net, len, a.min(b).min(last));
        let max = subnet_at(&net, len, a.max(b).min(last));
        let conf = if v6 {
            serde_json::json!({"EnableIPv4": false, "EnableIPv6": true, "IPv6Network": network,
                "IPv6SubnetLen": len, "IPv6SubnetMin": min, "IPv6SubnetMax": max,
                "Backend": {"Type": "vxlan"}})
        } else {
            serde_json::json!({"Network": network, "SubnetLen": len, "SubnetMin": min,
                "SubnetMax": max, "Backend": {"Type": "vxlan"}})
        };
        let c = NetConf::parse(&conf.to_string()).unwrap_or_else(|e| panic!("{conf}: {e}"));
        if v6 { c.ipv6.unwrap() } else { c.ipv4.unwrap() }
    })
}

fn subnet_at(net: &IpNet, len: u8, i: u64) -> IpAddr {
    metalnet_vxlan::netconf::subnet_at(net, len, i)
}

/// A subnet somewhere around the pool: of its length or not, inside or just outside.
fn nearby(p: &Pool) -> impl Strategy<Value = IpNet> + use<> {
    let p = p.clone();
    (0u64..80, -2i8..=2, 0u8..10).prop_map(move |(i, dlen, outside)| {
        let len = (i16::from(p.subnet_len) + i16::from(dlen)).clamp(
            i16::from(p.network.prefix_len()),
            i16::from(p.network.max_prefix_len()),
        ) as u8;
        let base = if outside == 0 {
            // The next network of the same size.
            next(p.network.broadcast())
        } else {
            p.network.network()
        };
        let n = IpNet::new(base, p.network.prefix_len()).unwrap().trunc();
        IpNet::new(subnet_at(&n, len.max(n.prefix_len()), i), len)
            .unwrap()
            .trunc()
    })
}

fn next(a: IpAddr) -> IpAddr {
    match a {
        IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a).wrapping_add(1))),
        IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a).wrapping_add(1))),
    }
}

fn view(p: &Pool, name: String, cidr: Option<IpNet>, lease: Option<IpNet>) -> NodeView {
    let v6 = p.network.addr().is_ipv6();
    NodeView {
        name,
        pod_cidrs: cidr.into_iter().collect(),
        lease_v4: lease.filter(|_| !v6),
        lease_v6: lease.filter(|_| v6),
        ..Default::default()
    }
}

#[derive(Debug, Clone)]
struct Case {
    pool: Pool,
    me: NodeView,
    others: Vec<NodeView>,
    may_lease: bool,
}

fn case() -> impl Strategy<Value = Case> {
    pool().prop_flat_map(|p| {
        let other = (
            0u8..12,
            proptest::option::weighted(0.3, nearby(&p)),
            proptest::option::weighted(0.6, nearby(&p)),
        );
        (
            Just(p.clone()),
            0u8..12,
            proptest::option::weighted(0.1, nearby(&p)),
            proptest::option::weighted(0.5, nearby(&p)),
            proptest::collection::vec(other, 0..24),
            proptest::bool::weighted(0.9),
        )
            .prop_map(|(p, me, cidr, lease, others, may_lease)| Case {
                me: view(&p, format!("n{me:02}"), cidr, lease),
                others: others
                    .into_iter()
                    .map(|(n, c, l)| view(&p, format!("n{n:02}"), c, l))
                    .collect(),
                pool: p,
                may_lease,
            })
    })
}

fn in_pool(p: &Pool, s: &IpNet) -> bool {
    p.network.contains(s)
        && s.prefix_len() == p.subnet_len
        && *s == s.trunc()
        && ord(s.network()) >= ord(p.subnet_min)
        && ord(s.network()) <= ord(p.subnet_max)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn chosen_subnet_is_free_and_in_the_pool(c in case()) {
        let Case { pool: p, me, others, may_lease } = &c;
        let v6 = p.network.addr().is_ipv6();
        let got = choose(p, me, others, *may_lease);
        if let Some(cidr) = me.pod_cidr(v6) {
            if p.network.contains(&cidr) {
                prop_assert_eq!(got, Ok(Choice::PodCidr(cidr)));
            } else {
                let outside = matches!(got, Err(SubnetError::OutsideNetwork { .. }));
                prop_assert!(outside, "{:?}", got);
            }
            return Ok(());
        }
        if !may_lease {
            prop_assert!(matches!(got, Err(SubnetError::NoPodCidr { .. })), "{:?}", got);
            return Ok(());
        }
        let others: Vec<&NodeView> = others.iter().filter(|o| o.name != me.name).collect();
        let held = |o: &NodeView| o.pod_cidr(v6).or(o.lease(v6));
        let stronger = |o: &NodeView| o.pod_cidr(v6).is_some() || o.name < me.name;
        match got {
            Ok(Choice::Lease(s)) => {
                prop_assert!(in_pool(p, &s), "{} not in {:?}", s, p);
                let kept = me.lease(v6) == Some(s);
                for o in &others {
                    if let Some(h) = held(o) && (!kept || stronger(o)) {
                        prop_assert!(!overlaps(&h, &s), "{} overlaps {}'s {}", s, o.name, h);
                    }
                }
                // The same node gets its lease back (after a restart, or on the next sync).
                let again = NodeView { lease_v4: (!v6).then_some(s), lease_v6: v6.then_some(s), ..me.clone() };
                let owned: Vec<NodeView> = others.iter().map(|o| (*o).clone()).collect();
                prop_assert_eq!(choose(p, &again, &owned, true), Ok(Choice::Lease(s)));
            }
            Ok(Choice::PodCidr(_)) => prop_assert!(false, "a podCIDR without one"),
            Err(SubnetError::Exhausted { .. }) => {
                // Truly nothing free (small pools: check every subnet).
                for i in 0..p.lease_count() {
                    let cand = p.lease_at(i);
                    let free = others.iter().all(|o| held(o).is_none_or(|h| !overlaps(&h, &cand)));
                    prop_assert!(!free, "{} was free", cand);
                }
            }
            Err(e) => prop_assert!(false, "{}", e),
        }
        // An existing valid lease that no stronger node contests is kept.
        if let Some(l) = me.lease(v6)
            && in_pool(p, &l)
            && !others.iter().any(|o| stronger(o) && held(o).is_some_and(|h| overlaps(&h, &l)))
        {
            prop_assert_eq!(choose(p, me, &c.others, true), Ok(Choice::Lease(l)));
        }
    }
}
