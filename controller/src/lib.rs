//! Library side of the metalnet controller: the allocator, the reconciler that applies it to
//! the cluster state, and the loop that runs it.

#![forbid(unsafe_code)]

pub mod allocator;
pub mod explain;
pub mod metrics;
pub mod pools;
pub mod reconcile;
pub mod run;
