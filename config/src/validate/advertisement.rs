//! L2Advertisement and BGPAdvertisement: pools and nodes selected, aggregation, communities.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::{ParsedPool, Problem, Selector, namespace_of, parse_selectors, resolve_community};
use crate::addr::Community;
use crate::model::{BGPAdvertisement, L2Advertisement};
use crate::state::ObjectRef;

/// A valid L2Advertisement with its pools resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct ParsedL2Advertisement {
    pub name: String,
    pub namespace: String,
    /// Names of the valid pools it announces (by name, by selector, or all).
    pub pools: BTreeSet<String>,
    /// Empty: every node.
    pub node_selectors: Vec<Selector>,
    /// Empty: every eligible interface.
    pub interfaces: Vec<String>,
}

/// A valid BGPAdvertisement with pools and communities resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct ParsedBgpAdvertisement {
    pub name: String,
    pub namespace: String,
    pub pools: BTreeSet<String>,
    pub aggregation_length: u8,
    pub aggregation_length_v6: u8,
    pub local_pref: Option<u32>,
    pub communities: BTreeSet<Community>,
    pub node_selectors: Vec<Selector>,
    /// BGPPeer names; empty: every peer.
    pub peers: Vec<String>,
}

/// Resolves `ipAddressPools` and `ipAddressPoolSelectors` to pool names. Unknown names
/// are a warning, not an error: MetalLB ignores them too (the pool may come later), and the
/// advertisement keeps working for its other pools.
fn select_pools(
    object: &ObjectRef,
    names: &[String],
    selectors: &[Selector],
    pools: &[ParsedPool],
    all_pool_names: &BTreeSet<(String, String)>,
    problems: &mut Vec<Problem>,
) -> BTreeSet<String> {
    let ns = namespace_of(object);
    let in_ns = || pools.iter().filter(|p| p.namespace == ns);
    if names.is_empty() && selectors.is_empty() {
        return in_ns().map(|p| p.name.clone()).collect();
    }
    let mut out = BTreeSet::new();
    let mut seen = BTreeSet::new();
    for (i, name) in names.iter().enumerate() {
        let field = format!("spec.ipAddressPools[{i}]");
        if !seen.insert(name) {
            problems.push(Problem::error(
                object,
                field,
                format!("pool {name:?} is listed twice"),
            ));
            continue;
        }
        if in_ns().any(|p| &p.name == name) {
            out.insert(name.clone());
        } else if !all_pool_names.contains(&(ns.clone(), name.clone())) {
            problems.push(Problem::warning(
                object,
                field,
                format!("no IPAddressPool named {name:?} in namespace {ns:?}"),
            ));
        }
        // Else the pool exists but is invalid: reported on the pool itself.
    }
    for p in in_ns() {
        if selectors.iter().any(|s| s.matches(&p.labels)) {
            out.insert(p.name.clone());
        }
    }
    out
}

/// What both kinds of advertisement select: the pools (`ipAddressPools` and
/// `ipAddressPoolSelectors`) and the node selectors, with their problems.
fn advertised_pools_and_nodes(
    object: &ObjectRef,
    pool_names: &[String],
    pool_selectors: &[LabelSelector],
    node_selectors: &[LabelSelector],
    pools: &[ParsedPool],
    all_pool_names: &BTreeSet<(String, String)>,
    problems: &mut Vec<Problem>,
) -> (BTreeSet<String>, Vec<Selector>) {
    let pool_selectors = parse_selectors(
        object,
        "spec.ipAddressPoolSelectors",
        pool_selectors,
        problems,
    );
    let node_selectors = parse_selectors(object, "spec.nodeSelectors", node_selectors, problems);
    let selected = select_pools(
        object,
        pool_names,
        &pool_selectors,
        pools,
        all_pool_names,
        problems,
    );
    (selected, node_selectors)
}

pub(super) fn parse_l2_advertisement(
    object: &ObjectRef,
    adv: &L2Advertisement,
    pools: &[ParsedPool],
    all_pool_names: &BTreeSet<(String, String)>,
) -> (Option<ParsedL2Advertisement>, Vec<Problem>) {
    let spec = &adv.spec;
    let mut problems = Vec::new();
    let (selected, node_selectors) = advertised_pools_and_nodes(
        object,
        &spec.ip_address_pools,
        &spec.ip_address_pool_selectors,
        &spec.node_selectors,
        pools,
        all_pool_names,
        &mut problems,
    );
    if problems.iter().any(Problem::is_error) {
        return (None, problems);
    }
    let parsed = ParsedL2Advertisement {
        name: object.name.clone(),
        namespace: namespace_of(object),
        pools: selected,
        node_selectors,
        interfaces: spec.interfaces.clone(),
    };
    (Some(parsed), problems)
}

