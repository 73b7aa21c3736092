use std::net::IpAddr;

use super::*;
use crate::routing::options::OverlayType;

/// IFLA_INFO_DATA of the RTM_NEWLINK that iproute2 6.1 sent for kube-router's command
/// `ip link add name tun-abc type ipip remote 192.0.2.12 local 192.0.2.11 ttl 225 encap gue
/// encap-sport auto encap-dport 5555 mode ipip` (captured with `strace -xx`; the whole message
/// was 156 bytes).
const CAPTURED_IPIP_GUE: &str = "050009000400000008000200c000020b08000300c000020c05000a0001000000050005000000000005000400e10000000800\
010000000000080014000000000006000f0002000000060010000000000006001100000000000600120015b30000";

/// The same for `ip -6 link add name tun-def type ip6tnl remote 2001:db8::12 local
/// 2001:db8::11 ttl 225 encap gue encap-sport auto encap-dport 5555 mode ip6ip6` (192 bytes).
const CAPTURED_IP6TNL_GUE: &str = "05000900290000001400020020010db80000000000000000000000111400030020010db80000000000000000000000120500\
0400e10000000500060004000000080007000000000008000800000000000800010000000000080014000000000006000f00\
02000000060010000200000006001100000000000600120015b30000";

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

fn info_data(link: &TunnelLink) -> Vec<u8> {
    let attrs = link.attributes();
    let Nla::Nested(_, info) = &attrs[1] else {
        panic!("linkinfo is nested")
    };
    let Nla::Nested(_, data) = &info[1] else {
        panic!("info data is nested")
    };
    let mut out = Vec::new();
    for a in data {
        a.emit(&mut out);
    }
    out
}

fn link(local: &str, remote: &str) -> TunnelLink {
    let mut l = TunnelLink::new(
        local.parse().unwrap(),
        remote.parse().unwrap(),
        Encap::Fou,
        DEFAULT_ENCAP_PORT,
    );
    l.name = if l.v6() { "tun-def" } else { "tun-abc" }.to_string();
    l
}

#[test]
fn ipip_gue_link_is_byte_for_byte_what_iproute2_sends() {
    let l = link("192.0.2.11", "192.0.2.12");
    assert_eq!(info_data(&l), hex(CAPTURED_IPIP_GUE));
    assert_eq!(l.newlink_message(1).len(), 156);
}

#[test]
fn ip6tnl_gue_link_is_byte_for_byte_what_iproute2_sends() {
    let l = link("2001:db8::11", "2001:db8::12");
    assert_eq!(info_data(&l), hex(CAPTURED_IP6TNL_GUE));
    assert_eq!(l.newlink_message(1).len(), 192);
}

#[test]
fn the_message_parses_back_to_its_attributes() {
    for l in [
        link("192.0.2.11", "192.0.2.12"),
        link("2001:db8::11", "2001:db8::12"),
        TunnelLink::new(
            "192.0.2.11".parse().unwrap(),
            "203.0.113.7".parse().unwrap(),
            Encap::Ipip,
            DEFAULT_ENCAP_PORT,
        ),
    ] {
        let msg = l.newlink_message(7);
        assert_eq!(
            u32::from_ne_bytes(msg[0..4].try_into().unwrap()) as usize,
            msg.len()
        );
        assert_eq!(u16::from_ne_bytes([msg[4], msg[5]]), RTM_NEWLINK);
        let attrs = Nla::parse_all(&msg[32..], &TunnelLink::nested_paths, &[]).unwrap();
        assert_eq!(attrs, l.attributes());
    }
}

#[test]
fn plain_ipip_has_no_encapsulation() {
    let l = TunnelLink::new(
        "192.0.2.11".parse().unwrap(),
        "203.0.113.7".parse().unwrap(),
        Encap::Ipip,
        DEFAULT_ENCAP_PORT,
    );
    let data = info_data(&l);
    let attrs = Nla::parse_all(&data, &|_| false, &[]).unwrap();
    assert!(attrs.contains(&Nla::Bytes(
        IPTUN_ENCAP_TYPE,
        TUNNEL_ENCAP_NONE.to_ne_bytes().to_vec()
    )));
    assert!(attrs.contains(&Nla::Bytes(IPTUN_ENCAP_DPORT, vec![0, 0])));
}

