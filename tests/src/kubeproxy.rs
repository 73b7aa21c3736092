//! kube-proxy's own rule sets for ClusterIP Services, reproduced so the service-proxy benchmark
//! can load them into a kernel and compare: the `iptables-restore` input of the iptables mode
//! (`pkg/proxy/iptables/proxier.go`) and the `ip kube-proxy` table of the nftables mode
//! (`pkg/proxy/nftables/proxier.go`), each as a full sync and as the sync that adds one
//! Service. Pure text generation; loading is the caller's business.
//!
//! Chain names carry kube-proxy's hashes, so a generated rule set is what kube-proxy would
//! write for the same Services: iptables `KUBE-SVC-`/`KUBE-SEP-` + the first 16 characters of
//! base32(sha256(...)), nftables `service-`/`endpoint-` + the first 8 and the readable name.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4};

use ipnet::Ipv4Net;
use sha2::{Digest, Sha256};

/// One ClusterIP Service port (TCP) and its ready endpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    pub namespace: String,
    pub name: String,
    pub port_name: String,
    pub cluster_ip: Ipv4Addr,
    pub port: u16,
    pub endpoints: Vec<SocketAddrV4>,
}

impl ServicePort {
    /// kube-proxy's `ServicePortName.String()`: `ns/name:port`.
    pub fn port_name_string(&self) -> String {
        format!("{}/{}:{}", self.namespace, self.name, self.port_name)
    }
}

/// The node-wide settings a kube-proxy instance runs with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cluster {
    /// `--cluster-cidr` (the local-traffic detector): sources outside it are masqueraded.
    pub pod_cidr: Ipv4Net,
    /// The Service CIDR (nftables drops traffic to unallocated ClusterIPs in it).
    pub service_cidr: Ipv4Net,
    /// `--masquerade-bit` 14 -> 0x4000.
    pub masq_mark: u32,
    /// The node's addresses NodePorts answer on (nftables `nodeport-ips`).
    pub node_ips: Vec<Ipv4Addr>,
}

impl Default for Cluster {
    fn default() -> Self {
        Cluster {
            pod_cidr: Ipv4Net::new(Ipv4Addr::new(10, 0, 0, 0), 8).expect("a /8 is valid"),
            service_cidr: Ipv4Net::new(Ipv4Addr::new(10, 96, 0, 0), 12).expect("a /12 is valid"),
            masq_mark: 0x4000,
            node_ips: Vec::new(),
        }
    }
}

/// The first ClusterIP of [`bench_services`]; Service `i` gets this address + `i`.
pub const FIRST_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

/// The Services of the benchmark: `ns{i%100}/svc{i}:p80` -> ClusterIP `10.96.0.10 + i`, port
/// 80, one endpoint (`endpoint(i)`). `n` must fit the /12 Service CIDR (about 1 million).
pub fn bench_services(n: usize, endpoint: impl Fn(usize) -> SocketAddrV4) -> Vec<ServicePort> {
    (0..n).map(|i| bench_service(i, endpoint(i))).collect()
}

/// Service `i` of [`bench_services`].
pub fn bench_service(i: usize, endpoint: SocketAddrV4) -> ServicePort {
    ServicePort {
        namespace: format!("ns{}", i % 100),
        name: format!("svc{i}"),
        port_name: "p80".into(),
        cluster_ip: vip(i),
        port: 80,
        endpoints: vec![endpoint],
    }
}

/// The ClusterIP of Service `i` of [`bench_services`].
pub fn vip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(FIRST_VIP).wrapping_add(i as u32))
}

