//! The daemon's Prometheus metrics: Multus's `multus_server_request_total` (by command and
//! result), and the back-pressure figures of our own.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

fn new_histogram() -> Histogram {
    // 1 ms .. ~33 s: a delegate-free VERSION to a slow IPAM under load.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// Every metric of the daemon; clones share them.
#[derive(Clone)]
pub struct Metrics {
    requests: Family<Labels, Counter>,
    in_flight: Gauge,
    queued: Gauge,
    rejected: Family<Labels, Counter>,
    duration: Family<Labels, Histogram, fn() -> Histogram>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: Family::default(),
            in_flight: Gauge::default(),
            queued: Gauge::default(),
            rejected: Family::default(),
            duration: Family::new_with_constructor(new_histogram),
        }
    }
}

impl Metrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn new(registry: &mut Registry) -> Metrics {
        let m = Metrics::default();
        // prometheus-client appends `_total` to counters: Multus's name is
        // multus_server_request_total.
        registry.register(
            "multus_server_request",
            "CNI requests served by the daemon, by command and result (ok or the CNI error code)",
            m.requests.clone(),
        );
        registry.register(
            "multus_server_requests_in_flight",
            "CNI requests running delegates now",
            m.in_flight.clone(),
        );
        registry.register(
            "multus_server_requests_queued",
            "CNI requests waiting for a free slot (--max-concurrent)",
            m.queued.clone(),
        );
        registry.register(
            "multus_server_requests_rejected",
            "CNI requests refused with error 11, by reason (busy: queue full; not_ready: fail closed)",
            m.rejected.clone(),
        );
        registry.register(
            "multus_server_request_duration_seconds",
            "Time from receiving a CNI request to answering it, queueing included, by command",
            m.duration.clone(),
        );
        m
    }

    pub fn observe(&self, command: &str, result: &str, seconds: f64) {
        let command = command_label(command);
        self.requests
            .get_or_create(&vec![
                ("command".into(), command.into()),
                ("result".into(), result.into()),
            ])
            .inc();
        self.duration
            .get_or_create(&vec![("command".into(), command.into())])
            .observe(seconds);
    }

    pub fn rejected(&self, reason: &str) {
        self.rejected
            .get_or_create(&vec![("reason".into(), reason.into())])
            .inc();
    }

    pub fn set_load(&self, running: usize, queued: usize) {
        self.in_flight
            .set(i64::try_from(running).unwrap_or(i64::MAX));
        self.queued.set(i64::try_from(queued).unwrap_or(i64::MAX));
    }
}

/// The command as a label: one of the CNI commands, else `other`, so a client sending
/// arbitrary `CNI_COMMAND`s cannot grow the label set without bound.
fn command_label(command: &str) -> &'static str {
    match command {
        "ADD" => "ADD",
        "DEL" => "DEL",
        "CHECK" => "CHECK",
        "GC" => "GC",
        "STATUS" => "STATUS",
        "VERSION" => "VERSION",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exports_multus_name_and_bounded_labels() {
        let mut registry = Registry::default();
        let m = Metrics::new(&mut registry);
        m.observe("ADD", "ok", 0.01);
        m.observe("$(rm -rf)", "7", 0.01);
        m.rejected("busy");
        m.set_load(3, 4);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains(r#"multus_server_request_total{command="ADD",result="ok"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"command="other""#), "{text}");
        assert!(!text.contains("rm -rf"), "{text}");
        assert!(
            text.contains("multus_server_requests_in_flight 3"),
            "{text}"
        );
        assert!(text.contains("multus_server_requests_queued 4"), "{text}");
        assert!(
            text.contains(r#"multus_server_requests_rejected_total{reason="busy"} 1"#),
            "{text}"
        );
        assert!(
            text.contains("multus_server_request_duration_seconds_bucket"),
            "{text}"
        );
    }
}
