//! The per-packet data path (`bpf/lb.c`) run on crafted packets with BPF_PROG_TEST_RUN, no
//! network: each test mounts a private bpffs on a temporary directory (unmounted on drop,
//! also when the test fails), loads `lb.o` with its maps pinned there, fills the maps through
//! the `abi` codecs and checks the rewritten addresses, ports, marks and checksums (computed
//! here from scratch). Root only: skipped with a message otherwise.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::Command;

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, HashMap, MapData, PerCpuArray};
use aya::programs::{SchedClassifier, TestRun, TestRunOptions};
use aya::{Ebpf, EbpfLoader};
use metalnet_router::proxy::abi::{
    self, AffinityMatch, Backend, Config, CtKey, CtVal, Proto, RevNat, Scope, SlotKey, SrcRange,
    SvcKey, SvcVal, backend_flags, ct_flags, names, svc_flags,
};

static LB_O: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb.o"));
static SOCK_O: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sock.o"));

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;
const MASQ: u32 = 0x4000;

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const RST: u8 = 0x04;
const FIN: u8 = 0x01;
const TCP: u8 = 6;
const UDP: u8 = 17;

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// A bpffs mounted on a temporary directory; unmounted (lazily, so open pins do not block
/// it) and removed on drop.
struct Bpffs {
    dir: tempfile::TempDir,
}

