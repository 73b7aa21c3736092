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

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use ipnet::IpNet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::ResourceExt;
use serde::de::DeserializeOwned;

use crate::addr::{self, Community};
use crate::model::core::{EndpointSlice, Namespace, Node, Pod, Secret, Service};
use crate::model::{
    BGPAdvertisement, BGPPeer, Community as CommunityObject, IPAddressPool, L2Advertisement,
    NetworkAttachmentDefinition, ServiceBGPStatus, ServiceL2Status,
};
use crate::state::{Kind, ObjectRef, Snapshot};

/// How bad a problem is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// The object (or the part named) is not used.
    Error,
    /// The object is used, but probably not as its author meant.
    Warning,
}

/// One thing wrong with one object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub object: ObjectRef,
    /// Path of the field in the manifest, e.g. `spec.addresses[1]`; empty for the object.
    pub field: String,
    pub reason: String,
    pub severity: Severity,
}

impl Problem {
    fn error(object: &ObjectRef, field: impl Into<String>, reason: impl Into<String>) -> Self {
        Problem {
            object: object.clone(),
            field: field.into(),
            reason: reason.into(),
            severity: Severity::Error,
        }
    }

    fn warning(object: &ObjectRef, field: impl Into<String>, reason: impl Into<String>) -> Self {
        Problem {
            severity: Severity::Warning,
            ..Problem::error(object, field, reason)
        }
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Problem {
    /// `IPAddressPool/metallb-system/pool-a: spec.addresses[1]: "…": reason`; warnings end
    /// in ` (warning)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.object)?;
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.reason)?;
        if self.severity == Severity::Warning {
            f.write_str(" (warning)")?;
        }
        Ok(())
    }
}

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
        if let Err(p) = parse_peer(object, peer) {
            problems.extend(p);
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
            Kind::Secret => check::<Secret>(object, value, out),
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

// --- pools -------------------------------------------------------------------------------

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

fn pools_with_refs(mut pools: Vec<(ObjectRef, &IPAddressPool)>) -> (Vec<ParsedPool>, Vec<Problem>) {
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
        labels: pool.labels().clone(),
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

// --- communities -------------------------------------------------------------------------

/// Collects Community aliases; a bad or duplicate alias is reported and left out.
pub fn valid_communities<'a>(
    communities: impl IntoIterator<Item = &'a CommunityObject>,
) -> (BTreeMap<String, Community>, Vec<Problem>) {
    communities_with_refs(
        communities
            .into_iter()
            .map(|c| (object_ref(Kind::Community, &c.metadata), c))
            .collect(),
    )
}

fn communities_with_refs(
    mut objects: Vec<(ObjectRef, &CommunityObject)>,
) -> (BTreeMap<String, Community>, Vec<Problem>) {
    objects.sort_by(|a, b| a.0.cmp(&b.0));
    let mut aliases: BTreeMap<String, Community> = BTreeMap::new();
    let mut defined_at: BTreeMap<String, (ObjectRef, usize)> = BTreeMap::new();
    let mut problems = Vec::new();
    for (object, c) in objects {
        for (i, alias) in c.spec.communities.iter().enumerate() {
            if let Some((other, j)) = defined_at.get(&alias.name) {
                let where_ = if *other == object {
                    format!("spec.communities[{j}] of this object")
                } else {
                    format!("{other} spec.communities[{j}]")
                };
                problems.push(Problem::error(
                    &object,
                    format!("spec.communities[{i}].name"),
                    format!("alias {:?} is already defined in {where_}", alias.name),
                ));
                continue;
            }
            match alias.value.parse::<Community>() {
                Ok(v) => {
                    aliases.insert(alias.name.clone(), v);
                    defined_at.insert(alias.name.clone(), (object.clone(), i));
                }
                Err(e) => problems.push(Problem::error(
                    &object,
                    format!("spec.communities[{i}].value"),
                    e.to_string(),
                )),
            }
        }
    }
    (aliases, problems)
}

/// Resolves a community as written in a BGPAdvertisement: an alias name first, then a
/// literal (as MetalLB's `getCommunityValue`).
pub fn resolve_community(
    s: &str,
    aliases: &BTreeMap<String, Community>,
) -> Result<Community, String> {
    if let Some(c) = aliases.get(s) {
        return Ok(*c);
    }
    s.parse::<Community>().map_err(|e| match e {
        addr::CommunityError::Format(_) => {
            format!("{s:?} is neither a community literal (AA:NN or large:A:B:C) nor the name of a Community alias")
        }
        other => other.to_string(),
    })
}

// --- peers -------------------------------------------------------------------------------

/// `dynamicASN`: accept whatever AS the peer announces, of this kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DynamicAsn {
    Internal,
    External,
}

