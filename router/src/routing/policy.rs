//! kube-router's export and import policies (`bgp_policies.go`, `ecmp_vip.go`): pod CIDRs to
//! iBGP peers, and to external peers with `--advertise-pod-cidr`; Service VIPs only to
//! external peers, by flag and per-Service annotation, and only from nodes with a local
//! endpoint under `externalTrafficPolicy: Local`; communities, AS-path prepend and next hop
//! self; import rejects Service VIPs, default routes and the node's custom reject list. Pure.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use metalnet::bgp::RouteAttrs;
use metalnet::model::core::{EndpointSlice, Service};

use super::options::RoutingOptions;
use super::topology::{NodeView, PeerKind, PeerPlan, PeerSpec};

pub const SVC_ADVERTISE_CLUSTER_IP: &str = "kube-router.io/service.advertise.clusterip";
pub const SVC_ADVERTISE_EXTERNAL_IP: &str = "kube-router.io/service.advertise.externalip";
pub const SVC_ADVERTISE_LOADBALANCER_IP: &str = "kube-router.io/service.advertise.loadbalancerip";
/// Deprecated: present means "do not advertise the load-balancer IPs".
pub const SVC_SKIP_LB_IPS: &str = "kube-router.io/service.skiplbips";
pub const SVC_LOCAL: &str = "kube-router.io/service.local";
/// The EndpointSlice label naming its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Which kind of Service address a VIP is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum VipKind {
    ClusterIp,
    ExternalIp,
    LoadBalancer,
}

/// A Service address, with whether this node may advertise it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServiceVip {
    pub address: IpAddr,
    pub kind: VipKind,
    /// `NAMESPACE/NAME` of the Service (for explain).
    pub service: String,
    /// Flags and the per-Service annotations allow advertising it.
    pub advertise: bool,
    /// Local traffic policy: only nodes with a local ready endpoint advertise it.
    pub local_only: bool,
    pub has_local_endpoint: bool,
}

impl ServiceVip {
    /// This node announces the VIP (to external peers).
    pub fn announced(&self) -> bool {
        self.advertise && (!self.local_only || self.has_local_endpoint)
    }
}

/// Go's `strconv.ParseBool`.
fn parse_go_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// kube-router's `shouldAdvertiseService`: the per-Service annotation when present (one
/// that does not parse as a boolean counts as false, as there), else the flag.
fn advertise(svc: &Service, annotation: &str, flag: bool) -> bool {
    match svc
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(annotation))
    {
        Some(v) => parse_go_bool(v.trim()).unwrap_or(false),
        None => flag,
    }
}

fn parse_addresses<'a>(list: impl IntoIterator<Item = &'a String>) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = Vec::new();
    for s in list {
        if let Ok(ip) = s.trim().parse::<IpAddr>()
            && !ip.is_unspecified()
            && !out.contains(&ip)
        {
            out.push(ip);
        }
    }
    out
}

