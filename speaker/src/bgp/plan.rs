//! BGP mode planning, pure: from the cluster objects and this node's name, which BGPPeers
//! this node keeps a session with and which routes it announces to each, with MetalLB's
//! rules, plus the reasons `explain` shows.
//!
//! A node announces a Service's address when: the node is usable (Node object present, no
//! `NetworkUnavailable` condition, no exclude label), the address lies in a valid pool, a
//! BGPAdvertisement covers that pool and selects this node (`nodeSelectors`), and the
//! Service has a serving endpoint (under `externalTrafficPolicy: Local`: one on this node).
//! The route goes to every selected peer the advertisement names (`peers`, empty: all):
//! prefix = the address masked to `aggregationLength(V6)`, communities of every advertisement
//! producing that prefix merged, the highest `localPref` (sent on iBGP only, by the engine),
//! next hop = the session's local address (left to the engine).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use metalnet_config::addr::Community;
use metalnet_config::bgp::{LargeCommunity, Password, PeerConfig, RouteAttrs};
use metalnet_config::model::core::{EndpointSlice, Service};
use metalnet_config::state::Snapshot;
use metalnet_config::validate::{ParsedBgpAdvertisement, ParsedConfig, ParsedPeer, PasswordSource};

use crate::election::{self, EXCLUDE_LABEL, Exclusion, NodeFacts};

const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// What the planner needs.
pub struct Inputs<'a> {
    pub snapshot: &'a Snapshot,
    pub config: &'a ParsedConfig,
    pub node: &'a str,
    pub ignore_exclude_label: bool,
}

/// A BGPPeer this node's labels select, with the session parameters it asks for.
#[derive(Clone, Debug)]
pub struct PlannedPeer {
    pub namespace: String,
    pub name: String,
    pub address: IpAddr,
    /// The session parameters, or why the BGPPeer cannot become a session.
    pub config: Result<PeerConfig, String>,
    pub routes: BTreeMap<IpNet, RouteAttrs>,
}

impl PlannedPeer {
    /// `namespace/name`, the key of the session.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// Why this node does not announce a Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NotAnnounced {
    NotLoadBalancer,
    NoAddress,
    /// The node itself may not announce anything.
    Node(Exclusion),
    /// No valid pool contains the address.
    NoPool,
    /// No BGPAdvertisement covers the pool.
    NoAdvertisement,
    /// BGPAdvertisements cover the pool, but none selects this node.
    NotSelected,
    /// No serving endpoint anywhere.
    NoServingEndpoint,
    /// `externalTrafficPolicy: Local` and no serving endpoint on this node.
    NoLocalEndpoint,
    /// Advertised from here, but no selected BGPPeer matches the advertisements' `peers`.
    NoPeer,
}

impl fmt::Display for NotAnnounced {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotAnnounced::NotLoadBalancer => f.write_str("the Service is not of type LoadBalancer"),
            NotAnnounced::NoAddress => f.write_str("no address in status.loadBalancer.ingress yet"),
            NotAnnounced::Node(x) => write!(f, "{x}"),
            NotAnnounced::NoPool => f.write_str("the address lies in no valid IPAddressPool"),
            NotAnnounced::NoAdvertisement => f.write_str("no BGPAdvertisement covers the pool"),
            NotAnnounced::NotSelected => {
                f.write_str("no BGPAdvertisement for the pool selects this node (nodeSelectors)")
            }
            NotAnnounced::NoServingEndpoint => f.write_str("the Service has no serving endpoint"),
            NotAnnounced::NoLocalEndpoint => f.write_str(
                "externalTrafficPolicy is Local and no serving endpoint runs on this node",
            ),
            NotAnnounced::NoPeer => f.write_str(
                "no BGPPeer selecting this node is named by the BGPAdvertisements' peers",
            ),
        }
    }
}

/// One route a Service contributes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Contribution {
    pub ip: IpAddr,
    pub prefix: IpNet,
    /// `namespace/name` of the BGPAdvertisement.
    pub advertisement: String,
    /// Its index in [`ParsedConfig::bgp_advertisements`].
    pub advertisement_index: usize,
    /// BGPPeer names the route goes to.
    pub peers: BTreeSet<String>,
}