/// Where the TCP MD5 password comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PasswordSource {
    Inline(String),
    /// A `kubernetes.io/basic-auth` Secret, key `password`. Namespace None: the peer's.
    Secret {
        namespace: Option<String>,
        name: String,
    },
}

/// A valid BGPPeer with defaults applied.
#[derive(Clone, Debug, PartialEq)]
pub struct ParsedPeer {
    pub name: String,
    pub namespace: String,
    pub my_asn: u32,
    /// None when `dynamic_asn` is set.
    pub peer_asn: Option<u32>,
    pub dynamic_asn: Option<DynamicAsn>,
    pub address: IpAddr,
    pub source_address: Option<IpAddr>,
    pub port: u16,
    /// Default 90 s; 3 × keepaliveTime when only that is given.
    pub hold_time: Duration,
    /// Default holdTime / 3.
    pub keepalive_time: Duration,
    pub connect_time: Option<Duration>,
    pub router_id: Option<Ipv4Addr>,
    pub node_selectors: Vec<Selector>,
    pub password: Option<PasswordSource>,
    pub ebgp_multi_hop: bool,
}

/// Parses peers, reporting and leaving out each bad one.
pub fn valid_peers<'a>(
    peers: impl IntoIterator<Item = &'a BGPPeer>,
) -> (Vec<ParsedPeer>, Vec<Problem>) {
    let mut parsed = Vec::new();
    let mut problems = Vec::new();
    for peer in peers {
        match parse_peer(&object_ref(Kind::BGPPeer, &peer.metadata), peer) {
            Ok(p) => parsed.push(p),
            Err(p) => problems.extend(p),
        }
    }
    (parsed, problems)
}

const DEFAULT_HOLD_TIME: Duration = Duration::from_secs(90);
/// The BGP OPEN message carries the hold time in 16 bits of seconds.
const MAX_HOLD_TIME: Duration = Duration::from_secs(65535);

