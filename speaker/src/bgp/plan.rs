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
use std::sync::Arc;

use ipnet::IpNet;
use metalnet::addr::Community;
use metalnet::bgp::fsm::{IPV4_UNICAST, IPV6_UNICAST};
use metalnet::bgp::{LargeCommunity, Password, PeerConfig, RouteAttrs};
use metalnet::model::core::{EndpointSlice, Service};
use metalnet::state::{Kind, ObjectKey, ObjectRef, Snapshot};
use metalnet::validate::{
    PASSWORD_KEY, ParsedBgpAdvertisement, ParsedConfig, ParsedPeer, PasswordSource,
    is_base64_error, md5_key_too_long,
};

use crate::eligibility::{EXCLUDE_LABEL, Exclusion, IpChoice, NodeFacts, internal_ip};
use crate::layer2::election;

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

    /// Whether the session can carry a route for `ip`: with `disableMP` (and no
    /// `dualStackAddressFamily`) a session offers only its peer address's family, and a
    /// route of the other family would be planned but never sent. A peer that cannot become
    /// a session is reported on its own.
    pub fn carries(&self, ip: IpAddr) -> bool {
        let family = if ip.is_ipv4() {
            IPV4_UNICAST
        } else {
            IPV6_UNICAST
        };
        self.config
            .as_ref()
            .map_or(true, |c| c.families.contains(&family))
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
    /// The BGPPeers it would go to have sessions that do not carry the address's family.
    FamilyNotCarried,
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
            NotAnnounced::FamilyNotCarried => f.write_str(
                "the sessions to the BGPPeers it would go to do not carry its address family \
                 (disableMP without dualStackAddressFamily: one family per session)",
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

/// An address not sent to one peer although the advertisements name that peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unsent {
    pub ip: IpAddr,
    /// BGPPeer name.
    pub peer: String,
    pub reason: NotAnnounced,
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
    /// Addresses left out for some peers, with the reason (a Service may be announced to
    /// other peers, or its other family announced).
    pub unsent: Vec<Unsent>,
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
    /// LoadBalancer Services with an address; shared, so handing the view to the status
    /// writer and the metrics costs a reference count per Service, not a deep copy.
    pub services: Vec<Arc<ServiceBgp>>,
    /// Counts the plans of a [`Planner`] (0: made by [`plan`]).
    pub generation: u64,
    /// The route changes per BGPPeer (`namespace/name`; peers without changes left out)
    /// since the plan of `generation - 1`, or `None` when this plan was made from scratch
    /// (compare whole tables then). Lets the sessions send a change of a few routes without
    /// copying or comparing 10,000.
    pub route_changes: Option<BTreeMap<String, RouteChanges>>,
}

/// Routes set (`Some`) or withdrawn (`None`), by prefix.
pub type RouteChanges = BTreeMap<IpNet, Option<RouteAttrs>>;

/// The per-Service view of a plan, as handed to the status writer and the metrics.
pub type PlannedServices = Arc<[Arc<ServiceBgp>]>;

impl NodePlan {
    /// The per-Service view, shared with the plan.
    pub fn shared_services(&self) -> PlannedServices {
        self.services.as_slice().into()
    }
}

/// The TCP MD5 password of a peer: inline, or the `password` key of the Secret it names.
/// A password the kernel would refuse is a configuration error here, so the session is not
/// started (and retried for ever) with it.
pub fn peer_password(snapshot: &Snapshot, peer: &ParsedPeer) -> Result<Option<Password>, String> {
    let Some(source) = &peer.password else {
        return Ok(None);
    };
    let (ns, name) = match source {
        PasswordSource::Inline(p) => {
            return match md5_key_too_long(p.len()) {
                Some(reason) => Err(format!("spec.password: {reason}")),
                None => Ok(Some(Password::new(p.clone()))),
            };
        }
        PasswordSource::Secret { namespace, name } => {
            (namespace.as_deref().unwrap_or(&peer.namespace), name)
        }
    };
    let at = |reason: String| format!("spec.passwordSecret: Secret {ns}/{name} {reason}");
    let Some(secret) = snapshot
        .secrets
        .iter()
        .find(|(k, _)| k.namespace.as_deref() == Some(ns) && k.name == *name)
        .map(|(_, s)| s)
    else {
        // A Secret that exists but could not be decoded is not "not found".
        let object = ObjectRef::new(Kind::Secret, Some(ns), name);
        return Err(match snapshot.invalid.get(&object) {
            Some(reason) if is_base64_error(reason) => at(format!(
                "key {PASSWORD_KEY}: not valid base64 (or another key of its data is not)"
            )),
            Some(reason) => at(format!("cannot be read: {reason}")),
            None => format!("spec.passwordSecret: Secret/{ns}/{name} not found"),
        });
    };
    let password = if let Some(b) = secret.data.as_ref().and_then(|d| d.get(PASSWORD_KEY)) {
        String::from_utf8(b.0.clone()).map_err(|_| at(format!("key {PASSWORD_KEY}: not UTF-8")))?
    } else {
        secret
            .string_data
            .as_ref()
            .and_then(|d| d.get(PASSWORD_KEY))
            .cloned()
            .ok_or_else(|| at(format!("has no key {PASSWORD_KEY:?}")))?
    };
    if let Some(reason) = md5_key_too_long(password.len()) {
        return Err(at(format!("key {PASSWORD_KEY}: {reason}")));
    }
    Ok(Some(Password::new(password)))
}

fn peer_config(
    snapshot: &Snapshot,
    peer: &ParsedPeer,
    router_id: Option<std::net::Ipv4Addr>,
) -> Result<PeerConfig, String> {
    let password = peer_password(snapshot, peer)?;
    let mut config = PeerConfig::from_parsed(peer, password);
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

fn selects(selectors: &[metalnet::labels::Selector], facts: &NodeFacts) -> bool {
    selectors.is_empty() || selectors.iter().any(|s| s.matches(&facts.labels))
}

/// The node-wide part of a plan (exclusion, selected peers without routes) and the node's facts.
fn node_plan(inputs: &Inputs<'_>) -> (NodePlan, NodeFacts) {
    let snapshot = inputs.snapshot;
    let node_obj = snapshot
        .nodes
        .iter()
        .find(|(k, _)| k.name == inputs.node)
        .map(|(_, n)| n);
    let facts = node_obj.map(|n| NodeFacts::of(n)).unwrap_or_default();
    let router_id = node_obj
        .and_then(|n| internal_ip(n, IpChoice::Only { v4: true }))
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
    (out, facts)
}

/// Plans BGP mode for `inputs.node`, every Service from scratch.
pub fn plan(inputs: &Inputs<'_>) -> NodePlan {
    let (mut out, facts) = node_plan(inputs);
    let endpoints = slice_index(inputs.snapshot);
    let keys = Keys::of(inputs.config);
    for svc in inputs.snapshot.services.values() {
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
            out.services.push(Arc::new(s));
        }
    }
    out
}

/// Whether a change set touches only Services and EndpointSlices (and objects planning
/// ignores), so the cached per-Service results of the other Services still hold.
pub fn services_only(changed: &BTreeSet<ObjectRef>) -> bool {
    changed.iter().all(|r| {
        matches!(
            r.kind,
            Kind::Service
                | Kind::EndpointSlice
                | Kind::ServiceL2Status
                | Kind::ServiceBGPStatus
                | Kind::Event
        )
    })
}

/// Plans like [`plan`], but after a change of Services or EndpointSlices only replans the
/// Services concerned and the routes they touch; any other change replans everything.
///
/// The node, `ignore_exclude_label` and the configuration must only change together with a
/// change set that is not [`services_only`] (the configuration is derived from the other kinds).
#[derive(Default)]
pub struct Planner {
    cache: Option<Cache>,
    generation: u64,
}

/// (BGPPeer key, prefix) of a route.
type RouteKey = (String, IpNet);

struct Cache {
    plan: NodePlan,
    facts: NodeFacts,
    keys: Keys,
    /// Object keys of `plan.services`, sorted, index for index.
    service_keys: Vec<ObjectKey>,
    /// The Service (namespace, name) each labelled EndpointSlice belonged to when last seen.
    slice_owners: BTreeMap<ObjectKey, (String, String)>,
    slices_by_service: BTreeMap<(String, String), BTreeSet<ObjectKey>>,
    /// Per route, how many contributions of each advertisement (by index) produce it: the
    /// attributes are the merge of those advertisements, which does not depend on the order.
    route_ads: BTreeMap<RouteKey, BTreeMap<usize, usize>>,
}

impl Planner {
    /// The plan for `inputs`; `changed`: what changed since the previous call (`None`: unknown).
    pub fn plan(
        &mut self,
        inputs: &Inputs<'_>,
        changed: Option<&BTreeSet<ObjectRef>>,
    ) -> &NodePlan {
        let mut cache = match (self.cache.take(), changed) {
            (Some(mut cache), Some(changed)) if services_only(changed) => {
                cache.plan.route_changes = Some(BTreeMap::new());
                cache.update(inputs, changed);
                cache
            }
            _ => Cache::full(inputs),
        };
        self.generation += 1;
        cache.plan.generation = self.generation;
        &self.cache.insert(cache).plan
    }

    /// The last plan made, if any.
    pub fn last(&self) -> Option<&NodePlan> {
        self.cache.as_ref().map(|c| &c.plan)
    }
}

fn slice_owner(k: &ObjectKey, slice: &EndpointSlice) -> Option<(String, String)> {
    let svc = slice
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(SERVICE_NAME_LABEL))?;
    Some((k.namespace.clone()?, svc.clone()))
}

