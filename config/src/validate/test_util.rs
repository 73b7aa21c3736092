//! Builders and assertions shared by the validation tests.

pub(crate) use super::{Problem, Severity, validate_objects};
pub(crate) use crate::state::{Kind, ObjectRef};
pub(crate) use crate::testing::{
    Manifest, PeerBuilder, bgp_advertisement, bgp_peer, l2_advertisement, object, pool,
};
pub(crate) use serde_json::{Value, json};

pub(crate) const NS: &str = crate::testing::METALLB_NS;

/// Any object of `kind` in `metallb-system` with this spec, for the specs no typed builder
/// writes (wrong types, missing fields, kinds without a builder).
pub(crate) fn obj(kind: Kind, name: &str, spec: Value) -> (ObjectRef, Value) {
    object(&kind.api_version(), kind.name(), Some(NS), name)
        .field("spec", spec)
        .pair()
}

/// The BGPPeer the peer tests start from, before their own spec fields.
pub(crate) fn peer(name: &str) -> PeerBuilder {
    bgp_peer(name, "192.0.2.1", 64500, 64501)
}

pub(crate) fn nad(name: &str, config: &str) -> (ObjectRef, Value) {
    obj(
        Kind::NetworkAttachmentDefinition,
        name,
        json!({ "config": config }),
    )
}

pub(crate) fn errors(problems: &[Problem]) -> Vec<String> {
    problems
        .iter()
        .filter(|p| p.is_error())
        .map(|p| p.to_string())
        .collect()
}

/// Exactly one problem of this severity on `object` at `field` contains `reason`.
#[track_caller]
pub(crate) fn assert_one(
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
pub(crate) fn assert_error(problems: &[Problem], object: &str, field: &str, reason: &str) {
    assert_one(problems, Severity::Error, object, field, reason);
}

#[track_caller]
pub(crate) fn assert_only_error(
    objects: &[(ObjectRef, Value)],
    object: &str,
    field: &str,
    reason: &str,
) {
    let problems = validate_objects(objects);
    assert_error(&problems, object, field, reason);
    assert_eq!(errors(&problems).len(), 1, "{problems:#?}");
}

#[track_caller]
pub(crate) fn assert_clean(objects: &[(ObjectRef, Value)]) {
    let problems = validate_objects(objects);
    assert!(problems.is_empty(), "{problems:#?}");
}

pub(crate) const POOL_A: &str = "IPAddressPool/metallb-system/pool-a";
pub(crate) const PEER: &str = "BGPPeer/metallb-system/p";
pub(crate) const ADV: &str = "BGPAdvertisement/metallb-system/adv";
