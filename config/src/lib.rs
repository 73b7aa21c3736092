//! metalnet's common crate: the resource model, validation, cluster-state sources, and the
//! machinery more than one daemon needs, in modules by concern.

pub mod addr;
pub mod bgp;
pub mod cli;
pub mod crd;
pub mod labels;
pub mod manifest;
pub mod model;
pub mod netlink;
pub mod state;
pub mod sys;
pub mod telemetry;
pub mod validate;
pub mod wire;
