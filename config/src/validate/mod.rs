//! Validation of MetalLB and Multus objects with precise errors, and the parsed forms the
//! controller and speaker run on.
//!
//! Two entry points:
//! - [`validate_objects`]: raw objects in (as loaded from manifests or the API), EVERY
//!   problem out, each naming the object, the field path and the reason. For
//!   `metalnet-controller validate` and tests.
//! - [`valid_config`] and the `valid_*` helpers: typed objects in (a [`Snapshot`]), parsed
//!   configuration out, where a bad object is reported and left out while every other object
//!   keeps working. (MetalLB instead rejects the whole configuration and keeps running the
//!   last valid one; skipping only the bad object is our deliberate improvement.)
//!
//! The rules follow MetalLB's `internal/config` (v0.14/v0.15) and the upstream CRD schemas;
//! where we differ, the rule says why.

mod advertisement;
mod community;
mod nad;
mod peer;
mod pool;
mod problem;
mod secret;
#[cfg(test)]
mod test_util;

pub use advertisement::{ParsedBgpAdvertisement, ParsedL2Advertisement};
pub use community::{resolve_community, valid_communities};
pub use nad::{check_cni_config, validate_nad};
pub use peer::{ParsedPeer, PasswordSource, valid_peers};
pub use pool::{ParsedAllocation, ParsedPool, PoolEntry, valid_pools};
pub use problem::{Problem, Severity};
pub use secret::{PASSWORD_KEY, invalid_base64_keys, is_base64_error, md5_key_too_long};

use advertisement::{parse_bgp_advertisement, parse_l2_advertisement};
use community::communities_with_refs;
use nad::check_nad;
use peer::parse_peer;
use pool::pools_with_refs;

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use serde::de::DeserializeOwned;

use crate::addr::Community;
use crate::model::core::{EndpointSlice, Namespace, Node, Pod, Secret, Service};
use crate::model::{
    BGPAdvertisement, BGPPeer, Community as CommunityObject, IPAddressPool, L2Advertisement,
    NetworkAttachmentDefinition, ServiceBGPStatus, ServiceL2Status,
};
use crate::state::{Kind, ObjectRef, Snapshot};

// ---------------------------------------------------------------------------------------
// Raw objects in, every problem out.

/// Validates a set of raw objects together (cross-object rules need the whole set) and
/// returns every problem found, errors and warnings, grouped by object in input order.
///
/// Each object is first decoded into its typed form; a decode error (wrong type, missing
/// required field) becomes a problem naming the field path, and that object's remaining
/// rules are skipped (there is no typed object to check). Objects of kinds that have no
/// rules beyond decoding (Service, Node, ...) are only decoded.
pub fn validate_objects(objects: &[(ObjectRef, serde_json::Value)]) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut typed = Typed::default();
    for (object, value) in objects {
        typed.decode(object, value, &mut problems);
    }

    let pool_refs: Vec<(ObjectRef, &IPAddressPool)> =
        typed.pools.iter().map(|(r, p)| (r.clone(), p)).collect();
    let all_pool_names: BTreeSet<(String, String)> = pool_refs
        .iter()
        .map(|(r, _)| (namespace_of(r), r.name.clone()))
        .collect();
    let (pools, p) = pools_with_refs(pool_refs);
    problems.extend(p);

    let (aliases, p) = communities_with_refs(
        typed
            .communities
            .iter()
            .map(|(r, c)| (r.clone(), c))
            .collect(),
    );
    problems.extend(p);

    for (object, peer) in &typed.peers {
        match parse_peer(object, peer) {
            Ok(parsed) => problems.extend(peer_secret_problem(object, &parsed, objects)),
            Err(p) => problems.extend(p),
        }
    }
    for (object, adv) in &typed.l2_advertisements {
        let (_, p) = parse_l2_advertisement(object, adv, &pools, &all_pool_names);
        problems.extend(p);
    }
    for (object, adv) in &typed.bgp_advertisements {
        let (_, p) = parse_bgp_advertisement(object, adv, &pools, &all_pool_names, &aliases);
        problems.extend(p);
    }
    for (object, nad) in &typed.nads {
        problems.extend(check_nad(object, nad));
    }

    // Group by object, keeping the input order of objects and each object's own order.
    let order: BTreeMap<&ObjectRef, usize> = objects
        .iter()
        .enumerate()
        .rev()
        .map(|(i, (r, _))| (r, i))
        .collect();
    problems.sort_by_key(|p| order.get(&p.object).copied().unwrap_or(usize::MAX));
    problems
}

