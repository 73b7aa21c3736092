//! metalnet-speaker: makes the LoadBalancer addresses the controller assigned reachable.
//!
//! Layer 2 mode (MetalLB compatible): [`election`] decides, purely, which node announces
//! each address; [`members`] tells which speakers are alive (SWIM gossip through `foca`, or
//! the Node Ready condition); [`announce::Layer2`] answers ARP and NDP (wire formats in [`metalnet::wire`])
//! on the node's interfaces for the addresses this node won; [`status`] writes
//! ServiceL2Status objects and Events; [`explain`] tells why a node does or does not
//! announce a Service. BGP mode: [`bgp`] (planning, one session per BGPPeer,
//! ServiceBGPStatus, `metallb_bgp_*` metrics, explain).

#![forbid(unsafe_code)]

pub mod announce;
// BGP mode (issue 6).
pub mod bgp;
pub mod election;
pub mod explain;
pub mod members;
pub mod metrics;
pub mod ratelimit;
pub mod status;
