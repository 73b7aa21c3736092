//! Pure route bookkeeping for a session: which prefixes to announce or withdraw given what
//! the peer already has (Adj-RIB-Out), packing them into UPDATEs that fit 4096 octets, and
//! applying received UPDATEs to a table of the peer's routes (Adj-RIB-In).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;

use super::fsm::{Family, IPV4_UNICAST, IPV6_UNICAST, Negotiated};
use super::wire::{
    AFI_IPV6, AS_SEQUENCE, AsSegment, Attr, FLAG_EXTENDED_LENGTH, FLAG_OPTIONAL, LargeCommunity,
    MAX_MESSAGE_LEN, Message, MpReach, MpUnreach, ORIGIN_IGP, PathAttribute, SAFI_UNICAST, Update,
    prefix_wire_len,
};

/// What to announce with a prefix.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RouteAttrs {
    /// Next hop; `None` (or one of the other family) means the session's local address.
    pub next_hop: Option<IpAddr>,
    /// LOCAL_PREF, sent on iBGP only (default 100 there).
    pub local_pref: Option<u32>,
    pub med: Option<u32>,
    pub communities: Vec<u32>,
    pub large_communities: Vec<LargeCommunity>,
    /// ASNs of the AS_PATH after our own AS on eBGP, or the whole path on iBGP: an AS-path
    /// prepend, or the path of a route we reflect.
    pub as_path: Vec<u32>,
    /// ORIGINATOR_ID (RFC 4456), sent on iBGP only: set when reflecting a route.
    pub originator_id: Option<Ipv4Addr>,
    /// CLUSTER_LIST (RFC 4456), sent on iBGP only, nearest reflector first.
    pub cluster_list: Vec<Ipv4Addr>,
}

/// The default LOCAL_PREF on iBGP sessions when a route sets none.
pub const DEFAULT_LOCAL_PREF: u32 = 100;

/// A route as announced to the peer: attributes plus the resolved next hop.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Announced {
    pub attrs: RouteAttrs,
    pub next_hop: IpAddr,
}

/// A route the peer announced to us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedRoute {
    pub next_hop: IpAddr,
    pub origin: u8,
    /// The AS_PATH flattened (sets included in order).
    pub as_path: Vec<u32>,
    pub med: Option<u32>,
    pub local_pref: Option<u32>,
    pub communities: Vec<u32>,
    pub large_communities: Vec<LargeCommunity>,
    /// ORIGINATOR_ID, when a route reflector set it (RFC 4456).
    pub originator_id: Option<Ipv4Addr>,
    /// CLUSTER_LIST, nearest reflector first (RFC 4456); empty when absent.
    pub cluster_list: Vec<Ipv4Addr>,
    /// Kept from a session that went down with graceful restart negotiated, not yet
    /// re-announced by the peer (RFC 4724 §4.2).
    pub stale: bool,
}

fn family_of(p: &IpNet) -> (u16, u8) {
    match p {
        IpNet::V4(_) => IPV4_UNICAST,
        IpNet::V6(_) => IPV6_UNICAST,
    }
}

/// The next hop to announce `prefix` with over this session, or `None` when the session has
/// no address of the prefix's family and the route names none.
pub fn resolve_next_hop(prefix: &IpNet, attrs: &RouteAttrs, local: IpAddr) -> Option<IpAddr> {
    let same = |a: &IpAddr| a.is_ipv4() == matches!(prefix, IpNet::V4(_));
    attrs.next_hop.filter(same).or(Some(local).filter(same))
}

/// What the peer should have: the desired routes the session can carry (family negotiated,
/// next hop resolvable), with their resolved next hops.
pub fn outgoing(
    desired: &BTreeMap<IpNet, RouteAttrs>,
    neg: &Negotiated,
) -> BTreeMap<IpNet, Announced> {
    desired
        .iter()
        .filter(|(p, _)| neg.families.contains(&family_of(p)))
        .filter_map(|(p, a)| {
            let next_hop = resolve_next_hop(p, a, neg.local_addr)?;
            Some((
                *p,
                Announced {
                    attrs: a.clone(),
                    next_hop,
                },
            ))
        })
        .collect()
}

/// The changes that turn `have` into `want`: routes to (re)announce and prefixes to withdraw.
pub fn diff(
    have: &BTreeMap<IpNet, Announced>,
    want: &BTreeMap<IpNet, Announced>,
) -> (Vec<(IpNet, Announced)>, Vec<IpNet>) {
    let announce = want
        .iter()
        .filter(|(p, a)| have.get(p) != Some(a))
        .map(|(p, a)| (*p, a.clone()))
        .collect();
    let withdraw = have
        .keys()
        .filter(|p| !want.contains_key(p))
        .copied()
        .collect();
    (announce, withdraw)
}

