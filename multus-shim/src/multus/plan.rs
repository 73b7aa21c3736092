//! The ordered list of delegates one pod's ADD runs, as Multus builds it.

use std::net::IpAddr;

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