impl Cache {
    fn full(inputs: &Inputs<'_>) -> Cache {
        let (plan, facts) = node_plan(inputs);
        let mut cache = Cache {
            plan,
            facts,
            keys: Keys::of(inputs.config),
            service_keys: Vec::new(),
            slice_owners: BTreeMap::new(),
            slices_by_service: BTreeMap::new(),
            route_ads: BTreeMap::new(),
        };
        for (k, slice) in inputs.snapshot.endpoint_slices.iter() {
            if let Some(owner) = slice_owner(k, slice) {
                cache.own(k, owner);
            }
        }
        let endpoints = slice_index(inputs.snapshot);
        let mut touched = BTreeSet::new();
        for (k, svc) in inputs.snapshot.services.iter() {
            let planned = plan_service(
                inputs,
                &endpoints,
                &cache.keys,
                &cache.facts,
                &cache.plan,
                svc,
            );
            if let Some(s) = planned {
                cache.count(&s, 1, &mut touched);
                cache.service_keys.push(k.clone());
                cache.plan.services.push(Arc::new(s));
            }
        }
        cache.refresh_routes(inputs, touched);
        cache
    }

    fn own(&mut self, slice: &ObjectKey, owner: (String, String)) {
        self.slices_by_service
            .entry(owner.clone())
            .or_default()
            .insert(slice.clone());
        self.slice_owners.insert(slice.clone(), owner);
    }