/// The path attributes for a route (MetalLB's choices: ORIGIN IGP; AS_PATH the route's path,
/// after our AS on eBGP; LOCAL_PREF, ORIGINATOR_ID and CLUSTER_LIST on iBGP only; communities
/// sorted and deduplicated).
fn attributes(a: &Announced, neg: &Negotiated, local_as: u32) -> Vec<PathAttribute> {
    let mut asns = Vec::with_capacity(a.attrs.as_path.len() + 1);
    if !neg.ibgp {
        asns.push(local_as);
    }
    asns.extend_from_slice(&a.attrs.as_path);
    let path = if asns.is_empty() {
        vec![]
    } else {
        vec![AsSegment {
            kind: AS_SEQUENCE,
            asns,
        }]
    };
    let mut attrs = vec![
        PathAttribute::new(Attr::Origin(ORIGIN_IGP)),
        PathAttribute::new(Attr::AsPath(path)),
    ];
    if let IpAddr::V4(nh) = a.next_hop {
        attrs.push(PathAttribute::new(Attr::NextHop(nh)));
    }
    if let Some(med) = a.attrs.med {
        attrs.push(PathAttribute::new(Attr::Med(med)));
    }
    if neg.ibgp {
        attrs.push(PathAttribute::new(Attr::LocalPref(
            a.attrs.local_pref.unwrap_or(DEFAULT_LOCAL_PREF),
        )));
    }
    if neg.ibgp {
        if let Some(id) = a.attrs.originator_id {
            attrs.push(PathAttribute::new(Attr::OriginatorId(id)));
        }
        if !a.attrs.cluster_list.is_empty() {
            attrs.push(PathAttribute::new(Attr::ClusterList(
                a.attrs.cluster_list.clone(),
            )));
        }
    }
    if !a.attrs.communities.is_empty() {
        let mut c = a.attrs.communities.clone();
        c.sort_unstable();
        c.dedup();
        attrs.push(PathAttribute::new(Attr::Communities(c)));
    }
    if !a.attrs.large_communities.is_empty() {
        let mut c = a.attrs.large_communities.clone();
        c.sort_unstable();
        c.dedup();
        attrs.push(PathAttribute::new(Attr::LargeCommunities(c)));
    }
    attrs
}

fn encoded_len(u: &Update, neg: &Negotiated) -> usize {
    // Our own messages always encode; an error here would be a bug caught by tests.
    Message::Update(u.clone())
        .to_bytes(neg.ctx)
        .map(|b| b.len())
        .unwrap_or(MAX_MESSAGE_LEN)
}