/// The BGP view of one Service from this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceBgp {
    pub namespace: String,
    pub name: String,
    pub ips: Vec<IpAddr>,
    /// `namespace/name` of the pools of the addresses.
    pub pools: BTreeSet<String>,
    /// `namespace/name` of the BGPAdvertisements covering those pools.
    pub advertisements: BTreeSet<String>,
    pub external_traffic_local: bool,
    pub serving_endpoints: usize,
    pub endpoint_nodes: BTreeSet<String>,
    pub contributions: Vec<Contribution>,
    /// Why nothing is announced; `None` when `contributions` is not empty.
    pub not_announced: Option<NotAnnounced>,
}

impl ServiceBgp {
    /// BGPPeer names this node announces the Service to.
    pub fn peers(&self) -> BTreeSet<String> {
        self.contributions
            .iter()
            .flat_map(|c| c.peers.iter().cloned())
            .collect()
    }
}

/// Everything BGP mode does on this node.
#[derive(Clone, Debug, Default)]
pub struct NodePlan {
    /// BGPPeers selecting this node, by `namespace/name`.
    pub peers: BTreeMap<String, PlannedPeer>,
    /// BGPPeers whose nodeSelectors leave this node out.
    pub unselected_peers: Vec<String>,
    pub node_exclusion: Option<Exclusion>,
    /// LoadBalancer Services with an address.
    pub services: Vec<ServiceBgp>,
}

/// The TCP MD5 password of a peer: inline, or the `password` key of the Secret it names.
pub fn peer_password(snapshot: &Snapshot, peer: &ParsedPeer) -> Result<Option<Password>, String> {
    let Some(source) = &peer.password else {
        return Ok(None);
    };
    match source {
        PasswordSource::Inline(p) => Ok(Some(Password::new(p.clone()))),
        PasswordSource::Secret { namespace, name } => {
            let ns = namespace.as_deref().unwrap_or(&peer.namespace);
            let secret = snapshot
                .secrets
                .iter()
                .find(|(k, _)| k.namespace.as_deref() == Some(ns) && k.name == *name)
                .map(|(_, s)| s)
                .ok_or_else(|| format!("spec.passwordSecret: Secret/{ns}/{name} not found"))?;
            if let Some(b) = secret.data.as_ref().and_then(|d| d.get("password")) {
                return String::from_utf8(b.0.clone())
                    .map(|p| Some(Password::new(p)))
                    .map_err(|_| {
                        format!("spec.passwordSecret: Secret/{ns}/{name} key password is not UTF-8")
                    });
            }
            secret
                .string_data
                .as_ref()
                .and_then(|d| d.get("password"))
                .map(|p| Some(Password::new(p.clone())))
                .ok_or_else(|| {
                    format!("spec.passwordSecret: Secret/{ns}/{name} has no key \"password\"")
                })
        }
    }
}

fn peer_config(
    snapshot: &Snapshot,
    peer: &ParsedPeer,
    router_id: Option<std::net::Ipv4Addr>,
) -> Result<PeerConfig, String> {
    let spec = snapshot
        .bgp_peers
        .iter()
        .find(|(k, _)| k.namespace.as_deref() == Some(&peer.namespace) && k.name == peer.name)
        .map(|(_, p)| &p.spec)
        .ok_or_else(|| "the BGPPeer object is gone".to_string())?;
    let password = peer_password(snapshot, peer)?;
    let mut config = PeerConfig::from_spec(spec, password).map_err(|e| e.to_string())?;
    // As MetalLB: without routerID, the node's IPv4 address identifies it on every session.
    if config.router_id.is_none() {
        config.router_id = router_id;
    }
    Ok(config)
}

fn masked(ip: IpAddr, ad: &ParsedBgpAdvertisement) -> IpNet {
    let len = match ip {
        IpAddr::V4(_) => ad.aggregation_length.min(32),
        IpAddr::V6(_) => ad.aggregation_length_v6.min(128),
    };
    IpNet::new(ip, len)
        .map(|n| n.trunc())
        .unwrap_or_else(|_| IpNet::from(ip))
}

fn merge(into: &mut RouteAttrs, ad: &ParsedBgpAdvertisement) {
    into.local_pref = match (into.local_pref, ad.local_pref) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    for c in &ad.communities {
        match *c {
            Community::Large {
                global_admin,
                local1,
                local2,
            } => into.large_communities.push(LargeCommunity {
                global: global_admin,
                local1,
                local2,
            }),
            _ => into.communities.extend(c.standard_u32()),
        }
    }
    into.communities.sort_unstable();
    into.communities.dedup();
    into.large_communities.sort_unstable();
    into.large_communities.dedup();
}