    fn disown(&mut self, slice: &ObjectKey) -> Option<(String, String)> {
        let owner = self.slice_owners.remove(slice)?;
        if let Some(set) = self.slices_by_service.get_mut(&owner) {
            set.remove(slice);
            if set.is_empty() {
                self.slices_by_service.remove(&owner);
            }
        }
        Some(owner)
    }

    /// Adds (`delta` 1) or removes (-1) the contributions of a Service to the route counts.
    fn count(&mut self, s: &ServiceBgp, delta: isize, touched: &mut BTreeSet<RouteKey>) {
        for c in &s.contributions {
            for (key, p) in &self.plan.peers {
                if !c.peers.contains(&p.name) {
                    continue;
                }
                let route = (key.clone(), c.prefix);
                let ads = self.route_ads.entry(route.clone()).or_default();
                let n = ads.entry(c.advertisement_index).or_default();
                *n = n.saturating_add_signed(delta);
                if *n == 0 {
                    ads.remove(&c.advertisement_index);
                }
                if ads.is_empty() {
                    self.route_ads.remove(&route);
                }
                touched.insert(route);
            }
        }
    }

    /// Recomputes the attributes of these routes from their advertisements, noting what
    /// changed in `plan.route_changes` (when kept).
    fn refresh_routes(&mut self, inputs: &Inputs<'_>, touched: BTreeSet<RouteKey>) {
        for (peer_key, prefix) in touched {
            let Some(peer) = self.plan.peers.get_mut(&peer_key) else {
                continue;
            };
            let change = match self.route_ads.get(&(peer_key.clone(), prefix)) {
                None => peer.routes.remove(&prefix).map(|_| None),
                Some(ads) => {
                    let mut attrs = RouteAttrs::default();
                    for index in ads.keys() {
                        if let Some(ad) = inputs.config.bgp_advertisements.get(*index) {
                            merge(&mut attrs, ad);
                        }
                    }
                    if peer.routes.get(&prefix) == Some(&attrs) {
                        None
                    } else {
                        let noted = self.plan.route_changes.is_some().then(|| attrs.clone());
                        peer.routes.insert(prefix, attrs);
                        Some(noted)
                    }
                }
            };
            if let (Some(change), Some(changes)) = (change, self.plan.route_changes.as_mut()) {
                changes.entry(peer_key).or_default().insert(prefix, change);
            }
        }
    }