/// RFC 4648 base32 with the standard alphabet, as Go's `base32.StdEncoding` (padding is
/// never reached by the prefixes kube-proxy keeps).
fn base32(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::with_capacity(bytes.len().div_ceil(5) * 8);
    let (mut buf, mut bits) = (0u32, 0u32);
    for &b in bytes {
        buf = (buf << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((buf >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((buf << (5 - bits)) & 31) as usize] as char);
    }
    while !out.len().is_multiple_of(8) {
        out.push('=');
    }
    out
}

fn sha_base32(input: &str) -> String {
    base32(&Sha256::digest(input.as_bytes()))
}

/// iptables mode: rule generation as `syncProxyRules` writes it.
pub mod iptables {
    use super::*;

    /// Above this many endpoints kube-proxy drops the per-endpoint comments
    /// (`largeClusterEndpointsThreshold`).
    pub const LARGE_CLUSTER_ENDPOINTS: usize = 1000;

    /// `KUBE-SVC-` + base32(sha256(`ns/name:port` + `tcp`))[:16].
    pub fn svc_chain(svc: &ServicePort) -> String {
        format!(
            "KUBE-SVC-{}",
            &sha_base32(&format!("{}tcp", svc.port_name_string()))[..16]
        )
    }

    /// `KUBE-SEP-` + base32(sha256(`ns/name:port` + `tcp` + `ip:port`))[:16].
    pub fn sep_chain(svc: &ServicePort, ep: &SocketAddrV4) -> String {
        format!(
            "KUBE-SEP-{}",
            &sha_base32(&format!("{}tcp{ep}", svc.port_name_string()))[..16]
        )
    }

    /// Whether kube-proxy runs these Services in large-cluster mode.
    pub fn large_cluster(services: &[ServicePort]) -> bool {
        services.iter().map(|s| s.endpoints.len()).sum::<usize>() > LARGE_CLUSTER_ENDPOINTS
    }

    /// The jump rules kube-proxy ensures before each full sync (`iptables -t TABLE -I CHAIN
    /// ARGS...`, prepended), as argument lists for the `iptables` command.
    pub fn jump_rules() -> Vec<Vec<String>> {
        let new = ["-m", "conntrack", "--ctstate", "NEW"];
        let rows: [(&str, &str, &str, &str, &[&str]); 14] = [
            (
                "filter",
                "INPUT",
                "KUBE-EXTERNAL-SERVICES",
                "kubernetes externally-visible service portals",
                &new,
            ),
            (
                "filter",
                "FORWARD",
                "KUBE-EXTERNAL-SERVICES",
                "kubernetes externally-visible service portals",
                &new,
            ),
            (
                "filter",
                "INPUT",
                "KUBE-NODEPORTS",
                "kubernetes health check service ports",
                &[],
            ),
            (
                "filter",
                "FORWARD",
                "KUBE-SERVICES",
                "kubernetes service portals",
                &new,
            ),
            (
                "filter",
                "OUTPUT",
                "KUBE-SERVICES",
                "kubernetes service portals",
                &new,
            ),
            (
                "filter",
                "FORWARD",
                "KUBE-FORWARD",
                "kubernetes forwarding rules",
                &[],
            ),
            (
                "filter",
                "INPUT",
                "KUBE-PROXY-FIREWALL",
                "kubernetes load balancer firewall",
                &new,
            ),
            (
                "filter",
                "OUTPUT",
                "KUBE-PROXY-FIREWALL",
                "kubernetes load balancer firewall",
                &new,
            ),
            (
                "filter",
                "FORWARD",
                "KUBE-PROXY-FIREWALL",
                "kubernetes load balancer firewall",
                &new,
            ),
            (
                "nat",
                "OUTPUT",
                "KUBE-SERVICES",
                "kubernetes service portals",
                &[],
            ),
            (
                "nat",
                "PREROUTING",
                "KUBE-SERVICES",
                "kubernetes service portals",
                &[],
            ),
            (
                "nat",
                "POSTROUTING",
                "KUBE-POSTROUTING",
                "kubernetes postrouting rules",
                &[],
            ),
            // kubelet's copy of the localnet firewall, which kube-proxy ensures too.
            ("filter", "INPUT", "KUBE-FIREWALL", "", &[]),
            ("filter", "OUTPUT", "KUBE-FIREWALL", "", &[]),
        ];
        rows.iter()
            .map(|(table, src, dst, comment, extra)| {
                let mut args: Vec<String> = vec!["-t".into(), (*table).into()];
                args.extend(["-I".to_string(), (*src).to_string()]);
                args.extend(extra.iter().map(|s| s.to_string()));
                if !comment.is_empty() {
                    args.extend(["-m", "comment", "--comment", comment].map(String::from));
                }
                args.extend(["-j".to_string(), (*dst).to_string()]);
                args
            })
            .collect()
    }

    /// The chains the jump rules point at, created (empty) before the jumps, as kube-proxy's
    /// `EnsureChain` does: (table, chain).
    pub fn jump_targets() -> Vec<(&'static str, &'static str)> {
        vec![
            ("filter", "KUBE-EXTERNAL-SERVICES"),
            ("filter", "KUBE-NODEPORTS"),
            ("filter", "KUBE-SERVICES"),
            ("filter", "KUBE-FORWARD"),
            ("filter", "KUBE-PROXY-FIREWALL"),
            ("filter", "KUBE-FIREWALL"),
            ("nat", "KUBE-SERVICES"),
            ("nat", "KUBE-POSTROUTING"),
        ]
    }

    /// A full sync's `iptables-restore --noflush` input for `services`.
    pub fn full(cluster: &Cluster, services: &[ServicePort]) -> String {
        restore(cluster, services, |_| true)
    }

    /// The partial sync after the Services in `changed` (indices into `services`, which
    /// already holds them) were added: every top-level chain is rewritten in full
    /// (KUBE-SERVICES keeps one rule per Service), per-Service chains only for `changed`.
    pub fn partial(cluster: &Cluster, services: &[ServicePort], changed: &[usize]) -> String {
        restore(cluster, services, |i| changed.contains(&i))
    }

    fn restore(
        cluster: &Cluster,
        services: &[ServicePort],
        write_chains: impl Fn(usize) -> bool,
    ) -> String {
        let large = large_cluster(services);
        // kube-proxy formats the mark with Go's %#08x: eight digits after the 0x.
        let mark = format!("{:#010x}", cluster.masq_mark);
        let mut filter_chains = String::new();
        let mut filter_rules = String::new();
        let mut nat_chains = String::new();
        let mut nat_rules = String::new();
        for c in [
            "KUBE-SERVICES",
            "KUBE-EXTERNAL-SERVICES",
            "KUBE-FORWARD",
            "KUBE-NODEPORTS",
            "KUBE-PROXY-FIREWALL",
        ] {
            let _ = writeln!(filter_chains, ":{c} - [0:0]");
        }
        for c in [
            "KUBE-SERVICES",
            "KUBE-NODEPORTS",
            "KUBE-POSTROUTING",
            "KUBE-MARK-MASQ",
        ] {
            let _ = writeln!(nat_chains, ":{c} - [0:0]");
        }
        let _ = writeln!(
            nat_rules,
            "-A KUBE-POSTROUTING -m mark ! --mark {mark}/{mark} -j RETURN"
        );
        let _ = writeln!(nat_rules, "-A KUBE-POSTROUTING -j MARK --xor-mark {mark}");
        let _ = writeln!(
            nat_rules,
            "-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully"
        );
        let _ = writeln!(nat_rules, "-A KUBE-MARK-MASQ -j MARK --or-mark {mark}");
        // localhostNodePorts (the default) keeps kubelet's anti-martian rule.
        let _ = writeln!(filter_chains, ":KUBE-FIREWALL - [0:0]");
        let _ = writeln!(
            filter_rules,
            "-A KUBE-FIREWALL -m comment --comment \"block incoming localnet connections\" -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP"
        );
        for (i, svc) in services.iter().enumerate() {
            let name = svc.port_name_string();
            let svc_chain = svc_chain(svc);
            let (vip, port) = (svc.cluster_ip, svc.port);
            if svc.endpoints.is_empty() {
                let _ = writeln!(
                    filter_rules,
                    "-A KUBE-SERVICES -m comment --comment \"{name} has no endpoints\" -m tcp -p tcp -d {vip} --dport {port} -j REJECT"
                );
                continue;
            }
            let _ = writeln!(
                nat_rules,
                "-A KUBE-SERVICES -m comment --comment \"{name} cluster IP\" -m tcp -p tcp -d {vip} --dport {port} -j {svc_chain}"
            );
            if !write_chains(i) {
                continue;
            }
            let _ = writeln!(nat_chains, ":{svc_chain} - [0:0]");
            let _ = writeln!(
                nat_rules,
                "-A {svc_chain} -m comment --comment \"{name} cluster IP\" -m tcp -p tcp -d {vip} --dport {port} ! -s {} -j KUBE-MARK-MASQ",
                cluster.pod_cidr
            );
            let m = svc.endpoints.len();
            for (k, ep) in svc.endpoints.iter().enumerate() {
                let mut rule = format!("-A {svc_chain}");
                if !large {
                    let _ = write!(rule, " -m comment --comment \"{name} -> {ep}\"");
                }
                if k + 1 < m {
                    let _ = write!(
                        rule,
                        " -m statistic --mode random --probability {:.10}",
                        1.0 / (m - k) as f64
                    );
                }
                let _ = writeln!(nat_rules, "{rule} -j {}", sep_chain(svc, ep));
            }
            for ep in &svc.endpoints {
                let sep = sep_chain(svc, ep);
                let comment = if large {
                    String::new()
                } else {
                    format!(" -m comment --comment {name}")
                };
                let _ = writeln!(nat_chains, ":{sep} - [0:0]");
                let _ = writeln!(
                    nat_rules,
                    "-A {sep}{comment} -s {} -j KUBE-MARK-MASQ",
                    ep.ip()
                );
                let _ = writeln!(
                    nat_rules,
                    "-A {sep}{comment} -m tcp -p tcp -j DNAT --to-destination {ep}"
                );
            }
        }
        let _ = writeln!(
            nat_rules,
            "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS"
        );
        let _ = writeln!(
            filter_rules,
            "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP"
        );
        let _ = writeln!(
            filter_rules,
            "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark {mark}/{mark} -j ACCEPT"
        );
        let _ = writeln!(
            filter_rules,
            "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
        );
        let mut out = String::with_capacity(
            filter_chains.len() + filter_rules.len() + nat_chains.len() + nat_rules.len() + 32,
        );
        out.push_str("*filter\n");
        out.push_str(&filter_chains);
        out.push_str(&filter_rules);
        out.push_str("COMMIT\n*nat\n");
        out.push_str(&nat_chains);
        out.push_str(&nat_rules);
        out.push_str("COMMIT\n");
        out
    }
}

/// nftables mode: the transactions `syncProxyRules` hands to `nft -f -`.
pub mod nft {
    use super::*;

    /// The table kube-proxy owns (`ip kube-proxy`).
    pub const TABLE: &str = "ip kube-proxy";

    fn hash_and_name(name: &str) -> String {
        format!("{}-{name}", &sha_base32(name)[..8])
    }

    fn base_name(svc: &ServicePort) -> String {
        format!("{}/{}/tcp/{}", svc.namespace, svc.name, svc.port_name)
    }

    /// `service-HASH8-ns/name/tcp/port`.
    pub fn service_chain(svc: &ServicePort) -> String {
        format!("service-{}", hash_and_name(&base_name(svc)))
    }

    /// `endpoint-HASH8-ns/name/tcp/port__ip/port`.
    pub fn endpoint_chain(svc: &ServicePort, ep: &SocketAddrV4) -> String {
        format!(
            "endpoint-{}",
            hash_and_name(&format!("{}__{}/{}", base_name(svc), ep.ip(), ep.port()))
        )
    }

    /// The full sync of a fresh kube-proxy (the base objects, then every Service).
    pub fn full(cluster: &Cluster, services: &[ServicePort]) -> String {
        let mut out = String::new();
        setup(&mut out, cluster);
        for svc in services {
            add_service(&mut out, cluster, svc);
        }
        out
    }

    /// The partial sync adding `services` to a table that holds the others already.
    pub fn add(cluster: &Cluster, services: &[ServicePort]) -> String {
        let mut out = String::new();
        for svc in services {
            add_service(&mut out, cluster, svc);
        }
        out
    }

    fn ensure_chain(out: &mut String, chain: &str) {
        let _ = writeln!(out, "add chain {TABLE} {chain}");
        let _ = writeln!(out, "flush chain {TABLE} {chain}");
    }

    fn setup(out: &mut String, cluster: &Cluster) {
        let t = TABLE;
        let mark = format!("{:#x}", cluster.masq_mark);
        let _ = writeln!(
            out,
            "add table {t} {{ comment \"rules for kube-proxy\" ; }}"
        );
        // (name, type, hook, priority): dstnat = -100, srcnat = 100, filter = 0.
        let base = [
            ("filter-prerouting-pre-dnat", "filter", "prerouting", -110),
            ("filter-output-pre-dnat", "filter", "output", -110),
            ("filter-forward", "filter", "forward", 0),
            ("filter-input", "filter", "input", 0),
            ("filter-output", "filter", "output", 0),
            ("nat-output", "nat", "output", -100),
            ("nat-postrouting", "nat", "postrouting", 100),
            ("nat-prerouting", "nat", "prerouting", -100),
        ];
        // The first sync adds and deletes every base chain so stale properties go.
        for (name, ..) in base {
            let _ = writeln!(out, "add chain {t} {name}");
            let _ = writeln!(out, "delete chain {t} {name}");
        }
        for (name, ty, hook, prio) in base {
            let _ = writeln!(
                out,
                "add chain {t} {name} {{ type {ty} hook {hook} priority {prio} ; }}"
            );
            let _ = writeln!(out, "flush chain {t} {name}");
        }
        let jumps = [
            ("filter-input", "nodeport-endpoints-check", "ct state new "),
            ("filter-input", "service-endpoints-check", "ct state new "),
            ("filter-forward", "service-endpoints-check", "ct state new "),
            ("filter-output", "service-endpoints-check", "ct state new "),
            ("filter-forward", "cluster-ips-check", "ct state new "),
            ("filter-output", "cluster-ips-check", "ct state new "),
            (
                "filter-prerouting-pre-dnat",
                "firewall-check",
                "ct state new ",
            ),
            ("filter-output-pre-dnat", "firewall-check", "ct state new "),
            ("nat-output", "services", ""),
            ("nat-prerouting", "services", ""),
            ("nat-postrouting", "masquerading", ""),
        ];
        let mut created: Vec<&str> = Vec::new();
        for (src, dst, extra) in jumps {
            if !created.contains(&dst) {
                ensure_chain(out, dst);
                created.push(dst);
            }
            let _ = writeln!(out, "add rule {t} {src} {extra}jump {dst}");
        }
        for chain in [
            "services",
            "cluster-ips-check",
            "masquerading",
            "mark-for-masquerade",
        ] {
            if !created.contains(&chain) {
                ensure_chain(out, chain);
                created.push(chain);
            }
        }
        let _ = writeln!(
            out,
            "add rule {t} mark-for-masquerade mark set mark or {mark}"
        );
        let _ = writeln!(out, "add rule {t} masquerading mark and {mark} == 0 return");
        let _ = writeln!(out, "add rule {t} masquerading mark set mark xor {mark}");
        let _ = writeln!(out, "add rule {t} masquerading masquerade fully-random");
        let _ = writeln!(
            out,
            "add set {t} cluster-ips {{ type ipv4_addr ; comment \"Active ClusterIPs\" ; }}"
        );
        let _ = writeln!(
            out,
            "add rule {t} cluster-ips-check ip daddr @cluster-ips reject comment \"Reject traffic to invalid ports of ClusterIPs\""
        );
        let _ = writeln!(
            out,
            "add rule {t} cluster-ips-check ip daddr {{ {} }} drop comment \"Drop traffic to unallocated ClusterIPs\"",
            cluster.service_cidr
        );
        let _ = writeln!(
            out,
            "add set {t} nodeport-ips {{ type ipv4_addr ; comment \"IPs that accept NodePort traffic\" ; }}"
        );
        let _ = writeln!(out, "flush set {t} nodeport-ips");
        for ip in &cluster.node_ips {
            let _ = writeln!(out, "add element {t} nodeport-ips {{ {ip} }}");
        }
        let _ = writeln!(
            out,
            "add map {t} no-endpoint-services {{ type ipv4_addr . inet_proto . inet_service : verdict ; comment \"vmap to drop or reject packets to services with no endpoints\" ; }}"
        );
        let _ = writeln!(
            out,
            "add map {t} no-endpoint-nodeports {{ type inet_proto . inet_service : verdict ; comment \"vmap to drop or reject packets to service nodeports with no endpoints\" ; }}"
        );
        let _ = writeln!(
            out,
            "add chain {t} reject-chain {{ comment \"helper for @no-endpoint-services / @no-endpoint-nodeports\" ; }}"
        );
        let _ = writeln!(out, "flush chain {t} reject-chain");
        let _ = writeln!(out, "add rule {t} reject-chain reject");
        let _ = writeln!(
            out,
            "add rule {t} service-endpoints-check ip daddr . meta l4proto . th dport vmap @no-endpoint-services"
        );
        let _ = writeln!(
            out,
            "add rule {t} nodeport-endpoints-check ip daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports"
        );
        let _ = writeln!(
            out,
            "add map {t} firewall-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; comment \"destinations that are subject to LoadBalancerSourceRanges\" ; }}"
        );
        // firewall-check was created with its jump above (ensureChain skips it).
        let _ = writeln!(
            out,
            "add rule {t} firewall-check ip daddr . meta l4proto . th dport vmap @firewall-ips"
        );
        let _ = writeln!(
            out,
            "add map {t} service-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; comment \"ClusterIP, ExternalIP and LoadBalancer IP traffic\" ; }}"
        );
        let _ = writeln!(
            out,
            "add map {t} service-nodeports {{ type inet_proto . inet_service : verdict ; comment \"NodePort traffic\" ; }}"
        );
        let _ = writeln!(
            out,
            "add rule {t} services ip daddr . meta l4proto . th dport vmap @service-ips"
        );
        let _ = writeln!(
            out,
            "add rule {t} services ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports"
        );
        for (kind, name) in [
            ("set", "cluster-ips"),
            ("map", "service-ips"),
            ("map", "firewall-ips"),
            ("map", "no-endpoint-services"),
            ("map", "no-endpoint-nodeports"),
            ("map", "service-nodeports"),
        ] {
            let _ = writeln!(out, "flush {kind} {t} {name}");
        }
    }

    fn add_service(out: &mut String, cluster: &Cluster, svc: &ServicePort) {
        let t = TABLE;
        let (vip, port) = (svc.cluster_ip, svc.port);
        let _ = writeln!(out, "add element {t} cluster-ips {{ {vip} }}");
        if svc.endpoints.is_empty() {
            let _ = writeln!(
                out,
                "add element {t} no-endpoint-services {{ {vip} . tcp . {port} comment \"{}\" : goto reject-chain }}",
                svc.port_name_string()
            );
            return;
        }
        let chain = service_chain(svc);
        ensure_chain(out, &chain);
        // Endpoint chains exist before the vmap that jumps to them (one transaction).
        for ep in &svc.endpoints {
            ensure_chain(out, &endpoint_chain(svc, ep));
        }
        let _ = writeln!(
            out,
            "add rule {t} {chain} ip daddr {vip} ip saddr != {} jump mark-for-masquerade",
            cluster.pod_cidr
        );
        let targets: Vec<String> = svc
            .endpoints
            .iter()
            .enumerate()
            .map(|(k, ep)| format!("{k} : goto {}", endpoint_chain(svc, ep)))
            .collect();
        let _ = writeln!(
            out,
            "add rule {t} {chain} numgen random mod {} vmap {{ {} }}",
            svc.endpoints.len(),
            targets.join(" , ")
        );
        for ep in &svc.endpoints {
            let ep_chain = endpoint_chain(svc, ep);
            let _ = writeln!(
                out,
                "add rule {t} {ep_chain} ip saddr {} jump mark-for-masquerade",
                ep.ip()
            );
            let _ = writeln!(out, "add rule {t} {ep_chain} meta l4proto tcp dnat to {ep}");
        }
        let _ = writeln!(
            out,
            "add element {t} service-ips {{ {vip} . tcp . {port} : goto {chain} }}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(ns: &str, name: &str, vip: [u8; 4], ep: &str) -> ServicePort {
        ServicePort {
            namespace: ns.into(),
            name: name.into(),
            port_name: "p80".into(),
            cluster_ip: Ipv4Addr::from(vip),
            port: 80,
            endpoints: vec![ep.parse().unwrap()],
        }
    }

    #[test]
    fn base32_matches_rfc4648_vectors() {
        assert_eq!(base32(b""), "");
        assert_eq!(base32(b"f"), "MY======");
        assert_eq!(base32(b"fo"), "MZXQ====");
        assert_eq!(base32(b"foob"), "MZXW6YQ=");
        assert_eq!(base32(b"foobar"), "MZXW6YTBOI======");
    }

    #[test]
    fn iptables_chain_names_are_kube_proxys() {
        // Names from kubernetes' proxier_test.go fixtures.
        let svc1 = fixture("ns1", "svc1", [172, 30, 0, 41], "10.180.0.1:80");
        assert_eq!(iptables::svc_chain(&svc1), "KUBE-SVC-XPGD46QRK7WJZT7O");
        assert_eq!(
            iptables::sep_chain(&svc1, &svc1.endpoints[0]),
            "KUBE-SEP-SXIVWICOYRO3J4NJ"
        );
        let svc2 = fixture("ns2", "svc2", [172, 30, 0, 42], "10.180.0.2:80");
        assert_eq!(iptables::svc_chain(&svc2), "KUBE-SVC-GNZBNJ2PO5MGZ6GT");
        assert_eq!(
            iptables::sep_chain(&svc2, &svc2.endpoints[0]),
            "KUBE-SEP-RS4RBKLTHTF2IUXJ"
        );
    }

    #[test]
    fn nft_chain_names_are_kube_proxys() {
        let svc1 = fixture("ns1", "svc1", [172, 30, 0, 41], "10.180.0.1:80");
        assert_eq!(
            nft::service_chain(&svc1),
            "service-ULMVA6XW-ns1/svc1/tcp/p80"
        );
        assert_eq!(
            nft::endpoint_chain(&svc1, &svc1.endpoints[0]),
            "endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80"
        );
        let svc2 = fixture("ns2", "svc2", [172, 30, 0, 42], "10.180.0.2:80");
        assert_eq!(
            nft::service_chain(&svc2),
            "service-42NFTM6N-ns2/svc2/tcp/p80"
        );
        assert_eq!(
            nft::endpoint_chain(&svc2, &svc2.endpoints[0]),
            "endpoint-SGOXE6O3-ns2/svc2/tcp/p80__10.180.0.2/80"
        );
    }

    #[test]
    fn iptables_full_sync_has_kube_proxys_lines() {
        let svc1 = fixture("ns1", "svc1", [172, 30, 0, 41], "10.180.0.1:80");
        let out = iptables::full(&Cluster::default(), std::slice::from_ref(&svc1));
        let expected_nat = "\
*nat
:KUBE-SERVICES - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-SVC-XPGD46QRK7WJZT7O - [0:0]
:KUBE-SEP-SXIVWICOYRO3J4NJ - [0:0]
-A KUBE-POSTROUTING -m mark ! --mark 0x00004000/0x00004000 -j RETURN
-A KUBE-POSTROUTING -j MARK --xor-mark 0x00004000
-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully
-A KUBE-MARK-MASQ -j MARK --or-mark 0x00004000
-A KUBE-SERVICES -m comment --comment \"ns1/svc1:p80 cluster IP\" -m tcp -p tcp -d 172.30.0.41 --dport 80 -j KUBE-SVC-XPGD46QRK7WJZT7O
-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment \"ns1/svc1:p80 cluster IP\" -m tcp -p tcp -d 172.30.0.41 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ
-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment \"ns1/svc1:p80 -> 10.180.0.1:80\" -j KUBE-SEP-SXIVWICOYRO3J4NJ
-A KUBE-SEP-SXIVWICOYRO3J4NJ -m comment --comment ns1/svc1:p80 -s 10.180.0.1 -j KUBE-MARK-MASQ
-A KUBE-SEP-SXIVWICOYRO3J4NJ -m comment --comment ns1/svc1:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.1:80
-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
COMMIT
";
        assert!(out.ends_with(expected_nat), "{out}");
        assert!(
            out.starts_with("*filter\n:KUBE-SERVICES - [0:0]\n"),
            "{out}"
        );
        assert!(out.contains(
            "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark 0x00004000/0x00004000 -j ACCEPT\n"
        ));
    }

    #[test]
    fn iptables_probabilities_split_evenly() {
        let mut svc = fixture("ns4", "svc4", [172, 30, 0, 44], "10.180.0.4:80");
        svc.endpoints.push("10.180.0.5:80".parse().unwrap());
        svc.endpoints.push("10.180.0.6:80".parse().unwrap());
        let out = iptables::full(&Cluster::default(), &[svc]);
        assert!(out.contains("-m statistic --mode random --probability 0.3333333333 -j KUBE-SEP-"));
        assert!(out.contains("-m statistic --mode random --probability 0.5000000000 -j KUBE-SEP-"));
        assert_eq!(out.matches("--probability").count(), 2, "{out}");
    }

    #[test]
    fn large_cluster_mode_drops_endpoint_comments() {
        let ep = |_| SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 2), 8080);
        let small = iptables::full(&Cluster::default(), &bench_services(1000, ep));
        assert!(small.contains("-m comment --comment \"ns9/svc9:p80 -> 203.0.113.2:8080\""));
        let large = iptables::full(&Cluster::default(), &bench_services(1001, ep));
        assert!(!large.contains(" -> 203.0.113.2:8080"));
        assert!(!large.contains("-m comment --comment ns9/svc9:p80 "));
        // The dispatch and masquerade rules keep theirs.
        assert!(large.contains("--comment \"ns9/svc9:p80 cluster IP\""));
    }

    #[test]
    fn iptables_sizes_match_the_layout() {
        let ep = |_| SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 2), 8080);
        let n = 10_000;
        let full = iptables::full(&Cluster::default(), &bench_services(n, ep));
        // Per Service: 3 chain lines... 2 chains + 1 dispatch + 1 masq + 1 jump + 2 SEP rules.
        let rules = full.lines().filter(|l| l.starts_with("-A ")).count();
        assert_eq!(rules, 5 * n + 4 + 1 + 1 + 3);
        let services = bench_services(n + 1, ep);
        let partial = iptables::partial(&Cluster::default(), &services, &[n]);
        let dispatch = partial
            .lines()
            .filter(|l| l.starts_with("-A KUBE-SERVICES "))
            .count();
        assert_eq!(dispatch, n + 2, "every Service plus the nodeports rule");
        assert_eq!(partial.matches(":KUBE-SVC-").count(), 1);
        assert_eq!(partial.matches(":KUBE-SEP-").count(), 1);
        assert!(partial.contains(&iptables::svc_chain(&services[n])));
    }

    #[test]
    fn jump_rules_prepend_into_the_builtin_chains() {
        let rules = iptables::jump_rules();
        assert_eq!(rules.len(), 14);
        assert_eq!(
            rules[10].join(" "),
            "-t nat -I PREROUTING -m comment --comment kubernetes service portals -j KUBE-SERVICES"
        );
        assert!(rules[3].join(" ").contains("-m conntrack --ctstate NEW"));
        for r in &rules {
            let target = r.last().unwrap();
            assert!(
                iptables::jump_targets()
                    .iter()
                    .any(|(t, c)| *t == r[1] && c == target),
                "{r:?}"
            );
        }
    }

    #[test]
    fn nft_full_and_add_have_kube_proxys_lines() {
        let cluster = Cluster {
            node_ips: vec![Ipv4Addr::new(192, 0, 2, 1)],
            ..Cluster::default()
        };
        let svc1 = fixture("ns1", "svc1", [172, 30, 0, 41], "10.180.0.1:80");
        let full = nft::full(&cluster, std::slice::from_ref(&svc1));
        for line in [
            "add table ip kube-proxy { comment \"rules for kube-proxy\" ; }",
            "add chain ip kube-proxy nat-prerouting { type nat hook prerouting priority -100 ; }",
            "add rule ip kube-proxy services ip daddr . meta l4proto . th dport vmap @service-ips",
            "add element ip kube-proxy nodeport-ips { 192.0.2.1 }",
            "add rule ip kube-proxy service-ULMVA6XW-ns1/svc1/tcp/p80 ip daddr 172.30.0.41 ip saddr != 10.0.0.0/8 jump mark-for-masquerade",
            "add rule ip kube-proxy service-ULMVA6XW-ns1/svc1/tcp/p80 numgen random mod 1 vmap { 0 : goto endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 }",
            "add rule ip kube-proxy endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 ip saddr 10.180.0.1 jump mark-for-masquerade",
            "add rule ip kube-proxy endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 meta l4proto tcp dnat to 10.180.0.1:80",
            "add element ip kube-proxy cluster-ips { 172.30.0.41 }",
            "add element ip kube-proxy service-ips { 172.30.0.41 . tcp . 80 : goto service-ULMVA6XW-ns1/svc1/tcp/p80 }",
            "add rule ip kube-proxy masquerading mark and 0x4000 == 0 return",
        ] {
            assert!(full.lines().any(|l| l == line), "missing {line}\n{full}");
        }
        // A chain is flushed right after it is added, as knftables' ensureChain does.
        let chain = "service-ULMVA6XW-ns1/svc1/tcp/p80";
        assert!(full.contains(&format!(
            "add chain ip kube-proxy {chain}\nflush chain ip kube-proxy {chain}\n"
        )));
        let add = nft::add(&cluster, std::slice::from_ref(&svc1));
        assert!(!add.contains("add table"));
        assert_eq!(add.lines().count(), 10, "{add}");
        assert!(full.ends_with(&add));
    }

    #[test]
    fn nft_endpoint_chains_exist_before_the_vmap_that_jumps_to_them() {
        // One transaction: a goto to a chain added later fails with ENOENT.
        let mut svc = fixture("ns4", "svc4", [172, 30, 0, 44], "10.180.0.4:80");
        svc.endpoints.push("10.180.0.5:80".parse().unwrap());
        let add = nft::add(&Cluster::default(), std::slice::from_ref(&svc));
        let vmap = add.find("numgen random mod 2 vmap").unwrap();
        for ep in &svc.endpoints {
            let chain = format!(
                "add chain ip kube-proxy {}\n",
                nft::endpoint_chain(&svc, ep)
            );
            assert!(add.find(&chain).unwrap() < vmap, "{add}");
        }
        assert!(add.contains(" : goto endpoint-") && add.contains(" , 1 : goto endpoint-"));
    }

    #[test]
    fn no_endpoints_reject() {
        let mut svc = fixture("ns6", "svc6", [172, 30, 0, 46], "10.180.0.1:80");
        svc.endpoints.clear();
        let ipt = iptables::full(&Cluster::default(), std::slice::from_ref(&svc));
        assert!(ipt.contains(
            "-A KUBE-SERVICES -m comment --comment \"ns6/svc6:p80 has no endpoints\" -m tcp -p tcp -d 172.30.0.46 --dport 80 -j REJECT"
        ));
        assert!(!ipt.contains("KUBE-SVC-"));
        let nft = nft::add(&Cluster::default(), &[svc]);
        assert!(nft.contains("no-endpoint-services { 172.30.0.46 . tcp . 80"));
    }

    #[test]
    fn bench_services_follow_the_naming() {
        let s = bench_services(3, |i| {
            SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 2), 8080 + i as u16)
        });
        assert_eq!(s[2].port_name_string(), "ns2/svc2:p80");
        assert_eq!(s[2].cluster_ip, Ipv4Addr::new(10, 96, 0, 12));
        assert_eq!(s[2].endpoints[0].port(), 8082);
        assert_eq!(bench_service(150, s[0].endpoints[0]).namespace, "ns50");
        assert_eq!(vip(50_000), Ipv4Addr::new(10, 96, 195, 90));
    }
}