fn parse_peer(object: &ObjectRef, peer: &BGPPeer) -> Result<ParsedPeer, Vec<Problem>> {
    let spec = &peer.spec;
    let mut problems = Vec::new();
    let mut err =
        |field: &str, reason: String| problems.push(Problem::error(object, field, reason));

    if spec.my_asn == 0 {
        err("spec.myASN", "must be in 1..=4294967295, got 0".into());
    }
    let dynamic_asn = match spec.dynamic_asn.as_deref() {
        None | Some("") => None,
        Some("internal") => Some(DynamicAsn::Internal),
        Some("external") => Some(DynamicAsn::External),
        Some(other) => {
            err(
                "spec.dynamicASN",
                format!("{other:?} is not valid (internal or external)"),
            );
            None
        }
    };
    let dynamic_set = spec.dynamic_asn.as_deref().is_some_and(|s| !s.is_empty());
    if spec.peer_asn != 0 && dynamic_set {
        err(
            "spec.peerASN",
            format!(
                "peerASN {} and dynamicASN are both set; set only one",
                spec.peer_asn
            ),
        );
    } else if spec.peer_asn == 0 && !dynamic_set {
        err(
            "spec.peerASN",
            "must be in 1..=4294967295 unless dynamicASN is set, got 0".into(),
        );
    }
    if spec.ebgp_multi_hop && spec.peer_asn != 0 && spec.peer_asn == spec.my_asn {
        err(
            "spec.ebgpMultiHop",
            "set on an iBGP peer (peerASN equals myASN)".into(),
        );
    }

    let address = if spec.peer_address.is_empty() {
        let reason = match spec.interface.as_deref() {
            Some(i) if !i.is_empty() => format!(
                "missing; unnumbered BGP over interface {i:?} is not supported, set peerAddress"
            ),
            _ => "missing; the address of the router to dial is required".to_string(),
        };
        err("spec.peerAddress", reason);
        None
    } else {
        match spec.peer_address.parse::<IpAddr>() {
            Ok(ip) => Some(ip),
            Err(_) => {
                err(
                    "spec.peerAddress",
                    format!("{:?} is not an IP address", spec.peer_address),
                );
                None
            }
        }
    };
    let source_address = match spec.source_address.as_deref() {
        None | Some("") => None,
        Some(s) => match s.parse::<IpAddr>() {
            Ok(ip) => Some(ip),
            Err(_) => {
                err("spec.sourceAddress", format!("{s:?} is not an IP address"));
                None
            }
        },
    };
    if let (Some(a), Some(s)) = (address, source_address)
        && a.is_ipv4() != s.is_ipv4()
    {
        err(
            "spec.sourceAddress",
            format!("{s} is not of the same address family as peerAddress {a}"),
        );
    }
    let router_id = match spec.router_id.as_deref() {
        None | Some("") => None,
        Some(s) => match s.parse::<Ipv4Addr>() {
            Ok(ip) => Some(ip),
            Err(_) => {
                err(
                    "spec.routerID",
                    format!("{s:?} is not an IPv4 address (a BGP identifier is 32 bits)"),
                );
                None
            }
        },
    };
    if spec.peer_port == Some(0) {
        err("spec.peerPort", "must be in 1..=65535, got 0".into());
    }

    // Timers, as MetalLB's parseTimers: a missing one is derived from the other.
    let mut duration = |field: &str, v: &Option<String>| match v.as_deref() {
        None => None,
        Some(s) => match addr::parse_go_duration(s) {
            Ok(d) => Some(d),
            Err(e) => {
                problems.push(Problem::error(object, field, e.to_string()));
                None
            }
        },
    };
    let hold = duration("spec.holdTime", &spec.hold_time);
    let keepalive = duration("spec.keepaliveTime", &spec.keepalive_time);
    let connect_time = duration("spec.connectTime", &spec.connect_time);
    let timer_unparsable = (spec.hold_time.is_some() && hold.is_none())
        || (spec.keepalive_time.is_some() && keepalive.is_none());
    let (hold_time, keepalive_time) = match (hold, keepalive) {
        (Some(h), Some(k)) => (h, k),
        (Some(h), None) => (h, h / 3),
        (None, Some(k)) => (k * 3, k),
        (None, None) => (DEFAULT_HOLD_TIME, DEFAULT_HOLD_TIME / 3),
    };
    if !timer_unparsable {
        let whole_seconds = Duration::from_secs(hold_time.as_secs());
        if !whole_seconds.is_zero() && whole_seconds < Duration::from_secs(3) {
            problems.push(Problem::error(
                object,
                if hold.is_some() {
                    "spec.holdTime"
                } else {
                    "spec.keepaliveTime"
                },
                format!("hold time {hold_time:?} must be 0 or at least 3s"),
            ));
        } else if hold_time > MAX_HOLD_TIME {
            problems.push(Problem::error(
                object,
                if hold.is_some() {
                    "spec.holdTime"
                } else {
                    "spec.keepaliveTime"
                },
                format!("hold time {hold_time:?} is above the BGP maximum of 65535s"),
            ));
        }
        if keepalive_time > hold_time {
            problems.push(Problem::error(
                object,
                "spec.keepaliveTime",
                format!("keepalive time {keepalive_time:?} is above the hold time {hold_time:?}"),
            ));
        }
    }
    if let Some(c) = connect_time {
        // The upstream CRD's rule: whole seconds in 1..=65535.
        if c.subsec_nanos() != 0 || !(1..=65535).contains(&c.as_secs()) {
            problems.push(Problem::error(
                object,
                "spec.connectTime",
                format!("{c:?} must be a whole number of seconds in 1s..=65535s"),
            ));
        }
    }

    let password_inline = spec.password.as_deref().filter(|p| !p.is_empty());
    let secret_name = spec
        .password_secret
        .as_ref()
        .and_then(|s| s.name.as_deref())
        .filter(|n| !n.is_empty());
    if password_inline.is_some() && secret_name.is_some() {
        problems.push(Problem::error(
            object,
            "spec.password",
            "password and passwordSecret are both set; set only one",
        ));
    }
    if password_inline.is_some_and(|p| p.contains(['\n', '\r'])) {
        problems.push(Problem::error(
            object,
            "spec.password",
            "contains a line break",
        ));
    }
    let password = match (password_inline, secret_name) {
        (Some(p), None) => Some(PasswordSource::Inline(p.to_string())),
        (None, Some(name)) => Some(PasswordSource::Secret {
            namespace: spec
                .password_secret
                .as_ref()
                .and_then(|s| s.namespace.clone())
                .filter(|n| !n.is_empty()),
            name: name.to_string(),
        }),
        _ => None,
    };

    let node_selectors = parse_selectors(
        object,
        "spec.nodeSelectors",
        &spec.node_selectors,
        &mut problems,
    );

    match address {
        Some(address) if problems.is_empty() => Ok(ParsedPeer {
            name: object.name.clone(),
            namespace: namespace_of(object),
            my_asn: spec.my_asn,
            peer_asn: (spec.peer_asn != 0).then_some(spec.peer_asn),
            dynamic_asn,
            address,
            source_address,
            port: spec.peer_port.unwrap_or(179),
            hold_time,
            keepalive_time,
            connect_time,
            router_id,
            node_selectors,
            password,
            ebgp_multi_hop: spec.ebgp_multi_hop,
        }),
        _ => Err(problems),
    }
}