/// The password Secret a peer names, read as the speaker will read it.
fn peer_secret_problem(
    object: &ObjectRef,
    peer: &ParsedPeer,
    objects: &[(ObjectRef, serde_json::Value)],
) -> Option<Problem> {
    let Some(PasswordSource::Secret { namespace, name }) = &peer.password else {
        return None;
    };
    let ns = namespace.as_deref().unwrap_or(&peer.namespace);
    let (_, value) = objects.iter().find(|(r, _)| {
        r.kind == Kind::Secret && r.namespace.as_deref() == Some(ns) && r.name == *name
    })?;
    let reason = secret::password_problem(value)?;
    Some(Problem::error(
        object,
        "spec.passwordSecret",
        format!("Secret {ns}/{name} {reason}"),
    ))
}

#[derive(Default)]
struct Typed {
    pools: Vec<(ObjectRef, IPAddressPool)>,
    communities: Vec<(ObjectRef, CommunityObject)>,
    peers: Vec<(ObjectRef, BGPPeer)>,
    l2_advertisements: Vec<(ObjectRef, L2Advertisement)>,
    bgp_advertisements: Vec<(ObjectRef, BGPAdvertisement)>,
    nads: Vec<(ObjectRef, NetworkAttachmentDefinition)>,
}

impl Typed {
    fn decode(&mut self, object: &ObjectRef, value: &serde_json::Value, out: &mut Vec<Problem>) {
        fn push<T: DeserializeOwned>(
            list: &mut Vec<(ObjectRef, T)>,
            object: &ObjectRef,
            value: &serde_json::Value,
            out: &mut Vec<Problem>,
        ) {
            match decode::<T>(object, value) {
                Ok(t) => list.push((object.clone(), t)),
                Err(p) => out.push(p),
            }
        }
        fn check<T: DeserializeOwned>(
            object: &ObjectRef,
            value: &serde_json::Value,
            out: &mut Vec<Problem>,
        ) {
            if let Err(p) = decode::<T>(object, value) {
                out.push(p);
            }
        }
        match object.kind {
            Kind::IPAddressPool => push(&mut self.pools, object, value, out),
            Kind::Community => push(&mut self.communities, object, value, out),
            Kind::BGPPeer => push(&mut self.peers, object, value, out),
            Kind::L2Advertisement => push(&mut self.l2_advertisements, object, value, out),
            Kind::BGPAdvertisement => push(&mut self.bgp_advertisements, object, value, out),
            Kind::NetworkAttachmentDefinition => push(&mut self.nads, object, value, out),
            Kind::Service => check::<Service>(object, value, out),
            Kind::EndpointSlice => check::<EndpointSlice>(object, value, out),
            Kind::Node => check::<Node>(object, value, out),
            Kind::Pod => check::<Pod>(object, value, out),
            Kind::Secret => {
                // The decoder's own message ("Invalid symbol 45, offset 3.") names neither
                // the key nor the encoding.
                let base64 = secret::check_secret(object, value);
                if base64.is_empty() {
                    check::<Secret>(object, value, out);
                }
                out.extend(base64);
            }
            Kind::Namespace => check::<Namespace>(object, value, out),
            Kind::ServiceL2Status => check::<ServiceL2Status>(object, value, out),
            Kind::ServiceBGPStatus => check::<ServiceBGPStatus>(object, value, out),
            Kind::Event => {}
        }
    }
}

/// Decodes a raw object into its typed form; the error names the field path.
pub fn decode<T: DeserializeOwned>(
    object: &ObjectRef,
    value: &serde_json::Value,
) -> Result<T, Problem> {
    let value = crate::model::normalize(object.kind, value);
    serde_path_to_error::deserialize(value.as_ref()).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { String::new() } else { path };
        Problem::error(object, field, e.inner().to_string())
    })
}

