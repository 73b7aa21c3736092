//! The service proxy's kernel edges on a real kernel (root only; skipped otherwise): loading
//! with maps pinned on a private bpffs and reused by a second load, applying diffs, reading
//! them back, and cleanup leaving nothing behind.

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
    let one: BTreeSet<IpAddr> = ["192.0.2.9".parse().unwrap()].into_iter().collect();
    l.set_node_addrs(&["192.0.2.1".parse().unwrap()].into_iter().collect())
        .unwrap();
    l.set_node_addrs(&one).unwrap();
    assert_eq!(l.maps().node_addrs().unwrap(), one);
}

/// Programming 10,000 Services (~40,000 map writes) and adding one more; the targets (100 ms
/// and 1 ms) are for release builds: `cargo test --release --test proxy_loader -- --nocapture`.
#[test]
fn ten_thousand_services_are_programmed_fast() {
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
    assert_eq!(l.read().unwrap().svc.len(), n as usize + 1);
    let (full_max, one_max) = if cfg!(debug_assertions) {
        (1000, 20)
    } else {
        (100, 1)
    };
    assert!(full.as_millis() <= full_max, "full load took {full:?}");
    assert!(one.as_millis() <= one_max, "one Service took {one:?}");
}
