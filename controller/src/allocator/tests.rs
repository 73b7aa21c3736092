//! Unit tests (MetalLB-equivalence cases) and property tests for the allocator.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use metalnet::labels::Selector;

use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn ips(v: &[&str]) -> Vec<IpAddr> {
    v.iter().map(|s| ip(s)).collect()
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn pool(name: &str, cidrs: &[&str]) -> Pool {
    Pool::new(name, cidrs.iter().map(|c| net(c)).collect())
}

fn with_sa(mut p: Pool, sa: ServiceAllocation) -> Pool {
    p.service_allocation = Some(sa);
    p
}

fn sel(pairs: &[(&str, &str)]) -> Selector {
    Selector::new(&LabelSelector {
        match_labels: Some(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        match_expressions: None,
    })
    .unwrap()
}

fn ns_sa(priority: i32, namespaces: &[&str]) -> ServiceAllocation {
    ServiceAllocation {
        priority,
        namespaces: namespaces.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn svc(ns: &str, name: &str) -> ServiceRequest {
    ServiceRequest::simple(ServiceKey::new(ns, name))
}

fn svc6(ns: &str, name: &str) -> ServiceRequest {
    let mut r = svc(ns, name);
    r.families = FamilyRequest::Single(IpFamily::V6);
    r
}

fn shared(ns: &str, name: &str, key: &str, ports: &[(&str, i32)]) -> ServiceRequest {
    let mut r = svc(ns, name);
    r.sharing_key = key.into();
    r.ports = ports.iter().map(|(p, n)| Port::new(*p, *n)).collect();
    r
}

fn alloc_with(pools: Vec<Pool>) -> Allocator {
    let mut a = Allocator::new();
    assert!(a.set_pools(pools).is_empty());
    a
}

fn got(a: &mut Allocator, r: &ServiceRequest) -> Vec<IpAddr> {
    let res = a.assign(r).unwrap_or_else(|e| panic!("{}: {e}", r.key));
    a.check_consistency().unwrap();
    res.ips
}

fn err(a: &mut Allocator, r: &ServiceRequest) -> AllocError {
    let e = a.assign(r).expect_err("allocation should fail");
    a.check_consistency().unwrap();
    e
}

// ------------------------------------------------------------ order within a pool

#[test]
fn range_pool_starts_at_its_first_address() {
    // 192.0.2.10-192.0.2.20 summarised to CIDRs, as the config parser does.
    let mut a = alloc_with(vec![pool(
        "r",
        &[
            "192.0.2.10/31",
            "192.0.2.12/30",
            "192.0.2.16/30",
            "192.0.2.20/32",
        ],
    )]);
    let mut seen = Vec::new();
    for i in 0..11 {
        seen.push(got(&mut a, &svc("ns", &format!("s{i}")))[0]);
    }
    let want: Vec<IpAddr> = (10..=20).map(|o| ip(&format!("192.0.2.{o}"))).collect();
    assert_eq!(seen, want);
    assert!(matches!(
        err(&mut a, &svc("ns", "late")),
        AllocError::NoAvailableIps { .. }
    ));
}

#[test]
fn without_avoid_buggy_ips_the_network_address_comes_first() {
    let mut a = alloc_with(vec![pool("p", &["192.0.2.0/24"])]);
    assert_eq!(got(&mut a, &svc("ns", "a")), ips(&["192.0.2.0"]));
    assert_eq!(a.counters("p").unwrap().ipv4_addresses_total, 256);
}

#[test]
fn avoid_buggy_ips_skips_dot_zero_and_dot_255() {
    let mut p = pool("p", &["192.0.2.0/24"]);
    p.avoid_buggy_ips = true;
    let mut a = alloc_with(vec![p]);
    assert_eq!(got(&mut a, &svc("ns", "a")), ips(&["192.0.2.1"]));
    assert_eq!(a.counters("p").unwrap().ipv4_addresses_total, 254);
    for i in 0..253 {
        got(&mut a, &svc("ns", &format!("f{i}")));
    }
    assert_eq!(
        a.held(&ServiceKey::new("ns", "f252")).unwrap().0,
        ips(&["192.0.2.254"])
    );
    assert!(matches!(
        err(&mut a, &svc("ns", "x")),
        AllocError::NoAvailableIps { .. }
    ));
}

#[test]
fn avoid_buggy_ips_across_a_slash_23_and_tiny_prefixes() {
    let mut p = pool(
        "p",
        &["192.0.2.254/31", "203.0.113.0/32", "198.51.100.0/23"],
    );
    p.avoid_buggy_ips = true;
    let mut a = alloc_with(vec![p]);
    // /31: only .254; /32 ending in .0: nothing; /23: both .255/.0 in the middle skipped.
    assert_eq!(a.counters("p").unwrap().ipv4_addresses_total, 1 + 508);
    assert_eq!(got(&mut a, &svc("ns", "a")), ips(&["192.0.2.254"]));
    assert_eq!(got(&mut a, &svc("ns", "b")), ips(&["198.51.100.1"]));
    for i in 0..253 {
        got(&mut a, &svc("ns", &format!("f{i}")));
    }
    assert_eq!(got(&mut a, &svc("ns", "c")), ips(&["198.51.101.1"]));
    // The buggy address cannot be requested either.
    let mut r = svc("ns", "d");
    r.requested_ips = ips(&["198.51.100.255"]);
    assert_eq!(
        err(&mut a, &r),
        AllocError::AddressNotInAnyPool {
            ip: ip("198.51.100.255")
        }
    );
}

#[test]
fn avoid_buggy_ips_does_not_touch_ipv6() {
    let mut p = pool("p", &["2001:db8::/126"]);
    p.avoid_buggy_ips = true;
    let mut a = alloc_with(vec![p]);
    assert_eq!(got(&mut a, &svc6("ns", "a")), ips(&["2001:db8::"]));
    assert_eq!(a.counters("p").unwrap().ipv6_addresses_total, 4);
}

#[test]
fn huge_ipv6_pools_are_never_enumerated() {
    let mut a = alloc_with(vec![pool("p", &["2001:db8::/64", "192.0.2.0/30"])]);
    for i in 0..100 {
        got(&mut a, &svc6("ns", &format!("s{i}")));
    }
    let c = a.counters("p").unwrap();
    assert_eq!(c.ipv6_addresses_total, 1u128 << 64);
    assert_eq!(c.addresses_total(), i64::MAX);
    assert_eq!(c.ipv6_addresses_in_use, 100);
    assert_eq!(c.services_allocated, 100);
}

#[test]
fn cidrs_are_used_in_the_given_order() {
    let mut a = alloc_with(vec![pool("p", &["198.51.100.8/31", "192.0.2.0/31"])]);
    assert_eq!(got(&mut a, &svc("ns", "a")), ips(&["198.51.100.8"]));
    assert_eq!(got(&mut a, &svc("ns", "b")), ips(&["198.51.100.9"]));
    assert_eq!(got(&mut a, &svc("ns", "c")), ips(&["192.0.2.0"]));
}

#[test]
fn released_addresses_are_reused_lowest_first() {
    let mut a = alloc_with(vec![pool("p", &["192.0.2.0/28"])]);
    for n in ["a", "b", "c", "d"] {
        got(&mut a, &svc("ns", n));
    }
    assert_eq!(
        a.release(&ServiceKey::new("ns", "b")),
        Some((ips(&["192.0.2.1"]), "p".into()))
    );
    a.release(&ServiceKey::new("ns", "a"));
    assert_eq!(got(&mut a, &svc("ns", "e")), ips(&["192.0.2.0"]));
    assert_eq!(got(&mut a, &svc("ns", "f")), ips(&["192.0.2.1"]));
    assert_eq!(got(&mut a, &svc("ns", "g")), ips(&["192.0.2.4"]));
}

// ------------------------------------------------------------ pool order

#[test]
fn priority_then_unprioritised_then_general_pools() {
    let mut a = alloc_with(vec![
        with_sa(pool("a-prio2", &["192.0.2.2/32"]), ns_sa(2, &["team"])),
        with_sa(pool("b-prio1", &["192.0.2.1/32"]), ns_sa(1, &["team"])),
        with_sa(pool("c-prio0", &["192.0.2.3/32"]), ns_sa(0, &["team"])),
        pool("d-general", &["192.0.2.4/31"]),
    ]);
    assert_eq!(got(&mut a, &svc("other", "x")), ips(&["192.0.2.4"]));
    assert_eq!(got(&mut a, &svc("team", "1")), ips(&["192.0.2.1"]));
    assert_eq!(got(&mut a, &svc("team", "2")), ips(&["192.0.2.2"]));
    assert_eq!(got(&mut a, &svc("team", "3")), ips(&["192.0.2.3"]));
    // Pinned pools exhausted: fall back to general pools.
    assert_eq!(got(&mut a, &svc("team", "4")), ips(&["192.0.2.5"]));
    let e = err(&mut a, &svc("team", "5"));
    let msg = e.to_string();
    assert!(msg.contains("pool b-prio1: exhausted (IPv4)"), "{msg}");
    assert!(
        msg.starts_with("no available IPs for IPv4: pool b-prio1"),
        "{msg}"
    );
}

#[test]
fn ties_are_broken_by_name() {
    let mut a = alloc_with(vec![
        pool("zeta", &["192.0.2.0/32"]),
        pool("alpha", &["192.0.2.9/32"]),
    ]);
    assert_eq!(got(&mut a, &svc("ns", "a")), ips(&["192.0.2.9"]));
    let mut b = alloc_with(vec![
        with_sa(pool("z", &["192.0.2.1/32"]), ns_sa(0, &["ns"])),
        with_sa(pool("y", &["192.0.2.2/32"]), ns_sa(0, &["ns"])),
    ]);
    assert_eq!(got(&mut b, &svc("ns", "a")), ips(&["192.0.2.2"]));
}

#[test]
fn namespace_selectors_and_service_selectors() {
    let sa = ServiceAllocation {
        namespace_selectors: vec![sel(&[("team", "a")])],
        ..Default::default()
    };
    let sa_svc = ServiceAllocation {
        service_selectors: vec![sel(&[("tier", "edge")])],
        priority: 1,
        ..Default::default()
    };
    let mut a = alloc_with(vec![
        with_sa(pool("team-a", &["192.0.2.0/30"]), sa),
        with_sa(pool("edge", &["198.51.100.0/30"]), sa_svc),
        pool("general", &["203.0.113.0/30"]),
    ]);
    let mut in_team = svc("ns1", "s");
    in_team.namespace_labels = BTreeMap::from([("team".into(), "a".into())]);
    assert_eq!(got(&mut a, &in_team), ips(&["192.0.2.0"]));
    assert_eq!(got(&mut a, &svc("ns2", "s")), ips(&["203.0.113.0"]));
    let mut edge = svc("ns3", "s");
    edge.labels = BTreeMap::from([("tier".into(), "edge".into())]);
    assert_eq!(got(&mut a, &edge), ips(&["198.51.100.0"]));
    // Both pools select: the prioritised one wins.
    let mut both = in_team.clone();
    both.key = ServiceKey::new("ns1", "both");
    both.labels = edge.labels.clone();
    assert_eq!(got(&mut a, &both), ips(&["198.51.100.1"]));
    // A namespace that is not selected may not even request the pool.
    let mut asks = svc("ns2", "asks");
    asks.requested_pool = Some("team-a".into());
    let e = err(&mut a, &asks);
    assert!(matches!(e, AllocError::PoolNotAllowed { .. }), "{e}");
    asks.requested_pool = None;
    asks.requested_ips = ips(&["192.0.2.3"]);
    let e = err(&mut a, &asks);
    assert!(
        e.to_string()
            .contains("is in pool \"team-a\", which may not serve this service"),
        "{e}"
    );
}

#[test]
fn priority_only_service_allocation_makes_a_pool_request_only() {
    let mut a = alloc_with(vec![
        with_sa(pool("reserved", &["192.0.2.0/30"]), ns_sa(1, &[])),
        pool("general", &["198.51.100.0/30"]),
    ]);
    assert_eq!(got(&mut a, &svc("ns", "a")), ips(&["198.51.100.0"]));
    let mut r = svc("ns", "b");
    r.requested_pool = Some("reserved".into());
    assert_eq!(got(&mut a, &r), ips(&["192.0.2.0"]));
}

#[test]
fn auto_assign_off_pool_is_used_only_on_request() {
    let mut off = pool("manual", &["192.0.2.0/30"]);
    off.auto_assign = false;
    let mut a = alloc_with(vec![off, pool("auto", &["198.51.100.0/31"])]);
    assert_eq!(got(&mut a, &svc("ns", "a")), ips(&["198.51.100.0"]));
    let mut by_pool = svc("ns", "b");
    by_pool.requested_pool = Some("manual".into());
    assert_eq!(got(&mut a, &by_pool), ips(&["192.0.2.0"]));
    let mut by_ip = svc("ns", "c");
    by_ip.requested_ips = ips(&["192.0.2.2"]);
    assert_eq!(got(&mut a, &by_ip), ips(&["192.0.2.2"]));
    got(&mut a, &svc("ns", "d"));
    let e = err(&mut a, &svc("ns", "e"));
    assert!(
        e.to_string().contains("pool manual: autoAssign is off"),
        "{e}"
    );
    let ex = a.explain(&ServiceKey::new("ns", "e")).unwrap().to_string();
    assert!(ex.contains("pool auto: exhausted (IPv4)"), "{ex}");
}

#[test]
fn requested_pool_errors_name_the_pool() {
    let mut a = alloc_with(vec![pool("v4", &["192.0.2.0/32"])]);
    let mut r = svc("ns", "a");
    r.requested_pool = Some("nope".into());
    assert_eq!(
        err(&mut a, &r).to_string(),
        "requested address pool \"nope\" does not exist"
    );
    r.requested_pool = Some("v4".into());
    got(&mut a, &r);
    let mut r2 = svc("ns", "b");
    r2.requested_pool = Some("v4".into());
    assert_eq!(
        err(&mut a, &r2).to_string(),
        "address pool \"v4\" is exhausted (IPv4)"
    );
    let mut r3 = svc6("ns", "c");
    r3.requested_pool = Some("v4".into());
    assert_eq!(
        err(&mut a, &r3).to_string(),
        "address pool \"v4\" has no IPv6 addresses"
    );
}

// ------------------------------------------------------------ requested addresses

#[test]
fn requested_addresses() {
    let mut a = alloc_with(vec![pool("p", &["192.0.2.0/28", "2001:db8::/120"])]);
    let mut r = svc("ns", "a");
    r.requested_ips = ips(&["192.0.2.7"]);
    assert_eq!(got(&mut a, &r), ips(&["192.0.2.7"]));
    let mut taken = svc("other", "b");
    taken.requested_ips = ips(&["192.0.2.7"]);
    assert_eq!(
        err(&mut a, &taken).to_string(),
        "requested address 192.0.2.7 is taken by ns/a: the holder does not allow sharing \
         (no allow-shared-ip annotation)"
    );
    let mut outside = svc("ns", "c");
    outside.requested_ips = ips(&["198.51.100.1"]);
    assert_eq!(
        err(&mut a, &outside).to_string(),
        "requested address 198.51.100.1 is not in any address pool"
    );
    let mut many = svc("ns", "d");
    many.requested_ips = ips(&["192.0.2.1", "2001:db8::1", "192.0.2.2"]);
    assert!(matches!(
        err(&mut a, &many),
        AllocError::TooManyAddresses { count: 3 }
    ));
    many.requested_ips = ips(&["192.0.2.1", "192.0.2.2"]);
    assert!(matches!(
        err(&mut a, &many),
        AllocError::SameFamilyTwice { .. }
    ));
    many.requested_ips = ips(&["2001:db8::1"]);
    assert!(matches!(
        err(&mut a, &many),
        AllocError::RequestedFamilyMismatch { .. }
    ));
    // Pool annotation and address must agree.
    let mut both = svc("ns", "e");
    both.requested_ips = ips(&["192.0.2.3"]);
    both.requested_pool = Some("q".into());
    assert!(matches!(
        err(&mut a, &both),
        AllocError::RequestedPoolMismatch { .. }
    ));
}

#[test]
fn requested_dual_stack_addresses_must_share_a_pool() {
    let mut a = alloc_with(vec![
        pool("a", &["192.0.2.0/28", "2001:db8::/120"]),
        pool("b", &["2001:db8:1::/120"]),
    ]);
    let mut r = svc("ns", "d");
    r.families = FamilyRequest::RequireDual;
    r.requested_ips = ips(&["192.0.2.1", "2001:db8:1::1"]);
    assert!(matches!(
        err(&mut a, &r),
        AllocError::AddressesInDifferentPools { .. }
    ));
    r.requested_ips = ips(&["2001:db8::5", "192.0.2.1"]);
    assert_eq!(got(&mut a, &r), ips(&["2001:db8::5", "192.0.2.1"]));
}

// ------------------------------------------------------------ sharing

#[test]
fn sharing_accepted_and_refused() {
    let mut a = alloc_with(vec![pool("p", &["192.0.2.0/28"])]);
    let mut first = shared("ns", "http", "k", &[("TCP", 80)]);
    first.requested_ips = ips(&["192.0.2.5"]);
    got(&mut a, &first);

    let mut dns = shared("ns", "dns", "k", &[("UDP", 53), ("UDP", 80)]);
    dns.requested_ips = ips(&["192.0.2.5"]);
    assert_eq!(got(&mut a, &dns), ips(&["192.0.2.5"]));
    assert_eq!(a.holders(&ip("192.0.2.5")).len(), 2);
    assert_eq!(a.counters("p").unwrap().ipv4_addresses_in_use, 1);
    assert_eq!(a.counters("p").unwrap().services_allocated, 2);

    let mut clash = shared("ns", "http2", "k", &[("TCP", 443), ("TCP", 80)]);
    clash.requested_ips = ips(&["192.0.2.5"]);
    assert_eq!(
        err(&mut a, &clash).to_string(),
        "requested address 192.0.2.5 is sharing conflict on port TCP/80 with ns/http"
    );
    let mut other_key = shared("ns", "x", "other", &[("TCP", 8080)]);
    other_key.requested_ips = ips(&["192.0.2.5"]);
    let e = err(&mut a, &other_key);
    assert!(
        matches!(
            &e,
            AllocError::AddressTaken {
                conflict: Conflict::Sharing {
                    reason: SharingRefusal::DifferentKey { .. },
                    ..
                },
                ..
            }
        ),
        "{e}"
    );
    let mut no_key = shared("ns", "y", "", &[("TCP", 8080)]);
    no_key.requested_ips = ips(&["192.0.2.5"]);
    assert!(
        err(&mut a, &no_key)
            .to_string()
            .contains("this service does not allow sharing")
    );
    let mut local = shared("ns", "z", "k", &[("TCP", 8081)]);
    local.backend_key = "app=web".into();
    local.requested_ips = ips(&["192.0.2.5"]);
    assert!(err(&mut a, &local).to_string().contains("backend selector"));

    // Releasing one sharer keeps the address for the other.
    a.release(&ServiceKey::new("ns", "http"));
    a.check_consistency().unwrap();
    assert_eq!(
        a.holders(&ip("192.0.2.5")),
        vec![ServiceKey::new("ns", "dns")]
    );
    assert_eq!(got(&mut a, &clash), ips(&["192.0.2.5"]));
}

#[test]
fn auto_assignment_joins_a_compatible_shared_address() {
    let mut a = alloc_with(vec![pool("p", &["192.0.2.0/28"])]);
    assert_eq!(got(&mut a, &svc("ns", "plain")), ips(&["192.0.2.0"]));
    assert_eq!(
        got(&mut a, &shared("ns", "a", "k", &[("TCP", 80)])),
        ips(&["192.0.2.1"])
    );
    assert_eq!(
        got(&mut a, &shared("ns", "b", "k", &[("TCP", 443)])),
        ips(&["192.0.2.1"])
    );
    // Port taken on .1: next free address.
    assert_eq!(
        got(&mut a, &shared("ns", "c", "k", &[("TCP", 80)])),
        ips(&["192.0.2.2"])
    );
    // Lowest candidate wins: .1 frees up TCP/22 too, but .2 is not lower.
    assert_eq!(
        got(&mut a, &shared("ns", "d", "k", &[("TCP", 22)])),
        ips(&["192.0.2.1"])
    );
    assert_eq!(
        got(&mut a, &shared("ns", "e", "j", &[("TCP", 22)])),
        ips(&["192.0.2.3"])
    );
}

#[test]
fn changing_the_sharing_key_alone_keeps_the_address_but_not_when_shared() {
    let mut a = alloc_with(vec![pool("p", &["192.0.2.0/28"])]);
    let mut alone = shared("ns", "alone", "k1", &[("TCP", 80)]);
    let held = got(&mut a, &alone);
    alone.sharing_key = "k2".into();
    let r = a.assign(&alone).unwrap();
    assert_eq!((r.ips, r.outcome), (held.clone(), Outcome::Unchanged));

    let mut b = shared("ns", "b", "k2", &[("TCP", 81)]);
    assert_eq!(got(&mut a, &b), held);
    b.sharing_key = "k3".into();
    let r = a.assign(&b).unwrap();
    assert_eq!(r.ips, ips(&["192.0.2.1"]));
    assert!(
        matches!(r.outcome, Outcome::Reallocated { .. }),
        "{:?}",
        r.outcome
    );
    a.check_consistency().unwrap();
}

// ------------------------------------------------------------ dual stack

fn dual(ns: &str, name: &str, f: FamilyRequest) -> ServiceRequest {
    let mut r = svc(ns, name);
    r.families = f;
    r
}

#[test]
fn require_dual_stack_takes_both_families_from_one_pool() {
    let mut a = alloc_with(vec![
        pool("a-v4", &["192.0.2.0/28"]),
        pool("b-v6", &["2001:db8::/120"]),
        pool("c-dual", &["2001:db8:1::/120", "198.51.100.0/28"]),
    ]);
    assert_eq!(
        got(&mut a, &dual("ns", "d", FamilyRequest::RequireDual)),
        ips(&["198.51.100.0", "2001:db8:1::"])
    );
    assert_eq!(a.held(&ServiceKey::new("ns", "d")).unwrap().1, "c-dual");
    let mut b = alloc_with(vec![
        pool("a-v4", &["192.0.2.0/28"]),
        pool("b-v6", &["2001:db8::/120"]),
    ]);
    let e = err(&mut b, &dual("ns", "d", FamilyRequest::RequireDual));
    assert!(
        e.to_string().starts_with(
            "no available IPs for dual-stack (RequireDualStack): pool a-v4: has no IPv6 addresses"
        ),
        "{e}"
    );
}

#[test]
fn prefer_dual_stack_falls_back_to_the_primary_family() {
    let pools = vec![
        pool("a-v4", &["192.0.2.0/28"]),
        pool("b-v6", &["2001:db8::/120"]),
    ];
    let mut a = alloc_with(pools.clone());
    let v4_first = FamilyRequest::PreferDual {
        primary: IpFamily::V4,
    };
    let v6_first = FamilyRequest::PreferDual {
        primary: IpFamily::V6,
    };
    assert_eq!(got(&mut a, &dual("ns", "x", v4_first)), ips(&["192.0.2.0"]));
    assert_eq!(
        got(&mut a, &dual("ns", "y", v6_first)),
        ips(&["2001:db8::"])
    );
    // A pool with both wins even when listed later.
    let mut b = alloc_with(
        pools
            .into_iter()
            .chain([pool("c-dual", &["198.51.100.0/28", "2001:db8:1::/120"])])
            .collect(),
    );
    assert_eq!(
        got(&mut b, &dual("ns", "z", v6_first)),
        ips(&["198.51.100.0", "2001:db8:1::"])
    );
}

#[test]
fn prefer_dual_stack_gains_the_missing_family_from_the_same_pool() {
    let mut a = alloc_with(vec![pool("p", &["192.0.2.0/28"])]);
    let r = dual(
        "ns",
        "x",
        FamilyRequest::PreferDual {
            primary: IpFamily::V4,
        },
    );
    assert_eq!(got(&mut a, &r), ips(&["192.0.2.0"]));
    assert!(
        a.set_pools(vec![pool("p", &["192.0.2.0/28", "2001:db8::/120"])])
            .is_empty()
    );
    let res = a.assign(&r).unwrap();
    assert_eq!(res.outcome, Outcome::AddedFamily);
    assert_eq!(res.ips, ips(&["192.0.2.0", "2001:db8::"]));
    a.check_consistency().unwrap();
    assert_eq!(a.assign(&r).unwrap().outcome, Outcome::Unchanged);
}

#[test]
fn family_change_reallocates() {
    let mut a = alloc_with(vec![pool("p", &["192.0.2.0/28", "2001:db8::/120"])]);
    let mut r = svc("ns", "x");
    assert_eq!(got(&mut a, &r), ips(&["192.0.2.0"]));
    r.families = FamilyRequest::Single(IpFamily::V6);
    let res = a.assign(&r).unwrap();
    assert_eq!(res.ips, ips(&["2001:db8::"]));
    assert!(matches!(res.outcome, Outcome::Reallocated { .. }));
    assert_eq!(a.counters("p").unwrap().ipv4_addresses_in_use, 0);
}

// ------------------------------------------------------------ idempotence and changes

#[test]
fn assign_is_idempotent_and_reacts_to_request_changes() {
    let mut a = alloc_with(vec![
        pool("p", &["192.0.2.0/28"]),
        pool("q", &["198.51.100.0/28"]),
    ]);
    let mut r = svc("ns", "x");
    let first = a.assign(&r).unwrap();
    assert_eq!(first.outcome, Outcome::Allocated);
    let again = a.assign(&r).unwrap();
    assert_eq!(
        (again.ips.clone(), again.outcome),
        (first.ips.clone(), Outcome::Unchanged)
    );

    r.requested_ips = ips(&["192.0.2.9"]);
    let res = a.assign(&r).unwrap();
    assert_eq!(res.ips, ips(&["192.0.2.9"]));
    match res.outcome {
        Outcome::Reallocated { previous, reason } => {
            assert_eq!(previous, first.ips);
            assert!(reason.contains("now requests 192.0.2.9"), "{reason}");
        }
        o => panic!("{o:?}"),
    }
    r.requested_ips.clear();
    assert_eq!(
        a.assign(&r).unwrap().outcome,
        Outcome::Unchanged,
        "dropping the request keeps the IP"
    );
    r.requested_pool = Some("q".into());
    let res = a.assign(&r).unwrap();
    assert_eq!((res.ips, res.pool.as_str()), (ips(&["198.51.100.0"]), "q"));
    a.check_consistency().unwrap();
    // Failing to get new addresses leaves the Service with none.
    r.requested_pool = Some("missing".into());
    assert!(a.assign(&r).is_err());
    assert_eq!(a.held(&r.key), None);
    assert_eq!(a.pending(), vec![r.key.clone()]);
}

#[test]
fn invalid_requests_keep_what_is_held() {
    let mut a = alloc_with(vec![pool("p", &["192.0.2.0/28"])]);
    let mut r = svc("ns", "x");
    let held = got(&mut a, &r);
    r.requested_ips = ips(&["192.0.2.1", "192.0.2.2"]);
    assert!(a.assign(&r).is_err());
    assert_eq!(a.held(&r.key).unwrap().0, held);
}

#[test]
fn set_pools_releases_only_services_that_left_their_pools() {
    let mut a = alloc_with(vec![
        pool("p", &["192.0.2.0/29"]),
        pool("q", &["198.51.100.0/30"]),
    ]);
    for n in 0..6 {
        got(&mut a, &svc("ns", &format!("s{n}")));
    }
    let mut inq = svc("ns", "inq");
    inq.requested_pool = Some("q".into());
    got(&mut a, &inq);
    assert_eq!(a.counters("p").unwrap().services_allocated, 6);
    // Shrink p to /30 (.0-.3): s4, s5 lose .4/.5; q renamed to r keeps its address.
    let lost = a.set_pools(vec![
        pool("p", &["192.0.2.0/30"]),
        pool("r", &["198.51.100.0/30"]),
    ]);
    a.check_consistency().unwrap();
    let lost_keys: Vec<String> = lost.iter().map(|(k, _)| k.to_string()).collect();
    assert_eq!(lost_keys, vec!["ns/s4", "ns/s5"]);
    assert!(lost[0].1.to_string().contains("192.0.2.4"), "{}", lost[0].1);
    assert_eq!(
        a.held(&ServiceKey::new("ns", "s3")).unwrap().0,
        ips(&["192.0.2.3"])
    );
    assert_eq!(a.held(&ServiceKey::new("ns", "inq")).unwrap().1, "r");
    let c = a.counters("p").unwrap();
    assert_eq!(
        (
            c.ipv4_addresses_total,
            c.ipv4_addresses_in_use,
            c.services_allocated
        ),
        (4, 4, 4)
    );
    assert_eq!(a.pending().len(), 2);
    // Reassigning: p is full, r has room.
    assert_eq!(got(&mut a, &svc("ns", "s4")), ips(&["198.51.100.1"]));
}

#[test]
fn set_pools_notices_selection_changes() {
    let mut a = alloc_with(vec![with_sa(
        pool("p", &["192.0.2.0/29"]),
        ns_sa(0, &["a", "b"]),
    )]);
    got(&mut a, &svc("a", "x"));
    got(&mut a, &svc("b", "y"));
    let lost = a.set_pools(vec![with_sa(
        pool("p", &["192.0.2.0/29"]),
        ns_sa(0, &["a"]),
    )]);
    assert_eq!(lost.len(), 1);
    assert_eq!(lost[0].0, ServiceKey::new("b", "y"));
    a.check_consistency().unwrap();
}

#[test]
fn no_pools_is_an_error_that_releases() {
    let mut a = alloc_with(vec![pool("p", &["192.0.2.0/29"])]);
    let r = svc("ns", "x");
    got(&mut a, &r);
    let lost = a.set_pools(vec![]);
    assert_eq!(lost.len(), 1);
    assert_eq!(err(&mut a, &r), AllocError::NoPools);
}

// ------------------------------------------------------------ restart

#[test]
fn adopt_retakes_valid_addresses_before_new_assignments() {
    let pools = vec![pool("p", &["192.0.2.0/29"])];
    let mut a = alloc_with(pools.clone());
    let s1 = svc("ns", "one");
    let s2 = shared("ns", "two", "k", &[("TCP", 80)]);
    let s3 = shared("ns", "three", "k", &[("TCP", 443)]);
    a.assign(&s1).unwrap();
    a.assign(&s2).unwrap();
    a.assign(&s3).unwrap();
    a.release(&s1.key);
    let snapshot: Vec<_> = a
        .assignments()
        .map(|(k, i, p)| (k.clone(), i.to_vec(), p.to_string()))
        .collect();

    let mut b = alloc_with(pools);
    let results = b.adopt_all(vec![
        (s2.clone(), ips(&["192.0.2.1"])),
        (s3.clone(), ips(&["192.0.2.1"])),
        (svc("ns", "stale"), ips(&["198.51.100.1"])),
    ]);
    let by_key: BTreeMap<String, _> = results
        .into_iter()
        .map(|(k, r)| (k.to_string(), r))
        .collect();
    assert!(by_key["ns/two"].is_ok() && by_key["ns/three"].is_ok());
    assert_eq!(
        by_key["ns/stale"].as_ref().unwrap_err().to_string(),
        "held addresses 198.51.100.1 are not in any pool this service may use"
    );
    let after: Vec<_> = b
        .assignments()
        .map(|(k, i, p)| (k.clone(), i.to_vec(), p.to_string()))
        .collect();
    assert_eq!(after, snapshot);
    // A new service now gets .0, the adopted .1 stays put.
    assert_eq!(got(&mut b, &svc("ns", "new")), ips(&["192.0.2.0"]));
    assert_eq!(b.assign(&s2).unwrap().outcome, Outcome::Unchanged);
}

#[test]
fn adopt_refuses_conflicts() {
    let mut a = alloc_with(vec![pool("p", &["192.0.2.0/29"])]);
    a.adopt(&svc("ns", "a"), &ips(&["192.0.2.3"])).unwrap();
    let e = a.adopt(&svc("ns", "b"), &ips(&["192.0.2.3"])).unwrap_err();
    assert!(e.to_string().contains("taken by ns/a"), "{e}");
    assert_eq!(
        a.adopt(&svc("ns", "c"), &[]).unwrap_err(),
        AllocError::NothingToAdopt
    );
    let e = a
        .adopt(&svc("ns", "d"), &ips(&["2001:db8::1"]))
        .unwrap_err();
    assert!(matches!(e, AllocError::FamilyChanged { .. }), "{e}");
    a.check_consistency().unwrap();
}

// ------------------------------------------------------------ explain

#[test]
fn explain_lists_every_pool_with_a_reason() {
    let mut off = pool("manual", &["192.0.2.0/30"]);
    off.auto_assign = false;
    let mut a = alloc_with(vec![
        off,
        with_sa(pool("team", &["198.51.100.0/32"]), ns_sa(1, &["team"])),
        pool("v6", &["2001:db8::/120"]),
        pool("full", &["203.0.113.0/32"]),
    ]);
    got(&mut a, &svc("x", "filler"));
    let r = svc("ns", "web");
    let e = err(&mut a, &r);
    assert!(matches!(e, AllocError::NoAvailableIps { .. }));
    let text = a.explain(&r.key).unwrap().to_string();
    for want in [
        "service ns/web wants IPv4; holds nothing",
        "pool full: exhausted (IPv4)",
        "pool v6: has no IPv4 addresses",
        "pool manual: autoAssign is off",
        "pool team: not selected by its serviceAllocation: namespace \"ns\" is neither listed nor selected",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
    let held = a
        .explain(&ServiceKey::new("x", "filler"))
        .unwrap()
        .to_string();
    assert!(held.contains("pool full: holds 203.0.113.0"), "{held}");
}

// ------------------------------------------------------------ property tests

mod props {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Assign(usize),
        Release(usize),
        SetPools(Vec<Pool>),
    }

    fn arb_pool(idx: usize) -> impl Strategy<Value = Pool> {
        let v4 = (0u8..4, 28u8..=32).prop_map(|(b, len)| net(&format!("192.0.2.{}/{len}", b * 64)));
        let v6 = (0u8..4, 124u8..=128).prop_map(|(b, len)| net(&format!("2001:db8:{b}::/{len}")));
        (
            proptest::collection::vec(prop_oneof![v4, v6], 1..3),
            any::<bool>(),
            any::<bool>(),
            proptest::option::of((0i32..3, any::<bool>(), any::<bool>())),
        )
            .prop_map(move |(cidrs, auto, buggy, sa)| {
                let mut p = Pool::new(format!("pool{idx}"), cidrs);
                p.auto_assign = auto;
                p.avoid_buggy_ips = buggy;
                p.service_allocation = sa.map(|(prio, ns, lbl)| ServiceAllocation {
                    priority: prio,
                    namespaces: if ns {
                        ["ns0".to_string()].into()
                    } else {
                        Default::default()
                    },
                    service_selectors: if lbl {
                        vec![sel(&[("tier", "a")])]
                    } else {
                        vec![]
                    },
                    ..Default::default()
                });
                p
            })
    }

    /// Pools with pairwise-disjoint CIDRs (config validation guarantees that).
    fn arb_pools() -> impl Strategy<Value = Vec<Pool>> {
        (arb_pool(0), arb_pool(1), arb_pool(2)).prop_map(|(a, b, c)| {
            let mut seen: Vec<IpNet> = Vec::new();
            let mut out = Vec::new();
            for mut p in [a, b, c] {
                p.cidrs.retain(|n| {
                    let ok = !seen.iter().any(|s| s.contains(n) || n.contains(s));
                    if ok {
                        seen.push(*n);
                    }
                    ok
                });
                if !p.cidrs.is_empty() {
                    out.push(p);
                }
            }
            out
        })
    }

    fn arb_request(i: usize) -> impl Strategy<Value = ServiceRequest> {
        (
            0u8..2,
            0u8..4,
            0u8..3,
            proptest::collection::vec((0u8..2, 0i32..3), 0..3),
            any::<bool>(),
            proptest::option::of(0u8..4),
            proptest::option::of(0usize..3),
        )
            .prop_map(move |(ns, fam, key, ports, tier, want_ip, want_pool)| {
                let mut r =
                    ServiceRequest::simple(ServiceKey::new(format!("ns{ns}"), format!("s{i}")));
                r.families = match fam {
                    0 => FamilyRequest::Single(IpFamily::V4),
                    1 => FamilyRequest::Single(IpFamily::V6),
                    2 => FamilyRequest::RequireDual,
                    _ => FamilyRequest::PreferDual {
                        primary: IpFamily::V6,
                    },
                };
                r.sharing_key = ["", "k", "j"][key as usize].into();
                let mut ports: Vec<Port> = ports
                    .into_iter()
                    .map(|(p, n)| Port::new(["TCP", "UDP"][p as usize], 80 + n))
                    .collect();
                ports.sort();
                ports.dedup();
                r.ports = ports;
                if tier {
                    r.labels.insert("tier".into(), "a".into());
                }
                if let (Some(o), FamilyRequest::Single(f)) = (want_ip, r.families) {
                    r.requested_ips = vec![match f {
                        IpFamily::V4 => ip(&format!("192.0.2.{}", o)),
                        IpFamily::V6 => ip(&format!("2001:db8:{o}::1")),
                    }];
                }
                r.requested_pool = want_pool.map(|p| format!("pool{p}"));
                r
            })
    }

    fn arb_case() -> impl Strategy<Value = (Vec<Pool>, Vec<ServiceRequest>, Vec<Op>)> {
        let reqs = (0..12).map(arb_request).collect::<Vec<_>>();
        (arb_pools(), reqs).prop_flat_map(|(pools, reqs)| {
            let op = prop_oneof![
                6 => (0usize..12).prop_map(Op::Assign),
                2 => (0usize..12).prop_map(Op::Release),
                1 => arb_pools().prop_map(Op::SetPools),
            ];
            (
                Just(pools),
                Just(reqs),
                proptest::collection::vec(op, 1..40),
            )
        })
    }

    fn run(pools: &[Pool], reqs: &[ServiceRequest], ops: &[Op]) -> (Allocator, Vec<String>) {
        let mut a = Allocator::new();
        a.set_pools(pools.to_vec());
        let mut log = Vec::new();
        for op in ops {
            match op {
                Op::Assign(i) => log.push(format!("{:?}", a.assign(&reqs[*i]))),
                Op::Release(i) => log.push(format!("{:?}", a.release(&reqs[*i].key))),
                Op::SetPools(p) => log.push(format!("{:?}", a.set_pools(p.clone()))),
            }
        }
        (a, log)
    }

    fn check_invariants(a: &Allocator) -> Result<(), TestCaseError> {
        a.check_consistency().map_err(TestCaseError::fail)?;
        for (key, ips, pool_name) in a.assignments() {
            let req = &a.requests[key];
            let pool = &a.pools[a.pool_index[pool_name]];
            prop_assert!(
                req.families.accepts(ips),
                "{key} holds {ips:?} for {:?}",
                req.families
            );
            prop_assert!(
                pool.selection_problem(req).is_none(),
                "{key} not selected by {pool_name}"
            );
            for ip in ips {
                prop_assert!(pool.contains(ip), "{key} holds {ip} outside {pool_name}");
                let holders = a.holders(ip);
                if holders.len() > 1 {
                    let mut ports = BTreeSet::new();
                    for h in &holders {
                        let other = &a.requests[h];
                        prop_assert!(
                            !other.sharing_key.is_empty(),
                            "{h} shares {ip} without a key"
                        );
                        prop_assert_eq!(&other.sharing_key, &req.sharing_key);
                        prop_assert_eq!(&other.backend_key, &req.backend_key);
                        for p in &a.held[h].ports {
                            prop_assert!(ports.insert(p.clone()), "{p} used twice on {ip}");
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn snapshot(a: &Allocator) -> Vec<(ServiceKey, Vec<IpAddr>, String)> {
        a.assignments()
            .map(|(k, i, p)| (k.clone(), i.to_vec(), p.to_string()))
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

        #[test]
        fn invariants_hold_after_every_operation((pools, reqs, ops) in arb_case()) {
            let mut a = Allocator::new();
            a.set_pools(pools.clone());
            for op in &ops {
                match op {
                    Op::Assign(i) => { let _ = a.assign(&reqs[*i]); }
                    Op::Release(i) => { a.release(&reqs[*i].key); }
                    Op::SetPools(p) => { a.set_pools(p.clone()); }
                }
                check_invariants(&a)?;
            }
        }

        #[test]
        fn same_inputs_same_results((pools, reqs, ops) in arb_case()) {
            let (a, log_a) = run(&pools, &reqs, &ops);
            let (b, log_b) = run(&pools, &reqs, &ops);
            prop_assert_eq!(log_a, log_b);
            prop_assert_eq!(snapshot(&a), snapshot(&b));
        }

        #[test]
        fn restart_by_adoption_changes_nothing((pools, reqs, ops) in arb_case()) {
            let (mut a, _) = run(&pools, &reqs, &ops);
            // Settle: every known Service reconciled once, as the controller would.
            for _ in 0..2 {
                let known: Vec<ServiceRequest> = a.requests.values().cloned().collect();
                for r in &known {
                    let _ = a.assign(r);
                }
            }
            let before = snapshot(&a);
            let current_pools: Vec<Pool> = a.pools.iter().map(|p| p.pool.clone()).collect();
            let mut b = Allocator::new();
            b.set_pools(current_pools);
            let items: Vec<(ServiceRequest, Vec<IpAddr>)> = a
                .assignments()
                .map(|(k, ips, _)| (a.requests[k].clone(), ips.to_vec()))
                .collect();
            for (key, res) in b.adopt_all(items) {
                prop_assert!(res.is_ok(), "{key}: {res:?}");
            }
            for r in a.requests.values() {
                let was_held = a.held.contains_key(&r.key);
                let res = b.assign(r);
                if was_held {
                    prop_assert_eq!(res.map(|x| x.outcome), Ok(Outcome::Unchanged), "{}", r.key);
                }
            }
            prop_assert_eq!(snapshot(&b), before);
            check_invariants(&b)?;
        }
    }
}

// ------------------------------------------------------------ special-purpose addresses

#[test]
fn special_purpose_addresses_are_never_assigned() {
    let mut a = alloc_with(vec![
        pool("a-bcast", &["255.255.255.254/31"]),
        pool("b-zero", &["0.0.0.0/31"]),
        pool("c-lo", &["127.0.0.1/32"]),
        pool("d-mcast", &["224.0.0.0/4", "192.0.2.7/32"]),
        pool(
            "e-v6",
            &["::/127", "ff02::1/128", "fe80::/126", "2001:db8::5/128"],
        ),
    ]);
    let mut got_v4 = Vec::new();
    for i in 0..4 {
        match a.assign(&svc("ns", &format!("s{i}"))) {
            Ok(x) => got_v4.extend(x.ips),
            Err(_) => break,
        }
    }
    a.check_consistency().unwrap();
    assert_eq!(
        got_v4,
        ips(&["255.255.255.254", "192.0.2.7"]),
        "0.0.0.0/8 is skipped, and the multicast /4 in one step"
    );
    assert_eq!(got(&mut a, &svc6("ns", "v6")), ips(&["2001:db8::5"]));
    assert!(a.assign(&svc6("ns", "v6b")).is_err());
    let c = a.counters("a-bcast").unwrap();
    assert_eq!(c.ipv4_addresses_total, 1);
    assert_eq!(a.counters("b-zero").unwrap().ipv4_addresses_total, 0);
    assert_eq!(a.counters("d-mcast").unwrap().ipv4_addresses_total, 1);
    assert_eq!(a.counters("e-v6").unwrap().ipv6_addresses_total, 1);

    // Asking for one by name, or holding one from before, does not work either.
    let mut wants = svc("ns", "wants-lo");
    wants.requested_ips = ips(&["127.0.0.1"]);
    assert!(matches!(
        err(&mut a, &wants),
        AllocError::AddressNotInAnyPool { .. }
    ));
    let mut fresh = alloc_with(vec![pool("b-zero", &["0.0.0.0/30"])]);
    assert!(fresh.adopt(&svc("ns", "old"), &ips(&["0.0.0.0"])).is_err());
}
