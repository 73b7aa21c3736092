//! The service proxy's kernel edges on a real kernel (root only; skipped otherwise): loading
//! with maps pinned on a private bpffs and reused by a second load, applying diffs, reading
//! them back, and cleanup leaving nothing behind.

mod common;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Instant;

use metalnet_router::proxy::abi::{
    self, Backend, Proto, RevNat, Scope, SlotKey, SvcKey, SvcVal, svc_flags,
};
use metalnet_router::proxy::attach;
use metalnet_router::proxy::dataplane::Dataplane;
use metalnet_router::proxy::loader::{Loader, Sizes};
use metalnet_router::proxy::nft;
use metalnet_router::proxy::state::{MapDiff, MapState};

fn is_root() -> bool {
    metalnet::testing::netns::is_root()
}

/// A private bpffs directory, cleaned up (pins, links, mount) on drop, also on failure.
struct BpfDir {
    _tmp: tempfile::TempDir,
    path: PathBuf,
}

impl BpfDir {
    fn new() -> BpfDir {
        let tmp = tempfile::Builder::new()
            .prefix("mnl-bpf")
            .tempdir()
            .unwrap();
        let path = tmp.path().join("bpf");
        BpfDir { _tmp: tmp, path }
    }
}

impl Drop for BpfDir {
    fn drop(&mut self) {
        if let Err(e) = attach::cleanup(&self.path, None) {
            eprintln!("cleanup of {}: {e}", self.path.display());
        }
        // Whatever happened above, no mount outlives the test.
        if metalnet::sys::bpf::is_bpffs(&self.path).unwrap_or(false) {
            let _ = metalnet::sys::bpf::unmount(&self.path);
        }
    }
}

fn small() -> Sizes {
    Sizes {
        ct_max: 4096,
        ..Sizes::default()
    }
}

/// `n` ClusterIP Services 10.96.x.y:80/TCP with one backend each.
fn services(n: u32) -> MapState {
    let mut st = MapState::default();
    for i in 0..n {
        let rev = i + 1;
        let vip = IpAddr::from([10, 96, (i >> 8) as u8, (i & 0xff) as u8]);
        let be = IpAddr::from([198, 51, (i >> 8) as u8 & 0x3f, (i & 0xff) as u8]);
        st.svc.insert(
            SvcKey {
                addr: vip,
                port: 80,
                proto: Proto::Tcp,
                scope: Scope::External,
            },
            SvcVal {
                rev_id: rev,
                count: 1,
                flags: svc_flags::CLUSTER_IP,
                ..Default::default()
            },
        );
        st.slot.insert(
            SlotKey {
                rev_id: rev,
                slot: 1,
                scope: Scope::External,
            },
            rev,
        );
        st.backend.insert(
            rev,
            Backend {
                addr: be,
                port: 8080,
                proto: Proto::Tcp,
                flags: 0,
            },
        );
        st.rev_nat.insert(
            rev,
            RevNat {
                addr: vip,
                port: 80,
            },
        );
    }
    st
}

fn pins(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.display().to_string());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn maps_are_pinned_reused_by_a_second_load_and_read_back() {
    if !is_root() {
        return;
    }
    let dir = BpfDir::new();
    let mut a = Loader::open(&dir.path, &small()).unwrap();
    assert!(metalnet::sys::bpf::is_bpffs(&dir.path).unwrap());
    let want = services(3);
    a.apply(&MapDiff::between(&MapState::default(), &want))
        .unwrap();
    assert_eq!(a.read().unwrap(), want);
    let addrs: BTreeSet<IpAddr> = ["192.0.2.1".parse().unwrap(), "2001:db8::1".parse().unwrap()]
        .into_iter()
        .collect();
    a.set_node_addrs(&addrs).unwrap();
    a.set_cluster_cidrs(&["10.244.0.0/16".parse().unwrap()])
        .unwrap();
    let cfg = abi::Config {
        socket_lb: 1,
        maglev_m: 1021,
        masq_mark: 0x4000,
        ..Default::default()
    };
    a.set_config(&cfg).unwrap();
    let ids = a.maps().ids();
    let counters = a.counters().unwrap();
    assert_eq!(counters.len(), abi::COUNTERS_LEN as usize);
    assert!(counters.iter().all(|c| *c == 0));
    assert_eq!(a.maps().maglev_entries(), 1021 * 256);
    let fill = a.fill().unwrap();
    assert_eq!(fill.maps[0], (abi::names::CT, 0, 4096));

    // A second load while the first is alive, then a "restart": same maps, same contents.
    let b = Loader::open(&dir.path, &small()).unwrap();
    assert_eq!(b.maps().ids(), ids);
    drop(a);
    drop(b);
    let c = Loader::open(&dir.path, &small()).unwrap();
    assert_eq!(c.maps().ids(), ids);
    assert_eq!(c.read().unwrap(), want);
    assert_eq!(c.maps().node_addrs().unwrap(), addrs);
    assert_eq!(c.maps().config().unwrap(), cfg);
    drop(c);

    attach::cleanup(&dir.path, None).unwrap();
    assert!(pins(&dir.path).is_empty(), "{:?}", pins(&dir.path));
    assert!(
        !dir.path.exists() || !metalnet::sys::bpf::is_bpffs(&dir.path).unwrap(),
        "the bpffs we mounted is unmounted"
    );
}

