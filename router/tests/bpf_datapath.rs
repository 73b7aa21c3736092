//! The per-packet data path (`bpf/lb.c`) run on crafted packets with BPF_PROG_TEST_RUN, no
//! network: each test mounts a private bpffs on a temporary directory (unmounted on drop,
//! also when the test fails), loads `lb.o` with its maps pinned there, fills the maps through
//! the `abi` codecs and checks the rewritten addresses, ports, marks and checksums (computed
//! here from scratch). The programs run from a thread inside a network namespace of the
//! test's own (deleted on drop), whose routes give masquerade its source address:
//! [`SNAT4`] and [`SNAT6`] on a veth, default routes through it. Root only: skipped
//! with a message otherwise.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::Command;

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, HashMap, MapData, PerCpuArray};
use aya::programs::{SchedClassifier, TestRun, TestRunOptions};
use aya::{Ebpf, EbpfLoader};
use metalnet::testing::netns::is_root;
use metalnet_router::proxy::abi::{
    self, AffinityMatch, Backend, Config, CtKey, CtVal, Proto, RevNat, Scope, SlotKey, SrcRange,
    SvcKey, SvcVal, backend_flags, ct_flags, names, svc_flags,
};
// Map keys name the protocol by these; packets by the numbers below (TCP, UDP).
use metalnet_router::proxy::abi::Proto::{Sctp, Tcp, Udp};
use serde_json::json;

static LB_O: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb.o"));
static SOCK_O: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sock.o"));

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;
const MASQ: u32 = 0x4000;
/// The node's address toward every backend in the test namespace: masquerade's source.
const SNAT4: &str = "100.64.0.1";
const SNAT6: &str = "2001:db8:ff::1";

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const RST: u8 = 0x04;
const FIN: u8 = 0x01;
const TCP: u8 = 6;
const UDP: u8 = 17;

/// Loads a program, again when the verifier gave up with EAGAIN: it does when a signal is
/// pending, and other tests' child processes exiting send SIGCHLD (libbpf retries likewise).
fn load_retrying(name: &str, mut load: impl FnMut() -> Result<(), aya::programs::ProgramError>) {
    for attempt in 1.. {
        match load() {
            Ok(()) => return,
            Err(aya::programs::ProgramError::LoadError { io_error, .. })
                if io_error.kind() == std::io::ErrorKind::WouldBlock && attempt < 5 => {}
            Err(e) => panic!("{name} passes the verifier: {e:?}"),
        }
    }
}

const SOCK_PROGRAMS: [&str; 8] = [
    "mn_sock_connect4",
    "mn_sock_connect6",
    "mn_sock_sendmsg4",
    "mn_sock_sendmsg6",
    "mn_sock_recvmsg4",
    "mn_sock_recvmsg6",
    "mn_sock_getpeername4",
    "mn_sock_getpeername6",
];

/// sock.o with its programs loaded (not attached) and its maps pinned in `fs`.
fn load_sock(fs: &Bpffs) -> Ebpf {
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(fs.path())
        .load(SOCK_O)
        .expect("sock.o loads");
    for name in SOCK_PROGRAMS {
        let prog: &mut aya::programs::CgroupSockAddr = ebpf
            .program_mut(name)
            .unwrap_or_else(|| panic!("sock.o has {name}"))
            .try_into()
            .expect("a sock_addr program");
        load_retrying(name, || prog.load());
    }
    ebpf
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

/// lb.o loaded against a private bpffs; its maps are written through [`ProxyMaps`].
struct Dp {
    ebpf: Ebpf,
    /// Where the programs run (their FIB lookups see its routes).
    ns_file: std::fs::File,
    ns: metalnet::testing::Netns,
    // Dropped after `ebpf` (fields drop in order): the maps close before the unmount.
    _fs: Bpffs,
}

/// A namespace whose routes give masquerade a source: a veth with [`SNAT4`] and [`SNAT6`],
/// default routes through it, forwarding on.
fn snat_netns() -> Option<(metalnet::testing::Netns, std::fs::File)> {
    let ns = metalnet::testing::Netns::new("bpfdp")?;
    ns.ip(&["link", "add", "d0", "type", "veth", "peer", "name", "d1"]);
    ns.ip(&["link", "set", "d0", "up"]);
    ns.ip(&["link", "set", "d1", "up"]);
    ns.ip(&["addr", "add", &format!("{SNAT4}/24"), "dev", "d0"]);
    ns.ip(&[
        "-6",
        "addr",
        "add",
        &format!("{SNAT6}/64"),
        "dev",
        "d0",
        "nodad",
    ]);
    ns.ip(&["route", "add", "default", "via", "100.64.0.254"]);
    ns.ip(&["-6", "route", "add", "default", "via", "2001:db8:ff::fe"]);
    forwarding_on(ns.name());
    let f = std::fs::File::open(format!("/run/netns/{}", ns.name())).expect("the namespace");
    Some((ns, f))
}

fn forwarding_on(ns: &str) {
    let st = Command::new("ip")
        .args(["netns", "exec", ns, "sysctl", "-qw"])
        .args(["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"])
        .status()
        .expect("running sysctl");
    assert!(st.success(), "forwarding on in {ns}");
}

/// What [`Dp::new`] configures: the masquerade mark, and a Maglev table of 7 entries a row.
fn lb_config() -> Config {
    Config {
        masq_mark: MASQ,
        maglev_m: 7,
        ..Config::default()
    }
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
            load_retrying(name, || prog.load());
        }
        let (ns, ns_file) = snat_netns()?;
        let mut dp = Dp {
            ebpf,
            ns_file,
            ns,
            _fs: fs,
        };
        dp.config(lb_config());
        Some(dp)
    }

    /// Runs a program on one packet: its verdict, the packet after it, and skb->mark.
    fn run(&mut self, prog: &str, pkt: &[u8]) -> Run {
        self.run_on(prog, pkt, 0)
    }

    /// [`Dp::run`] as if the packet came from the device `ifindex` (of the calling thread's
    /// network namespace; 0: loopback).
    fn run_on(&mut self, prog: &str, pkt: &[u8], ifindex: u32) -> Run {
        let p: &SchedClassifier = self.ebpf.program(prog).unwrap().try_into().unwrap();
        let mut out = vec![0u8; 2048];
        let mut ctx_in = [0u8; 192];
        ctx_in[40..44].copy_from_slice(&ifindex.to_le_bytes());
        let mut ctx_out = [0u8; 192];
        let ns_file = &self.ns_file;
        let r = std::thread::scope(|s| {
            s.spawn(|| {
                metalnet::sys::netns::enter(ns_file).expect("entering the test namespace");
                p.test_run(TestRunOptions {
                    data_in: Some(pkt),
                    data_out: Some(&mut out),
                    ctx_in: Some(&ctx_in),
                    ctx_out: Some(&mut ctx_out),
                    ..TestRunOptions::default()
                })
            })
            .join()
            .expect("the test run thread")
        })
        .unwrap_or_else(|e| panic!("test run of {prog}: {e:?}"));
        out.truncate(r.data_size_out as usize);
        Run {
            verdict: r.return_value,
            mark: u32::from_le_bytes([ctx_out[8], ctx_out[9], ctx_out[10], ctx_out[11]]),
            pkt: out,
        }
    }

    /// Attaches both programs to the devices `devs` of the namespace `ns`, from a thread
    /// inside that namespace only (interface names resolve there).
    fn attach(&mut self, ns: &str, devs: &[&str]) {
        use aya::programs::TcAttachType;
        let ns_file = std::fs::File::open(format!("/run/netns/{ns}")).unwrap();
        std::thread::scope(|s| {
            s.spawn(|| {
                metalnet::sys::netns::enter(&ns_file).unwrap();
                for (prog, kind) in [
                    ("mn_tc_ingress", TcAttachType::Ingress),
                    ("mn_tc_egress", TcAttachType::Egress),
                ] {
                    let p: &mut SchedClassifier =
                        self.ebpf.program_mut(prog).unwrap().try_into().unwrap();
                    for dev in devs {
                        p.attach(dev, kind)
                            .unwrap_or_else(|e| panic!("attaching {prog} to {dev}: {e:?}"));
                    }
                }
            })
            .join()
            .unwrap();
        });
    }

    fn ingress(&mut self, pkt: &[u8]) -> Run {
        self.run("mn_tc_ingress", pkt)
    }
    fn egress(&mut self, pkt: &[u8]) -> Run {
        self.run("mn_tc_egress", pkt)
    }
}

/// The proxy's maps, written and read in the abi encodings, on any object that has them
/// (lb.o and sock.o share their definitions).
trait ProxyMaps {
    fn object(&mut self) -> &mut Ebpf;

    fn hash<const K: usize, const V: usize>(
        &mut self,
        map: &str,
    ) -> HashMap<&mut MapData, [u8; K], [u8; V]> {
        HashMap::try_from(self.object().map_mut(map).expect("map exists")).expect("hash map")
    }

    fn config(&mut self, c: Config) {
        let mut m: Array<_, [u8; 32]> =
            Array::try_from(self.object().map_mut(names::CONFIG).unwrap()).unwrap();
        m.set(0, c.to_bytes(), 0).unwrap();
    }

