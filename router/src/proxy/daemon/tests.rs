//! The loop on the in-memory recorder, with a small model of its own (ClusterIP over TCP,
//! ready endpoints, healthCheckNodePort, one kind of problem), so these tests pin the
//! daemon's behaviour whatever the real model's details.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use metalnet::daemon::Health;
use metalnet::state::Snapshot;
use metalnet::testing::manifests::snapshot;
use serde_json::{Value, json};

use super::*;
use crate::proxy::abi::{Backend, Proto, RevNat, Scope, SlotKey, SvcKey, SvcVal, svc_flags};
use crate::proxy::dataplane::Recorder;

#[derive(Default)]
struct Toy {
    node: String,
    rev: BTreeMap<(IpAddr, u16), u32>,
    be: BTreeMap<(IpAddr, u16), u32>,
    /// What the daemon said the maps hold after its last write.
    committed: Option<MapState>,
}

struct ToyPlan {
    maps: MapState,
    health: BTreeMap<u16, ServiceHealth>,
    problems: Vec<ServiceProblem>,
    names: BTreeMap<(String, String), Vec<SvcKey>>,
}

fn next_id<K: Ord>(m: &BTreeMap<K, u32>) -> u32 {
    m.values().max().copied().unwrap_or(0) + 1
}

impl Model for Toy {
    type Plan = ToyPlan;
    fn committed(&mut self, live: &MapState) {
        self.committed = Some(live.clone());
    }
    fn restore(&mut self, live: &MapState) {
        for (id, r) in &live.rev_nat {
            self.rev.insert((r.addr, r.port), *id);
        }
        for (id, b) in &live.backend {
            self.be.insert((b.addr, b.port), *id);
        }
    }
    fn plan(&mut self, snap: &Snapshot, _: Option<&BTreeSet<ObjectRef>>) -> ToyPlan {
        let mut p = ToyPlan {
            maps: MapState::default(),
            health: BTreeMap::new(),
            problems: Vec::new(),
            names: BTreeMap::new(),
        };
        for (key, svc) in snap.services.iter() {
            let ns = key.namespace.clone().unwrap_or_default();
            let spec = svc.spec.clone().unwrap_or_default();
            let Some(ip) = spec.cluster_ip.and_then(|c| c.parse::<IpAddr>().ok()) else {
                continue;
            };
            let mut eps: Vec<(IpAddr, u16, bool)> = Vec::new();
            for slice in snap.endpoint_slices.values() {
                let labels = slice.metadata.labels.clone().unwrap_or_default();
                if slice.metadata.namespace.as_deref() != Some(ns.as_str())
                    || labels.get("kubernetes.io/service-name") != Some(&key.name)
                {
                    continue;
                }
                let port = slice
                    .ports
                    .as_ref()
                    .and_then(|p| p.first())
                    .and_then(|p| p.port)
                    .unwrap_or(8080) as u16;
                for e in &slice.endpoints {
                    if e.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                        continue;
                    }
                    let local = e.node_name.as_deref() == Some(self.node.as_str());
                    for a in &e.addresses {
                        if let Ok(a) = a.parse() {
                            eps.push((a, port, local));
                        }
                    }
                }
            }
            eps.sort();
            if let Some(hc) = spec.health_check_node_port {
                p.health.insert(
                    hc as u16,
                    ServiceHealth {
                        namespace: ns.clone(),
                        name: key.name.clone(),
                        local_endpoints: eps.iter().filter(|e| e.2).count(),
                    },
                );
            }
            for port in spec.ports.unwrap_or_default() {
                if port.protocol.as_deref().unwrap_or("TCP") != "TCP" {
                    p.problems.push(ServiceProblem {
                        kind: Kind::Service,
                        namespace: ns.clone(),
                        name: key.name.clone(),
                        reason: "UnsupportedProtocol".into(),
                        message: format!(
                            "spec.ports[{}].protocol {:?}: not supported",
                            port.name.clone().unwrap_or_default(),
                            port.protocol.clone().unwrap_or_default()
                        ),
                    });
                    continue;
                }
                let fport = port.port as u16;
                let n = next_id(&self.rev);
                let rev_id = *self.rev.entry((ip, fport)).or_insert(n);
                let k = SvcKey {
                    addr: ip,
                    port: fport,
                    proto: Proto::Tcp,
                    scope: Scope::External,
                };
                p.maps.svc.insert(
                    k,
                    SvcVal {
                        rev_id,
                        count: eps.len() as u16,
                        flags: svc_flags::CLUSTER_IP,
                        affinity_timeout: 0,
                        maglev_row: 0,
                    },
                );
                p.maps.rev_nat.insert(
                    rev_id,
                    RevNat {
                        addr: ip,
                        port: fport,
                    },
                );
                for (i, (a, bport, local)) in eps.iter().enumerate() {
                    let n = next_id(&self.be);
                    let id = *self.be.entry((*a, *bport)).or_insert(n);
                    p.maps.backend.insert(
                        id,
                        Backend {
                            addr: *a,
                            port: *bport,
                            proto: Proto::Tcp,
                            flags: u8::from(*local),
                        },
                    );
                    p.maps.slot.insert(
                        SlotKey {
                            rev_id,
                            slot: i as u16 + 1,
                            scope: Scope::External,
                        },
                        id,
                    );
                }
                p.names
                    .entry((ns.clone(), key.name.clone()))
                    .or_default()
                    .push(k);
            }
        }
        p
    }
}