impl Bpffs {
    fn mount() -> Bpffs {
        let dir = tempfile::Builder::new()
            .prefix("mnl-bpffs")
            .tempdir()
            .expect("a temporary directory");
        let st = Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(dir.path())
            .status()
            .expect("running mount");
        assert!(st.success(), "mount -t bpf on {}", dir.path().display());
        Bpffs { dir }
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// lb.o loaded against a private bpffs, with map writers in the abi encodings.
struct Dp {
    ebpf: Ebpf,
    // Dropped after `ebpf` (fields drop in order): the maps close before the unmount.
    _fs: Bpffs,
}

impl Dp {
    fn new() -> Option<Dp> {
        if !is_root() {
            eprintln!("skipped: BPF_PROG_TEST_RUN and bpffs need root");
            return None;
        }
        let fs = Bpffs::mount();
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(fs.path())
            .load(LB_O)
            .expect("lb.o loads");
        for name in ["mn_tc_ingress", "mn_tc_egress"] {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .unwrap_or_else(|| panic!("lb.o has {name}"))
                .try_into()
                .expect("a classifier");
            prog.load()
                .unwrap_or_else(|e| panic!("{name} passes the verifier: {e:?}"));
        }
        let mut dp = Dp { ebpf, _fs: fs };
        dp.config(Config {
            masq_mark: MASQ,
            maglev_m: 7,
            ..Config::default()
        });
        Some(dp)
    }

    fn hash<const K: usize, const V: usize>(
        &mut self,
        map: &str,
    ) -> HashMap<&mut MapData, [u8; K], [u8; V]> {
        HashMap::try_from(self.ebpf.map_mut(map).expect("map exists")).expect("hash map")
    }

    fn config(&mut self, c: Config) {
        let mut m: Array<_, [u8; 32]> =
            Array::try_from(self.ebpf.map_mut(names::CONFIG).unwrap()).unwrap();
        m.set(0, c.to_bytes(), 0).unwrap();
    }

    fn svc(&mut self, addr: &str, port: u16, proto: Proto, scope: Scope, val: SvcVal) {
        let k = SvcKey {
            addr: addr.parse().unwrap(),
            port,
            proto,
            scope,
        };
        self.hash::<20, 16>(names::SVC)
            .insert(k.to_bytes(), val.to_bytes(), 0)
            .unwrap();
    }

    fn slot(&mut self, rev_id: u32, scope: Scope, slot: u16, backend_id: u32) {
        let k = SlotKey {
            rev_id,
            slot,
            scope,
        };
        self.hash::<8, 4>(names::SLOT)
            .insert(k.to_bytes(), backend_id.to_le_bytes(), 0)
            .unwrap();
    }

    fn backend(&mut self, id: u32, addr: &str, port: u16, proto: Proto, flags: u8) {
        let b = Backend {
            addr: addr.parse().unwrap(),
            port,
            proto,
            flags,
        };
        self.hash::<4, 20>(names::BACKEND)
            .insert(id.to_le_bytes(), b.to_bytes(), 0)
            .unwrap();
    }

    fn remove_backend(&mut self, id: u32) {
        self.hash::<4, 20>(names::BACKEND)
            .remove(&id.to_le_bytes())
            .unwrap();
    }

    fn rev_nat(&mut self, rev_id: u32, addr: &str, port: u16) {
        let r = RevNat {
            addr: addr.parse().unwrap(),
            port,
        };
        self.hash::<4, 20>(names::REV_NAT)
            .insert(rev_id.to_le_bytes(), r.to_bytes(), 0)
            .unwrap();
    }

    fn affinity_match(&mut self, backend_id: u32, rev_id: u32) {
        let k = AffinityMatch { backend_id, rev_id };
        self.hash::<8, 1>(names::AFFINITY_MATCH)
            .insert(k.to_bytes(), [1], 0)
            .unwrap();
    }

    fn remove_affinity_match(&mut self, backend_id: u32, rev_id: u32) {
        let k = AffinityMatch { backend_id, rev_id };
        self.hash::<8, 1>(names::AFFINITY_MATCH)
            .remove(&k.to_bytes())
            .unwrap();
    }

    /// `struct mn_affinity_key` for a client address (kind 0).
    fn affinity_key(client: &str, rev_id: u32) -> [u8; 24] {
        let mut k = [0; 24];
        k[..16].copy_from_slice(&abi::addr_bytes(client.parse().unwrap()));
        k[16..20].copy_from_slice(&rev_id.to_le_bytes());
        k
    }

    /// The affinity entry of a client: (backend id, last used).
    fn affinity(&mut self, client: &str, rev_id: u32) -> Option<(u32, u32)> {
        let v = self
            .hash::<24, 8>(names::AFFINITY)
            .get(&Self::affinity_key(client, rev_id), 0)
            .ok()?;
        Some((
            u32::from_le_bytes([v[0], v[1], v[2], v[3]]),
            u32::from_le_bytes([v[4], v[5], v[6], v[7]]),
        ))
    }

    fn set_affinity(&mut self, client: &str, rev_id: u32, backend_id: u32, last_used: u32) {
        let mut v = [0; 8];
        v[..4].copy_from_slice(&backend_id.to_le_bytes());
        v[4..].copy_from_slice(&last_used.to_le_bytes());
        self.hash::<24, 8>(names::AFFINITY)
            .insert(Self::affinity_key(client, rev_id), v, 0)
            .unwrap();
    }

    fn clear_affinity(&mut self, client: &str, rev_id: u32) {
        let _ = self
            .hash::<24, 8>(names::AFFINITY)
            .remove(&Self::affinity_key(client, rev_id));
    }

    fn set_ct(&mut self, k: CtKey, v: CtVal) {
        self.hash::<40, 32>(names::CT)
            .insert(k.to_bytes(), v.to_bytes(), 0)
            .unwrap();
    }

    fn node_addr(&mut self, ip: &str) {
        self.hash::<16, 4>(names::NODE_ADDR)
            .insert(abi::addr_bytes(ip.parse().unwrap()), [0; 4], 0)
            .unwrap();
    }

    fn cluster_cidr(&mut self, net: &str) {
        let b = abi::cidr_key(net.parse().unwrap());
        let mut m: LpmTrie<_, [u8; 16], u8> =
            LpmTrie::try_from(self.ebpf.map_mut(names::CLUSTER_CIDR).unwrap()).unwrap();
        let mut data = [0; 16];
        data.copy_from_slice(&b[4..]);
        m.insert(
            &Key::new(u32::from_le_bytes([b[0], b[1], b[2], b[3]]), data),
            1,
            0,
        )
        .unwrap();
    }

    fn src_range(&mut self, rev_id: u32, net: &str) {
        let b = SrcRange {
            rev_id,
            net: net.parse().unwrap(),
        }
        .to_bytes();
        let mut m: LpmTrie<_, [u8; 20], u8> =
            LpmTrie::try_from(self.ebpf.map_mut(names::SRC_RANGE).unwrap()).unwrap();
        let mut data = [0; 20];
        data.copy_from_slice(&b[4..]);
        m.insert(
            &Key::new(u32::from_le_bytes([b[0], b[1], b[2], b[3]]), data),
            1,
            0,
        )
        .unwrap();
    }

    fn maglev(&mut self, index: u32, backend_id: u32) {
        let mut m: Array<_, u32> =
            Array::try_from(self.ebpf.map_mut(names::MAGLEV).unwrap()).unwrap();
        m.set(index, backend_id, 0).unwrap();
    }

    fn ct(&mut self, k: CtKey) -> Option<CtVal> {
        self.hash::<40, 32>(names::CT)
            .get(&k.to_bytes(), 0)
            .ok()
            .map(|b| CtVal::from_bytes(&b))
    }

    fn counter(&mut self, idx: u32) -> u64 {
        let m: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.ebpf.map_mut(names::COUNTERS).unwrap()).unwrap();
        m.get(&idx, 0).unwrap().iter().sum()
    }

    /// Runs a program on one packet: its verdict, the packet after it, and skb->mark.
    fn run(&mut self, prog: &str, pkt: &[u8]) -> Run {
        let p: &SchedClassifier = self.ebpf.program(prog).unwrap().try_into().unwrap();
        let mut out = vec![0u8; 2048];
        let ctx_in = [0u8; 192];
        let mut ctx_out = [0u8; 192];
        let r = p
            .test_run(TestRunOptions {
                data_in: Some(pkt),
                data_out: Some(&mut out),
                ctx_in: Some(&ctx_in),
                ctx_out: Some(&mut ctx_out),
                ..TestRunOptions::default()
            })
            .unwrap_or_else(|e| panic!("test run of {prog}: {e:?}"));
        out.truncate(r.data_size_out as usize);
        Run {
            verdict: r.return_value,
            mark: u32::from_le_bytes([ctx_out[8], ctx_out[9], ctx_out[10], ctx_out[11]]),
            pkt: out,
        }
    }

    fn ingress(&mut self, pkt: &[u8]) -> Run {
        self.run("mn_tc_ingress", pkt)
    }
    fn egress(&mut self, pkt: &[u8]) -> Run {
        self.run("mn_tc_egress", pkt)
    }

    /// A frontend with its backends in slots 1..: (id, address, port, flags) each.
    #[allow(clippy::too_many_arguments)]
    fn service_with(
        &mut self,
        addr: &str,
        port: u16,
        proto: Proto,
        scope: Scope,
        val: SvcVal,
        backends: &[(u32, &str, u16, u8)],
    ) {
        self.svc(
            addr,
            port,
            proto,
            scope,
            SvcVal {
                count: backends.len() as u16,
                ..val
            },
        );
        for (i, (id, a, p, f)) in backends.iter().enumerate() {
            self.backend(*id, a, *p, proto, *f);
            self.slot(val.rev_id, scope, i as u16 + 1, *id);
            self.affinity_match(*id, val.rev_id);
        }
        self.rev_nat(val.rev_id, addr, port);
    }

    #[allow(clippy::too_many_arguments)]
    fn service(
        &mut self,
        addr: &str,
        port: u16,
        proto: Proto,
        scope: Scope,
        rev_id: u32,
        flags: u16,
        backends: &[(u32, &str, u16, u8)],
    ) {
        self.svc(
            addr,
            port,
            proto,
            scope,
            SvcVal {
                rev_id,
                count: backends.len() as u16,
                flags,
                ..SvcVal::default()
            },
        );
        for (i, (id, a, p, f)) in backends.iter().enumerate() {
            self.backend(*id, a, *p, proto, *f);
            self.slot(rev_id, scope, i as u16 + 1, *id);
            self.affinity_match(*id, rev_id);
        }
        self.rev_nat(rev_id, addr, port);
    }
}

struct Run {
    verdict: u32,
    mark: u32,
    pkt: Vec<u8>,
}

impl Run {
    fn parsed(&self) -> Pkt {
        parse(&self.pkt)
    }
}

// --- packets -------------------------------------------------------------------------------

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn sum16(data: &[u8], mut acc: u32) -> u32 {
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        acc += w as u32;
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

fn pseudo(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> u32 {
    let mut acc = 0;
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            acc = sum16(&s.octets(), acc);
            acc = sum16(&d.octets(), acc);
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            acc = sum16(&s.octets(), acc);
            acc = sum16(&d.octets(), acc);
        }
        _ => panic!("mixed families"),
    }
    acc + proto as u32 + len as u32
}

/// Ethernet + IPv4/IPv6 + TCP (seq 1000, the given flags) or UDP, checksums correct.
fn packet(src: SocketAddr, dst: SocketAddr, proto: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut l4 = Vec::new();
    l4.extend_from_slice(&src.port().to_be_bytes());
    l4.extend_from_slice(&dst.port().to_be_bytes());
    let csum_at = if proto == TCP {
        l4.extend_from_slice(&1000u32.to_be_bytes());
        l4.extend_from_slice(&(if flags & ACK != 0 { 77u32 } else { 0 }).to_be_bytes());
        l4.extend_from_slice(&[5 << 4, flags, 0xff, 0xff, 0, 0, 0, 0]);
        16
    } else {
        l4.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        l4.extend_from_slice(&[0, 0]);
        6
    };
    l4.extend_from_slice(payload);
    let c = fold(sum16(&l4, pseudo(src.ip(), dst.ip(), proto, l4.len())));
    l4[csum_at..csum_at + 2].copy_from_slice(&c.to_be_bytes());

    let mut p = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2];
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            p.extend_from_slice(&[0x08, 0x00]);
            let mut ip = vec![0x45, 0];
            ip.extend_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
            ip.extend_from_slice(&[0, 1, 0x40, 0, 64, proto, 0, 0]);
            ip.extend_from_slice(&s.octets());
            ip.extend_from_slice(&d.octets());
            let c = fold(sum16(&ip, 0));
            ip[10..12].copy_from_slice(&c.to_be_bytes());
            p.extend_from_slice(&ip);
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            p.extend_from_slice(&[0x86, 0xdd]);
            p.extend_from_slice(&[0x60, 0, 0, 0]);
            p.extend_from_slice(&(l4.len() as u16).to_be_bytes());
            p.extend_from_slice(&[proto, 64]);
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
        }
        _ => panic!("mixed families"),
    }
    p.extend_from_slice(&l4);
    p
}

