//! metalnet-router: kube-router's jobs on metalnet's parts.
//!
//! - [`routing`] (`--run-router`): BGP pod routing, kube-router compatible (flags, node
//!   annotations, route protocol 17), on the shared BGP engine ([`metalnet::bgp`]), with live
//!   reconfiguration.
//!
//! The eBPF service proxy (`--run-service-proxy`) is not built yet.

#![forbid(unsafe_code)]

pub mod routing;
