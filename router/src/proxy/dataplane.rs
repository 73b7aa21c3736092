//! The boundary between the control plane and the kernel: what the daemon asks of the loaded
//! BPF data path. [`crate::proxy::loader`] implements it over aya; [`Recorder`] implements it
//! in memory for tests without BPF.

use std::collections::BTreeSet;
use std::net::IpAddr;

use super::abi;
use super::state::{MapDiff, MapState, apply};

/// A data-path failure, naming the map or attachment.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {reason}")]
    Other { what: String, reason: String },
}

/// Fill levels of the per-connection maps, for metrics and the "nearly full" warning.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fill {
    /// (map name, entries, max_entries)
    pub maps: Vec<(&'static str, u64, u64)>,
}

pub trait Dataplane: Send {
    /// Writes a diff in [`MapDiff::APPLY_ORDER`].
    fn apply(&mut self, diff: &MapDiff) -> Result<(), DataplaneError>;
    /// The control-plane maps as the kernel holds them now (after a restart: what the last
    /// run left, so ids are kept).
    fn read(&self) -> Result<MapState, DataplaneError>;
    /// This node's addresses, for NodePort (`mn_node_addr`).
    fn set_node_addrs(&mut self, addrs: &BTreeSet<IpAddr>) -> Result<(), DataplaneError>;
    /// In-cluster source ranges (`mn_cluster_cidr`, from --cluster-cidr).
    fn set_cluster_cidrs(&mut self, cidrs: &[ipnet::IpNet]) -> Result<(), DataplaneError>;
    /// `mn_config[0]`.
    fn set_config(&mut self, cfg: &abi::Config) -> Result<(), DataplaneError>;
    /// The per-CPU counters summed, by `abi::COUNTERS` index.
    fn counters(&self) -> Result<Vec<u64>, DataplaneError>;
    /// Entries and capacity of the per-connection maps (may walk them: call it seldom).
    fn fill(&self) -> Result<Fill, DataplaneError>;
    /// Destroys the sockets connected to these backends (addr, port, proto), in every network
    /// namespace the proxy can reach; returns how many.
    fn destroy_sockets(&mut self, backends: &[abi::Backend]) -> Result<usize, DataplaneError>;
}

/// An in-memory data path: the maps as a [`MapState`], for daemon tests without BPF.
#[derive(Debug, Default)]
pub struct Recorder {
    pub state: MapState,
    pub node_addrs: BTreeSet<IpAddr>,
    pub cluster_cidrs: Vec<ipnet::IpNet>,
    pub config: abi::Config,
    pub diffs: Vec<MapDiff>,
    pub destroyed: Vec<abi::Backend>,
}

impl Dataplane for Recorder {
    fn apply(&mut self, diff: &MapDiff) -> Result<(), DataplaneError> {
        apply(&mut self.state, diff);
        self.diffs.push(diff.clone());
        Ok(())
    }
    fn read(&self) -> Result<MapState, DataplaneError> {
        Ok(self.state.clone())
    }
    fn set_node_addrs(&mut self, addrs: &BTreeSet<IpAddr>) -> Result<(), DataplaneError> {
        self.node_addrs = addrs.clone();
        Ok(())
    }
    fn set_cluster_cidrs(&mut self, cidrs: &[ipnet::IpNet]) -> Result<(), DataplaneError> {
        self.cluster_cidrs = cidrs.to_vec();
        Ok(())
    }
    fn set_config(&mut self, cfg: &abi::Config) -> Result<(), DataplaneError> {
        self.config = *cfg;
        Ok(())
    }
    fn counters(&self) -> Result<Vec<u64>, DataplaneError> {
        Ok(vec![0; abi::COUNTERS_LEN as usize])
    }
    fn fill(&self) -> Result<Fill, DataplaneError> {
        Ok(Fill::default())
    }
    fn destroy_sockets(&mut self, backends: &[abi::Backend]) -> Result<usize, DataplaneError> {
        self.destroyed.extend_from_slice(backends);
        Ok(0)
    }
}
