//! The metalnet lab: test machinery shared by the end-to-end tests.

pub mod apiserver;
