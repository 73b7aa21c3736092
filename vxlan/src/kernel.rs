//! Observing and changing the kernel through `metalnet::netlink`: the device, the
//! per-peer entries (steps run concurrently over one socket, each step's operations in order
//! and rolled back together), and the underlay interface.

use std::net::IpAddr;

use futures::StreamExt;
use ipnet::IpNet;
use metalnet::netlink::AddressFamily;
use metalnet::netlink::{Netlink, NetlinkError, Route, VxlanParams};

use crate::annotations::Mac;
use crate::plan::{
    Desired, DeviceOp, DeviceSpec, Observed, ObservedDevice, ObservedRoute, Op, RouteDev,
    RouteSpec, Step, Underlay, device_ops, is_managed_route,
};

/// The operations a step applied, and the one that failed (the step was rolled back).
type StepOutcome = (Vec<Op>, Option<(Op, KernelError)>);

/// How many steps are in flight at once on the socket.
const CONCURRENCY: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error("--iface {0}: no such interface")]
    NoIface(String),
    #[error("no interface has the address {0} (--iface/--public-ip)")]
    NoIfaceWithAddr(IpAddr),
    #[error("no default route to pick the interface from; set --iface")]
    NoDefaultRoute,
    #[error("interface {iface} has no {family} address; set --public-ip")]
    NoAddress { iface: String, family: &'static str },
    #[error("device {0} vanished while being configured")]
    Vanished(String),
}

/// The underlay of one family: the interface, its facts, and the public address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnderlayInfo {
    pub name: String,
    pub underlay: Underlay,
    pub public_ip: IpAddr,
}

#[derive(Clone)]
pub struct Kernel {
    nl: Netlink,
    protocol: u8,
}

fn is_global(net: &IpNet) -> bool {
    match net.addr() {
        IpAddr::V4(a) => !a.is_loopback() && !a.is_link_local(),
        IpAddr::V6(a) => !a.is_loopback() && (a.segments()[0] & 0xffc0) != 0xfe80,
    }
}

impl Kernel {
    pub fn new(nl: Netlink, protocol: u8) -> Kernel {
        Kernel { nl, protocol }
    }

    pub fn netlink(&self) -> &Netlink {
        &self.nl
    }

    /// Finds the underlay as Flannel does: `--iface` (a name or an address), else the
    /// interface holding `--public-ip`, else the interface of the default route.
    pub async fn underlay(
        &self,
        iface: Option<&str>,
        public_ip: Option<IpAddr>,
        v6: bool,
    ) -> Result<UnderlayInfo, KernelError> {
        let addrs = self.nl.addresses(0).await?;
        let index = match (iface, public_ip) {
            (Some(i), _) => match i.parse::<IpAddr>() {
                Ok(ip) => addrs
                    .iter()
                    .find(|(_, n)| n.addr() == ip)
                    .map(|(idx, _)| *idx)
                    .ok_or(KernelError::NoIfaceWithAddr(ip))?,
                Err(_) => {
                    self.nl
                        .link_by_name(i)
                        .await?
                        .ok_or_else(|| KernelError::NoIface(i.to_string()))?
                        .index
                }
            },
            (None, Some(ip)) => match addrs.iter().find(|(_, n)| n.addr() == ip) {
                Some((idx, _)) => *idx,
                None => self.default_route_iface(v6).await?,
            },
            (None, None) => self.default_route_iface(v6).await?,
        };
        let link = self
            .nl
            .link_by_index(index)
            .await?
            .ok_or_else(|| KernelError::NoIface(format!("#{index}")))?;
        let nets: Vec<IpNet> = addrs
            .iter()
            .filter(|(i, n)| *i == index && is_global(n))
            .map(|(_, n)| *n)
            .collect();
        let public_ip = match public_ip {
            Some(ip) => ip,
            None => nets
                .iter()
                .find(|n| n.addr().is_ipv6() == v6)
                .map(|n| n.addr())
                .ok_or_else(|| KernelError::NoAddress {
                    iface: link.name.clone(),
                    family: if v6 { "IPv6" } else { "IPv4" },
                })?,
        };
        Ok(UnderlayInfo {
            name: link.name,
            underlay: Underlay {
                index,
                mtu: link.mtu,
                nets,
            },
            public_ip,
        })
    }

