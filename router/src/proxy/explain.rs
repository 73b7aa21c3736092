//! The text of `metalnet-router explain service NS/NAME` and `metalnet-router dump`. Pure.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;

use super::abi::{Scope, SlotKey, SvcKey, SvcVal, backend_flags, svc_flags};
use super::model::{BackendView, Desired, EntryView, FrontendKind, FrontendView};
use super::state::MapState;

fn hostport(addr: IpAddr, port: u16) -> String {
    match addr {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

/// `MN_SVC_F_*` as words.
pub fn svc_flag_names(flags: u16) -> String {
    const NAMES: [(u16, &str); 10] = [
        (svc_flags::CLUSTER_IP, "cluster-ip"),
        (svc_flags::NODEPORT, "nodeport"),
        (svc_flags::EXTERNAL_IP, "external-ip"),
        (svc_flags::LOADBALANCER, "loadbalancer"),
        (svc_flags::LOCAL, "local"),
        (svc_flags::HAS_INTERNAL, "has-internal"),
        (svc_flags::AFFINITY, "affinity"),
        (svc_flags::SRC_RANGE, "src-range"),
        (svc_flags::MAGLEV, "maglev"),
        (svc_flags::TERMINATING, "terminating"),
    ];
    let mut out: Vec<String> = NAMES
        .iter()
        .filter(|(f, _)| flags & f != 0)
        .map(|(_, n)| n.to_string())
        .collect();
    let known = NAMES.iter().fold(0, |a, (f, _)| a | f);
    if flags & !known != 0 {
        out.push(format!("{:#x}", flags & !known));
    }
    if out.is_empty() {
        "-".into()
    } else {
        out.join(",")
    }
}

/// `MN_BE_F_*` as words.
pub fn backend_flag_names(flags: u8) -> String {
    let mut out = Vec::new();
    if flags & backend_flags::LOCAL != 0 {
        out.push("local".to_string());
    }
    if flags & backend_flags::TERMINATING != 0 {
        out.push("terminating".to_string());
    }
    let rest = flags & !(backend_flags::LOCAL | backend_flags::TERMINATING);
    if rest != 0 {
        out.push(format!("{rest:#x}"));
    }
    if out.is_empty() {
        "-".into()
    } else {
        out.join(",")
    }
}

fn scope_name(s: Scope) -> &'static str {
    match s {
        Scope::External => "external",
        Scope::Internal => "internal",
    }
}

/// Who an entry serves and what happens with no backend.
fn entry_meaning(kind: FrontendKind, e: &EntryView) -> String {
    let who = match (e.scope, kind) {
        (Scope::Internal, _) => "in-cluster clients",
        (Scope::External, FrontendKind::ClusterIp) => "every client",
        (Scope::External, _) if e.val.flags & svc_flags::HAS_INTERNAL != 0 => "outside clients",
        (Scope::External, _) => "every client",
    };
    let which = if e.val.flags & svc_flags::LOCAL != 0 {
        "endpoints on this node"
    } else {
        "endpoints on every node"
    };
    let mut s = format!(
        "{}: {} backend{} ({which}) for {who}",
        scope_name(e.scope),
        e.val.count,
        if e.val.count == 1 { "" } else { "s" },
    );
    if e.val.flags & svc_flags::TERMINATING != 0 {
        s.push_str(", terminating ones as none is ready");
    }
    if e.val.count == 0 {
        s.push_str(if e.val.flags & svc_flags::LOCAL != 0 {
            ": traffic is dropped"
        } else {
            ": connections are rejected"
        });
    }
    if e.val.flags & svc_flags::MAGLEV != 0 {
        let _ = write!(s, ", Maglev row {}", e.val.maglev_row);
    }
    if e.val.flags & svc_flags::SRC_RANGE != 0 {
        s.push_str(", source ranges checked");
    }
    s
}

/// Whether the live maps hold an entry as desired.
fn live_status(live: &MapState, f: &FrontendView, e: &EntryView) -> String {
    let key = SvcKey {
        addr: f.addr,
        port: f.port,
        proto: f.proto,
        scope: e.scope,
    };
    let Some(v) = live.svc.get(&key) else {
        return "not in the maps yet".into();
    };
    if *v != e.val {
        return format!(
            "maps differ: rev {} count {} flags {}",
            v.rev_id,
            v.count,
            svc_flag_names(v.flags)
        );
    }
    let slots_ok = e.slots.iter().enumerate().all(|(i, id)| {
        live.slot.get(&SlotKey {
            rev_id: e.val.rev_id,
            slot: i as u16 + 1,
            scope: e.scope,
        }) == Some(id)
            && live.backend.contains_key(id)
    });
    if slots_ok {
        "in the maps".into()
    } else {
        "maps differ: slots or backends".into()
    }
}

fn backend_state(b: &BackendView) -> String {
    let mut s = vec![
        if b.ready {
            "ready"
        } else if b.serving && b.terminating {
            "serving, terminating"
        } else if b.terminating {
            "terminating, not serving"
        } else {
            "not ready"
        }
        .to_string(),
    ];
    match (&b.node_name, b.local) {
        (_, true) => s.push("on this node".into()),
        (Some(n), false) => s.push(format!("on node {}", metalnet::model::names::escape(n))),
        (None, false) => s.push("node unknown".into()),
    }
    if b.id == 0 {
        s.push("not used".into());
    } else {
        s.push(format!("id {}", b.id));
    }
    s.join(", ")
}

/// `explain service NS/NAME`: what the model made of a Service and whether the live maps
/// hold it.
pub fn explain_service(desired: &Desired, live: &MapState, ns: &str, name: &str) -> String {
    let esc = |s: &str| metalnet::model::names::escape(s).into_owned();
    let mut out = String::new();
    let Some(v) = desired.services.get(&(ns.to_string(), name.to_string())) else {
        let _ = writeln!(
            out,
            "Service {}/{}: not found ({} Services known)",
            esc(ns),
            esc(name),
            desired.services.len()
        );
        return out;
    };
    let _ = writeln!(out, "Service {}/{}: {}", esc(ns), esc(name), esc(&v.type_));
    if let Some(why) = &v.skipped {
        let _ = writeln!(out, "  not handled: {why}");
        return out;
    }
    let pol = |local: bool| if local { "Local" } else { "Cluster" };
    let _ = writeln!(
        out,
        "  traffic policy: external {}, internal {}",
        pol(v.external_policy_local),
        pol(v.internal_policy_local)
    );
    match v.affinity_timeout {
        Some(t) => {
            let _ = writeln!(out, "  session affinity: ClientIP, {t} s");
        }
        None => out.push_str("  session affinity: none\n"),
    }
    if !v.source_ranges.is_empty() {
        let r: Vec<String> = v.source_ranges.iter().map(|n| n.to_string()).collect();
        let _ = writeln!(
            out,
            "  source ranges: {} (LoadBalancer addresses, outside clients)",
            r.join(", ")
        );
    }
    if let Some(p) = v.health_check_node_port {
        let n = desired
            .health_checks
            .iter()
            .find(|h| h.namespace == ns && h.name == name)
            .map(|h| h.local_endpoints)
            .unwrap_or(0);
        let _ = writeln!(
            out,
            "  health check node port: {p} ({n} local endpoint{}: answers {})",
            if n == 1 { "" } else { "s" },
            if n > 0 { 200 } else { 503 }
        );
    }
    let _ = writeln!(out, "  frontends ({}):", v.frontends.len());
    for f in &v.frontends {
        let port = if f.port_name.is_empty() {
            String::new()
        } else {
            format!(" (port {})", esc(&f.port_name))
        };
        let what = match (f.kind, f.addr) {
            (FrontendKind::NodePort, IpAddr::V4(_)) => {
                format!("*:{}/{} on node addresses", f.port, f.proto.as_str())
            }
            (FrontendKind::NodePort, IpAddr::V6(_)) => {
                format!("[*]:{}/{} on node addresses", f.port, f.proto.as_str())
            }
            _ => format!("{}/{}", hostport(f.addr, f.port), f.proto.as_str()),
        };
        let _ = writeln!(
            out,
            "    {what} {}{port}, rev {}",
            f.kind.as_str(),
            f.rev_id
        );
        for e in &f.entries {
            let _ = writeln!(
                out,
                "      {}; {}",
                entry_meaning(f.kind, e),
                live_status(live, f, e)
            );
        }
    }
    let _ = writeln!(out, "  endpoints ({}):", v.backends.len());
    for b in &v.backends {
        let port = if b.port_name.is_empty() {
            String::new()
        } else {
            format!(" (port {})", esc(&b.port_name))
        };
        let _ = writeln!(
            out,
            "    {}/{}{port}: {}",
            hostport(b.addr, b.port),
            b.proto.as_str(),
            backend_state(b)
        );
    }
    let problems: Vec<_> = desired
        .problems
        .iter()
        .filter(|p| p.kind == "Service" && p.namespace == ns && p.name == name)
        .collect();
    if !problems.is_empty() {
        let _ = writeln!(out, "  problems ({}):", problems.len());
        for p in problems {
            let _ = writeln!(out, "    {}: {}", p.field, p.reason);
        }
    }
    out
}

fn val_text(v: &SvcVal) -> String {
    let mut s = format!("rev {} {}", v.rev_id, svc_flag_names(v.flags));
    if v.flags & svc_flags::AFFINITY != 0 {
        let _ = write!(s, " timeout {}s", v.affinity_timeout);
    }
    if v.flags & svc_flags::MAGLEV != 0 {
        let _ = write!(s, " row {}", v.maglev_row);
    }
    s
}

/// `dump`: the maps in the style of `ipvsadm -Ln`, one line per frontend entry then one
/// `->` line per slot. `names` labels frontends by rev_id ([`Desired::names`]).
pub fn dump(maps: &MapState, names: &BTreeMap<u32, String>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<5}{:<44}{:<9}{:<6}Flags",
        "Prot", "LocalAddress:Port", "Scope", "Slots"
    );
    let _ = writeln!(out, "  -> {:<44}{:<8}Flags", "RemoteAddress:Port", "Id");
    // Slots by frontend and scope, in slot order (the map's order).
    let mut slots: BTreeMap<(u32, Scope), Vec<(u16, u32)>> = BTreeMap::new();
    for (k, id) in &maps.slot {
        slots
            .entry((k.rev_id, k.scope))
            .or_default()
            .push((k.slot, *id));
    }
    for (k, v) in &maps.svc {
        let name = names
            .get(&v.rev_id)
            .map(|n| format!("  {}", n.replace(['\n', '\r'], " ")))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "{:<5}{:<44}{:<9}{:<6}{}{name}",
            k.proto.as_str(),
            hostport(k.addr, k.port),
            scope_name(k.scope),
            v.count,
            val_text(v),
        );
        for (slot, id) in slots.get(&(v.rev_id, k.scope)).into_iter().flatten() {
            let stale = if *slot > v.count {
                " (beyond count)"
            } else {
                ""
            };
            match maps.backend.get(id) {
                Some(b) => {
                    let _ = writeln!(
                        out,
                        "  -> {:<44}{:<8}{}{stale}",
                        hostport(b.addr, b.port),
                        id,
                        backend_flag_names(b.flags)
                    );
                }
                None => {
                    let _ = writeln!(out, "  -> {:<44}{:<8}missing backend{stale}", "?", id);
                }
            }
        }
    }
    let _ = writeln!(
        out,
        "{} frontend entries, {} slots, {} backends, {} reverse NAT, {} affinity matches, {} source ranges, {} Maglev rows",
        maps.svc.len(),
        maps.slot.len(),
        maps.backend.len(),
        maps.rev_nat.len(),
        maps.affinity_match.len(),
        maps.src_range.len(),
        maps.maglev.len()
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::ids::Ids;
    use crate::proxy::model::desired;
    use crate::proxy::model::fixtures::*;
    use serde_json::json;

    fn lb_case() -> Desired {
        let svcs = [
            with_status(
                "default",
                "lb",
                json!({"type": "LoadBalancer", "clusterIP": "10.96.0.20",
                       "externalTrafficPolicy": "Local", "healthCheckNodePort": 32000,
                       "sessionAffinity": "ClientIP",
                       "loadBalancerSourceRanges": ["203.0.113.0/24", "bad"],
                       "ports": [{"name": "http", "port": 80, "nodePort": 30080}]}),
                json!({"loadBalancer": {"ingress": [{"ip": "198.51.100.1"}]}}),
            ),
            service(
                "default",
                "hl",
                json!({"clusterIP": "None", "ports": [{"port": 80}]}),
            ),
        ];
        let slices = [slice(
            "default",
            "lb-1",
            "lb",
            "IPv4",
            ("http", "TCP", 8080),
            vec![
                ready("192.0.2.1", "node-a"),
                ready("192.0.2.2", "node-b"),
                ep("192.0.2.3", "node-b", false, true, true),
            ],
        )];
        desired(&inputs(&svcs, &slices), &mut Ids::new(4))
    }

    #[test]
    fn explain_a_local_load_balancer() {
        let d = lb_case();
        // The live maps miss the ClusterIP entry.
        let mut live = d.maps.clone();
        live.svc
            .retain(|k, _| k.port != 80 || k.addr.to_string() != "10.96.0.20");
        let text = explain_service(&d, &live, "default", "lb");
        let want = "\
Service default/lb: LoadBalancer
  traffic policy: external Local, internal Cluster
  session affinity: ClientIP, 10800 s
  source ranges: 203.0.113.0/24 (LoadBalancer addresses, outside clients)
  health check node port: 32000 (1 local endpoint: answers 200)
  frontends (3):
    10.96.0.20:80/TCP ClusterIP (port http), rev 1
      external: 2 backends (endpoints on every node) for every client; not in the maps yet
    *:30080/TCP on node addresses NodePort (port http), rev 2
      external: 1 backend (endpoints on this node) for outside clients, Maglev row 0; in the maps
      internal: 2 backends (endpoints on every node) for in-cluster clients; in the maps
    198.51.100.1:80/TCP LoadBalancer (port http), rev 3
      external: 1 backend (endpoints on this node) for outside clients, Maglev row 1, source ranges checked; in the maps
      internal: 2 backends (endpoints on every node) for in-cluster clients; in the maps
  endpoints (3):
    192.0.2.1:8080/TCP (port http): ready, on this node, id 1
    192.0.2.2:8080/TCP (port http): ready, on node node-b, id 2
    192.0.2.3:8080/TCP (port http): serving, terminating, on node node-b, not used
  problems (1):
    spec.loadBalancerSourceRanges[1]: \"bad\" is not a CIDR; the other ranges still apply
";
        assert_eq!(text, want, "\n{text}");
    }

    #[test]
    fn explain_unknown_and_skipped() {
        let d = lb_case();
        assert_eq!(
            explain_service(&d, &d.maps, "default", "nope"),
            "Service default/nope: not found (2 Services known)\n"
        );
        assert_eq!(
            explain_service(&d, &d.maps, "default", "hl"),
            "Service default/hl: ClusterIP\n  not handled: headless (clusterIP: None)\n"
        );
    }

    #[test]
    fn dump_like_ipvsadm() {
        let svcs = [service(
            "default",
            "web",
            json!({"clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": 80}]}),
        )];
        let slices = [slice(
            "default",
            "web-1",
            "web",
            "IPv4",
            ("http", "TCP", 8080),
            vec![ready("192.0.2.3", "node-a"), ready("192.0.2.9", "node-b")],
        )];
        let d = desired(&inputs(&svcs, &slices), &mut Ids::default());
        let mut maps = d.maps.clone();
        // A slot pointing at a backend that is gone shows as such.
        maps.backend.remove(&2);
        let text = dump(&maps, &d.names());
        let want = "\
Prot LocalAddress:Port                           Scope    Slots Flags
  -> RemoteAddress:Port                          Id      Flags
TCP  10.96.0.10:80                               external 2     rev 1 cluster-ip  default/web:http ClusterIP
  -> 192.0.2.3:8080                              1       local
  -> ?                                           2       missing backend
1 frontend entries, 2 slots, 1 backends, 1 reverse NAT, 0 affinity matches, 0 source ranges, 0 Maglev rows
";
        assert_eq!(text, want, "\n{text}");
    }

    #[test]
    fn flag_names() {
        assert_eq!(svc_flag_names(0), "-");
        assert_eq!(
            svc_flag_names(svc_flags::NODEPORT | svc_flags::LOCAL | 0x8000),
            "nodeport,local,0x8000"
        );
        assert_eq!(backend_flag_names(3), "local,terminating");
    }
}
