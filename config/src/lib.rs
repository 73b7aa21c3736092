//! metalnet's common crate: the resource model, validation, cluster-state sources, and the
//! machinery more than one daemon needs, in modules by concern.

//!
//! Layers, from the bottom: [`model`] (the resources and their vocabulary), [`addr`],
//! [`labels`], [`validate`] and [`manifest`] (reading and checking configuration), [`state`]
//! (the snapshot; with `io` also the live state and its backends), [`bgp`] (wire, FSM, RIB;
//! with `io` also sessions). Only with the `io` feature (on by default): [`sys`] (every
//! system call and all `unsafe`), [`netlink`] and [`daemon`] (flags, logging, metrics,
//! shutdown, the reconcile driver). Without `io` nothing here depends on tokio, kube,
//! rtnetlink or libc, which `cargo tree -p metalnet --no-default-features` shows.

pub mod addr;
pub mod bgp;
pub mod crd;
#[cfg(feature = "io")]
pub mod daemon;
pub mod labels;
pub mod manifest;
pub mod model;
#[cfg(feature = "io")]
pub mod netlink;
pub mod state;
#[cfg(feature = "io")]
pub mod sys;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod validate;
pub mod wire;
