//! Layer 2 leader election, pure: which node announces each Service address, and why every
//! other node does not. Every speaker computes the same answer from the same inputs (cluster
//! objects and live speakers), as MetalLB does, without asking the others.
//!
//! Candidates for a Service: nodes that run a live speaker, have a Node object without the
//! `NetworkUnavailable` condition or the `node.kubernetes.io/exclude-from-external-load-balancers`
//! label, are selected by an L2Advertisement covering the address's pool and, under
//! `externalTrafficPolicy: Local`, have a serving endpoint. They are ordered by
//! sha256(node name + "#" + first address) ascending; the first announces. Services sharing an
//! address therefore agree on the node (same first address, same ordering).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::IpAddr;

use metalnet::model::core::{EndpointSlice, Service};
use metalnet::state::Snapshot;
use metalnet::validate::{ParsedConfig, ParsedPool};
use sha2::{Digest, Sha256};

use crate::eligibility::{EXCLUDE_LABEL, Exclusion, NodeFacts};

const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Which interfaces an address is announced on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Interfaces {
    /// Every eligible interface.
    All,
    /// Only these (those that exist and are eligible).
    Only(BTreeSet<String>),
}

impl Interfaces {
    pub fn allows(&self, name: &str) -> bool {
        match self {
            Interfaces::All => true,
            Interfaces::Only(set) => set.contains(name),
        }
    }

    /// The union of two selections.
    pub fn union(&self, other: &Interfaces) -> Interfaces {
        match (self, other) {
            (Interfaces::Only(a), Interfaces::Only(b)) => {
                Interfaces::Only(a.union(b).cloned().collect())
            }
            _ => Interfaces::All,
        }
    }
}

impl fmt::Display for Interfaces {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Interfaces::All => f.write_str("all eligible interfaces"),
            Interfaces::Only(s) => {
                write!(f, "{}", s.iter().cloned().collect::<Vec<_>>().join(", "))
            }
        }
    }
}

/// The outcome for one Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Not `type: LoadBalancer`: layer 2 mode does not concern it.
    NotLoadBalancer,
    /// No address in `status.loadBalancer.ingress` yet.
    NoAddress,
    /// The first address lies in no valid IPAddressPool.
    NoPool,
    /// No L2Advertisement covers the pool: not announced by layer 2.
    NoAdvertisement,
    /// No serving endpoint anywhere: nobody announces (as MetalLB).
    NoServingEndpoint,
    /// Advertised, but no node qualifies.
    NoCandidate,
    /// `node` announces, on `interfaces`.
    Announced {
        node: String,
        interfaces: Interfaces,
    },
}

/// One candidate with its ordering key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ranked {
    pub node: String,
    pub hash: [u8; 32],
}

impl Ranked {
    pub fn hash_hex(&self) -> String {
        self.hash.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// The election for one Service, with everything `explain` shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceElection {
    pub namespace: String,
    pub name: String,
    pub ips: Vec<IpAddr>,
    /// `namespace/name` of the pool of the first address.
    pub pool: Option<String>,
    /// `namespace/name` of the L2Advertisements covering the pool.
    pub advertisements: Vec<String>,
    pub external_traffic_local: bool,
    /// Nodes with a serving endpoint.
    pub endpoint_nodes: BTreeSet<String>,
    pub serving_endpoints: usize,
    /// Candidates, best first.
    pub ranking: Vec<Ranked>,
    /// Nodes that are not candidates, with the reason.
    pub excluded: BTreeMap<String, Exclusion>,
    pub verdict: Verdict,
}

impl ServiceElection {
    /// The announcing node, if any.
    pub fn winner(&self) -> Option<&str> {
        match &self.verdict {
            Verdict::Announced { node, .. } => Some(node),
            _ => None,
        }
    }