fn tcp(src: &str, dst: &str, flags: u8) -> Vec<u8> {
    packet(sa(src), sa(dst), TCP, flags, &[])
}
fn udp(src: &str, dst: &str) -> Vec<u8> {
    packet(sa(src), sa(dst), UDP, 0, b"query")
}

#[derive(Debug, PartialEq)]
struct Pkt {
    src: SocketAddr,
    dst: SocketAddr,
    proto: u8,
    flags: u8,
    seq: u32,
    ack: u32,
    /// Remaining data after the L4 header (the ICMP payload for ICMP).
    len: usize,
}

/// Parses a packet and asserts its IPv4 header and L4 checksums verify.
fn parse(p: &[u8]) -> Pkt {
    let (src, dst, proto, l4) = match u16::from_be_bytes([p[12], p[13]]) {
        0x0800 => {
            let ip = &p[14..34];
            assert_eq!(fold(sum16(ip, 0)), 0, "IPv4 header checksum of {p:02x?}");
            let total = u16::from_be_bytes([ip[2], ip[3]]) as usize;
            let s = IpAddr::from([ip[12], ip[13], ip[14], ip[15]]);
            let d = IpAddr::from([ip[16], ip[17], ip[18], ip[19]]);
            (s, d, ip[9], &p[34..14 + total])
        }
        0x86dd => {
            let ip = &p[14..54];
            let len = u16::from_be_bytes([ip[4], ip[5]]) as usize;
            let s: [u8; 16] = ip[8..24].try_into().unwrap();
            let d: [u8; 16] = ip[24..40].try_into().unwrap();
            (IpAddr::from(s), IpAddr::from(d), ip[6], &p[54..54 + len])
        }
        t => panic!("ethertype {t:#x}"),
    };
    let pseudo_proto = proto;
    let acc = if proto == 1 {
        0
    } else {
        pseudo(src, dst, pseudo_proto, l4.len())
    };
    assert_eq!(
        fold(sum16(l4, acc)),
        0,
        "L4 checksum (protocol {proto}) of {p:02x?}"
    );
    let port = |at: usize| u16::from_be_bytes([l4[at], l4[at + 1]]);
    let u32at = |at: usize| u32::from_be_bytes([l4[at], l4[at + 1], l4[at + 2], l4[at + 3]]);
    match proto {
        TCP => Pkt {
            src: SocketAddr::new(src, port(0)),
            dst: SocketAddr::new(dst, port(2)),
            proto,
            flags: l4[13],
            seq: u32at(4),
            ack: u32at(8),
            len: l4.len() - 20,
        },
        UDP => Pkt {
            src: SocketAddr::new(src, port(0)),
            dst: SocketAddr::new(dst, port(2)),
            proto,
            flags: 0,
            seq: 0,
            ack: 0,
            len: l4.len() - 8,
        },
        _ => Pkt {
            src: SocketAddr::new(src, 0),
            dst: SocketAddr::new(dst, 0),
            proto,
            flags: l4[0],
            seq: l4[1] as u32,
            ack: 0,
            len: l4.len() - 8,
        },
    }
}

fn ct_key(src: &str, dst: &str, proto: u8, dir: u8) -> CtKey {
    let (s, d) = (sa(src), sa(dst));
    CtKey {
        saddr: s.ip(),
        daddr: d.ip(),
        sport: s.port(),
        dport: d.port(),
        proto,
        dir,
    }
}

const EXT: Scope = Scope::External;
const INT: Scope = Scope::Internal;

// --- tests ---------------------------------------------------------------------------------

#[test]
fn sock_programs_load() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let fs = Bpffs::mount();
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(fs.path())
        .load(SOCK_O)
        .expect("sock.o loads");
    for name in [
        "mn_sock_connect4",
        "mn_sock_connect6",
        "mn_sock_sendmsg4",
        "mn_sock_sendmsg6",
        "mn_sock_recvmsg4",
        "mn_sock_recvmsg6",
        "mn_sock_getpeername4",
        "mn_sock_getpeername6",
    ] {
        let prog: &mut aya::programs::CgroupSockAddr = ebpf
            .program_mut(name)
            .unwrap_or_else(|| panic!("sock.o has {name}"))
            .try_into()
            .expect("a sock_addr program");
        prog.load()
            .unwrap_or_else(|e| panic!("{name} passes the verifier: {e:?}"));
    }
    drop(ebpf);
}

