//! IPAddressPool: address entries, overlaps between pools, service allocation.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;

use super::{Problem, Selector, namespace_of, object_ref, parse_selectors};
use crate::addr;
use crate::model::IPAddressPool;
use crate::state::{Kind, ObjectRef};

/// One `spec.addresses` entry of a valid pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolEntry {
    /// As written in the manifest.
    pub text: String,
    /// Ascending, minimal.
    pub cidrs: Vec<IpNet>,
    pub first: IpAddr,
    pub last: IpAddr,
}

/// A valid IPAddressPool, ready for allocation.
#[derive(Clone, Debug, PartialEq)]
pub struct ParsedPool {
    pub name: String,
    pub namespace: String,
    /// Every CIDR, in spec order (ranges summarised, ascending within an entry).
    pub cidrs: Vec<IpNet>,
    pub entries: Vec<PoolEntry>,
    pub auto_assign: bool,
    pub avoid_buggy_ips: bool,
    pub allocation: Option<ParsedAllocation>,
    /// The pool's labels (advertisements select pools by them).
    pub labels: BTreeMap<String, String>,
}

impl ParsedPool {
    pub fn object(&self) -> ObjectRef {
        ObjectRef::new(Kind::IPAddressPool, Some(&self.namespace), &self.name)
    }
}

/// A pool's `spec.serviceAllocation`, checked.
#[derive(Clone, Debug, PartialEq)]
pub struct ParsedAllocation {
    pub priority: i32,
    pub namespaces: BTreeSet<String>,
    pub namespace_selectors: Vec<Selector>,
    pub service_selectors: Vec<Selector>,
}

/// Parses pools, reporting and leaving out each bad one while the others keep working.
///
/// Overlaps: the pool created earlier (then by namespace/name) keeps its addresses; a later
/// pool overlapping any earlier one is reported, naming both pools and both entries, and
/// left out whole, so a new pool can never take addresses from one already running.
pub fn valid_pools<'a>(
    pools: impl IntoIterator<Item = &'a IPAddressPool>,
) -> (Vec<ParsedPool>, Vec<Problem>) {
    pools_with_refs(
        pools
            .into_iter()
            .map(|p| (object_ref(Kind::IPAddressPool, &p.metadata), p))
            .collect(),
    )
}

pub(super) fn pools_with_refs(
    mut pools: Vec<(ObjectRef, &IPAddressPool)>,
) -> (Vec<ParsedPool>, Vec<Problem>) {
    pools.sort_by(|(ra, a), (rb, b)| {
        let ta = a.metadata.creation_timestamp.as_ref();
        let tb = b.metadata.creation_timestamp.as_ref();
        // Objects without a timestamp (plain manifests) after those with one.
        (ta.is_none(), ta, ra).cmp(&(tb.is_none(), tb, rb))
    });
    let mut problems = Vec::new();
    let mut parsed: Vec<(ObjectRef, ParsedPool, bool)> = Vec::new();
    for (object, pool) in pools {
        let Some(candidate) = parse_pool(&object, pool, &mut problems) else {
            continue;
        };
        // Compare with every earlier pool that parsed, and with its own earlier entries.
        let mut overlapping = false;
        for (i, entry) in candidate.entries.iter().enumerate() {
            let earlier = parsed
                .iter()
                .flat_map(|(r, p, _)| {
                    p.entries
                        .iter()
                        .enumerate()
                        .map(move |(j, e)| (Some(r), j, e))
                })
                .chain(
                    candidate.entries[..i]
                        .iter()
                        .enumerate()
                        .map(|(j, e)| (None, j, e)),
                );
            for (other_ref, j, other) in earlier {
                if entries_overlap(entry, other) {
                    let whose = match other_ref {
                        Some(r) => format!("of {r}"),
                        None => "of this pool".to_string(),
                    };
                    problems.push(Problem::error(
                        &object,
                        format!("spec.addresses[{i}]"),
                        format!(
                            "{:?} overlaps {:?} (spec.addresses[{j}]) {whose}",
                            entry.text, other.text
                        ),
                    ));
                    overlapping = true;
                }
            }
        }
        // Overlapping pools stay in the comparison list (so every overlap is reported)
        // but are not used.
        parsed.push((object, candidate, !overlapping));
    }
    let valid = parsed
        .into_iter()
        .filter(|(_, _, usable)| *usable)
        .map(|(_, p, _)| p)
        .collect();
    (valid, problems)
}

fn entries_overlap(a: &PoolEntry, b: &PoolEntry) -> bool {
    a.first.is_ipv4() == b.first.is_ipv4() && a.first <= b.last && b.first <= a.last
}