/// Splits prefixes into chunks whose encoded size fits `budget` octets each.
fn chunks(prefixes: Vec<IpNet>, budget: usize) -> Vec<Vec<IpNet>> {
    let mut out = vec![];
    let mut cur = vec![];
    let mut used = 0;
    for p in prefixes {
        let l = prefix_wire_len(&p);
        if used + l > budget && !cur.is_empty() {
            out.push(std::mem::take(&mut cur));
            used = 0;
        }
        used += l;
        cur.push(p);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

const MP_FLAGS: u8 = FLAG_OPTIONAL | FLAG_EXTENDED_LENGTH;

/// UPDATEs that announce `announce` and withdraw `withdraw`, each within 4096 octets. Routes
/// with equal attributes share UPDATEs.
pub fn build_updates(
    announce: &[(IpNet, Announced)],
    withdraw: &[IpNet],
    neg: &Negotiated,
    local_as: u32,
) -> Vec<Update> {
    let mut updates = Vec::new();
    let (w4, w6): (Vec<IpNet>, Vec<IpNet>) =
        withdraw.iter().partition(|p| matches!(p, IpNet::V4(_)));
    let empty = encoded_len(&Update::default(), neg);
    for chunk in chunks(w4, MAX_MESSAGE_LEN - empty) {
        let withdrawn = chunk.into_iter().filter_map(|p| match p {
            IpNet::V4(p) => Some(p),
            IpNet::V6(_) => None,
        });
        updates.push(Update {
            withdrawn: withdrawn.collect(),
            ..Update::default()
        });
    }
    let unreach = |withdrawn| Update {
        attributes: vec![PathAttribute {
            flags: MP_FLAGS,
            value: Attr::MpUnreach(MpUnreach {
                afi: AFI_IPV6,
                safi: SAFI_UNICAST,
                withdrawn,
            }),
        }],
        ..Update::default()
    };
    let base = encoded_len(&unreach(vec![]), neg);
    for chunk in chunks(w6, MAX_MESSAGE_LEN - base) {
        updates.push(unreach(chunk));
    }

    let mut groups: BTreeMap<&Announced, Vec<IpNet>> = BTreeMap::new();
    for (p, a) in announce {
        groups.entry(a).or_default().push(*p);
    }
    for (a, prefixes) in groups {
        let attrs = attributes(a, neg, local_as);
        let make = |nlri: Vec<IpNet>| match a.next_hop {
            IpAddr::V4(_) => Update {
                attributes: attrs.clone(),
                nlri: nlri
                    .into_iter()
                    .filter_map(|p| if let IpNet::V4(p) = p { Some(p) } else { None })
                    .collect(),
                ..Update::default()
            },
            IpAddr::V6(_) => {
                let mut attributes = attrs.clone();
                // MP_REACH goes right after the well-known attributes, as peers usually send it.
                attributes.insert(
                    2,
                    PathAttribute {
                        flags: MP_FLAGS,
                        value: Attr::MpReach(MpReach {
                            afi: AFI_IPV6,
                            safi: SAFI_UNICAST,
                            next_hops: vec![a.next_hop],
                            nlri,
                        }),
                    },
                );
                Update {
                    attributes,
                    ..Update::default()
                }
            }
        };
        let base = encoded_len(&make(vec![]), neg);
        for chunk in chunks(prefixes, MAX_MESSAGE_LEN - base) {
            updates.push(make(chunk));
        }
    }
    updates
}

/// Applies a received UPDATE to the peer's routes. Routes of an UPDATE without a next hop for
/// their family are ignored.
pub fn apply_update(received: &mut BTreeMap<IpNet, ReceivedRoute>, u: &Update) {
    apply_update_with(received, u, |_| true);
}

/// RFC 4456 §8 loop detection: a route reflected back to us carries our BGP identifier as
/// ORIGINATOR_ID, or, when we reflect routes ourselves, our cluster ID in its CLUSTER_LIST.
pub fn reflection_loop(
    r: &ReceivedRoute,
    router_id: Ipv4Addr,
    cluster_id: Option<Ipv4Addr>,
) -> bool {
    r.originator_id == Some(router_id) || cluster_id.is_some_and(|c| r.cluster_list.contains(&c))
}

/// Like [`apply_update`], but `accept` sees (and may adjust) the announced route first; one
/// it refuses is ignored, which withdraws what the peer had for the prefix, as the
/// announcement replaces it.
pub fn apply_update_with(
    received: &mut BTreeMap<IpNet, ReceivedRoute>,
    u: &Update,
    mut accept: impl FnMut(&mut ReceivedRoute) -> bool,
) {
    for p in &u.withdrawn {
        received.remove(&IpNet::V4(*p));
    }
    let mut route = ReceivedRoute {
        next_hop: IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        origin: ORIGIN_IGP,
        as_path: vec![],
        med: None,
        local_pref: None,
        communities: vec![],
        large_communities: vec![],
        originator_id: None,
        cluster_list: vec![],
        stale: false,
    };
    let mut v4_next_hop = None;
    let mut mp_reach = None;
    let mut as4_path = None;
    for a in &u.attributes {
        match &a.value {
            Attr::Origin(o) => route.origin = *o,
            Attr::AsPath(segs) => route.as_path = flatten(segs),
            Attr::NextHop(nh) => v4_next_hop = Some(IpAddr::V4(*nh)),
            Attr::Med(m) => route.med = Some(*m),
            Attr::LocalPref(l) => route.local_pref = Some(*l),
            Attr::Communities(c) => route.communities = c.clone(),
            Attr::LargeCommunities(c) => route.large_communities = c.clone(),
            Attr::OriginatorId(id) => route.originator_id = Some(*id),
            Attr::ClusterList(ids) => route.cluster_list = ids.clone(),
            Attr::MpReach(m) => mp_reach = Some(m),
            Attr::As4Path(segs) => as4_path = Some(flatten(segs)),
            Attr::MpUnreach(m) => {
                for p in &m.withdrawn {
                    received.remove(p);
                }
            }
            _ => {}
        }
    }
    if let Some(as4) = as4_path {
        route.as_path = merge_as4_path(&route.as_path, &as4);
    }
    if !accept(&mut route) {
        for p in u.nlri.iter().map(|p| IpNet::V4(*p)) {
            received.remove(&p);
        }
        for p in mp_reach.iter().flat_map(|m| &m.nlri) {
            received.remove(p);
        }
        return;
    }
    if let Some(nh) = v4_next_hop {
        for p in &u.nlri {
            received.insert(
                IpNet::V4(*p),
                ReceivedRoute {
                    next_hop: nh,
                    ..route.clone()
                },
            );
        }
    }
    if let Some(m) = mp_reach
        && let Some(nh) = m.next_hops.first()
    {
        for p in &m.nlri {
            received.insert(
                *p,
                ReceivedRoute {
                    next_hop: *nh,
                    ..route.clone()
                },
            );
        }
    }
}

fn flatten(segs: &[AsSegment]) -> Vec<u32> {
    segs.iter().flat_map(|s| s.asns.iter().copied()).collect()
}

/// RFC 6793 §4.2.3: a 2-octet peer's AS_PATH carries AS_TRANS for 4-octet ASNs and the real
/// path in AS4_PATH; the leading ASNs AS4_PATH lacks come from AS_PATH. An AS4_PATH longer
/// than AS_PATH is ignored.
pub fn merge_as4_path(as_path: &[u32], as4_path: &[u32]) -> Vec<u32> {
    if as4_path.len() > as_path.len() {
        return as_path.to_vec();
    }
    let mut merged = as_path[..as_path.len() - as4_path.len()].to_vec();
    merged.extend_from_slice(as4_path);
    merged
}

/// End-of-RIB markers for the negotiated families (sent after the initial table when graceful
/// restart is negotiated).
pub fn end_of_rib_markers(neg: &Negotiated) -> Vec<Update> {
    neg.families
        .iter()
        .map(|&(afi, safi)| Update::end_of_rib(afi, safi))
        .collect()
}

/// Graceful restart, receiving side (RFC 4724 §4.2), at session loss: the routes of the
/// families the peer's graceful restart capability listed are kept, marked stale; the others
/// are removed. Returns whether anything changed.
pub fn mark_stale(received: &mut BTreeMap<IpNet, ReceivedRoute>, retained: &[Family]) -> bool {
    let before = received.len();
    let mut changed = false;
    received.retain(|p, r| {
        let keep = retained.contains(&family_of(p));
        if keep && !r.stale {
            r.stale = true;
            changed = true;
        }
        keep
    });
    changed || received.len() != before
}

/// Removes the stale routes of `family` (at the peer's End-of-RIB for it, or when the new
/// session cannot refresh it). Returns how many went.
pub fn sweep_stale(received: &mut BTreeMap<IpNet, ReceivedRoute>, family: Family) -> usize {
    let before = received.len();
    received.retain(|p, r| !(r.stale && family_of(p) == family));
    before - received.len()
}

/// Removes every stale route (the restart time passed). Returns how many went.
pub fn sweep_all_stale(received: &mut BTreeMap<IpNet, ReceivedRoute>) -> usize {
    let before = received.len();
    received.retain(|_, r| !r.stale);
    before - received.len()
}

/// The peer's graceful restart capability, as far as the receiving side needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerRestart {
    /// Seconds the peer asks us to keep its routes after the session is lost.
    pub restart_time: u16,
    /// The families listed, with their forwarding-state (F) bit.
    pub families: Vec<(Family, bool)>,
}

impl PeerRestart {
    pub fn from_open(open: &super::wire::Open) -> Option<Self> {
        open.capabilities().find_map(|c| match c {
            super::wire::Capability::GracefulRestart { time, families, .. } => Some(PeerRestart {
                restart_time: *time,
                families: families
                    .iter()
                    .map(|f| ((f.afi, f.safi), f.flags & super::wire::GR_FORWARDING != 0))
                    .collect(),
            }),
            _ => None,
        })
    }
}

/// The stale families the new session will not refresh, to sweep as it comes up: all of
/// them when it did not negotiate graceful restart, otherwise those the peer's new
/// capability omits or lists without the forwarding-state bit, or not negotiated at all.
pub fn unrefreshable_families(
    stale: &[Family],
    neg: &Negotiated,
    peer: Option<&PeerRestart>,
) -> Vec<Family> {
    stale
        .iter()
        .copied()
        .filter(|f| {
            let kept = neg.graceful_restart
                && neg.families.contains(f)
                && peer.is_some_and(|p| p.families.contains(&(*f, true)));
            !kept
        })
        .collect()
}

/// The routes a session is to announce, and which prefixes changed since the session last
/// synced, so that a change of a few routes is sent without comparing whole tables.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DesiredRoutes {
    routes: BTreeMap<IpNet, RouteAttrs>,
    /// Prefixes added, changed or removed since the last [`DesiredRoutes::take_changes`].
    changed: BTreeSet<IpNet>,
    /// The table was replaced as a whole since then: every prefix may have changed.
    replaced: bool,
}