#[test]
fn clusterip_v4_tcp_from_outside_dnat_masq_and_reply() {
    let Some(mut dp) = Dp::new() else { return };
    dp.service(
        "10.96.0.10",
        80,
        Proto::Tcp,
        EXT,
        1,
        svc_flags::CLUSTER_IP,
        &[(11, "198.51.100.10", 8080, 0)],
    );
    let r = dp.ingress(&tcp("203.0.113.5:40000", "10.96.0.10:80", SYN));
    assert_eq!(r.verdict, TC_ACT_OK);
    let p = r.parsed();
    assert_eq!(p.dst, sa("198.51.100.10:8080"));
    assert_eq!(p.src, sa("203.0.113.5:40000"));
    assert_eq!(r.mark, MASQ, "external client, remote backend: masquerade");

    let fwd = dp
        .ct(ct_key("203.0.113.5:40000", "10.96.0.10:80", TCP, 0))
        .expect("forward entry");
    assert_eq!(fwd.nat_addr, "198.51.100.10".parse::<IpAddr>().unwrap());
    assert_eq!((fwd.nat_port, fwd.backend_id, fwd.rev_id), (8080, 11, 1));
    assert_eq!(fwd.flags, ct_flags::MASQ);
    let rev = dp
        .ct(ct_key("198.51.100.10:8080", "203.0.113.5:40000", TCP, 1))
        .expect("reply entry");
    assert_eq!(rev.nat_addr, "10.96.0.10".parse::<IpAddr>().unwrap());
    assert_eq!(rev.nat_port, 80);

    // The connection's next packets follow conntrack, and keep the mark.
    let r = dp.ingress(&tcp("203.0.113.5:40000", "10.96.0.10:80", ACK));
    assert_eq!(r.parsed().dst, sa("198.51.100.10:8080"));
    assert_eq!(r.mark, MASQ);

    let r = dp.egress(&tcp("198.51.100.10:8080", "203.0.113.5:40000", SYN | ACK));
    assert_eq!(r.verdict, TC_ACT_OK);
    let p = r.parsed();
    assert_eq!(p.src, sa("10.96.0.10:80"));
    assert_eq!(p.dst, sa("203.0.113.5:40000"));

    // Other traffic passes untouched both ways.
    let other = tcp("203.0.113.5:40001", "198.51.100.99:22", SYN);
    let r = dp.ingress(&other);
    assert_eq!((r.verdict, &r.pkt), (TC_ACT_OK, &other));
    let r = dp.egress(&other);
    assert_eq!((r.verdict, &r.pkt), (TC_ACT_OK, &other));

    assert_eq!(dp.counter(0), 1, "lb_new");
    assert_eq!(dp.counter(7), 1, "rev_nat");
}

#[test]
fn clusterip_v6_udp_in_cluster_no_masq_and_reply() {
    let Some(mut dp) = Dp::new() else { return };
    dp.cluster_cidr("2001:db8:1::/64");
    dp.service(
        "fd00:96::10",
        53,
        Proto::Udp,
        EXT,
        2,
        svc_flags::CLUSTER_IP,
        &[(21, "2001:db8:2::10", 5353, 0)],
    );
    let r = dp.ingress(&udp("[2001:db8:1::5]:33000", "[fd00:96::10]:53"));
    assert_eq!(r.verdict, TC_ACT_OK);
    let p = r.parsed();
    assert_eq!(p.dst, sa("[2001:db8:2::10]:5353"));
    assert_eq!(p.src, sa("[2001:db8:1::5]:33000"));
    assert_eq!(p.len, 5);
    assert_eq!(r.mark, 0, "in-cluster client: no masquerade");

    let r = dp.egress(&udp("[2001:db8:2::10]:5353", "[2001:db8:1::5]:33000"));
    let p = r.parsed();
    assert_eq!(p.src, sa("[fd00:96::10]:53"));
    assert_eq!(p.dst, sa("[2001:db8:1::5]:33000"));
}

#[test]
fn clusterip_v4_udp_and_v6_tcp() {
    let Some(mut dp) = Dp::new() else { return };
    dp.cluster_cidr("10.244.0.0/16");
    dp.service(
        "10.96.0.53",
        53,
        Proto::Udp,
        EXT,
        3,
        svc_flags::CLUSTER_IP,
        &[(31, "10.244.2.7", 53, 0)],
    );
    dp.service(
        "fd00:96::80",
        80,
        Proto::Tcp,
        EXT,
        4,
        svc_flags::CLUSTER_IP,
        &[(41, "2001:db8:2::80", 8080, 0)],
    );
    let r = dp.ingress(&udp("10.244.1.5:5000", "10.96.0.53:53"));
    assert_eq!(r.parsed().dst, sa("10.244.2.7:53"));
    let r = dp.egress(&udp("10.244.2.7:53", "10.244.1.5:5000"));
    assert_eq!(r.parsed().src, sa("10.96.0.53:53"));

    let r = dp.ingress(&tcp("[2001:db8:9::1]:41000", "[fd00:96::80]:80", SYN));
    assert_eq!(r.parsed().dst, sa("[2001:db8:2::80]:8080"));
    assert_eq!(r.mark, MASQ);
    let r = dp.egress(&tcp(
        "[2001:db8:2::80]:8080",
        "[2001:db8:9::1]:41000",
        SYN | ACK,
    ));
    assert_eq!(r.parsed().src, sa("[fd00:96::80]:80"));
}

#[test]
fn udp_without_checksum_keeps_none() {
    let Some(mut dp) = Dp::new() else { return };
    dp.service(
        "10.96.0.53",
        53,
        Proto::Udp,
        EXT,
        3,
        svc_flags::CLUSTER_IP,
        &[(31, "10.244.2.7", 5353, 0)],
    );
    let mut pkt = udp("10.244.1.5:5000", "10.96.0.53:53");
    pkt[40] = 0;
    pkt[41] = 0;
    let r = dp.ingress(&pkt);
    assert_eq!(&r.pkt[40..42], &[0, 0], "a zero UDP checksum stays zero");
    assert_eq!(&r.pkt[30..34], &[10, 244, 2, 7]);
    assert_eq!(&r.pkt[36..38], &5353u16.to_be_bytes());
}