impl Plan for ToyPlan {
    fn maps(&self) -> &MapState {
        &self.maps
    }
    fn health_checks(&self) -> BTreeMap<u16, ServiceHealth> {
        self.health.clone()
    }
    fn problems(&self) -> Vec<ServiceProblem> {
        self.problems.clone()
    }
    fn explain_service(&self, live: &MapState, ns: &str, name: &str) -> Option<String> {
        let keys = self.names.get(&(ns.to_string(), name.to_string()))?;
        Some(
            keys.iter()
                .map(|k| format!("{}:{} live={}\n", k.addr, k.port, live.svc.contains_key(k)))
                .collect(),
        )
    }
    fn dump(&self, live: &MapState) -> String {
        format!("{} frontends\n", live.svc.len())
    }
}

fn svc(name: &str, ip: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"type": "ClusterIP", "clusterIP": ip, "ports": [{"port": 80}]}})
}

fn slice(service: &str, eps: &[(&str, &str)]) -> Value {
    let endpoints: Vec<Value> = eps
        .iter()
        .map(|(a, node)| json!({"addresses": [a], "nodeName": node, "conditions": {"ready": true}}))
        .collect();
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("{service}-1"), "namespace": "default",
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4", "ports": [{"port": 8080}], "endpoints": endpoints})
}

struct Fixture {
    status: SharedStatus,
    health: Health,
}

fn daemon(rec: Recorder) -> (Daemon<Recorder, Toy>, Fixture) {
    let health = Health::default();
    let status: SharedStatus = Arc::new(Mutex::new(Status::default()));
    let toy = Toy {
        node: "n1".into(),
        ..Toy::default()
    };
    let d = Daemon::new(
        Config {
            node: "n1".into(),
            opts: ProxyOptions {
                cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
                ..ProxyOptions::default()
            },
            host_netns_cookie: 4096,
            write_node_addrs: true,
        },
        rec,
        toy,
        None,
        Metrics::default(),
        health.condition("proxy"),
        status.clone(),
    )
    .unwrap();
    (d, Fixture { status, health })
}

fn frontend(ip: &str) -> SvcKey {
    SvcKey {
        addr: ip.parse().unwrap(),
        port: 80,
        proto: Proto::Tcp,
        scope: Scope::External,
    }
}

#[test]
fn start_programs_the_config_and_readiness_waits_for_the_first_pass() {
    let (mut d, f) = daemon(Recorder::default());
    assert_eq!(d.dataplane().config.masq_mark, 0x4000);
    assert_eq!(d.dataplane().config.maglev_m, 1021);
    assert_eq!(d.dataplane().config.host_netns_cookie, 4096);
    assert_eq!(d.dataplane().cluster_cidrs.len(), 1);
    assert!(!f.health.is_ready());
    let r = d.pass_on(&snapshot([]));
    assert_eq!(r.written, 0, "nothing to write");
    assert!(
        d.dataplane().diffs.is_empty(),
        "an empty diff is not applied"
    );
    assert!(f.health.is_ready());
    assert_eq!(f.status.lock().unwrap().passes, 1);
}