#[test]
fn diffs_shrink_and_remove_and_node_addrs_follow() {
    if !is_root() {
        return;
    }
    let dir = BpfDir::new();
    let mut l = Loader::open(&dir.path, &small()).unwrap();
    let big = services(40);
    l.apply(&MapDiff::between(&MapState::default(), &big))
        .unwrap();
    assert_eq!(l.read().unwrap(), big);
    let less = services(7);
    l.apply(&MapDiff::between(&big, &less)).unwrap();
    assert_eq!(l.read().unwrap(), less);
    // Removing what is already gone (a repeated diff) is not an error.
    l.apply(&MapDiff::between(&big, &less)).unwrap();
    // Every control-plane map: affinity matches, source ranges (both families), Maglev rows.
    let mut rich = less.clone();
    for v in rich.svc.values_mut().take(2) {
        v.flags |= svc_flags::MAGLEV | svc_flags::AFFINITY | svc_flags::SRC_RANGE;
        v.maglev_row = v.rev_id;
        v.affinity_timeout = 10800;
    }
    for rev in [1u32, 2] {
        rich.maglev
            .insert(rev, (0..1021).map(|i| i % 3 + rev).collect());
        rich.affinity_match.insert(abi::AffinityMatch {
            backend_id: rev,
            rev_id: rev,
        });
        for net in ["192.0.2.0/24", "2001:db8::/32"] {
            rich.src_range.insert(abi::SrcRange {
                rev_id: rev,
                net: net.parse().unwrap(),
            });
        }
    }
    l.apply(&MapDiff::between(&less, &rich)).unwrap();
    assert_eq!(l.read().unwrap(), rich);
    l.apply(&MapDiff::between(&rich, &less)).unwrap();
    assert_eq!(l.read().unwrap(), less);
    let one: BTreeSet<IpAddr> = ["192.0.2.9".parse().unwrap()].into_iter().collect();
    l.set_node_addrs(&["192.0.2.1".parse().unwrap()].into_iter().collect())
        .unwrap();
    l.set_node_addrs(&one).unwrap();
    assert_eq!(l.maps().node_addrs().unwrap(), one);
}

/// Programming 10,000 Services (~40,000 map writes) and adding one more, read back whole. The
/// times are printed, not asserted: the service-proxy bench measures them against kube-proxy's
/// rule sets (`cargo bench -p metalnet-lab --bench service_proxy`).
#[test]
fn ten_thousand_services_are_programmed_and_one_added() {
    if !is_root() {
        return;
    }
    let dir = BpfDir::new();
    let mut l = Loader::open(&dir.path, &small()).unwrap();
    let n = 10_000;
    let all = services(n);
    let diff = MapDiff::between(&MapState::default(), &all);
    let t = Instant::now();
    l.apply(&diff).unwrap();
    let full = t.elapsed();
    let more = services(n + 1);
    let diff1 = MapDiff::between(&all, &more);
    let t = Instant::now();
    l.apply(&diff1).unwrap();
    let one = t.elapsed();
    eprintln!(
        "programmed {n} Services ({} map writes) in {full:?}; one more in {one:?}",
        diff.len()
    );
    assert_eq!(l.read().unwrap(), more);
}

// --- attach, restart and cleanup with the real programs ------------------------------------

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

use metalnet::testing::Netns;
use metalnet_router::proxy::attach::{AttachOptions, Attachments};
use metalnet_router::proxy::loader::Programs;

const VIP: &str = "10.96.0.10";
const CLIENT: &str = "192.0.2.1";
const SERVER: &str = "192.0.2.2";

/// client --veth c0|s0-- server (the node: the proxy attaches here; the backend listens here).
fn topology() -> (Netns, Netns) {
    let client = Netns::new("pxc").unwrap();
    let server = Netns::new("pxs").unwrap();
    client.ip(&[
        "link",
        "add",
        "c0",
        "type",
        "veth",
        "peer",
        "name",
        "s0",
        "netns",
        server.name(),
    ]);
    client.ip(&["addr", "add", &format!("{CLIENT}/24"), "dev", "c0"]);
    server.ip(&["addr", "add", &format!("{SERVER}/24"), "dev", "s0"]);
    client.ip(&["link", "set", "c0", "up"]);
    server.ip(&["link", "set", "s0", "up"]);
    client.ip(&["route", "add", "10.96.0.0/12", "via", SERVER]);
    common::checksum_offloads_off(client.name(), "c0");
    common::checksum_offloads_off(server.name(), "s0");
    (client, server)
}