// ---------------------------------------------------------------------------------------
// Typed objects in, parsed configuration out.

/// The MetalLB configuration the controller and speaker run on: only valid objects (and
/// valid parts: an unknown pool name in an advertisement is dropped, the rest kept).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ParsedConfig {
    pub pools: Vec<ParsedPool>,
    /// Community alias name → value, from every Community object.
    pub communities: BTreeMap<String, Community>,
    pub peers: Vec<ParsedPeer>,
    pub l2_advertisements: Vec<ParsedL2Advertisement>,
    pub bgp_advertisements: Vec<ParsedBgpAdvertisement>,
}

/// Parses the MetalLB objects of a snapshot, leaving out (and reporting) the bad ones.
pub fn valid_config(snapshot: &Snapshot) -> (ParsedConfig, Vec<Problem>) {
    let mut problems = Vec::new();
    // Pools that failed to decode still exist: references to them are not "unknown".
    let all_pool_names: BTreeSet<(String, String)> = snapshot
        .ip_address_pools
        .keys()
        .map(|k| (k.namespace.clone().unwrap_or_default(), k.name.clone()))
        .chain(
            snapshot
                .invalid
                .keys()
                .filter(|r| r.kind == Kind::IPAddressPool)
                .map(|r| (namespace_of(r), r.name.clone())),
        )
        .collect();
    let (pools, p) = valid_pools(snapshot.ip_address_pools.values().map(|p| p.as_ref()));
    problems.extend(p);
    let (communities, p) = valid_communities(snapshot.communities.values().map(|c| c.as_ref()));
    problems.extend(p);
    let (peers, p) = valid_peers(snapshot.bgp_peers.values().map(|p| p.as_ref()));
    problems.extend(p);
    let mut l2_advertisements = Vec::new();
    for adv in snapshot.l2_advertisements.values() {
        let (parsed, p) = parse_l2_advertisement(
            &object_ref(Kind::L2Advertisement, &adv.metadata),
            adv,
            &pools,
            &all_pool_names,
        );
        l2_advertisements.extend(parsed);
        problems.extend(p);
    }
    let mut bgp_advertisements = Vec::new();
    for adv in snapshot.bgp_advertisements.values() {
        let (parsed, p) = parse_bgp_advertisement(
            &object_ref(Kind::BGPAdvertisement, &adv.metadata),
            adv,
            &pools,
            &all_pool_names,
            &communities,
        );
        bgp_advertisements.extend(parsed);
        problems.extend(p);
    }
    let config = ParsedConfig {
        pools,
        communities,
        peers,
        l2_advertisements,
        bgp_advertisements,
    };
    (config, problems)
}

fn object_ref(kind: Kind, meta: &ObjectMeta) -> ObjectRef {
    ObjectRef::new(
        kind,
        meta.namespace.as_deref(),
        meta.name.as_deref().unwrap_or(""),
    )
}

fn namespace_of(object: &ObjectRef) -> String {
    object.namespace.clone().unwrap_or_default()
}

/// The one label-selector type of the workspace (compiled in [`crate::labels`]), re-exported
/// because the parsed configuration carries it.
pub use crate::labels::Selector;

/// Checks a LabelSelector as `metav1.LabelSelectorAsSelector` does (operators, the values
/// rule of each operator, label key and value syntax), reporting every problem under `field`.
pub fn parse_selector(
    object: &ObjectRef,
    field: &str,
    selector: &LabelSelector,
) -> Result<Selector, Vec<Problem>> {
    Selector::parse(selector).map_err(|errors| {
        errors
            .iter()
            .map(|e| Problem::error(object, format!("{field}.{}", e.field()), e.reason()))
            .collect()
    })
}