fn selects(selectors: &[metalnet_config::labels::Selector], facts: &NodeFacts) -> bool {
    selectors.is_empty() || selectors.iter().any(|s| s.matches(&facts.labels))
}

/// Plans BGP mode for `inputs.node`.
pub fn plan(inputs: &Inputs<'_>) -> NodePlan {
    let snapshot = inputs.snapshot;
    let node_obj = snapshot
        .nodes
        .iter()
        .find(|(k, _)| k.name == inputs.node)
        .map(|(_, n)| n);
    let facts = node_obj.map(|n| NodeFacts::of(n)).unwrap_or_default();
    let router_id = node_obj
        .and_then(|n| crate::bgp::internal_ip(n, true))
        .and_then(|ip| match ip {
            IpAddr::V4(a) => Some(a),
            IpAddr::V6(_) => None,
        });
    let mut out = NodePlan {
        node_exclusion: match node_obj {
            None => Some(Exclusion::NoNodeObject),
            Some(_) if facts.network_unavailable => Some(Exclusion::NetworkUnavailable),
            Some(_) if !inputs.ignore_exclude_label && facts.labels.contains_key(EXCLUDE_LABEL) => {
                Some(Exclusion::ExcludedByLabel)
            }
            Some(_) => None,
        },
        ..NodePlan::default()
    };
    for peer in &inputs.config.peers {
        if node_obj.is_some() && selects(&peer.node_selectors, &facts) {
            let p = PlannedPeer {
                namespace: peer.namespace.clone(),
                name: peer.name.clone(),
                address: peer.address,
                config: peer_config(snapshot, peer, router_id),
                routes: BTreeMap::new(),
            };
            out.peers.insert(p.key(), p);
        } else {
            out.unselected_peers
                .push(format!("{}/{}", peer.namespace, peer.name));
        }
    }
    let endpoints = slice_index(snapshot);
    let keys = Keys {
        pools: inputs
            .config
            .pools
            .iter()
            .map(|p| format!("{}/{}", p.namespace, p.name))
            .collect(),
        advertisements: inputs
            .config
            .bgp_advertisements
            .iter()
            .map(|a| format!("{}/{}", a.namespace, a.name))
            .collect(),
    };
    for svc in snapshot.services.values() {
        if let Some(s) = plan_service(inputs, &endpoints, &keys, &facts, &out, svc) {
            for c in &s.contributions {
                let ad = inputs.config.bgp_advertisements.get(c.advertisement_index);
                for p in out.peers.values_mut() {
                    if c.peers.contains(&p.name) {
                        let attrs = p.routes.entry(c.prefix).or_default();
                        if let Some(ad) = ad {
                            merge(attrs, ad);
                        }
                    }
                }
            }
            out.services.push(s);
        }
    }
    out
}

/// EndpointSlices by (namespace, Service name), so planning stays linear in the Services.
type SliceIndex<'a> = BTreeMap<(&'a str, &'a str), Vec<&'a EndpointSlice>>;

fn slice_index(snapshot: &Snapshot) -> SliceIndex<'_> {
    let mut index: SliceIndex<'_> = BTreeMap::new();
    for (k, slice) in snapshot.endpoint_slices.iter() {
        let service = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL));
        if let (Some(ns), Some(svc)) = (k.namespace.as_deref(), service) {
            index.entry((ns, svc.as_str())).or_default().push(slice);
        }
    }
    index
}

/// `namespace/name` of every pool and advertisement, formatted once per plan.
struct Keys {
    pools: Vec<String>,
    advertisements: Vec<String>,
}