#[test]
fn a_service_added_changed_and_removed_gives_its_diffs() {
    let (mut d, _f) = daemon(Recorder::default());
    let fe = frontend("10.96.0.10");
    // Added with one endpoint.
    let r = d.pass_on(&snapshot([
        svc("web", "10.96.0.10"),
        slice("web", &[("10.244.1.5", "n2")]),
    ]));
    assert_eq!(r.written, 4, "svc, rev_nat, backend, slot");
    let diff = &d.dataplane().diffs[0];
    assert_eq!(diff.svc_upsert.len(), 1);
    assert_eq!(diff.svc_upsert[0].0, fe);
    assert_eq!(diff.backend_upsert.len(), 1);
    let rev_id = d.current().svc[&fe].rev_id;
    assert_eq!(d.dataplane().state, *d.current());

    // A second endpoint: the frontend's count, one backend, one slot; the rest untouched.
    d.pass_on(&snapshot([
        svc("web", "10.96.0.10"),
        slice("web", &[("10.244.1.5", "n2"), ("10.244.0.7", "n1")]),
    ]));
    let diff = d.dataplane().diffs.last().unwrap();
    assert_eq!(diff.svc_upsert.len(), 1);
    assert_eq!(diff.svc_upsert[0].1.count, 2);
    assert_eq!(diff.backend_upsert.len(), 1);
    assert!(diff.rev_nat_upsert.is_empty(), "the frontend keeps its id");
    assert_eq!(d.current().svc[&fe].rev_id, rev_id);

    // One endpoint goes: its backend is removed and its sockets destroyed.
    let r = d.pass_on(&snapshot([
        svc("web", "10.96.0.10"),
        slice("web", &[("10.244.0.7", "n1")]),
    ]));
    assert_eq!(r.destroyed.len(), 1);
    assert_eq!(r.destroyed[0].addr, "10.244.1.5".parse::<IpAddr>().unwrap());
    assert_eq!(d.dataplane().destroyed, r.destroyed);

    // The Service goes: everything of it is removed.
    let r = d.pass_on(&snapshot([]));
    assert!(r.written >= 4);
    assert_eq!(d.dataplane().state, MapState::default());
    assert_eq!(r.destroyed.len(), 1);
    // Nothing changes: nothing is written.
    let n = d.dataplane().diffs.len();
    d.pass_on(&snapshot([]));
    assert_eq!(d.dataplane().diffs.len(), n);
}

#[test]
fn a_restart_with_the_same_state_writes_nothing_and_keeps_the_ids() {
    let objs = || {
        vec![
            svc("a", "10.96.0.10"),
            svc("b", "10.96.0.11"),
            slice("a", &[("10.244.1.5", "n2")]),
            slice("b", &[("10.244.1.6", "n2"), ("10.244.1.5", "n2")]),
        ]
    };
    let (mut d, _) = daemon(Recorder::default());
    d.pass_on(&snapshot(objs()));
    let before = d.current().clone();
    assert_eq!(before.svc.len(), 2);

    // The maps outlive the process: a new daemon on the same maps.
    let kept = Recorder {
        state: before.clone(),
        ..Recorder::default()
    };
    let (mut d2, f2) = daemon(kept);
    let r = d2.pass_on(&snapshot(objs()));
    assert_eq!(r.written, 0);
    assert!(
        d2.dataplane().diffs.is_empty(),
        "a restart wrote {:?}",
        d2.dataplane().diffs
    );
    assert!(f2.health.is_ready());
    assert_eq!(*d2.current(), before);

    // A Service added after the restart gets new ids; the old ones stay.
    let mut more = objs();
    more.push(svc("c", "10.96.0.12"));
    d2.pass_on(&snapshot(more));
    let after = d2.current();
    for (k, v) in &before.svc {
        assert_eq!(after.svc[k].rev_id, v.rev_id);
    }
    let new_id = after.svc[&frontend("10.96.0.12")].rev_id;
    assert!(!before.rev_nat.contains_key(&new_id));
}

