//! Thin async helpers over rtnetlink for the data-path daemons (vxlan, router): links (VXLAN
//! devices with all their parameters), addresses, permanent neighbours, bridge FDB entries
//! and routes tagged with a protocol number of our own; and [`in_netns`] to act inside a
//! named network namespace (tests, benchmarks).
//!
//! Every request is one netlink message awaited on its own ack, so callers issue many
//! requests concurrently over the one socket (netlink-proto pipelines them); that is what
//! programs a thousand peers in milliseconds.
//!
//! Route protocol numbers used by metalnet (see `/etc/iproute2/rt_protos`; these are unused
//! by iproute2 and the routing daemons it lists):
//! - [`RTPROT_METALNET_VXLAN`] = 77 for routes of metalnet-vxlan.
//!
//! metalnet-router uses kube-router's number, 17, so that it finds the routes kube-router
//! left (its own constant, `RTPROT_KUBE_ROUTER`, lives with the router).

use std::net::IpAddr;

use futures::StreamExt;
use ipnet::IpNet;
use rtnetlink::packet_core::{
    NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST,
    NetlinkMessage, NetlinkPayload,
};
/// The address family of neighbour and route requests (re-exported so callers need no
/// netlink crate of their own).
pub use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo as NlLinkInfo, LinkMessage,
};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteProtocol, RouteScope, RouteType,
};

/// The route protocol number of metalnet-vxlan's routes.
pub const RTPROT_METALNET_VXLAN: u8 = 77;
/// The main routing table.
pub const RT_TABLE_MAIN: u8 = 254;

/// A failed netlink request, naming what was attempted.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("opening a netlink socket: {0}")]
    Open(#[source] std::io::Error),
    #[error("{op}: {source}")]
    Request {
        op: String,
        #[source]
        source: std::io::Error,
    },
    #[error("network namespace {name}: {message}")]
    Netns { name: String, message: String },
}

impl NetlinkError {
    /// The kernel's errno, if the kernel refused the request.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Request { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    /// The object did not exist (deleting something already gone).
    pub fn is_not_found(&self) -> bool {
        matches!(
            self.errno(),
            Some(libc::ENOENT) | Some(libc::ESRCH) | Some(libc::ENODEV) | Some(libc::EADDRNOTAVAIL)
        )
    }
}

fn req_err(op: impl Into<String>, e: rtnetlink::Error) -> NetlinkError {
    let source = match e {
        rtnetlink::Error::NetlinkError(m) => m.to_io(),
        other => std::io::Error::other(other.to_string()),
    };
    NetlinkError::Request {
        op: op.into(),
        source,
    }
}

/// A VXLAN device's parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VxlanParams {
    pub name: String,
    pub vni: u32,
    pub port: u16,
    pub local: IpAddr,
    /// The underlay interface (index) the device is bound to.
    pub link: u32,
    pub learning: bool,
    pub mtu: u32,
    pub mac: [u8; 6],
}

/// What the kernel shows about a link.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mtu: u32,
    pub mac: Option<[u8; 6]>,
    pub up: bool,
    pub kind: Option<String>,
    pub vxlan: Option<VxlanInfo>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VxlanInfo {
    pub vni: Option<u32>,
    pub port: Option<u16>,
    pub local: Option<IpAddr>,
    pub link: Option<u32>,
    pub learning: Option<bool>,
}

/// A neighbour (ARP/NDP) or FDB entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Neighbour {
    pub index: u32,
    /// The IP address (neighbour) or the remote VTEP (`dst` of an FDB entry).
    pub ip: Option<IpAddr>,
    pub mac: Option<[u8; 6]>,
    pub permanent: bool,
    /// NTF_SELF: an FDB entry of the device itself (not of a bridge master).
    pub own: bool,
}

/// A route of the main table, as far as the daemons care.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub dst: IpNet,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
    pub onlink: bool,
    pub protocol: u8,
    pub table: u32,
    pub unicast: bool,
}

