//! ARP flood benchmark (root; builds its own lab):
//!
//! ```text
//! cargo build --workspace --bins
//! cargo bench -p metalnet-lab --bench arp_flood --profile dev -- [SECS] [--only KIND]
//! ```
//!
//! One speaker (node1) announces 192.0.2.200 on the demo site; a raw AF_PACKET sender in the
//! client's namespace sends frames as fast as it can for SECS seconds (default 10) in each
//! of these floods (KIND):
//!
//! - `requests`: ARP requests for the announced address (answers counted by the client).
//! - `conflict`: gratuitous ARPs from one other station claiming the address.
//! - `conflict-macs`: the same from a new sender MAC at every frame.
//! - `malformed`: in turn a truncated ARP, an ARP for another hardware type, a VLAN-tagged
//!   request and a request whose ARP sender is multicast; all to be dropped and counted.
//!
//! For each: frames sent, the speaker's CPU per second (utime + stime), its log lines and
//! bytes written during the flood, and the change of its layer 2 counters. Frames the
//! kernel drops because a socket's receive buffer is full are counted nowhere: the speaker's
//! counters say how many it processed, and the sender's count of answers is a lower bound
//! (it drains its own receive socket only between bursts of 256 frames). The speaker is the
//! debug build `metalnet_lab::bins` finds (`target/debug`).

use std::io;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use metalnet::sys::packet::{self, BpfInstruction, PacketSocket};
use metalnet::testing::l2_advertisement;
use metalnet::wire::arp::{self, ArpFrame, ArpRepr, Operation};
use metalnet::wire::{EtherType, EthernetRepr, Mac};
use metalnet_lab::Process;
use metalnet_lab::lab::demo::CLIENT_V4;
use metalnet_lab::lab::l2site::{L2Site, site_objects};
use metalnet_lab::lab::wait_for;

const VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 200);
/// An EtherType nothing on the lab sends (IEEE local experimental): the sending socket
/// binds to it so it receives nothing.
const NOTHING: u16 = 0x88b5;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Requests,
    Conflict,
    ConflictMacs,
    Malformed,
}

impl Kind {
    const ALL: [Kind; 4] = [
        Kind::Requests,
        Kind::Conflict,
        Kind::ConflictMacs,
        Kind::Malformed,
    ];

    fn name(self) -> &'static str {
        match self {
            Kind::Requests => "requests",
            Kind::Conflict => "conflict",
            Kind::ConflictMacs => "conflict-macs",
            Kind::Malformed => "malformed",
        }
    }
}

fn request(src: Mac, sender: Mac) -> Vec<u8> {
    ArpFrame {
        ethernet: EthernetRepr {
            dst_addr: Mac::BROADCAST,
            src_addr: src,
            ethertype: EtherType::Arp,
        },
        arp: ArpRepr {
            operation: Operation::Request,
            source_hardware_addr: sender,
            source_protocol_addr: CLIENT_V4.parse().expect("constant address"),
            target_hardware_addr: Mac::ZERO,
            target_protocol_addr: VIP,
        },
    }
    .emit()
}

/// The frames a flood cycles through, sent from `me`.
fn frames(kind: Kind, me: Mac) -> Vec<Vec<u8>> {
    match kind {
        Kind::Requests => vec![request(me, me)],
        Kind::Conflict | Kind::ConflictMacs => arp::gratuitous(VIP, me)
            .iter()
            .map(ArpFrame::emit)
            .collect(),
        Kind::Malformed => {
            let good = request(me, me);
            let truncated = good[..30].to_vec();
            let mut hardware = good.clone();
            // Hardware type 6 (IEEE 802) instead of Ethernet.
            hardware[14..16].copy_from_slice(&6u16.to_be_bytes());
            let mut tagged = good[..12].to_vec();
            tagged.extend_from_slice(&0x8100u16.to_be_bytes());
            tagged.extend_from_slice(&100u16.to_be_bytes());
            tagged.extend_from_slice(&good[12..]);
            // A multicast Ethernet source is dropped by the switch, so the multicast address
            // goes where an answer would be sent: the ARP sender.
            let multicast = request(me, Mac([0x01, 0, 0x5e, 0, 0, 1]));
            vec![truncated, hardware, tagged, multicast]
        }
    }
}