/// A data path whose writes fail until told otherwise, and that keeps half a diff.
#[derive(Default)]
struct Flaky {
    rec: Recorder,
    fail: bool,
}

impl Dataplane for Flaky {
    fn apply(&mut self, diff: &MapDiff) -> Result<(), DataplaneError> {
        if self.fail {
            // Backends go in first, then the write fails.
            let part = MapDiff {
                backend_upsert: diff.backend_upsert.clone(),
                ..MapDiff::default()
            };
            self.rec.apply(&part)?;
            return Err(DataplaneError::Map {
                map: abi::names::SVC,
                source: std::io::Error::from_raw_os_error(libc::E2BIG),
            });
        }
        self.rec.apply(diff)
    }
    fn read(&self) -> Result<MapState, DataplaneError> {
        self.rec.read()
    }
    fn set_node_addrs(&mut self, a: &BTreeSet<IpAddr>) -> Result<(), DataplaneError> {
        self.rec.set_node_addrs(a)
    }
    fn set_cluster_cidrs(&mut self, c: &[ipnet::IpNet]) -> Result<(), DataplaneError> {
        self.rec.set_cluster_cidrs(c)
    }
    fn set_config(&mut self, c: &abi::Config) -> Result<(), DataplaneError> {
        self.rec.set_config(c)
    }
    fn counters(&self) -> Result<Vec<u64>, DataplaneError> {
        self.rec.counters()
    }
    fn fill(&self) -> Result<crate::proxy::dataplane::Fill, DataplaneError> {
        self.rec.fill()
    }
    fn destroy_sockets(&mut self, b: &[abi::Backend]) -> Result<usize, DataplaneError> {
        self.rec.destroy_sockets(b)
    }
}

/// A daemon on the toy model whose map writes fail until `dp.fail` is cleared.
fn flaky_daemon() -> (Daemon<Flaky, Toy>, Fixture) {
    let health = Health::default();
    let status: SharedStatus = Arc::default();
    let d = Daemon::new(
        Config {
            node: "n1".into(),
            ..Config::default()
        },
        Flaky {
            fail: true,
            ..Flaky::default()
        },
        Toy {
            node: "n1".into(),
            ..Toy::default()
        },
        None,
        Metrics::default(),
        health.condition("proxy"),
        status.clone(),
    )
    .unwrap();
    (d, Fixture { status, health })
}

#[test]
fn a_failed_write_is_retried_from_what_the_maps_hold() {
    let (mut d, Fixture { status, health }) = flaky_daemon();
    let snap = snapshot([
        svc("web", "10.96.0.10"),
        slice("web", &[("10.244.1.5", "n2")]),
    ]);
    let r = d.pass_on(&snap);
    let err = r.error.expect("the write failed");
    assert!(err.starts_with("map mn_svc:"), "{err}");
    assert!(
        !health.is_ready(),
        "not ready before the maps are programmed"
    );
    assert!(d.retry_at.is_some());
    assert_eq!(d.current().backend.len(), 1, "the part written is known");
    assert_eq!(
        d.model.committed.as_ref(),
        Some(d.current()),
        "and told to the model"
    );
    assert!(status.lock().unwrap().failing.is_some());
    d.dp.fail = false;
    let r = d.pass_on(&snap);
    assert!(r.error.is_none());
    assert_eq!(r.written, 3, "the backend is not written again");
    assert_eq!(d.dp.rec.state, *d.current());
    assert_eq!(d.model.committed.as_ref(), Some(d.current()));
    assert!(health.is_ready());
    assert!(d.retry_at.is_none());
}

