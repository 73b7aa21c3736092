//! metalnet-vxlan: the Flannel-compatible VXLAN overlay agent, as a library so the
//! benchmark and the tests drive the same code as the binary.

#![forbid(unsafe_code)]

pub mod agent;
pub mod annotations;
pub mod kernel;
pub mod masq;
pub mod netconf;
pub mod plan;
pub mod subnet;
pub mod subnet_env;