/// What changed in the desired routes since the session last looked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DesiredChanges {
    /// The whole table may differ: compare all of it.
    All,
    /// Only these prefixes.
    Prefixes(BTreeSet<IpNet>),
}

impl DesiredRoutes {
    pub fn new(routes: BTreeMap<IpNet, RouteAttrs>) -> Self {
        DesiredRoutes {
            routes,
            changed: BTreeSet::new(),
            replaced: true,
        }
    }

    pub fn routes(&self) -> &BTreeMap<IpNet, RouteAttrs> {
        &self.routes
    }

    /// Replaces the whole table.
    pub fn replace(&mut self, routes: BTreeMap<IpNet, RouteAttrs>) {
        self.routes = routes;
        self.changed.clear();
        self.replaced = true;
    }

    /// Sets (`Some`) or removes (`None`) single routes; returns whether anything changed.
    pub fn update(
        &mut self,
        changes: impl IntoIterator<Item = (IpNet, Option<RouteAttrs>)>,
    ) -> bool {
        let mut any = false;
        for (prefix, attrs) in changes {
            let differs = match attrs {
                Some(a) => match self.routes.get_mut(&prefix) {
                    Some(have) if *have == a => false,
                    Some(have) => {
                        *have = a;
                        true
                    }
                    None => {
                        self.routes.insert(prefix, a);
                        true
                    }
                },
                None => self.routes.remove(&prefix).is_some(),
            };
            if differs {
                any = true;
                if !self.replaced {
                    self.changed.insert(prefix);
                }
            }
        }
        any
    }

    /// What changed since the previous call, and forgets it.
    pub fn take_changes(&mut self) -> DesiredChanges {
        let changed = std::mem::take(&mut self.changed);
        if std::mem::take(&mut self.replaced) {
            DesiredChanges::All
        } else {
            DesiredChanges::Prefixes(changed)
        }
    }
}