fn parse_pool(
    object: &ObjectRef,
    pool: &IPAddressPool,
    problems: &mut Vec<Problem>,
) -> Option<ParsedPool> {
    let before = problems.iter().filter(|p| p.is_error()).count();
    let spec = &pool.spec;
    if spec.addresses.is_empty() {
        problems.push(Problem::error(
            object,
            "spec.addresses",
            "the pool has no addresses",
        ));
    }
    let mut entries = Vec::new();
    for (i, text) in spec.addresses.iter().enumerate() {
        let field = format!("spec.addresses[{i}]");
        match addr::parse_pool_range(text) {
            Ok(cidrs) => {
                if addr::has_host_bits(text) {
                    problems.push(Problem::warning(
                        object,
                        &field,
                        format!(
                            "{text:?}: host bits are set; the pool is {} (as MetalLB reads it)",
                            cidrs[0]
                        ),
                    ));
                }
                let first = cidrs.first().map(IpNet::network);
                let last = cidrs.last().map(IpNet::broadcast);
                if let (Some(first), Some(last)) = (first, last) {
                    special_purpose_problem(object, &field, text, first, last, problems);
                    entries.push(PoolEntry {
                        text: text.clone(),
                        cidrs,
                        first,
                        last,
                    });
                }
            }
            Err(e) => problems.push(Problem::error(object, field, format!("{text:?}: {e}"))),
        }
    }
    let allocation = spec.service_allocation.as_ref().map(|a| {
        let mut namespaces = BTreeSet::new();
        for (i, ns) in a.namespaces.iter().enumerate() {
            if !namespaces.insert(ns.clone()) {
                problems.push(Problem::error(
                    object,
                    format!("spec.serviceAllocation.namespaces[{i}]"),
                    format!("namespace {ns:?} is listed twice"),
                ));
            }
        }
        ParsedAllocation {
            priority: a.priority,
            namespaces,
            namespace_selectors: parse_selectors(
                object,
                "spec.serviceAllocation.namespaceSelectors",
                &a.namespace_selectors,
                problems,
            ),
            service_selectors: parse_selectors(
                object,
                "spec.serviceAllocation.serviceSelectors",
                &a.service_selectors,
                problems,
            ),
        }
    });
    if problems.iter().filter(|p| p.is_error()).count() > before {
        return None;
    }
    Some(ParsedPool {
        name: object.name.clone(),
        namespace: namespace_of(object),
        cidrs: entries
            .iter()
            .flat_map(|e| e.cidrs.iter().copied())
            .collect(),
        entries,
        auto_assign: spec.auto_assign(),
        avoid_buggy_ips: spec.avoid_buggy_ips,
        allocation,
        labels: pool.metadata.labels.clone().unwrap_or_default(),
    })
}

