//! The CNI protocol (CNI spec 1.1.0 and the versions before it), as a runtime and a plugin
//! see it. Nothing here knows of Multus.

use std::collections::BTreeMap;

pub mod cache;
pub mod env;
mod error;
pub mod exec;
pub mod result;
pub mod version;

pub use env::{CniEnv, Command};
pub use error::CniError;
pub use result::CniResult;

/// One invocation of a CNI plugin as the runtime made it: the `CNI_*` environment (and any
/// other variables the plugin reads) and the configuration on stdin.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    pub env: BTreeMap<String, String>,
    pub stdin: Vec<u8>,
}
