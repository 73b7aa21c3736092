//! The eBPF service proxy (`--run-service-proxy`): a kube-proxy replacement whose per-packet
//! and per-connection cost does not grow with the number of Services. Laid out by concern.
//!
//! Pure parts (no I/O, tested without BPF):
//!
//! - [`abi`]: the map layouts of `router/bpf/proxy.h` as typed values with byte codecs.
//! - [`state`]: the control-plane maps' contents ([`state::MapState`]) and ordered diffs.
//! - [`model`]: Services, EndpointSlices and the node -> the desired map contents, with
//!   kube-proxy's semantics (ClusterIP, NodePort, LoadBalancer, externalIPs, traffic
//!   policies, affinity, terminating endpoints, source ranges, service-proxy-name).
//! - [`ids`]: frontend (rev NAT) and backend ids, stable across changes and restarts.
//! - [`maglev`]: Maglev lookup tables (same backend from every node for outside traffic).
//! - [`explain`]: the text of `explain service` and `dump`.
//!
//! Edges:
//!
//! - [`dataplane`]: the boundary the daemon programs through (a trait; an in-memory
//!   recorder for tests).
//! - [`loader`]: the BPF objects built by `build.rs`, loaded with aya, maps pinned under the
//!   bpffs directory and reopened on restart; implements [`dataplane::Dataplane`].
//! - [`attach`]: socket-LB on the cgroup v2 root, TCX (clsact before 6.6) on the node's
//!   interfaces, found by watching links.
//! - [`nft`]: removal of the nftables masquerade table older versions installed.
//! - [`daemon`]: cluster state -> model -> diff -> data path; healthCheckNodePort servers
//!   ([`health`]); [`metrics`].
//! - [`options`]: the proxy's flags.

pub mod abi;
pub mod attach;
pub mod daemon;
pub mod dataplane;
pub mod explain;
pub mod health;
pub mod ids;
pub mod loader;
pub mod maglev;
pub mod metrics;
pub mod model;
pub mod nft;
pub mod options;
pub mod state;
