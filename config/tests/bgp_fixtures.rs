//! Messages captured from BIRD 2.0.12, FRR and GoBGP 3.10 (see `capture_fixtures` in
//! `tests/tests/bgp_engine.rs`) parse, and re-emit byte for byte.

use metalnet::bgp::wire::{
    ATTR_LARGE_COMMUNITIES, ATTR_MP_REACH, Attr, Message, WireContext, from_hex,
};
use std::path::PathBuf;

fn fixtures() -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bgp");
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .expect("fixture directory")
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "hex"))
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(e.path()).expect("read fixture");
            let bytes = from_hex(&text).unwrap_or_else(|| panic!("{name}: not hex"));
            (name, bytes)
        })
        .collect();
    out.sort();
    out
}

#[test]
fn captured_messages_roundtrip_byte_for_byte() {
    let all = fixtures();
    assert!(all.len() >= 20, "only {} fixtures", all.len());
    for (name, bytes) in &all {
        let (msg, used) = Message::parse(bytes, WireContext::FOUR_OCTET)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(used, bytes.len(), "{name}");
        assert!(
            name.contains(&msg.kind().to_ascii_lowercase().replace('-', "_")),
            "{name}: parsed as {}",
            msg.kind()
        );
        let again = msg.to_bytes(WireContext::FOUR_OCTET).expect("emit");
        assert_eq!(&again, bytes, "{name}: re-emitted bytes differ");
    }
}

#[test]
fn every_router_sent_the_attributes_we_rely_on() {
    let all = fixtures();
    for router in ["bird", "frr", "gobgp"] {
        let updates: Vec<_> = all
            .iter()
            .filter(|(n, _)| n.starts_with(router) && n.ends_with("update.hex"))
            .filter_map(|(_, b)| match Message::parse(b, WireContext::FOUR_OCTET) {
                Ok((Message::Update(u), _)) => Some(u),
                _ => None,
            })
            .collect();
        assert!(
            updates.iter().any(|u| matches!(u.attr(ATTR_LARGE_COMMUNITIES), Some(Attr::LargeCommunities(c)) if !c.is_empty())),
            "{router}: no UPDATE with large communities"
        );
        assert!(
            updates.iter().any(
                |u| matches!(u.attr(ATTR_MP_REACH), Some(Attr::MpReach(m)) if !m.nlri.is_empty())
            ),
            "{router}: no IPv6 MP_REACH UPDATE"
        );
        // GoBGP sends End-of-RIB only with graceful restart, which the lab does not configure.
        if router != "gobgp" {
            assert!(
                updates.iter().any(|u| u.is_end_of_rib().is_some()),
                "{router}: no End-of-RIB"
            );
        }
        let opens = all
            .iter()
            .filter(|(n, _)| n.starts_with(router) && n.ends_with("open.hex"))
            .count();
        assert_eq!(opens, 2, "{router}");
    }
}

/// BIRD (`rr client`) and FRR (`route-reflector-client`) reflecting a client's routes to
/// another client: the reflector's cluster ID goes in front of the CLUSTER_LIST, an
/// ORIGINATOR_ID set by the client is kept, and a route without one gets the client's router
/// ID. Captured by `capture_rr_fixtures` in `tests/tests/bgp_engine.rs`.
#[test]
fn reflectors_send_originator_id_and_cluster_list() {
    use metalnet::bgp::rib::apply_update;
    use std::collections::BTreeMap;
    use std::net::Ipv4Addr;
    let all = fixtures();
    let id = |s: &str| s.parse::<Ipv4Addr>().expect("IPv4 literal");
    for router in ["rr_bird", "rr_frr"] {
        let mut rib = BTreeMap::new();
        for (_, bytes) in all
            .iter()
            .filter(|(n, _)| n.starts_with(router) && n.ends_with("update.hex"))
        {
            if let Ok((Message::Update(u), _)) = Message::parse(bytes, WireContext::FOUR_OCTET) {
                apply_update(&mut rib, &u);
            }
        }
        let route = |p: &str| {
            rib.get(&p.parse().expect("prefix"))
                .unwrap_or_else(|| panic!("{router}: no route {p}: {rib:?}"))
        };
        let kept = route("203.0.113.20/32");
        assert_eq!(kept.originator_id, Some(id("192.0.2.7")), "{router}");
        assert_eq!(
            kept.cluster_list,
            vec![id("192.0.2.2"), id("192.0.2.9")],
            "{router}"
        );
        assert_eq!(kept.as_path, vec![64600], "{router}");
        let set = route("203.0.113.21/32");
        assert_eq!(set.originator_id, Some(id("192.0.2.4")), "{router}");
        assert_eq!(set.cluster_list, vec![id("192.0.2.2")], "{router}");
        assert_eq!(
            set.next_hop,
            "192.0.2.4".parse::<std::net::IpAddr>().unwrap()
        );
    }
}
