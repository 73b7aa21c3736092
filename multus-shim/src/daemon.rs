//! The per-node daemon of thick mode: serves [`crate::plugin::handle`] on a unix socket.
