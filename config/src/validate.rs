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

    let (aliases, p) =
        communities_with_refs(typed.communities.iter().map(|(r, c)| (r.clone(), c)).collect());
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
    let all_pool_names: BTreeSet<(String, String)> = snapshot
        .ip_address_pools
        .keys()
        .map(|k| (k.namespace.clone().unwrap_or_default(), k.name.clone()))
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

/// A label selector, checked and ready to match.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selector {
    requirements: Vec<Requirement>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Requirement {
    key: String,
    operator: Operator,
    values: BTreeSet<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

impl Selector {
    /// The selector that matches everything (an empty LabelSelector).
    pub fn everything() -> Self {
        Selector::default()
    }

    /// Whether a set of labels satisfies every requirement, as Kubernetes evaluates them.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| {
            let value = labels.get(&r.key);
            match r.operator {
                Operator::In => value.is_some_and(|v| r.values.contains(v)),
                Operator::NotIn => value.is_none_or(|v| !r.values.contains(v)),
                Operator::Exists => value.is_some(),
                Operator::DoesNotExist => value.is_none(),
            }
        })
    }
}

/// Checks a LabelSelector as `metav1.LabelSelectorAsSelector` does: operators, the values
/// rule of each operator, label key and value syntax.
pub fn parse_selector(
    object: &ObjectRef,
    field: &str,
    selector: &LabelSelector,
) -> Result<Selector, Vec<Problem>> {
    let mut problems = Vec::new();
    let mut requirements = Vec::new();
    for (key, value) in selector.match_labels.iter().flatten() {
        let f = format!("{field}.matchLabels[{key:?}]");
        if let Err(e) = check_label_key(key) {
            problems.push(Problem::error(object, &f, format!("key {key:?}: {e}")));
        }
        if let Err(e) = check_label_value(value) {
            problems.push(Problem::error(object, &f, format!("value {value:?}: {e}")));
        }
        requirements.push(Requirement {
            key: key.clone(),
            operator: Operator::In,
            values: BTreeSet::from([value.clone()]),
        });
    }
    for (i, expr) in selector.match_expressions.iter().flatten().enumerate() {
        let f = format!("{field}.matchExpressions[{i}]");
        if let Err(e) = check_label_key(&expr.key) {
            problems.push(Problem::error(
                object,
                format!("{f}.key"),
                format!("{:?}: {e}", expr.key),
            ));
        }
        let values = expr.values.clone().unwrap_or_default();
        let operator = match expr.operator.as_str() {
            "In" => Some(Operator::In),
            "NotIn" => Some(Operator::NotIn),
            "Exists" => Some(Operator::Exists),
            "DoesNotExist" => Some(Operator::DoesNotExist),
            other => {
                problems.push(Problem::error(
                    object,
                    format!("{f}.operator"),
                    format!("{other:?} is not a valid operator (In, NotIn, Exists, DoesNotExist)"),
                ));
                None
            }
        };
        match operator {
            Some(op @ (Operator::In | Operator::NotIn)) if values.is_empty() => {
                problems.push(Problem::error(
                    object,
                    format!("{f}.values"),
                    format!("operator {op:?} needs at least one value"),
                ));
            }
            Some(op @ (Operator::Exists | Operator::DoesNotExist)) if !values.is_empty() => {
                problems.push(Problem::error(
                    object,
                    format!("{f}.values"),
                    format!("operator {op:?} takes no values, got {values:?}"),
                ));
            }
            _ => {}
        }
        for (j, v) in values.iter().enumerate() {
            if let Err(e) = check_label_value(v) {
                problems.push(Problem::error(
                    object,
                    format!("{f}.values[{j}]"),
                    format!("{v:?}: {e}"),
                ));
            }
        }
        if let Some(operator) = operator {
            requirements.push(Requirement {
                key: expr.key.clone(),
                operator,
                values: values.into_iter().collect(),
            });
        }
    }
    if problems.is_empty() {
        Ok(Selector { requirements })
    } else {
        Err(problems)
    }
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

/// A label name: `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?`, at most 63 characters.
fn check_label_name(s: &str) -> Result<(), String> {
    let ok_end = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if s.len() > 63 {
        return Err("must be at most 63 characters".into());
    }
    if !ok_end(s.chars().next())
        || !ok_end(s.chars().last())
        || !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(
            "must be alphanumerics, '-', '_' or '.', starting and ending with an alphanumeric"
                .into(),
        );
    }
    Ok(())
}

