//! A BGP-4 speaker engine (RFC 4271) shared by the speaker (MetalLB BGP mode) and the router
//! (kube-router pod routing): the typed wire format, a pure session state machine and the
//! tokio edge that drives it over TCP.
//!
//! - [`wire`]: messages with `parse`/`emit` that round-trip; every malformed input maps to the
//!   NOTIFICATION code/subcode RFC 4271 §6 prescribes.
//! - [`fsm`]: the RFC 4271 §8 state machine as a pure function of events to actions.
//! - [`peer`]: a peer's session parameters, built from the validated BGPPeer.
//! - [`rib`]: pure route bookkeeping: what to send, what the peer sent, stale routes of a
//!   restarting peer (graceful restart helper).
//! - [`session`]: sockets (source address, TTL, TCP MD5, a passive listener shared by a
//!   node's sessions), framing, timers, route diffing.

pub mod fsm;
pub mod peer;
pub mod rib;
#[cfg(feature = "io")]
pub mod session;
pub mod wire;

pub use fsm::{DynamicAs, Fsm, FsmConfig, Negotiated, State};
pub use peer::{Password, PeerConfig};
pub use rib::{ReceivedRoute, RouteAttrs};
#[cfg(feature = "io")]
pub use session::{Listener, Session, SessionHandle, SessionStatus};
pub use wire::{LargeCommunity, Message, WireContext, WireError};
