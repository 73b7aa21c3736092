//! metalnet-speaker: makes the LoadBalancer addresses the controller assigned reachable,
//! laid out by mode.
//!
//! - [`layer2`] (MetalLB compatible): [`layer2::election`] decides, purely, which node
//!   announces each address; [`layer2::Layer2`] answers ARP and NDP (wire formats in
//!   [`metalnet::wire`]) on the node's interfaces for the addresses this node won;
//!   [`layer2::explain`] tells why a node does or does not announce a Service.
//! - [`bgp`]: planning, one session per BGPPeer, ServiceBGPStatus, `metallb_bgp_*` metrics,
//!   explain.
//! - Shared by both: [`eligibility`] (node facts and exclusions), [`members`] (which speakers
//!   are alive: SWIM gossip through `foca`, or the Node Ready condition), [`status`]
//!   (ServiceL2Status objects and Events), [`metrics`], [`ratelimit`] (repeated warnings),
//!   [`explain`] (the `explain` command over both modes).

#![forbid(unsafe_code)]

pub mod bgp;
pub mod daemon;
pub mod eligibility;
pub mod explain;
pub mod layer2;
pub mod members;
pub mod metrics;
pub mod ratelimit;
pub mod status;
