//! The service proxy's Prometheus metrics: kube-proxy's sync metrics under its own names
//! (`kubeproxy_sync_proxy_rules_duration_seconds`, `..._last_timestamp_seconds`,
//! `kubeproxy_network_programming_duration_seconds`), so dashboards made for kube-proxy keep
//! working, and `metalnet_proxy_*` for what only a BPF data path has (map fill levels, data
//! path events).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::abi;
use super::dataplane::Fill;

/// A map is "nearly full" above this share of its capacity (a warning, before inserts fail
/// or the LRU evicts live connections).
pub const NEARLY_FULL: f64 = 0.9;

/// One BPF map, by its pinned name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct MapLabel {
    pub map: String,
}

/// One data path event (`abi::COUNTERS`' names).
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct EventLabel {
    pub event: String,
}

/// The proxy's metrics; clones share the series.
#[derive(Clone)]
pub struct Metrics {
    /// One pass from cluster state to the maps (seconds).
    pub sync_duration: Histogram,
    /// Unix time of the last pass that programmed the maps.
    pub sync_last_timestamp: Gauge<f64, AtomicU64>,
    /// From an EndpointSlice change (its `endpoints.kubernetes.io/last-change-trigger-time`)
    /// to the maps holding it (seconds).
    pub network_programming: Histogram,
    /// Frontends (`mn_svc` entries) and backends (`mn_backend` entries) programmed.
    pub frontends: Gauge,
    pub backends: Gauge,
    pub map_entries: Family<MapLabel, Gauge>,
    pub map_capacity: Family<MapLabel, Gauge>,
    /// 1 while a map is over 90% full.
    pub map_nearly_full: Family<MapLabel, Gauge>,
    pub datapath: Family<EventLabel, Counter>,
    /// Map writes that failed (the pass is retried).
    pub sync_errors: Counter,
    /// The last value of each kernel counter, to turn absolute values into increments.
    last_counters: Arc<Mutex<Vec<u64>>>,
    /// Maps over the threshold at the last look, so the warning is logged once per crossing.
    full: Arc<Mutex<BTreeSet<String>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            // kube-proxy's buckets: 1 ms doubling up to ~16 s.
            sync_duration: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            sync_last_timestamp: Gauge::default(),
            network_programming: Histogram::new(exponential_buckets(0.001, 2.0, 20)),
            frontends: Gauge::default(),
            backends: Gauge::default(),
            map_entries: Family::default(),
            map_capacity: Family::default(),
            map_nearly_full: Family::default(),
            datapath: Family::default(),
            sync_errors: Counter::default(),
            last_counters: Arc::default(),
            full: Arc::default(),
        }
    }
}

impl Metrics {
    pub fn register(&self, reg: &mut Registry) {
        reg.register(
            "kubeproxy_sync_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds",
            self.sync_duration.clone(),
        );
        reg.register(
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
            "The last time proxy rules were successfully synced",
            self.sync_last_timestamp.clone(),
        );
        reg.register(
            "kubeproxy_network_programming_duration_seconds",
            "In Cluster Network Programming Latency in seconds",
            self.network_programming.clone(),
        );
        reg.register(
            "metalnet_proxy_frontends",
            "Service frontends (address, port, protocol, scope) in the data path",
            self.frontends.clone(),
        );
        reg.register(
            "metalnet_proxy_backends",
            "Backends (address, port, protocol) in the data path",
            self.backends.clone(),
        );
        reg.register(
            "metalnet_proxy_map_entries",
            "Entries of a BPF map",
            self.map_entries.clone(),
        );
        reg.register(
            "metalnet_proxy_map_capacity",
            "Capacity (max_entries) of a BPF map",
            self.map_capacity.clone(),
        );
        reg.register(
            "metalnet_proxy_map_nearly_full",
            "1 while a BPF map is over 90% full",
            self.map_nearly_full.clone(),
        );
        reg.register(
            "metalnet_proxy_datapath",
            "Data path events (new connections balanced, socket-LB translations, rejects, drops, conntrack full, affinity hits, replies translated, masquerade without a free port or a route)",
            self.datapath.clone(),
        );
        reg.register(
            "metalnet_proxy_sync_errors",
            "Passes whose map writes failed",
            self.sync_errors.clone(),
        );
    }

    /// The entries and capacity of each map; returns the maps that crossed the threshold
    /// since the last call (to log once), and sets `map_nearly_full`.
    pub fn observe_fill(&self, fill: &Fill) -> Vec<(String, u64, u64)> {
        let mut full = self.full.lock().unwrap_or_else(|e| e.into_inner());
        let mut crossed = Vec::new();
        let mut now = BTreeSet::new();
        for (map, entries, capacity) in &fill.maps {
            let label = MapLabel {
                map: map.to_string(),
            };
            self.map_entries
                .get_or_create(&label)
                .set(i64::try_from(*entries).unwrap_or(i64::MAX));
            self.map_capacity
                .get_or_create(&label)
                .set(i64::try_from(*capacity).unwrap_or(i64::MAX));
            let over = nearly_full(*entries, *capacity);
            self.map_nearly_full
                .get_or_create(&label)
                .set(i64::from(over));
            if over {
                now.insert(map.to_string());
                if !full.contains(*map) {
                    crossed.push((map.to_string(), *entries, *capacity));
                }
            }
        }
        *full = now;
        crossed
    }

