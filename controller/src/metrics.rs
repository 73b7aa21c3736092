//! The controller's Prometheus metrics: MetalLB's allocator gauges under MetalLB's names
//! (`internal/allocator/stats.go`, label `pool`) so existing dashboards keep working, the
//! configuration staleness gauge, and reconcile counters of our own.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::reconcile::Reconciler;

type Labels = Vec<(String, String)>;

fn pool_label(pool: &str) -> Labels {
    vec![("pool".to_string(), pool.to_string())]
}

/// Every metric the controller exports; cheap to clone (shared counters).
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    addresses_total: Family<Labels, Gauge>,
    ipv4_addresses_total: Family<Labels, Gauge>,
    ipv6_addresses_total: Family<Labels, Gauge>,
    addresses_in_use_total: Family<Labels, Gauge>,
    ipv4_addresses_in_use_total: Family<Labels, Gauge>,
    ipv6_addresses_in_use_total: Family<Labels, Gauge>,
    services_allocated_total: Family<Labels, Gauge>,
    config_stale: Gauge,
    metallb_config_stale: Gauge,
    services_pending: Gauge,
    /// Reconcile passes, by `pass` (`full` or `incremental`).
    reconciles: Family<Labels, Counter>,
    /// Status and annotation writes made, and failed.
    writes: Counter,
    write_errors: Counter,
    /// Pools exported last time, to drop the series of pools that are gone.
    pools: Arc<Mutex<BTreeSet<String>>>,
    /// The reconcile driver's own: passes, ops by result, objects waiting for a retry.
    pub driver: metalnet::daemon::DriverMetrics,
}

impl Metrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn new(registry: &mut Registry) -> Self {
        let m = Metrics::default();
        m.driver.register(registry);
        let gauges = [
            (
                "metallb_allocator_addresses_total",
                "Number of usable IP addresses, per pool",
                &m.addresses_total,
            ),
            (
                "metallb_allocator_ipv4_addresses_total",
                "Number of usable IPV4 addresses, per pool",
                &m.ipv4_addresses_total,
            ),
            (
                "metallb_allocator_ipv6_addresses_total",
                "Number of usable IPV6 addresses, per pool",
                &m.ipv6_addresses_total,
            ),
            (
                "metallb_allocator_addresses_in_use_total",
                "Number of IP addresses in use, per pool",
                &m.addresses_in_use_total,
            ),
            (
                "metallb_allocator_ipv4_addresses_in_use_total",
                "Number of IPV4 addresses in use, per pool",
                &m.ipv4_addresses_in_use_total,
            ),
            (
                "metallb_allocator_ipv6_addresses_in_use_total",
                "Number of IPV6 addresses in use, per pool",
                &m.ipv6_addresses_in_use_total,
            ),
            (
                "metallb_allocator_services_allocated_total",
                "Number of services allocated, per pool",
                &m.services_allocated_total,
            ),
        ];
        for (name, help, family) in gauges {
            registry.register(name, help, family.clone());
        }
        registry.register(
            "metalnet_controller_config_stale",
            "1 when some IPAddressPool is invalid and its last valid version is in use",
            m.config_stale.clone(),
        );
        registry.register(
            "metallb_k8s_client_config_stale_bool",
            "1 when the configuration in use is not the latest (MetalLB-compatible name)",
            m.metallb_config_stale.clone(),
        );
        registry.register(
            "metalnet_controller_services_pending",
            "LoadBalancer Services waiting for an address (allocation failed)",
            m.services_pending.clone(),
        );
        registry.register(
            "metalnet_controller_reconciles",
            "Reconcile passes, by pass (full or incremental)",
            m.reconciles.clone(),
        );
        registry.register(
            "metalnet_controller_writes",
            "Service status, annotation and event writes made",
            m.writes.clone(),
        );
        registry.register(
            "metalnet_controller_write_errors",
            "Writes that failed (retried)",
            m.write_errors.clone(),
        );
        m
    }

    /// Counts one reconcile pass.
    pub fn reconciled(&self, full: bool) {
        let pass = if full { "full" } else { "incremental" };
        self.reconciles
            .get_or_create(&vec![("pass".to_string(), pass.to_string())])
            .inc();
    }

    pub fn wrote(&self, ok: bool) {
        if ok {
            self.writes.inc();
        } else {
            self.write_errors.inc();
        }
    }

    /// Updates the gauges from the reconciler's current state.
    pub fn observe(&self, r: &Reconciler) {
        let alloc = r.allocator();
        let mut now = BTreeSet::new();
        for (pool, c) in alloc.all_counters() {
            let l = pool_label(pool);
            let as_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
            self.addresses_total
                .get_or_create(&l)
                .set(c.addresses_total());
            self.ipv4_addresses_total
                .get_or_create(&l)
                .set(c.ipv4_total_i64());
            self.ipv6_addresses_total
                .get_or_create(&l)
                .set(c.ipv6_total_i64());
            self.addresses_in_use_total
                .get_or_create(&l)
                .set(as_i64(c.addresses_in_use()));
            self.ipv4_addresses_in_use_total
                .get_or_create(&l)
                .set(as_i64(c.ipv4_addresses_in_use));
            self.ipv6_addresses_in_use_total
                .get_or_create(&l)
                .set(as_i64(c.ipv6_addresses_in_use));
            self.services_allocated_total
                .get_or_create(&l)
                .set(as_i64(c.services_allocated));
            now.insert(pool.to_string());
        }
        let mut known = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        for gone in known.difference(&now) {
            let l = pool_label(gone);
            for f in [
                &self.addresses_total,
                &self.ipv4_addresses_total,
                &self.ipv6_addresses_total,
                &self.addresses_in_use_total,
                &self.ipv4_addresses_in_use_total,
                &self.ipv6_addresses_in_use_total,
                &self.services_allocated_total,
            ] {
                f.remove(&l);
            }
        }
        *known = now;
        let stale = i64::from(!r.pool_config().stale().is_empty());
        self.config_stale.set(stale);
        self.metallb_config_stale.set(stale);
        self.services_pending
            .set(i64::try_from(alloc.pending_count()).unwrap_or(i64::MAX));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metallb_names_are_exported() {
        let mut registry = Registry::default();
        let m = Metrics::new(&mut registry);
        m.addresses_total.get_or_create(&pool_label("a")).set(4);
        m.reconciled(true);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("metallb_allocator_addresses_total{pool=\"a\"} 4"),
            "{text}"
        );
        assert!(text.contains("metalnet_controller_reconciles_total{pass=\"full\"} 1"));
        assert!(text.contains("metallb_k8s_client_config_stale_bool 0"));
    }
}