/// Every Service address in the cluster, with this node's view of it: ClusterIP(s),
/// `externalIPs` and `status.loadBalancer.ingress[].ip` of every Service with a proxy (not
/// headless, not ExternalName). All of them are rejected on import, announced or not.
/// Sorted, so the result does not depend on the input order.
pub fn service_vips<'a>(
    opts: &RoutingOptions,
    node: &str,
    services: impl IntoIterator<Item = &'a Service>,
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
) -> Vec<ServiceVip> {
    // (namespace, service name) of every Service with a ready endpoint on this node.
    let mut local: std::collections::BTreeSet<(String, String)> = Default::default();
    for slice in slices {
        let Some(svc) = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
        else {
            continue;
        };
        let on_node_ready = slice.endpoints.iter().any(|e| {
            e.node_name.as_deref() == Some(node)
                && e.conditions.as_ref().and_then(|c| c.ready) != Some(false)
        });
        if on_node_ready {
            local.insert((
                slice.metadata.namespace.clone().unwrap_or_default(),
                svc.clone(),
            ));
        }
    }

    let mut out = Vec::new();
    for svc in services {
        let Some(spec) = svc.spec.as_ref() else {
            continue;
        };
        let ty = spec.type_.as_deref().unwrap_or("ClusterIP");
        // kube-router also skips a Service whose clusterIP is still blank; the API server
        // never leaves one blank, but the state directory may, and its external and
        // load-balancer addresses are still the Service's.
        if ty == "ExternalName" || spec.cluster_ip.as_deref() == Some("None") {
            continue;
        }
        let namespace = svc.metadata.namespace.clone().unwrap_or_default();
        let name = svc.metadata.name.clone().unwrap_or_default();
        let has_local_endpoint = local.contains(&(namespace.clone(), name.clone()));
        let service = format!("{namespace}/{name}");
        let svc_local = svc
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(SVC_LOCAL))
            .is_some_and(|v| v.trim() == "true");
        let etp_local = spec.external_traffic_policy.as_deref() == Some("Local") || svc_local;
        let itp_local = spec.internal_traffic_policy.as_deref() == Some("Local") || svc_local;
        let mut push = |address: IpAddr, kind: VipKind, adv: bool, local_only: bool| {
            out.push(ServiceVip {
                address,
                kind,
                service: service.clone(),
                advertise: adv,
                local_only,
                has_local_endpoint,
            })
        };

        let cluster_ips = match spec.cluster_ips.as_deref() {
            Some(ips) if !ips.is_empty() => parse_addresses(ips),
            _ => parse_addresses(spec.cluster_ip.iter()),
        };
        let adv = advertise(svc, SVC_ADVERTISE_CLUSTER_IP, opts.advertise_cluster_ip);
        for ip in cluster_ips {
            push(ip, VipKind::ClusterIp, adv, itp_local);
        }

        let adv = advertise(svc, SVC_ADVERTISE_EXTERNAL_IP, opts.advertise_external_ip);
        for ip in parse_addresses(spec.external_ips.iter().flatten()) {
            push(ip, VipKind::ExternalIp, adv, etp_local);
        }

        if ty == "LoadBalancer" {
            let skip = svc
                .metadata
                .annotations
                .as_ref()
                .is_some_and(|a| a.contains_key(SVC_SKIP_LB_IPS));
            let adv = !skip
                && advertise(
                    svc,
                    SVC_ADVERTISE_LOADBALANCER_IP,
                    opts.advertise_loadbalancer_ip,
                );
            let ingress = svc
                .status
                .as_ref()
                .and_then(|s| s.load_balancer.as_ref())
                .and_then(|lb| lb.ingress.as_ref());
            for ip in parse_addresses(ingress.into_iter().flatten().filter_map(|i| i.ip.as_ref())) {
                push(ip, VipKind::LoadBalancer, adv, etp_local);
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

fn host_prefix(ip: IpAddr) -> IpNet {
    IpNet::from(ip)
}

/// What `peer` is sent: this node's own routes allowed to it and, on a route reflector,
/// the routes it reflects to this peer (`reflected`, already chosen per peer by
/// [`super::loc_rib`]). kube-router's export policy: pod CIDRs to the other nodes, and to
/// external peers with `--advertise-pod-cidr`; Service VIPs only to external peers and only
/// where announced; towards external peers the node's communities, its AS-path prepend
/// and, with `--override-nexthop`, next hop self. A route reflector keeps these policies
/// (kube-router installs none on one, which leaks VIPs to nodes and imports default
/// routes there) and adds what it reflects.
pub fn export_table(
    opts: &RoutingOptions,
    plan: &PeerPlan,
    local: &NodeView,
    peer: &PeerSpec,
    vips: &[ServiceVip],
    reflected: &BTreeMap<IpNet, RouteAttrs>,
) -> BTreeMap<IpNet, RouteAttrs> {
    let mut out = BTreeMap::new();
    if plan.local_asn.is_none() {
        return out;
    }
    let external = peer.is_external();
    // kube-router's actions (communities, prepend, next hop self) sit on its statements
    // towards external peers only; routes to the other nodes go out plain.
    let own = |next_hop: Option<IpAddr>| {
        if !external {
            return RouteAttrs {
                next_hop,
                ..RouteAttrs::default()
            };
        }
        let mut communities = local.bgp.communities.clone();
        communities.sort_unstable();
        communities.dedup();
        RouteAttrs {
            // Next hop self (the session's address) on request; else this node's own
            // address of the route's family.
            next_hop: if opts.override_nexthop {
                None
            } else {
                next_hop
            },
            communities,
            as_path: match local.bgp.path_prepend {
                Some((asn, n)) => vec![asn; usize::from(n)],
                None => Vec::new(),
            },
            ..RouteAttrs::default()
        }
    };
    if matches!(peer.kind, PeerKind::Node { .. }) || opts.advertise_pod_cidr {
        for cidr in &local.pod_cidrs {
            // A family this node has no address of cannot be given a next hop.
            if let Some(nh) = local.address_for(cidr) {
                out.insert(cidr.trunc(), own(Some(nh)));
            }
        }
    }
    if external {
        for vip in vips.iter().filter(|v| v.announced()) {
            let prefix = host_prefix(vip.address);
            if let Some(nh) = local.address_for(&prefix) {
                out.entry(prefix).or_insert_with(|| own(Some(nh)));
            }
        }
    }
    if plan.cluster_id.is_some() {
        for (prefix, attrs) in reflected {
            out.entry(*prefix).or_insert_with(|| attrs.clone());
        }
    }
    out
}

/// Why a received route is not imported, or `None` when it is. kube-router's import policy
/// (Service VIPs, `0.0.0.0/0`, `::/0`, the node's `customimportreject` CIDRs with every
/// prefix length from theirs to 32, as its prefix set matches them) plus this node's own
/// pod CIDRs (and anything inside them), which must stay local.
pub fn import_rejects(prefix: &IpNet, local: &NodeView, vips: &[ServiceVip]) -> Option<String> {
    if prefix.prefix_len() == 0 {
        return Some(format!("{prefix} is a default route (never imported)"));
    }
    if prefix.prefix_len() == prefix.max_prefix_len()
        && let Some(v) = vips.iter().find(|v| v.address == prefix.addr())
    {
        return Some(format!(
            "{prefix} is a Service address ({:?} of {})",
            v.kind, v.service
        ));
    }
    for r in &local.bgp.import_reject {
        let same_family = matches!(
            (r, prefix),
            (IpNet::V4(_), IpNet::V4(_)) | (IpNet::V6(_), IpNet::V6(_))
        );
        if same_family
            && r.contains(&prefix.network())
            && prefix.prefix_len() >= r.prefix_len()
            && prefix.prefix_len() <= 32
        {
            return Some(format!(
                "{prefix} is covered by {} {r} (lengths /{}../32)",
                super::annotations::CUSTOM_IMPORT_REJECT,
                r.prefix_len()
            ));
        }
    }
    if let Some(own) = local.pod_cidrs.iter().find(|c| c.contains(prefix)) {
        return Some(format!("{prefix} is inside this node's own pod CIDR {own}"));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::options::ExternalPeer;
    use crate::routing::topology::plan_peers;
    use crate::routing::topology::testing::{node, with};
    use serde_json::json;

    fn svc(v: serde_json::Value) -> Service {
        serde_json::from_value(v).unwrap()
    }

    fn slice(ns: &str, svc: &str, eps: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(json!({
            "metadata": {"name": format!("{svc}-x"), "namespace": ns,
                         "labels": {"kubernetes.io/service-name": svc}},
            "addressType": "IPv4",
            "endpoints": eps,
        }))
        .unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn lb(name: &str, extra: serde_json::Value) -> Service {
        let mut v = json!({
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10", "fd00:96::10"],
                     "externalIPs": ["198.51.100.20"]},
            "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.10"}, {"hostname": "lb.example"}]}},
        });
        merge(&mut v, extra);
        svc(v)
    }

    fn merge(a: &mut serde_json::Value, b: serde_json::Value) {
        match (a, b) {
            (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
                for (k, v) in b {
                    merge(a.entry(k).or_insert(serde_json::Value::Null), v);
                }
            }
            (a, b) => *a = b,
        }
    }

    #[test]
    fn vips_by_flag() {
        let s = lb("web", json!({}));
        let o = RoutingOptions::default();
        let v = service_vips(&o, "n1", [&s], []);
        assert_eq!(v.len(), 4);
        assert!(v.iter().all(|v| !v.advertise && v.service == "default/web"));
        let kinds: Vec<_> = v.iter().map(|v| (v.address, v.kind)).collect();
        assert!(kinds.contains(&(ip("10.96.0.10"), VipKind::ClusterIp)));
        assert!(kinds.contains(&(ip("fd00:96::10"), VipKind::ClusterIp)));
        assert!(kinds.contains(&(ip("198.51.100.20"), VipKind::ExternalIp)));
        assert!(kinds.contains(&(ip("203.0.113.10"), VipKind::LoadBalancer)));
        let o = RoutingOptions {
            advertise_loadbalancer_ip: true,
            ..RoutingOptions::default()
        };
        let v = service_vips(&o, "n1", [&s], []);
        let adv: Vec<_> = v.iter().filter(|v| v.announced()).map(|v| v.kind).collect();
        assert_eq!(adv, vec![VipKind::LoadBalancer]);
        let o = RoutingOptions {
            advertise_cluster_ip: true,
            advertise_external_ip: true,
            advertise_loadbalancer_ip: true,
            ..RoutingOptions::default()
        };
        assert!(
            service_vips(&o, "n1", [&s], [])
                .iter()
                .all(ServiceVip::announced)
        );
    }

    #[test]
    fn vips_by_annotation() {
        let s = lb(
            "web",
            json!({"metadata": {"annotations": {
                SVC_ADVERTISE_CLUSTER_IP: "true",
                SVC_ADVERTISE_EXTERNAL_IP: "maybe",
                SVC_ADVERTISE_LOADBALANCER_IP: "false",
            }}}),
        );
        let o = RoutingOptions {
            advertise_external_ip: true,
            advertise_loadbalancer_ip: true,
            ..RoutingOptions::default()
        };
        let v = service_vips(&o, "n1", [&s], []);
        let adv: Vec<_> = v.iter().filter(|v| v.advertise).map(|v| v.kind).collect();
        // clusterip by annotation; externalip: the annotation does not parse, which counts
        // as false in kube-router; loadbalancerip off by annotation.
        assert_eq!(adv, vec![VipKind::ClusterIp, VipKind::ClusterIp]);
        let s = lb(
            "web",
            json!({"metadata": {"annotations": {SVC_SKIP_LB_IPS: ""}}}),
        );
        let v = service_vips(&o, "n1", [&s], []);
        assert!(
            v.iter()
                .filter(|v| v.kind == VipKind::LoadBalancer)
                .all(|v| !v.advertise)
        );
    }

    #[test]
    fn headless_externalname_and_plain_services() {
        let o = RoutingOptions {
            advertise_cluster_ip: true,
            advertise_loadbalancer_ip: true,
            ..RoutingOptions::default()
        };
        let headless = svc(json!({"metadata": {"name": "h", "namespace": "d"},
            "spec": {"clusterIP": "None", "externalIPs": ["198.51.100.1"]}}));
        let ext = svc(json!({"metadata": {"name": "e", "namespace": "d"},
            "spec": {"type": "ExternalName", "externalName": "x.example"}}));
        let plain = svc(json!({"metadata": {"name": "p", "namespace": "d"},
            "spec": {"clusterIP": "10.96.0.5"},
            "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.99"}]}}}));
        let nospec = svc(json!({"metadata": {"name": "n", "namespace": "d"}}));
        let v = service_vips(&o, "n1", [&headless, &ext, &plain, &nospec], []);
        // A ClusterIP Service's load-balancer status is not read.
        assert_eq!(v.len(), 1);
        assert_eq!(
            (v[0].address, v[0].kind),
            (ip("10.96.0.5"), VipKind::ClusterIp)
        );
    }

    #[test]
    fn local_traffic_policy_needs_a_ready_local_endpoint() {
        let o = RoutingOptions {
            advertise_loadbalancer_ip: true,
            advertise_cluster_ip: true,
            ..RoutingOptions::default()
        };
        let s = lb("web", json!({"spec": {"externalTrafficPolicy": "Local"}}));
        let here = slice(
            "default",
            "web",
            json!([
                {"addresses": ["10.244.1.5"], "nodeName": "n1"},
                {"addresses": ["10.244.2.5"], "nodeName": "n2", "conditions": {"ready": false}},
            ]),
        );
        let other_ns = slice(
            "other",
            "web",
            json!([{"addresses": ["10.244.3.5"], "nodeName": "n3"}]),
        );
        let lbv = |node: &str| {
            service_vips(&o, node, [&s], [&here, &other_ns])
                .into_iter()
                .find(|v| v.kind == VipKind::LoadBalancer)
                .unwrap()
        };
        assert!(lbv("n1").local_only && lbv("n1").has_local_endpoint && lbv("n1").announced());
        assert!(!lbv("n2").announced(), "its endpoint is not ready");
        assert!(
            !lbv("n3").announced(),
            "its endpoint belongs to another namespace's Service"
        );
        // ClusterIPs follow internalTrafficPolicy, not externalTrafficPolicy.
        let c = service_vips(&o, "n2", [&s], [&here]);
        assert!(
            c.iter()
                .filter(|v| v.kind == VipKind::ClusterIp)
                .all(|v| !v.local_only && v.announced())
        );
        let s = lb("web", json!({"spec": {"internalTrafficPolicy": "Local"}}));
        let c = service_vips(&o, "n2", [&s], [&here]);
        assert!(
            c.iter()
                .filter(|v| v.kind == VipKind::ClusterIp)
                .all(|v| v.local_only && !v.announced())
        );
        assert!(
            c.iter()
                .filter(|v| v.kind == VipKind::LoadBalancer)
                .all(|v| v.announced())
        );
        // The service.local annotation makes every address local.
        let s = lb(
            "web",
            json!({"metadata": {"annotations": {SVC_LOCAL: "true"}}}),
        );
        let c = service_vips(&o, "n2", [&s], [&here]);
        assert!(c.iter().all(|v| v.local_only && !v.announced()));
    }

    #[test]
    fn vips_do_not_depend_on_order() {
        let a = lb("a", json!({}));
        let b = lb(
            "b",
            json!({"spec": {"clusterIP": "10.96.0.11", "clusterIPs": ["10.96.0.11"]}}),
        );
        let o = RoutingOptions::default();
        assert_eq!(
            service_vips(&o, "n", [&a, &b], []),
            service_vips(&o, "n", [&b, &a], [])
        );
    }

    fn setup() -> (NodeView, Vec<NodeView>, RoutingOptions) {
        let local = with(
            node(
                "n1",
                &["192.0.2.1", "2001:db8::1"],
                &["10.244.1.0/24", "fd00:1::/64"],
            ),
            |b| {
                b.communities = vec![0xffff_ff01, 100];
                b.path_prepend = Some((64512, 2));
            },
        );
        let nodes = vec![
            local.clone(),
            node("n2", &["192.0.2.2"], &["10.244.2.0/24"]),
        ];
        let o = RoutingOptions {
            global_peers: vec![ExternalPeer {
                address: ip("198.51.100.1"),
                asn: 65100,
                password: None,
                port: 179,
                multihop_ttl: None,
                local_address: None,
            }],
            ..RoutingOptions::default()
        };
        (local, nodes, o)
    }

    fn vip(addr: &str, advertise: bool) -> ServiceVip {
        ServiceVip {
            address: ip(addr),
            kind: VipKind::LoadBalancer,
            service: "default/web".into(),
            advertise,
            local_only: false,
            has_local_endpoint: false,
        }
    }

    #[test]
    fn exports_to_nodes_and_external_peers() {
        let (local, nodes, o) = setup();
        let plan = plan_peers(&o, &local, &nodes);
        let vips = vec![vip("203.0.113.10", true), vip("203.0.113.11", false)];
        let node_peer = &plan.peers[&ip("192.0.2.2")];
        let t = export_table(&o, &plan, &local, node_peer, &vips, &BTreeMap::new());
        assert_eq!(
            t.keys().copied().collect::<Vec<_>>(),
            vec![net("10.244.1.0/24"), net("fd00:1::/64")]
        );
        assert_eq!(t[&net("10.244.1.0/24")].next_hop, Some(ip("192.0.2.1")));
        assert_eq!(t[&net("fd00:1::/64")].next_hop, Some(ip("2001:db8::1")));
        assert!(t[&net("10.244.1.0/24")].communities.is_empty());
        assert!(
            t[&net("10.244.1.0/24")].as_path.is_empty(),
            "no prepend towards nodes"
        );

        let ext = &plan.peers[&ip("198.51.100.1")];
        let t = export_table(&o, &plan, &local, ext, &vips, &BTreeMap::new());
        assert_eq!(
            t.keys().copied().collect::<Vec<_>>(),
            vec![
                net("10.244.1.0/24"),
                net("203.0.113.10/32"),
                net("fd00:1::/64")
            ]
        );
        assert_eq!(t[&net("203.0.113.10/32")].next_hop, Some(ip("192.0.2.1")));
        assert_eq!(t[&net("203.0.113.10/32")].as_path, vec![64512, 64512]);
        assert_eq!(
            t[&net("203.0.113.10/32")].communities,
            vec![100, 0xffff_ff01]
        );
        assert_eq!(t[&net("10.244.1.0/24")].communities, vec![100, 0xffff_ff01]);

        let no_pods = RoutingOptions {
            advertise_pod_cidr: false,
            override_nexthop: true,
            ..o.clone()
        };
        let t = export_table(&no_pods, &plan, &local, ext, &vips, &BTreeMap::new());
        assert_eq!(
            t.keys().copied().collect::<Vec<_>>(),
            vec![net("203.0.113.10/32")]
        );
        assert_eq!(t[&net("203.0.113.10/32")].next_hop, None, "next hop self");
    }

    #[test]
    fn family_without_address_is_not_exported() {
        let local = node("n1", &["192.0.2.1"], &["10.244.1.0/24", "fd00:1::/64"]);
        let nodes = vec![local.clone(), node("n2", &["192.0.2.2"], &[])];
        let o = RoutingOptions::default();
        let plan = plan_peers(&o, &local, &nodes);
        let t = export_table(
            &o,
            &plan,
            &local,
            &plan.peers[&ip("192.0.2.2")],
            &[],
            &BTreeMap::new(),
        );
        assert_eq!(
            t.keys().copied().collect::<Vec<_>>(),
            vec![net("10.244.1.0/24")]
        );
    }

    #[test]
    fn reflected_routes_only_on_a_reflector_and_own_routes_win() {
        let (local, nodes, o) = setup();
        let mut reflected = BTreeMap::new();
        reflected.insert(
            net("10.244.2.0/24"),
            RouteAttrs {
                next_hop: Some(ip("192.0.2.2")),
                ..RouteAttrs::default()
            },
        );
        reflected.insert(
            net("10.244.1.0/24"),
            RouteAttrs {
                next_hop: Some(ip("192.0.2.9")),
                ..RouteAttrs::default()
            },
        );
        let plan = plan_peers(&o, &local, &nodes);
        let peer = &plan.peers[&ip("192.0.2.2")];
        assert!(
            !export_table(&o, &plan, &local, peer, &[], &reflected)
                .contains_key(&net("10.244.2.0/24"))
        );
        let rr = with(local.clone(), |b| {
            b.rr_server = Some("0.0.0.1".parse().unwrap())
        });
        let plan = plan_peers(&o, &rr, &nodes);
        let t = export_table(
            &o,
            &plan,
            &rr,
            &plan.peers[&ip("192.0.2.2")],
            &[],
            &reflected,
        );
        assert_eq!(t[&net("10.244.2.0/24")].next_hop, Some(ip("192.0.2.2")));
        assert_eq!(t[&net("10.244.1.0/24")].next_hop, Some(ip("192.0.2.1")));
    }

    #[test]
    fn nothing_exported_when_bgp_does_not_run() {
        let (local, nodes, o) = setup();
        let mut plan = plan_peers(&o, &local, &nodes);
        let peer = plan.peers[&ip("192.0.2.2")].clone();
        plan.local_asn = None;
        assert!(export_table(&o, &plan, &local, &peer, &[], &BTreeMap::new()).is_empty());
    }

    #[test]
    fn import_rejects_as_kube_router() {
        let local = with(node("n1", &["192.0.2.1"], &["10.244.1.0/24"]), |b| {
            b.import_reject = vec![net("10.1.0.0/16"), net("2001:db8::/16")];
        });
        let vips = vec![vip("203.0.113.10", false), vip("fd00:96::10", false)];
        let r = |s: &str| import_rejects(&net(s), &local, &vips);
        assert!(r("0.0.0.0/0").unwrap().contains("default route"));
        assert!(r("::/0").is_some());
        assert!(r("203.0.113.10/32").unwrap().contains("Service address"));
        assert!(r("fd00:96::10/128").is_some());
        assert!(
            r("203.0.113.0/24").is_none(),
            "VIPs match as host routes only"
        );
        assert!(r("10.1.0.0/16").unwrap().contains("customimportreject"));
        assert!(r("10.1.2.0/24").is_some());
        assert!(r("10.1.2.3/32").is_some());
        assert!(r("10.0.0.0/8").is_none(), "a shorter prefix is not covered");
        assert!(r("2001:db8:1::/32").is_some());
        assert!(
            r("2001:db8:1::/48").is_none(),
            "kube-router's set stops at /32, for IPv6 too"
        );
        assert!(r("10.244.1.0/24").unwrap().contains("own pod CIDR"));
        assert!(r("10.244.1.128/25").is_some());
        assert!(r("10.244.2.0/24").is_none());
        assert!(
            r("10.244.0.0/16").is_none(),
            "an aggregate of our CIDR is fine"
        );
    }

    proptest::proptest! {
        #[test]
        fn vips_independent_of_object_order(
            specs in proptest::collection::vec((0u8..4, 0u8..3, proptest::bool::ANY, proptest::bool::ANY), 1..6),
            eps in proptest::collection::vec((0u8..6, 0u8..3, proptest::option::of(proptest::bool::ANY)), 0..6),
            rot in 0usize..6,
        ) {
            let services: Vec<Service> = specs.iter().enumerate().map(|(i, (ty, pol, lb, local))| {
                let ty = ["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"][usize::from(*ty)];
                let pol = ["Cluster", "Local", "Local"][usize::from(*pol)];
                let mut v = json!({
                    "metadata": {"name": format!("s{i}"), "namespace": "d"},
                    "spec": {"type": ty, "clusterIP": format!("10.96.0.{i}"),
                             "externalTrafficPolicy": pol, "internalTrafficPolicy": pol,
                             "externalIPs": [format!("198.51.100.{}", i % 2)]},
                });
                if *lb {
                    merge(&mut v, json!({"status": {"loadBalancer": {"ingress": [{"ip": format!("203.0.113.{i}")}]}}}));
                }
                if *local {
                    merge(&mut v, json!({"metadata": {"annotations": {SVC_LOCAL: "true"}}}));
                }
                svc(v)
            }).collect();
            let slices: Vec<EndpointSlice> = eps.iter().map(|(s, n, ready)| {
                let mut e = json!({"addresses": ["10.244.0.1"], "nodeName": format!("n{n}")});
                if let Some(r) = ready {
                    merge(&mut e, json!({"conditions": {"ready": r}}));
                }
                slice("d", &format!("s{s}"), json!([e]))
            }).collect();
            let o = RoutingOptions { advertise_loadbalancer_ip: true, ..RoutingOptions::default() };
            let a = service_vips(&o, "n1", &services, &slices);
            let mut rs = services.clone();
            let len = rs.len();
            rs.rotate_left(rot % len);
            rs.reverse();
            let mut rsl = slices.clone();
            rsl.reverse();
            proptest::prop_assert_eq!(a, service_vips(&o, "n1", &rs, &rsl));
        }
    }
}