/// An echo server on SERVER:8080 in the server namespace, for the test's lifetime.
fn echo_server(server: &Netns) {
    let l = metalnet::sys::netns::spawn_in(server.name(), || {
        TcpListener::bind(format!("{SERVER}:8080")).unwrap()
    })
    .unwrap()
    .join()
    .unwrap()
    .unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 512];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
}

fn in_ns<R: Send + 'static>(ns: &Netns, f: impl FnOnce() -> R + Send + 'static) -> R {
    metalnet::sys::netns::spawn_in(ns.name(), f)
        .unwrap()
        .join()
        .unwrap()
        .unwrap()
}

fn connect_vip(client: &Netns) -> std::io::Result<TcpStream> {
    in_ns(client, || {
        let s = TcpStream::connect_timeout(
            &format!("{VIP}:80").parse::<SocketAddr>().unwrap(),
            Duration::from_millis(1500),
        )?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(s)
    })
}

fn echo(s: &mut TcpStream, msg: &str) -> String {
    let what = format!("echo {msg:?} on {:?}", s.local_addr());
    s.write_all(msg.as_bytes())
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let mut buf = vec![0u8; msg.len()];
    s.read_exact(&mut buf)
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    String::from_utf8(buf).unwrap()
}

fn one_service() -> MapState {
    let mut st = MapState::default();
    let vip: IpAddr = VIP.parse().unwrap();
    st.svc.insert(
        SvcKey {
            addr: vip,
            port: 80,
            proto: Proto::Tcp,
            scope: Scope::External,
        },
        SvcVal {
            rev_id: 1,
            count: 1,
            flags: svc_flags::CLUSTER_IP,
            ..Default::default()
        },
    );
    st.slot.insert(
        SlotKey {
            rev_id: 1,
            slot: 1,
            scope: Scope::External,
        },
        1,
    );
    st.backend.insert(
        1,
        Backend {
            addr: SERVER.parse().unwrap(),
            port: 8080,
            proto: Proto::Tcp,
            flags: abi::backend_flags::LOCAL,
        },
    );
    st.rev_nat.insert(
        1,
        RevNat {
            addr: vip,
            port: 80,
        },
    );
    st
}

fn start(server: &Netns, programs: Programs, opts: AttachOptions) -> Attachments {
    in_ns(server, move || Attachments::start(programs, opts)).unwrap()
}

/// socket-LB: a process of the test cgroup, in the client namespace, connects to the VIP;
/// prints what getpeername shows and the echo.
fn socket_lb_client(client: &Netns, cg: &common::Cgroup) -> String {
    let script = format!(
        "import socket; s=socket.create_connection(('{VIP}',80),timeout=3); \
         p=s.getpeername(); s.sendall(b'sock'); print(p[0], p[1], s.recv(16).decode())"
    );
    cg.run_python(client.name(), 10, &script).trim().to_string()
}

/// [`socket_lb_client`], checking that socket-LB (not the per-packet path) translated it.
fn socket_lb_through(l: &Loader, client: &Netns, cg: &common::Cgroup) {
    let before = l.counters().unwrap()[1];
    assert_eq!(socket_lb_client(client, cg), format!("{VIP} 80 sock"));
    let after = l.counters().unwrap()[1];
    assert!(after > before, "sock_lb counter {before} -> {after}");
}

