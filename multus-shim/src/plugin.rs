//! The meta-plugin's commands (ADD, DEL, CHECK, GC, STATUS, VERSION) on the CNI protocol
//! ([`crate::cni`]) and Multus's semantics ([`crate::multus`]). Used by the thin plugin (one
//! process per call) and by the thick daemon ([`crate::daemon`]) alike.

use crate::cni::{CniError, Request};

/// What a call runs against.
pub struct Context {
    /// Pods and NetworkAttachmentDefinitions, and where network-status and Events are
    /// written. `None`: no cluster is configured (only the configuration's own `delegates`).
    pub state: Option<metalnet::state::ClusterState>,
}

/// Runs one CNI call of the meta-plugin and returns what it prints on success (the result
/// in the configuration's `cniVersion`, or nothing for DEL/GC/STATUS).
pub async fn handle(ctx: &Context, req: Request) -> Result<Option<serde_json::Value>, CniError> {
    let _ = (ctx, req);
    Err(CniError::new(999, "not implemented yet"))
}
