//! The BGP part of `metalnet-speaker explain`: which peers this node talks to (and their
//! session state, read from the running speaker's metrics when it answers), and why the
//! Service is or is not announced to them, route by route.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::plan::{NodePlan, ServiceBgp};
use super::sessions::peer_label;

/// `metallb_bgp_session_up` per `peer` label, from a `/metrics` text.
pub fn parse_session_up(text: &str) -> BTreeMap<String, bool> {
    let prefix = "metallb_bgp_session_up{peer=\"";
    text.lines()
        .filter_map(|l| l.strip_prefix(prefix))
        .filter_map(|rest| {
            let (peer, value) = rest.split_once("\"}")?;
            Some((peer.to_string(), value.trim() == "1"))
        })
        .collect()
}

/// Renders the BGP explanation of one Service for this node. `sessions`: session state by
/// peer label when a running speaker answered.
pub fn render(
    plan: &NodePlan,
    service: Option<&ServiceBgp>,
    sessions: Option<&BTreeMap<String, bool>>,
) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "BGP mode");
    if plan.peers.is_empty() {
        let _ = writeln!(o, "  peers: none select this node");
    }
    for (key, p) in &plan.peers {
        let state = match (&p.config, sessions) {
            (Err(e), _) => format!("unusable: {e}"),
            (Ok(c), Some(s)) => match s.get(&peer_label(c).peer) {
                Some(true) => "session up".into(),
                Some(false) => "session down".into(),
                None => "no session reported by the speaker".into(),
            },
            (Ok(_), None) => "session state unknown (no speaker answered)".into(),
        };
        let _ = writeln!(
            o,
            "  peer {key} ({}): {state}; {} routes planned",
            p.address,
            p.routes.len()
        );
    }
    for key in &plan.unselected_peers {
        let _ = writeln!(o, "  peer {key}: nodeSelectors leave this node out");
    }
    let Some(s) = service else {
        let _ = writeln!(o, "  the Service is not a LoadBalancer with an address");
        return o;
    };
    if !s.advertisements.is_empty() {
        let ads: Vec<&str> = s.advertisements.iter().map(String::as_str).collect();
        let _ = writeln!(o, "  BGPAdvertisements: {}", ads.join(", "));
    }
    for u in &s.unsent {
        let _ = writeln!(o, "  {} not sent to {}: {}", u.ip, u.peer, u.reason);
    }
    match &s.not_announced {
        Some(why) => {
            let _ = writeln!(o, "  verdict: not announced from this node: {why}");
        }
        None => {
            let _ = writeln!(o, "  verdict: announced from this node");
            for c in &s.contributions {
                let peers: Vec<&str> = c.peers.iter().map(String::as_str).collect();
                let route = plan
                    .peers
                    .values()
                    .find_map(|p| p.routes.get(&c.prefix))
                    .cloned()
                    .unwrap_or_default();
                let _ = writeln!(
                    o,
                    "    {} as {} (BGPAdvertisement {}) to {}; communities {:?}, large {:?}, localPref {} (iBGP only)",
                    c.ip,
                    c.prefix,
                    c.advertisement,
                    peers.join(", "),
                    route
                        .communities
                        .iter()
                        .map(|v| format!("{}:{}", v >> 16, v & 0xffff))
                        .collect::<Vec<_>>(),
                    route
                        .large_communities
                        .iter()
                        .map(|l| l.to_string())
                        .collect::<Vec<_>>(),
                    route
                        .local_pref
                        .map(|v| v.to_string())
                        .unwrap_or_else(|| "default".into()),
                );
            }
        }
    }
    o
}