    fn update(&mut self, inputs: &Inputs<'_>, changed: &BTreeSet<ObjectRef>) {
        let snapshot = inputs.snapshot;
        let mut affected: BTreeSet<ObjectKey> = BTreeSet::new();
        let service_key = |(namespace, name): (String, String)| ObjectKey {
            namespace: Some(namespace),
            name,
        };
        for r in changed {
            let key = ObjectKey {
                namespace: r.namespace.clone(),
                name: r.name.clone(),
            };
            match r.kind {
                Kind::Service => {
                    affected.insert(key);
                }
                Kind::EndpointSlice => {
                    if let Some(old) = self.disown(&key) {
                        affected.insert(service_key(old));
                    }
                    let owner = snapshot
                        .endpoint_slices
                        .get(&key)
                        .and_then(|slice| slice_owner(&key, slice));
                    if let Some(owner) = owner {
                        self.own(&key, owner.clone());
                        affected.insert(service_key(owner));
                    }
                }
                _ => {}
            }
        }
        // The EndpointSlices of the affected Services only.
        let mut endpoints: SliceIndex<'_> = BTreeMap::new();
        for svc in &affected {
            let Some(namespace) = svc.namespace.clone() else {
                continue;
            };
            let Some(slices) = self.slices_by_service.get(&(namespace, svc.name.clone())) else {
                continue;
            };
            for k in slices {
                if let Some((slice_key, slice)) = snapshot.endpoint_slices.get_key_value(k) {
                    let owner = slice
                        .metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get(SERVICE_NAME_LABEL));
                    if let (Some(ns), Some(owner)) = (slice_key.namespace.as_deref(), owner) {
                        endpoints
                            .entry((ns, owner.as_str()))
                            .or_default()
                            .push(slice);
                    }
                }
            }
        }
        let mut touched = BTreeSet::new();
        for key in affected {
            let at = self.service_keys.binary_search(&key);
            if let Ok(i) = at {
                let old = self.plan.services.remove(i);
                self.service_keys.remove(i);
                self.count(&old, -1, &mut touched);
            }
            let Some(svc) = snapshot.services.get(&key) else {
                continue;
            };
            let planned =
                plan_service(inputs, &endpoints, &self.keys, &self.facts, &self.plan, svc);
            if let Some(s) = planned {
                self.count(&s, 1, &mut touched);
                let i = at.unwrap_or_else(|i| i);
                self.service_keys.insert(i, key);
                self.plan.services.insert(i, Arc::new(s));
            }
        }
        self.refresh_routes(inputs, touched);
    }
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

impl Keys {
    fn of(config: &ParsedConfig) -> Keys {
        Keys {
            pools: config
                .pools
                .iter()
                .map(|p| format!("{}/{}", p.namespace, p.name))
                .collect(),
            advertisements: config
                .bgp_advertisements
                .iter()
                .map(|a| format!("{}/{}", a.namespace, a.name))
                .collect(),
        }
    }
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
        unsent: Vec::new(),
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
        let mut peers = BTreeSet::new();
        for p in plan
            .peers
            .values()
            .filter(|p| ad.peers.is_empty() || ad.peers.contains(&p.name))
        {
            if p.carries(ip) {
                peers.insert(p.name.clone());
            } else {
                let unsent = Unsent {
                    ip,
                    peer: p.name.clone(),
                    reason: NotAnnounced::FamilyNotCarried,
                };
                if !s.unsent.contains(&unsent) {
                    s.unsent.push(unsent);
                }
            }
        }
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
        s.not_announced = Some(if s.unsent.is_empty() {
            NotAnnounced::NoPeer
        } else {
            NotAnnounced::FamilyNotCarried
        });
    }
    Some(s)
}

#[cfg(test)]
mod tests;
