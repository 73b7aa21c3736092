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