    fn svc(&mut self, frontend: SocketAddr, proto: Proto, scope: Scope, val: SvcVal) {
        let k = SvcKey {
            addr: frontend.ip(),
            port: frontend.port(),
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

    /// Backend `id` at "address:port".
    fn backend(&mut self, id: u32, addr: &str, proto: Proto, flags: u8) {
        let a = sa(addr);
        let b = Backend {
            addr: a.ip(),
            port: a.port(),
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

    fn rev_nat(&mut self, rev_id: u32, frontend: SocketAddr) {
        let r = RevNat {
            addr: frontend.ip(),
            port: frontend.port(),
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

    /// The affinity entry of a client: (backend id, last used).
    fn affinity(&mut self, client: &str, rev_id: u32) -> Option<(u32, u32)> {
        let v = self
            .hash::<24, 8>(names::AFFINITY)
            .get(&affinity_key(client, rev_id), 0)
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
            .insert(affinity_key(client, rev_id), v, 0)
            .unwrap();
    }

    fn clear_affinity(&mut self, client: &str, rev_id: u32) {
        let _ = self
            .hash::<24, 8>(names::AFFINITY)
            .remove(&affinity_key(client, rev_id));
    }

    fn set_ct(&mut self, k: CtKey, v: CtVal) {
        self.hash::<40, { abi::CT_VAL_LEN }>(names::CT)
            .insert(k.to_bytes(), v.to_bytes(), 0)
            .unwrap();
    }

    fn ct(&mut self, k: CtKey) -> Option<CtVal> {
        self.hash::<40, { abi::CT_VAL_LEN }>(names::CT)
            .get(&k.to_bytes(), 0)
            .ok()
            .map(|b| CtVal::from_bytes(&b))
    }

    fn node_addr(&mut self, addr: &str) {
        self.hash::<16, 4>(names::NODE_ADDR)
            .insert(abi::addr_bytes(ip(addr)), [0; 4], 0)
            .unwrap();
    }

    /// Inserts an LPM trie entry whose key is `key` (prefix length first, little endian).
    fn lpm_insert<const N: usize>(&mut self, map: &str, key: &[u8]) {
        let mut m: LpmTrie<_, [u8; N], u8> =
            LpmTrie::try_from(self.object().map_mut(map).unwrap()).unwrap();
        let data: [u8; N] = key[4..].try_into().unwrap();
        let prefix_len = u32::from_le_bytes([key[0], key[1], key[2], key[3]]);
        m.insert(&Key::new(prefix_len, data), 1, 0).unwrap();
    }

    fn cluster_cidr(&mut self, net: &str) {
        self.lpm_insert::<16>(names::CLUSTER_CIDR, &abi::cidr_key(net.parse().unwrap()));
    }

    fn src_range(&mut self, rev_id: u32, net: &str) {
        let net = net.parse().unwrap();
        self.lpm_insert::<20>(names::SRC_RANGE, &SrcRange { rev_id, net }.to_bytes());
    }

    fn maglev(&mut self, index: u32, backend_id: u32) {
        let mut m: Array<_, u32> =
            Array::try_from(self.object().map_mut(names::MAGLEV).unwrap()).unwrap();
        m.set(index, backend_id, 0).unwrap();
    }

    fn counter(&mut self, idx: u32) -> u64 {
        let m: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.object().map_mut(names::COUNTERS).unwrap()).unwrap();
        m.get(&idx, 0).unwrap().iter().sum()
    }

    /// A frontend ("address:port") as the control plane writes it: the Service entry, its
    /// backends in slots 1.. ((id, "address:port", flags) each) with their affinity matches,
    /// and the reverse NAT entry.
    fn service_with(
        &mut self,
        scope: Scope,
        frontend: &str,
        proto: Proto,
        val: SvcVal,
        backends: &[(u32, &str, u8)],
    ) {
        let frontend = sa(frontend);
        let count = backends.len() as u16;
        self.svc(frontend, proto, scope, SvcVal { count, ..val });
        for (slot, &(id, addr, flags)) in (1..).zip(backends) {
            self.backend(id, addr, proto, flags);
            self.slot(val.rev_id, scope, slot, id);
            self.affinity_match(id, val.rev_id);
        }
        self.rev_nat(val.rev_id, frontend);
    }

    /// [`ProxyMaps::service_with`] a frontend of `rev_id` and `flags`, nothing else set.
    fn service(
        &mut self,
        scope: Scope,
        frontend: &str,
        proto: Proto,
        rev_id: u32,
        flags: u16,
        backends: &[(u32, &str, u8)],
    ) {
        let val = SvcVal {
            rev_id,
            flags,
            ..SvcVal::default()
        };
        self.service_with(scope, frontend, proto, val, backends);
    }

    /// The common case: an external ClusterIP frontend and backends without flags.
    fn cluster_ip(&mut self, frontend: &str, proto: Proto, rev_id: u32, backends: &[(u32, &str)]) {
        let backends: Vec<_> = backends.iter().map(|&(id, addr)| (id, addr, 0)).collect();
        let flags = svc_flags::CLUSTER_IP;
        self.service(EXT, frontend, proto, rev_id, flags, &backends);
    }
}

/// `struct mn_affinity_key` for a client address (kind 0).
fn affinity_key(client: &str, rev_id: u32) -> [u8; 24] {
    let mut k = [0; 24];
    k[..16].copy_from_slice(&abi::addr_bytes(ip(client)));
    k[16..20].copy_from_slice(&rev_id.to_le_bytes());
    k
}

impl ProxyMaps for Ebpf {
    fn object(&mut self) -> &mut Ebpf {
        self
    }
}

impl ProxyMaps for Dp {
    fn object(&mut self) -> &mut Ebpf {
        &mut self.ebpf
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

// --- packets: typed headers that emit frames, and a parser that checks them -----------------

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// The Internet checksum's one's complement sum (RFC 1071) of `data`, added to `acc`.
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

/// The sum of the pseudo-header the TCP, UDP and ICMPv6 checksums cover.
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

/// Writes the checksum of the IPv4 header behind the Ethernet header of `frame`, as after a
/// field of it was set by hand.
fn fix_ipv4_checksum(frame: &mut [u8]) {
    frame[24..26].copy_from_slice(&[0, 0]);
    let c = fold(sum16(&frame[14..34], 0));
    frame[24..26].copy_from_slice(&c.to_be_bytes());
}

/// Writes the checksum at `at` of an L4 header (TCP, UDP, ICMPv6) over `l4` and its
/// pseudo-header.
fn fix_l4_checksum(src: IpAddr, dst: IpAddr, proto: u8, l4: &mut [u8], at: usize) {
    l4[at..at + 2].copy_from_slice(&[0, 0]);
    let c = fold(sum16(l4, pseudo(src, dst, proto, l4.len())));
    l4[at..at + 2].copy_from_slice(&c.to_be_bytes());
}

const IPV4_DF: u16 = 0x4000;
const IPV4_MF: u16 = 0x2000;
const ICMP: u8 = 1;
const ICMPV6: u8 = 58;
const IPV6_FRAGMENT: u8 = 44;
const SCTP: u8 = 132;

/// An IPv4 or IPv6 header (the family of the addresses) with an Ethernet header in front.
#[derive(Clone, Copy)]
struct IpHdr {
    src: IpAddr,
    dst: IpAddr,
    /// The next header: the L4 protocol, or IPv6's fragment header.
    proto: u8,
    /// TTL or hop limit.
    ttl: u8,
    /// IPv4 only: the identification, and the flags with the fragment offset.
    id: u16,
    frag: u16,
}

impl IpHdr {
    /// TTL 64; IPv4: identification 1, don't fragment.
    fn new(src: IpAddr, dst: IpAddr, proto: u8) -> IpHdr {
        IpHdr {
            src,
            dst,
            proto,
            ttl: 64,
            id: 1,
            frag: IPV4_DF,
        }
    }

    /// The frame carrying `payload`: lengths and the IPv4 header checksum filled in.
    fn emit(&self, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2];
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                p.extend_from_slice(&[0x08, 0x00, 0x45, 0]);
                p.extend_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
                p.extend_from_slice(&self.id.to_be_bytes());
                p.extend_from_slice(&self.frag.to_be_bytes());
                p.extend_from_slice(&[self.ttl, self.proto, 0, 0]);
                p.extend_from_slice(&s.octets());
                p.extend_from_slice(&d.octets());
                fix_ipv4_checksum(&mut p);
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                p.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
                p.extend_from_slice(&(payload.len() as u16).to_be_bytes());
                p.extend_from_slice(&[self.proto, self.ttl]);
                p.extend_from_slice(&s.octets());
                p.extend_from_slice(&d.octets());
            }
            _ => panic!("mixed families"),
        }
        p.extend_from_slice(payload);
        p
    }
}

/// A TCP segment: sequence number 1000, acknowledgment 77 when ACK is set, window 0xffff.
struct TcpSeg<'a> {
    src: SocketAddr,
    dst: SocketAddr,
    flags: u8,
    /// Part of the header (a multiple of 4 bytes), not data.
    options: &'a [u8],
    payload: &'a [u8],
}

impl TcpSeg<'_> {
    /// The segment with its checksum.
    fn emit(&self) -> Vec<u8> {
        let mut l4 = Vec::new();
        l4.extend_from_slice(&self.src.port().to_be_bytes());
        l4.extend_from_slice(&self.dst.port().to_be_bytes());
        l4.extend_from_slice(&1000u32.to_be_bytes());
        let ack = if self.flags & ACK != 0 { 77u32 } else { 0 };
        l4.extend_from_slice(&ack.to_be_bytes());
        let words = 5 + self.options.len() as u8 / 4;
        l4.extend_from_slice(&[words << 4, self.flags, 0xff, 0xff, 0, 0, 0, 0]);
        l4.extend_from_slice(self.options);
        l4.extend_from_slice(self.payload);
        fix_l4_checksum(self.src.ip(), self.dst.ip(), TCP, &mut l4, 16);
        l4
    }
}

/// A UDP datagram with its checksum.
fn udp_datagram(src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let mut l4 = Vec::new();
    l4.extend_from_slice(&src.port().to_be_bytes());
    l4.extend_from_slice(&dst.port().to_be_bytes());
    l4.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    l4.extend_from_slice(&[0, 0]);
    l4.extend_from_slice(payload);
    fix_l4_checksum(src.ip(), dst.ip(), UDP, &mut l4, 6);
    l4
}

/// Ethernet + IPv4/IPv6 + TCP (seq 1000, the given flags) or UDP, checksums correct.
fn packet(src: SocketAddr, dst: SocketAddr, proto: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
    let l4 = if proto == TCP {
        TcpSeg {
            src,
            dst,
            flags,
            options: &[],
            payload,
        }
        .emit()
    } else {
        udp_datagram(src, dst, payload)
    };
    IpHdr::new(src.ip(), dst.ip(), proto).emit(&l4)
}

fn tcp(src: &str, dst: &str, flags: u8) -> Vec<u8> {
    packet(sa(src), sa(dst), TCP, flags, &[])
}

/// A SYN with 12 bytes of options (MSS, SACK permitted, window scale): not payload.
fn syn_with_options(src: &str, dst: &str) -> Vec<u8> {
    let (src, dst) = (sa(src), sa(dst));
    let seg = TcpSeg {
        src,
        dst,
        flags: SYN,
        options: &[2, 4, 0x05, 0xb4, 4, 2, 1, 3, 3, 7, 1, 1],
        payload: &[],
    };
    IpHdr::new(src.ip(), dst.ip(), TCP).emit(&seg.emit())
}

fn udp(src: &str, dst: &str) -> Vec<u8> {
    packet(sa(src), sa(dst), UDP, 0, b"query")
}

/// An SCTP INIT (common header + an empty chunk) over IPv4; its CRC32c is left as is since it
/// covers no address.
fn sctp(src: &str, dst: &str) -> Vec<u8> {
    let (s, d) = (sa(src), sa(dst));
    let mut l4 = Vec::new();
    l4.extend_from_slice(&s.port().to_be_bytes());
    l4.extend_from_slice(&d.port().to_be_bytes());
    l4.extend_from_slice(&[0, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef]);
    l4.extend_from_slice(&[1, 0, 0, 4]);
    IpHdr::new(s.ip(), d.ip(), SCTP).emit(&l4)
}

/// An ICMP (IPv4) or ICMPv6 error from `src` to `dst` quoting the start of `quoted` (a frame
/// from [`packet`]): its IP header and 8 bytes.
fn icmp_error(src: &str, dst: &str, typ: u8, code: u8, quoted: &[u8]) -> Vec<u8> {
    let (s, d) = (ip(src), ip(dst));
    let v6 = s.is_ipv6();
    let ip_len = if v6 { 40 } else { 20 };
    let mut icmp = vec![typ, code, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(&quoted[14..14 + ip_len + 8]);
    let proto = if v6 {
        fix_l4_checksum(s, d, ICMPV6, &mut icmp, 2);
        ICMPV6
    } else {
        let c = fold(sum16(&icmp, 0));
        icmp[2..4].copy_from_slice(&c.to_be_bytes());
        ICMP
    };
    IpHdr {
        frag: 0,
        ..IpHdr::new(s, d, proto)
    }
    .emit(&icmp)
}

/// A UDP datagram with `payload` in two fragments, the first carrying the UDP header and
/// `first` bytes of payload (a multiple of 8 minus the header). IPv6 uses a fragment header.
fn udp_fragments(src: &str, dst: &str, id: u32, payload: &[u8], first: usize) -> [Vec<u8>; 2] {
    let (s, d) = (sa(src), sa(dst));
    let l4 = udp_datagram(s, d, payload);
    let (head, tail) = l4.split_at(8 + first);
    [(0, true, head), (8 + first, false, tail)].map(|(offset, more, part)| {
        if s.is_ipv6() {
            let mut p = vec![UDP, 0];
            p.extend_from_slice(&((offset as u16) | more as u16).to_be_bytes());
            p.extend_from_slice(&id.to_be_bytes());
            p.extend_from_slice(part);
            IpHdr::new(s.ip(), d.ip(), IPV6_FRAGMENT).emit(&p)
        } else {
            let frag = (offset / 8) as u16 | if more { IPV4_MF } else { 0 };
            IpHdr {
                id: id as u16,
                frag,
                ..IpHdr::new(s.ip(), d.ip(), UDP)
            }
            .emit(part)
        }
    })
}

/// Reassembles two fragments made by [`udp_fragments`] (after the programs): checks each
/// IPv4 header checksum and that both carry the same addresses, and returns the datagram as
/// one unfragmented frame for [`parse`].
fn reassemble(frags: &[Vec<u8>; 2]) -> Vec<u8> {
    let v6 = frags[0][12] == 0x86;
    let (ip_len, hdr) = if v6 { (40, 48) } else { (20, 20) };
    let addrs = |f: &Vec<u8>| f[14 + ip_len - 32 + if v6 { 0 } else { 24 }..14 + ip_len].to_vec();
    assert_eq!(
        addrs(&frags[0]),
        addrs(&frags[1]),
        "both fragments rewritten alike"
    );
    let mut l4 = frags[0][14 + hdr..].to_vec();
    l4.extend_from_slice(&frags[1][14 + hdr..]);
    let mut p = frags[0][..14 + ip_len].to_vec();
    if v6 {
        p[18..20].copy_from_slice(&(l4.len() as u16).to_be_bytes());
        p[20] = UDP;
    } else {
        for f in frags {
            assert_eq!(
                fold(sum16(&f[14..34], 0)),
                0,
                "fragment IPv4 header checksum"
            );
        }
        p[16..18].copy_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
        p[20..22].copy_from_slice(&[0, 0]);
        fix_ipv4_checksum(&mut p);
    }
    p.extend_from_slice(&l4);
    p
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
    let acc = if proto == ICMP {
        0
    } else {
        pseudo(src, dst, proto, l4.len())
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

/// What an ICMP error frame quotes of the packet it is about: the addresses and ports.
struct Quote {
    src: SocketAddr,
    dst: SocketAddr,
}

/// The quote of an ICMP (IPv4) or ICMPv6 error frame, as [`icmp_error`] builds them; asserts
/// a quoted IPv4 header's checksum verifies.
fn quoted(frame: &[u8]) -> Quote {
    let port = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
    if frame[12] == 0x86 {
        let q = &frame[62..];
        let s: [u8; 16] = q[8..24].try_into().unwrap();
        let d: [u8; 16] = q[24..40].try_into().unwrap();
        Quote {
            src: SocketAddr::new(s.into(), port(&q[40..])),
            dst: SocketAddr::new(d.into(), port(&q[42..])),
        }
    } else {
        let q = &frame[42..];
        assert_eq!(fold(sum16(&q[..20], 0)), 0, "quoted IPv4 header checksum");
        let s: [u8; 4] = q[12..16].try_into().unwrap();
        let d: [u8; 4] = q[16..20].try_into().unwrap();
        Quote {
            src: SocketAddr::new(s.into(), port(&q[20..])),
            dst: SocketAddr::new(d.into(), port(&q[22..])),
        }
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

/// A conntrack entry as if its connection was last seen at `last_seen`.
fn seen_at(entry: CtVal, last_seen: u32) -> CtVal {
    CtVal { last_seen, ..entry }
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
    drop(load_sock(&fs));
}

#[test]
fn clusterip_v4_tcp_from_outside_dnat_masq_and_reply() {
    let Some(mut dp) = Dp::new() else { return };
    dp.cluster_ip("10.96.0.10:80", Tcp, 1, &[(11, "198.51.100.10:8080")]);
    // External client, remote backend: masqueraded here, with the node's address toward
    // the backend and a port of the default range, and sent to the backend's next hop.
    let r = dp.ingress(&tcp("203.0.113.5:40000", "10.96.0.10:80", SYN));
    assert_eq!(r.verdict, TC_ACT_REDIRECT);
    let p = r.parsed();
    assert_eq!(p.dst, sa("198.51.100.10:8080"));
    assert_eq!(p.src.ip(), ip(SNAT4));
    let port = p.src.port();
    assert!((61000..=65535).contains(&port), "{port}");
    assert_eq!(r.mark, 0, "no mark: no netfilter rule to act on it");

    let fwd = dp
        .ct(ct_key("203.0.113.5:40000", "10.96.0.10:80", TCP, 0))
        .expect("forward entry");
    assert_eq!(fwd.nat_addr, ip("198.51.100.10"));
    assert_eq!((fwd.nat_port, fwd.backend_id, fwd.rev_id), (8080, 11, 1));
    assert_eq!(fwd.flags, ct_flags::MASQ);
    assert_eq!(
        (fwd.snat_addr, fwd.snat_port),
        (SNAT4.parse().unwrap(), port)
    );
    let rev = dp
        .ct(ct_key("198.51.100.10:8080", "203.0.113.5:40000", TCP, 1))
        .expect("reply entry");
    assert_eq!(rev.nat_addr, ip("10.96.0.10"));
    assert_eq!(rev.nat_port, 80);
    let snat_key = ct_key(
        "198.51.100.10:8080",
        &format!("{SNAT4}:{port}"),
        TCP,
        abi::ct_dir::SNAT,
    );
    let back = dp.ct(snat_key).expect("the masquerade's entry");
    assert_eq!((back.nat_addr, back.nat_port), (ip("203.0.113.5"), 40000));
    assert_eq!((back.snat_addr, back.snat_port), (ip("10.96.0.10"), 80));

    // The connection's next packets follow conntrack: the same translation.
    let r = dp.ingress(&tcp("203.0.113.5:40000", "10.96.0.10:80", ACK));
    assert_eq!(r.verdict, TC_ACT_REDIRECT);
    assert_eq!(r.parsed().dst, sa("198.51.100.10:8080"));
    assert_eq!(r.parsed().src, sa(&format!("{SNAT4}:{port}")));

    // The backend's answer: the client back as destination and the frontend as source, at
    // ingress, and sent to the client's next hop (netfilter never sees the connection).
    let r = dp.ingress(&tcp(
        "198.51.100.10:8080",
        &format!("{SNAT4}:{port}"),
        SYN | ACK,
    ));
    assert_eq!(r.verdict, TC_ACT_REDIRECT);
    let p = r.parsed();
    assert_eq!(p.src, sa("10.96.0.10:80"));
    assert_eq!(p.dst, sa("203.0.113.5:40000"));
    // Egress leaves it as it is.
    let e = dp.egress(&r.pkt);
    assert_eq!((e.verdict, &e.pkt), (TC_ACT_OK, &r.pkt));

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
    dp.cluster_ip("[fd00:96::10]:53", Udp, 2, &[(21, "[2001:db8:2::10]:5353")]);
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
    dp.cluster_ip("10.96.0.53:53", Udp, 3, &[(31, "10.244.2.7:53")]);
    dp.cluster_ip("[fd00:96::80]:80", Tcp, 4, &[(41, "[2001:db8:2::80]:8080")]);
    let r = dp.ingress(&udp("10.244.1.5:5000", "10.96.0.53:53"));
    assert_eq!(r.parsed().dst, sa("10.244.2.7:53"));
    let r = dp.egress(&udp("10.244.2.7:53", "10.244.1.5:5000"));
    assert_eq!(r.parsed().src, sa("10.96.0.53:53"));

    let r = dp.ingress(&tcp("[2001:db8:9::1]:41000", "[fd00:96::80]:80", SYN));
    assert_eq!(r.verdict, TC_ACT_REDIRECT);
    let p = r.parsed();
    assert_eq!(p.dst, sa("[2001:db8:2::80]:8080"));
    assert_eq!(p.src.ip(), ip(SNAT6));
    let snat = p.src;
    let r = dp.ingress(&tcp("[2001:db8:2::80]:8080", &snat.to_string(), SYN | ACK));
    assert_eq!(r.parsed().dst, sa("[2001:db8:9::1]:41000"));
    let r = dp.egress(&r.pkt);
    assert_eq!(r.parsed().src, sa("[fd00:96::80]:80"));
}

#[test]
fn udp_without_checksum_keeps_none() {
    let Some(mut dp) = Dp::new() else { return };
    dp.cluster_ip("10.96.0.53:53", Udp, 3, &[(31, "10.244.2.7:5353")]);
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
        EXT,
        "0.0.0.0:30080",
        Tcp,
        5,
        svc_flags::NODEPORT,
        &[(51, "198.51.100.20:8080", backend_flags::LOCAL)],
    );
    dp.service(
        EXT,
        "[::]:30080",
        Tcp,
        6,
        svc_flags::NODEPORT,
        &[(61, "[2001:db8:5::20]:8080", 0)],
    );
    let r = dp.ingress(&tcp("203.0.113.5:40000", "192.0.2.1:30080", SYN));
    assert_eq!(r.parsed().dst, sa("198.51.100.20:8080"));
    assert_eq!(r.mark, 0, "local backend: the client address is kept");
    // Replies come from the node address the client used, not the wildcard.
    let r = dp.egress(&tcp("198.51.100.20:8080", "203.0.113.5:40000", SYN | ACK));
    assert_eq!(r.parsed().src, sa("192.0.2.1:30080"));

    let r = dp.ingress(&tcp("[2001:db8:9::5]:40000", "[2001:db8::1]:30080", SYN));
    assert_eq!(r.parsed().dst, sa("[2001:db8:5::20]:8080"));
    assert_eq!(r.parsed().src.ip(), ip(SNAT6));
    let snat = r.parsed().src;
    let r = dp.ingress(&tcp("[2001:db8:5::20]:8080", &snat.to_string(), SYN | ACK));
    assert_eq!(r.parsed().dst, sa("[2001:db8:9::5]:40000"));
    let r = dp.egress(&r.pkt);
    assert_eq!(r.parsed().src, sa("[2001:db8::1]:30080"));

    // A reply to one of the node's own (or masqueraded) connections whose port happens to
    // be a NodePort: not a new connection, left to the stack.
    let reply = tcp("198.51.100.99:443", "192.0.2.1:30080", SYN | ACK);
    let r = dp.ingress(&reply);
    assert_eq!((r.verdict, &r.pkt), (TC_ACT_OK, &reply));

    // Not a node address: not a NodePort.
    let other = tcp("203.0.113.5:40000", "192.0.2.99:30080", SYN);
    let r = dp.ingress(&other);
    assert_eq!((r.verdict, &r.pkt), (TC_ACT_OK, &other));
}

#[test]
fn a_new_syn_on_a_reused_port_is_balanced_afresh() {
    let Some(mut dp) = Dp::new() else { return };
    dp.cluster_cidr("10.244.0.0/16");
    dp.cluster_ip("10.96.0.10:80", Tcp, 1, &[(11, "10.244.2.10:8080")]);
    let client = "10.244.1.5:40000";
    let r = dp.ingress(&tcp(client, "10.96.0.10:80", SYN));
    assert_eq!(r.parsed().dst, sa("10.244.2.10:8080"));

    // The backend set changes: established packets stay, a new SYN on the same tuple moves.
    dp.backend(12, "10.244.3.10:8080", Tcp, 0);
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

/// The Service 10.96.0.10:80 with one backend, a pod of this node: 10.244.1.5:8080, in the
/// cluster range 10.244.0.0/16.
fn pod_behind_its_service() -> Option<Dp> {
    let mut dp = Dp::new()?;
    dp.cluster_cidr("10.244.0.0/16");
    let pod = [(11, "10.244.1.5:8080", backend_flags::LOCAL)];
    dp.service(EXT, "10.96.0.10:80", Tcp, 1, svc_flags::CLUSTER_IP, &pod);
    Some(dp)
}

#[test]
fn a_balanced_syn_seen_again_at_a_second_interface_keeps_its_reply_entry() {
    let Some(mut dp) = pod_behind_its_service() else {
        return;
    };
    // A pod reaches itself: its veth's ingress balances, then the bridge's ingress sees the
    // DNATed SYN, a SYN to no frontend.
    let hop1 = dp.ingress(&tcp("10.244.1.5:40000", "10.96.0.10:80", SYN));
    assert_eq!(hop1.parsed().dst, sa("10.244.1.5:8080"));
    let hop2 = dp.ingress(&hop1.pkt);
    assert_eq!((hop2.verdict, &hop2.pkt), (TC_ACT_OK, &hop1.pkt));
    let r = dp.egress(&tcp("10.244.1.5:8080", "10.244.1.5:40000", SYN | ACK));
    assert_eq!(r.parsed().src, sa("10.96.0.10:80"), "reply entry kept");

    // The client resets that connection and reuses the port for a direct one: the old reply
    // entry goes, the direct connection's replies stay as they are.
    dp.ingress(&tcp("10.244.1.5:40000", "10.96.0.10:80", RST | ACK));
    dp.ingress(&tcp("10.244.1.5:40000", "10.244.1.5:8080", SYN));
    let reply = tcp("10.244.1.5:8080", "10.244.1.5:40000", SYN | ACK);
    assert_eq!(dp.egress(&reply).pkt, reply);
}

#[test]
fn a_deleted_backend_rebalances_its_connections() {
    let Some(mut dp) = Dp::new() else { return };
    dp.cluster_ip("10.96.0.10:80", Udp, 1, &[(11, "10.244.2.10:8080")]);
    let r = dp.ingress(&udp("10.244.1.5:40000", "10.96.0.10:80"));
    assert_eq!(r.parsed().dst, sa("10.244.2.10:8080"));
    dp.remove_backend(11);
    dp.backend(12, "10.244.3.10:8080", Udp, 0);
    dp.slot(1, EXT, 1, 12);
    let r = dp.ingress(&udp("10.244.1.5:40000", "10.96.0.10:80"));
    assert_eq!(r.parsed().dst, sa("10.244.3.10:8080"));
}

#[test]
fn a_tcp_connection_whose_backend_is_deleted_is_reset() {
    let Some(mut dp) = Dp::new() else { return };
    dp.cluster_ip("10.96.0.10:80", Tcp, 1, &[(11, "10.244.2.10:8080")]);
    dp.ingress(&tcp("10.244.1.5:40000", "10.96.0.10:80", SYN));
    let r = dp.ingress(&tcp("10.244.1.5:40000", "10.96.0.10:80", ACK));
    assert_eq!(r.parsed().dst, sa("10.244.2.10:8080"));
    dp.remove_backend(11);
    dp.backend(12, "10.244.3.10:8080", Tcp, 0);
    dp.slot(1, EXT, 1, 12);
    // Not moved mid-stream to another backend (which would reset it less helpfully): reset.
    let r = dp.ingress(&tcp("10.244.1.5:40000", "10.96.0.10:80", ACK));
    assert_eq!(r.verdict, TC_ACT_REDIRECT);
    let p = r.parsed();
    assert_eq!(
        (p.src, p.dst, p.flags),
        (sa("10.96.0.10:80"), sa("10.244.1.5:40000"), RST)
    );
}

#[test]
fn internal_entry_for_in_cluster_sources_external_for_the_rest() {
    let Some(mut dp) = Dp::new() else { return };
    dp.cluster_cidr("10.244.0.0/16");
    dp.node_addr("192.0.2.1");
    let flags = svc_flags::LOADBALANCER | svc_flags::LOCAL | svc_flags::HAS_INTERNAL;
    dp.service(
        EXT,
        "203.0.113.100:443",
        Tcp,
        7,
        flags,
        &[(71, "10.244.1.10:8443", backend_flags::LOCAL)],
    );
    dp.service(
        INT,
        "203.0.113.100:443",
        Tcp,
        7,
        svc_flags::LOADBALANCER,
        &[(72, "10.244.9.10:8443", 0)],
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
        EXT,
        "203.0.113.100:443",
        Tcp,
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
fn masquerade_for_remote_backends_from_outside_and_hairpin() {
    let Some(mut dp) = pod_behind_its_service() else {
        return;
    };
    dp.cluster_ip("10.96.0.11:80", Tcp, 2, &[(21, "10.244.2.5:8080")]);
    // Hairpin: the pod reaches itself through its Service.
    let snat4 = ip(SNAT4);
    let r = dp.ingress(&tcp("10.244.1.5:40000", "10.96.0.10:80", SYN));
    assert_eq!(r.parsed().dst, sa("10.244.1.5:8080"));
    assert_eq!(r.parsed().src.ip(), snat4, "hairpin");
    assert_eq!(r.verdict, TC_ACT_REDIRECT);
    // Another pod, remote backend: kept (the reply comes back through the pod's node).
    let r = dp.ingress(&tcp("10.244.1.6:40000", "10.96.0.11:80", SYN));
    assert_eq!(
        (r.verdict, r.parsed().src),
        (TC_ACT_OK, sa("10.244.1.6:40000"))
    );
    // Outside client, local backend: kept; remote backend: masqueraded.
    let r = dp.ingress(&tcp("203.0.113.5:40000", "10.96.0.10:80", SYN));
    assert_eq!(
        (r.verdict, r.parsed().src),
        (TC_ACT_OK, sa("203.0.113.5:40000"))
    );
    let r = dp.ingress(&tcp("203.0.113.5:40000", "10.96.0.11:80", SYN));
    assert_eq!(r.parsed().src.ip(), snat4);
    assert_eq!(r.mark, 0);
}

#[test]
fn masquerade_ports_run_out_and_closed_ones_are_taken_over() {
    let Some(mut dp) = Dp::new() else { return };
    dp.config(Config {
        snat_port_min: 62000,
        snat_port_max: 62001,
        ..lb_config()
    });
    dp.cluster_ip("10.96.0.10:80", Tcp, 1, &[(11, "198.51.100.10:8080")]);
    let vip = "10.96.0.10:80";
    let mut ports = Vec::new();
    for client in ["203.0.113.5:40000", "203.0.113.6:40000"] {
        let r = dp.ingress(&tcp(client, vip, SYN));
        assert_eq!(r.verdict, TC_ACT_REDIRECT, "{client}");
        ports.push(r.parsed().src.port());
    }
    let mut sorted = ports.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        [62000, 62001],
        "the configured range, one port each"
    );

    // Both ports held by live connections: the third is counted and dropped, with no entry.
    let third = "203.0.113.7:40000";
    let r = dp.ingress(&tcp(third, vip, SYN));
    assert_eq!(r.verdict, TC_ACT_SHOT);
    assert_eq!(dp.counter(8), 1, "snat_no_port");
    assert!(dp.ct(ct_key(third, vip, TCP, 0)).is_none());

    // The first closes: with no free port left, its port goes to the next connection (its
    // last segments may still come, as netfilter risks when it reuses a TIME_WAIT tuple),
    // whose replies it now carries.
    let fk = ct_key("203.0.113.5:40000", vip, TCP, 0);
    dp.ingress(&tcp("203.0.113.5:40000", vip, FIN | ACK));
    assert_ne!(dp.ct(fk).unwrap().flags & ct_flags::CLOSING, 0);
    let r = dp.ingress(&tcp(third, vip, SYN));
    assert_eq!(r.verdict, TC_ACT_REDIRECT);
    assert_eq!(r.parsed().src, sa(&format!("{SNAT4}:{}", ports[0])));
    assert_eq!(dp.counter(8), 1, "no new shortage");
    let r = dp.ingress(&tcp(
        "198.51.100.10:8080",
        &format!("{SNAT4}:{}", ports[0]),
        SYN | ACK,
    ));
    assert_eq!(r.parsed().dst, sa(third));
    // A fourth finds both ports held by live connections again.
    let fourth = "203.0.113.8:40000";
    assert_eq!(dp.ingress(&tcp(fourth, vip, SYN)).verdict, TC_ACT_SHOT);
    assert_eq!(dp.counter(8), 2);
    // An expired connection's port is taken like a free one.
    let tk = ct_key(third, vip, TCP, 0);
    let held = dp.ct(tk).unwrap();
    dp.set_ct(tk, seen_at(held, held.last_seen.wrapping_sub(7 * 3600)));
    let r = dp.ingress(&tcp(fourth, vip, SYN));
    assert_eq!(r.verdict, TC_ACT_REDIRECT);
    assert_eq!(r.parsed().src, sa(&format!("{SNAT4}:{}", ports[0])));
    // The live second connection kept its port.
    let r = dp.ingress(&tcp("203.0.113.6:40000", vip, ACK));
    assert_eq!(r.parsed().src, sa(&format!("{SNAT4}:{}", ports[1])));

    // A client reusing its source port on a new SYN is balanced afresh: the port its old
    // connection held is free for the new one.
    let r = dp.ingress(&tcp("203.0.113.6:40000", vip, SYN));
    assert_eq!(r.verdict, TC_ACT_REDIRECT);
    assert_eq!(dp.counter(8), 2, "no port shortage");
}

#[test]
fn a_reset_frees_the_masquerade_port_at_once() {
    let Some(mut dp) = Dp::new() else { return };
    dp.config(Config {
        snat_port_min: 62000,
        snat_port_max: 62000,
        ..lb_config()
    });
    dp.cluster_ip("10.96.0.10:80", Tcp, 1, &[(11, "198.51.100.10:8080")]);
    let vip = "10.96.0.10:80";
    let snat = format!("{SNAT4}:62000");
    let r = dp.ingress(&tcp("203.0.113.5:40000", vip, SYN));
    assert_eq!(r.parsed().src, sa(&snat));
    assert_eq!(
        dp.ingress(&tcp("203.0.113.6:40000", vip, SYN)).verdict,
        TC_ACT_SHOT,
        "the one port is held"
    );
    // The backend resets: translated to the client, and every entry of the connection goes.
    let r = dp.ingress(&tcp("198.51.100.10:8080", &snat, RST | ACK));
    assert_eq!(r.verdict, TC_ACT_REDIRECT);
    assert_eq!(r.parsed().dst, sa("203.0.113.5:40000"));
    assert_eq!(r.parsed().src, sa(vip));
    assert!(dp.ct(ct_key("203.0.113.5:40000", vip, TCP, 0)).is_none());
    assert!(
        dp.ct(ct_key("198.51.100.10:8080", "203.0.113.5:40000", TCP, 1))
            .is_none()
    );
    assert!(dp.ct(ct_key("198.51.100.10:8080", &snat, TCP, 2)).is_none());
    let r = dp.ingress(&tcp("203.0.113.6:40000", vip, SYN));
    assert_eq!(r.verdict, TC_ACT_REDIRECT);
    assert_eq!(r.parsed().src, sa(&snat), "the port again, at once");
    // The client resets: the same.
    let r = dp.ingress(&tcp("203.0.113.6:40000", vip, RST | ACK));
    assert_eq!(r.verdict, TC_ACT_REDIRECT);
    assert_eq!(r.parsed().src, sa(&snat));
    assert!(dp.ct(ct_key("198.51.100.10:8080", &snat, TCP, 2)).is_none());
    let r = dp.ingress(&tcp("203.0.113.7:40000", vip, SYN));
    assert_eq!(r.parsed().src, sa(&snat));
}

#[test]
fn a_masqueraded_packet_too_big_for_the_route_goes_to_the_stack_for_its_icmp() {
    let Some(mut dp) = Dp::new() else { return };
    dp.cluster_ip("10.96.0.10:80", Tcp, 1, &[(11, "198.51.100.10:8080")]);
    dp.cluster_ip("[fd00:96::80]:80", Tcp, 2, &[(21, "[2001:db8:2::80]:8080")]);
    for (client, vip, backend) in [
        ("203.0.113.5:40000", "10.96.0.10:80", "198.51.100.10:8080"),
        (
            "[2001:db8:9::1]:41000",
            "[fd00:96::80]:80",
            "[2001:db8:2::80]:8080",
        ),
    ] {
        let r = dp.ingress(&tcp(client, vip, SYN));
        assert_eq!(r.verdict, TC_ACT_REDIRECT, "{client}");
        let masq = r.parsed().src;
        dp.ns.ip(&["link", "set", "d0", "mtu", "1280"]);
        // DF (IPv4) or IPv6: DNATed only and handed to the stack, which answers with the ICMP
        // path MTU discovery needs and drops it.
        let big = packet(sa(client), sa(vip), TCP, ACK, &[7u8; 1300]);
        let r = dp.ingress(&big);
        assert_eq!(r.verdict, TC_ACT_OK, "{client}");
        assert_eq!((r.parsed().src, r.parsed().dst), (sa(client), sa(backend)));
        // What fits still goes masqueraded.
        let r = dp.ingress(&tcp(client, vip, ACK));
        assert_eq!(r.verdict, TC_ACT_REDIRECT, "{client}");
        assert_eq!(r.parsed().src, masq);
        dp.ns.ip(&["link", "set", "d0", "mtu", "1500"]);
    }
}

#[test]
fn icmp_errors_to_the_masqueraded_source_reach_the_client() {
    let Some(mut dp) = Dp::new() else { return };
    dp.cluster_ip("10.96.0.53:53", Udp, 1, &[(11, "198.51.100.10:5353")]);
    dp.cluster_ip("[fd00:96::80]:80", Tcp, 2, &[(21, "[2001:db8:2::80]:8080")]);
    // The backend has nothing on the port: its port unreachable, sent to the masqueraded
    // source, gets the client back at ingress, then the frontend at egress.
    let sent = dp.ingress(&udp("203.0.113.5:5000", "10.96.0.53:53"));
    assert_eq!(sent.verdict, TC_ACT_REDIRECT);
    let err = icmp_error("198.51.100.10", SNAT4, 3, 3, &sent.pkt);
    let r = dp.ingress(&err);
    assert_eq!(r.verdict, TC_ACT_OK);
    let p = r.parsed();
    assert_eq!(
        (p.src.ip(), p.dst.ip()),
        (ip("198.51.100.10"), ip("203.0.113.5"))
    );
    let q = quoted(&r.pkt);
    assert_eq!(q.src.ip(), ip("203.0.113.5"), "quoted source: the client");
    assert_eq!(q.src.port(), 5000, "quoted source port");
    let r = dp.egress(&r.pkt);
    let p = r.parsed();
    assert_eq!(p.src.ip(), ip("10.96.0.53"));
    let q = quoted(&r.pkt);
    assert_eq!(q.dst.ip(), ip("10.96.0.53"));
    assert_eq!(q.dst.port(), 53);

    // Packet too big from a router on the way, about a masqueraded IPv6 connection.
    let sent = dp.ingress(&tcp("[2001:db8:9::1]:41000", "[fd00:96::80]:80", SYN));
    assert_eq!(sent.verdict, TC_ACT_REDIRECT);
    let err = icmp_error("2001:db8:ff::fe", SNAT6, 2, 0, &sent.pkt);
    let r = dp.ingress(&err);
    let p = r.parsed();
    assert_eq!(p.dst.ip(), ip("2001:db8:9::1"));
    let q = quoted(&r.pkt);
    assert_eq!(q.src.ip(), ip("2001:db8:9::1"));
    assert_eq!(q.src.port(), 41000);
    let r = dp.egress(&r.pkt);
    let q = quoted(&r.pkt);
    assert_eq!(q.dst.ip(), ip("fd00:96::80"));
    assert_eq!(q.dst.port(), 80);

    // An error to the masqueraded address about another port is left alone.
    let held = sent.parsed().src.port();
    let mut other = sent.pkt.clone();
    let unused = if held == 65535 { 65534u16 } else { held + 1 };
    other[54..56].copy_from_slice(&unused.to_be_bytes());
    let err = icmp_error("2001:db8:ff::fe", SNAT6, 2, 0, &other);
    assert_eq!(dp.ingress(&err).pkt, err);
}

#[test]
fn no_backend_tcp_syn_gets_a_reset_back() {
    let Some(mut dp) = Dp::new() else { return };
    dp.cluster_ip("10.96.0.10:80", Tcp, 1, &[]);
    dp.cluster_ip("[fd00:96::10]:80", Tcp, 2, &[]);
    for (client, vip) in [
        ("203.0.113.5:40000", "10.96.0.10:80"),
        ("[2001:db8:9::1]:40000", "[fd00:96::10]:80"),
    ] {
        let syn = tcp(client, vip, SYN);
        let r = dp.ingress(&syn);
        assert_eq!(r.verdict, TC_ACT_REDIRECT, "{client}");
        let p = r.parsed();
        assert_eq!((p.src, p.dst), (sa(vip), sa(client)));
        assert_eq!(p.flags, RST | ACK);
        assert_eq!((p.seq, p.ack, p.len), (0, 1001, 0));
        assert_eq!(&r.pkt[0..6], &syn[6..12], "back to the sender's MAC");
        assert_eq!(&r.pkt[6..12], &syn[0..6]);
    }

    // A SYN's options are not data: the RST acknowledges the SYN alone.
    let r = dp.ingress(&syn_with_options("203.0.113.5:40002", "10.96.0.10:80"));
    assert_eq!(r.verdict, TC_ACT_REDIRECT);
    assert_eq!((r.parsed().flags, r.parsed().ack), (RST | ACK, 1001));
    // Data on a SYN is acknowledged too.
    let r = dp.ingress(&packet(
        sa("203.0.113.5:40003"),
        sa("10.96.0.10:80"),
        TCP,
        SYN,
        b"fastopen",
    ));
    assert_eq!(r.parsed().ack, 1009);

    // A segment of no connection: a RST at its acknowledgment number (77 here).
    let r = dp.ingress(&tcp("203.0.113.5:40000", "10.96.0.10:80", ACK));
    assert_eq!(r.verdict, TC_ACT_REDIRECT);
    let p = r.parsed();
    assert_eq!((p.flags, p.seq, p.ack), (RST, 77, 0));
    // A RST is never answered.
    let r = dp.ingress(&tcp("203.0.113.5:40000", "10.96.0.10:80", RST | ACK));
    assert_eq!(r.verdict, TC_ACT_SHOT);
    assert_eq!(dp.counter(2), 6, "reject");
}

#[test]
fn fin_marks_the_connection_closing_and_a_reset_ends_it() {
    let Some(mut dp) = Dp::new() else { return };
    dp.cluster_ip("10.96.0.10:80", Tcp, 1, &[(11, "10.244.2.10:8080")]);
    dp.ingress(&tcp("10.244.1.5:40000", "10.96.0.10:80", SYN));
    let k = ct_key("10.244.1.5:40000", "10.96.0.10:80", TCP, 0);
    assert_eq!(dp.ct(k).unwrap().flags & ct_flags::CLOSING, 0);
    let r = dp.ingress(&tcp("10.244.1.5:40000", "10.96.0.10:80", FIN | ACK));
    assert_eq!(r.parsed().dst, sa("10.244.2.10:8080"));
    assert_ne!(dp.ct(k).unwrap().flags & ct_flags::CLOSING, 0);
    let rk = ct_key("10.244.2.10:8080", "10.244.1.5:40000", TCP, 1);
    assert!(dp.ct(rk).is_some());
    // A reset from the backend is translated, then both entries go.
    let r = dp.egress(&tcp("10.244.2.10:8080", "10.244.1.5:40000", RST));
    assert_eq!(r.parsed().src, sa("10.96.0.10:80"));
    assert!(dp.ct(rk).is_none());
    assert!(dp.ct(k).is_none());

    // A reset from the client: translated, then both entries go.
    dp.ingress(&tcp("10.244.1.5:40001", "10.96.0.10:80", SYN));
    let k = ct_key("10.244.1.5:40001", "10.96.0.10:80", TCP, 0);
    let rk = ct_key("10.244.2.10:8080", "10.244.1.5:40001", TCP, 1);
    assert!(dp.ct(k).is_some() && dp.ct(rk).is_some());
    let r = dp.ingress(&tcp("10.244.1.5:40001", "10.96.0.10:80", RST | ACK));
    assert_eq!(r.parsed().dst, sa("10.244.2.10:8080"));
    assert!(dp.ct(k).is_none());
    assert!(dp.ct(rk).is_none());
}

#[test]
fn no_backend_udp_gets_port_unreachable() {
    let Some(mut dp) = Dp::new() else { return };
    dp.cluster_ip("10.96.0.53:53", Udp, 1, &[]);
    dp.cluster_ip("[fd00:96::53]:53", Udp, 2, &[]);

    // (client, frontend, ICMP protocol, destination unreachable: port, IP header length)
    for (client, vip, icmp, unreachable, ip_len) in [
        ("203.0.113.5:5000", "10.96.0.53:53", ICMP, (3, 3), 20),
        (
            "[2001:db8:9::1]:5000",
            "[fd00:96::53]:53",
            ICMPV6,
            (1, 4),
            40,
        ),
    ] {
        let dgram = udp(client, vip);
        let r = dp.ingress(&dgram);
        assert_eq!(r.verdict, TC_ACT_REDIRECT, "{client}");
        let p = r.parsed();
        assert_eq!(p.proto, icmp);
        assert_eq!(
            (p.flags, p.seq),
            unreachable,
            "destination unreachable, port"
        );
        assert_eq!((p.src.ip(), p.dst.ip()), (sa(vip).ip(), sa(client).ip()));
        // Behind Ethernet, the IP header and 8 bytes of ICMP.
        let at = 14 + ip_len + 8;
        assert_eq!(
            &r.pkt[at..at + ip_len + 8],
            &dgram[14..14 + ip_len + 8],
            "the datagram's IP header and 8 bytes quoted"
        );
    }
    assert_eq!(dp.counter(2), 2, "reject");
}

#[test]
fn host_connections_to_a_frontend_without_backends_are_rejected_at_egress() {
    // (Host connections to a frontend with backends are balanced at egress when socket-LB
    // did not translate them: see tcx_traffic_through_a_node_checksums_verified.)
    let Some(mut dp) = Dp::new() else { return };
    dp.cluster_ip("10.96.0.10:80", Tcp, 1, &[]);
    dp.cluster_ip("10.96.0.53:53", Udp, 2, &[]);
    dp.service(
        EXT,
        "10.96.0.11:80",
        Tcp,
        3,
        svc_flags::CLUSTER_IP | svc_flags::LOCAL,
        &[],
    );
    dp.cluster_ip("10.96.0.12:80", Tcp, 4, &[(41, "10.244.2.10:8080")]);
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
        EXT,
        "203.0.113.100:443",
        Tcp,
        9,
        flags,
        &[(91, "10.244.1.10:8443", backend_flags::LOCAL)],
    );
    dp.service(
        EXT,
        "[2001:db8:100::1]:443",
        Tcp,
        10,
        flags,
        &[(101, "[2001:db8:244::10]:8443", backend_flags::LOCAL)],
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
        .map(|i| (10 + i, format!("10.244.2.{}:8080", 10 + i)))
        .collect();
    let list: Vec<(u32, &str, u8)> = backends
        .iter()
        .map(|(id, a)| (*id, a.as_str(), 0))
        .collect();
    dp.service_with(EXT, "10.96.0.10:80", Tcp, val, &list);

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
    let chosen = list.iter().find(|b| sa(b.1) == first).unwrap().0;
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
        EXT,
        "203.0.113.50:80",
        Tcp,
        val,
        &[(200, "10.244.200.1:8080", 0)],
    );
    for i in 0..7 {
        let id = 100 + i;
        dp.backend(id, &format!("10.244.100.{i}:8080"), Tcp, 0);
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
    dp.cluster_ip("10.96.0.10:80", Udp, 1, &[(11, "10.244.2.10:8080")]);
    dp.cluster_ip("10.96.0.10:80", Tcp, 2, &[(21, "10.244.2.20:8080")]);
    dp.backend(12, "10.244.3.10:8080", Udp, 0);
    dp.backend(22, "10.244.3.20:8080", Tcp, 0);

    let uk = ct_key("10.244.1.5:5000", "10.96.0.10:80", UDP, 0);
    dp.ingress(&udp("10.244.1.5:5000", "10.96.0.10:80"));
    let entry = dp.ct(uk).expect("a UDP entry");
    let now = entry.last_seen;
    dp.slot(1, EXT, 1, 12);
    // Idle 20 s of 30: kept.
    dp.set_ct(uk, seen_at(entry, now - 20));
    let r = dp.ingress(&udp("10.244.1.5:5000", "10.96.0.10:80"));
    assert_eq!(r.parsed().dst, sa("10.244.2.10:8080"));
    assert_eq!(dp.ct(uk).unwrap().last_seen, now, "refreshed");
    // Idle 31 s: over, balanced afresh.
    dp.set_ct(uk, seen_at(entry, now - 31));
    let r = dp.ingress(&udp("10.244.1.5:5000", "10.96.0.10:80"));
    assert_eq!(r.parsed().dst, sa("10.244.3.10:8080"));

    let tk = ct_key("10.244.1.5:40000", "10.96.0.10:80", TCP, 0);
    dp.ingress(&tcp("10.244.1.5:40000", "10.96.0.10:80", SYN));
    let entry = dp.ct(tk).expect("a TCP entry");
    dp.slot(2, EXT, 1, 22);
    // Established, idle 1000 s of 3600: kept.
    dp.set_ct(tk, seen_at(entry, now - 1000));
    let r = dp.ingress(&tcp("10.244.1.5:40000", "10.96.0.10:80", ACK));
    assert_eq!(r.parsed().dst, sa("10.244.2.20:8080"));
    // Closing, idle 11 s: over; the next segment starts nothing, a new SYN is balanced.
    dp.set_ct(
        tk,
        CtVal {
            last_seen: now - 11,
            flags: ct_flags::CLOSING,
            ..entry
        },
    );
    let r = dp.ingress(&tcp("10.244.1.5:40000", "10.96.0.10:80", ACK));
    assert_eq!((r.verdict, r.parsed().flags), (TC_ACT_REDIRECT, RST));
    let r = dp.ingress(&tcp("10.244.1.5:40000", "10.96.0.10:80", SYN));
    assert_eq!(r.parsed().dst, sa("10.244.3.20:8080"));
}

// --- socket-LB (sock.c) on a cgroup and a network namespace of the test's own ------------

/// Backends in the namespace: TCP on 198.51.100.10:8081..8084 and [2001:db8::10]:8081, UDP
/// on 198.51.100.10:5353 and [2001:db8::10]:5353; each answers with its own port.
struct Servers {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: Option<std::thread::JoinHandle<std::io::Result<()>>>,
}

impl Servers {
    fn start(
        ns: &str,
        tcp_addrs: &'static [&'static str],
        udp_addrs: &'static [&'static str],
    ) -> Servers {
        use std::io::Write;
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let st = stop.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let handle = metalnet::sys::netns::spawn_in(ns, move || {
            let mut tcp = Vec::new();
            for a in tcp_addrs {
                let l = std::net::TcpListener::bind(a).unwrap_or_else(|e| panic!("bind {a}: {e}"));
                l.set_nonblocking(true).unwrap();
                tcp.push(l);
            }
            let mut udp = Vec::new();
            for a in udp_addrs {
                let u = std::net::UdpSocket::bind(a).unwrap_or_else(|e| panic!("bind {a}: {e}"));
                u.set_nonblocking(true).unwrap();
                udp.push(u);
            }
            tx.send(()).unwrap();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            let mut buf = [0u8; 64];
            while !st.load(Ordering::Relaxed) && std::time::Instant::now() < deadline {
                for l in &tcp {
                    while let Ok((mut s, _)) = l.accept() {
                        let port = l.local_addr().unwrap().port();
                        let _ = s.write_all(port.to_string().as_bytes());
                    }
                }
                for u in &udp {
                    while let Ok((_, from)) = u.recv_from(&mut buf) {
                        let port = u.local_addr().unwrap().port();
                        let _ = u.send_to(port.to_string().as_bytes(), from);
                    }
                }
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
        })
        .expect("a thread in the namespace");
        if rx.recv_timeout(std::time::Duration::from_secs(10)).is_err() {
            match handle.join() {
                Err(panic) => std::panic::resume_unwind(panic),
                Ok(r) => panic!("servers in {ns} not listening: {r:?}"),
            }
        }
        Servers {
            stop,
            handle: Some(handle),
        }
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Python clients of the tests' Services: each returns [the peer's address and port as the
/// socket shows them, what the server answered], or ["error", errno, ""].
macro_rules! py_clients {
    () => {
        r#"
import socket, json
def tcp(host, port, fam=socket.AF_INET):
    try:
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.settimeout(5)
        s.connect((host, port))
        peer = s.getpeername()[:2]
        data = s.recv(16).decode()
        s.close()
        return [peer[0], peer[1], data]
    except OSError as e:
        return ["error", e.errno, ""]
def udp(host, port, fam=socket.AF_INET, connected=False):
    try:
        u = socket.socket(fam, socket.SOCK_DGRAM)
        u.settimeout(5)
        if connected:
            u.connect((host, port))
            u.send(b"q")
            d = u.recv(16)
            a = u.getpeername()
        else:
            u.sendto(b"q", (host, port))
            d, a = u.recvfrom(16)
        return [a[0], a[1], d.decode()]
    except OSError as e:
        return ["error", e.errno, ""]
def udp_connected(host, port, fam=socket.AF_INET):
    return udp(host, port, fam, connected=True)
"#
    };
}

const CLIENT: &str = concat!(
    py_clients!(),
    r#"
cookie = int.from_bytes(socket.socket().getsockopt(socket.SOL_SOCKET, 71, 8), "little")
print(json.dumps({
    "cookie": cookie,
    "tcp4": [tcp("10.96.0.10", 80) for _ in range(16)],
    "affinity": [tcp("10.96.0.20", 80) for _ in range(8)],
    "udp4": udp("10.96.0.53", 53),
    "udp4c": udp_connected("10.96.0.53", 53),
    "tcp6": tcp("fd00:96::10", 80, socket.AF_INET6),
    "udp6": udp("fd00:96::53", 53, socket.AF_INET6),
    "none": tcp("10.96.0.99", 80),
}))
"#
);

fn run_client(cg: &common::Cgroup, ns: &str) -> serde_json::Value {
    let out = cg.run_python(ns, 30, CLIENT);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("client output {out:?}: {e}"))
}

/// Runs a Python script in the network namespace `ns`, killed after `timeout` seconds.
fn run_python(ns: &str, timeout: u32, script: &str) -> std::process::Output {
    Command::new("ip")
        .args(["netns", "exec", ns, "timeout", &timeout.to_string()])
        .args(["python3", "-c", script])
        .output()
        .unwrap()
}

/// Whether the lab tests can run: as root, with python3 for their clients.
fn root_with_python() -> bool {
    let python = Command::new("python3")
        .args(["-c", "pass"])
        .status()
        .is_ok_and(|s| s.success());
    if !is_root() || !python {
        eprintln!("skipped: needs root and python3");
    }
    is_root() && python
}

#[test]
fn socket_lb_translates_connect_sendmsg_and_shows_the_frontend() {
    use aya::programs::CgroupSockAddr;
    use aya::programs::links::CgroupAttachMode;
    if !root_with_python() {
        return;
    }
    let Some(ns) = metalnet::testing::Netns::new("bpfsock") else {
        return;
    };
    ns.ip(&["addr", "add", "198.51.100.10/32", "dev", "lo"]);
    ns.ip(&[
        "-6",
        "addr",
        "add",
        "2001:db8::10/128",
        "dev",
        "lo",
        "nodad",
    ]);
    let _servers = Servers::start(
        ns.name(),
        &[
            "198.51.100.10:8081",
            "198.51.100.10:8082",
            "198.51.100.10:8083",
            "198.51.100.10:8084",
            "[2001:db8::10]:8081",
        ],
        &["198.51.100.10:5353", "[2001:db8::10]:5353"],
    );
    let cg = common::Cgroup::new("bpfsock");
    let fs = Bpffs::mount();
    let mut ebpf = load_sock(&fs);
    let cg_dir = std::fs::File::open(&cg.path).unwrap();
    for name in SOCK_PROGRAMS {
        let prog: &mut CgroupSockAddr = ebpf.program_mut(name).unwrap().try_into().unwrap();
        prog.attach(&cg_dir, CgroupAttachMode::Single)
            .unwrap_or_else(|e| panic!("attaching {name}: {e:?}"));
    }
    let mut maps = ebpf;
    let socket_lb = |socket_lb: u32, host_netns_cookie: u64| Config {
        socket_lb,
        host_netns_cookie,
        ..Config::default()
    };
    maps.config(socket_lb(1, 0));
    let b4 = [
        (11, "198.51.100.10:8081", 0),
        (12, "198.51.100.10:8082", 0),
        (13, "198.51.100.10:8083", 0),
        (14, "198.51.100.10:8084", 0),
    ];
    maps.service(EXT, "10.96.0.10:80", Tcp, 1, 0, &b4);
    let affinity = SvcVal {
        rev_id: 2,
        flags: svc_flags::AFFINITY,
        affinity_timeout: 60,
        ..SvcVal::default()
    };
    let b4a = b4.map(|(id, a, f)| (id + 10, a, f));
    maps.service_with(EXT, "10.96.0.20:80", Tcp, affinity, &b4a);
    for (frontend, proto, rev_id, backends) in [
        (
            "10.96.0.53:53",
            Udp,
            3,
            &[(31, "198.51.100.10:5353", 0)][..],
        ),
        (
            "[fd00:96::10]:80",
            Tcp,
            4,
            &[(41, "[2001:db8::10]:8081", 0)],
        ),
        (
            "[fd00:96::53]:53",
            Udp,
            5,
            &[(51, "[2001:db8::10]:5353", 0)],
        ),
        ("10.96.0.99:80", Tcp, 6, &[]),
    ] {
        maps.service(EXT, frontend, proto, rev_id, 0, backends);
    }

    let v = run_client(&cg, ns.name());
    let tcp4 = v["tcp4"].as_array().unwrap();
    let mut ports = std::collections::BTreeSet::new();
    for c in tcp4 {
        assert_eq!((&c[0], &c[1]), (&json!("10.96.0.10"), &json!(80)), "{v}");
        ports.insert(c[2].as_str().unwrap().to_string());
    }
    assert!(ports.len() >= 2, "random choice over 4 backends: {ports:?}");
    let aff: std::collections::BTreeSet<_> = v["affinity"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c[2].as_str().unwrap().to_string())
        .collect();
    assert_eq!(aff.len(), 1, "affinity by network namespace: {v}");
    assert_eq!(v["udp4"], json!(["10.96.0.53", 53, "5353"]), "{v}");
    assert_eq!(v["udp4c"], json!(["10.96.0.53", 53, "5353"]), "{v}");
    assert_eq!(v["tcp6"], json!(["fd00:96::10", 80, "8081"]), "{v}");
    assert_eq!(v["udp6"], json!(["fd00:96::53", 53, "5353"]), "{v}");
    // No backend: left untranslated (no route to the VIP in this namespace).
    assert_eq!(v["none"][0], json!("error"), "{v}");
    assert!(maps.counter(1) >= 28, "sock_lb");

    // host-only: another namespace's sockets are left alone...
    let cookie = v["cookie"].as_u64().unwrap();
    maps.config(socket_lb(2, cookie + 1));
    let v = run_client(&cg, ns.name());
    assert_eq!(v["tcp4"][0][0], json!("error"), "{v}");
    // ...and the host's (here: the test namespace named as the host) translated.
    maps.config(socket_lb(2, cookie));
    let v = run_client(&cg, ns.name());
    assert_eq!(v["tcp4"][0][0], json!("10.96.0.10"), "{v}");
    // off: nothing translated.
    maps.config(socket_lb(0, 0));
    let v = run_client(&cg, ns.name());
    assert_eq!(v["udp4"][0], json!("error"), "{v}");
    drop(maps);
    drop(fs);
}

#[test]
fn sctp_rewrites_addresses_when_the_port_is_kept() {
    let Some(mut dp) = Dp::new() else { return };
    // In-cluster clients: not masqueraded.
    dp.cluster_cidr("10.244.0.0/16");
    dp.cluster_ip("10.96.0.10:3868", Sctp, 1, &[(11, "10.244.2.10:3868")]);
    dp.cluster_ip("10.96.0.11:3868", Sctp, 2, &[(21, "10.244.2.11:3869")]);
    let pkt = sctp("10.244.1.5:5000", "10.96.0.10:3868");
    let r = dp.ingress(&pkt);
    assert_eq!(r.verdict, TC_ACT_OK);
    assert_eq!(fold(sum16(&r.pkt[14..34], 0)), 0, "IPv4 header checksum");
    assert_eq!(&r.pkt[30..34], &[10, 244, 2, 10]);
    assert_eq!(&r.pkt[34..], &pkt[34..], "SCTP header and chunk untouched");
    let r = dp.egress(&sctp("10.244.2.10:3868", "10.244.1.5:5000"));
    assert_eq!(&r.pkt[26..30], &[10, 96, 0, 10]);
    // A port change would need the CRC32c recomputed: dropped rather than sent corrupt.
    let r = dp.ingress(&sctp("10.244.1.5:5000", "10.96.0.11:3868"));
    assert_eq!(r.verdict, TC_ACT_SHOT);
}

/// Not a pass/fail check: the programs' cost per packet (BPF_PROG_TEST_RUN's average over
/// many runs), printed for the record (`cargo test -- --nocapture run_time`).
#[test]
fn run_time_per_packet() {
    let Some(mut dp) = Dp::new() else { return };
    dp.cluster_cidr("10.244.0.0/16");
    dp.cluster_ip(
        "10.96.0.10:80",
        Tcp,
        1,
        &[(11, "10.244.2.10:8080"), (12, "10.244.2.11:8080")],
    );
    let syn = tcp("10.244.1.5:40000", "10.96.0.10:80", SYN);
    let ack = tcp("10.244.1.5:40000", "10.96.0.10:80", ACK);
    dp.ingress(&syn);
    let reply = tcp("10.244.2.10:8080", "10.244.1.5:40000", ACK);
    let other = tcp("10.244.1.5:40001", "10.244.9.9:22", ACK);
    let mut line = String::new();
    for (what, prog, pkt) in [
        ("new connection (SYN)", "mn_tc_ingress", &syn),
        ("established (ingress)", "mn_tc_ingress", &ack),
        ("reply (egress)", "mn_tc_egress", &reply),
        ("not a service (ingress)", "mn_tc_ingress", &other),
        ("not a service (egress)", "mn_tc_egress", &other),
    ] {
        let p: &SchedClassifier = dp.ebpf.program(prog).unwrap().try_into().unwrap();
        let mut out = vec![0u8; 2048];
        // The kernel stops a long run at a pending signal (another test's child exiting):
        // run again.
        let r = (0..5)
            .map(|_| {
                p.test_run(TestRunOptions {
                    data_in: Some(pkt),
                    data_out: Some(&mut out),
                    repeat: 20_000,
                    ..TestRunOptions::default()
                })
            })
            .find(|r| !matches!(r, Err(aya::programs::ProgramError::SyscallError(e)) if e.io_error.kind() == std::io::ErrorKind::Interrupted))
            .expect("five runs interrupted")
            .unwrap();
        line.push_str(&format!("{what}: {} ns; ", r.duration.as_nanos()));
    }
    eprintln!("BPF run time per packet: {line}");
}

// --- lb.o on real traffic: TCX on a node namespace between a client and a backend ---------

const TRAFFIC_CLIENT: &str = concat!(
    py_clients!(),
    r#"
def udp_from(port, host, dport, fam=socket.AF_INET):
    u = socket.socket(fam, socket.SOCK_DGRAM)
    u.settimeout(5)
    u.bind(("", port))
    u.connect((host, dport))
    u.send(b"q")
    try:
        return u.recv(16).decode()
    except OSError as e:
        return "error %d" % e.errno
ok4 = [tcp("10.96.0.10", 80) for _ in range(300)]
ok6 = [tcp("fd00:96::10", 80, socket.AF_INET6) for _ in range(100)]
print(json.dumps({
    "tcp4": sorted(set(map(tuple, ok4))),
    "tcp6": sorted(set(map(tuple, ok6))),
    "udp4": udp_connected("10.96.0.53", 53),
    "udp6": udp_connected("fd00:96::53", 53, socket.AF_INET6),
    "refused_tcp4": tcp("10.96.0.99", 80),
    "refused_tcp6": tcp("fd00:96::99", 80, socket.AF_INET6),
    "refused_udp4": udp_connected("10.96.0.99", 53),
    "refused_udp6": udp_connected("fd00:96::99", 53, socket.AF_INET6),
    "backend_refused_udp4": udp_connected("10.96.0.55", 53),
    "backend_refused_udp6": udp_connected("fd00:96::55", 53, socket.AF_INET6),
    "same_port_two_services": [udp_from(41000, "10.96.0.53", 53), udp_from(41000, "10.96.0.54", 53)],
}))
"#
);

/// The node's own connections when socket-LB is off: balanced at egress, replies translated
/// at ingress.
const NODE_CLIENT: &str = concat!(
    py_clients!(),
    r#"
N = 30
print(json.dumps({
    "tcp4": sorted(set(tuple(tcp("10.96.0.10", 80)) for _ in range(N))),
    "tcp6": sorted(set(tuple(tcp("fd00:96::10", 80, socket.AF_INET6)) for _ in range(N))),
    "udp4": udp_connected("10.96.0.53", 53),
    "refused_tcp4": tcp("10.96.0.99", 80),
}))
"#
);

#[test]
fn tcx_traffic_through_a_node_checksums_verified() {
    use metalnet::testing::Netns;
    if !root_with_python() {
        return;
    }
    let (Some(node), Some(client), Some(backend)) = (
        Netns::new("bpfnode"),
        Netns::new("bpfcli"),
        Netns::new("bpfbe"),
    ) else {
        return;
    };
    node.ip(&[
        "link",
        "add",
        "n0",
        "type",
        "veth",
        "peer",
        "name",
        "c0",
        "netns",
        client.name(),
    ]);
    node.ip(&[
        "link",
        "add",
        "n1",
        "type",
        "veth",
        "peer",
        "name",
        "b0",
        "netns",
        backend.name(),
    ]);
    for (ns, dev, v4, v6, gw4, gw6) in [
        (&node, "n0", "192.0.2.1/24", "2001:db8:1::1/64", None, None),
        (
            &node,
            "n1",
            "198.51.100.1/24",
            "2001:db8:2::1/64",
            None,
            None,
        ),
        (
            &client,
            "c0",
            "192.0.2.2/24",
            "2001:db8:1::2/64",
            Some("192.0.2.1"),
            Some("2001:db8:1::1"),
        ),
        (
            &backend,
            "b0",
            "198.51.100.10/24",
            "2001:db8:2::10/64",
            Some("198.51.100.1"),
            Some("2001:db8:2::1"),
        ),
    ] {
        ns.ip(&["addr", "add", v4, "dev", dev]);
        ns.ip(&["-6", "addr", "add", v6, "dev", dev, "nodad"]);
        ns.ip(&["link", "set", dev, "up"]);
        if let (Some(g4), Some(g6)) = (gw4, gw6) {
            ns.ip(&["route", "add", "default", "via", g4]);
            ns.ip(&["-6", "route", "add", "default", "via", g6]);
        }
        common::checksum_offloads_off(ns.name(), dev);
    }
    forwarding_on(node.name());
    let _servers = Servers::start(
        backend.name(),
        &["198.51.100.10:8081", "[2001:db8:2::10]:8081"],
        &["198.51.100.10:5353", "[2001:db8:2::10]:5353"],
    );

    let Some(mut dp) = Dp::new() else { return };
    for a in [
        "192.0.2.1",
        "198.51.100.1",
        "2001:db8:1::1",
        "2001:db8:2::1",
    ] {
        dp.node_addr(a);
    }
    dp.cluster_ip("10.96.0.10:80", Tcp, 1, &[(11, "198.51.100.10:8081")]);
    dp.cluster_ip("[fd00:96::10]:80", Tcp, 2, &[(21, "[2001:db8:2::10]:8081")]);
    dp.cluster_ip("10.96.0.53:53", Udp, 3, &[(31, "198.51.100.10:5353")]);
    dp.cluster_ip("10.96.0.54:53", Udp, 4, &[(31, "198.51.100.10:5353")]);
    dp.cluster_ip("[fd00:96::53]:53", Udp, 5, &[(51, "[2001:db8:2::10]:5353")]);
    dp.cluster_ip("10.96.0.99:80", Tcp, 6, &[]);
    dp.cluster_ip("[fd00:96::99]:80", Tcp, 7, &[]);
    dp.cluster_ip("10.96.0.99:53", Udp, 8, &[]);
    dp.cluster_ip("[fd00:96::99]:53", Udp, 9, &[]);

    dp.cluster_ip("10.96.0.55:53", Udp, 61, &[(61, "198.51.100.10:5999")]);
    dp.cluster_ip(
        "[fd00:96::55]:53",
        Udp,
        62,
        &[(62, "[2001:db8:2::10]:5999")],
    );

    dp.attach(node.name(), &["n0", "n1"]);

    let out = run_python(client.name(), 60, TRAFFIC_CLIENT);
    assert!(
        out.status.success(),
        "client: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["tcp4"], json!([["10.96.0.10", 80, "8081"]]), "{v}");
    assert_eq!(v["tcp6"], json!([["fd00:96::10", 80, "8081"]]), "{v}");
    assert_eq!(v["udp4"], json!(["10.96.0.53", 53, "5353"]), "{v}");
    assert_eq!(v["udp6"], json!(["fd00:96::53", 53, "5353"]), "{v}");
    // ECONNREFUSED at once: a RST for TCP, ICMP port unreachable for UDP.
    for k in [
        "refused_tcp4",
        "refused_tcp6",
        "refused_udp4",
        "refused_udp6",
    ] {
        assert_eq!(v[k], json!(["error", 111, ""]), "{k}: {v}");
    }
    // One client port to two Services with the same backend: both answered.
    assert_eq!(v["same_port_two_services"], json!(["5353", "5353"]), "{v}");
    for ns in [&client, &backend] {
        assert_eq!(
            common::csum_errors(ns.name()),
            0,
            "checksum errors in {}",
            ns.name()
        );
    }
    assert!(dp.counter(0) >= 400, "lb_new {}", dp.counter(0));

    // The node's own connections (no socket-LB here): routed towards the client side, balanced
    // at n0's egress and sent on to the backend, replies translated at n1's ingress.
    node.ip(&["route", "add", "10.96.0.0/12", "via", "192.0.2.2"]);
    node.ip(&[
        "-6",
        "route",
        "add",
        "fd00:96::/108",
        "via",
        "2001:db8:1::2",
    ]);
    let out = run_python(node.name(), 60, NODE_CLIENT);
    assert!(
        out.status.success(),
        "node client: {} {}; lb_new {} rev_nat {}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout),
        dp.counter(0),
        dp.counter(7)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let diag = format!(
        "{v}; lb_new {} rev_nat {}; {}; {}",
        dp.counter(0),
        dp.counter(7),
        node.ip(&["-s", "link"]),
        node.ip(&["neigh"])
    );
    assert_eq!(v["tcp4"], json!([["10.96.0.10", 80, "8081"]]), "{diag}");
    assert_eq!(v["tcp6"], json!([["fd00:96::10", 80, "8081"]]), "{diag}");
    assert_eq!(v["udp4"], json!(["10.96.0.53", 53, "5353"]), "{diag}");
    assert_eq!(v["refused_tcp4"], json!(["error", 111, ""]), "{diag}");
    for ns in [&node, &backend] {
        assert_eq!(
            common::csum_errors(ns.name()),
            0,
            "checksum errors in {}",
            ns.name()
        );
    }
    drop(dp);
}

const TUN_SCRIPT: &str = r#"
import fcntl, json, os, select, socket, struct
fd = os.open("/dev/net/tun", os.O_RDWR)
fcntl.ioctl(fd, 0x400454ca, struct.pack("16sH", b"tun0", 0x0001 | 0x1000))  # TUNSETIFF, IFF_TUN|IFF_NO_PI
def csum(b):
    if len(b) % 2: b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16: s = (s & 0xffff) + (s >> 16)
    return ~s & 0xffff
def udp4(src, sport, dst, dport, payload):
    s, d = socket.inet_aton(src), socket.inet_aton(dst)
    u = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    c = csum(s + d + struct.pack("!BBH", 0, 17, len(u)) + u) or 0xffff
    u = u[:6] + struct.pack("!H", c) + u[8:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(u), 1, 0, 64, 17, 0, s, d)
    ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
    return ip + u
out = {}
# Ingress: a client's datagram to the VIP comes in on tun0, the backend (on lo) gets it.
srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
srv.bind(("198.51.100.10", 8080))
srv.settimeout(5)
os.write(fd, udp4("203.0.113.5", 40000, "10.96.0.10", 80, b"hello"))
try:
    d, a = srv.recvfrom(64)
    out["ingress"] = [a[0], a[1], d.decode()]
except OSError as e:
    out["ingress"] = ["error", str(e)]
# Egress: the backend's answer leaves through tun0 with the VIP as its source. Sent again
# when nothing comes: on a loaded machine tun0 sometimes drops a packet the program passed.
out["egress"] = ""
out["skipped"] = []
for attempt in range(3):
    srv.sendto(b"answer", ("203.0.113.5", 40000))
    for _ in range(10):
        r, _, _ = select.select([fd], [], [], 2)
        if not r:
            break
        p = os.read(fd, 2048)
        # Skip what the kernel sends on its own (IPv6 router solicitations).
        if p[0] >> 4 == 4:
            out["egress"] = p.hex()
            break
        out["skipped"].append(p[:8].hex())
    if out["egress"]:
        break
print(json.dumps(out))
"#;

#[test]
fn l3_devices_are_parsed_without_an_ethernet_header() {
    use metalnet::testing::Netns;
    if !root_with_python() {
        return;
    }
    let Some(mut dp) = Dp::new() else { return };
    let Some(ns) = Netns::new("bpftun") else {
        return;
    };
    ns.ip(&["tuntap", "add", "dev", "tun0", "mode", "tun"]);
    ns.ip(&["link", "set", "tun0", "up"]);
    ns.ip(&["addr", "add", "198.51.100.10/32", "dev", "lo"]);
    ns.ip(&["route", "add", "203.0.113.0/24", "dev", "tun0"]);
    dp.service(
        EXT,
        "10.96.0.10:80",
        Udp,
        1,
        svc_flags::CLUSTER_IP,
        &[(11, "198.51.100.10:8080", backend_flags::LOCAL)],
    );
    dp.attach(ns.name(), &["tun0"]);
    let out = run_python(ns.name(), 20, TUN_SCRIPT);
    assert!(
        out.status.success(),
        "tun client: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ingress"], json!(["203.0.113.5", 40000, "hello"]), "{v}");
    let hex = v["egress"].as_str().unwrap();
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    assert!(
        !bytes.is_empty(),
        "no answer read from tun0: {v}; rev_nat {}, lb_new {}; {}",
        dp.counter(7),
        dp.counter(0),
        ns.ip(&["-s", "-s", "link", "show", "tun0"])
    );
    // Parse the IP packet behind a made-up Ethernet header.
    let mut framed = vec![0; 12];
    framed.extend_from_slice(&[0x08, 0x00]);
    framed.extend_from_slice(&bytes);
    let p = parse(&framed);
    assert_eq!(p.src, sa("10.96.0.10:80"));
    assert_eq!(p.dst, sa("203.0.113.5:40000"));
    assert_eq!(common::csum_errors(ns.name()), 0);
}

#[test]
fn icmp_errors_about_balanced_flows_show_the_frontend() {
    let Some(mut dp) = Dp::new() else { return };
    // In-cluster clients: not masqueraded.
    dp.cluster_cidr("10.244.0.0/16");
    dp.cluster_cidr("2001:db8:1::/64");
    dp.cluster_ip("10.96.0.53:53", Udp, 1, &[(11, "10.244.2.10:5353")]);
    dp.cluster_ip("[fd00:96::53]:53", Udp, 2, &[(21, "[2001:db8:2::10]:5353")]);
    dp.cluster_ip("10.96.0.80:80", Tcp, 3, &[(31, "10.244.2.20:8080")]);

    // The backend has nothing on the port: its port unreachable reaches the client as if
    // the frontend had sent it.
    let sent = dp.ingress(&udp("10.244.1.5:5000", "10.96.0.53:53")).pkt;
    let err = icmp_error("10.244.2.10", "10.244.1.5", 3, 3, &sent);
    let r = dp.egress(&err);
    assert_eq!(r.verdict, TC_ACT_OK);
    let p = r.parsed();
    assert_eq!(
        (p.src.ip(), p.dst.ip()),
        (ip("10.96.0.53"), ip("10.244.1.5"))
    );
    let q = quoted(&r.pkt);
    assert_eq!(q.dst.ip(), ip("10.96.0.53"), "quoted destination");
    assert_eq!(q.dst.port(), 53, "quoted destination port");
    assert_eq!(q.src.ip(), ip("10.244.1.5"));

    // Fragmentation needed from a router on the way (this node): only the quote changes.
    let sent = dp
        .ingress(&tcp("10.244.1.5:40000", "10.96.0.80:80", SYN))
        .pkt;
    let err = icmp_error("192.0.2.1", "10.244.1.5", 3, 4, &sent);
    let r = dp.egress(&err);
    let p = r.parsed();
    assert_eq!(p.src.ip(), ip("192.0.2.1"));
    let q = quoted(&r.pkt);
    assert_eq!(q.dst.ip(), ip("10.96.0.80"));
    assert_eq!(q.dst.port(), 80);

    let sent = dp
        .ingress(&udp("[2001:db8:1::5]:5000", "[fd00:96::53]:53"))
        .pkt;
    let err = icmp_error("2001:db8:2::10", "2001:db8:1::5", 1, 4, &sent);
    let r = dp.egress(&err);
    let p = r.parsed();
    assert_eq!(p.src.ip(), ip("fd00:96::53"));
    let q = quoted(&r.pkt);
    assert_eq!(q.dst.ip(), ip("fd00:96::53"));
    assert_eq!(q.dst.port(), 53);

    // An error about another flow is left alone.
    let other = udp("10.244.1.5:5001", "10.244.9.9:53");
    let err = icmp_error("10.244.9.9", "10.244.1.5", 3, 3, &other);
    assert_eq!(dp.egress(&err).pkt, err);
    // Ingress leaves ICMP alone.
    let err = icmp_error("10.244.2.10", "10.244.1.5", 3, 3, &sent);
    assert_eq!(dp.ingress(&err).pkt, err);
}

#[test]
fn fragmented_datagrams_follow_their_first_fragment() {
    let Some(mut dp) = Dp::new() else { return };
    // In-cluster clients: not masqueraded.
    dp.cluster_cidr("10.244.0.0/16");
    dp.cluster_cidr("2001:db8:1::/64");
    dp.cluster_ip("10.96.0.53:53", Udp, 1, &[(11, "10.244.2.10:5353")]);
    dp.cluster_ip("[fd00:96::53]:53", Udp, 2, &[(21, "[2001:db8:2::10]:5353")]);
    let payload: Vec<u8> = (0..100u8).collect();
    for (client, vip, backend) in [
        ("10.244.1.5:5000", "10.96.0.53:53", "10.244.2.10:5353"),
        (
            "[2001:db8:1::5]:5000",
            "[fd00:96::53]:53",
            "[2001:db8:2::10]:5353",
        ),
    ] {
        let frags = udp_fragments(client, vip, 0x4242, &payload, 32);
        let out = [dp.ingress(&frags[0]).pkt, dp.ingress(&frags[1]).pkt];
        let p = parse(&reassemble(&out));
        assert_eq!(
            (p.src, p.dst, p.len),
            (sa(client), sa(backend), 100),
            "{client}"
        );

        let frags = udp_fragments(backend, client, 0x4343, &payload, 48);
        let out = [dp.egress(&frags[0]).pkt, dp.egress(&frags[1]).pkt];
        let p = parse(&reassemble(&out));
        assert_eq!((p.src, p.dst), (sa(vip), sa(client)), "{client} reply");

        // A later fragment whose first was never seen is left alone.
        let frags = udp_fragments(client, vip, 0x4444, &payload, 32);
        assert_eq!(dp.ingress(&frags[1]).pkt, frags[1]);
    }
}

/// Fragments of a masqueraded flow: a later fragment, which has no ports, takes its first
/// fragment's translation, the client's datagram to the remote backend and the backend's
/// fragmented reply back to the client alike.
#[test]
fn masqueraded_fragments_follow_their_first_fragment() {
    let Some(mut dp) = Dp::new() else { return };
    dp.cluster_ip("10.96.0.53:53", Udp, 1, &[(11, "198.51.100.10:5353")]);
    dp.cluster_ip("[fd00:96::53]:53", Udp, 2, &[(21, "[2001:db8:2::10]:5353")]);
    let payload: Vec<u8> = (0..100u8).collect();
    for (client, vip, backend, snat) in [
        (
            "203.0.113.5:5000",
            "10.96.0.53:53",
            "198.51.100.10:5353",
            SNAT4,
        ),
        (
            "[2001:db8:9::1]:5000",
            "[fd00:96::53]:53",
            "[2001:db8:2::10]:5353",
            SNAT6,
        ),
    ] {
        let frags = udp_fragments(client, vip, 0x4545, &payload, 32);
        let out = [dp.ingress(&frags[0]), dp.ingress(&frags[1])];
        assert_eq!(
            (out[0].verdict, out[1].verdict),
            (TC_ACT_REDIRECT, TC_ACT_REDIRECT),
            "{client}: both fragments forwarded alike"
        );
        let p = parse(&reassemble(&[out[0].pkt.clone(), out[1].pkt.clone()]));
        assert_eq!(
            (p.src.ip(), p.dst, p.len),
            (ip(snat), sa(backend), 100),
            "{client}"
        );
        let masqueraded = p.src.to_string();

        // The backend's reply, fragmented: from the frontend to the client at ingress, and
        // left so at egress.
        let frags = udp_fragments(backend, &masqueraded, 0x4646, &payload, 48);
        let back = [dp.ingress(&frags[0]).pkt, dp.ingress(&frags[1]).pkt];
        let p = parse(&reassemble(&back));
        assert_eq!(
            (p.src, p.dst, p.len),
            (sa(vip), sa(client), 100),
            "{client} reply"
        );
        for f in &back {
            assert_eq!(&dp.egress(f).pkt, f, "{client} reply at egress");
        }
    }
}

/// A client reusing one source port for two Services that share a backend: both connections
/// would have the same reply tuple, so the second is masqueraded and each gets its replies.
#[test]
fn one_client_port_to_two_services_sharing_a_backend() {
    let Some(mut dp) = Dp::new() else { return };
    dp.cluster_cidr("10.244.0.0/16");
    dp.cluster_ip("10.96.0.10:80", Tcp, 1, &[(11, "10.244.2.10:8080")]);
    dp.cluster_ip("10.96.0.11:80", Tcp, 2, &[(11, "10.244.2.10:8080")]);
    let client = "10.244.1.5:40000";
    let r = dp.ingress(&tcp(client, "10.96.0.10:80", SYN));
    assert_eq!(r.parsed().src, sa(client), "in-cluster: not masqueraded");
    // Its retransmitted SYN is the same connection.
    let r = dp.ingress(&tcp(client, "10.96.0.10:80", SYN));
    assert_eq!(r.parsed().src, sa(client));
    let r = dp.ingress(&tcp(client, "10.96.0.11:80", SYN));
    assert_eq!(r.verdict, TC_ACT_REDIRECT);
    let second = r.parsed().src;
    assert_eq!(second.ip().to_string(), SNAT4, "the second is masqueraded");
    assert_eq!(r.parsed().dst, sa("10.244.2.10:8080"));
    // The first's replies still show the first Service, the second's the second.
    let r = dp.egress(&tcp("10.244.2.10:8080", client, SYN | ACK));
    assert_eq!(r.parsed().src, sa("10.96.0.10:80"));
    let r = dp.ingress(&tcp("10.244.2.10:8080", &second.to_string(), SYN | ACK));
    assert_eq!(r.parsed().dst, sa(client));
    assert_eq!(r.parsed().src, sa("10.96.0.11:80"));
    // Once the first is over, the port is the client's own again.
    dp.ingress(&tcp(client, "10.96.0.10:80", RST | ACK));
    dp.ingress(&tcp(client, "10.96.0.11:80", RST | ACK));
    let r = dp.ingress(&tcp(client, "10.96.0.11:80", SYN));
    assert_eq!(r.parsed().src, sa(client));
}

/// Packets forwarded past the stack (masqueraded ones, both ways) get their TTL or hop limit
/// decremented, with the IPv4 header checksum following.
#[test]
fn forwarded_past_the_stack_decrements_the_ttl() {
    let Some(mut dp) = Dp::new() else { return };
    dp.cluster_ip("10.96.0.11:80", Tcp, 2, &[(20, "198.51.100.10:8080")]);
    dp.cluster_ip("[fd00:96::11]:80", Tcp, 3, &[(30, "[2001:db8:2::10]:8080")]);
    // IPv4: TTL at byte 22 (Ethernet 14 + 8); parsed() checks the header checksum.
    let r = dp.ingress(&tcp("203.0.113.5:40000", "10.96.0.11:80", SYN));
    assert_eq!(r.verdict, TC_ACT_REDIRECT);
    assert_eq!(r.parsed().src.ip().to_string(), SNAT4);
    assert_eq!(r.pkt[22], 63, "TTL 64 - 1");
    let back = format!("{}", r.parsed().src);
    let reply = dp.ingress(&tcp("198.51.100.10:8080", &back, SYN | ACK));
    assert_eq!(reply.verdict, TC_ACT_REDIRECT);
    assert_eq!(reply.parsed().dst, sa("203.0.113.5:40000"));
    assert_eq!(reply.pkt[22], 63);

    // IPv6: hop limit at byte 21 (Ethernet 14 + 7).
    let r = dp.ingress(&tcp("[2001:db8:9::5]:40000", "[fd00:96::11]:80", SYN));
    assert_eq!(r.verdict, TC_ACT_REDIRECT);
    assert_eq!(r.parsed().src.ip().to_string(), SNAT6);
    assert_eq!(r.pkt[21], 63, "hop limit 64 - 1");
}

/// A packet the node would forward past its stack with no hop left is answered as forwarding
/// answers it (a traceroute through a NodePort shows the node): an ICMP time exceeded from the
/// address it was sent to, back where it came from, quoting it as it was sent. So are a new
/// connection's first packet, a later one, and a backend's reply to the masquerade address.
#[test]
fn a_forwarded_packet_with_no_hop_left_gets_time_exceeded() {
    let Some(mut dp) = Dp::new() else { return };
    dp.cluster_ip("10.96.0.11:80", Tcp, 2, &[(20, "198.51.100.10:8080")]);
    dp.cluster_ip("[fd00:96::11]:80", Tcp, 3, &[(30, "[2001:db8:2::10]:8080")]);
    let last_hop = |src: &str, dst: &str, flags: u8| {
        let (src, dst) = (sa(src), sa(dst));
        IpHdr {
            ttl: 1,
            ..IpHdr::new(src.ip(), dst.ip(), TCP)
        }
        .emit(
            &TcpSeg {
                src,
                dst,
                flags,
                options: &[],
                payload: &[],
            }
            .emit(),
        )
    };
    // (client, frontend, backend, ICMP protocol, time exceeded (type, code), IP header length)
    let cases = [
        (
            "203.0.113.5:40001",
            "10.96.0.11:80",
            "198.51.100.10:8080",
            ICMP,
            (11, 0),
            20,
        ),
        (
            "[2001:db8:9::5]:40001",
            "[fd00:96::11]:80",
            "[2001:db8:2::10]:8080",
            ICMPV6,
            (3, 0),
            40,
        ),
    ];
    let mut answered = 0;
    for (client, vip, backend, icmp, exceeded, ip_len) in cases {
        let check = |r: &Run, sent: &[u8], from: &str, to: &str, what: &str| {
            assert_eq!(r.verdict, TC_ACT_REDIRECT, "{what}: sent back");
            let p = r.parsed();
            assert_eq!(
                (p.proto, p.flags, p.seq),
                (icmp, exceeded.0, exceeded.1),
                "{what}: time exceeded"
            );
            assert_eq!(
                (p.src.ip(), p.dst.ip()),
                (sa(from).ip(), sa(to).ip()),
                "{what}"
            );
            let at = 14 + ip_len + 8;
            assert_eq!(
                &r.pkt[at..at + ip_len + 8],
                &sent[14..14 + ip_len + 8],
                "{what}: its IP header and 8 bytes quoted as sent"
            );
        };
        // A new connection.s first packet.
        let syn = last_hop(client, vip, SYN);
        check(&dp.ingress(&syn), &syn, vip, client, "a new connection");
        // Its next SYN, with hops to spare, is masqueraded as usual.
        let r = dp.ingress(&tcp(client, vip, SYN));
        assert_eq!(r.parsed().dst, sa(backend), "{client}");
        let masq = r.parsed().src.to_string();
        // A later packet of the connection, and the backend's reply.
        let ack = last_hop(client, vip, ACK);
        check(
            &dp.ingress(&ack),
            &ack,
            vip,
            client,
            "an established connection",
        );
        let reply = last_hop(backend, &masq, SYN | ACK);
        check(&dp.ingress(&reply), &reply, &masq, backend, "a reply");
        answered += 3;
    }
    assert_eq!(dp.counter(10), answered, "ttl_exceeded");
}