#[test]
fn nodeport_wildcard_on_node_addresses_only() {
    let Some(mut dp) = Dp::new() else { return };
    dp.node_addr("192.0.2.1");
    dp.node_addr("2001:db8::1");
    dp.service(
        "0.0.0.0",
        30080,
        Proto::Tcp,
        EXT,
        5,
        svc_flags::NODEPORT,
        &[(51, "198.51.100.20", 8080, backend_flags::LOCAL)],
    );
    dp.service(
        "::",
        30080,
        Proto::Tcp,
        EXT,
        6,
        svc_flags::NODEPORT,
        &[(61, "2001:db8:5::20", 8080, 0)],
    );
    let r = dp.ingress(&tcp("203.0.113.5:40000", "192.0.2.1:30080", SYN));
    assert_eq!(r.parsed().dst, sa("198.51.100.20:8080"));
    assert_eq!(r.mark, 0, "local backend: the client address is kept");
    // Replies come from the node address the client used, not the wildcard.
    let r = dp.egress(&tcp("198.51.100.20:8080", "203.0.113.5:40000", SYN | ACK));
    assert_eq!(r.parsed().src, sa("192.0.2.1:30080"));

    let r = dp.ingress(&tcp("[2001:db8:9::5]:40000", "[2001:db8::1]:30080", SYN));
    assert_eq!(r.parsed().dst, sa("[2001:db8:5::20]:8080"));
    assert_eq!(r.mark, MASQ);
    let r = dp.egress(&tcp(
        "[2001:db8:5::20]:8080",
        "[2001:db8:9::5]:40000",
        SYN | ACK,
    ));
    assert_eq!(r.parsed().src, sa("[2001:db8::1]:30080"));

    // Not a node address: not a NodePort.
    let other = tcp("203.0.113.5:40000", "192.0.2.99:30080", SYN);
    let r = dp.ingress(&other);
    assert_eq!((r.verdict, &r.pkt), (TC_ACT_OK, &other));
}

#[test]
fn a_new_syn_on_a_reused_port_is_balanced_afresh() {
    let Some(mut dp) = Dp::new() else { return };
    dp.cluster_cidr("10.244.0.0/16");
    dp.service(
        "10.96.0.10",
        80,
        Proto::Tcp,
        EXT,
        1,
        svc_flags::CLUSTER_IP,
        &[(11, "10.244.2.10", 8080, 0)],
    );
    let client = "10.244.1.5:40000";
    let r = dp.ingress(&tcp(client, "10.96.0.10:80", SYN));
    assert_eq!(r.parsed().dst, sa("10.244.2.10:8080"));

    // The backend set changes: established packets stay, a new SYN on the same tuple moves.
    dp.backend(12, "10.244.3.10", 8080, Proto::Tcp, 0);
    dp.slot(1, EXT, 1, 12);
    let r = dp.ingress(&tcp(client, "10.96.0.10:80", ACK));
    assert_eq!(r.parsed().dst, sa("10.244.2.10:8080"));
    let r = dp.ingress(&tcp(client, "10.96.0.10:80", SYN));
    assert_eq!(r.parsed().dst, sa("10.244.3.10:8080"));
    let r = dp.ingress(&tcp(client, "10.96.0.10:80", ACK));
    assert_eq!(r.parsed().dst, sa("10.244.3.10:8080"));
    let r = dp.egress(&tcp("10.244.3.10:8080", client, SYN | ACK));
    assert_eq!(r.parsed().src, sa("10.96.0.10:80"));

    // A direct connection reusing the first backend's reply tuple is not rewritten.
    let r = dp.ingress(&tcp(client, "10.244.2.10:8080", SYN));
    assert_eq!(r.parsed().dst, sa("10.244.2.10:8080"));
    let reply = tcp("10.244.2.10:8080", client, SYN | ACK);
    let r = dp.egress(&reply);
    assert_eq!(r.pkt, reply, "no stale reverse NAT on a direct connection");
}

#[test]
fn a_deleted_backend_rebalances_its_connections() {
    let Some(mut dp) = Dp::new() else { return };
    dp.service(
        "10.96.0.10",
        80,
        Proto::Udp,
        EXT,
        1,
        svc_flags::CLUSTER_IP,
        &[(11, "10.244.2.10", 8080, 0)],
    );
    let r = dp.ingress(&udp("10.244.1.5:40000", "10.96.0.10:80"));
    assert_eq!(r.parsed().dst, sa("10.244.2.10:8080"));
    dp.remove_backend(11);
    dp.backend(12, "10.244.3.10", 8080, Proto::Udp, 0);
    dp.slot(1, EXT, 1, 12);
    let r = dp.ingress(&udp("10.244.1.5:40000", "10.96.0.10:80"));
    assert_eq!(r.parsed().dst, sa("10.244.3.10:8080"));
}

#[test]
fn internal_entry_for_in_cluster_sources_external_for_the_rest() {
    let Some(mut dp) = Dp::new() else { return };
    dp.cluster_cidr("10.244.0.0/16");
    dp.node_addr("192.0.2.1");
    let flags = svc_flags::LOADBALANCER | svc_flags::LOCAL | svc_flags::HAS_INTERNAL;
    dp.service(
        "203.0.113.100",
        443,
        Proto::Tcp,
        EXT,
        7,
        flags,
        &[(71, "10.244.1.10", 8443, backend_flags::LOCAL)],
    );
    dp.service(
        "203.0.113.100",
        443,
        Proto::Tcp,
        INT,
        7,
        svc_flags::LOADBALANCER,
        &[(72, "10.244.9.10", 8443, 0)],
    );
    // Outside: the EXTERNAL (Local) entry, client address kept.
    let r = dp.ingress(&tcp("198.51.100.77:5000", "203.0.113.100:443", SYN));
    assert_eq!(r.parsed().dst, sa("10.244.1.10:8443"));
    assert_eq!(r.mark, 0);
    // A pod and the node itself: the INTERNAL entry.
    let r = dp.ingress(&tcp("10.244.5.5:5000", "203.0.113.100:443", SYN));
    assert_eq!(r.parsed().dst, sa("10.244.9.10:8443"));
    assert_eq!(r.mark, 0);
    let r = dp.ingress(&tcp("192.0.2.1:5000", "203.0.113.100:443", SYN));
    assert_eq!(r.parsed().dst, sa("10.244.9.10:8443"));
}

#[test]
fn local_without_local_backends_drops() {
    let Some(mut dp) = Dp::new() else { return };
    dp.service(
        "203.0.113.100",
        443,
        Proto::Tcp,
        EXT,
        7,
        svc_flags::LOADBALANCER | svc_flags::LOCAL,
        &[],
    );
    let r = dp.ingress(&tcp("198.51.100.77:5000", "203.0.113.100:443", SYN));
    assert_eq!(r.verdict, TC_ACT_SHOT);
    assert_eq!(dp.counter(3), 1, "drop_local");
    assert_eq!(dp.counter(2), 0, "no reject");
}

