//! The resource model: the custom resources of MetalLB and Multus, field for field as
//! upstream defines them so existing manifests load unchanged, and the core objects we read.

pub mod metallb;
pub mod nad;
pub mod names;
pub mod object;

pub use metallb::*;
pub use nad::*;
pub use object::{Kind, ObjectKey, ObjectRef};

/// Core Kubernetes objects the suite reads, re-exported so components name one crate.
pub mod core {
    pub use k8s_openapi::api::core::v1::{
        Event as CoreEvent, Namespace, Node, Pod, Secret, Service,
    };
    pub use k8s_openapi::api::discovery::v1::EndpointSlice;
    pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
}

/// Brings a raw object into the shape our typed model decodes: upstream declares `spec` as
/// optional (`omitempty`) on every kind but IPAddressPool, and MetalLB's own docs show an
/// L2Advertisement with no spec at all (announce every pool), while kube-derive makes `spec`
/// a required field. A missing or null `spec` becomes `{}` for those kinds.
pub fn normalize(kind: Kind, value: &serde_json::Value) -> std::borrow::Cow<'_, serde_json::Value> {
    let spec_optional = matches!(
        kind,
        Kind::L2Advertisement
            | Kind::BGPAdvertisement
            | Kind::Community
            | Kind::BGPPeer
            | Kind::ServiceL2Status
            | Kind::ServiceBGPStatus
            | Kind::NetworkAttachmentDefinition
    );
    match value.as_object() {
        Some(obj) if spec_optional && obj.get("spec").is_none_or(|s| s.is_null()) => {
            let mut obj = obj.clone();
            obj.insert("spec".into(), serde_json::json!({}));
            std::borrow::Cow::Owned(serde_json::Value::Object(obj))
        }
        _ => std::borrow::Cow::Borrowed(value),
    }
}

/// Whether upstream requires `spec` on this kind (only IPAddressPool does).
pub fn spec_required(kind: crate::state::Kind) -> bool {
    normalize(kind, &serde_json::json!({}))
        .get("spec")
        .is_none()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Core, Delta, Kind, ObjectRef};

    #[test]
    fn spec_less_objects_decode_where_upstream_allows_them() {
        assert!(spec_required(Kind::IPAddressPool));
        assert!(!spec_required(Kind::L2Advertisement));
        let core = Core::new([Kind::L2Advertisement, Kind::IPAddressPool]);
        let l2 = ObjectRef::new(Kind::L2Advertisement, Some("metallb-system"), "all");
        let pool = ObjectRef::new(Kind::IPAddressPool, Some("metallb-system"), "p");
        let meta = serde_json::json!({"name": "x", "namespace": "metallb-system"});
        core.apply([
            Delta::Apply(
                l2.clone(),
                serde_json::json!({"apiVersion": "metallb.io/v1beta1", "kind": "L2Advertisement", "metadata": meta}),
            ),
            Delta::Apply(
                pool.clone(),
                serde_json::json!({"apiVersion": "metallb.io/v1beta1", "kind": "IPAddressPool", "metadata": meta}),
            ),
        ]);
        let snap = core.snapshot();
        assert!(snap.l2_advertisements.contains_key(&l2.key()));
        assert_eq!(
            snap.l2_advertisements[&l2.key()].spec,
            L2AdvertisementSpec::default()
        );
        // IPAddressPool requires its spec, as upstream.
        assert!(snap.invalid.contains_key(&pool));
    }
}
