//! k8s.cni.cncf.io/v1 NetworkAttachmentDefinition (Multus), field for field.

use kube_derive::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A secondary network: `spec.config` is a CNI configuration (JSON, as a string). When it is
/// empty, Multus reads the file named like the object from its CNI configuration directory.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    crates(kube_core = "::kube_core"),
    group = "k8s.cni.cncf.io",
    version = "v1",
    kind = "NetworkAttachmentDefinition",
    plural = "network-attachment-definitions",
    singular = "network-attachment-definition",
    shortname = "net-attach-def",
    namespaced
)]
pub struct NetworkAttachmentDefinitionSpec {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub config: String,
}