#[test]
fn problems_are_reported_once_per_distinct_problem() {
    let (mut d, _) = daemon(Recorder::default());
    let mut bad = svc("web", "10.96.0.10");
    bad["spec"]["ports"] = json!([{"port": 80}, {"name": "x", "port": 81, "protocol": "ICMP"}]);
    let r = d.pass_on(&snapshot([bad.clone()]));
    assert_eq!(r.new_problems.len(), 1);
    assert_eq!(r.new_problems[0].name, "web");
    assert_eq!(r.new_problems[0].reason, "UnsupportedProtocol");
    assert!(r.new_problems[0].message.contains("spec.ports[x].protocol"));
    assert_eq!(d.current().svc.len(), 1, "the good port is programmed");
    assert!(d.pass_on(&snapshot([bad.clone()])).new_problems.is_empty());
    // Fixed, then made again: reported again.
    assert!(
        d.pass_on(&snapshot([svc("web", "10.96.0.10")]))
            .new_problems
            .is_empty()
    );
    assert_eq!(d.pass_on(&snapshot([bad])).new_problems.len(), 1);
}

#[tokio::test]
async fn problems_become_warning_events_on_the_service() {
    let dir = tempfile::tempdir().unwrap();
    let mut bad = svc("web", "10.96.0.10");
    bad["spec"]["ports"] = json!([{"name": "x", "port": 81, "protocol": "ICMP"}]);
    std::fs::write(
        dir.path().join("web.yaml"),
        metalnet::testing::manifests::to_yaml(&bad),
    )
    .unwrap();
    let state = ClusterState::start(metalnet::state::Source::Dir(dir.path().into()), KINDS)
        .await
        .unwrap();
    let (mut d, _) = daemon(Recorder::default());
    let r = d.pass(&state).await;
    assert_eq!(r.new_problems.len(), 1);
    let text = state
        .render_events_about(&ObjectRef::new(Kind::Service, Some("default"), "web"))
        .await
        .unwrap();
    assert!(text.contains("UnsupportedProtocol"), "{text}");
    assert!(text.contains("spec.ports[x].protocol"), "{text}");
}

