//! The metalnet lab: test machinery shared by the end-to-end tests.

pub mod apiserver;
pub mod backends;
pub mod bins;
pub mod kubeproxy;
pub mod lab;

pub use lab::cni;
pub use lab::{Host, Lab, LabError, Process, Switch};
