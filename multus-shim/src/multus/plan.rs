//! The ordered list of delegates one pod's ADD runs, as Multus builds it.

use std::net::IpAddr;
use std::path::Path;

use metalnet::model::NetworkAttachmentDefinition;
use metalnet::model::core::Pod;

use super::config::MultusConf;

/// One delegate of a pod's attachment: what to run, on which interface, with which arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct Delegate {
    /// Position in the full list (0: the cluster network, then `defaultNetworks`, then the
    /// networks the pod's annotation asks for): `net<index>` is its default interface name.
    pub index: usize,
    /// Whether this is the master (cluster network) delegate, whose result is the ADD's.
    pub master: bool,
    /// The name network-status shows: the configuration's `name` for the master,
    /// `namespace/name` of the NetworkAttachmentDefinition for the others.
    pub status_name: String,
    /// The NetworkAttachmentDefinition it comes from (namespace, name), if any.
    pub nad: Option<(String, String)>,
    /// The interface in the pod: requested, `CNI_IFNAME` for the master, else `net<index>`.
    pub ifname: String,
    /// The delegate's configuration (one plugin, or a conflist with `plugins`), with `name`
    /// and `cniVersion` filled in and `cni-args` merged into `args.cni`.
    pub conf: serde_json::Value,
    /// The capability arguments this delegate declares and gets (`runtimeConfig`).
    pub runtime_config: serde_json::Map<String, serde_json::Value>,
    /// `CNI_ARGS` for this delegate, in order.
    pub cni_args: Vec<(String, String)>,
    /// Gateways asked for by `default-route` (empty: none asked).
    pub default_route: Vec<IpAddr>,
}

/// What the runtime said about the attachment being made.
#[derive(Debug, Clone, Default)]
pub struct Attachment {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_IFNAME`: the master delegate's interface.
    pub ifname: String,
    /// `CNI_ARGS` as the runtime passed them, in order (`K8S_POD_NAMESPACE`, `K8S_POD_NAME`,
    /// `K8S_POD_INFRA_CONTAINER_ID`, `K8S_POD_UID`, ...).
    pub cni_args: Vec<(String, String)>,
}

/// Where NetworkAttachmentDefinitions come from (the cluster state's snapshot, a cache).
pub trait Nads {
    fn nad(&self, namespace: &str, name: &str) -> Option<NetworkAttachmentDefinition>;
}

/// Why no delegate list can be made; each names the network and the field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlanError {
    /// Not yet implemented by this build.
    #[error("{0}")]
    Other(String),
}

impl From<PlanError> for crate::cni::CniError {
    fn from(e: PlanError) -> Self {
        crate::cni::CniError::new(crate::cni::CniError::INVALID_CONFIG, e.to_string())
    }
}

/// The delegates of `pod`'s attachment in the order ADD runs them: the cluster network (or
/// the pod's `v1.multus-cni.io/default-network`), `defaultNetworks` (not for pods in
/// `systemNamespaces`), then the networks of `k8s.v1.cni.cncf.io/networks`. `pod` is `None`
/// when there is no cluster: only the configuration's own `delegates`. Reads configuration
/// files in `confDir` (and `clusterNetwork` paths) and nothing else.
pub fn plan(
    conf: &MultusConf,
    pod: Option<&Pod>,
    attachment: &Attachment,
    nads: &dyn Nads,
) -> Result<Vec<Delegate>, PlanError> {
    let _ = (conf, pod, attachment, nads, Path::new(""));
    Err(PlanError::Other("not implemented yet".into()))
}
