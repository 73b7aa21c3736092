//! Layer-2 wire formats: Ethernet II, ARP for IPv4 over Ethernet (RFC 826) and IPv6
//! neighbor discovery (RFC 4861), in smoltcp's style: a typed view over a buffer with named
//! field ranges (`Frame`/`Packet`), and a `Repr` whose `parse` and `emit` round-trip.
//!
//! Pure: no I/O, no tokio, libc or kube, so fuzzers and other targets can build it alone.

pub mod arp;
pub mod error;
pub mod ethernet;
pub mod fixtures;
pub mod mac;
pub mod ndp;
pub mod responder;

pub use error::L2Error;
pub use ethernet::{EtherType, EthernetRepr};
pub use mac::{Mac, MacParseError};

/// A range of bytes of a header.
type Field = std::ops::Range<usize>;
/// The bytes from an offset to the end.
type Rest = std::ops::RangeFrom<usize>;
