//! Which subnet a node owns (pure): its podCIDR when it has one (it must lie inside the
//! pool's network), else, on the state directory, a subnet it leases itself.
//!
//! Leasing is race-free between agents sharing one directory without a lock around the
//! read-decide-write: each node starts probing at a position derived from a hash of its
//! name (so concurrent choosers rarely collide), and every update re-checks the lease; when
//! two nodes hold overlapping subnets, a node with a podCIDR wins, else the lower name wins,
//! and the loser leases again. Because a node keeps its recorded lease as long as it does
//! not lose a conflict, it gets the same subnet back after a restart.

use std::collections::BTreeSet;

use ipnet::IpNet;

use crate::annotations::NodeView;
use crate::netconf::{Pool, ord};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SubnetError {
    #[error("Node/{node}: spec.podCIDR {cidr} is outside the network {network} of net-conf.json")]
    OutsideNetwork {
        node: String,
        cidr: IpNet,
        network: IpNet,
    },
    #[error("Node/{node}: spec.podCIDRs has no {family} subnet (net-conf.json enables {family})")]
    NoPodCidr { node: String, family: &'static str },
    #[error("Node/{node}: no free /{len} subnet left in {network}")]
    Exhausted {
        node: String,
        len: u8,
        network: IpNet,
    },
}

/// The subnet a node uses, and whether it is a lease to record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Choice {
    PodCidr(IpNet),
    Lease(IpNet),
}

impl Choice {
    pub fn subnet(&self) -> IpNet {
        match self {
            Choice::PodCidr(n) | Choice::Lease(n) => *n,
        }
    }
}

fn family(v6: bool) -> &'static str {
    if v6 { "IPv6" } else { "IPv4" }
}

/// The subnet a peer announces: its podCIDR, else its recorded lease. `None` when it has
/// none of the pool's family; an error when the podCIDR is outside the network.
pub fn peer_subnet(pool: &Pool, node: &NodeView) -> Result<Option<IpNet>, SubnetError> {
    let v6 = pool.network.addr().is_ipv6();
    if let Some(cidr) = node.pod_cidr(v6) {
        if !pool.network.contains(&cidr) {
            return Err(SubnetError::OutsideNetwork {
                node: node.name.clone(),
                cidr,
                network: pool.network,
            });
        }
        return Ok(Some(cidr));
    }
    Ok(node.lease(v6).filter(|n| pool.network.contains(n)))
}

/// Chooses this node's subnet of the pool's family. `may_lease`: on the state directory,
/// where a node without podCIDR leases; elsewhere a missing podCIDR is an error (Flannel
/// waits for the controller-manager to assign one).
pub fn choose(
    pool: &Pool,
    me: &NodeView,
    others: &[NodeView],
    may_lease: bool,
) -> Result<Choice, SubnetError> {
    let v6 = pool.network.addr().is_ipv6();
    if let Some(cidr) = me.pod_cidr(v6) {
        if !pool.network.contains(&cidr) {
            return Err(SubnetError::OutsideNetwork {
                node: me.name.clone(),
                cidr,
                network: pool.network,
            });
        }
        return Ok(Choice::PodCidr(cidr));
    }
    if !may_lease {
        return Err(SubnetError::NoPodCidr {
            node: me.name.clone(),
            family: family(v6),
        });
    }
    // Subnets held by others that beat us in a conflict, and all subnets held by others.
    let mut stronger: Vec<IpNet> = Vec::new();
    let mut taken: Vec<IpNet> = Vec::new();
    for o in others.iter().filter(|o| o.name != me.name) {
        if let Some(c) = o.pod_cidr(v6) {
            stronger.push(c);
            taken.push(c);
        } else if let Some(l) = o.lease(v6) {
            if o.name < me.name {
                stronger.push(l);
            }
            taken.push(l);
        }
    }
    if let Some(current) = me.lease(v6) {
        let valid = pool.network.contains(&current)
            && current.prefix_len() == pool.subnet_len
            && ord(current.network()) >= ord(pool.subnet_min)
            && ord(current.network()) <= ord(pool.subnet_max);
        if valid && !stronger.iter().any(|s| overlaps(s, &current)) {
            return Ok(Choice::Lease(current));
        }
    }
    let count = pool.lease_count();
    // Exact-length subnets are checked in a set; others (podCIDRs of other lengths) by scan.
    let same_len: BTreeSet<u128> = taken
        .iter()
        .filter(|t| t.prefix_len() == pool.subnet_len)
        .map(|t| ord(t.network()))
        .collect();
    let other_len: Vec<IpNet> = taken
        .into_iter()
        .filter(|t| t.prefix_len() != pool.subnet_len)
        .collect();
    let start = fnv1a(me.name.as_bytes()) % count;
    let probes = count.min(1 << 24);
    for i in 0..probes {
        let cand = pool.lease_at((start + i) % count);
        if !same_len.contains(&ord(cand.network())) && !other_len.iter().any(|t| overlaps(t, &cand))
        {
            return Ok(Choice::Lease(cand));
        }
    }
    Err(SubnetError::Exhausted {
        node: me.name.clone(),
        len: pool.subnet_len,
        network: pool.network,
    })
}