#[test]
fn masquerade_mark_for_remote_backends_from_outside_and_hairpin() {
    let Some(mut dp) = Dp::new() else { return };
    dp.cluster_cidr("10.244.0.0/16");
    dp.service(
        "10.96.0.10",
        80,
        Proto::Tcp,
        EXT,
        1,
        svc_flags::CLUSTER_IP,
        &[(11, "10.244.1.5", 8080, backend_flags::LOCAL)],
    );
    dp.service(
        "10.96.0.11",
        80,
        Proto::Tcp,
        EXT,
        2,
        svc_flags::CLUSTER_IP,
        &[(21, "10.244.2.5", 8080, 0)],
    );
    // Hairpin: the pod reaches itself through its Service.
    let r = dp.ingress(&tcp("10.244.1.5:40000", "10.96.0.10:80", SYN));
    assert_eq!(r.parsed().dst, sa("10.244.1.5:8080"));
    assert_eq!(r.mark, MASQ, "hairpin");
    // Another pod, remote backend: no mark (the reply comes back through the pod's node).
    let r = dp.ingress(&tcp("10.244.1.6:40000", "10.96.0.11:80", SYN));
    assert_eq!(r.mark, 0);
    // Outside client, local backend: no mark; remote backend: mark.
    let r = dp.ingress(&tcp("203.0.113.5:40000", "10.96.0.10:80", SYN));
    assert_eq!(r.mark, 0);
    let r = dp.ingress(&tcp("203.0.113.5:40000", "10.96.0.11:80", SYN));
    assert_eq!(r.mark, MASQ);
}

#[test]
fn no_backend_tcp_syn_gets_a_reset_back() {
    let Some(mut dp) = Dp::new() else { return };
    dp.service(
        "10.96.0.10",
        80,
        Proto::Tcp,
        EXT,
        1,
        svc_flags::CLUSTER_IP,
        &[],
    );
    dp.service(
        "fd00:96::10",
        80,
        Proto::Tcp,
        EXT,
        2,
        svc_flags::CLUSTER_IP,
        &[],
    );
    let syn = tcp("203.0.113.5:40000", "10.96.0.10:80", SYN);
    let r = dp.ingress(&syn);
    assert_eq!(r.verdict, TC_ACT_REDIRECT);
    let p = r.parsed();
    assert_eq!(
        (p.src, p.dst),
        (sa("10.96.0.10:80"), sa("203.0.113.5:40000"))
    );
    assert_eq!(p.flags, RST | ACK);
    assert_eq!((p.seq, p.ack, p.len), (0, 1001, 0));
    assert_eq!(&r.pkt[0..6], &syn[6..12], "back to the sender's MAC");
    assert_eq!(&r.pkt[6..12], &syn[0..6]);

    let r = dp.ingress(&tcp("[2001:db8:9::1]:40000", "[fd00:96::10]:80", SYN));
    assert_eq!(r.verdict, TC_ACT_REDIRECT);
    let p = r.parsed();
    assert_eq!(
        (p.src, p.dst),
        (sa("[fd00:96::10]:80"), sa("[2001:db8:9::1]:40000"))
    );
    assert_eq!((p.flags, p.ack), (RST | ACK, 1001));

    // Not a SYN: dropped.
    let r = dp.ingress(&tcp("203.0.113.5:40000", "10.96.0.10:80", ACK));
    assert_eq!(r.verdict, TC_ACT_SHOT);
    assert_eq!(dp.counter(2), 3, "reject");
}

#[test]
fn fin_marks_the_connection_closing() {
    let Some(mut dp) = Dp::new() else { return };
    dp.service(
        "10.96.0.10",
        80,
        Proto::Tcp,
        EXT,
        1,
        svc_flags::CLUSTER_IP,
        &[(11, "10.244.2.10", 8080, 0)],
    );
    dp.ingress(&tcp("10.244.1.5:40000", "10.96.0.10:80", SYN));
    let k = ct_key("10.244.1.5:40000", "10.96.0.10:80", TCP, 0);
    assert_eq!(dp.ct(k).unwrap().flags & ct_flags::CLOSING, 0);
    let r = dp.ingress(&tcp("10.244.1.5:40000", "10.96.0.10:80", FIN | ACK));
    assert_eq!(r.parsed().dst, sa("10.244.2.10:8080"));
    assert_ne!(dp.ct(k).unwrap().flags & ct_flags::CLOSING, 0);
    let rk = ct_key("10.244.2.10:8080", "10.244.1.5:40000", TCP, 1);
    dp.egress(&tcp("10.244.2.10:8080", "10.244.1.5:40000", RST));
    assert_ne!(dp.ct(rk).unwrap().flags & ct_flags::CLOSING, 0);
}

#[test]
fn no_backend_udp_gets_port_unreachable() {
    let Some(mut dp) = Dp::new() else { return };
    dp.service(
        "10.96.0.53",
        53,
        Proto::Udp,
        EXT,
        1,
        svc_flags::CLUSTER_IP,
        &[],
    );
    dp.service(
        "fd00:96::53",
        53,
        Proto::Udp,
        EXT,
        2,
        svc_flags::CLUSTER_IP,
        &[],
    );

    let dgram = udp("203.0.113.5:5000", "10.96.0.53:53");
    let r = dp.ingress(&dgram);
    assert_eq!(r.verdict, TC_ACT_REDIRECT);
    let p = r.parsed();
    assert_eq!(p.proto, 1);
    assert_eq!(
        (p.flags, p.seq),
        (3, 3),
        "ICMP destination unreachable, port"
    );
    assert_eq!(
        (p.src.ip(), p.dst.ip()),
        (sa("10.96.0.53:0").ip(), sa("203.0.113.5:0").ip())
    );
    assert_eq!(
        &r.pkt[42..70],
        &dgram[14..42],
        "the datagram's IP header and 8 bytes quoted"
    );

    let dgram = udp("[2001:db8:9::1]:5000", "[fd00:96::53]:53");
    let r = dp.ingress(&dgram);
    assert_eq!(r.verdict, TC_ACT_REDIRECT);
    let p = r.parsed();
    assert_eq!(p.proto, 58);
    assert_eq!(
        (p.flags, p.seq),
        (1, 4),
        "ICMPv6 destination unreachable, port"
    );
    assert_eq!(p.src.ip(), sa("[fd00:96::53]:0").ip());
    assert_eq!(&r.pkt[62..110], &dgram[14..62]);
    assert_eq!(dp.counter(2), 2, "reject");
}