// --- advertisements ----------------------------------------------------------------------

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

fn parse_l2_advertisement(
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

fn parse_bgp_advertisement(
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

// --- NetworkAttachmentDefinition -----------------------------------------------------------

/// Checks a NAD's `spec.config` as Multus will read it: empty (Multus then reads the CNI
/// file named like the object) or a JSON object with a `cniVersion` string and either a
/// `type` (one plugin) or a non-empty `plugins` list (a conflist, which also needs a `name`)
/// whose entries each have a `type`.
pub fn check_cni_config(config: &str) -> Result<(), String> {
    if config.trim().is_empty() {
        return Ok(());
    }
    let value: serde_json::Value = serde_json::from_str(config).map_err(|e| {
        format!(
            "not valid JSON at line {} column {}: {e}",
            e.line(),
            e.column()
        )
    })?;
    let obj = value
        .as_object()
        .ok_or("must be a JSON object".to_string())?;
    match obj.get("cniVersion") {
        Some(serde_json::Value::String(_)) => {}
        Some(_) => return Err("\"cniVersion\" must be a string".into()),
        None => return Err("\"cniVersion\" is missing".into()),
    }
    let is_string = |v: Option<&serde_json::Value>| v.is_some_and(|v| v.is_string());
    if let Some(plugins) = obj.get("plugins") {
        let list = plugins
            .as_array()
            .ok_or("\"plugins\" must be a list".to_string())?;
        if list.is_empty() {
            return Err("\"plugins\" is empty".into());
        }
        if !is_string(obj.get("name")) {
            return Err("a configuration list (with \"plugins\") needs a \"name\" string".into());
        }
        for (i, p) in list.iter().enumerate() {
            if !is_string(p.get("type")) {
                return Err(format!("plugins[{i}] has no \"type\" string"));
            }
        }
        return Ok(());
    }
    if !is_string(obj.get("type")) {
        return Err("needs a \"type\" string (one plugin) or a \"plugins\" list".into());
    }
    Ok(())
}

fn check_nad(object: &ObjectRef, nad: &NetworkAttachmentDefinition) -> Vec<Problem> {
    match check_cni_config(&nad.spec.config) {
        Ok(()) => Vec::new(),
        Err(e) => vec![Problem::error(object, "spec.config", e)],
    }
}

/// Checks one NetworkAttachmentDefinition (for the Multus shim, which skips bad ones).
pub fn validate_nad(nad: &NetworkAttachmentDefinition) -> Vec<Problem> {
    check_nad(
        &object_ref(Kind::NetworkAttachmentDefinition, &nad.metadata),
        nad,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    const NS: &str = "metallb-system";

    fn obj(kind: Kind, name: &str, spec: Value) -> (ObjectRef, Value) {
        let object = ObjectRef::new(kind, Some(NS), name);
        let value = json!({
            "apiVersion": kind.api_version(),
            "kind": kind.name(),
            "metadata": {"name": name, "namespace": NS},
            "spec": spec,
        });
        (object, value)
    }

    fn pool(name: &str, addresses: &[&str]) -> (ObjectRef, Value) {
        obj(Kind::IPAddressPool, name, json!({ "addresses": addresses }))
    }

    fn peer(name: &str, extra: Value) -> (ObjectRef, Value) {
        let mut spec = json!({"myASN": 64500, "peerASN": 64501, "peerAddress": "192.0.2.1"});
        for (k, v) in extra.as_object().unwrap() {
            if v.is_null() {
                spec.as_object_mut().unwrap().remove(k);
            } else {
                spec[k] = v.clone();
            }
        }
        obj(Kind::BGPPeer, name, spec)
    }

    fn bgp_adv(name: &str, spec: Value) -> (ObjectRef, Value) {
        obj(Kind::BGPAdvertisement, name, spec)
    }

    fn nad(name: &str, config: &str) -> (ObjectRef, Value) {
        obj(
            Kind::NetworkAttachmentDefinition,
            name,
            json!({ "config": config }),
        )
    }

    fn errors(problems: &[Problem]) -> Vec<String> {
        problems
            .iter()
            .filter(|p| p.is_error())
            .map(|p| p.to_string())
            .collect()
    }

    /// Exactly one problem of this severity on `object` at `field` contains `reason`.
    #[track_caller]
    fn assert_one(
        problems: &[Problem],
        severity: Severity,
        object: &str,
        field: &str,
        reason: &str,
    ) {
        let hits = problems
            .iter()
            .filter(|p| {
                p.severity == severity
                    && p.object.to_string() == object
                    && p.field == field
                    && p.reason.contains(reason)
            })
            .count();
        assert_eq!(
            hits, 1,
            "want one {severity:?} {object} {field} {reason:?}; got:\n{problems:#?}"
        );
    }

    #[track_caller]
    fn assert_error(problems: &[Problem], object: &str, field: &str, reason: &str) {
        assert_one(problems, Severity::Error, object, field, reason);
    }

    #[track_caller]
    fn assert_only_error(objects: &[(ObjectRef, Value)], object: &str, field: &str, reason: &str) {
        let problems = validate_objects(objects);
        assert_error(&problems, object, field, reason);
        assert_eq!(errors(&problems).len(), 1, "{problems:#?}");
    }

    #[track_caller]
    fn assert_clean(objects: &[(ObjectRef, Value)]) {
        let problems = validate_objects(objects);
        assert!(problems.is_empty(), "{problems:#?}");
    }

    const POOL_A: &str = "IPAddressPool/metallb-system/pool-a";
    const PEER: &str = "BGPPeer/metallb-system/p";
    const ADV: &str = "BGPAdvertisement/metallb-system/adv";

    // --- Problem display -----------------------------------------------------------------

    #[test]
    fn display_names_object_field_and_reason() {
        let problems =
            validate_objects(&[pool("pool-a", &["192.0.2.0/28", "192.0.2.20-192.0.2.10"])]);
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
            pool("pool-a", &["bad", "192.0.2.0/40"]),
            peer("p", json!({"myASN": 0, "routerID": "x"})),
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
            &[peer("p", json!({"myASN": 4294967296u64}))],
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
        let (object, mut value) = obj(Kind::L2Advertisement, "all", json!({}));
        value.as_object_mut().unwrap().remove("spec");
        assert_clean(&[pool("pool-a", &["192.0.2.0/28"]), (object, value)]);
    }

    // --- pools ---------------------------------------------------------------------------

    #[test]
    fn pool_address_errors() {
        let problems = validate_objects(&[pool(
            "pool-a",
            &[
                "not-an-ip",
                "192.0.2.0/33",
                "2001:db8::/129",
                "192.0.2.1-2001:db8::5",
                "pool",
            ],
        )]);
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
            &[pool("pool-a", &[])],
            POOL_A,
            "spec.addresses",
            "no addresses",
        );
    }

    #[test]
    fn host_bits_are_a_warning() {
        let problems = validate_objects(&[pool("pool-a", &["192.0.2.5/24"])]);
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
            pool("pool-a", &["192.0.2.0/28"]),
            pool("pool-b", &["198.51.100.0/24", "192.0.2.10-192.0.2.20"]),
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
            &[pool("pool-a", &["192.0.2.0/24", "192.0.2.128/25"])],
            POOL_A,
            "spec.addresses[1]",
            "overlaps \"192.0.2.0/24\" (spec.addresses[0]) of this pool",
        );
    }

    #[test]
    fn adjacent_and_other_family_ranges_do_not_overlap() {
        assert_clean(&[
            pool("pool-a", &["192.0.2.0/28", "::ffff:0:0/96"]),
            pool("pool-b", &["192.0.2.16-192.0.2.31", "2001:db8::/64"]),
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

    // --- peers ---------------------------------------------------------------------------

    #[test]
    fn asn_rules() {
        assert_only_error(
            &[peer("p", json!({"myASN": 0}))],
            PEER,
            "spec.myASN",
            "got 0",
        );
        assert_only_error(
            &[peer("p", json!({"peerASN": null}))],
            PEER,
            "spec.peerASN",
            "unless dynamicASN is set",
        );
        assert_only_error(
            &[peer("p", json!({"dynamicASN": "external"}))],
            PEER,
            "spec.peerASN",
            "peerASN 64501 and dynamicASN are both set",
        );
        assert_only_error(
            &[peer(
                "p",
                json!({"peerASN": null, "dynamicASN": "sideways"}),
            )],
            PEER,
            "spec.dynamicASN",
            "\"sideways\" is not valid (internal or external)",
        );
        assert_clean(&[peer(
            "p",
            json!({"peerASN": null, "dynamicASN": "internal"}),
        )]);
        assert_clean(&[peer("p", json!({"myASN": 4294967295u32, "peerASN": 1}))]);
        assert_only_error(
            &[peer("p", json!({"peerASN": 64500, "ebgpMultiHop": true}))],
            PEER,
            "spec.ebgpMultiHop",
            "iBGP",
        );
    }

    #[test]
    fn address_rules() {
        assert_only_error(
            &[peer("p", json!({"peerAddress": "router-1"}))],
            PEER,
            "spec.peerAddress",
            "\"router-1\" is not an IP address",
        );
        assert_only_error(
            &[peer("p", json!({"peerAddress": null, "interface": "eth1"}))],
            PEER,
            "spec.peerAddress",
            "unnumbered BGP over interface \"eth1\" is not supported",
        );
        assert_only_error(
            &[peer("p", json!({"sourceAddress": "192.0.2.300"}))],
            PEER,
            "spec.sourceAddress",
            "\"192.0.2.300\" is not an IP address",
        );
        assert_only_error(
            &[peer("p", json!({"sourceAddress": "2001:db8::1"}))],
            PEER,
            "spec.sourceAddress",
            "not of the same address family",
        );
        assert_only_error(
            &[peer("p", json!({"routerID": "2001:db8::1"}))],
            PEER,
            "spec.routerID",
            "is not an IPv4 address",
        );
        assert_only_error(
            &[peer("p", json!({"peerPort": 0}))],
            PEER,
            "spec.peerPort",
            "got 0",
        );
        assert_clean(&[peer(
            "p",
            json!({"peerAddress": "2001:db8::1", "sourceAddress": "2001:db8::2", "routerID": "192.0.2.9", "peerPort": 1179}),
        )]);
    }

    #[test]
    fn timer_rules() {
        for ok in [
            json!({"holdTime": "0s"}),
            json!({"holdTime": "3s"}),
            json!({"holdTime": "90s", "keepaliveTime": "90s"}),
            json!({"keepaliveTime": "1s"}),
            json!({"holdTime": "240s", "keepaliveTime": "1m"}),
            json!({"connectTime": "10s"}),
        ] {
            assert_clean(&[peer("p", ok)]);
        }
        assert_only_error(
            &[peer("p", json!({"holdTime": "2s"}))],
            PEER,
            "spec.holdTime",
            "hold time 2s must be 0 or at least 3s",
        );
        // Rounded down to whole seconds first, as MetalLB does.
        assert_only_error(
            &[peer("p", json!({"holdTime": "2.9s"}))],
            PEER,
            "spec.holdTime",
            "must be 0 or at least 3s",
        );
        // Only keepaliveTime: the hold time is three times it.
        assert_only_error(
            &[peer("p", json!({"keepaliveTime": "500ms"}))],
            PEER,
            "spec.keepaliveTime",
            "hold time 1.5s must be 0 or at least 3s",
        );
        assert_only_error(
            &[peer(
                "p",
                json!({"holdTime": "30s", "keepaliveTime": "31s"}),
            )],
            PEER,
            "spec.keepaliveTime",
            "keepalive time 31s is above the hold time 30s",
        );
        assert_only_error(
            &[peer("p", json!({"holdTime": "19h"}))],
            PEER,
            "spec.holdTime",
            "above the BGP maximum of 65535s",
        );
        assert_only_error(
            &[peer("p", json!({"holdTime": "90"}))],
            PEER,
            "spec.holdTime",
            "invalid duration \"90\": missing unit",
        );
        assert_only_error(
            &[peer("p", json!({"connectTime": "soon"}))],
            PEER,
            "spec.connectTime",
            "invalid duration \"soon\"",
        );
        assert_only_error(
            &[peer("p", json!({"connectTime": "1500ms"}))],
            PEER,
            "spec.connectTime",
            "whole number of seconds in 1s..=65535s",
        );
        assert_only_error(
            &[peer("p", json!({"connectTime": "0s"}))],
            PEER,
            "spec.connectTime",
            "whole number of seconds in 1s..=65535s",
        );
    }

    #[test]
    fn password_rules() {
        assert_only_error(
            &[peer(
                "p",
                json!({"password": "x", "passwordSecret": {"name": "s"}}),
            )],
            PEER,
            "spec.password",
            "password and passwordSecret are both set",
        );
        assert_only_error(
            &[peer("p", json!({"password": "x\ny"}))],
            PEER,
            "spec.password",
            "line break",
        );
        // An empty secret reference counts as unset.
        assert_clean(&[peer("p", json!({"password": "x", "passwordSecret": {}}))]);
    }

    #[test]
    fn parsed_peer_defaults() {
        let (_, value) = peer(
            "p",
            json!({"keepaliveTime": "20s", "passwordSecret": {"name": "s"}}),
        );
        let typed: BGPPeer = serde_json::from_value(value).unwrap();
        let (peers, problems) = valid_peers([&typed]);
        assert!(problems.is_empty());
        let p = &peers[0];
        assert_eq!(p.hold_time, Duration::from_secs(60));
        assert_eq!(p.keepalive_time, Duration::from_secs(20));
        assert_eq!(p.port, 179);
        assert_eq!(p.peer_asn, Some(64501));
        assert_eq!(
            p.password,
            Some(PasswordSource::Secret {
                namespace: None,
                name: "s".into()
            })
        );
        let (_, value) = peer("p", json!({}));
        let typed: BGPPeer = serde_json::from_value(value).unwrap();
        let p = &valid_peers([&typed]).0[0];
        assert_eq!(
            (p.hold_time, p.keepalive_time),
            (Duration::from_secs(90), Duration::from_secs(30))
        );
    }

    // --- advertisements --------------------------------------------------------------------

    #[test]
    fn aggregation_length_ranges() {
        let base = pool("pool-a", &["192.0.2.0/32"]);
        assert_only_error(
            &[
                base.clone(),
                bgp_adv("adv", json!({"aggregationLength": 33})),
            ],
            ADV,
            "spec.aggregationLength",
            "33 is outside 1..=32",
        );
        assert_only_error(
            &[
                base.clone(),
                bgp_adv("adv", json!({"aggregationLength": 0})),
            ],
            ADV,
            "spec.aggregationLength",
            "0 is outside 1..=32",
        );
        assert_only_error(
            &[
                base.clone(),
                bgp_adv("adv", json!({"aggregationLengthV6": 129})),
            ],
            ADV,
            "spec.aggregationLengthV6",
            "129 is outside 0..=128",
        );
        assert_only_error(
            &[base, bgp_adv("adv", json!({"aggregationLengthV6": -1}))],
            ADV,
            "spec.aggregationLengthV6",
            "-1 is outside 0..=128",
        );
    }

    #[test]
    fn aggregation_may_not_be_wider_than_the_pool() {
        let pools = [
            pool("pool-a", &["192.0.2.0/26", "2001:db8::/120"]),
            pool("pool-r", &["198.51.100.10-198.51.100.20"]),
        ];
        let with = |adv: (ObjectRef, Value)| {
            let mut v = pools.to_vec();
            v.push(adv);
            v
        };
        assert_clean(&with(bgp_adv(
            "adv",
            json!({"aggregationLength": 26, "aggregationLengthV6": 120, "ipAddressPools": ["pool-a"]}),
        )));
        assert_only_error(
            &with(bgp_adv(
                "adv",
                json!({"aggregationLength": 24, "ipAddressPools": ["pool-a"]}),
            )),
            ADV,
            "spec.aggregationLength",
            "24 is shorter than the /26 of \"192.0.2.0/26\" (spec.addresses[0]) in IPAddressPool/metallb-system/pool-a",
        );
        assert_only_error(
            &with(bgp_adv(
                "adv",
                json!({"aggregationLengthV6": 112, "ipAddressPools": ["pool-a"]}),
            )),
            ADV,
            "spec.aggregationLengthV6",
            "112 is shorter than the /120 of \"2001:db8::/120\"",
        );
        // A range: its widest CIDR (/30 for .12-.15 and .16-.19) bounds the aggregation.
        assert_clean(&with(bgp_adv(
            "adv",
            json!({"aggregationLength": 30, "ipAddressPools": ["pool-r"]}),
        )));
        assert_only_error(
            &with(bgp_adv(
                "adv",
                json!({"aggregationLength": 29, "ipAddressPools": ["pool-r"]}),
            )),
            ADV,
            "spec.aggregationLength",
            "29 is shorter than the /30 of \"198.51.100.10-198.51.100.20\"",
        );
        // No pools named: every pool is announced, so every pool is checked.
        let problems = validate_objects(&with(bgp_adv("adv", json!({"aggregationLength": 25}))));
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
        let mut labelled = pool("pool-l", &["203.0.113.0/24"]);
        labelled.1["metadata"]["labels"] = json!({"bgp": "yes"});
        assert_only_error(
            &[
                labelled,
                bgp_adv(
                    "adv",
                    json!({"aggregationLength": 16, "ipAddressPoolSelectors": [{"matchLabels": {"bgp": "yes"}}]}),
                ),
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
            bgp_adv(
                "adv",
                json!({"communities": ["NO_ADVERTISE", "64500:1", "large:1:2:3"]}),
            ),
        ]);
        let problems = validate_objects(&[
            aliases,
            bgp_adv(
                "adv",
                json!({"communities": ["65536:1", "no-export", "64500:1", "64500:1", "large:1:2:-3"]}),
            ),
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
            pool("pool-a", &["192.0.2.0/28"]),
            pool("broken", &["nope"]),
            obj(
                Kind::L2Advertisement,
                "l2",
                json!({"ipAddressPools": ["pool-a", "ghost", "broken", "pool-a"]}),
            ),
            bgp_adv(
                "adv",
                json!({"ipAddressPools": ["ghost"], "peers": ["r1", "r1"]}),
            ),
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
            &[obj(
                Kind::L2Advertisement,
                "l2",
                json!({"nodeSelectors": [{"matchExpressions": [{"key": "k", "operator": "in", "values": ["v"]}]}]}),
            )],
            "L2Advertisement/metallb-system/l2",
            "spec.nodeSelectors[0].matchExpressions[0].operator",
            "\"in\" is not a valid operator",
        );
        assert_only_error(
            &[peer(
                "p",
                json!({"nodeSelectors": [{"matchExpressions": [{"key": "k", "operator": "Exists", "values": ["v"]}]}]}),
            )],
            PEER,
            "spec.nodeSelectors[0].matchExpressions[0].values",
            "takes no values",
        );
    }

    // --- NetworkAttachmentDefinition -------------------------------------------------------

    #[test]
    fn nad_config_rules() {
        const NAD: &str = "NetworkAttachmentDefinition/metallb-system/n";
        assert_clean(&[nad("n", "")]);
        assert_clean(&[nad("n", r#"{"cniVersion": "0.3.1", "type": "macvlan"}"#)]);
        assert_clean(&[nad(
            "n",
            r#"{"cniVersion": "1.0.0", "name": "l", "plugins": [{"type": "bridge"}]}"#,
        )]);
        for (config, reason) in [
            (
                "{\n  \"cniVersion\": \"0.3.1\",\n  \"type\": macvlan\n}",
                "not valid JSON at line 3 column 11",
            ),
            ("[1, 2]", "must be a JSON object"),
            (r#"{"type": "macvlan"}"#, "\"cniVersion\" is missing"),
            (
                r#"{"cniVersion": 1, "type": "macvlan"}"#,
                "\"cniVersion\" must be a string",
            ),
            (r#"{"cniVersion": "0.3.1"}"#, "needs a \"type\" string"),
            (
                r#"{"cniVersion": "0.3.1", "name": "l", "plugins": []}"#,
                "\"plugins\" is empty",
            ),
            (
                r#"{"cniVersion": "0.3.1", "name": "l", "plugins": {}}"#,
                "\"plugins\" must be a list",
            ),
            (
                r#"{"cniVersion": "0.3.1", "name": "l", "plugins": [{"type": "a"}, {"mtu": 1}]}"#,
                "plugins[1] has no \"type\" string",
            ),
            (
                r#"{"cniVersion": "0.3.1", "plugins": [{"type": "a"}]}"#,
                "needs a \"name\" string",
            ),
        ] {
            assert_only_error(&[nad("n", config)], NAD, "spec.config", reason);
        }
    }

    // --- runtime helpers ---------------------------------------------------------------------

    fn typed_pool(name: &str, addresses: &[&str], created: Option<&str>) -> IPAddressPool {
        let (_, mut value) = pool(name, addresses);
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
            pool("pool-a", &["192.0.2.0/28"]),
            pool("pool-b", &["bad"]),
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
                bgp_adv(
                    "adv",
                    json!({"communities": ["x", "large:1:2:3"], "localPref": 50}),
                )
                .1,
            )
            .unwrap(),
            serde_json::from_value(bgp_adv("bad-adv", json!({"communities": ["y"]})).1).unwrap(),
        ];
        let snapshot = Snapshot {
            ip_address_pools: objects(pools, |p| p.name_any()),
            communities: objects(communities, |c| c.name_any()),
            bgp_advertisements: objects(advs, |a| a.name_any()),
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
