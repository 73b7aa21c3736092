//! Node eligibility shared by layer 2 and BGP mode: the facts about a Node that decide
//! whether it may announce, why it may not, and its InternalIP.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use metalnet::model::core::Node;
use metalnet::state::Snapshot;

pub const EXCLUDE_LABEL: &str = "node.kubernetes.io/exclude-from-external-load-balancers";

/// The facts about a node that matter for the election.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeFacts {
    pub labels: BTreeMap<String, String>,
    pub network_unavailable: bool,
    pub ready: bool,
}

impl NodeFacts {
    pub fn of(node: &Node) -> NodeFacts {
        let condition = |t: &str| {
            node.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .and_then(|cs| cs.iter().find(|c| c.type_ == t))
                .is_some_and(|c| c.status == "True")
        };
        NodeFacts {
            labels: node.metadata.labels.clone().unwrap_or_default(),
            network_unavailable: condition("NetworkUnavailable"),
            ready: condition("Ready"),
        }
    }
}

/// Every Node of a snapshot by name.
pub fn nodes(snapshot: &Snapshot) -> BTreeMap<String, NodeFacts> {
    snapshot
        .nodes
        .iter()
        .map(|(k, n)| (k.name.clone(), NodeFacts::of(n)))
        .collect()
}

/// Nodes whose `Ready` condition is True: the live speakers when gossip is off.
pub fn ready_nodes(nodes: &BTreeMap<String, NodeFacts>) -> BTreeSet<String> {
    nodes
        .iter()
        .filter(|(_, f)| f.ready)
        .map(|(n, _)| n.clone())
        .collect()
}

/// Why a node is not a candidate for a Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Exclusion {
    /// No live speaker on it (gossip says it is gone, or Node not Ready without gossip).
    SpeakerNotLive,
    /// A live speaker with no Node object.
    NoNodeObject,
    NetworkUnavailable,
    ExcludedByLabel,
    /// No L2Advertisement covering the pool selects this node.
    NotSelected,
    /// `externalTrafficPolicy: Local` and no serving endpoint on the node.
    NoLocalEndpoint,
}

impl fmt::Display for Exclusion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Exclusion::SpeakerNotLive => "no live speaker",
            Exclusion::NoNodeObject => "no Node object",
            Exclusion::NetworkUnavailable => "Node has the NetworkUnavailable condition",
            Exclusion::ExcludedByLabel => {
                "Node has the label node.kubernetes.io/exclude-from-external-load-balancers"
            }
            Exclusion::NotSelected => {
                "no L2Advertisement for the pool selects this node (nodeSelectors)"
            }
            Exclusion::NoLocalEndpoint => {
                "externalTrafficPolicy is Local and no serving endpoint runs on this node"
            }
        })
    }
}

/// Every InternalIP of a node, in the order the Node lists them.
pub fn internal_ips(node: &Node) -> Vec<IpAddr> {
    node.status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .map(|a| {
            a.iter()
                .filter(|a| a.type_ == "InternalIP")
                .filter_map(|a| a.address.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Which InternalIP [`internal_ip`] picks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpChoice {
    /// The first listed.
    First,
    /// The first of the family (v4 = true), else the first listed.
    Prefer { v4: bool },
    /// The first of the family, or none.
    Only { v4: bool },
}

/// The InternalIP of a node, as `choice` says.
pub fn internal_ip(node: &Node, choice: IpChoice) -> Option<IpAddr> {
    let addrs = internal_ips(node);
    match choice {
        IpChoice::First => addrs.first().copied(),
        IpChoice::Prefer { v4 } => addrs
            .iter()
            .find(|a| a.is_ipv4() == v4)
            .or(addrs.first())
            .copied(),
        IpChoice::Only { v4 } => addrs.iter().find(|a| a.is_ipv4() == v4).copied(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use metalnet::testing::{Manifest, NodeBuilder, node};

    fn decode(node: NodeBuilder) -> Node {
        serde_json::from_value(node.json()).unwrap()
    }

    #[test]
    fn internal_ip_choices() {
        let n = decode(
            node("n1")
                .address("Hostname", "n1")
                .internal_ip("2001:db8::1")
                .address("ExternalIP", "198.51.100.1")
                .internal_ip("192.0.2.1"),
        );
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(internal_ips(&n), vec![v6, v4]);
        assert_eq!(internal_ip(&n, IpChoice::First), Some(v6));
        assert_eq!(internal_ip(&n, IpChoice::Prefer { v4: true }), Some(v4));
        assert_eq!(internal_ip(&n, IpChoice::Only { v4: true }), Some(v4));
        let only6 = decode(node("n1").internal_ip("2001:db8::1").internal_ip("junk"));
        assert_eq!(internal_ip(&only6, IpChoice::Prefer { v4: true }), Some(v6));
        assert_eq!(internal_ip(&only6, IpChoice::Only { v4: true }), None);
        assert_eq!(internal_ip(&decode(node("n1")), IpChoice::First), None);
    }
}
