//! Multus's semantics, as pure functions: no process, file or network access here except
//! where a function says it reads a file.

pub mod config;
pub mod generate;
pub mod networks;
pub mod plan;
pub mod status;