pub fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// FNV-1a: stable across builds and platforms (std's hasher is not).
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netconf::NetConf;

    fn pool() -> Pool {
        NetConf::parse(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#)
            .unwrap()
            .ipv4
            .unwrap()
    }

    fn node(name: &str, cidr: Option<&str>, lease: Option<&str>) -> NodeView {
        NodeView {
            name: name.into(),
            pod_cidrs: cidr.map(|c| c.parse().unwrap()).into_iter().collect(),
            lease_v4: lease.map(|c| c.parse().unwrap()),
            ..Default::default()
        }
    }

    #[test]
    fn pod_cidr_wins_and_must_be_inside() {
        let p = pool();
        let me = node("a", Some("10.244.7.0/24"), None);
        assert_eq!(
            choose(&p, &me, &[], true).unwrap(),
            Choice::PodCidr("10.244.7.0/24".parse().unwrap())
        );
        let me = node("a", Some("10.9.0.0/24"), None);
        let e = choose(&p, &me, &[], true).unwrap_err();
        assert!(
            e.to_string()
                .contains("Node/a: spec.podCIDR 10.9.0.0/24 is outside"),
            "{e}"
        );
        let me = node("a", None, None);
        assert!(matches!(
            choose(&p, &me, &[], false),
            Err(SubnetError::NoPodCidr { .. })
        ));
    }

    #[test]
    fn lease_is_stable_and_avoids_others() {
        let p = pool();
        let me = node("node-a", None, None);
        let Choice::Lease(first) = choose(&p, &me, &[], true).unwrap() else {
            panic!()
        };
        // Same answer on a restart with the lease recorded.
        let me2 = node("node-a", None, Some(&first.to_string()));
        assert_eq!(choose(&p, &me2, &[], true).unwrap(), Choice::Lease(first));
        // Another node's podCIDR on our hashed slot pushes us on.
        let other = node("z", Some(&first.to_string()), None);
        let c = choose(&p, &me, &[other], true).unwrap().subnet();
        assert_ne!(c, first);
        assert!(p.network.contains(&c));
    }

    #[test]
    fn conflict_lower_name_wins() {
        let p = pool();
        let a = node("a", None, Some("10.244.5.0/24"));
        let b = node("b", None, Some("10.244.5.0/24"));
        assert_eq!(
            choose(&p, &a, std::slice::from_ref(&b), true).unwrap(),
            Choice::Lease("10.244.5.0/24".parse().unwrap())
        );
        let nb = choose(&p, &b, &[a], true).unwrap().subnet();
        assert_ne!(nb.to_string(), "10.244.5.0/24");
    }

    #[test]
    fn many_nodes_all_distinct() {
        let p = pool();
        let mut nodes: Vec<NodeView> = Vec::new();
        for i in 0..200 {
            let me = node(&format!("n{i}"), None, None);
            let s = choose(&p, &me, &nodes, true).unwrap().subnet();
            nodes.push(node(&me.name, None, Some(&s.to_string())));
        }
        let set: BTreeSet<_> = nodes.iter().map(|n| n.lease_v4.unwrap()).collect();
        assert_eq!(set.len(), 200);
        assert!(set.iter().all(|s| s.to_string() != "10.244.0.0/24"));
    }

    #[test]
    fn exhausted() {
        let p = NetConf::parse(
            r#"{"Network":"10.0.0.0/30","SubnetLen":30,"Backend":{"Type":"vxlan"}}"#,
        );
        assert!(p.is_err());
        let p = NetConf::parse(
            r#"{"Network":"10.0.0.0/29","SubnetLen":30,"Backend":{"Type":"vxlan"}}"#,
        )
        .unwrap()
        .ipv4
        .unwrap();
        let other = node("o", None, Some("10.0.0.4/30"));
        let me = node("p", None, None);
        assert!(matches!(
            choose(&p, &me, &[other], true),
            Err(SubnetError::Exhausted { .. })
        ));
    }
}
