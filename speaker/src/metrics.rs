//! The speaker's metrics, under MetalLB's names where MetalLB has one.
//!
//! prometheus-client writes counters in OpenMetrics form, so a counter registered as
//! `metallb_layer2_requests_received` is exposed as `metallb_layer2_requests_received_total`
//! (what Prometheus stores for MetalLB's counters when it scrapes OpenMetrics too).

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The gauge family `explain` reads back from a running speaker.
pub const MEMBER_METRIC: &str = "metalnet_speaker_member";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IpLabel {
    pub ip: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InterfaceLabel {
    pub interface: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabel {
    pub event: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabel {
    pub node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AnnouncedLabels {
    pub protocol: String,
    pub service: String,
    pub node: String,
    pub ip: String,
}

/// Every metric the speaker exposes.
#[derive(Default)]
pub struct Metrics {
    pub requests_received: Family<IpLabel, Counter>,
    pub responses_sent: Family<IpLabel, Counter>,
    pub gratuitous_sent: Family<IpLabel, Counter>,
    pub malformed_frames: Family<InterfaceLabel, Counter>,
    /// Received frames not acted on because they break a rule of their protocol, by reason.
    pub frames_dropped: Family<ReasonLabel, Counter>,
    /// Warnings not logged because the same one was logged recently, by event.
    pub warnings_suppressed: Family<EventLabel, Counter>,
    pub members: Family<NodeLabel, Gauge>,
    pub members_count: Gauge,
    pub announced: Family<AnnouncedLabels, Gauge>,
    pub announced_addresses: Gauge,
    /// BGP mode's `metallb_bgp_*` metrics.
    pub bgp: crate::bgp::BgpMetrics,
    /// The reconcile loops': passes, ops by result, objects waiting for a retry.
    pub driver: metalnet::daemon::DriverMetrics,
}

pub fn ip_label(ip: &IpAddr) -> IpLabel {
    IpLabel { ip: ip.to_string() }
}

impl Metrics {
    /// Registers every metric in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        self.driver.register(registry);
        registry.register(
            "metallb_layer2_requests_received",
            "Number of layer2 requests received for owned IPs",
            self.requests_received.clone(),
        );
        registry.register(
            "metallb_layer2_responses_sent",
            "Number of layer2 responses sent for owned IPs",
            self.responses_sent.clone(),
        );
        registry.register(
            "metallb_layer2_gratuitous_sent",
            "Number of gratuitous layer2 packets sent for owned IPs",
            self.gratuitous_sent.clone(),
        );
        registry.register(
            "metalnet_layer2_malformed_frames",
            "ARP and neighbor solicitation frames dropped as malformed",
            self.malformed_frames.clone(),
        );
        registry.register(
            "metalnet_speaker_frames_dropped",
            "ARP and neighbor discovery frames dropped without an answer, by reason",
            self.frames_dropped.clone(),
        );
        registry.register(
            "metalnet_speaker_log_warnings_suppressed",
            "Repeated warnings not logged (at most one per event and key every 10 s)",
            self.warnings_suppressed.clone(),
        );
        registry.register(
            MEMBER_METRIC,
            "Speakers this speaker sees alive (1), by node",
            self.members.clone(),
        );
        registry.register(
            "metalnet_speaker_members",
            "Number of speakers this speaker sees alive, itself included",
            self.members_count.clone(),
        );
        registry.register(
            "metallb_speaker_announced",
            "Services being announced from this node",
            self.announced.clone(),
        );
        registry.register(
            "metalnet_speaker_announced_addresses",
            "Addresses this node answers ARP/NDP for",
            self.announced_addresses.clone(),
        );
        self.bgp.register(registry);
    }

    /// Publishes the live member set.
    pub fn set_members(&self, live: &BTreeSet<String>) {
        self.members.clear();
        for node in live {
            self.members
                .get_or_create(&NodeLabel { node: node.clone() })
                .set(1);
        }
        self.members_count.set(live.len() as i64);
    }
}

/// Why a running speaker's metrics could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("reading http://{addr}/metrics: {source}")]
    Io {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("http://{addr}/metrics answered {status:?}, not 200")]
    Status { addr: SocketAddr, status: String },
}

/// How long `explain` waits for a running speaker.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(2);

/// The body of a running speaker's `/metrics` (blocking, bounded by [`FETCH_TIMEOUT`]).
pub fn fetch_metrics(addr: SocketAddr) -> Result<String, FetchError> {
    let io = |source| FetchError::Io { addr, source };
    let mut s = TcpStream::connect_timeout(&addr, FETCH_TIMEOUT).map_err(io)?;
    s.set_read_timeout(Some(FETCH_TIMEOUT)).map_err(io)?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: speaker\r\nConnection: close\r\n\r\n")
        .map_err(io)?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).map_err(io)?;
    http_body(&answer)
        .map(str::to_string)
        .map_err(|status| FetchError::Status {
            addr,
            status: status.to_string(),
        })
}

/// The body of an HTTP/1.1 answer with status 200, else its status line.
fn http_body(answer: &str) -> Result<&str, &str> {
    let status = answer.lines().next().unwrap_or("");
    if !status.starts_with("HTTP/1.1 200") {
        return Err(status);
    }
    Ok(answer.split_once("\r\n\r\n").map_or("", |(_, body)| body))
}

/// Reads the live members back from a `/metrics` text (for `explain`).
pub fn parse_members(text: &str) -> BTreeSet<String> {
    let prefix = format!("{MEMBER_METRIC}{{node=\"");
    text.lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter_map(|rest| {
            let (node, value) = rest.split_once("\"}")?;
            (value.trim() == "1").then(|| node.to_string())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_answers() {
        assert_eq!(
            http_body("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\na 1\n"),
            Ok("a 1\n")
        );
        assert_eq!(
            http_body("HTTP/1.1 404 Not Found\r\n\r\n"),
            Err("HTTP/1.1 404 Not Found")
        );
        assert_eq!(http_body(""), Err(""));
    }

    #[test]
    fn fetch_from_nowhere_names_the_address() {
        // Port 1 on loopback: refused at once.
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let e = fetch_metrics(addr).unwrap_err();
        assert!(e.to_string().contains("http://127.0.0.1:1/metrics"), "{e}");
    }

    #[test]
    fn members_round_trip_through_the_exposition() {
        let m = Metrics::default();
        let mut r = Registry::default();
        m.register(&mut r);
        let live: BTreeSet<String> = ["node1".to_string(), "node3".to_string()].into();
        m.set_members(&live);
        m.requests_received
            .get_or_create(&ip_label(&"192.0.2.200".parse().unwrap()))
            .inc();
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &r).unwrap();
        assert_eq!(parse_members(&text), live);
        assert!(text.contains("metallb_layer2_requests_received_total{ip=\"192.0.2.200\"} 1"));
        assert!(text.contains("metalnet_speaker_members 2"));
        m.frames_dropped
            .get_or_create(&ReasonLabel {
                reason: "vlan_tagged".into(),
            })
            .inc();
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &r).unwrap();
        assert!(
            text.contains("metalnet_speaker_frames_dropped_total{reason=\"vlan_tagged\"} 1"),
            "{text}"
        );
    }
}