/// A pool entry that covers special-purpose addresses (loopback, multicast, ...): they are
/// skipped by the allocator, so the pool works, but the entry most likely is a typo.
fn special_purpose_problem(
    object: &ObjectRef,
    field: &str,
    text: &str,
    first: IpAddr,
    last: IpAddr,
    problems: &mut Vec<Problem>,
) {
    let blocks = addr::special_purpose_in(first, last);
    if blocks.is_empty() {
        return;
    }
    let named: Vec<String> = blocks
        .iter()
        .map(|b| {
            if b.first == b.last {
                format!("{} ({})", b.first, b.what)
            } else {
                format!("{}-{} ({})", b.first, b.last, b.what)
            }
        })
        .collect();
    problems.push(Problem::warning(
        object,
        field,
        format!(
            "{text:?} contains special-purpose addresses that are never assigned: {}",
            named.join(", ")
        ),
    ));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::parse_selector;
    use crate::validate::test_util::*;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

    #[test]
    fn pool_address_errors() {
        let problems = validate_objects(&[pool(
            "pool-a",
            [
                "not-an-ip",
                "192.0.2.0/33",
                "2001:db8::/129",
                "192.0.2.1-2001:db8::5",
                "pool",
            ],
        )
        .pair()]);
        assert_error(
            &problems,
            POOL_A,
            "spec.addresses[0]",
            "range start \"not\" is not an IP address",
        );
        assert_error(
            &problems,
            POOL_A,
            "spec.addresses[1]",
            "prefix length \"33\" is not a number in 0..=32",
        );
        assert_error(
            &problems,
            POOL_A,
            "spec.addresses[2]",
            "prefix length \"129\" is not a number in 0..=128",
        );
        assert_error(
            &problems,
            POOL_A,
            "spec.addresses[3]",
            "range mixes address families",
        );
        assert_error(
            &problems,
            POOL_A,
            "spec.addresses[4]",
            "\"pool\" is not an IP address",
        );
        assert_eq!(errors(&problems).len(), 5);
    }

    #[test]
    fn pool_without_addresses() {
        assert_only_error(
            &[pool("pool-a", Vec::<&str>::new()).pair()],
            POOL_A,
            "spec.addresses",
            "no addresses",
        );
    }

    #[test]
    fn host_bits_are_a_warning() {
        let problems = validate_objects(&[pool("pool-a", ["192.0.2.5/24"]).pair()]);
        assert_one(
            &problems,
            Severity::Warning,
            POOL_A,
            "spec.addresses[0]",
            "the pool is 192.0.2.0/24",
        );
        assert!(errors(&problems).is_empty());
        assert!(problems[0].to_string().ends_with(" (warning)"));
    }

    #[test]
    fn overlapping_pools_name_both() {
        let problems = validate_objects(&[
            pool("pool-a", ["192.0.2.0/28"]).pair(),
            pool("pool-b", ["198.51.100.0/24", "192.0.2.10-192.0.2.20"]).pair(),
        ]);
        assert_error(
            &problems,
            "IPAddressPool/metallb-system/pool-b",
            "spec.addresses[1]",
            "\"192.0.2.10-192.0.2.20\" overlaps \"192.0.2.0/28\" (spec.addresses[0]) of IPAddressPool/metallb-system/pool-a",
        );
        assert_eq!(errors(&problems).len(), 1);
    }

    #[test]
    fn overlap_within_one_pool() {
        assert_only_error(
            &[pool("pool-a", ["192.0.2.0/24", "192.0.2.128/25"]).pair()],
            POOL_A,
            "spec.addresses[1]",
            "overlaps \"192.0.2.0/24\" (spec.addresses[0]) of this pool",
        );
    }

    #[test]
    fn adjacent_and_other_family_ranges_do_not_overlap() {
        assert_clean(&[
            pool("pool-a", ["192.0.2.0/28", "::ffff:0:0/96"]).pair(),
            pool("pool-b", ["192.0.2.16-192.0.2.31", "2001:db8::/64"]).pair(),
        ]);
    }

    #[test]
    fn service_allocation_rules() {
        let spec = json!({
            "addresses": ["192.0.2.0/28"],
            "serviceAllocation": {
                "namespaces": ["a", "b", "a"],
                "namespaceSelectors": [{"matchExpressions": [
                    {"key": "team", "operator": "Exists", "values": ["x"]},
                    {"key": "team", "operator": "NotIn"},
                ]}],
                "serviceSelectors": [
                    {"matchExpressions": [{"key": "app", "operator": "Equals", "values": ["web"]}]},
                    {"matchLabels": {"bad key!": "web", "app": "not valid!"}},
                    {"matchExpressions": [{"key": "-x", "operator": "In", "values": ["ok", "-bad"]}]},
                ],
            }
        });
        let problems = validate_objects(&[obj(Kind::IPAddressPool, "pool-a", spec)]);
        let sa = "spec.serviceAllocation";
        assert_error(
            &problems,
            POOL_A,
            &format!("{sa}.namespaces[2]"),
            "namespace \"a\" is listed twice",
        );
        assert_error(
            &problems,
            POOL_A,
            &format!("{sa}.namespaceSelectors[0].matchExpressions[0].values"),
            "operator Exists takes no values",
        );
        assert_error(
            &problems,
            POOL_A,
            &format!("{sa}.namespaceSelectors[0].matchExpressions[1].values"),
            "operator NotIn needs at least one value",
        );
        assert_error(
            &problems,
            POOL_A,
            &format!("{sa}.serviceSelectors[0].matchExpressions[0].operator"),
            "\"Equals\" is not a valid operator (In, NotIn, Exists, DoesNotExist)",
        );
        assert_error(
            &problems,
            POOL_A,
            &format!("{sa}.serviceSelectors[1].matchLabels[\"bad key!\"]"),
            "key \"bad key!\"",
        );
        assert_error(
            &problems,
            POOL_A,
            &format!("{sa}.serviceSelectors[1].matchLabels[\"app\"]"),
            "value \"not valid!\"",
        );
        assert_error(
            &problems,
            POOL_A,
            &format!("{sa}.serviceSelectors[2].matchExpressions[0].key"),
            "\"-x\"",
        );
        assert_error(
            &problems,
            POOL_A,
            &format!("{sa}.serviceSelectors[2].matchExpressions[0].values[1]"),
            "\"-bad\"",
        );
        assert_eq!(errors(&problems).len(), 8, "{problems:#?}");
    }

    #[test]
    fn selectors_match_as_kubernetes() {
        let object = ObjectRef::new(Kind::IPAddressPool, Some(NS), "x");
        let sel: LabelSelector = serde_json::from_value(json!({
            "matchLabels": {"tier": "web"},
            "matchExpressions": [
                {"key": "zone", "operator": "NotIn", "values": ["a"]},
                {"key": "legacy", "operator": "DoesNotExist"},
            ]
        }))
        .unwrap();
        let sel = parse_selector(&object, "s", &sel).unwrap();
        let labels = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>()
        };
        assert!(sel.matches(&labels(&[("tier", "web")])));
        assert!(sel.matches(&labels(&[("tier", "web"), ("zone", "b")])));
        assert!(!sel.matches(&labels(&[("tier", "web"), ("zone", "a")])));
        assert!(!sel.matches(&labels(&[("tier", "web"), ("legacy", "")])));
        assert!(!sel.matches(&labels(&[("tier", "db")])));
        assert!(Selector::everything().matches(&labels(&[])));
    }
}