/// A locally administered unicast MAC from a counter.
fn mac_from(n: u64) -> [u8; 6] {
    let b = n.to_be_bytes();
    [0x02, 0xf1, b[4], b[5], b[6], b[7]]
}

/// Passes only ARP replies.
fn replies_filter() -> [BpfInstruction; 6] {
    use BpfInstruction as I;
    [
        I::new(I::LD_H_ABS, 0, 0, 12),
        I::new(I::JEQ_K, 0, 3, u32::from(u16::from(EtherType::Arp))),
        I::new(I::LD_H_ABS, 0, 0, 14 + 6),
        I::new(I::JEQ_K, 0, 1, 2),
        I::new(I::RET_K, 0, 0, 0xffff),
        I::new(I::RET_K, 0, 0, 0),
    ]
}

#[derive(Debug, Default)]
struct Sent {
    frames: u64,
    /// Sends refused (queue full): retried.
    busy: u64,
    /// ARP replies for the address seen by the sender's host.
    answers: u64,
    secs: f64,
}

/// Sends `kind` frames out of `ifname` for `secs`, from the namespace the caller runs in.
fn flood(kind: Kind, ifname: &str, me: Mac, secs: f64) -> io::Result<Sent> {
    let index = packet::interface_names()?
        .into_iter()
        .find(|(_, n)| n == ifname)
        .map(|(i, _)| i)
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no {ifname}")))?;
    let tx = PacketSocket::open(index, NOTHING, None)?;
    let rx = PacketSocket::open(index, EtherType::Arp.into(), Some(&replies_filter()))?;
    let mut templates = frames(kind, me);
    let mut sent = Sent::default();
    let mut buf = [0u8; 2048];
    let started = Instant::now();
    let limit = Duration::from_secs_f64(secs);
    let mut i = 0u64;
    while started.elapsed() < limit {
        // 256 frames between clock reads and receive drains.
        for _ in 0..256 {
            let n = templates.len();
            let frame = &mut templates[(i as usize) % n];
            if kind == Kind::ConflictMacs {
                let mac = mac_from(i);
                frame[6..12].copy_from_slice(&mac);
                frame[22..28].copy_from_slice(&mac);
            }
            match tx.send(frame) {
                Ok(()) => {
                    sent.frames += 1;
                    i += 1;
                }
                Err(e)
                    if matches!(e.kind(), io::ErrorKind::WouldBlock)
                        || e.raw_os_error() == Some(libc::ENOBUFS) =>
                {
                    sent.busy += 1;
                    std::thread::yield_now();
                }
                Err(e) => return Err(e),
            }
        }
        loop {
            match rx.recv(&mut buf) {
                Ok(r) => {
                    let f = &buf[..r.len];
                    if f.len() >= 42 && f[28..32] == VIP.octets() {
                        sent.answers += 1;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
    }
    sent.secs = started.elapsed().as_secs_f64();
    // Answers still on their way.
    std::thread::sleep(Duration::from_millis(200));
    while let Ok(r) = rx.recv(&mut buf) {
        if r.len >= 42 && buf[28..32] == VIP.octets() {
            sent.answers += 1;
        }
    }
    Ok(sent)
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 { hz as f64 } else { 100.0 }
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 (utime, stime) are at 11 and 12 after the command name.
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

/// Lines and bytes of the speaker's stdout and stderr so far.
fn log_size(p: &Process) -> (u64, u64) {
    [p.stdout_path(), p.stderr_path()]
        .iter()
        .map(|path| std::fs::read(path).unwrap_or_default())
        .fold((0, 0), |(l, b), text| {
            (
                l + text.iter().filter(|c| **c == b'\n').count() as u64,
                b + text.len() as u64,
            )
        })
}

/// The sum over every label set of metric `name` (as exposed, e.g. `..._total`).
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Each labelled series of `name` with its value.
fn series<'a>(text: &'a str, name: &str) -> Vec<(&'a str, f64)> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter_map(|l| {
            let (labels, value) = l.rsplit_once(' ')?;
            Some((labels, value.parse().ok()?))
        })
        .collect()
}

const COUNTERS: [&str; 5] = [
    "metallb_layer2_requests_received_total",
    "metallb_layer2_responses_sent_total",
    "metalnet_layer2_malformed_frames_total",
    "metalnet_speaker_frames_dropped_total",
    "metalnet_speaker_log_warnings_suppressed_total",
];

fn run(site: &L2Site, speaker: &Process, kind: Kind, secs: f64) {
    let client = site.demo.client.clone();
    let me: Mac = client
        .mac("eth0")
        .expect("the client's MAC")
        .parse()
        .expect("a MAC");
    let pid = speaker.pid();
    let hz = clock_ticks();
    let before_metrics = site.metrics("node1");
    let (lines0, bytes0) = log_size(speaker);
    let cpu0 = cpu_ticks(pid);
    let sent = client
        .block_on(move || async move { flood(kind, "eth0", me, secs) })
        .unwrap_or_else(|e| panic!("{} flood: {e}", kind.name()));
    let cpu = (cpu_ticks(pid) - cpu0) as f64 / hz;
    // Let the speaker finish what is queued and write its logs.
    std::thread::sleep(Duration::from_millis(500));
    let (lines1, bytes1) = log_size(speaker);
    let after_metrics = site.metrics("node1");
    assert!(speaker.is_running(), "the speaker died during the flood");
    println!(
        "{}: {} frames in {:.1} s ({:.0}/s, {} sends refused), {} answers seen by the sender; \
         speaker CPU {:.2} s ({:.0}% of a core); log +{} lines, +{} bytes",
        kind.name(),
        sent.frames,
        sent.secs,
        sent.frames as f64 / sent.secs,
        sent.busy,
        sent.answers,
        cpu,
        cpu / sent.secs * 100.0,
        lines1 - lines0,
        bytes1 - bytes0,
    );
    for name in COUNTERS {
        let d = metric(&after_metrics, name) - metric(&before_metrics, name);
        if d != 0.0 {
            println!("  {name} +{d}");
        }
    }
    for name in [
        "metalnet_speaker_frames_dropped_total",
        "metalnet_speaker_log_warnings_suppressed_total",
    ] {
        for (labels, v) in series(&after_metrics, name) {
            let was = series(&before_metrics, name)
                .into_iter()
                .find(|(l, _)| *l == labels)
                .map_or(0.0, |(_, v)| v);
            if v != was {
                println!("    {labels} +{}", v - was);
            }
        }
    }
    let new_log = std::fs::read(speaker.stderr_path()).unwrap_or_default();
    let new_log = String::from_utf8_lossy(&new_log);
    let mut tail: Vec<&str> = new_log.lines().skip(lines0 as usize).collect();
    if tail.len() > 6 {
        let n = tail.len();
        tail.drain(3..n - 3);
        tail.insert(3, "...");
    }
    for l in tail {
        println!("  | {l}");
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let secs: f64 = args.iter().find_map(|a| a.parse().ok()).unwrap_or(10.0);
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1));
    let kinds: Vec<Kind> = Kind::ALL
        .into_iter()
        .filter(|k| only.is_none_or(|o| o == k.name()))
        .collect();
    assert!(
        !kinds.is_empty(),
        "--only takes one of requests, conflict, conflict-macs, malformed"
    );
    let objects = site_objects(
        &["192.0.2.128/25"],
        l2_advertisement("l2"),
        &[("web", "192.0.2.200")],
    );
    let site = L2Site::new("bench_arp_flood", &objects, &[]).expect("the lab builds");
    let speaker = site
        .start("node1", "speaker", &[])
        .expect("the speaker starts");
    wait_for("the address announced", Duration::from_secs(30), || {
        site.metrics("node1")
            .contains("metalnet_speaker_announced_addresses 1")
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}; speaker logs:\n{}\nmetrics:\n{}\nexplain:\n{:?}",
            speaker.logs(),
            site.metrics("node1"),
            site.node("node1").exec_status(&[
                metalnet_lab::bins::binary("metalnet-speaker")
                    .unwrap()
                    .to_str()
                    .unwrap(),
                "explain",
                "--state-dir",
                site.state_dir().to_str().unwrap(),
                "--node-name",
                "node1",
                "default/web"
            ])
        )
    });
    // Past the takeover announcements.
    std::thread::sleep(Duration::from_millis(5500));
    let (lines, bytes) = log_size(&speaker);
    println!(
        "speaker pid {} up; {lines} log lines ({bytes} bytes) so far",
        speaker.pid()
    );
    for kind in kinds {
        run(&site, &speaker, kind, secs);
    }
    drop(speaker);
    drop(site);
}