#[test]
fn attached_programs_balance_survive_a_restart_and_cleanup_removes_them() {
    if !is_root() {
        return;
    }
    let dir = BpfDir::new();
    // Room for the connections the restart check opens: an LRU conntrack map that is too
    // small evicts the entries of established connections, which then get reset.
    let sizes = Sizes {
        ct_max: 262_144,
        ..Sizes::default()
    };
    let probe = Loader::open(&dir.path, &sizes)
        .unwrap()
        .take_programs()
        .unwrap();
    if probe.lb.program(attach::TC_INGRESS).is_none() {
        eprintln!("skipping: lb.o has no {} yet", attach::TC_INGRESS);
        return;
    }
    drop(probe);
    let cg = common::Cgroup::new("pxl");
    let (client, server) = topology();
    echo_server(&server);
    let opts = AttachOptions {
        bpf_dir: dir.path.clone(),
        cgroup_root: Some(cg.path.clone()),
        nodeport_addresses: vec![],
        node_addrs: true,
        tc_attach: attach::TcAttach::Auto,
    };
    let cfg = abi::Config {
        socket_lb: 1,
        maglev_m: 1021,
        masq_mark: 0x4000,
        ct_timeout_tcp: 3600,
        ct_timeout_other: 60,
        ..Default::default()
    };

    // First run.
    let mut l1 = Loader::open(&dir.path, &sizes).unwrap();
    l1.set_config(&cfg).unwrap();
    let want = one_service();
    l1.apply(&MapDiff::between(&MapState::default(), &want))
        .unwrap();
    let a1 = start(&server, l1.take_programs().unwrap(), opts.clone());
    let st = a1.status();
    assert_eq!(
        st.interfaces.values().collect::<Vec<_>>(),
        vec!["s0"],
        "{st:?}"
    );
    assert_eq!(st.cgroup_programs.len(), 8, "{st:?}");
    let server_addr: IpAddr = SERVER.parse().unwrap();
    assert!(st.node_addrs.contains(&server_addr), "{st:?}");
    assert_eq!(l1.maps().node_addrs().unwrap(), st.node_addrs);

    // Per-packet path (the test process is not in the cgroup) and socket-LB.
    let mut kept = connect_vip(&client).unwrap();
    assert_eq!(kept.peer_addr().unwrap().ip().to_string(), VIP);
    assert_eq!(echo(&mut kept, "before"), "before");
    let mut many: Vec<TcpStream> = (0..200).map(|_| connect_vip(&client).unwrap()).collect();
    socket_lb_through(&l1, &client, &cg);
    let counters = l1.counters().unwrap();
    assert!(
        counters[0] >= 1 && counters[1] >= 1,
        "lb_new, sock_lb: {counters:?}"
    );

    // Restart: the process "exits" (attachments and maps stay), a new one loads and swaps.
    // New connections keep coming all along: none may fail.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hammer = {
        let stop = stop.clone();
        metalnet::sys::netns::spawn_in(client.name(), move || {
            let (mut ok, mut failed) = (0u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = TcpStream::connect_timeout(
                    &format!("{VIP}:80").parse::<SocketAddr>().unwrap(),
                    Duration::from_secs(2),
                )
                .and_then(|mut s| {
                    s.set_read_timeout(Some(Duration::from_secs(2)))?;
                    s.write_all(b"h")?;
                    let mut b = [0u8; 1];
                    s.read_exact(&mut b)
                });
                match r {
                    Ok(()) => ok += 1,
                    Err(e) => failed.push(e.to_string()),
                }
            }
            (ok, failed)
        })
        .unwrap()
    };
    std::thread::sleep(Duration::from_millis(100));
    let ids = l1.maps().ids();
    let links = pins(&dir.path.join(attach::LINKS_DIR));
    drop(a1);
    drop(l1);
    assert_eq!(
        echo(&mut kept, "between"),
        "between",
        "nothing detached on exit"
    );
    let mut l2 = Loader::open(&dir.path, &sizes).unwrap();
    assert_eq!(l2.maps().ids(), ids, "same maps");
    assert_eq!(l2.read().unwrap(), want, "same contents, same ids");
    let a2 = start(&server, l2.take_programs().unwrap(), opts.clone());
    std::thread::sleep(Duration::from_millis(100));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = hammer.join().unwrap().unwrap();
    eprintln!(
        "{ok} connections through the VIP during the restart, {} failed",
        failed.len()
    );
    assert!(failed.is_empty(), "{failed:?}");
    assert!(ok > 10, "{ok}");
    assert_eq!(
        pins(&dir.path.join(attach::LINKS_DIR)),
        links,
        "links reused"
    );
    assert_eq!(echo(&mut kept, "after"), "after", "the connection survived");
    for (i, c) in many.iter_mut().enumerate() {
        assert_eq!(
            echo(c, "kept"),
            "kept",
            "connection {i} of 200 survived the restart"
        );
    }
    drop(many);
    let mut fresh = connect_vip(&client).unwrap();
    assert_eq!(echo(&mut fresh, "fresh"), "fresh");
    socket_lb_through(&l2, &client, &cg);

    // An interface created later gets the programs at once; its address becomes a node
    // address.
    server.ip(&[
        "link", "add", "cni0", "type", "veth", "peer", "name", "cni1",
    ]);
    server.ip(&["addr", "add", "203.0.113.5/32", "dev", "cni0"]);
    let t = Instant::now();
    let late: IpAddr = "203.0.113.5".parse().unwrap();
    loop {
        let st = a2.status();
        let names: Vec<&String> = st.interfaces.values().collect();
        if names.len() == 3 && st.node_addrs.contains(&late) {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "not attached: {st:?}");
        std::thread::sleep(Duration::from_millis(2));
    }
    eprintln!(
        "late interfaces attached and addressed in {:?}",
        t.elapsed()
    );
    assert!(l2.maps().node_addrs().unwrap().contains(&late));
    // A CNI moving the peer into a pod: it leaves the node's namespace, and its programs
    // with it (a link pinned only by us is freed when its pin goes).
    server.ip(&["link", "set", "cni1", "netns", client.name()]);
    let t = Instant::now();
    while a2.status().interfaces.len() != 2 {
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", a2.status());
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(
        pins(&dir.path.join(attach::LINKS_DIR)).len(),
        links.len() + 2
    );
    server.ip(&["link", "del", "cni0"]);
    let t = Instant::now();
    while a2.status().interfaces.len() != 1 {
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", a2.status());
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(
        pins(&dir.path.join(attach::LINKS_DIR)),
        links,
        "the gone one's pins went"
    );

    assert_eq!(common::csum_errors(client.name()), 0);
    assert_eq!(common::csum_errors(server.name()), 0);

    // Another --cgroup-root on the next start: the programs move there.
    drop(a2);
    drop(l2);
    let other = common::Cgroup::new("pxo");
    let mut l2 = Loader::open(&dir.path, &sizes).unwrap();
    let a2 = start(
        &server,
        l2.take_programs().unwrap(),
        AttachOptions {
            cgroup_root: Some(other.path.clone()),
            ..opts.clone()
        },
    );
    let moved = pins(&dir.path.join(attach::LINKS_DIR));
    assert_eq!(moved.len(), links.len(), "{moved:?}");
    assert_ne!(moved, links, "new cgroup, new pins");
    socket_lb_through(&l2, &client, &other);

    // --socket-lb=off on the next start: the socket programs leave the cgroup.
    drop(a2);
    drop(l2);
    let mut l3 = Loader::open(&dir.path, &sizes).unwrap();
    let a3 = start(
        &server,
        l3.take_programs().unwrap(),
        AttachOptions {
            cgroup_root: None,
            ..opts.clone()
        },
    );
    let left = pins(&dir.path.join(attach::LINKS_DIR));
    assert!(left.iter().all(|p| !p.contains("cgroup-")), "{left:?}");
    assert_eq!(left.len(), 2, "{left:?}");
    assert_eq!(echo(&mut kept, "off"), "off");
    let (a2, l2) = (a3, l3);

    // Cleanup: nothing pinned, nothing attached, nothing mounted.
    drop(a2);
    drop(l2);
    drop(kept);
    drop(fresh);
    attach::cleanup(&dir.path, Some(&cg.path)).unwrap();
    assert!(pins(&dir.path).is_empty(), "{:?}", pins(&dir.path));
    assert!(!metalnet::sys::bpf::is_bpffs(&dir.path).unwrap_or(false));
    // The kernel frees unpinned links after an RCU grace period: give it a moment.
    let t = Instant::now();
    while connect_vip(&client).is_ok() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the VIP still answers"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let procs = std::fs::read_to_string(cg.path.join("cgroup.procs")).unwrap();
    assert!(procs.trim().is_empty(), "{procs}");
}

#[test]
fn a_connected_udp_socket_to_a_deleted_backend_gets_an_error() {
    if !is_root() {
        return;
    }
    let ns = Netns::with_veth("pxu").unwrap();
    // A backend address and port no other test uses: destroy_sockets looks everywhere.
    ns.ip(&[
        "-6",
        "addr",
        "add",
        "2001:db8::1/64",
        "dev",
        "eth0",
        "nodad",
    ]);
    let (v4, v6, other) = in_ns(&ns, || {
        let v4 = std::net::UdpSocket::bind("192.0.2.1:0").unwrap();
        v4.connect("192.0.2.77:40999").unwrap();
        let v6 = std::net::UdpSocket::bind("[2001:db8::1]:0").unwrap();
        v6.connect("[2001:db8::77]:40999").unwrap();
        // Same address, another port: not a deleted backend.
        let other = std::net::UdpSocket::bind("192.0.2.1:0").unwrap();
        other.connect("192.0.2.77:41000").unwrap();
        (v4, v6, other)
    });
    let gone = |addr: &str| Backend {
        addr: addr.parse().unwrap(),
        port: 40999,
        proto: Proto::Udp,
        flags: 0,
    };
    let n = attach::destroy_sockets(&[gone("192.0.2.77"), gone("2001:db8::77")]).unwrap();
    assert_eq!(n, 2);
    // The kernel aborts them (the pending error) and disconnects them: the client learns at
    // once and must reconnect, to a live backend.
    for sock in [&v4, &v6] {
        let pending = sock.take_error().unwrap().expect("a pending error");
        assert_eq!(
            pending.raw_os_error(),
            Some(libc::ECONNABORTED),
            "{pending}"
        );
        let e = sock.send(b"x").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EDESTADDRREQ), "{e}");
    }
    assert!(other.take_error().unwrap().is_none());
    other.send(b"x").unwrap();

    // TCP: the client's connection is aborted; the listener and the server's side are not
    // "connected to the backend" and stay.
    let (listener, mut client, accepted) = in_ns(&ns, || {
        let l = TcpListener::bind("192.0.2.1:40998").unwrap();
        // One closed by the client first: it lingers in TIME_WAIT, which is no failure.
        let closed = TcpStream::connect("192.0.2.1:40998").unwrap();
        let (a, _) = l.accept().unwrap();
        drop(closed);
        let mut a = a;
        let _ = a.read(&mut [0u8; 1]);
        drop(a);
        let c = TcpStream::connect("192.0.2.1:40998").unwrap();
        let (a, _) = l.accept().unwrap();
        (l, c, a)
    });
    let n = attach::destroy_sockets(&[Backend {
        addr: "192.0.2.1".parse().unwrap(),
        port: 40998,
        proto: Proto::Tcp,
        flags: 0,
    }])
    .unwrap();
    assert_eq!(n, 1);
    let e = client.read(&mut [0u8; 4]).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ECONNABORTED), "{e}");
    drop((listener, accepted));
}

