//! metalnet-router: kube-router's jobs on metalnet's parts.
//!
//! - [`routing`] (`--run-router`): BGP pod routing, kube-router compatible (flags, node
//!   annotations, route protocol 17), on the shared BGP engine ([`metalnet::bgp`]), with live
//!   reconfiguration.
//!
//! - [`proxy`] (`--run-service-proxy`): an eBPF kube-proxy replacement (socket-LB on the cgroup
//!   v2 root, per-packet load balancing on TCX), fed by a pure control plane.

#![forbid(unsafe_code)]

pub mod proxy;
pub mod routing;