    /// Adds the increments of the kernel's counters (absolute values, by `abi::COUNTERS`
    /// index) since the last call. A counter that went down (maps recreated) counts from 0.
    pub fn observe_counters(&self, values: &[u64]) {
        let mut last = self.last_counters.lock().unwrap_or_else(|e| e.into_inner());
        last.resize(values.len(), 0);
        for (index, name) in abi::COUNTERS {
            let Some(v) = values.get(index as usize).copied() else {
                continue;
            };
            let before = last[index as usize];
            let delta = if v >= before { v - before } else { v };
            self.datapath
                .get_or_create(&EventLabel {
                    event: name.to_string(),
                })
                .inc_by(delta);
            last[index as usize] = v;
        }
    }

    /// Frontends and backends programmed (from the map state written).
    pub fn observe_state(&self, state: &super::state::MapState) {
        self.frontends.set(state.svc.len() as i64);
        self.backends.set(state.backend.len() as i64);
        let sizes: BTreeMap<&str, usize> = [
            (abi::names::SVC, state.svc.len()),
            (abi::names::SLOT, state.slot.len()),
            (abi::names::BACKEND, state.backend.len()),
            (abi::names::REV_NAT, state.rev_nat.len()),
            (abi::names::AFFINITY_MATCH, state.affinity_match.len()),
            (abi::names::SRC_RANGE, state.src_range.len()),
        ]
        .into_iter()
        .collect();
        for (map, n) in sizes {
            self.map_entries
                .get_or_create(&MapLabel {
                    map: map.to_string(),
                })
                .set(n as i64);
        }
    }
}

/// Over [`NEARLY_FULL`] of the capacity (a map of capacity 0 is never full).
pub fn nearly_full(entries: u64, capacity: u64) -> bool {
    capacity > 0 && entries as f64 > capacity as f64 * NEARLY_FULL
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(reg: &Registry) -> String {
        let mut t = String::new();
        prometheus_client::encoding::text::encode(&mut t, reg).unwrap();
        t
    }

    #[test]
    fn kube_proxy_names_and_ours() {
        let m = Metrics::default();
        let mut reg = Registry::default();
        m.register(&mut reg);
        m.sync_duration.observe(0.002);
        m.sync_last_timestamp.set(1.7e9);
        m.frontends.set(3);
        let t = text(&reg);
        assert!(
            t.contains("kubeproxy_sync_proxy_rules_duration_seconds_bucket"),
            "{t}"
        );
        assert!(
            t.contains("kubeproxy_sync_proxy_rules_last_timestamp_seconds 1700000000"),
            "{t}"
        );
        assert!(
            t.contains("kubeproxy_network_programming_duration_seconds_count 0"),
            "{t}"
        );
        assert!(t.contains("metalnet_proxy_frontends 3"), "{t}");
    }

    #[test]
    fn fill_warns_once_per_crossing() {
        let m = Metrics::default();
        let mut reg = Registry::default();
        m.register(&mut reg);
        let fill = |ct: u64| Fill {
            maps: vec![("mn_ct", ct, 1000), ("mn_affinity", 0, 0)],
        };
        assert!(m.observe_fill(&fill(900)).is_empty(), "90% is not over");
        assert_eq!(
            m.observe_fill(&fill(901)),
            vec![("mn_ct".to_string(), 901, 1000)]
        );
        assert!(
            m.observe_fill(&fill(950)).is_empty(),
            "still full: no new warning"
        );
        let t = text(&reg);
        assert!(
            t.contains(r#"metalnet_proxy_map_nearly_full{map="mn_ct"} 1"#),
            "{t}"
        );
        assert!(
            t.contains(r#"metalnet_proxy_map_entries{map="mn_ct"} 950"#),
            "{t}"
        );
        assert!(
            t.contains(r#"metalnet_proxy_map_capacity{map="mn_ct"} 1000"#),
            "{t}"
        );
        assert!(m.observe_fill(&fill(10)).is_empty());
        assert!(text(&reg).contains(r#"metalnet_proxy_map_nearly_full{map="mn_ct"} 0"#));
        assert_eq!(
            m.observe_fill(&fill(999)).len(),
            1,
            "a new crossing warns again"
        );
    }

    #[test]
    fn counters_become_increments() {
        let m = Metrics::default();
        let mut reg = Registry::default();
        m.register(&mut reg);
        let mut v = vec![0u64; abi::COUNTERS_LEN as usize];
        v[0] = 5;
        m.observe_counters(&v);
        v[0] = 8;
        v[2] = 1;
        m.observe_counters(&v);
        let t = text(&reg);
        assert!(
            t.contains(r#"metalnet_proxy_datapath_total{event="lb_new"} 8"#),
            "{t}"
        );
        assert!(
            t.contains(r#"metalnet_proxy_datapath_total{event="reject"} 1"#),
            "{t}"
        );
        // Maps recreated: the counter restarts at 2, which counts as 2 more.
        v[0] = 2;
        m.observe_counters(&v);
        assert!(text(&reg).contains(r#"metalnet_proxy_datapath_total{event="lb_new"} 10"#));
    }

    #[test]
    fn threshold() {
        assert!(!nearly_full(0, 0));
        assert!(!nearly_full(90, 100));
        assert!(nearly_full(91, 100));
    }
}