fn check_label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                && l.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                && l.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        };
        if prefix.len() > 253 || !prefix.split('.').all(label_ok) {
            return Err(format!("prefix {prefix:?} is not a DNS subdomain"));
        }
    }
    check_label_name(name).map_err(|e| format!("name part {e}"))
}

fn check_label_value(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Ok(());
    }
    check_label_name(value)
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
        problems.push(Problem::error(object, "spec.addresses", "the pool has no addresses"));
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
        cidrs: entries.iter().flat_map(|e| e.cidrs.iter().copied()).collect(),
        entries,
        auto_assign: spec.auto_assign(),
        avoid_buggy_ips: spec.avoid_buggy_ips,
        allocation,
        labels: pool.labels().clone(),
    })
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
    let mut err = |field: &str, reason: String| problems.push(Problem::error(object, field, reason));

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
            format!("peerASN {} and dynamicASN are both set; set only one", spec.peer_asn),
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
    if let (Some(a), Some(s)) = (address, source_address) {
        if a.is_ipv4() != s.is_ipv4() {
            err(
                "spec.sourceAddress",
                format!("{s} is not of the same address family as peerAddress {a}"),
            );
        }
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
    let timers_given = (spec.hold_time.is_some() && hold.is_none())
        || (spec.keepalive_time.is_some() && keepalive.is_none());
    let (hold_time, keepalive_time) = match (hold, keepalive) {
        (Some(h), Some(k)) => (h, k),
        (Some(h), None) => (h, h / 3),
        (None, Some(k)) => (k * 3, k),
        (None, None) => (DEFAULT_HOLD_TIME, DEFAULT_HOLD_TIME / 3),
    };
    if !timers_given {
        let whole_seconds = Duration::from_secs(hold_time.as_secs());
        if !whole_seconds.is_zero() && whole_seconds < Duration::from_secs(3) {
            problems.push(Problem::error(
                object,
                if hold.is_some() { "spec.holdTime" } else { "spec.keepaliveTime" },
                format!("hold time {hold_time:?} must be 0 or at least 3s"),
            ));
        } else if hold_time > MAX_HOLD_TIME {
            problems.push(Problem::error(
                object,
                if hold.is_some() { "spec.holdTime" } else { "spec.keepaliveTime" },
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

    let node_selectors =
        parse_selectors(object, "spec.nodeSelectors", &spec.node_selectors, &mut problems);

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
            problems.push(Problem::error(object, field, format!("pool {name:?} is listed twice")));
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

fn parse_l2_advertisement(
    object: &ObjectRef,
    adv: &L2Advertisement,
    pools: &[ParsedPool],
    all_pool_names: &BTreeSet<(String, String)>,
) -> (Option<ParsedL2Advertisement>, Vec<Problem>) {
    let spec = &adv.spec;
    let mut problems = Vec::new();
    let pool_selectors = parse_selectors(
        object,
        "spec.ipAddressPoolSelectors",
        &spec.ip_address_pool_selectors,
        &mut problems,
    );
    let node_selectors =
        parse_selectors(object, "spec.nodeSelectors", &spec.node_selectors, &mut problems);
    let selected = select_pools(
        object,
        &spec.ip_address_pools,
        &pool_selectors,
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
    if !(1..=32).contains(&v4) {
        problems.push(Problem::error(
            object,
            "spec.aggregationLength",
            format!("{v4} is outside 1..=32"),
        ));
    }
    if !(0..=128).contains(&v6) {
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
            problems.push(Problem::error(object, field, format!("{c:?} is listed twice")));
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

    let pool_selectors = parse_selectors(
        object,
        "spec.ipAddressPoolSelectors",
        &spec.ip_address_pool_selectors,
        &mut problems,
    );
    let node_selectors =
        parse_selectors(object, "spec.nodeSelectors", &spec.node_selectors, &mut problems);
    let selected = select_pools(
        object,
        &spec.ip_address_pools,
        &pool_selectors,
        pools,
        all_pool_names,
        &mut problems,
    );

    // MetalLB's validateBGPAdvPerPool: the announced prefix may not be wider than what
    // the pool holds, i.e. the aggregation length may not be shorter than the widest CIDR
    // of any entry of a selected pool.
    for pool in pools.iter().filter(|p| selected.contains(&p.name)) {
        for (i, entry) in pool.entries.iter().enumerate() {
            let (len, field) = if entry.first.is_ipv4() {
                (v4, "spec.aggregationLength")
            } else {
                (v6, "spec.aggregationLengthV6")
            };
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