#[test]
fn the_masquerade_table_is_idempotent_and_removable() {
    if !is_root() {
        return;
    }
    let ns = Netns::new("pxn").unwrap();
    let shown = in_ns(&ns, || {
        nft::ensure(0x4000).unwrap();
        nft::ensure(0x4000).unwrap();
        let shown = nft::show().unwrap();
        nft::remove().unwrap();
        nft::remove().unwrap();
        (shown, nft::show().unwrap())
    });
    let table = shown.0.expect("the table");
    assert!(table.contains("masquerade"), "{table}");
    assert_eq!(table.matches("chain postrouting").count(), 1, "{table}");
    assert_eq!(shown.1, None);
}

/// A pod reaching itself through its Service: the node routes the DNATed packet back out the
/// pod's veth and masquerades it, so the pod sees the node's address, not its own.
#[test]
fn hairpin_through_the_vip_is_masqueraded() {
    if !is_root() {
        return;
    }
    let dir = BpfDir::new();
    let probe = Loader::open(&dir.path, &small())
        .unwrap()
        .take_programs()
        .unwrap();
    if probe.lb.program(attach::TC_INGRESS).is_none() {
        eprintln!("skipping: lb.o has no {} yet", attach::TC_INGRESS);
        return;
    }
    drop(probe);
    let (pod, node) = topology();
    for s in [
        "net.ipv4.ip_forward=1",
        "net.ipv4.conf.all.send_redirects=0",
    ] {
        let out = Command::new("ip")
            .args(["netns", "exec", node.name(), "sysctl", "-qw", s])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{s}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The pod's server answers with the peer address it sees.
    let l = in_ns(&pod, || {
        TcpListener::bind(format!("{CLIENT}:8080")).unwrap()
    });
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            let peer = s.peer_addr().unwrap().ip().to_string();
            let _ = s.write_all(peer.as_bytes());
        }
    });
    let cfg = abi::Config {
        socket_lb: 1,
        maglev_m: 1021,
        masq_mark: 0x4000,
        ct_timeout_tcp: 3600,
        ct_timeout_other: 60,
        ..Default::default()
    };
    let opts = AttachOptions {
        bpf_dir: dir.path.clone(),
        cgroup_root: None,
        nodeport_addresses: vec![],
        node_addrs: false,
        tc_attach: attach::TcAttach::Auto,
    };
    let (mut l1, a) = in_ns(&node, move || attach::open_data_path(&small(), &cfg, opts)).unwrap();
    assert_eq!(l1.maps().config().unwrap(), cfg);
    let mut want = one_service();
    want.backend.insert(
        1,
        Backend {
            addr: CLIENT.parse().unwrap(),
            port: 8080,
            proto: Proto::Tcp,
            flags: 0,
        },
    );
    l1.apply(&MapDiff::between(&MapState::default(), &want))
        .unwrap();
    let mut s = connect_vip(&pod).unwrap();
    assert_eq!(s.peer_addr().unwrap().ip().to_string(), VIP);
    let mut seen = String::new();
    s.read_to_string(&mut seen).unwrap();
    assert_eq!(seen, SERVER, "the pod sees the node's address");
    assert_eq!(common::csum_errors(pod.name()), 0);
    drop(a);
    drop(l1);
}

