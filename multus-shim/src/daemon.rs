//! The per-node daemon of thick mode: serves [`crate::plugin::handle`] on a unix socket.

/// The options of `multus-shim daemon`.
#[derive(clap::Args, Debug, Default, Clone)]
pub struct DaemonArgs {}