/// Like [`diff`] of `have` against [`outgoing`]`(desired)`, but looking only at `prefixes`
/// (the others known to be in sync): the cost follows the change, not the table.
pub fn diff_prefixes<'a>(
    have: &BTreeMap<IpNet, Announced>,
    desired: &BTreeMap<IpNet, RouteAttrs>,
    prefixes: impl IntoIterator<Item = &'a IpNet>,
    neg: &Negotiated,
) -> (Vec<(IpNet, Announced)>, Vec<IpNet>) {
    let mut announce = Vec::new();
    let mut withdraw = Vec::new();
    for p in prefixes {
        let want = desired
            .get(p)
            .filter(|_| neg.families.contains(&family_of(p)))
            .and_then(|a| {
                Some(Announced {
                    attrs: a.clone(),
                    next_hop: resolve_next_hop(p, a, neg.local_addr)?,
                })
            });
        match (have.get(p), want) {
            (Some(h), Some(w)) if *h == w => {}
            (_, Some(w)) => announce.push((*p, w)),
            (Some(_), None) => withdraw.push(*p),
            (None, None) => {}
        }
    }
    (announce, withdraw)
}

/// Applies a [`diff`] (or [`diff_prefixes`]) result once it was sent: what the peer has now.
pub fn apply_diff(
    have: &mut BTreeMap<IpNet, Announced>,
    announce: Vec<(IpNet, Announced)>,
    withdraw: &[IpNet],
) {
    for p in withdraw {
        have.remove(p);
    }
    have.extend(announce);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bgp::wire::WireContext;

    fn neg(ibgp: bool, local: &str) -> Negotiated {
        Negotiated {
            peer_as: if ibgp { 64512 } else { 64513 },
            peer_id: Ipv4Addr::new(192, 0, 2, 2),
            local_id: Ipv4Addr::new(192, 0, 2, 1),
            local_addr: local.parse().unwrap(),
            hold_time: 90,
            keepalive_time: 30,
            ctx: WireContext::FOUR_OCTET,
            families: vec![IPV4_UNICAST, IPV6_UNICAST],
            route_refresh: true,
            graceful_restart: false,
            ibgp,
        }
    }

    fn desired(entries: &[(&str, RouteAttrs)]) -> BTreeMap<IpNet, RouteAttrs> {
        entries
            .iter()
            .map(|(p, a)| (p.parse().unwrap(), a.clone()))
            .collect()
    }

    #[test]
    fn as4_path_restores_four_octet_asns() {
        assert_eq!(
            merge_as4_path(&[64512, 23456, 23456], &[4_200_000_000, 4_200_000_001]),
            vec![64512, 4_200_000_000, 4_200_000_001]
        );
        assert_eq!(merge_as4_path(&[23456], &[1, 2]), vec![23456]);
    }

    #[test]
    fn diff_announces_changes_and_withdraws_removals() {
        let n = neg(false, "192.0.2.1");
        let a = RouteAttrs {
            communities: vec![1],
            ..RouteAttrs::default()
        };
        let have = outgoing(
            &desired(&[
                ("203.0.113.1/32", RouteAttrs::default()),
                ("203.0.113.2/32", RouteAttrs::default()),
            ]),
            &n,
        );
        let want = outgoing(
            &desired(&[
                ("203.0.113.2/32", a.clone()),
                ("203.0.113.3/32", RouteAttrs::default()),
            ]),
            &n,
        );
        let (ann, wd) = diff(&have, &want);
        assert_eq!(
            ann.iter().map(|(p, _)| p.to_string()).collect::<Vec<_>>(),
            ["203.0.113.2/32", "203.0.113.3/32"]
        );
        assert_eq!(wd, vec!["203.0.113.1/32".parse::<IpNet>().unwrap()]);
        assert_eq!(diff(&want, &want), (vec![], vec![]));
    }

    #[test]
    fn prefixes_without_a_usable_next_hop_are_left_out() {
        let n = neg(false, "192.0.2.1");
        let d = desired(&[
            ("2001:db8:1::/64", RouteAttrs::default()),
            (
                "2001:db8:2::/64",
                RouteAttrs {
                    next_hop: Some("2001:db8::1".parse().unwrap()),
                    ..RouteAttrs::default()
                },
            ),
        ]);
        let out = outgoing(&d, &n);
        assert_eq!(out.len(), 1);
        assert_eq!(
            out.values().next().unwrap().next_hop,
            "2001:db8::1".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn ebgp_and_ibgp_attributes() {
        let a = RouteAttrs {
            local_pref: Some(250),
            med: Some(5),
            communities: vec![3, 1, 3],
            large_communities: vec![LargeCommunity {
                global: 64512,
                local1: 1,
                local2: 2,
            }],
            ..RouteAttrs::default()
        };
        let d = desired(&[("203.0.113.0/24", a.clone()), ("2001:db8::/64", a)]);
        for ibgp in [false, true] {
            let n = neg(ibgp, "192.0.2.1");
            let (ann, _) = diff(&BTreeMap::new(), &outgoing(&d, &n));
            let ups = build_updates(&ann, &[], &n, 64512);
            assert_eq!(ups.len(), 1);
            let u = &ups[0];
            assert_eq!(u.attr(crate::bgp::wire::ATTR_LOCAL_PREF).is_some(), ibgp);
            let path = if ibgp {
                vec![]
            } else {
                vec![AsSegment {
                    kind: AS_SEQUENCE,
                    asns: vec![64512],
                }]
            };
            assert_eq!(
                u.attr(crate::bgp::wire::ATTR_AS_PATH),
                Some(&Attr::AsPath(path))
            );
            assert_eq!(
                u.attr(crate::bgp::wire::ATTR_COMMUNITIES),
                Some(&Attr::Communities(vec![1, 3]))
            );
            assert_eq!(
                u.attr(crate::bgp::wire::ATTR_NEXT_HOP),
                Some(&Attr::NextHop(Ipv4Addr::new(192, 0, 2, 1)))
            );
            // The IPv6 prefix has no IPv6 next hop on this IPv4 session.
            assert!(u.attr(crate::bgp::wire::ATTR_MP_REACH).is_none());
        }
    }

    #[test]
    fn as_path_and_reflection_attributes_are_sent_and_received() {
        let a = RouteAttrs {
            as_path: vec![64600, 64601],
            originator_id: Some(Ipv4Addr::new(192, 0, 2, 7)),
            cluster_list: vec![Ipv4Addr::new(192, 0, 2, 1)],
            ..RouteAttrs::default()
        };
        let d = desired(&[("203.0.113.0/24", a)]);
        for (ibgp, path) in [
            (false, vec![64512, 64600, 64601]),
            (true, vec![64600, 64601]),
        ] {
            let n = neg(ibgp, "192.0.2.1");
            let (ann, _) = diff(&BTreeMap::new(), &outgoing(&d, &n));
            let ups = build_updates(&ann, &[], &n, 64512);
            let u = &ups[0];
            assert_eq!(
                u.attr(crate::bgp::wire::ATTR_AS_PATH),
                Some(&Attr::AsPath(vec![AsSegment {
                    kind: AS_SEQUENCE,
                    asns: path.clone()
                }]))
            );
            // RFC 4456: the reflection attributes never leave the AS.
            assert_eq!(u.attr(crate::bgp::wire::ATTR_ORIGINATOR_ID).is_some(), ibgp);
            assert_eq!(u.attr(crate::bgp::wire::ATTR_CLUSTER_LIST).is_some(), ibgp);
            let mut rib = BTreeMap::new();
            apply_update(&mut rib, u);
            let r = &rib[&"203.0.113.0/24".parse::<IpNet>().unwrap()];
            assert_eq!(r.as_path, path);
            assert!(!r.stale);
            if ibgp {
                assert_eq!(r.originator_id, Some(Ipv4Addr::new(192, 0, 2, 7)));
                assert_eq!(r.cluster_list, vec![Ipv4Addr::new(192, 0, 2, 1)]);
            } else {
                assert_eq!((r.originator_id, r.cluster_list.len()), (None, 0));
            }
        }
    }

    fn received_table(prefixes: &[&str]) -> BTreeMap<IpNet, ReceivedRoute> {
        let n = neg(false, "192.0.2.1");
        let mut rib = BTreeMap::new();
        for p in prefixes {
            let nh = if p.contains(':') {
                "2001:db8::2"
            } else {
                "192.0.2.2"
            };
            let d = desired(&[(
                p,
                RouteAttrs {
                    next_hop: Some(nh.parse().unwrap()),
                    ..RouteAttrs::default()
                },
            )]);
            let (ann, _) = diff(&BTreeMap::new(), &outgoing(&d, &n));
            for u in build_updates(&ann, &[], &n, 64513) {
                apply_update(&mut rib, &u);
            }
        }
        rib
    }

    fn stale_of(rib: &BTreeMap<IpNet, ReceivedRoute>) -> Vec<(String, bool)> {
        rib.iter().map(|(p, r)| (p.to_string(), r.stale)).collect()
    }

    #[test]
    fn graceful_restart_keeps_routes_stale_until_refreshed_and_swept() {
        let mut rib = received_table(&["203.0.113.0/24", "198.51.100.0/24", "2001:db8:1::/64"]);
        // Only IPv4 was in the peer's capability: IPv6 routes go at once.
        assert!(mark_stale(&mut rib, &[IPV4_UNICAST]));
        assert_eq!(
            stale_of(&rib),
            [
                ("198.51.100.0/24".into(), true),
                ("203.0.113.0/24".into(), true)
            ]
        );
        assert!(
            !mark_stale(&mut rib, &[IPV4_UNICAST]),
            "nothing new to mark"
        );
        // The peer re-announces one route: it is fresh again.
        let fresh = received_table(&["203.0.113.0/24", "2001:db8:2::/64"]);
        rib.extend(fresh);
        assert_eq!(sweep_stale(&mut rib, IPV6_UNICAST), 0);
        assert_eq!(
            sweep_stale(&mut rib, IPV4_UNICAST),
            1,
            "End-of-RIB for IPv4"
        );
        assert_eq!(
            stale_of(&rib),
            [
                ("203.0.113.0/24".into(), false),
                ("2001:db8:2::/64".into(), false)
            ]
        );
        mark_stale(&mut rib, &[IPV4_UNICAST, IPV6_UNICAST]);
        assert_eq!(sweep_all_stale(&mut rib), 2);
        assert!(rib.is_empty());
    }

    #[test]
    fn stale_families_the_new_session_cannot_refresh() {
        let mut n = neg(false, "192.0.2.1");
        let both = [IPV4_UNICAST, IPV6_UNICAST];
        let cap = |f4: bool, f6: Option<bool>| PeerRestart {
            restart_time: 120,
            families: [Some((IPV4_UNICAST, f4)), f6.map(|f| (IPV6_UNICAST, f))]
                .into_iter()
                .flatten()
                .collect(),
        };
        // No graceful restart in the new session: everything goes.
        assert_eq!(
            unrefreshable_families(&both, &n, Some(&cap(true, Some(true)))),
            both
        );
        n.graceful_restart = true;
        assert_eq!(
            unrefreshable_families(&both, &n, Some(&cap(true, Some(true)))),
            []
        );
        assert_eq!(unrefreshable_families(&both, &n, None), both);
        // F bit clear for IPv4, IPv6 not listed.
        assert_eq!(
            unrefreshable_families(&both, &n, Some(&cap(false, None))),
            both
        );
        assert_eq!(
            unrefreshable_families(&both, &n, Some(&cap(true, Some(false)))),
            [IPV6_UNICAST]
        );
        // A family the new session did not negotiate.
        n.families = vec![IPV4_UNICAST];
        assert_eq!(
            unrefreshable_families(&both, &n, Some(&cap(true, Some(true)))),
            [IPV6_UNICAST]
        );
    }

    #[test]
    fn reflected_loops_are_ignored() {
        let me = Ipv4Addr::new(192, 0, 2, 1);
        let cluster = Ipv4Addr::new(192, 0, 2, 100);
        let n = neg(true, "192.0.2.2");
        let announce = |originator: Option<Ipv4Addr>, clusters: Vec<Ipv4Addr>| {
            let a = RouteAttrs {
                originator_id: originator,
                cluster_list: clusters,
                ..RouteAttrs::default()
            };
            let (ann, _) = diff(
                &BTreeMap::new(),
                &outgoing(&desired(&[("203.0.113.0/24", a)]), &n),
            );
            build_updates(&ann, &[], &n, 64512).remove(0)
        };
        let check = |r: &mut ReceivedRoute| !reflection_loop(r, me, Some(cluster));
        let mut rib = BTreeMap::new();
        apply_update_with(
            &mut rib,
            &announce(Some(Ipv4Addr::new(192, 0, 2, 7)), vec![]),
            check,
        );
        assert_eq!(rib.len(), 1);
        // Our own route back: ignored, and it replaces (withdraws) the one before.
        apply_update_with(&mut rib, &announce(Some(me), vec![]), check);
        assert!(rib.is_empty());
        apply_update_with(
            &mut rib,
            &announce(None, vec![Ipv4Addr::new(192, 0, 2, 9), cluster]),
            check,
        );
        assert!(rib.is_empty());
        apply_update_with(
            &mut rib,
            &announce(None, vec![Ipv4Addr::new(192, 0, 2, 9)]),
            check,
        );
        assert_eq!(rib.len(), 1);
        // Without a cluster ID of ours only the originator counts.
        assert!(!reflection_loop(
            &rib.values().next().unwrap().clone(),
            me,
            None
        ));
    }

    #[test]
    fn many_prefixes_are_split_below_4096_octets_and_parse_back() {
        let n6 = neg(false, "2001:db8::1");
        let n4 = neg(false, "192.0.2.1");
        let mut d = BTreeMap::new();
        for i in 0..3000u32 {
            d.insert(
                IpNet::V4(ipnet::Ipv4Net::new(Ipv4Addr::from(0xcb00_0000 + (i << 4)), 28).unwrap()),
                RouteAttrs::default(),
            );
            d.insert(
                format!("2001:db8:{:x}::/48", i).parse().unwrap(),
                RouteAttrs::default(),
            );
        }
        for n in [n4, n6] {
            let want = outgoing(&d, &n);
            let (ann, _) = diff(&BTreeMap::new(), &want);
            let withdraw: Vec<IpNet> = want.keys().copied().collect();
            let mut rib = BTreeMap::new();
            let ups = build_updates(&ann, &[], &n, 64512);
            assert!(ups.len() > 1);
            for u in &ups {
                let bytes = Message::Update(u.clone()).to_bytes(n.ctx).expect("fits");
                let (Message::Update(back), _) = Message::parse(&bytes, n.ctx).unwrap() else {
                    panic!()
                };
                apply_update(&mut rib, &back);
            }
            assert_eq!(rib.len(), 3000);
            for u in build_updates(&[], &withdraw, &n, 64512) {
                let bytes = Message::Update(u.clone()).to_bytes(n.ctx).expect("fits");
                let (Message::Update(back), _) = Message::parse(&bytes, n.ctx).unwrap() else {
                    panic!()
                };
                apply_update(&mut rib, &back);
            }
            assert!(rib.is_empty());
        }
    }

    #[test]
    fn received_updates_build_the_peer_table() {
        let n = neg(true, "2001:db8::1");
        let a = RouteAttrs {
            local_pref: Some(300),
            communities: vec![7],
            ..RouteAttrs::default()
        };
        let (ann, _) = diff(
            &BTreeMap::new(),
            &outgoing(&desired(&[("2001:db8:5::/64", a)]), &n),
        );
        let mut rib = BTreeMap::new();
        for u in build_updates(&ann, &[], &n, 64512) {
            apply_update(&mut rib, &u);
        }
        let r = &rib[&"2001:db8:5::/64".parse::<IpNet>().unwrap()];
        assert_eq!(r.next_hop, "2001:db8::1".parse::<IpAddr>().unwrap());
        assert_eq!((r.local_pref, r.communities.clone()), (Some(300), vec![7]));
    }

    #[test]
    fn desired_routes_track_changed_prefixes() {
        let p = |s: &str| s.parse::<IpNet>().unwrap();
        let a = RouteAttrs {
            communities: vec![7],
            ..RouteAttrs::default()
        };
        let mut d = DesiredRoutes::new(desired(&[("203.0.113.1/32", RouteAttrs::default())]));
        assert_eq!(
            d.take_changes(),
            DesiredChanges::All,
            "a new table is sent whole"
        );
        assert_eq!(d.take_changes(), DesiredChanges::Prefixes(BTreeSet::new()));
        // Setting a route to what it is already is no change.
        assert!(!d.update([(p("203.0.113.1/32"), Some(RouteAttrs::default()))]));
        assert!(!d.update([(p("203.0.113.9/32"), None)]));
        assert!(d.update([
            (p("203.0.113.1/32"), Some(a.clone())),
            (p("2001:db8::1/128"), Some(RouteAttrs::default())),
        ]));
        assert!(d.update([(p("2001:db8::1/128"), None)]));
        assert_eq!(
            d.take_changes(),
            DesiredChanges::Prefixes([p("203.0.113.1/32"), p("2001:db8::1/128")].into())
        );
        assert_eq!(d.routes(), &desired(&[("203.0.113.1/32", a.clone())]));
        d.update([(p("203.0.113.2/32"), Some(a))]);
        d.replace(BTreeMap::new());
        assert_eq!(d.take_changes(), DesiredChanges::All);
        assert!(d.routes().is_empty());
    }

    fn route_strategy() -> impl proptest::strategy::Strategy<Value = (IpNet, Option<RouteAttrs>)> {
        use proptest::prelude::*;
        const PREFIXES: [&str; 6] = [
            "203.0.113.1/32",
            "203.0.113.2/32",
            "198.51.100.0/24",
            "2001:db8::1/128",
            "2001:db8::2/128",
            "2001:db8:1::/64",
        ];
        const NEXT_HOPS: [Option<&str>; 3] = [None, Some("192.0.2.9"), Some("2001:db8::9")];
        (
            0..PREFIXES.len(),
            proptest::option::weighted(
                0.7,
                (0..NEXT_HOPS.len(), proptest::collection::vec(0..3u32, 0..2)),
            ),
        )
            .prop_map(|(p, attrs)| {
                (
                    PREFIXES[p].parse().unwrap(),
                    attrs.map(|(nh, communities)| RouteAttrs {
                        next_hop: NEXT_HOPS[nh].map(|a| a.parse().unwrap()),
                        communities,
                        ..RouteAttrs::default()
                    }),
                )
            })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(128))]
        /// Sending only the changed prefixes leaves the peer with exactly what a whole-table
        /// diff would, whatever the families and next hops the session can carry.
        #[test]
        fn diff_of_changed_prefixes_equals_the_whole_table_diff(
            first in proptest::collection::vec(route_strategy(), 0..8),
            steps in proptest::collection::vec(proptest::collection::vec(route_strategy(), 0..4), 1..6),
            v4_only in proptest::bool::ANY,
            local in proptest::bool::ANY,
        ) {
            let mut n = neg(false, if local { "192.0.2.1" } else { "2001:db8::1" });
            if v4_only {
                n.families = vec![IPV4_UNICAST];
            }
            let mut d = DesiredRoutes::new(
                first.into_iter().filter_map(|(p, a)| Some((p, a?))).collect(),
            );
            let mut have = BTreeMap::new();
            for changes in steps {
                d.update(changes);
                let (announce, withdraw) = match d.take_changes() {
                    DesiredChanges::All => diff(&have, &outgoing(d.routes(), &n)),
                    DesiredChanges::Prefixes(p) => diff_prefixes(&have, d.routes(), &p, &n),
                };
                let want = outgoing(d.routes(), &n);
                // Nothing is sent that the whole-table diff would not send.
                let (full_announce, full_withdraw) = diff(&have, &want);
                proptest::prop_assert_eq!(&announce, &full_announce);
                proptest::prop_assert_eq!(&withdraw, &full_withdraw);
                apply_diff(&mut have, announce, &withdraw);
                proptest::prop_assert_eq!(&have, &want);
            }
        }
    }
}