    /// The interfaces `node` announces this Service's addresses on, if `node` won.
    pub fn won_by(&self, node: &str) -> Option<&Interfaces> {
        match &self.verdict {
            Verdict::Announced {
                node: winner,
                interfaces,
            } if winner == node => Some(interfaces),
            _ => None,
        }
    }
}

/// The ordering key of `node` for an address.
pub fn rank_hash(node: &str, ip: &IpAddr) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(node.as_bytes());
    h.update(b"#");
    h.update(ip.to_string().as_bytes());
    h.finalize().into()
}

/// The first of `candidates` in the ordering for `ip` (lowest [`rank_hash`]): the node that
/// announces `ip` when exactly these nodes qualify.
pub fn first_ranked<'a>(candidates: &[&'a str], ip: &IpAddr) -> Option<&'a str> {
    candidates.iter().copied().min_by_key(|n| rank_hash(n, ip))
}

/// What the election needs, gathered once per snapshot.
pub struct Inputs<'a> {
    pub snapshot: &'a Snapshot,
    pub config: &'a ParsedConfig,
    pub nodes: &'a BTreeMap<String, NodeFacts>,
    /// Nodes with a live speaker.
    pub live: &'a BTreeSet<String>,
    /// Ignore the exclude-from-external-load-balancers label (MetalLB's --ignore-exclude-lb).
    pub ignore_exclude_label: bool,
}

/// The addresses a Service was given (status.loadBalancer.ingress[].ip), in order, less any
/// special-purpose address (unspecified, loopback, multicast, broadcast, link-local).
pub fn service_ips(svc: &Service) -> Vec<IpAddr> {
    svc.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .map(|ing| {
            ing.iter()
                .filter_map(|i| i.ip.as_deref())
                .filter_map(|ip| ip.parse().ok())
                // Whoever wrote them into the status (the controller never assigns them),
                // special-purpose addresses are never announced: a gratuitous ARP for
                // 255.255.255.255 or an NA for ff02::1 would disturb every host on the
                // segment.
                .filter(|ip| metalnet::addr::special_purpose(*ip).is_none())
                .collect()
        })
        .unwrap_or_default()
}

/// Whether an endpoint can take traffic: `ready` unset or true, or `serving` true.
pub fn endpoint_can_serve(c: Option<&k8s_openapi::api::discovery::v1::EndpointConditions>) -> bool {
    match c {
        None => true,
        Some(c) => c.ready.is_none_or(|r| r) || c.serving == Some(true),
    }
}

/// EndpointSlices by (namespace, Service name), from their `kubernetes.io/service-name` label.
pub type SliceIndex<'a> = HashMap<(&'a str, &'a str), Vec<&'a EndpointSlice>>;

pub fn slice_index(snapshot: &Snapshot) -> SliceIndex<'_> {
    let mut index: SliceIndex<'_> = HashMap::new();
    for (k, s) in snapshot.endpoint_slices.iter() {
        let service = s
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL));
        if let (Some(ns), Some(svc)) = (k.namespace.as_deref(), service) {
            index
                .entry((ns, svc.as_str()))
                .or_default()
                .push(s.as_ref());
        }
    }
    index
}

fn pool_of<'a>(pools: &'a [ParsedPool], ip: &IpAddr) -> Option<&'a ParsedPool> {
    pools
        .iter()
        .find(|p| p.cidrs.iter().any(|c| c.contains(ip)))
}

/// Runs the election for one Service.
pub fn elect(inputs: &Inputs<'_>, svc: &Service) -> ServiceElection {
    elect_indexed(inputs, &slice_index(inputs.snapshot), svc)
}