/// Fill levels count what the per-connection maps hold (they are walked: time it).
#[test]
fn fill_levels_count_the_conntrack_entries() {
    if !is_root() {
        return;
    }
    let dir = BpfDir::new();
    let sizes = Sizes {
        ct_max: 131_072,
        ..Sizes::default()
    };
    let l = Loader::open(&dir.path, &sizes).unwrap();
    let n: u32 = 100_000;
    let mut keys = Vec::with_capacity(n as usize * 40);
    let mut vals = Vec::with_capacity(n as usize * abi::CT_VAL_LEN);
    for i in 0..n {
        let k = abi::CtKey {
            saddr: IpAddr::from([192, 0, 2, (i % 250) as u8]),
            daddr: VIP.parse().unwrap(),
            sport: (i / 250) as u16 + 1024,
            dport: 80,
            proto: 6,
            dir: 0,
        };
        keys.extend_from_slice(&k.to_bytes());
        vals.extend_from_slice(&[0u8; abi::CT_VAL_LEN]);
    }
    let ct = metalnet::sys::bpf::obj_get(&dir.path.join("maps").join(abi::names::CT)).unwrap();
    use std::os::fd::AsFd;
    metalnet::sys::bpf::map_update_batch(ct.as_fd(), &keys, 40, &vals, abi::CT_VAL_LEN).unwrap();
    let t = Instant::now();
    let fill = l.fill().unwrap();
    eprintln!("fill of {n} conntrack entries in {:?}", t.elapsed());
    assert_eq!(fill.maps[0], (abi::names::CT, n as u64, 131_072));
    assert_eq!(fill.maps[1].1, 0);
}