pub(super) fn parse_bgp_advertisement(
    object: &ObjectRef,
    adv: &BGPAdvertisement,
    pools: &[ParsedPool],
    all_pool_names: &BTreeSet<(String, String)>,
    aliases: &BTreeMap<String, Community>,
) -> (Option<ParsedBgpAdvertisement>, Vec<Problem>) {
    let spec = &adv.spec;
    let mut problems = Vec::new();

    // The upstream CRD requires aggregationLength >= 1; MetalLB's parser caps both at the
    // family width. A negative IPv6 length has no meaning either.
    let v4 = spec.aggregation_length();
    let v6 = spec.aggregation_length_v6();
    let v4_ok = (1..=32).contains(&v4);
    let v6_ok = (0..=128).contains(&v6);
    if !v4_ok {
        problems.push(Problem::error(
            object,
            "spec.aggregationLength",
            format!("{v4} is outside 1..=32"),
        ));
    }
    if !v6_ok {
        problems.push(Problem::error(
            object,
            "spec.aggregationLengthV6",
            format!("{v6} is outside 0..=128"),
        ));
    }

    let mut communities = BTreeSet::new();
    let mut seen = BTreeSet::new();
    for (i, c) in spec.communities.iter().enumerate() {
        let field = format!("spec.communities[{i}]");
        if !seen.insert(c) {
            problems.push(Problem::error(
                object,
                field,
                format!("{c:?} is listed twice"),
            ));
            continue;
        }
        match resolve_community(c, aliases) {
            Ok(v) => {
                communities.insert(v);
            }
            Err(e) => problems.push(Problem::error(object, field, e)),
        }
    }
    let mut seen_peers = BTreeSet::new();
    for (i, p) in spec.peers.iter().enumerate() {
        if !seen_peers.insert(p) {
            problems.push(Problem::error(
                object,
                format!("spec.peers[{i}]"),
                format!("peer {p:?} is listed twice"),
            ));
        }
    }

    let (selected, node_selectors) = advertised_pools_and_nodes(
        object,
        &spec.ip_address_pools,
        &spec.ip_address_pool_selectors,
        &spec.node_selectors,
        pools,
        all_pool_names,
        &mut problems,
    );

    // MetalLB's validateBGPAdvPerPool: the announced prefix may not be wider than what
    // the pool holds, i.e. the aggregation length may not be shorter than the widest CIDR
    // of any entry of a selected pool.
    for pool in pools.iter().filter(|p| selected.contains(&p.name)) {
        for (i, entry) in pool.entries.iter().enumerate() {
            let (len, ok, field) = if entry.first.is_ipv4() {
                (v4, v4_ok, "spec.aggregationLength")
            } else {
                (v6, v6_ok, "spec.aggregationLengthV6")
            };
            if !ok {
                continue; // already reported as out of range
            }
            let widest = entry.cidrs.iter().map(IpNet::prefix_len).min().unwrap_or(0);
            if len < i32::from(widest) {
                problems.push(Problem::error(
                    object,
                    field,
                    format!(
                        "{len} is shorter than the /{widest} of {:?} (spec.addresses[{i}]) in {}; \
                         the announced prefix would cover addresses outside the pool",
                        entry.text,
                        pool.object()
                    ),
                ));
            }
        }
    }

    if problems.iter().any(Problem::is_error) {
        return (None, problems);
    }
    let parsed = ParsedBgpAdvertisement {
        name: object.name.clone(),
        namespace: namespace_of(object),
        pools: selected,
        // Both checked in range above.
        aggregation_length: v4 as u8,
        aggregation_length_v6: v6 as u8,
        local_pref: spec.local_pref,
        communities,
        node_selectors,
        peers: spec.peers.clone(),
    };
    (Some(parsed), problems)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::test_util::*;

    #[test]
    fn aggregation_length_ranges() {
        let base = pool("pool-a", ["192.0.2.0/32"]).pair();
        assert_only_error(
            &[
                base.clone(),
                bgp_advertisement("adv")
                    .with_spec(json!({"aggregationLength": 33}))
                    .pair(),
            ],
            ADV,
            "spec.aggregationLength",
            "33 is outside 1..=32",
        );
        assert_only_error(
            &[
                base.clone(),
                bgp_advertisement("adv")
                    .with_spec(json!({"aggregationLength": 0}))
                    .pair(),
            ],
            ADV,
            "spec.aggregationLength",
            "0 is outside 1..=32",
        );
        assert_only_error(
            &[
                base.clone(),
                bgp_advertisement("adv")
                    .with_spec(json!({"aggregationLengthV6": 129}))
                    .pair(),
            ],
            ADV,
            "spec.aggregationLengthV6",
            "129 is outside 0..=128",
        );
        assert_only_error(
            &[
                base,
                bgp_advertisement("adv")
                    .with_spec(json!({"aggregationLengthV6": -1}))
                    .pair(),
            ],
            ADV,
            "spec.aggregationLengthV6",
            "-1 is outside 0..=128",
        );
    }

    #[test]
    fn aggregation_may_not_be_wider_than_the_pool() {
        let pools = [
            pool("pool-a", ["192.0.2.0/26", "2001:db8::/120"]).pair(),
            pool("pool-r", ["198.51.100.10-198.51.100.20"]).pair(),
        ];
        let with = |adv: (ObjectRef, Value)| {
            let mut v = pools.to_vec();
            v.push(adv);
            v
        };
        assert_clean(&with(bgp_advertisement("adv").with_spec(json!({"aggregationLength": 26, "aggregationLengthV6": 120, "ipAddressPools": ["pool-a"]})).pair()));
        assert_only_error(
            &with(
                bgp_advertisement("adv")
                    .with_spec(json!({"aggregationLength": 24, "ipAddressPools": ["pool-a"]}))
                    .pair(),
            ),
            ADV,
            "spec.aggregationLength",
            "24 is shorter than the /26 of \"192.0.2.0/26\" (spec.addresses[0]) in IPAddressPool/metallb-system/pool-a",
        );
        assert_only_error(
            &with(
                bgp_advertisement("adv")
                    .with_spec(json!({"aggregationLengthV6": 112, "ipAddressPools": ["pool-a"]}))
                    .pair(),
            ),
            ADV,
            "spec.aggregationLengthV6",
            "112 is shorter than the /120 of \"2001:db8::/120\"",
        );
        // A range: its widest CIDR (/30 for .12-.15 and .16-.19) bounds the aggregation.
        assert_clean(&with(
            bgp_advertisement("adv")
                .with_spec(json!({"aggregationLength": 30, "ipAddressPools": ["pool-r"]}))
                .pair(),
        ));
        assert_only_error(
            &with(
                bgp_advertisement("adv")
                    .with_spec(json!({"aggregationLength": 29, "ipAddressPools": ["pool-r"]}))
                    .pair(),
            ),
            ADV,
            "spec.aggregationLength",
            "29 is shorter than the /30 of \"198.51.100.10-198.51.100.20\"",
        );
        // No pools named: every pool is announced, so every pool is checked.
        let problems = validate_objects(&with(
            bgp_advertisement("adv")
                .with_spec(json!({"aggregationLength": 25}))
                .pair(),
        ));
        assert_error(
            &problems,
            ADV,
            "spec.aggregationLength",
            "in IPAddressPool/metallb-system/pool-a",
        );
        assert_error(
            &problems,
            ADV,
            "spec.aggregationLength",
            "in IPAddressPool/metallb-system/pool-r",
        );
        assert_eq!(errors(&problems).len(), 2, "{problems:#?}");
        // Selected by label.
        let mut labelled = pool("pool-l", ["203.0.113.0/24"]).pair();
        labelled.1["metadata"]["labels"] = json!({"bgp": "yes"});
        assert_only_error(
            &[
                labelled,
                bgp_advertisement("adv").with_spec(json!({"aggregationLength": 16, "ipAddressPoolSelectors": [{"matchLabels": {"bgp": "yes"}}]})).pair(),
            ],
            ADV,
            "spec.aggregationLength",
            "in IPAddressPool/metallb-system/pool-l",
        );
    }

    #[test]
    fn community_rules() {
        let aliases = obj(
            Kind::Community,
            "c",
            json!({"communities": [{"name": "NO_ADVERTISE", "value": "65535:65282"}]}),
        );
        assert_clean(&[
            aliases.clone(),
            bgp_advertisement("adv")
                .with_spec(json!({"communities": ["NO_ADVERTISE", "64500:1", "large:1:2:3"]}))
                .pair(),
        ]);
        let problems = validate_objects(&[
            aliases,
            bgp_advertisement("adv").with_spec(json!({"communities": ["65536:1", "no-export", "64500:1", "64500:1", "large:1:2:-3"]})).pair(),
        ]);
        assert_error(
            &problems,
            ADV,
            "spec.communities[0]",
            "invalid community value \"65536:1\"",
        );
        assert_error(
            &problems,
            ADV,
            "spec.communities[1]",
            "\"no-export\" is neither a community literal (AA:NN or large:A:B:C) nor the name of a Community alias",
        );
        assert_error(
            &problems,
            ADV,
            "spec.communities[3]",
            "\"64500:1\" is listed twice",
        );
        assert_error(
            &problems,
            ADV,
            "spec.communities[4]",
            "\"-3\" is not a number",
        );
        assert_eq!(errors(&problems).len(), 4);
    }

    #[test]
    fn community_alias_rules() {
        let c1 = obj(
            Kind::Community,
            "c1",
            json!({"communities": [{"name": "a", "value": "1:1"}, {"name": "b", "value": "1:70000"}]}),
        );
        let c2 = obj(
            Kind::Community,
            "c2",
            json!({"communities": [{"name": "a", "value": "2:2"}]}),
        );
        let problems = validate_objects(&[c1, c2]);
        assert_error(
            &problems,
            "Community/metallb-system/c1",
            "spec.communities[1].value",
            "\"70000\" is not a number in 0..=65535",
        );
        assert_error(
            &problems,
            "Community/metallb-system/c2",
            "spec.communities[0].name",
            "alias \"a\" is already defined in Community/metallb-system/c1 spec.communities[0]",
        );
        assert_eq!(errors(&problems).len(), 2);
    }

    #[test]
    fn advertisement_pool_references() {
        let problems = validate_objects(&[
            pool("pool-a", ["192.0.2.0/28"]).pair(),
            pool("broken", ["nope"]).pair(),
            l2_advertisement("l2")
                .with_spec(json!({"ipAddressPools": ["pool-a", "ghost", "broken", "pool-a"]}))
                .pair(),
            bgp_advertisement("adv")
                .with_spec(json!({"ipAddressPools": ["ghost"], "peers": ["r1", "r1"]}))
                .pair(),
        ]);
        assert_one(
            &problems,
            Severity::Warning,
            "L2Advertisement/metallb-system/l2",
            "spec.ipAddressPools[1]",
            "no IPAddressPool named \"ghost\" in namespace \"metallb-system\"",
        );
        assert_error(
            &problems,
            "L2Advertisement/metallb-system/l2",
            "spec.ipAddressPools[3]",
            "pool \"pool-a\" is listed twice",
        );
        assert_one(
            &problems,
            Severity::Warning,
            ADV,
            "spec.ipAddressPools[0]",
            "\"ghost\"",
        );
        assert_error(
            &problems,
            ADV,
            "spec.peers[1]",
            "peer \"r1\" is listed twice",
        );
        // The broken pool is reported on itself only.
        assert_eq!(
            problems
                .iter()
                .filter(|p| p.reason.contains("broken"))
                .count(),
            0,
            "{problems:#?}"
        );
        assert_eq!(errors(&problems).len(), 3, "{problems:#?}");
    }

    #[test]
    fn advertisement_selector_errors() {
        assert_only_error(
            &[l2_advertisement("l2").with_spec(json!({"nodeSelectors": [{"matchExpressions": [{"key": "k", "operator": "in", "values": ["v"]}]}]})).pair()],
            "L2Advertisement/metallb-system/l2",
            "spec.nodeSelectors[0].matchExpressions[0].operator",
            "\"in\" is not a valid operator",
        );
        assert_only_error(
            &[peer("p").spec_fields(json!({"nodeSelectors": [{"matchExpressions": [{"key": "k", "operator": "Exists", "values": ["v"]}]}]})).pair()],
            PEER,
            "spec.nodeSelectors[0].matchExpressions[0].values",
            "takes no values",
        );
    }
}