fn elect_indexed(inputs: &Inputs<'_>, slices: &SliceIndex<'_>, svc: &Service) -> ServiceElection {
    let namespace = svc
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let name = svc.metadata.name.clone().unwrap_or_default();
    let spec = svc.spec.as_ref();
    let external_traffic_local =
        spec.and_then(|s| s.external_traffic_policy.as_deref()) == Some("Local");
    let mut e = ServiceElection {
        namespace: namespace.clone(),
        name: name.clone(),
        ips: service_ips(svc),
        pool: None,
        advertisements: Vec::new(),
        external_traffic_local,
        endpoint_nodes: BTreeSet::new(),
        serving_endpoints: 0,
        ranking: Vec::new(),
        excluded: BTreeMap::new(),
        verdict: Verdict::NoAddress,
    };
    if spec.and_then(|s| s.type_.as_deref()) != Some("LoadBalancer") {
        e.verdict = Verdict::NotLoadBalancer;
        return e;
    }
    let Some(first) = e.ips.first().copied() else {
        return e;
    };
    let Some(pool) = pool_of(&inputs.config.pools, &first) else {
        e.verdict = Verdict::NoPool;
        return e;
    };
    e.pool = Some(format!("{}/{}", pool.namespace, pool.name));
    let ads: Vec<_> = inputs
        .config
        .l2_advertisements
        .iter()
        .filter(|a| a.namespace == pool.namespace && a.pools.contains(&pool.name))
        .collect();
    e.advertisements = ads
        .iter()
        .map(|a| format!("{}/{}", a.namespace, a.name))
        .collect();
    // Endpoints are counted before any verdict that stops here, so `explain` shows them
    // whatever the reason the Service is not announced.
    let own_slices = slices
        .get(&(namespace.as_str(), name.as_str()))
        .map(Vec::as_slice)
        .unwrap_or_default();
    for slice in own_slices {
        for ep in &slice.endpoints {
            if endpoint_can_serve(ep.conditions.as_ref()) {
                e.serving_endpoints += 1;
                if let Some(n) = &ep.node_name {
                    e.endpoint_nodes.insert(n.clone());
                }
            }
        }
    }
    if ads.is_empty() {
        e.verdict = Verdict::NoAdvertisement;
        return e;
    }
    if e.serving_endpoints == 0 {
        e.verdict = Verdict::NoServingEndpoint;
        return e;
    }
    let everyone: BTreeSet<&String> = inputs.live.iter().chain(inputs.nodes.keys()).collect();
    let mut interfaces_of = BTreeMap::new();
    for node in everyone {
        let exclusion = if !inputs.live.contains(node) {
            Some(Exclusion::SpeakerNotLive)
        } else {
            match inputs.nodes.get(node) {
                None => Some(Exclusion::NoNodeObject),
                Some(f) if f.network_unavailable => Some(Exclusion::NetworkUnavailable),
                Some(f) if !inputs.ignore_exclude_label && f.labels.contains_key(EXCLUDE_LABEL) => {
                    Some(Exclusion::ExcludedByLabel)
                }
                Some(f) => {
                    let selecting: Vec<_> = ads
                        .iter()
                        .filter(|a| {
                            a.node_selectors.is_empty()
                                || a.node_selectors.iter().any(|s| s.matches(&f.labels))
                        })
                        .collect();
                    if selecting.is_empty() {
                        Some(Exclusion::NotSelected)
                    } else if external_traffic_local && !e.endpoint_nodes.contains(node) {
                        Some(Exclusion::NoLocalEndpoint)
                    } else {
                        let ifs = selecting
                            .iter()
                            .map(|a| {
                                if a.interfaces.is_empty() {
                                    Interfaces::All
                                } else {
                                    Interfaces::Only(a.interfaces.iter().cloned().collect())
                                }
                            })
                            .reduce(|a, b| a.union(&b))
                            .expect("non-empty");
                        interfaces_of.insert(node.clone(), ifs);
                        None
                    }
                }
            }
        };
        match exclusion {
            Some(x) => {
                e.excluded.insert(node.clone(), x);
            }
            None => e.ranking.push(Ranked {
                node: node.clone(),
                hash: rank_hash(node, &first),
            }),
        }
    }
    e.ranking.sort_by_key(|r| r.hash);
    e.verdict = match e.ranking.first() {
        None => Verdict::NoCandidate,
        Some(r) => Verdict::Announced {
            node: r.node.clone(),
            interfaces: interfaces_of.remove(&r.node).unwrap_or(Interfaces::All),
        },
    };
    e
}

