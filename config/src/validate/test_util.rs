//! Builders and assertions shared by the validation tests.

pub(crate) use super::{Problem, Severity, validate_objects};
pub(crate) use crate::state::{Kind, ObjectRef};
pub(crate) use serde_json::{Value, json};

pub(crate) const NS: &str = "metallb-system";

pub(crate) fn obj(kind: Kind, name: &str, spec: Value) -> (ObjectRef, Value) {
    let object = ObjectRef::new(kind, Some(NS), name);
    let value = json!({
        "apiVersion": kind.api_version(),
        "kind": kind.name(),
        "metadata": {"name": name, "namespace": NS},
        "spec": spec,
    });
    (object, value)
}

pub(crate) fn pool(name: &str, addresses: &[&str]) -> (ObjectRef, Value) {
    obj(Kind::IPAddressPool, name, json!({ "addresses": addresses }))
}

pub(crate) fn peer(name: &str, extra: Value) -> (ObjectRef, Value) {
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

pub(crate) fn bgp_adv(name: &str, spec: Value) -> (ObjectRef, Value) {
    obj(Kind::BGPAdvertisement, name, spec)
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