#[test]
fn tunnel_names_follow_kube_router() {
    // The values kube-router's GenerateTunnelName gives.
    assert_eq!(
        tunnel_name("192.0.2.12".parse().unwrap()),
        "tun-a8e0d7ef05b"
    );
    assert_eq!(
        tunnel_name("2001:db8::12".parse().unwrap()),
        "tun-dc69032cf2b"
    );
    // sha256("1921680211") and sha256("2001db812") as kube-router's GenerateTunnelName.
    let v4 = tunnel_name("192.168.0.211".parse().unwrap());
    assert_eq!(v4.len(), 15);
    assert!(v4.starts_with("tun-"));
    let expected: String = Sha256::digest(b"1921680211")
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(&v4[4..], &expected[..11]);
    let v6 = tunnel_name("2001:db8::12".parse().unwrap());
    let expected: String = Sha256::digest(b"2001db812")
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(&v6[4..], &expected[..11]);
}

#[test]
fn fou_request_carries_port_family_and_gue() {
    let msg = fou_message(0x20, 3, true, 5555, false);
    assert_eq!(u16::from_ne_bytes([msg[4], msg[5]]), 0x20);
    assert_eq!(&msg[16..20], &[FOU_CMD_ADD, FOU_GENL_VERSION, 0, 0]);
    let attrs = Nla::parse_all(&msg[20..], &|_| false, &[]).unwrap();
    assert_eq!(
        attrs,
        vec![
            Nla::Bytes(FOU_ATTR_PORT, vec![0x15, 0xb3]),
            Nla::Bytes(FOU_ATTR_AF, vec![AF_INET]),
            Nla::Bytes(FOU_ATTR_TYPE, vec![FOU_ENCAP_GUE]),
        ]
    );
    let del = fou_message(0x20, 4, false, 5555, true);
    let attrs = Nla::parse_all(&del[20..], &|_| false, &[]).unwrap();
    assert_eq!(attrs[1], Nla::Bytes(FOU_ATTR_AF, vec![AF_INET6]));
    assert_eq!(attrs.len(), 2);
}

#[test]
fn reach_follows_kube_routers_overlay_types() {
    let connected: Vec<IpNet> = vec!["192.0.2.0/24".parse().unwrap()];
    let local: Vec<IpAddr> = vec!["192.0.2.11".parse().unwrap()];
    let near: IpAddr = "192.0.2.12".parse().unwrap();
    let far: IpAddr = "203.0.113.7".parse().unwrap();
    let subnet = Some((OverlayType::Subnet, Encap::Ipip, 5555));
    let full = Some((OverlayType::Full, Encap::Fou, 5555));
    assert_eq!(reach(subnet, near, &connected, &local), Reach::Direct);
    assert!(
        matches!(reach(subnet, far, &connected, &local), Reach::Tunnel(t) if t.remote == far && t.kind() == "ipip")
    );
    assert!(
        matches!(reach(full, near, &connected, &local), Reach::Tunnel(t) if t.encap == Encap::Fou)
    );
    assert_eq!(reach(None, near, &connected, &local), Reach::Direct);
    assert!(matches!(
        reach(None, far, &connected, &local),
        Reach::Unreachable(_)
    ));
    // No IPv6 address on this node: no tunnel for an IPv6 next hop.
    assert!(matches!(
        reach(subnet, "2001:db8:5::1".parse().unwrap(), &connected, &local),
        Reach::Unreachable(_)
    ));
}

#[test]
fn encap_flags_parse_as_kube_router() {
    assert_eq!("ipip".parse::<Encap>(), Ok(Encap::Ipip));
    assert_eq!("fou".parse::<Encap>(), Ok(Encap::Fou));
    assert!("gre".parse::<Encap>().is_err());
    assert!(check_encap_port(1023).is_err());
    assert_eq!(check_encap_port(5555), Ok(5555));
}