fn plan_service(
    inputs: &Inputs<'_>,
    endpoints: &SliceIndex<'_>,
    keys: &Keys,
    facts: &NodeFacts,
    plan: &NodePlan,
    svc: &Service,
) -> Option<ServiceBgp> {
    let spec = svc.spec.as_ref();
    if spec.and_then(|s| s.type_.as_deref()) != Some("LoadBalancer") {
        return None;
    }
    let ips = election::service_ips(svc);
    if ips.is_empty() {
        return None;
    }
    let namespace = svc
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let name = svc.metadata.name.clone().unwrap_or_default();
    let mut s = ServiceBgp {
        namespace,
        name,
        ips,
        pools: BTreeSet::new(),
        advertisements: BTreeSet::new(),
        external_traffic_local: spec.and_then(|s| s.external_traffic_policy.as_deref())
            == Some("Local"),
        serving_endpoints: 0,
        endpoint_nodes: BTreeSet::new(),
        contributions: Vec::new(),
        not_announced: None,
    };
    for slice in endpoints
        .get(&(s.namespace.as_str(), s.name.as_str()))
        .into_iter()
        .flatten()
    {
        for ep in &slice.endpoints {
            if election::endpoint_can_serve(ep.conditions.as_ref()) {
                s.serving_endpoints += 1;
                if let Some(n) = &ep.node_name {
                    s.endpoint_nodes.insert(n.clone());
                }
            }
        }
    }
    // Per address: its pool, the advertisements covering it, and those selecting this node.
    let mut selecting: Vec<(IpAddr, usize, &ParsedBgpAdvertisement)> = Vec::new();
    for ip in &s.ips {
        let Some(pool_index) = inputs
            .config
            .pools
            .iter()
            .position(|p| p.cidrs.iter().any(|c| c.contains(ip)))
        else {
            continue;
        };
        let pool = &inputs.config.pools[pool_index];
        s.pools.insert(keys.pools[pool_index].clone());
        for (i, ad) in inputs
            .config
            .bgp_advertisements
            .iter()
            .enumerate()
            .filter(|(_, a)| a.namespace == pool.namespace && a.pools.contains(&pool.name))
        {
            s.advertisements.insert(keys.advertisements[i].clone());
            if selects(&ad.node_selectors, facts) {
                selecting.push((*ip, i, ad));
            }
        }
    }
    s.not_announced = if s.pools.is_empty() {
        Some(NotAnnounced::NoPool)
    } else if s.advertisements.is_empty() {
        Some(NotAnnounced::NoAdvertisement)
    } else if let Some(x) = &plan.node_exclusion {
        Some(NotAnnounced::Node(x.clone()))
    } else if selecting.is_empty() {
        Some(NotAnnounced::NotSelected)
    } else if s.serving_endpoints == 0 {
        Some(NotAnnounced::NoServingEndpoint)
    } else if s.external_traffic_local && !s.endpoint_nodes.contains(inputs.node) {
        Some(NotAnnounced::NoLocalEndpoint)
    } else {
        None
    };
    if s.not_announced.is_some() {
        return Some(s);
    }
    for (ip, index, ad) in selecting {
        let peers: BTreeSet<String> = plan
            .peers
            .values()
            .filter(|p| ad.peers.is_empty() || ad.peers.contains(&p.name))
            .map(|p| p.name.clone())
            .collect();
        if peers.is_empty() {
            continue;
        }
        s.contributions.push(Contribution {
            ip,
            prefix: masked(ip, ad),
            advertisement: keys.advertisements[index].clone(),
            advertisement_index: index,
            peers,
        });
    }
    if s.contributions.is_empty() {
        s.not_announced = Some(NotAnnounced::NoPeer);
    }
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use metalnet_config::validate::valid_config;
    use serde_json::{Value, json};

    fn snapshot(objects: Vec<Value>) -> std::sync::Arc<Snapshot> {
        Snapshot::from_manifests(objects)
    }

    fn node(name: &str, labels: Value, conditions: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": labels},
            "status": {"conditions": conditions,
                       "addresses": [{"type": "InternalIP", "address": "192.0.2.11"}]}})
    }

    fn meta(kind: &str, name: &str, spec: Value) -> Value {
        json!({"apiVersion": "metallb.io/v1beta1", "kind": kind,
            "metadata": {"name": name, "namespace": "metallb-system"}, "spec": spec})
    }

    fn peer(name: &str, address: &str, my: u32, peer: u32, extra: Value) -> Value {
        let mut spec = json!({"myASN": my, "peerASN": peer, "peerAddress": address});
        if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
            s.extend(e.clone());
        }
        json!({"apiVersion": "metallb.io/v1beta2", "kind": "BGPPeer",
            "metadata": {"name": name, "namespace": "metallb-system"}, "spec": spec})
    }

    fn service(name: &str, ips: &[&str], etp: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"type": "LoadBalancer", "externalTrafficPolicy": etp,
                     "ports": [{"port": 80}]},
            "status": {"loadBalancer": {"ingress": ips.iter().map(|ip| json!({"ip": ip})).collect::<Vec<_>>()}}})
    }

    fn slice(svc: &str, nodes: &[&str]) -> Value {
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": format!("{svc}-x"), "namespace": "default",
                         "labels": {"kubernetes.io/service-name": svc}},
            "addressType": "IPv4",
            "endpoints": nodes.iter().enumerate().map(|(i, n)| json!({
                "addresses": [format!("10.0.0.{}", i + 1)], "nodeName": n,
                "conditions": {"ready": true}})).collect::<Vec<_>>()})
    }

    fn ready() -> Value {
        json!([{"type": "Ready", "status": "True"}])
    }

    fn base(extra: Vec<Value>) -> Vec<Value> {
        let mut v = vec![
            node("node1", json!({"zone": "a"}), ready()),
            meta(
                "IPAddressPool",
                "site",
                json!({"addresses": ["192.0.2.192/26", "2001:db8:0:1::200/124"]}),
            ),
            peer("router", "192.0.2.1", 64513, 64512, json!({})),
        ];
        v.extend(extra);
        v
    }

    fn run(objects: Vec<Value>) -> NodePlan {
        let snap = snapshot(objects);
        let (config, problems) = valid_config(&snap);
        assert!(problems.iter().all(|p| !p.is_error()), "{problems:?}");
        plan(&Inputs {
            snapshot: &snap,
            config: &config,
            node: "node1",
            ignore_exclude_label: false,
        })
    }

    fn routes(p: &NodePlan, peer: &str) -> BTreeMap<IpNet, RouteAttrs> {
        p.peers[&format!("metallb-system/{peer}")].routes.clone()
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn announces_host_route_with_session_parameters() {
        let p = run(base(vec![
            meta("BGPAdvertisement", "all", json!({})),
            service("web", &["192.0.2.200", "2001:db8:0:1::201"], "Cluster"),
            slice("web", &["node2"]),
        ]));
        let r = routes(&p, "router");
        assert_eq!(
            r.keys().copied().collect::<Vec<_>>(),
            vec![net("192.0.2.200/32"), net("2001:db8:0:1::201/128")]
        );
        let attrs = &r[&net("192.0.2.200/32")];
        assert_eq!(
            attrs.next_hop, None,
            "the engine uses the session's local address"
        );
        let cfg = p.peers["metallb-system/router"].config.as_ref().unwrap();
        assert_eq!((cfg.my_asn, cfg.peer_asn), (64513, 64512));
        assert_eq!(cfg.router_id, Some("192.0.2.11".parse().unwrap()));
        assert_eq!(
            p.services[0].peers(),
            BTreeSet::from(["router".to_string()])
        );
    }

    #[test]
    fn aggregates_and_merges_communities_and_local_pref() {
        let p = run(base(vec![
            meta(
                "Community",
                "names",
                json!({"communities": [{"name": "no-export", "value": "65535:65281"}]}),
            ),
            meta(
                "BGPAdvertisement",
                "agg",
                json!({"aggregationLength": 27, "aggregationLengthV6": 124,
                "localPref": 50, "communities": ["64513:1", "large:64513:2:3"]}),
            ),
            meta(
                "BGPAdvertisement",
                "more",
                json!({"aggregationLength": 27, "localPref": 200,
                "communities": ["no-export"]}),
            ),
            service("a", &["192.0.2.200"], "Cluster"),
            service("b", &["192.0.2.201"], "Cluster"),
            service("c", &["192.0.2.201"], "Cluster"),
            slice("a", &["node1"]),
            slice("b", &["node1"]),
            slice("c", &["node1"]),
        ]));
        let r = routes(&p, "router");
        assert_eq!(r.len(), 1, "one route for the aggregate: {r:?}");
        let a = &r[&net("192.0.2.192/27")];
        assert_eq!(a.communities, vec![(64513 << 16) | 1, 0xffff_ff01]);
        assert_eq!(
            a.large_communities,
            vec![LargeCommunity {
                global: 64513,
                local1: 2,
                local2: 3
            }]
        );
        assert_eq!(a.local_pref, Some(200));
    }

    #[test]
    fn local_policy_needs_an_endpoint_on_this_node() {
        let objs = |eps: &[&str]| {
            base(vec![
                meta("BGPAdvertisement", "all", json!({})),
                service("web", &["192.0.2.200"], "Local"),
                slice("web", eps),
            ])
        };
        let p = run(objs(&["node2"]));
        assert!(routes(&p, "router").is_empty());
        assert_eq!(
            p.services[0].not_announced,
            Some(NotAnnounced::NoLocalEndpoint)
        );
        let p = run(objs(&["node1", "node2"]));
        assert_eq!(routes(&p, "router").len(), 1);
        let p = run(objs(&[]));
        assert_eq!(
            p.services[0].not_announced,
            Some(NotAnnounced::NoServingEndpoint)
        );
    }

    #[test]
    fn unusable_node_withdraws_everything_but_keeps_sessions() {
        for (labels, conditions, why) in [
            (
                json!({"node.kubernetes.io/exclude-from-external-load-balancers": ""}),
                ready(),
                Exclusion::ExcludedByLabel,
            ),
            (
                json!({}),
                json!([{"type": "NetworkUnavailable", "status": "True"}]),
                Exclusion::NetworkUnavailable,
            ),
        ] {
            let mut objs = base(vec![
                meta("BGPAdvertisement", "all", json!({})),
                service("web", &["192.0.2.200"], "Cluster"),
                slice("web", &["node1"]),
            ]);
            objs[0] = node("node1", labels, conditions);
            let p = run(objs);
            assert!(routes(&p, "router").is_empty());
            assert_eq!(p.node_exclusion, Some(why.clone()));
            assert_eq!(p.services[0].not_announced, Some(NotAnnounced::Node(why)));
        }
    }

    #[test]
    fn selectors_and_peer_lists_filter() {
        let p = run(base(vec![
            peer("other", "192.0.2.2", 64513, 64512, json!({})),
            peer(
                "elsewhere",
                "192.0.2.3",
                64513,
                64512,
                json!({"nodeSelectors": [{"matchLabels": {"zone": "b"}}]}),
            ),
            meta(
                "BGPAdvertisement",
                "only-other",
                json!({"peers": ["other"]}),
            ),
            meta(
                "BGPAdvertisement",
                "zone-b",
                json!({"aggregationLength": 27,
                "nodeSelectors": [{"matchLabels": {"zone": "b"}}]}),
            ),
            service("web", &["192.0.2.200"], "Cluster"),
            slice("web", &["node1"]),
        ]));
        assert_eq!(
            p.peers.keys().cloned().collect::<Vec<_>>(),
            vec!["metallb-system/other", "metallb-system/router"]
        );
        assert_eq!(p.unselected_peers, vec!["metallb-system/elsewhere"]);
        assert!(routes(&p, "router").is_empty());
        assert_eq!(
            routes(&p, "other").keys().copied().collect::<Vec<_>>(),
            vec![net("192.0.2.200/32")]
        );
        // Only advertisements not selecting the node: NotSelected.
        let p = run(base(vec![
            meta(
                "BGPAdvertisement",
                "zone-b",
                json!({
                "nodeSelectors": [{"matchLabels": {"zone": "b"}}]}),
            ),
            service("web", &["192.0.2.200"], "Cluster"),
            slice("web", &["node1"]),
        ]));
        assert_eq!(p.services[0].not_announced, Some(NotAnnounced::NotSelected));
    }

    #[test]
    fn password_from_secret_and_missing_secret() {
        let secret = json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "bgp-pass", "namespace": "metallb-system"},
            "type": "kubernetes.io/basic-auth",
            "data": {"password": "czNjcjN0"}});
        let md5 = peer(
            "md5",
            "192.0.2.2",
            64513,
            64512,
            json!({"passwordSecret": {"name": "bgp-pass"}}),
        );
        let p = run(base(vec![md5.clone(), secret]));
        let cfg = p.peers["metallb-system/md5"].config.as_ref().unwrap();
        assert_eq!(cfg.password, Some(Password::new("s3cr3t")));
        assert!(!format!("{cfg:?}").contains("s3cr3t"));
        let p = run(base(vec![md5]));
        let err = p.peers["metallb-system/md5"].config.as_ref().unwrap_err();
        assert!(
            err.contains("Secret/metallb-system/bgp-pass not found"),
            "{err}"
        );
    }
}