#[tokio::test]
async fn health_servers_follow_the_plan() {
    let (mut d, f) = daemon(Recorder::default());
    // Listen on loopback only: the test must not open ports on the machine's addresses.
    d.opts.nodeport_addresses = vec!["127.0.0.0/8".parse().unwrap()];
    d.opts.cluster_cidrs.clear();
    // Loopback never serves NodePorts, so give the health servers their address directly.
    d.health.set_addresses(vec!["127.0.0.1".parse().unwrap()]);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut s = svc("web", "10.96.0.10");
    s["spec"]["healthCheckNodePort"] = json!(port);
    d.pass_on(&snapshot([
        s.clone(),
        slice("web", &[("10.244.0.7", "n1")]),
    ]));
    assert_eq!(f.status.lock().unwrap().health_ports.len(), 1);
    let body = {
        use std::io::{Read, Write};
        let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        let mut out = String::new();
        // The server runs on this test's runtime: read from a blocking thread.
        tokio::task::spawn_blocking(move || {
            c.read_to_string(&mut out).unwrap();
            out
        })
        .await
        .unwrap()
    };
    assert!(body.starts_with("HTTP/1.1 200 OK"), "{body}");
    assert!(body.contains(r#""localEndpoints":1"#), "{body}");
    let text = debug_answer(
        &f.status.lock().unwrap(),
        "/debug/proxy/service?name=default/web",
    )
    .unwrap()
    .unwrap();
    assert!(
        text.contains(&format!(
            "healthCheckNodePort {port}: listening on 127.0.0.1:{port}, answering 200 (1 local endpoints)"
        )),
        "{text}"
    );
    d.pass_on(&snapshot([]));
    assert!(f.status.lock().unwrap().health_ports.is_empty());
}

#[test]
fn node_addresses_are_filtered_for_nodeports() {
    let (mut d, _) = daemon(Recorder::default());
    let all: BTreeSet<IpAddr> = [
        "127.0.0.1",
        "192.0.2.1",
        "198.51.100.1",
        "fe80::1",
        "2001:db8::1",
    ]
    .iter()
    .map(|a| a.parse().unwrap())
    .collect();
    d.set_node_addrs(&all);
    let got: Vec<String> = d
        .dataplane()
        .node_addrs
        .iter()
        .map(|a| a.to_string())
        .collect();
    assert_eq!(got, ["192.0.2.1", "198.51.100.1", "2001:db8::1"]);
    d.opts.nodeport_addresses = vec!["192.0.2.0/24".parse().unwrap()];
    d.node_addrs = None;
    d.set_node_addrs(&all);
    let got: Vec<String> = d
        .dataplane()
        .node_addrs
        .iter()
        .map(|a| a.to_string())
        .collect();
    assert_eq!(got, ["192.0.2.1"]);
    // The attach watcher keeps mn_node_addr: the daemon only notes them for its servers.
    d.write_node_addrs = false;
    d.node_addrs = None;
    d.dp.node_addrs.clear();
    d.set_node_addrs(&all);
    assert!(d.dataplane().node_addrs.is_empty());
    assert_eq!(d.node_addrs.as_ref().map(|a| a.len()), Some(1));
}

#[test]
fn debug_endpoints() {
    let (mut d, f) = daemon(Recorder::default());
    let st = |p: &str| debug_answer(&f.status.lock().unwrap(), p);
    assert!(st("/debug/routing/node").is_none());
    assert!(
        st("/debug/proxy/dump").unwrap().is_err(),
        "before the first pass"
    );
    d.pass_on(&snapshot([svc("web", "10.96.0.10")]));
    assert_eq!(st("/debug/proxy/dump").unwrap().unwrap(), "1 frontends\n");
    assert_eq!(
        st("/debug/proxy/service?name=default/web")
            .unwrap()
            .unwrap(),
        "10.96.0.10:80 live=true\n"
    );
    let e = st("/debug/proxy/service?name=default/nope")
        .unwrap()
        .unwrap_err();
    assert!(e.starts_with("Service default/nope: not handled"), "{e}");
    assert!(st("/debug/proxy/service").unwrap().is_err());
    f.status.lock().unwrap().failing = Some("map mn_svc: E2BIG".into());
    assert!(
        st("/debug/proxy/dump")
            .unwrap()
            .unwrap()
            .contains("WARNING: the last pass")
    );
}

#[test]
fn rfc3339() {
    let t = parse_rfc3339("2024-02-29T12:34:56Z").unwrap();
    assert_eq!(
        t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs(),
        1_709_210_096
    );
    let t = parse_rfc3339("1970-01-01T01:00:00.5+01:00").unwrap();
    assert_eq!(
        t.duration_since(SystemTime::UNIX_EPOCH).unwrap(),
        Duration::from_millis(500)
    );
    for bad in [
        "",
        "2024-02-29",
        "2024-13-01T00:00:00Z",
        "2024-02-29T12:34:56",
        "2024-02-29T12:34:56.Z",
        "x024-02-29T12:34:56Z",
    ] {
        assert!(parse_rfc3339(bad).is_none(), "{bad}");
    }
}

#[test]
fn metrics_after_a_pass() {
    let (mut d, _) = daemon(Recorder::default());
    let mut reg = prometheus_client::registry::Registry::default();
    d.metrics.register(&mut reg);
    let mut s = slice("web", &[("10.244.1.5", "n2")]);
    let when = SystemTime::now() - Duration::from_secs(2);
    let secs = when
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // Seconds since the epoch as RFC 3339, by the inverse of parse_rfc3339's arithmetic
    // (checked by parsing it back).
    let days = (secs / 86_400) as i64;
    let (h, m, sec) = (secs % 86_400 / 3600, secs % 3600 / 60, secs % 60);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let stamp = format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{sec:02}Z");
    assert_eq!(
        parse_rfc3339(&stamp)
            .unwrap()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
        secs
    );
    s["metadata"]["annotations"] = json!({TRIGGER_TIME: stamp});
    d.pass_on(&snapshot([svc("web", "10.96.0.10"), s.clone()]));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &reg).unwrap();
    assert!(text.contains("metalnet_proxy_frontends 1"), "{text}");
    assert!(text.contains("metalnet_proxy_backends 1"), "{text}");
    assert!(
        text.contains("kubeproxy_sync_proxy_rules_duration_seconds_count 1"),
        "{text}"
    );
    assert!(
        text.contains("kubeproxy_network_programming_duration_seconds_count 1"),
        "{text}"
    );
    assert!(
        text.contains(r#"metalnet_proxy_map_entries{map="mn_slot"} 1"#),
        "{text}"
    );
    // The same slice again (same trigger time): not counted twice.
    d.pass_on(&snapshot([svc("web", "10.96.0.10"), s]));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &reg).unwrap();
    assert!(
        text.contains("kubeproxy_network_programming_duration_seconds_count 1"),
        "{text}"
    );
}

// --- the real model -----------------------------------------------------------------------

fn real(rec: Recorder) -> (Daemon<Recorder, crate::proxy::model::ProxyModel>, Health) {
    let opts = ProxyOptions::default();
    let health = Health::default();
    let d = Daemon::new(
        Config {
            node: "n1".into(),
            opts: opts.clone(),
            host_netns_cookie: 1,
            write_node_addrs: true,
        },
        rec,
        crate::proxy::model::ProxyModel::new(
            "n1",
            &opts.cluster_cidrs,
            "",
            opts.maglev_table_size,
            256,
        ),
        None,
        Metrics::default(),
        health.condition("proxy"),
        Arc::default(),
    )
    .unwrap();
    (d, health)
}

/// A LoadBalancer Service with eTP=Local: ClusterIP, NodePort and LoadBalancer frontends, and
/// a healthCheckNodePort.
fn lb_local(health_port: u16) -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "lb", "namespace": "default"},
        "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20"],
                 "ipFamilies": ["IPv4"], "externalTrafficPolicy": "Local",
                 "healthCheckNodePort": health_port,
                 "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080, "nodePort": 30080}]},
        "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.10"}]}}})
}