#[test]
fn host_connections_to_a_frontend_without_backends_are_rejected_at_egress() {
    let Some(mut dp) = Dp::new() else { return };
    dp.service(
        "10.96.0.10",
        80,
        Proto::Tcp,
        EXT,
        1,
        svc_flags::CLUSTER_IP,
        &[],
    );
    dp.service(
        "10.96.0.53",
        53,
        Proto::Udp,
        EXT,
        2,
        svc_flags::CLUSTER_IP,
        &[],
    );
    dp.service(
        "10.96.0.11",
        80,
        Proto::Tcp,
        EXT,
        3,
        svc_flags::CLUSTER_IP | svc_flags::LOCAL,
        &[],
    );
    dp.service(
        "10.96.0.12",
        80,
        Proto::Tcp,
        EXT,
        4,
        svc_flags::CLUSTER_IP,
        &[(41, "10.244.2.10", 8080, 0)],
    );
    let r = dp.egress(&tcp("192.0.2.1:40000", "10.96.0.10:80", SYN));
    assert_eq!(r.verdict, TC_ACT_REDIRECT);
    let p = r.parsed();
    assert_eq!(
        (p.src, p.dst, p.flags),
        (sa("10.96.0.10:80"), sa("192.0.2.1:40000"), RST | ACK)
    );
    let r = dp.egress(&udp("192.0.2.1:5000", "10.96.0.53:53"));
    assert_eq!((r.verdict, r.parsed().proto), (TC_ACT_REDIRECT, 1));
    let r = dp.egress(&tcp("192.0.2.1:40000", "10.96.0.11:80", SYN));
    assert_eq!(r.verdict, TC_ACT_SHOT, "Local without local backends: drop");
    let pkt = tcp("192.0.2.1:40000", "10.96.0.12:80", SYN);
    let r = dp.egress(&pkt);
    assert_eq!(
        (r.verdict, &r.pkt),
        (TC_ACT_OK, &pkt),
        "a frontend with backends"
    );
    let pkt = tcp("192.0.2.1:40000", "10.96.0.10:80", ACK);
    let r = dp.egress(&pkt);
    assert_eq!(
        (r.verdict, &r.pkt),
        (TC_ACT_OK, &pkt),
        "only new flows are looked up"
    );
}

#[test]
fn source_ranges_filter_external_clients_only() {
    let Some(mut dp) = Dp::new() else { return };
    dp.cluster_cidr("10.244.0.0/16");
    let flags = svc_flags::LOADBALANCER | svc_flags::SRC_RANGE;
    dp.service(
        "203.0.113.100",
        443,
        Proto::Tcp,
        EXT,
        9,
        flags,
        &[(91, "10.244.1.10", 8443, backend_flags::LOCAL)],
    );
    dp.service(
        "2001:db8:100::1",
        443,
        Proto::Tcp,
        EXT,
        10,
        flags,
        &[(101, "2001:db8:244::10", 8443, backend_flags::LOCAL)],
    );
    dp.src_range(9, "198.51.100.0/24");
    dp.src_range(10, "2001:db8:77::/48");
    // Another frontend's range does not open this one.
    dp.src_range(10, "203.0.113.0/24");

    let r = dp.ingress(&tcp("198.51.100.7:5000", "203.0.113.100:443", SYN));
    assert_eq!(r.parsed().dst, sa("10.244.1.10:8443"));
    let r = dp.ingress(&tcp("203.0.113.5:5000", "203.0.113.100:443", SYN));
    assert_eq!(r.verdict, TC_ACT_SHOT);
    let r = dp.ingress(&tcp("10.244.7.7:5000", "203.0.113.100:443", SYN));
    assert_eq!(
        r.parsed().dst,
        sa("10.244.1.10:8443"),
        "in-cluster: not filtered"
    );

    let r = dp.ingress(&tcp(
        "[2001:db8:77:1::5]:5000",
        "[2001:db8:100::1]:443",
        SYN,
    ));
    assert_eq!(r.parsed().dst, sa("[2001:db8:244::10]:8443"));
    let r = dp.ingress(&tcp("[2001:db8:78::5]:5000", "[2001:db8:100::1]:443", SYN));
    assert_eq!(r.verdict, TC_ACT_SHOT);
    assert_eq!(dp.counter(4), 2, "drop_src_range");
}

#[test]
fn session_affinity_keeps_a_client_on_its_backend_until_timeout_or_removal() {
    let Some(mut dp) = Dp::new() else { return };
    dp.cluster_cidr("10.244.0.0/16");
    let val = SvcVal {
        rev_id: 1,
        flags: svc_flags::CLUSTER_IP | svc_flags::AFFINITY,
        affinity_timeout: 60,
        ..SvcVal::default()
    };
    let backends: Vec<(u32, String)> = (0..8)
        .map(|i| (10 + i, format!("10.244.2.{}", 10 + i)))
        .collect();
    let list: Vec<(u32, &str, u16, u8)> = backends
        .iter()
        .map(|(id, a)| (*id, a.as_str(), 8080, 0))
        .collect();
    dp.service_with("10.96.0.10", 80, Proto::Tcp, EXT, val, &list);

    let first = dp
        .ingress(&tcp("10.244.1.5:40000", "10.96.0.10:80", SYN))
        .parsed()
        .dst;
    for port in 40001..40021 {
        let r = dp.ingress(&tcp(&format!("10.244.1.5:{port}"), "10.96.0.10:80", SYN));
        assert_eq!(r.parsed().dst, first, "port {port}");
    }
    assert_eq!(dp.counter(6), 20, "affinity_hit");
    let (id, now) = dp.affinity("10.244.1.5", 1).expect("an affinity entry");
    let chosen = list
        .iter()
        .find(|b| sa(&format!("{}:8080", b.1)) == first)
        .unwrap()
        .0;
    assert_eq!(id, chosen);

    // Expired: chosen afresh (all slots now name one other backend, so the choice shows).
    for slot in 1..=8 {
        dp.slot(1, EXT, slot, if chosen == 10 { 11 } else { 10 });
    }
    let other = if chosen == 10 {
        "10.244.2.11:8080"
    } else {
        "10.244.2.10:8080"
    };
    dp.set_affinity("10.244.1.5", 1, chosen, now - 61);
    let r = dp.ingress(&tcp("10.244.1.5:41000", "10.96.0.10:80", SYN));
    assert_eq!(r.parsed().dst, sa(other), "expired affinity");

    // Its backend no longer serves the frontend: chosen afresh.
    dp.set_affinity("10.244.1.5", 1, chosen, now);
    dp.remove_affinity_match(chosen, 1);
    let r = dp.ingress(&tcp("10.244.1.5:41001", "10.96.0.10:80", SYN));
    assert_eq!(r.parsed().dst, sa(other), "backend gone from the frontend");
    // And the new choice sticks.
    let r = dp.ingress(&tcp("10.244.1.5:41002", "10.96.0.10:80", SYN));
    assert_eq!(r.parsed().dst, sa(other));
    // Another client is not affected by this one's entry.
    assert!(dp.affinity("10.244.1.6", 1).is_none());
}