/// A connection to the kernel's routing netlink.
#[derive(Clone)]
pub struct Netlink {
    handle: rtnetlink::Handle,
}

fn mac6(v: &[u8]) -> Option<[u8; 6]> {
    v.try_into().ok()
}

fn family(ip: &IpAddr) -> AddressFamily {
    if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

impl Netlink {
    /// Opens a socket in the calling thread's network namespace and spawns its driver on the
    /// current tokio runtime.
    pub fn connect() -> Result<Netlink, NetlinkError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(NetlinkError::Open)?;
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    async fn ack(
        &self,
        op: impl Into<String>,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<(), NetlinkError> {
        let mut req = NetlinkMessage::from(msg);
        req.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        let mut handle = self.handle.clone();
        let op = op.into();
        let mut resp = handle.request(req).map_err(|e| req_err(op.clone(), e))?;
        while let Some(m) = resp.next().await {
            if let NetlinkPayload::Error(e) = m.payload
                && e.code.is_some()
            {
                return Err(req_err(op, rtnetlink::Error::NetlinkError(e)));
            }
        }
        Ok(())
    }

    async fn dump(
        &self,
        op: &str,
        msg: RouteNetlinkMessage,
    ) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
        let mut req = NetlinkMessage::from(msg);
        req.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        let mut handle = self.handle.clone();
        let mut resp = handle.request(req).map_err(|e| req_err(op, e))?;
        let mut out = Vec::new();
        while let Some(m) = resp.next().await {
            match m.payload {
                NetlinkPayload::InnerMessage(inner) => out.push(inner),
                NetlinkPayload::Error(e) if e.code.is_some() => {
                    return Err(req_err(op, rtnetlink::Error::NetlinkError(e)));
                }
                _ => {}
            }
        }
        Ok(out)
    }

    // ---- links ----

    pub async fn links(&self) -> Result<Vec<Link>, NetlinkError> {
        let msgs = self
            .dump(
                "list links",
                RouteNetlinkMessage::GetLink(LinkMessage::default()),
            )
            .await?;
        Ok(msgs
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(parse_link(&l)),
                _ => None,
            })
            .collect())
    }

    pub async fn link_by_name(&self, name: &str) -> Result<Option<Link>, NetlinkError> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        match self.get_link(msg, name).await {
            Err(e) if e.is_not_found() => Ok(None),
            other => other.map(Some),
        }
    }

    pub async fn link_by_index(&self, index: u32) -> Result<Option<Link>, NetlinkError> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        match self.get_link(msg, &format!("#{index}")).await {
            Err(e) if e.is_not_found() => Ok(None),
            other => other.map(Some),
        }
    }

    async fn get_link(&self, msg: LinkMessage, what: &str) -> Result<Link, NetlinkError> {
        let op = format!("get link {what}");
        let mut req = NetlinkMessage::from(RouteNetlinkMessage::GetLink(msg));
        req.header.flags = NLM_F_REQUEST;
        let mut handle = self.handle.clone();
        let mut resp = handle.request(req).map_err(|e| req_err(op.clone(), e))?;
        while let Some(m) = resp.next().await {
            match m.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) => {
                    return Ok(parse_link(&l));
                }
                NetlinkPayload::Error(e) if e.code.is_some() => {
                    return Err(req_err(op, rtnetlink::Error::NetlinkError(e)));
                }
                _ => {}
            }
        }
        Err(NetlinkError::Request {
            op,
            source: std::io::Error::from_raw_os_error(libc::ENODEV),
        })
    }

    /// Creates a VXLAN device (down; see [`Netlink::set_up`]).
    pub async fn create_vxlan(&self, p: &VxlanParams) -> Result<(), NetlinkError> {
        let mut data = vec![
            InfoVxlan::Id(p.vni),
            InfoVxlan::Link(p.link),
            InfoVxlan::Port(p.port),
            InfoVxlan::Learning(p.learning),
        ];
        match p.local {
            IpAddr::V4(a) => data.push(InfoVxlan::Local(a)),
            IpAddr::V6(a) => data.push(InfoVxlan::Local6(a)),
        }
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(p.name.clone()));
        msg.attributes.push(LinkAttribute::Mtu(p.mtu));
        msg.attributes.push(LinkAttribute::Address(p.mac.to_vec()));
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            NlLinkInfo::Kind(InfoKind::Vxlan),
            NlLinkInfo::Data(InfoData::Vxlan(data)),
        ]));
        self.ack(
            format!("create vxlan device {}", p.name),
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .await
    }

    pub async fn delete_link(&self, index: u32) -> Result<(), NetlinkError> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        self.ack(
            format!("delete link #{index}"),
            RouteNetlinkMessage::DelLink(msg),
            0,
        )
        .await
    }

    async fn set_link(
        &self,
        index: u32,
        what: &str,
        f: impl FnOnce(&mut LinkMessage),
    ) -> Result<(), NetlinkError> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        f(&mut msg);
        self.ack(
            format!("set {what} on link #{index}"),
            RouteNetlinkMessage::SetLink(msg),
            0,
        )
        .await
    }

    pub async fn set_up(&self, index: u32) -> Result<(), NetlinkError> {
        self.set_link(index, "up", |m| {
            m.header.flags = LinkFlags::Up;
            m.header.change_mask = LinkFlags::Up;
        })
        .await
    }

    pub async fn set_mtu(&self, index: u32, mtu: u32) -> Result<(), NetlinkError> {
        self.set_link(index, "mtu", |m| m.attributes.push(LinkAttribute::Mtu(mtu)))
            .await
    }

    pub async fn set_mac(&self, index: u32, mac: [u8; 6]) -> Result<(), NetlinkError> {
        self.set_link(index, "address", |m| {
            m.attributes.push(LinkAttribute::Address(mac.to_vec()))
        })
        .await
    }

    // ---- addresses ----

    /// Addresses of one link (all links when `index` is 0).
    pub async fn addresses(&self, index: u32) -> Result<Vec<(u32, IpNet)>, NetlinkError> {
        let msgs = self
            .dump(
                "list addresses",
                RouteNetlinkMessage::GetAddress(AddressMessage::default()),
            )
            .await?;
        let mut out = Vec::new();
        for m in msgs {
            let RouteNetlinkMessage::NewAddress(a) = m else {
                continue;
            };
            if index != 0 && a.header.index != index {
                continue;
            }
            if let Some(net) = parse_address(&a) {
                out.push((a.header.index, net));
            }
        }
        Ok(out)
    }

    fn address_message(index: u32, net: IpNet) -> AddressMessage {
        let mut msg = AddressMessage::default();
        msg.header.family = family(&net.addr());
        msg.header.prefix_len = net.prefix_len();
        msg.header.index = index;
        msg.attributes.push(AddressAttribute::Local(net.addr()));
        msg.attributes.push(AddressAttribute::Address(net.addr()));
        msg
    }

    pub async fn add_address(&self, index: u32, net: IpNet) -> Result<(), NetlinkError> {
        self.ack(
            format!("add address {net} to link #{index}"),
            RouteNetlinkMessage::NewAddress(Self::address_message(index, net)),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .await
    }

    pub async fn del_address(&self, index: u32, net: IpNet) -> Result<(), NetlinkError> {
        self.ack(
            format!("delete address {net} from link #{index}"),
            RouteNetlinkMessage::DelAddress(Self::address_message(index, net)),
            0,
        )
        .await
    }

    // ---- neighbours and FDB ----

    /// Neighbours of one family (`AddressFamily::Inet`, `Inet6` or `Bridge` for FDB entries) on
    /// one link.
    pub async fn neighbours(
        &self,
        index: u32,
        fam: AddressFamily,
    ) -> Result<Vec<Neighbour>, NetlinkError> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = fam;
        msg.header.ifindex = index;
        if index != 0 {
            msg.attributes.push(NeighbourAttribute::IfIndex(index));
        }
        let msgs = self
            .dump("list neighbours", RouteNetlinkMessage::GetNeighbour(msg))
            .await?;
        let mut out = Vec::new();
        for m in msgs {
            let RouteNetlinkMessage::NewNeighbour(n) = m else {
                continue;
            };
            if n.header.family != fam || (index != 0 && n.header.ifindex != index) {
                continue;
            }
            let mut ip = None;
            let mut mac = None;
            for a in &n.attributes {
                match a {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(v)) => {
                        ip = Some(IpAddr::V4(*v))
                    }
                    NeighbourAttribute::Destination(NeighbourAddress::Inet6(v)) => {
                        ip = Some(IpAddr::V6(*v))
                    }
                    // FDB entries (family AF_BRIDGE) carry the remote as raw bytes.
                    NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => {
                        ip = match b.len() {
                            4 => <[u8; 4]>::try_from(b.as_slice()).ok().map(IpAddr::from),
                            16 => <[u8; 16]>::try_from(b.as_slice()).ok().map(IpAddr::from),
                            _ => None,
                        }
                    }
                    NeighbourAttribute::LinkLayerAddress(l) => mac = mac6(l),
                    _ => {}
                }
            }
            out.push(Neighbour {
                index: n.header.ifindex,
                ip,
                mac,
                permanent: n.header.state == NeighbourState::Permanent,
                own: n.header.flags.contains(NeighbourFlags::Own),
            });
        }
        Ok(out)
    }

    /// Adds or replaces a permanent neighbour entry (`ip neigh replace IP lladdr MAC nud permanent`).
    pub async fn set_neighbour(
        &self,
        index: u32,
        ip: IpAddr,
        mac: [u8; 6],
    ) -> Result<(), NetlinkError> {
        let msg = neigh_message(family(&ip), index, Some(ip), mac, NeighbourFlags::empty());
        self.ack(
            format!("set neighbour {ip} on link #{index}"),
            RouteNetlinkMessage::NewNeighbour(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .await
    }

    pub async fn del_neighbour(&self, index: u32, ip: IpAddr) -> Result<(), NetlinkError> {
        let msg = neigh_message(
            family(&ip),
            index,
            Some(ip),
            [0; 6],
            NeighbourFlags::empty(),
        );
        let mut msg = msg;
        msg.attributes
            .retain(|a| !matches!(a, NeighbourAttribute::LinkLayerAddress(_)));
        self.ack(
            format!("delete neighbour {ip} on link #{index}"),
            RouteNetlinkMessage::DelNeighbour(msg),
            0,
        )
        .await
    }

    /// Adds or replaces the device's own FDB entry MAC → remote VTEP
    /// (`bridge fdb replace MAC dev DEV dst IP self permanent`).
    pub async fn set_fdb(&self, index: u32, mac: [u8; 6], dst: IpAddr) -> Result<(), NetlinkError> {
        let msg = neigh_message(
            AddressFamily::Bridge,
            index,
            Some(dst),
            mac,
            NeighbourFlags::Own,
        );
        self.ack(
            format!(
                "set fdb entry {} dst {dst} on link #{index}",
                crate::wire::Mac(mac)
            ),
            RouteNetlinkMessage::NewNeighbour(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .await
    }

    /// Appends a further remote for a MAC (`bridge fdb append`), e.g. all-zero flood entries.
    pub async fn append_fdb(
        &self,
        index: u32,
        mac: [u8; 6],
        dst: IpAddr,
    ) -> Result<(), NetlinkError> {
        let msg = neigh_message(
            AddressFamily::Bridge,
            index,
            Some(dst),
            mac,
            NeighbourFlags::Own,
        );
        self.ack(
            format!(
                "append fdb entry {} dst {dst} on link #{index}",
                crate::wire::Mac(mac)
            ),
            RouteNetlinkMessage::NewNeighbour(msg),
            NLM_F_CREATE | NLM_F_APPEND,
        )
        .await
    }

    pub async fn del_fdb(&self, index: u32, mac: [u8; 6], dst: IpAddr) -> Result<(), NetlinkError> {
        let msg = neigh_message(
            AddressFamily::Bridge,
            index,
            Some(dst),
            mac,
            NeighbourFlags::Own,
        );
        self.ack(
            format!(
                "delete fdb entry {} dst {dst} on link #{index}",
                crate::wire::Mac(mac)
            ),
            RouteNetlinkMessage::DelNeighbour(msg),
            0,
        )
        .await
    }

    // ---- routes ----

    /// Routes of the main table of one family.
    pub async fn routes(&self, v6: bool) -> Result<Vec<Route>, NetlinkError> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = if v6 {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        let msgs = self
            .dump("list routes", RouteNetlinkMessage::GetRoute(msg))
            .await?;
        let mut out = Vec::new();
        for m in msgs {
            let RouteNetlinkMessage::NewRoute(r) = m else {
                continue;
            };
            if let Some(route) = parse_route(&r)
                && route.table == u32::from(RT_TABLE_MAIN)
            {
                out.push(route);
            }
        }
        Ok(out)
    }

    /// Adds or replaces a route in the main table (`ip route replace`).
    pub async fn replace_route(&self, r: &Route) -> Result<(), NetlinkError> {
        self.ack(
            format!("replace route {}", r.dst),
            RouteNetlinkMessage::NewRoute(route_message(r)),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .await
    }

    /// Adds a route to the main table only if none with its destination and metric exists
    /// (`ip route add`: `NLM_F_EXCL`), so a route of another protocol is never overwritten.
    pub async fn add_route(&self, r: &Route) -> Result<(), NetlinkError> {
        self.ack(
            format!("add route {}", r.dst),
            RouteNetlinkMessage::NewRoute(route_message(r)),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .await
    }

    pub async fn del_route(&self, r: &Route) -> Result<(), NetlinkError> {
        self.ack(
            format!("delete route {}", r.dst),
            RouteNetlinkMessage::DelRoute(route_message(r)),
            0,
        )
        .await
    }
}

fn neigh_message(
    fam: AddressFamily,
    index: u32,
    ip: Option<IpAddr>,
    mac: [u8; 6],
    flags: NeighbourFlags,
) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = fam;
    msg.header.ifindex = index;
    msg.header.state = NeighbourState::Permanent;
    msg.header.flags = flags;
    msg.header.kind = RouteType::Unspec;
    msg.attributes
        .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
    if let Some(ip) = ip {
        msg.attributes
            .push(NeighbourAttribute::Destination(match ip {
                IpAddr::V4(v) => NeighbourAddress::Inet(v),
                IpAddr::V6(v) => NeighbourAddress::Inet6(v),
            }));
    }
    msg
}

fn route_message(r: &Route) -> RouteMessage {
    let mut msg = RouteMessage::default();
    let h = &mut msg.header;
    h.address_family = family(&r.dst.addr());
    h.destination_prefix_length = r.dst.prefix_len();
    h.table = RT_TABLE_MAIN;
    h.protocol = RouteProtocol::from(r.protocol);
    h.kind = RouteType::Unicast;
    // A route through a gateway has universe scope; a device route link scope.
    h.scope = if r.gateway.is_some() {
        RouteScope::Universe
    } else {
        RouteScope::Link
    };
    if r.onlink {
        h.flags = RouteFlags::Onlink;
    }
    msg.attributes
        .push(RouteAttribute::Destination(RouteAddress::from(
            r.dst.network(),
        )));
    if let Some(gw) = r.gateway {
        msg.attributes
            .push(RouteAttribute::Gateway(RouteAddress::from(gw)));
    }
    if let Some(oif) = r.oif {
        msg.attributes.push(RouteAttribute::Oif(oif));
    }
    msg
}

fn route_addr(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v) => Some(IpAddr::V4(*v)),
        RouteAddress::Inet6(v) => Some(IpAddr::V6(*v)),
        _ => None,
    }
}

fn parse_route(r: &RouteMessage) -> Option<Route> {
    let v6 = r.header.address_family == AddressFamily::Inet6;
    let mut dst = None;
    let mut gateway = None;
    let mut oif = None;
    let mut table = u32::from(r.header.table);
    for a in &r.attributes {
        match a {
            RouteAttribute::Destination(d) => dst = route_addr(d),
            RouteAttribute::Gateway(g) => gateway = route_addr(g),
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Table(t) => table = *t,
            _ => {}
        }
    }
    let dst = dst.unwrap_or(if v6 {
        IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
    } else {
        IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
    });
    Some(Route {
        dst: IpNet::new(dst, r.header.destination_prefix_length).ok()?,
        gateway,
        oif,
        onlink: r.header.flags.contains(RouteFlags::Onlink),
        protocol: u8::from(r.header.protocol),
        table,
        unicast: r.header.kind == RouteType::Unicast,
    })
}

/// An address message's address: IFA_LOCAL is the interface's own address on point-to-point
/// links; else IFA_ADDRESS.
fn parse_address(a: &AddressMessage) -> Option<IpNet> {
    let local = a.attributes.iter().find_map(|x| match x {
        AddressAttribute::Local(ip) => Some(*ip),
        _ => None,
    });
    let addr = local.or_else(|| {
        a.attributes.iter().find_map(|x| match x {
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        })
    })?;
    IpNet::new(addr, a.header.prefix_len).ok()
}

/// A link or address change the kernel announced (see [`Netlink::monitor`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A link appeared or changed (RTM_NEWLINK).
    Link(Link),
    /// The link with this index is gone (RTM_DELLINK).
    LinkGone(u32),
    /// An address was added to the link with this index (RTM_NEWADDR).
    Addr(u32, IpNet),
    /// An address was removed (RTM_DELADDR).
    AddrGone(u32, IpNet),
}

fn change_of(m: NetlinkMessage<RouteNetlinkMessage>) -> Option<Change> {
    let NetlinkPayload::InnerMessage(inner) = m.payload else {
        return None;
    };
    match inner {
        RouteNetlinkMessage::NewLink(l) => Some(Change::Link(parse_link(&l))),
        RouteNetlinkMessage::DelLink(l) => Some(Change::LinkGone(l.header.index)),
        RouteNetlinkMessage::NewAddress(a) => {
            parse_address(&a).map(|n| Change::Addr(a.header.index, n))
        }
        RouteNetlinkMessage::DelAddress(a) => {
            parse_address(&a).map(|n| Change::AddrGone(a.header.index, n))
        }
        _ => None,
    }
}

impl Netlink {
    /// Opens a connection (in the calling thread's network namespace, on the current tokio
    /// runtime) subscribed to link and address changes, and the stream of those changes.
    /// Subscribe first, then list ([`Netlink::links`], [`Netlink::addresses`]) with the
    /// returned handle: nothing created in between is missed (it may be seen twice).
    pub fn monitor()
    -> Result<(Netlink, impl futures::Stream<Item = Change> + Send + Unpin), NetlinkError> {
        use rtnetlink::constants::{RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR, RTMGRP_LINK};
        use rtnetlink::sys::{AsyncSocket, SocketAddr};
        let (mut conn, handle, messages) =
            rtnetlink::new_connection().map_err(NetlinkError::Open)?;
        let groups = RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR;
        let sock = conn.socket_mut().socket_mut();
        sock.bind(&SocketAddr::new(0, groups))
            .map_err(NetlinkError::Open)?;
        // A burst (a hundred pods started at once) overflows the default buffer and the
        // kernel drops notifications (ENOBUFS); 4 MiB holds tens of thousands.
        sock.set_rx_buf_sz(4usize << 20)
            .map_err(NetlinkError::Open)?;
        tokio::spawn(conn);
        let changes = messages.filter_map(|(m, _)| std::future::ready(change_of(m)));
        Ok((Netlink { handle }, changes))
    }
}

fn parse_link(l: &LinkMessage) -> Link {
    let mut link = Link {
        index: l.header.index,
        up: l.header.flags.contains(LinkFlags::Up),
        ..Default::default()
    };
    for a in &l.attributes {
        match a {
            LinkAttribute::IfName(n) => link.name = n.clone(),
            LinkAttribute::Mtu(m) => link.mtu = *m,
            LinkAttribute::Address(m) => link.mac = mac6(m),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    match i {
                        NlLinkInfo::Kind(k) => link.kind = Some(k.to_string()),
                        NlLinkInfo::Data(InfoData::Vxlan(v)) => {
                            let mut x = VxlanInfo::default();
                            for n in v {
                                match n {
                                    InfoVxlan::Id(id) => x.vni = Some(*id),
                                    InfoVxlan::Port(p) => x.port = Some(*p),
                                    InfoVxlan::Local(a) => x.local = Some(IpAddr::V4(*a)),
                                    InfoVxlan::Local6(a) => x.local = Some(IpAddr::V6(*a)),
                                    InfoVxlan::Link(i) => x.link = Some(*i),
                                    InfoVxlan::Learning(b) => x.learning = Some(*b),
                                    _ => {}
                                }
                            }
                            link.vxlan = Some(x);
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    link
}

/// Runs `f` on a new thread inside the network namespace `/run/netns/NAME` and returns its
/// result; `f` typically builds a tokio runtime and opens a [`Netlink`] there (a netlink
/// socket belongs to the namespace it was opened in). The calling thread's namespace is
/// never changed.
pub fn in_netns<R: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> R + Send + 'static,
) -> Result<R, NetlinkError> {
    let err = |message: String| NetlinkError::Netns {
        name: name.to_string(),
        message,
    };
    crate::sys::netns::spawn_in(name, f)
        .map_err(|e| err(e.to_string()))?
        .join()
        .map_err(|_| err("the closure panicked".into()))?
        .map_err(|e| err(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::Netns;

    #[test]
    fn the_monitor_reports_links_and_addresses_as_they_come_and_go() {
        let Some(ns) = Netns::new("mon") else {
            return;
        };
        let name = ns.name().to_string();
        let changes = ns.block_on(move || async move {
            let (_nl, mut changes) = Netlink::monitor().unwrap();
            let ip = |args: &str| {
                let out = std::process::Command::new("ip")
                    .args(["-n", &name])
                    .args(args.split(' '))
                    .output()
                    .unwrap();
                assert!(out.status.success(), "ip {args}");
            };
            ip("link add mon0 type veth peer name mon1");
            ip("addr add 192.0.2.5/24 dev mon0");
            ip("link del mon0");
            let mut seen = Vec::new();
            while let Ok(Some(c)) =
                tokio::time::timeout(std::time::Duration::from_millis(300), changes.next()).await
            {
                seen.push(c);
            }
            seen
        });
        let index = changes
            .iter()
            .find_map(|c| match c {
                Change::Link(l) if l.name == "mon0" => Some(l.index),
                _ => None,
            })
            .expect("the new link");
        let net: IpNet = "192.0.2.5/24".parse().unwrap();
        assert!(changes.contains(&Change::Addr(index, net)), "{changes:?}");
        assert!(
            changes.contains(&Change::AddrGone(index, net)),
            "{changes:?}"
        );
        assert!(changes.contains(&Change::LinkGone(index)), "{changes:?}");
    }

    #[test]
    fn vxlan_device_neighbours_fdb_routes_round_trip() {
        let Some(ns) = Netns::with_veth("rt") else {
            return;
        };
        ns.block_on(|| async {
            let nl = Netlink::connect().unwrap();
            let eth0 = nl.link_by_name("eth0").await.unwrap().unwrap();
            assert!(nl.link_by_name("nope0").await.unwrap().is_none());
            let mac = [0x0a, 0x58, 1, 2, 3, 4];
            nl.create_vxlan(&VxlanParams {
                name: "flannel.1".into(),
                vni: 7,
                port: 8472,
                local: "192.0.2.1".parse().unwrap(),
                link: eth0.index,
                learning: false,
                mtu: 1450,
                mac,
            })
            .await
            .unwrap();
            let dev = nl.link_by_name("flannel.1").await.unwrap().unwrap();
            assert_eq!(dev.kind.as_deref(), Some("vxlan"));
            assert_eq!((dev.mtu, dev.mac, dev.up), (1450, Some(mac), false));
            let vx = dev.vxlan.clone().unwrap();
            assert_eq!(vx.vni, Some(7));
            assert_eq!(vx.port, Some(8472));
            assert_eq!(vx.link, Some(eth0.index));
            assert_eq!(vx.learning, Some(false));
            assert_eq!(vx.local, Some("192.0.2.1".parse().unwrap()));
            // A second create is refused (EXCL).
            assert!(
                nl.create_vxlan(&VxlanParams {
                    name: "flannel.1".into(),
                    vni: 7,
                    port: 8472,
                    local: "192.0.2.1".parse().unwrap(),
                    link: eth0.index,
                    learning: false,
                    mtu: 1450,
                    mac
                })
                .await
                .is_err()
            );
            nl.set_up(dev.index).await.unwrap();
            nl.set_mtu(dev.index, 1400).await.unwrap();
            let addr: IpNet = "198.51.100.0/32".parse().unwrap();
            nl.add_address(dev.index, addr).await.unwrap();
            assert!(
                nl.addresses(dev.index)
                    .await
                    .unwrap()
                    .iter()
                    .any(|(_, a)| *a == addr)
            );
            let peer_mac = [0x0a, 0x58, 9, 9, 9, 9];
            let gw: IpAddr = "198.51.100.64".parse().unwrap();
            let remote: IpAddr = "192.0.2.2".parse().unwrap();
            nl.set_neighbour(dev.index, gw, peer_mac).await.unwrap();
            nl.set_fdb(dev.index, peer_mac, remote).await.unwrap();
            let route = Route {
                dst: "198.51.100.64/26".parse().unwrap(),
                gateway: Some(gw),
                oif: Some(dev.index),
                onlink: true,
                protocol: RTPROT_METALNET_VXLAN,
                table: u32::from(RT_TABLE_MAIN),
                unicast: true,
            };
            nl.replace_route(&route).await.unwrap();
            nl.replace_route(&route).await.unwrap(); // idempotent

            let neighs = nl.neighbours(dev.index, AddressFamily::Inet).await.unwrap();
            assert!(
                neighs
                    .iter()
                    .any(|n| n.ip == Some(gw) && n.mac == Some(peer_mac) && n.permanent),
                "{neighs:?}"
            );
            let fdb = nl
                .neighbours(dev.index, AddressFamily::Bridge)
                .await
                .unwrap();
            assert!(
                fdb.iter()
                    .any(|n| n.ip == Some(remote) && n.mac == Some(peer_mac) && n.own),
                "{fdb:?}"
            );
            let routes = nl.routes(false).await.unwrap();
            assert!(routes.contains(&route), "{routes:?}");

            nl.del_route(&route).await.unwrap();
            assert!(nl.del_route(&route).await.unwrap_err().is_not_found());
            nl.del_fdb(dev.index, peer_mac, remote).await.unwrap();
            nl.del_neighbour(dev.index, gw).await.unwrap();
            assert!(
                nl.del_neighbour(dev.index, gw)
                    .await
                    .unwrap_err()
                    .is_not_found()
            );
            nl.del_address(dev.index, addr).await.unwrap();
            nl.delete_link(dev.index).await.unwrap();
            assert!(nl.link_by_name("flannel.1").await.unwrap().is_none());
        });
    }

    #[test]
    fn in_netns_names_a_missing_namespace() {
        let e = in_netns("mnl-no-such-namespace", || ()).unwrap_err();
        assert!(e.to_string().contains("mnl-no-such-namespace"), "{e}");
    }
}
