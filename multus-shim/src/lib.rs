//! multus-shim: a Multus-compatible CNI meta-plugin.
//!
//! - [`cni`]: the CNI protocol (environment, errors, versions, results and their conversion,
//!   running a plugin binary, libcni-style result caches). Knows nothing of Multus.
//! - [`multus`]: Multus's semantics as pure functions: its configuration, the networks
//!   annotation, resolving NetworkAttachmentDefinitions into the ordered delegate list, and
//!   the network-status layout.
//! - [`plugin`]: ADD, DEL, CHECK, GC, STATUS and VERSION of the meta-plugin, on both.
//! - [`daemon`]: the per-node daemon of thick mode, serving [`plugin::handle`] on a unix socket.

#![forbid(unsafe_code)]

pub mod cni;
pub mod daemon;
pub mod multus;
pub mod plugin;