/// A CNI starting many pods at once: every new interface gets the programs, quickly; every
/// deleted one loses its pins.
#[test]
fn a_burst_of_interfaces_is_attached_and_forgotten() {
    if !is_root() {
        return;
    }
    let dir = BpfDir::new();
    let mut l = Loader::open(&dir.path, &small()).unwrap();
    let programs = l.take_programs().unwrap();
    if programs.lb.program(attach::TC_INGRESS).is_none() {
        eprintln!("skipping: lb.o has no {} yet", attach::TC_INGRESS);
        return;
    }
    let ns = Netns::new("pxb").unwrap();
    let a = start(
        &ns,
        programs,
        AttachOptions {
            bpf_dir: dir.path.clone(),
            cgroup_root: None,
            nodeport_addresses: vec![],
            node_addrs: false,
            tc_attach: attach::TcAttach::Auto,
        },
    );
    assert!(a.status().interfaces.is_empty(), "{:?}", a.status());
    let pairs = 50;
    let batch: String = (0..pairs)
        .map(|i| format!("link add h{i} type veth peer name p{i}\n"))
        .collect();
    let run_batch = |script: String| {
        let mut child = Command::new("ip")
            .args(["-n", ns.name(), "-batch", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success());
    };
    let t = Instant::now();
    run_batch(batch);
    let created = t.elapsed();
    while a.status().interfaces.len() != 2 * pairs {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{} attached",
            a.status().interfaces.len()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    eprintln!(
        "{} interfaces created in {created:?} (TCX attachments hold the rtnl lock through an \
         RCU grace period, which slows creation); all attached {:?} after the last one",
        2 * pairs,
        t.elapsed().saturating_sub(created)
    );
    assert_eq!(
        pins(&dir.path.join(attach::LINKS_DIR)).len(),
        4 * pairs,
        "ingress and egress each"
    );
    assert_eq!(a.status().errors, 0);
    run_batch((0..pairs).map(|i| format!("link del h{i}\n")).collect());
    let t = Instant::now();
    while !a.status().interfaces.is_empty() {
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", a.status());
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(pins(&dir.path.join(attach::LINKS_DIR)).is_empty());
}

/// A map pinned with another layout (an older or newer proxy) makes the loader create every
/// map afresh, rather than leave the node without a proxy: programs load, the foreign map is
/// replaced, and no entry of the old maps is left to point into the new ones.
#[test]
fn a_map_pinned_with_another_layout_makes_every_map_afresh() {
    if !is_root() {
        return;
    }
    let dir = BpfDir::new();
    let maps_dir = dir.path.join("maps");
    {
        let mut old = Loader::open(&dir.path, &small()).unwrap();
        old.apply(&MapDiff::between(&MapState::default(), &services(3)))
            .unwrap();
    }
    let svc = maps_dir.join(abi::names::SVC);
    std::fs::remove_file(&svc).unwrap();
    let wrong = aya::maps::HashMap::<aya::maps::MapData, u32, u32>::create(16, 0).unwrap();
    wrong.pin(&svc).unwrap();

    let loader = Loader::open(&dir.path, &small()).expect("a foreign layout is replaced");
    let info = aya::maps::MapData::from_pin(&svc).unwrap().info().unwrap();
    assert_eq!((info.key_size(), info.value_size()), (20, 16));
    assert_eq!(
        loader.read().unwrap(),
        MapState::default(),
        "the other maps are new too"
    );
    // `dump` and other readers open them as they are now.
    drop(metalnet_router::proxy::loader::Maps::open(&dir.path).expect("the new maps open"));
}

/// `--tc-attach=clsact`: the programs go on as clsact filters of a priority of ours and
/// balance; a restart replaces them in place (one filter per direction, the connection kept);
/// a start the TCX way removes them, a start the clsact way removes the TCX links, and
/// cleanup removes the filters.
#[test]
fn clsact_filters_balance_are_replaced_on_restart_and_cleaned_up() {
    if !is_root() {
        return;
    }
    let dir = BpfDir::new();
    let sizes = Sizes::default();
    let (client, server) = topology();
    echo_server(&server);
    let clsact = AttachOptions {
        bpf_dir: dir.path.clone(),
        cgroup_root: None,
        nodeport_addresses: vec![],
        node_addrs: true,
        tc_attach: attach::TcAttach::Clsact,
    };
    let tcx = AttachOptions {
        tc_attach: attach::TcAttach::Auto,
        ..clsact.clone()
    };
    let cfg = abi::Config {
        maglev_m: 1021,
        masq_mark: 0x4000,
        ct_timeout_tcp: 3600,
        ct_timeout_other: 60,
        ..Default::default()
    };
    let server_ns = server.name().to_string();
    let filters = move |hook: &str| -> Vec<String> {
        let out = Command::new("ip")
            .args([
                "netns", "exec", &server_ns, "tc", "filter", "show", "dev", "s0", hook,
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains("mn_tc_"))
            .map(str::to_string)
            .collect()
    };
    let ours = |hook: &str, prog: &str| {
        let f = filters(hook);
        assert!(
            f.len() == 1
                && f[0].contains(prog)
                && f[0].contains(&format!("pref {}", attach::CLSACT_PRIORITY)),
            "one filter of ours on s0 {hook}: {f:?}"
        );
    };
    let tcx_pins = |d: &Path| -> usize {
        pins(&d.join(attach::LINKS_DIR))
            .iter()
            .filter(|p| p.rsplit('/').next().is_some_and(|n| n.starts_with("tcx-")))
            .count()
    };

    let mut l1 = Loader::open(&dir.path, &sizes).unwrap();
    l1.set_config(&cfg).unwrap();
    l1.apply(&MapDiff::between(&MapState::default(), &one_service()))
        .unwrap();
    let a1 = start(&server, l1.take_programs().unwrap(), clsact.clone());
    assert_eq!(
        a1.status().interfaces.values().collect::<Vec<_>>(),
        vec!["s0"]
    );
    ours("ingress", attach::TC_INGRESS);
    ours("egress", attach::TC_EGRESS);
    assert_eq!(tcx_pins(&dir.path), 0);
    let mut kept = connect_vip(&client).unwrap();
    assert_eq!(echo(&mut kept, "clsact"), "clsact");
    assert!(l1.counters().unwrap()[0] >= 1, "balanced per packet");

    // A restart: the same filters get the new programs; nothing is added, nothing dropped.
    drop(a1);
    drop(l1);
    let mut l2 = Loader::open(&dir.path, &sizes).unwrap();
    let a2 = start(&server, l2.take_programs().unwrap(), clsact.clone());
    ours("ingress", attach::TC_INGRESS);
    ours("egress", attach::TC_EGRESS);
    assert_eq!(echo(&mut kept, "restarted"), "restarted");
    let mut fresh = connect_vip(&client).unwrap();
    assert_eq!(echo(&mut fresh, "fresh"), "fresh");

    // The TCX way next: links pinned, our filters gone (else the programs ran twice).
    drop(a2);
    drop(l2);
    let mut l3 = Loader::open(&dir.path, &sizes).unwrap();
    let a3 = start(&server, l3.take_programs().unwrap(), tcx);
    assert_eq!(tcx_pins(&dir.path), 2);
    assert!(filters("ingress").is_empty() && filters("egress").is_empty());
    assert_eq!(echo(&mut kept, "tcx"), "tcx");

    // And back: the TCX links go.
    drop(a3);
    drop(l3);
    let mut l4 = Loader::open(&dir.path, &sizes).unwrap();
    let a4 = start(&server, l4.take_programs().unwrap(), clsact);
    assert_eq!(tcx_pins(&dir.path), 0);
    ours("ingress", attach::TC_INGRESS);
    assert_eq!(echo(&mut kept, "back"), "back");
    assert_eq!(common::csum_errors(client.name()), 0);
    assert_eq!(common::csum_errors(server.name()), 0);

    drop(a4);
    drop(l4);
    let d = dir.path.clone();
    in_ns(&server, move || attach::cleanup(&d, None)).unwrap();
    assert!(
        filters("ingress").is_empty() && filters("egress").is_empty(),
        "cleanup removes the filters"
    );
}