    async fn default_route_iface(&self, v6: bool) -> Result<u32, KernelError> {
        self.nl
            .routes(v6)
            .await?
            .iter()
            .find(|r| r.dst.prefix_len() == 0 && r.oif.is_some())
            .and_then(|r| r.oif)
            .ok_or(KernelError::NoDefaultRoute)
    }

    /// The device named `name`, if any, with its addresses.
    pub async fn observe_device(&self, name: &str) -> Result<Option<ObservedDevice>, KernelError> {
        let Some(link) = self.nl.link_by_name(name).await? else {
            return Ok(None);
        };
        let addresses = self
            .nl
            .addresses(link.index)
            .await?
            .into_iter()
            .map(|(_, n)| n)
            .collect();
        let vx = link.vxlan.clone().unwrap_or_default();
        Ok(Some(ObservedDevice {
            index: link.index,
            is_vxlan: link.kind.as_deref() == Some("vxlan"),
            vni: vx.vni,
            port: vx.port,
            local: vx.local,
            underlay_index: vx.link,
            learning: vx.learning,
            mtu: link.mtu,
            mac: link.mac.map(Mac),
            addresses,
            up: link.up,
        }))
    }

    /// Everything of one family the plan manages, as the kernel has it now.
    pub async fn observe(
        &self,
        want: &Desired,
        underlay_index: u32,
    ) -> Result<Observed, KernelError> {
        let mut obs = Observed::default();
        let dev_name = want
            .device
            .as_ref()
            .map(|d| d.name.clone())
            .unwrap_or_default();
        if want.device.is_some() {
            obs.device = self.observe_device(&dev_name).await?;
        }
        let dev_index = obs.device.as_ref().map(|d| d.index);
        if let Some(index) = dev_index {
            let fam = if want.v6 {
                AddressFamily::Inet6
            } else {
                AddressFamily::Inet
            };
            for n in self.nl.neighbours(index, fam).await? {
                if let (true, Some(ip), Some(mac)) = (n.permanent, n.ip, n.mac) {
                    obs.neighs.insert(ip, Mac(mac));
                }
            }
            for n in self.nl.neighbours(index, AddressFamily::Bridge).await? {
                if let (Some(ip), Some(mac)) = (n.ip, n.mac)
                    && ip.is_ipv6() == want.v6
                    && Mac(mac).is_unicast()
                {
                    obs.fdb.insert(Mac(mac), ip);
                }
            }
        }
        for r in self.nl.routes(want.v6).await? {
            if !r.unicast || !is_managed_route(&r.dst, &want.network, &want.own_subnet) {
                continue;
            }
            let Some(gw) = r.gateway else { continue };
            let dev = match r.oif {
                Some(i) if Some(i) == dev_index => RouteDev::Vxlan,
                Some(i) if i == underlay_index => RouteDev::Underlay,
                Some(i) => RouteDev::Other(i),
                None => RouteDev::Other(0),
            };
            obs.routes.insert(
                r.dst,
                ObservedRoute {
                    spec: RouteSpec {
                        dst: r.dst,
                        gw,
                        dev,
                        onlink: r.onlink,
                    },
                    ours: r.protocol == self.protocol,
                },
            );
        }
        Ok(obs)
    }

    /// Brings the device to the spec; entries that lived on a replaced device are forgotten.
    pub async fn apply_device(
        &self,
        spec: &DeviceSpec,
        obs: &mut Observed,
    ) -> Result<(), KernelError> {
        let ops = device_ops(spec, obs.device.as_ref());
        if ops.is_empty() {
            return Ok(());
        }
        for op in &ops {
            match op {
                DeviceOp::Create(s) | DeviceOp::Recreate(s) => {
                    if let (DeviceOp::Recreate(_), Some(old)) = (op, &obs.device) {
                        tracing::warn!(device = %s.name, "existing device has other parameters; replacing it");
                        match self.nl.delete_link(old.index).await {
                            Err(e) if !e.is_not_found() => return Err(e.into()),
                            _ => {}
                        }
                    } else {
                        tracing::info!(device = %s.name, vni = s.vni, port = s.port, local = %s.local, mtu = s.mtu, "creating vxlan device");
                    }
                    obs.forget_device_entries();
                    self.nl
                        .create_vxlan(&VxlanParams {
                            name: s.name.clone(),
                            vni: s.vni,
                            port: s.port,
                            local: s.local,
                            link: s.underlay_index,
                            learning: s.learning,
                            mtu: s.mtu,
                            mac: s.mac.0,
                        })
                        .await?;
                    obs.device = None;
                }
                _ => {
                    let index = self.device_index(spec, obs).await?;
                    match op {
                        DeviceOp::SetMac(m) => self.nl.set_mac(index, m.0).await?,
                        DeviceOp::SetMtu(m) => self.nl.set_mtu(index, *m).await?,
                        DeviceOp::AddAddress(a) => self.nl.add_address(index, *a).await?,
                        DeviceOp::DelAddress(a) => match self.nl.del_address(index, *a).await {
                            Err(e) if !e.is_not_found() => return Err(e.into()),
                            _ => {}
                        },
                        DeviceOp::Up => self.nl.set_up(index).await?,
                        DeviceOp::Create(_) | DeviceOp::Recreate(_) => unreachable!(),
                    }
                }
            }
        }
        obs.device = self.observe_device(&spec.name).await?;
        Ok(())
    }

