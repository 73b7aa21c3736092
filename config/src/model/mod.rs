//! The resource model: the custom resources of MetalLB and Multus, field for field as
//! upstream defines them so existing manifests load unchanged, and the core objects we read.

pub mod metallb;
pub mod nad;

pub use metallb::*;
pub use nad::*;

/// Core Kubernetes objects the suite reads, re-exported so components name one crate.
pub mod core {
    pub use k8s_openapi::api::core::v1::{
        Event as CoreEvent, Namespace, Node, Pod, Secret, Service,
    };
    pub use k8s_openapi::api::discovery::v1::EndpointSlice;
    pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
}
