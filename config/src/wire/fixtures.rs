//! Frames captured in a lab namespace pair (veth, 02:00:00:00:00:64 = client with
//! 192.0.2.100 / 2001:db8::100, 02:00:00:00:00:01 = responder with 192.0.2.200 /
//! 2001:db8::200) with `tcpdump -w`, from `arping -c 1`, `ndisc6 -1` and the kernel's answers
//! and duplicate address detection. Hex, one frame each, exactly as captured.

use super::Mac;

pub const CLIENT_MAC: Mac = Mac([0x02, 0, 0, 0, 0, 0x64]);
pub const RESPONDER_MAC: Mac = Mac([0x02, 0, 0, 0, 0, 0x01]);

/// `arping -c 1 -I veth0 192.0.2.200`: broadcast request, padded by arping to 58 bytes.
pub const ARPING_REQUEST: &str = "ffffffffffff02000000006408060001080006040001020000000064c0000264000000000000c00002c800000000000000000000000000000000";
/// The kernel's reply to it (veth does not pad: 42 bytes).
pub const KERNEL_ARP_REPLY: &str =
    "02000000006402000000000108060001080006040002020000000001c00002c8020000000064c0000264";
/// `ndisc6 -1 2001:db8::200 veth0`: from fe80::ff:fe00:64 to the solicited-node group, with
/// a source link-layer address option.
pub const NDISC6_SOLICITATION: &str = "3333ff00020002000000006486dd600b40e500203afffe80000000000000000000fffe000064ff0200000000000000000001ff0002008700479d0000000020010db80000000000000000000002000101020000000064";
/// The kernel's solicited advertisement (S and O set, target link-layer address option).
pub const KERNEL_ADVERTISEMENT: &str = "02000000006402000000000186dd6000000000203aff20010db8000000000000000000000200fe80000000000000000000fffe0000648800b64b6000000020010db80000000000000000000002000201020000000001";
/// The kernel's duplicate address detection probe for 2001:db8::300: from ::, with a nonce
/// option (RFC 7527, type 14) and no source link-layer address option.
pub const KERNEL_DAD_SOLICITATION: &str = "3333ff00030002000000006486dd6000000000203aff00000000000000000000000000000000ff0200000000000000000001ff0003008700ce470000000020010db80000000000000000000003000e01ec8b338e4a84";
/// A router solicitation (another ICMPv6 message on the same segment).
pub const KERNEL_ROUTER_SOLICITATION: &str = "33330000000202000000006486dd6000000000103afffe80000000000000000000fffe000064ff02000000000000000000000000000285007a66000000000101020000000064";

/// Every capture, for seeding fuzzers and property tests.
pub const ALL: [&str; 6] = [
    ARPING_REQUEST,
    KERNEL_ARP_REPLY,
    NDISC6_SOLICITATION,
    KERNEL_ADVERTISEMENT,
    KERNEL_DAD_SOLICITATION,
    KERNEL_ROUTER_SOLICITATION,
];

/// The bytes of a hex fixture; panics on a malformed constant (test data only).
pub fn hex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd hex fixture");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex fixture"))
        .collect()
}
