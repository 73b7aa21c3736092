//! The CustomResourceDefinitions of every resource the suite defines, generated from the
//! Rust model, and their YAML form checked in under `deploy/crds/`.
//!
//! Regenerate after changing the model:
//!     cargo run -p metalnet --example gen-crds
//! (`config/tests/crds.rs` fails while the checked-in files are stale.)

use std::path::{Path, PathBuf};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, CustomResourceSubresourceStatus, CustomResourceSubresources,
    JSONSchemaProps,
};
use kube_core::CustomResourceExt;

use crate::model::{
    BGPAdvertisement, BGPPeer, Community, IPAddressPool, L2Advertisement,
    NetworkAttachmentDefinition, ServiceBGPStatus, ServiceL2Status,
};
use crate::state::Kind;

/// The command that regenerates the checked-in CRDs.
pub const REGENERATE_COMMAND: &str = "cargo run -p metalnet --example gen-crds";

/// Every CRD of the suite: the metallb.io kinds at the versions upstream serves them
/// (BGPPeer at v1beta2, also served at deprecated v1beta1; the rest at v1beta1) and k8s.cni.cncf.io NetworkAttachmentDefinition.
pub fn crds() -> Vec<CustomResourceDefinition> {
    let mut crds = vec![
        IPAddressPool::crd(),
        L2Advertisement::crd(),
        BGPAdvertisement::crd(),
        Community::crd(),
        BGPPeer::crd(),
        ServiceL2Status::crd(),
        ServiceBGPStatus::crd(),
        NetworkAttachmentDefinition::crd(),
    ];
    for crd in &mut crds {
        if crd.spec.group == "metallb.io" {
            ensure_status_subresource(crd);
        }
        let kind = Kind::from_manifest(&format!("{}/v1", crd.spec.group), &crd.spec.names.kind);
        if kind.is_some_and(|k| !crate::model::spec_required(k)) {
            make_spec_optional(crd);
        }
    }
    for crd in &mut crds {
        if crd.spec.names.kind == "BGPPeer" {
            serve_deprecated_v1beta1(crd);
        }
    }
    crds.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    crds
}

/// Upstream still serves BGPPeer at v1beta1 (deprecated; converted by a webhook). Its field
/// names are a subset of v1beta2's, so we serve it with the v1beta2 schema and no conversion
/// (the API server only rewrites `apiVersion`), and existing v1beta1 manifests apply.
fn serve_deprecated_v1beta1(crd: &mut CustomResourceDefinition) {
    let Some(current) = crd.spec.versions.first() else {
        return;
    };
    let mut old = current.clone();
    old.name = "v1beta1".to_string();
    old.storage = false;
    old.deprecated = Some(true);
    old.deprecation_warning =
        Some("metallb.io/v1beta1 BGPPeer is deprecated; use metallb.io/v1beta2".to_string());
    crd.spec.versions.insert(0, old);
}

/// Upstream declares a status subresource on every metallb.io kind, most with an empty
/// status. Our model carries no status type for those (nothing to read), so the
/// subresource and an empty `status` object schema are added here, as upstream has them.
fn ensure_status_subresource(crd: &mut CustomResourceDefinition) {
    for version in &mut crd.spec.versions {
        let subresources = version
            .subresources
            .get_or_insert_with(CustomResourceSubresources::default);
        if subresources.status.is_none() {
            subresources.status = Some(CustomResourceSubresourceStatus(serde_json::json!({})));
        }
        if let Some(props) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
            .and_then(|s| s.properties.as_mut())
        {
            props
                .entry("status".to_string())
                .or_insert(JSONSchemaProps {
                    type_: Some("object".to_string()),
                    ..Default::default()
                });
        }
    }
}

/// Upstream's `spec` is `omitempty` on most kinds: manifests without one must be accepted.
fn make_spec_optional(crd: &mut CustomResourceDefinition) {
    for version in &mut crd.spec.versions {
        if let Some(schema) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
            && let Some(required) = schema.required.as_mut()
        {
            required.retain(|r| r != "spec");
            if required.is_empty() {
                schema.required = None;
            }
        }
    }
}

/// `<plural>.<group>.yaml`, the file a CRD is written to.
pub fn file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}.yaml", crd.metadata.name.as_deref().unwrap_or("unnamed"))
}

/// The YAML text of a CRD as checked in.
pub fn to_yaml(crd: &CustomResourceDefinition) -> Result<String, serde_saphyr::SerializeError> {
    let body = serde_saphyr::to_string(crd)?;
    Ok(format!(
        "# Generated from the Rust model by `{REGENERATE_COMMAND}`; do not edit.\n{body}"
    ))
}

/// Every CRD file: (file name, YAML text).
pub fn files() -> Result<Vec<(String, String)>, serde_saphyr::SerializeError> {
    crds()
        .iter()
        .map(|crd| Ok((file_name(crd), to_yaml(crd)?)))
        .collect()
}

/// `deploy/crds/` of this workspace.
pub fn checked_in_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/crds")
}