fn parse_selectors(
    object: &ObjectRef,
    field: &str,
    selectors: &[LabelSelector],
    problems: &mut Vec<Problem>,
) -> Vec<Selector> {
    selectors
        .iter()
        .enumerate()
        .filter_map(|(i, s)| {
            parse_selector(object, &format!("{field}[{i}]"), s)
                .map_err(|p| problems.extend(p))
                .ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::test_util::*;
    use ipnet::IpNet;

    // --- Problem display -----------------------------------------------------------------

    #[test]
    fn display_names_object_field_and_reason() {
        let problems =
            validate_objects(&[pool("pool-a", ["192.0.2.0/28", "192.0.2.20-192.0.2.10"]).pair()]);
        assert_eq!(
            errors(&problems),
            vec![
                "IPAddressPool/metallb-system/pool-a: spec.addresses[1]: \"192.0.2.20-192.0.2.10\": range end 192.0.2.10 is below its start 192.0.2.20"
            ]
        );
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let problems = validate_objects(&[
            pool("pool-a", ["bad", "192.0.2.0/40"]).pair(),
            peer("p")
                .spec_fields(json!({"myASN": 0, "routerID": "x"}))
                .pair(),
        ]);
        assert_eq!(errors(&problems).len(), 4, "{problems:#?}");
    }

    // --- decoding ------------------------------------------------------------------------

    #[test]
    fn type_errors_name_the_field_path() {
        assert_only_error(
            &[obj(
                Kind::IPAddressPool,
                "pool-a",
                json!({"addresses": ["192.0.2.0/28", 7]}),
            )],
            POOL_A,
            "spec.addresses[1]",
            "invalid type: integer `7`, expected a string",
        );
        assert_only_error(
            &[obj(
                Kind::IPAddressPool,
                "pool-a",
                json!({"autoAssign": true}),
            )],
            POOL_A,
            "spec",
            "missing field `addresses`",
        );
        assert_only_error(
            &[peer("p")
                .spec_fields(json!({"myASN": 4294967296u64}))
                .pair()],
            PEER,
            "spec.myASN",
            "invalid value: integer `4294967296`, expected u32",
        );
        assert_only_error(
            &[obj(
                Kind::Service,
                "svc",
                json!({"ports": [{"port": "http"}]}),
            )],
            "Service/metallb-system/svc",
            "spec.ports[0].port",
            "invalid type: string \"http\"",
        );
    }

    #[test]
    fn optional_spec_may_be_missing() {
        let (object, mut value) = l2_advertisement("all").pair();
        value.as_object_mut().unwrap().remove("spec");
        assert_clean(&[pool("pool-a", ["192.0.2.0/28"]).pair(), (object, value)]);
    }

    // --- runtime helpers ---------------------------------------------------------------------

    fn typed_pool(name: &str, addresses: &[&str], created: Option<&str>) -> IPAddressPool {
        let (_, mut value) = pool(name, addresses).pair();
        if let Some(ts) = created {
            value["metadata"]["creationTimestamp"] = json!(ts);
        }
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn bad_pool_is_skipped_and_others_work() {
        let good = typed_pool("good", &["192.0.2.10-192.0.2.13", "2001:db8::/126"], None);
        let bad = typed_pool("bad", &["192.0.2.99-192.0.2.1"], None);
        let (pools, problems) = valid_pools([&bad, &good]);
        assert_eq!(pools.len(), 1);
        let p = &pools[0];
        assert_eq!((p.name.as_str(), p.namespace.as_str()), ("good", NS));
        assert_eq!(
            p.cidrs,
            ["192.0.2.10/31", "192.0.2.12/31", "2001:db8::/126"]
                .map(|s| s.parse::<IpNet>().unwrap())
                .to_vec()
        );
        assert!(p.auto_assign && !p.avoid_buggy_ips && p.allocation.is_none());
        assert_error(
            &problems,
            "IPAddressPool/metallb-system/bad",
            "spec.addresses[0]",
            "below its start",
        );
    }

    #[test]
    fn special_purpose_addresses_in_a_pool_are_named() {
        let p = typed_pool(
            "odd",
            &[
                "127.0.0.0/30",
                "255.255.255.254/31",
                "192.0.2.0/24",
                "ff02::/127",
            ],
            None,
        );
        let (pools, problems) = valid_pools([&p]);
        assert_eq!(pools.len(), 1, "{problems:#?}");
        let obj = "IPAddressPool/metallb-system/odd";
        assert_one(
            &problems,
            Severity::Warning,
            obj,
            "spec.addresses[0]",
            "127.0.0.0-127.0.0.3 (loopback",
        );
        assert_one(
            &problems,
            Severity::Warning,
            obj,
            "spec.addresses[1]",
            "255.255.255.255 (limited broadcast",
        );
        assert_one(
            &problems,
            Severity::Warning,
            obj,
            "spec.addresses[3]",
            "ff02::-ff02::1 (multicast",
        );
        assert_eq!(problems.len(), 3, "{problems:#?}");
    }

    #[test]
    fn older_pool_keeps_overlapping_addresses() {
        let old = typed_pool("zz-old", &["192.0.2.0/24"], Some("2026-01-01T00:00:00Z"));
        let new = typed_pool("aa-new", &["192.0.2.128/25"], Some("2026-02-01T00:00:00Z"));
        let (pools, problems) = valid_pools([&new, &old]);
        assert_eq!(
            pools.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
            ["zz-old"]
        );
        assert_error(
            &problems,
            "IPAddressPool/metallb-system/aa-new",
            "spec.addresses[0]",
            "of IPAddressPool/metallb-system/zz-old",
        );
    }

    #[test]
    fn valid_config_resolves_references() {
        use crate::state::{ObjectKey, Objects};
        use std::sync::Arc;
        fn objects<T>(items: Vec<T>, name: impl Fn(&T) -> String) -> Objects<T> {
            Arc::new(
                items
                    .into_iter()
                    .map(|t| {
                        let key = ObjectKey {
                            namespace: Some(NS.into()),
                            name: name(&t),
                        };
                        (key, Arc::new(t))
                    })
                    .collect(),
            )
        }
        let decode_all =
            |v: Vec<(ObjectRef, Value)>| -> Vec<Value> { v.into_iter().map(|(_, v)| v).collect() };
        let pools: Vec<IPAddressPool> = decode_all(vec![
            pool("pool-a", ["192.0.2.0/28"]).pair(),
            pool("pool-b", ["bad"]).pair(),
        ])
        .into_iter()
        .map(|v| serde_json::from_value(v).unwrap())
        .collect();
        let communities: Vec<CommunityObject> = vec![
            serde_json::from_value(
                obj(
                    Kind::Community,
                    "c",
                    json!({"communities": [{"name": "x", "value": "1:2"}]}),
                )
                .1,
            )
            .unwrap(),
        ];
        let advs: Vec<BGPAdvertisement> = vec![
            serde_json::from_value(
                bgp_advertisement("adv")
                    .with_spec(json!({"communities": ["x", "large:1:2:3"], "localPref": 50}))
                    .pair()
                    .1,
            )
            .unwrap(),
            serde_json::from_value(
                bgp_advertisement("bad-adv")
                    .with_spec(json!({"communities": ["y"]}))
                    .pair()
                    .1,
            )
            .unwrap(),
        ];
        let snapshot = Snapshot {
            ip_address_pools: objects(pools, |p| p.metadata.name.clone().unwrap_or_default()),
            communities: objects(communities, |c| c.metadata.name.clone().unwrap_or_default()),
            bgp_advertisements: objects(advs, |a| a.metadata.name.clone().unwrap_or_default()),
            ..Default::default()
        };
        let (config, problems) = valid_config(&snapshot);
        assert_eq!(config.pools.len(), 1);
        assert_eq!(config.bgp_advertisements.len(), 1);
        let adv = &config.bgp_advertisements[0];
        assert_eq!(adv.pools, BTreeSet::from(["pool-a".to_string()]));
        assert_eq!(adv.local_pref, Some(50));
        assert_eq!(
            (adv.aggregation_length, adv.aggregation_length_v6),
            (32, 128)
        );
        assert_eq!(
            adv.communities,
            BTreeSet::from([
                Community::Standard { asn: 1, value: 2 },
                Community::Large {
                    global_admin: 1,
                    local1: 2,
                    local2: 3
                }
            ])
        );
        assert_error(
            &problems,
            "IPAddressPool/metallb-system/pool-b",
            "spec.addresses[0]",
            "\"bad\"",
        );
        assert_error(
            &problems,
            "BGPAdvertisement/metallb-system/bad-adv",
            "spec.communities[0]",
            "\"y\"",
        );
        assert_eq!(problems.len(), 2, "{problems:#?}");
    }
}
