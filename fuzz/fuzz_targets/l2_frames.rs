//! ARP and neighbor discovery frames, as any host on the segment can send them, through the
//! wire parsers and the responder's pure decisions (`metalnet::wire::responder`). The first byte is a selector: bit 0 puts
//! the frame's own target address in the announced table (so the answer paths run), bit 1
//! marks the frame as VLAN-tagged by the kernel, bit 2 as for another host. The rest is the frame.
//!
//! Checked: nothing panics; what parses re-emits to bytes that parse to the same thing; an
//! answer is a well-formed frame from our MAC to a unicast station (or, for a duplicate
//! address detection probe, to all nodes), never to a tagged frame.
#![no_main]

use std::collections::HashSet;
use std::net::IpAddr;

use libfuzzer_sys::fuzz_target;
use metalnet::wire::arp::ArpFrame;
use metalnet::wire::ndp::{self, Ipv6Repr, NdpFrame};
use metalnet::wire::{EthernetRepr, Mac};
use metalnet::wire::responder::{Decision, RxMeta, decide_arp, decide_ndp};

const ME: Mac = Mac([0x02, 0, 0, 0, 0, 0x01]);

fn table_with(extra: Option<IpAddr>) -> HashSet<IpAddr> {
    let mut t = HashSet::new();
    t.insert("192.0.2.200".parse().unwrap());
    t.insert("2001:db8::200".parse().unwrap());
    if let Some(ip) = extra {
        t.insert(ip);
    }
    t
}

fn check_answer(d: &Decision, tagged: bool) -> Option<Vec<u8>> {
    match d {
        Decision::Answer { frame, .. } => {
            assert!(!tagged, "answered a VLAN-tagged or other host's frame");
            Some(frame.clone())
        }
        _ => None,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, frame)) = data.split_first() else {
        return;
    };
    let rx = RxMeta {
        vlan_tci: (sel & 2 != 0).then_some(1),
        other_host: sel & 4 != 0,
    };
    let tagged = rx.vlan_tci.is_some() || rx.other_host;

    let arp = ArpFrame::parse(frame);
    if let Ok(f) = &arp {
        let again = ArpFrame::parse(&f.emit()).expect("a parsed ARP frame re-emits");
        assert_eq!(&again, f);
    }
    let nd = NdpFrame::parse(frame);
    if let Ok(Some(f)) = &nd {
        let again = NdpFrame::parse(&f.emit())
            .expect("a parsed ND frame re-emits")
            .expect("as ND");
        let expected = NdpFrame {
            ip: Ipv6Repr {
                payload_len: f.ndisc.buffer_len(),
                ..f.ip
            },
            ..*f
        };
        assert_eq!(again, expected);
    }

    let extra = if sel & 1 != 0 {
        match (&arp, &nd) {
            (Ok(f), _) => Some(IpAddr::V4(f.arp.target_protocol_addr)),
            (_, Ok(Some(f))) => Some(IpAddr::V6(f.ndisc.target_addr())),
            _ => None,
        }
    } else {
        None
    };
    let table = table_with(extra);

    let d = decide_arp(frame, rx, ME, |ip| table.contains(&ip));
    if let Some(reply) = check_answer(&d, tagged) {
        let r = ArpFrame::parse(&reply).expect("our ARP reply parses");
        assert_eq!(r.ethernet.src_addr, ME);
        assert_eq!(r.arp.source_hardware_addr, ME);
        assert!(r.ethernet.dst_addr.is_unicast(), "ARP reply to {}", r.ethernet.dst_addr);
    }
    let d = decide_ndp(frame, rx, ME, |ip| table.contains(&ip));
    if let Some(reply) = check_answer(&d, tagged) {
        let r = NdpFrame::parse(&reply)
            .expect("our NA parses")
            .expect("as ND");
        let EthernetRepr { src_addr, dst_addr, .. } = r.ethernet;
        assert_eq!(src_addr, ME);
        assert!(
            dst_addr.is_unicast() || dst_addr == ndp::multicast_mac(ndp::ALL_NODES),
            "NA to {dst_addr}"
        );
    }
});