fn lb_slice(eps: &[(&str, &str)]) -> Value {
    let mut s = slice("lb", eps);
    s["ports"] = json!([{"name": "http", "port": 8080, "protocol": "TCP"}]);
    s
}

#[test]
fn real_model_restart_writes_nothing_and_keeps_ids() {
    let objs = || {
        vec![
            lb_local(0),
            lb_slice(&[("10.244.0.7", "n1"), ("10.244.1.5", "n2")]),
            svc("web", "10.96.0.10"),
            slice("web", &[("10.244.1.6", "n2")]),
        ]
    };
    let (mut d, health) = real(Recorder::default());
    let r = d.pass_on(&snapshot(objs()));
    assert!(r.error.is_none());
    assert!(r.written > 0);
    assert!(health.is_ready());
    let before = d.current().clone();
    assert_eq!(before, d.dataplane().state);
    let lb_vip = SvcKey {
        addr: "203.0.113.10".parse().unwrap(),
        port: 80,
        proto: Proto::Tcp,
        scope: Scope::External,
    };
    assert!(
        before.svc[&lb_vip].flags & svc_flags::LOCAL != 0,
        "{:?}",
        before.svc[&lb_vip]
    );

    let (mut d2, _) = real(Recorder {
        state: before.clone(),
        ..Recorder::default()
    });
    let r = d2.pass_on(&snapshot(objs()));
    assert_eq!(r.written, 0, "{:?}", d2.dataplane().diffs);
    assert!(d2.dataplane().diffs.is_empty());

    // One endpoint goes after the restart: only its entries change, every id stays.
    let mut fewer = objs();
    fewer[1] = lb_slice(&[("10.244.0.7", "n1")]);
    let r = d2.pass_on(&snapshot(fewer));
    assert_eq!(r.destroyed.len(), 1);
    assert_eq!(r.destroyed[0].addr, "10.244.1.5".parse::<IpAddr>().unwrap());
    let after = d2.current();
    for (k, v) in &after.svc {
        assert_eq!(before.svc[k].rev_id, v.rev_id, "{k:?}");
    }
    for (id, b) in &after.backend {
        assert_eq!(before.backend.get(id), Some(b));
    }
    // The web Service was not touched.
    let diff = d2.dataplane().diffs.last().unwrap();
    assert!(
        diff.svc_upsert
            .iter()
            .all(|(k, _)| k.addr != "10.96.0.10".parse::<IpAddr>().unwrap())
    );
}