fn maglev_dp(affinity: bool) -> Option<Dp> {
    let mut dp = Dp::new()?;
    dp.cluster_cidr("10.244.0.0/16");
    // M = 7 (set by Dp::new), row 2: indexes 14..21 name backends 100..106.
    let flags = svc_flags::LOADBALANCER
        | svc_flags::MAGLEV
        | if affinity { svc_flags::AFFINITY } else { 0 };
    let val = SvcVal {
        rev_id: 5,
        flags,
        affinity_timeout: 60,
        maglev_row: 2,
        ..SvcVal::default()
    };
    // In-cluster clients use the slots: one backend only, 200.
    dp.service_with(
        "203.0.113.50",
        80,
        Proto::Tcp,
        EXT,
        val,
        &[(200, "10.244.200.1", 8080, 0)],
    );
    for i in 0..7 {
        let id = 100 + i;
        dp.backend(id, &format!("10.244.100.{i}"), 8080, Proto::Tcp, 0);
        dp.affinity_match(id, 5);
        dp.maglev(14 + i, id);
    }
    Some(dp)
}

#[test]
fn maglev_for_external_clients_same_choice_on_every_node() {
    let Some(mut a) = maglev_dp(false) else {
        return;
    };
    let Some(mut b) = maglev_dp(false) else {
        return;
    };
    let mut seen = std::collections::BTreeSet::new();
    for port in 40000..40030 {
        let pkt = tcp(&format!("198.51.100.9:{port}"), "203.0.113.50:80", SYN);
        let da = a.ingress(&pkt).parsed().dst;
        assert_eq!(
            da.ip().to_string().rsplit_once('.').unwrap().0,
            "10.244.100"
        );
        assert_eq!(
            b.ingress(&pkt).parsed().dst,
            da,
            "another node, same flow: same backend"
        );
        assert_eq!(a.ingress(&pkt).parsed().dst, da, "the same flow again");
        seen.insert(da);
    }
    assert!(seen.len() >= 3, "the hash spreads flows: {seen:?}");
    // In-cluster clients pick from the slots at random.
    let r = a.ingress(&tcp("10.244.1.5:40000", "203.0.113.50:80", SYN));
    assert_eq!(r.parsed().dst, sa("10.244.200.1:8080"));
}

#[test]
fn maglev_under_affinity_leaves_the_source_port_out() {
    let Some(mut dp) = maglev_dp(true) else {
        return;
    };
    let mut seen = std::collections::BTreeSet::new();
    for port in 40000..40020 {
        dp.clear_affinity("198.51.100.9", 5);
        let pkt = tcp(&format!("198.51.100.9:{port}"), "203.0.113.50:80", SYN);
        seen.insert(dp.ingress(&pkt).parsed().dst);
    }
    assert_eq!(seen.len(), 1, "{seen:?}");
}

#[test]
fn conntrack_entries_expire_by_protocol_and_state() {
    let Some(mut dp) = Dp::new() else { return };
    dp.config(Config {
        masq_mark: MASQ,
        ct_timeout_tcp: 3600,
        ct_timeout_other: 30,
        ..Config::default()
    });
    dp.service(
        "10.96.0.10",
        80,
        Proto::Udp,
        EXT,
        1,
        svc_flags::CLUSTER_IP,
        &[(11, "10.244.2.10", 8080, 0)],
    );
    dp.service(
        "10.96.0.10",
        80,
        Proto::Tcp,
        EXT,
        2,
        svc_flags::CLUSTER_IP,
        &[(21, "10.244.2.20", 8080, 0)],
    );
    dp.backend(12, "10.244.3.10", 8080, Proto::Udp, 0);
    dp.backend(22, "10.244.3.20", 8080, Proto::Tcp, 0);

    let uk = ct_key("10.244.1.5:5000", "10.96.0.10:80", UDP, 0);
    dp.ingress(&udp("10.244.1.5:5000", "10.96.0.10:80"));
    let entry = dp.ct(uk).expect("a UDP entry");
    let now = entry.last_seen;
    dp.slot(1, EXT, 1, 12);
    // Idle 20 s of 30: kept.
    dp.set_ct(
        uk,
        CtVal {
            last_seen: now - 20,
            ..entry
        },
    );
    let r = dp.ingress(&udp("10.244.1.5:5000", "10.96.0.10:80"));
    assert_eq!(r.parsed().dst, sa("10.244.2.10:8080"));
    assert_eq!(dp.ct(uk).unwrap().last_seen, now, "refreshed");
    // Idle 31 s: over, balanced afresh.
    dp.set_ct(
        uk,
        CtVal {
            last_seen: now - 31,
            ..entry
        },
    );
    let r = dp.ingress(&udp("10.244.1.5:5000", "10.96.0.10:80"));
    assert_eq!(r.parsed().dst, sa("10.244.3.10:8080"));

    let tk = ct_key("10.244.1.5:40000", "10.96.0.10:80", TCP, 0);
    dp.ingress(&tcp("10.244.1.5:40000", "10.96.0.10:80", SYN));
    let entry = dp.ct(tk).expect("a TCP entry");
    dp.slot(2, EXT, 1, 22);
    // Established, idle 1000 s of 3600: kept.
    dp.set_ct(
        tk,
        CtVal {
            last_seen: now - 1000,
            ..entry
        },
    );
    let r = dp.ingress(&tcp("10.244.1.5:40000", "10.96.0.10:80", ACK));
    assert_eq!(r.parsed().dst, sa("10.244.2.20:8080"));
    // Closing, idle 11 s: over.
    dp.set_ct(
        tk,
        CtVal {
            last_seen: now - 11,
            flags: ct_flags::CLOSING,
            ..entry
        },
    );
    let r = dp.ingress(&tcp("10.244.1.5:40000", "10.96.0.10:80", ACK));
    assert_eq!(r.parsed().dst, sa("10.244.3.20:8080"));
}
