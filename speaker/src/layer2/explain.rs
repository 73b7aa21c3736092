//! `metalnet-speaker explain NAMESPACE/NAME`: why a node does or does not announce a Service,
//! rendered from the same election the speaker runs.

use std::collections::BTreeSet;
use std::fmt::Write;

use super::election::{Interfaces, ServiceElection, Verdict};

/// Where the live-speaker view came from, for the reader.
#[derive(Clone, Debug)]
pub enum LiveSource {
    /// Read from a running speaker's metrics endpoint.
    Speaker(String),
    /// Node Ready conditions (gossip off, or no speaker reachable).
    NodeReady(String),
}

/// Renders the explanation for one Service, from the point of view of `me` when given.
pub fn render(
    e: &ServiceElection,
    me: Option<&str>,
    live: &BTreeSet<String>,
    source: &LiveSource,
) -> String {
    let mut o = String::new();
    let ips: Vec<String> = e.ips.iter().map(|i| i.to_string()).collect();
    let _ = writeln!(o, "Service {}/{}", e.namespace, e.name);
    let _ = writeln!(
        o,
        "  addresses: {}",
        if ips.is_empty() {
            "none".into()
        } else {
            ips.join(", ")
        }
    );
    if let Some(p) = &e.pool {
        let _ = writeln!(o, "  pool: {p}");
    }
    if !e.advertisements.is_empty() {
        let _ = writeln!(o, "  L2Advertisements: {}", e.advertisements.join(", "));
    }
    let _ = writeln!(
        o,
        "  externalTrafficPolicy: {}; serving endpoints: {}{}",
        if e.external_traffic_local {
            "Local"
        } else {
            "Cluster"
        },
        e.serving_endpoints,
        if e.endpoint_nodes.is_empty() {
            String::new()
        } else {
            format!(
                " (on {})",
                e.endpoint_nodes
                    .iter()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    );
    let _ = match source {
        LiveSource::Speaker(from) => writeln!(
            o,
            "  live speakers (gossip view of the speaker at {from}): {}",
            join(live)
        ),
        LiveSource::NodeReady(why) => writeln!(
            o,
            "  live speakers (Nodes with Ready=True; {why}): {}",
            join(live)
        ),
    };
    let verdict = match &e.verdict {
        Verdict::NotLoadBalancer => "not announced: the Service is not of type LoadBalancer".into(),
        Verdict::NoAddress => {
            "not announced: no address in status.loadBalancer.ingress yet".into()
        }
        Verdict::NoPool => "not announced: the first address lies in no valid IPAddressPool".into(),
        Verdict::NoAdvertisement => {
            "not announced by layer 2: no L2Advertisement covers the pool".into()
        }
        Verdict::NoServingEndpoint => {
            "not announced: the Service has no serving endpoint (ready, or serving while terminating)".into()
        }
        Verdict::NoCandidate => "not announced: no node qualifies (see below)".into(),
        Verdict::Announced { node, interfaces } => {
            format!("announced by {node} on {interfaces}")
        }
    };
    let _ = writeln!(o, "  verdict: {verdict}");
    if !e.ranking.is_empty() {
        let first = e.ips.first().map(|i| i.to_string()).unwrap_or_default();
        let _ = writeln!(
            o,
            "  candidates, ordered by sha256(node + \"#\" + \"{first}\"):"
        );
        for (i, r) in e.ranking.iter().enumerate() {
            let _ = writeln!(
                o,
                "    {}. {:<20} {}…{}",
                i + 1,
                r.node,
                &r.hash_hex()[..16],
                if i == 0 { "  <- announces" } else { "" }
            );
        }
    }
    if !e.excluded.is_empty() {
        let _ = writeln!(o, "  not candidates:");
        for (node, why) in &e.excluded {
            let _ = writeln!(o, "    {node:<20} {why}");
        }
    }
    if let Some(me) = me {
        let line = match (&e.verdict, e.ranking.iter().position(|r| r.node == me)) {
            (Verdict::Announced { node, interfaces }, _) if node == me => {
                format!(
                    "announces it{}",
                    match interfaces {
                        Interfaces::All => String::new(),
                        Interfaces::Only(_) => format!(" (only on {interfaces})"),
                    }
                )
            }
            (_, Some(pos)) => format!(
                "does not announce it: candidate, ranked {} behind {}",
                pos + 1,
                e.ranking[0].node
            ),
            (_, None) => match e.excluded.get(me) {
                Some(why) => format!("does not announce it: {why}"),
                None => "does not announce it".into(),
            },
        };
        let _ = writeln!(o, "  this node ({me}) {line}");
    }
    o
}

fn join(s: &BTreeSet<String>) -> String {
    if s.is_empty() {
        "none".into()
    } else {
        s.iter().cloned().collect::<Vec<_>>().join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eligibility::Exclusion;
    use crate::layer2::election::{Ranked, rank_hash};

    #[test]
    fn explains_winner_loser_and_excluded() {
        let ip = "192.0.2.200".parse().unwrap();
        let e = ServiceElection {
            namespace: "default".into(),
            name: "web".into(),
            ips: vec![ip],
            pool: Some("metallb-system/site".into()),
            advertisements: vec!["metallb-system/l2".into()],
            external_traffic_local: true,
            endpoint_nodes: ["node1".to_string(), "node2".to_string()].into(),
            serving_endpoints: 2,
            ranking: vec![
                Ranked {
                    node: "node2".into(),
                    hash: rank_hash("node2", &ip),
                },
                Ranked {
                    node: "node1".into(),
                    hash: rank_hash("node1", &ip),
                },
            ],
            excluded: [("node3".to_string(), Exclusion::NoLocalEndpoint)].into(),
            verdict: Verdict::Announced {
                node: "node2".into(),
                interfaces: Interfaces::All,
            },
        };
        let live: BTreeSet<String> = ["node1", "node2", "node3"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let src = LiveSource::Speaker("127.0.0.1:7473".into());
        let out = render(&e, Some("node1"), &live, &src);
        assert!(out.contains("verdict: announced by node2"), "{out}");
        assert!(
            out.contains(
                "this node (node1) does not announce it: candidate, ranked 2 behind node2"
            ),
            "{out}"
        );
        assert!(
            out.contains("node3") && out.contains("no serving endpoint runs on this node"),
            "{out}"
        );
        let out = render(&e, Some("node3"), &live, &src);
        assert!(
            out.contains("this node (node3) does not announce it: externalTrafficPolicy is Local"),
            "{out}"
        );
        let out = render(&e, Some("node2"), &live, &src);
        assert!(out.contains("this node (node2) announces it"), "{out}");
    }
}