/// Runs the election for every Service of the snapshot (LoadBalancers with an address).
pub fn elect_all(inputs: &Inputs<'_>) -> Vec<ServiceElection> {
    let slices = slice_index(inputs.snapshot);
    inputs
        .snapshot
        .services
        .values()
        .map(|svc| elect_indexed(inputs, &slices, svc))
        .filter(|e| !matches!(e.verdict, Verdict::NotLoadBalancer | Verdict::NoAddress))
        .collect()
}

/// The addresses `node` announces, with their interfaces (the union where several Services
/// share an address).
pub fn announced_by(elections: &[ServiceElection], node: &str) -> BTreeMap<IpAddr, Interfaces> {
    let mut out: BTreeMap<IpAddr, Interfaces> = BTreeMap::new();
    for e in elections {
        if let Some(interfaces) = e.won_by(node) {
            for ip in &e.ips {
                let merged = match out.get(ip) {
                    Some(prev) => prev.union(interfaces),
                    None => interfaces.clone(),
                };
                out.insert(*ip, merged);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use metalnet::testing::*;
    use metalnet::validate::valid_config;
    use serde_json::{Value, json};

    /// A LoadBalancer Service holding `ip`, with this external traffic policy.
    fn lb_service(name: &str, ip: &str, policy: &str) -> Value {
        service(name).traffic_policy(policy).ingress([ip]).json()
    }

    fn three_nodes() -> Vec<Value> {
        vec![
            node("node1").label("zone", "a").ready().json(),
            node("node2").label("zone", "b").ready().json(),
            node("node3").label("zone", "b").ready().json(),
        ]
    }

    fn run(objects: Vec<Value>, live: &[&str]) -> Vec<ServiceElection> {
        let snap = snapshot(objects);
        let (config, problems) = valid_config(&snap);
        assert!(problems.is_empty(), "{problems:?}");
        let nodes = crate::eligibility::nodes(&snap);
        let live: BTreeSet<String> = live.iter().map(|s| s.to_string()).collect();
        let mut out = elect_all(&Inputs {
            snapshot: &snap,
            config: &config,
            nodes: &nodes,
            live: &live,
            ignore_exclude_label: false,
        });
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    fn expected_winner(candidates: &[&str], ip: &str) -> String {
        first_ranked(candidates, &ip.parse().unwrap())
            .unwrap()
            .to_string()
    }

    fn base(extra: Vec<Value>) -> Vec<Value> {
        let mut v = three_nodes();
        v.push(pool("site", ["192.0.2.200-192.0.2.250"]).json());
        v.extend(extra);
        v
    }

    #[test]
    fn hash_matches_metallb_definition() {
        // sha256("node1#192.0.2.200") computed independently (coreutils sha256sum).
        let h = rank_hash("node1", &"192.0.2.200".parse().unwrap());
        let hex: String = h.iter().map(|b| format!("{b:02x}")).collect();
        let expected = std::process::Command::new("sh")
            .args(["-c", "printf 'node1#192.0.2.200' | sha256sum"])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split(' ')
                    .next()
                    .unwrap_or("")
                    .to_string()
            })
            .unwrap_or_default();
        if !expected.is_empty() {
            assert_eq!(hex, expected);
        }
    }

    #[test]
    fn first_by_hash_among_live_nodes_wins() {
        let all = ["node1", "node2", "node3"];
        let e = run(
            base(vec![
                l2_advertisement("l2").json(),
                lb_service("web", "192.0.2.200", "Cluster"),
                endpoint_slice("web").endpoint("node1", Some(true)).json(),
            ]),
            &all,
        );
        assert_eq!(e.len(), 1);
        assert_eq!(
            e[0].winner(),
            Some(expected_winner(&all, "192.0.2.200").as_str())
        );
        assert_eq!(e[0].ranking.len(), 3);
        // The winner's speaker dies: the next one in the ranking takes over.
        let winner = e[0].winner().unwrap().to_string();
        let rest: Vec<&str> = all.iter().copied().filter(|n| *n != winner).collect();
        let e2 = run(
            base(vec![
                l2_advertisement("l2").json(),
                lb_service("web", "192.0.2.200", "Cluster"),
                endpoint_slice("web").endpoint("node1", Some(true)).json(),
            ]),
            &rest,
        );
        assert_eq!(e2[0].winner(), Some(e[0].ranking[1].node.as_str()));
        assert_eq!(e2[0].excluded[&winner], Exclusion::SpeakerNotLive);
    }

    #[test]
    fn no_advertisement_no_announcement() {
        let e = run(
            base(vec![
                lb_service("web", "192.0.2.200", "Cluster"),
                endpoint_slice("web").endpoint("node1", Some(true)).json(),
            ]),
            &["node1", "node2", "node3"],
        );
        assert_eq!(e[0].verdict, Verdict::NoAdvertisement);
        // The ready endpoint is still counted (explain shows it).
        assert_eq!(e[0].serving_endpoints, 1);
        assert_eq!(e[0].endpoint_nodes, ["node1".to_string()].into());
        let out = crate::layer2::explain::render(
            &e[0],
            Some("node1"),
            &BTreeSet::new(),
            &crate::layer2::explain::LiveSource::NodeReady("test".into()),
        );
        assert!(out.contains("serving endpoints: 1 (on node1)"), "{out}");
        // An address outside every pool.
        let e = run(
            base(vec![
                l2_advertisement("l2").json(),
                lb_service("web", "198.51.100.5", "Cluster"),
                endpoint_slice("web").endpoint("node1", Some(true)).json(),
            ]),
            &["node1"],
        );
        assert_eq!(e[0].verdict, Verdict::NoPool);
    }

    #[test]
    fn no_serving_endpoint_nobody_announces() {
        let e = run(
            base(vec![
                l2_advertisement("l2").json(),
                lb_service("web", "192.0.2.200", "Cluster"),
                endpoint_slice("web").endpoint("node1", Some(false)).json(),
            ]),
            &["node1", "node2", "node3"],
        );
        assert_eq!(e[0].verdict, Verdict::NoServingEndpoint);
    }

    #[test]
    fn node_selectors_and_interfaces_restrict() {
        let e = run(
            base(vec![
                l2_advertisement("l2")
                    .node_selector(json!({"zone": "b"}))
                    .interfaces(["eth1"])
                    .json(),
                lb_service("web", "192.0.2.200", "Cluster"),
                endpoint_slice("web").endpoint("node1", None).json(),
            ]),
            &["node1", "node2", "node3"],
        );
        assert_eq!(e[0].excluded["node1"], Exclusion::NotSelected);
        let w = e[0].winner().unwrap();
        assert_eq!(w, expected_winner(&["node2", "node3"], "192.0.2.200"));
        assert_eq!(
            e[0].verdict,
            Verdict::Announced {
                node: w.to_string(),
                interfaces: Interfaces::Only(["eth1".to_string()].into())
            }
        );
    }

    #[test]
    fn interfaces_union_over_advertisements_and_all_wins() {
        let e = run(
            base(vec![
                l2_advertisement("a").interfaces(["eth1"]).json(),
                l2_advertisement("b").interfaces(["eth2"]).json(),
                lb_service("web", "192.0.2.200", "Cluster"),
                endpoint_slice("web").endpoint("node1", None).json(),
            ]),
            &["node1"],
        );
        assert_eq!(
            e[0].verdict,
            Verdict::Announced {
                node: "node1".into(),
                interfaces: Interfaces::Only(["eth1".to_string(), "eth2".to_string()].into())
            }
        );
        let e = run(
            base(vec![
                l2_advertisement("a").interfaces(["eth1"]).json(),
                l2_advertisement("b").json(),
                lb_service("web", "192.0.2.200", "Cluster"),
                endpoint_slice("web").endpoint("node1", None).json(),
            ]),
            &["node1"],
        );
        assert!(matches!(
            &e[0].verdict,
            Verdict::Announced {
                interfaces: Interfaces::All,
                ..
            }
        ));
    }

    #[test]
    fn local_policy_needs_a_local_serving_endpoint() {
        let e = run(
            base(vec![
                l2_advertisement("l2").json(),
                lb_service("web", "192.0.2.200", "Local"),
                endpoint_slice("web")
                    .endpoint("node3", Some(true))
                    .endpoint("node2", Some(false))
                    .json(),
            ]),
            &["node1", "node2", "node3"],
        );
        assert_eq!(e[0].winner(), Some("node3"));
        assert_eq!(e[0].excluded["node1"], Exclusion::NoLocalEndpoint);
        assert_eq!(e[0].excluded["node2"], Exclusion::NoLocalEndpoint);
    }

    #[test]
    fn unavailable_and_excluded_nodes_are_not_candidates() {
        let mut objects = vec![
            node("node1")
                .ready()
                .condition("NetworkUnavailable", "True")
                .json(),
            node("node2").label(EXCLUDE_LABEL, "").ready().json(),
            node("node3").ready().json(),
            pool("site", ["192.0.2.200-192.0.2.250"]).json(),
        ];
        objects.extend([
            l2_advertisement("l2").json(),
            lb_service("web", "192.0.2.200", "Cluster"),
            endpoint_slice("web").endpoint("node1", None).json(),
        ]);
        let e = run(objects, &["node1", "node2", "node3", "ghost"]);
        assert_eq!(e[0].winner(), Some("node3"));
        assert_eq!(e[0].excluded["node1"], Exclusion::NetworkUnavailable);
        assert_eq!(e[0].excluded["node2"], Exclusion::ExcludedByLabel);
        assert_eq!(e[0].excluded["ghost"], Exclusion::NoNodeObject);
    }

    #[test]
    fn shared_addresses_go_to_one_node_and_addresses_spread() {
        let all = ["node1", "node2", "node3"];
        let mut extra = vec![l2_advertisement("l2").json()];
        for (svc, ip) in [
            ("a", "192.0.2.200"),
            ("b", "192.0.2.200"),
            ("c", "192.0.2.201"),
        ] {
            extra.push(lb_service(svc, ip, "Cluster"));
            extra.push(endpoint_slice(svc).endpoint("node1", None).json());
        }
        let e = run(base(extra), &all);
        assert_eq!(e[0].winner(), e[1].winner());
        let mine = announced_by(&e, e[2].winner().unwrap());
        assert!(mine.contains_key(&"192.0.2.201".parse().unwrap()));
        // Over many addresses, every node gets some.
        let mut extra = vec![l2_advertisement("l2").json()];
        for i in 0..30 {
            let name = format!("s{i}");
            extra.push(lb_service(
                &name,
                &format!("192.0.2.{}", 200 + i),
                "Cluster",
            ));
            extra.push(endpoint_slice(&name).endpoint("node1", None).json());
        }
        let e = run(base(extra), &all);
        for n in all {
            assert!(!announced_by(&e, n).is_empty(), "{n} announces nothing");
        }
    }

    #[test]
    fn won_by_names_the_winners_interfaces_only() {
        let e = run(
            base(vec![
                l2_advertisement("l2").interfaces(["eth1"]).json(),
                lb_service("web", "192.0.2.200", "Cluster"),
                endpoint_slice("web").endpoint("node1", Some(true)).json(),
            ]),
            &["node1", "node2", "node3"],
        );
        let winner = e[0].winner().unwrap();
        assert_eq!(
            e[0].won_by(winner),
            Some(&Interfaces::Only(["eth1".to_string()].into()))
        );
        for n in ["node1", "node2", "node3", "ghost"] {
            if n != winner {
                assert_eq!(e[0].won_by(n), None);
            }
        }
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        const NAMES: [&str; 6] = ["node1", "node2", "node3", "node4", "node5", "node6"];

        /// Nodes (a subset of NAMES, Ready), live speakers (a subset), and Services each
        /// with an address of the pool and a ready endpoint.
        fn objects(nodes: &[bool], services: &[u8], extra_label: Option<usize>) -> Vec<Value> {
            let mut v: Vec<Value> = NAMES
                .iter()
                .zip(nodes)
                .filter(|(_, present)| **present)
                .enumerate()
                .map(|(i, (n, _))| {
                    let node = node(n).ready();
                    if extra_label == Some(i) {
                        node.label("irrelevant", "yes").json()
                    } else {
                        node.json()
                    }
                })
                .collect();
            v.push(pool("site", ["192.0.2.200-192.0.2.250"]).json());
            v.push(l2_advertisement("l2").json());
            for (i, last) in services.iter().enumerate() {
                let name = format!("s{i}");
                let ip = format!("192.0.2.{}", 200 + u16::from(*last % 51));
                v.push(lb_service(&name, &ip, "Cluster"));
                v.push(endpoint_slice(&name).endpoint("node1", Some(true)).json());
            }
            v
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]

            /// Every address is won by exactly one live candidate, and every node computes
            /// the same winner (the election has no notion of "me").
            #[test]
            fn exactly_one_winner_per_address_among_live_candidates(
                nodes in proptest::collection::vec(any::<bool>(), 6),
                live in proptest::collection::vec(any::<bool>(), 6),
                services in proptest::collection::vec(any::<u8>(), 1..8),
            ) {
                let live: Vec<&str> = NAMES.iter().zip(&live).filter(|(_, l)| **l).map(|(n, _)| *n).collect();
                let present: BTreeSet<&str> = NAMES.iter().zip(&nodes).filter(|(_, p)| **p).map(|(n, _)| *n).collect();
                let e = run(objects(&nodes, &services, None), &live);
                let candidates: Vec<&str> = live.iter().copied().filter(|n| present.contains(n)).collect();
                let mut by_ip: BTreeMap<IpAddr, BTreeSet<String>> = BTreeMap::new();
                for s in &e {
                    match s.winner() {
                        Some(w) => {
                            prop_assert!(candidates.contains(&w), "{w} is not a live candidate");
                            prop_assert_eq!(Some(w), first_ranked(&candidates, &s.ips[0]));
                            by_ip.entry(s.ips[0]).or_default().insert(w.to_string());
                        }
                        None => prop_assert!(candidates.is_empty(), "{:?}", s.verdict),
                    }
                }
                for (ip, winners) in &by_ip {
                    prop_assert_eq!(winners.len(), 1, "{} won by {:?}", ip, winners);
                    let w = winners.iter().next().unwrap();
                    let owners: Vec<&str> = NAMES.iter().copied().filter(|n| announced_by(&e, n).contains_key(ip)).collect();
                    prop_assert_eq!(owners, vec![w.as_str()]);
                }
            }

            /// A change to a node that is not the winner and stays a candidate (a label no
            /// L2Advertisement selects on) moves nothing.
            #[test]
            fn stable_under_irrelevant_node_changes(
                services in proptest::collection::vec(any::<u8>(), 1..8),
                labelled in 0usize..6,
            ) {
                let all = [true; 6];
                let before = run(objects(&all, &services, None), &NAMES);
                let after = run(objects(&all, &services, Some(labelled)), &NAMES);
                let winners = |e: &[ServiceElection]| e.iter().map(|s| s.winner().map(str::to_string)).collect::<Vec<_>>();
                prop_assert_eq!(winners(&before), winners(&after));
            }
        }
    }
}