    async fn device_index(
        &self,
        spec: &DeviceSpec,
        obs: &mut Observed,
    ) -> Result<u32, KernelError> {
        if obs.device.is_none() {
            obs.device = self.observe_device(&spec.name).await?;
        }
        obs.device
            .as_ref()
            .map(|d| d.index)
            .ok_or_else(|| KernelError::Vanished(spec.name.clone()))
    }

    /// Runs independent steps concurrently; each step's ops in order, undone in reverse when
    /// one fails. Successful ops are recorded in `obs`. Returns the errors.
    pub async fn apply_steps(
        &self,
        steps: Vec<Step>,
        underlay_index: u32,
        obs: &mut Observed,
    ) -> Vec<(Op, KernelError)> {
        let dev_index = obs.device.as_ref().map(|d| d.index).unwrap_or(0);
        let results: Vec<StepOutcome> = futures::stream::iter(steps)
            .map(|step| self.run_step(step, dev_index, underlay_index))
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        let mut errors = Vec::new();
        for (done, err) in results {
            for op in &done {
                obs.record(op);
            }
            errors.extend(err);
        }
        errors
    }

    async fn run_step(&self, step: Step, dev_index: u32, underlay_index: u32) -> StepOutcome {
        let mut done = Vec::new();
        for op in step.ops {
            match self.run_op(&op, dev_index, underlay_index).await {
                Ok(()) => done.push(op),
                Err(e) => {
                    // Roll the step back: a peer is programmed whole or not at all.
                    for prev in done.iter().rev() {
                        if let Err(ue) = self.run_op(&prev.undo(), dev_index, underlay_index).await
                        {
                            tracing::warn!(op = ?prev, error = %ue, "rollback failed");
                        }
                    }
                    return (Vec::new(), Some((op, e.into())));
                }
            }
        }
        (done, None)
    }

    async fn run_op(&self, op: &Op, dev: u32, underlay: u32) -> Result<(), NetlinkError> {
        let ignore_missing = |r: Result<(), NetlinkError>| match r {
            Err(e) if e.is_not_found() => Ok(()),
            other => other,
        };
        match *op {
            Op::NeighSet { ip, mac } => self.nl.set_neighbour(dev, ip, mac.0).await,
            Op::NeighDel { ip, .. } => ignore_missing(self.nl.del_neighbour(dev, ip).await),
            Op::FdbSet { mac, dst } => self.nl.set_fdb(dev, mac.0, dst).await,
            Op::FdbDel { mac, dst } => ignore_missing(self.nl.del_fdb(dev, mac.0, dst).await),
            Op::RouteSet(r) => self.nl.replace_route(&self.route(&r, dev, underlay)).await,
            Op::RouteDel(r) => {
                // Any protocol: the kernel matches a non-zero one exactly, and a stale route
                // flanneld left (protocol boot) is ours to remove too; dst, gateway and
                // interface still pick the one route observed.
                let route = Route {
                    protocol: 0,
                    ..self.route(&r, dev, underlay)
                };
                ignore_missing(self.nl.del_route(&route).await)
            }
        }
    }

    fn route(&self, r: &RouteSpec, dev: u32, underlay: u32) -> Route {
        Route {
            dst: r.dst,
            gateway: Some(r.gw),
            oif: Some(match r.dev {
                RouteDev::Vxlan => dev,
                RouteDev::Underlay => underlay,
                RouteDev::Other(i) => i,
            }),
            onlink: r.onlink,
            protocol: self.protocol,
            table: 254,
            unicast: true,
        }
    }
}