#[tokio::test]
async fn real_model_health_check_node_port() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (mut d, _) = real(Recorder::default());
    d.health.set_addresses(vec!["127.0.0.1".parse().unwrap()]);
    d.pass_on(&snapshot([
        lb_local(port),
        lb_slice(&[("10.244.1.5", "n2")]),
    ]));
    let get = move || async move {
        tokio::task::spawn_blocking(move || {
            use std::io::{Read, Write};
            let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            c.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
            let mut out = String::new();
            c.read_to_string(&mut out).unwrap();
            out
        })
        .await
        .unwrap()
    };
    let r = get().await;
    assert!(r.starts_with("HTTP/1.1 503"), "no local endpoint: {r}");
    assert!(r.ends_with(r#"{"service":{"namespace":"default","name":"lb"},"localEndpoints":0,"serviceProxyHealthy":true}"#), "{r}");
    d.pass_on(&snapshot([
        lb_local(port),
        lb_slice(&[("10.244.1.5", "n2"), ("10.244.0.7", "n1")]),
    ]));
    let r = get().await;
    assert!(r.starts_with("HTTP/1.1 200 OK"), "{r}");
    assert!(r.contains(r#""localEndpoints":1"#), "{r}");
}

#[test]
fn fill_walks_cost_at_most_one_percent() {
    assert_eq!(fill_interval(Duration::ZERO), Duration::from_secs(1));
    assert_eq!(
        fill_interval(Duration::from_millis(50)),
        Duration::from_secs(5)
    );
    assert_eq!(
        fill_interval(Duration::from_secs(5)),
        Duration::from_secs(60)
    );
}

#[test]
fn a_dual_stack_pod_counts_once_as_kube_proxy_per_family() {
    use crate::proxy::model::BackendView;
    let be = |addr: &str, port: u16, local: bool, ready: bool| BackendView {
        port_name: String::new(),
        addr: addr.parse().unwrap(),
        port,
        proto: Proto::Tcp,
        id: 1,
        ready,
        serving: ready,
        terminating: false,
        local,
        node_name: None,
    };
    let one_pod = [
        be("10.244.0.7", 8080, true, true),
        be("10.244.0.7", 9090, true, true),
        be("fd00:244::7", 8080, true, true),
    ];
    assert_eq!(local_ready_per_family(&one_pod), 1);
    let more = [
        be("10.244.0.7", 8080, true, true),
        be("10.244.0.8", 8080, true, true),
        be("10.244.0.9", 8080, true, false),
        be("10.244.1.9", 8080, false, true),
        be("fd00:244::7", 8080, true, true),
    ];
    assert_eq!(local_ready_per_family(&more), 2);
    assert_eq!(local_ready_per_family(&[]), 0);
}

/// Told what changed, a pass that fails to write still counts the changed slices' latency
/// once the maps are programmed, and only once.
#[test]
fn programming_latency_waits_for_a_failed_pass_to_succeed() {
    let (mut d, _fixture) = flaky_daemon();
    let mut reg = prometheus_client::registry::Registry::default();
    d.metrics.register(&mut reg);
    let count = |reg: &prometheus_client::registry::Registry| {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, reg).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("kubeproxy_network_programming_duration_seconds_count "))
            .map(str::to_string)
    };
    let mut s = slice("web", &[("10.244.1.5", "n2")]);
    s["metadata"]["annotations"] = json!({TRIGGER_TIME: "2020-01-01T00:00:00Z"});
    let snap = snapshot([svc("web", "10.96.0.10"), s]);
    let slice_ref = ObjectRef::new(Kind::EndpointSlice, Some("default"), "web-1");
    let changed = BTreeSet::from([
        ObjectRef::new(Kind::Service, Some("default"), "web"),
        slice_ref.clone(),
    ]);
    assert!(d.pass_with(&snap, Some(&changed)).error.is_some());
    assert_eq!(count(&reg).as_deref(), Some("0"));
    d.dp.fail = false;
    assert!(d.pass_with(&snap, Some(&BTreeSet::new())).error.is_none());
    assert_eq!(count(&reg).as_deref(), Some("1"));
    // Named again with the same trigger time: not counted twice.
    d.pass_with(&snap, Some(&BTreeSet::from([slice_ref])));
    assert_eq!(count(&reg).as_deref(), Some("1"));
}
