//! AF_PACKET sockets bound to one interface and protocol, classic BPF socket filters,
//! link-layer multicast membership, and the interface list with flags and hardware
//! addresses (ioctl), as a safe API.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use crate::wire::Mac;

/// One classic BPF instruction (`struct sock_filter`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BpfInstruction {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

impl BpfInstruction {
    pub const LD_H_ABS: u16 = 0x28;
    pub const LD_B_ABS: u16 = 0x30;
    pub const JEQ_K: u16 = 0x15;
    pub const RET_K: u16 = 0x06;

    pub const fn new(code: u16, jt: u8, jf: u8, k: u32) -> BpfInstruction {
        BpfInstruction { code, jt, jf, k }
    }

    /// Runs `prog` on `frame` as the kernel would, for the opcodes above (tests of
    /// filters); `None` for an opcode outside that subset or a jump out of the program.
    pub fn run(prog: &[BpfInstruction], frame: &[u8]) -> Option<u32> {
        let (mut pc, mut a) = (0usize, 0u32);
        loop {
            let ins = prog.get(pc)?;
            let k = ins.k as usize;
            match ins.code {
                Self::LD_H_ABS => match frame.get(k..k.checked_add(2)?) {
                    Some(b) => a = u32::from(u16::from_be_bytes([b[0], b[1]])),
                    None => return Some(0),
                },
                Self::LD_B_ABS => match frame.get(k) {
                    Some(b) => a = u32::from(*b),
                    None => return Some(0),
                },
                Self::JEQ_K => pc += usize::from(if a == ins.k { ins.jt } else { ins.jf }),
                Self::RET_K => return Some(ins.k),
                _ => return None,
            }
            pc += 1;
        }
    }
}

/// The kernel's classification of a received frame (`sll_pkttype`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PacketType {
    /// To this host's address.
    #[default]
    Host,
    Broadcast,
    Multicast,
    /// For another host: unicast to another MAC, or tagged with a VLAN this host has no
    /// interface for (the kernel then removes the tag before protocol sockets see the frame).
    OtherHost,
    /// A copy of a frame this host sent.
    Outgoing,
    Unknown(u8),
}

impl From<u8> for PacketType {
    fn from(v: u8) -> PacketType {
        match v {
            libc::PACKET_HOST => PacketType::Host,
            libc::PACKET_BROADCAST => PacketType::Broadcast,
            libc::PACKET_MULTICAST => PacketType::Multicast,
            libc::PACKET_OTHERHOST => PacketType::OtherHost,
            libc::PACKET_OUTGOING => PacketType::Outgoing,
            other => PacketType::Unknown(other),
        }
    }
}

/// What the kernel says about a received frame.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Received {
    /// Bytes written to the buffer.
    pub len: usize,
    pub packet_type: PacketType,
    /// The 802.1Q tag control information the kernel (or the NIC) stripped from the frame,
    /// when it still reports it (PACKET_AUXDATA).
    pub vlan_tci: Option<u16>,
}

fn last_os_error<T>() -> io::Result<T> {
    Err(io::Error::last_os_error())
}

fn check(r: libc::c_int) -> io::Result<()> {
    if r < 0 { last_os_error() } else { Ok(()) }
}

fn socklen<T>() -> libc::socklen_t {
    std::mem::size_of::<T>() as libc::socklen_t
}

/// A raw AF_PACKET socket bound to one interface and one EtherType, non-blocking.
#[derive(Debug)]
pub struct PacketSocket {
    fd: OwnedFd,
}

impl PacketSocket {
    /// Opens a socket receiving frames of `ethertype` on interface `ifindex` (and, with
    /// `filter`, only those the program accepts). VLAN tags the kernel strips are reported
    /// in [`Received::vlan_tci`].
    pub fn open(
        ifindex: u32,
        ethertype: u16,
        filter: Option<&[BpfInstruction]>,
    ) -> io::Result<PacketSocket> {
        let index = i32::try_from(ifindex)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface index"))?;
        // SAFETY: plain socket(2) with constant arguments; the result is checked below and
        // owned at once. Protocol 0: nothing is received until bound, so no frame of another
        // interface slips in.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        };
        if fd < 0 {
            return last_os_error();
        }
        // SAFETY: `fd` is a fresh descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let sock = PacketSocket { fd };
        if let Some(prog) = filter {
            sock.attach_filter(prog)?;
        }
        let on: libc::c_int = 1;
        // SAFETY: `on` is a live c_int for the duration of the call and its size is passed.
        check(unsafe {
            libc::setsockopt(
                sock.fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_AUXDATA,
                (&on as *const libc::c_int).cast(),
                socklen::<libc::c_int>(),
            )
        })?;
        // SAFETY: sockaddr_ll is plain data for which all-zero bytes are a valid value.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = ethertype.to_be();
        sll.sll_ifindex = index;
        // SAFETY: `sll` is a valid sockaddr_ll and its exact size is passed.
        check(unsafe {
            libc::bind(
                sock.fd.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                socklen::<libc::sockaddr_ll>(),
            )
        })?;
        Ok(sock)
    }

    fn attach_filter(&self, prog: &[BpfInstruction]) -> io::Result<()> {
        let mut filters: Vec<libc::sock_filter> = prog
            .iter()
            .map(|i| libc::sock_filter {
                code: i.code,
                jt: i.jt,
                jf: i.jf,
                k: i.k,
            })
            .collect();
        let len = u16::try_from(filters.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "BPF program too long"))?;
        let fprog = libc::sock_fprog {
            len,
            filter: filters.as_mut_ptr(),
        };
        // SAFETY: `fprog` points to `filters`, which lives until after the call; the kernel
        // copies the program.
        check(unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ATTACH_FILTER,
                (&fprog as *const libc::sock_fprog).cast(),
                socklen::<libc::sock_fprog>(),
            )
        })
    }

    /// Joins (`join`) or leaves the link-layer multicast group `group` on `ifindex`, so the
    /// NIC delivers frames sent to it.
    pub fn set_multicast_membership(&self, ifindex: u32, group: Mac, join: bool) -> io::Result<()> {
        // SAFETY: packet_mreq is plain data for which all-zero bytes are a valid value.
        let mut mreq: libc::packet_mreq = unsafe { std::mem::zeroed() };
        mreq.mr_ifindex = i32::try_from(ifindex)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface index"))?;
        mreq.mr_type = libc::PACKET_MR_MULTICAST as u16;
        mreq.mr_alen = Mac::LEN as u16;
        mreq.mr_address[..Mac::LEN].copy_from_slice(&group.0);
        let opt = if join {
            libc::PACKET_ADD_MEMBERSHIP
        } else {
            libc::PACKET_DROP_MEMBERSHIP
        };
        // SAFETY: `mreq` is a valid packet_mreq for the call and its exact size is passed.
        check(unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                opt,
                (&mreq as *const libc::packet_mreq).cast(),
                socklen::<libc::packet_mreq>(),
            )
        })
    }

    /// Receives one frame into `buf` (`WouldBlock` when none is pending).
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<Received> {
        // SAFETY: sockaddr_ll is plain data for which all-zero bytes are a valid value.
        let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // u64 elements keep the control buffer aligned for cmsghdr.
        let mut control = [0u64; 8];
        // SAFETY: msghdr is plain data for which all-zero bytes are a valid value.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = (&mut from as *mut libc::sockaddr_ll).cast();
        msg.msg_namelen = socklen::<libc::sockaddr_ll>();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control);
        // SAFETY: every pointer in `msg` refers to a live local (`from`, `iov` over `buf`,
        // `control`) with the length given beside it.
        let n = unsafe { libc::recvmsg(self.fd.as_raw_fd(), &mut msg, 0) };
        if n < 0 {
            return last_os_error();
        }
        let mut vlan_tci = None;
        // SAFETY: the kernel filled `msg.msg_control` up to `msg_controllen` with cmsghdrs;
        // CMSG_FIRSTHDR/NXTHDR stay within it, and CMSG_DATA of a PACKET_AUXDATA message
        // holds a tpacket_auxdata (read unaligned, as cmsg data need not be aligned for it).
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_PACKET
                    && (*cmsg).cmsg_type == libc::PACKET_AUXDATA
                    && (*cmsg).cmsg_len as usize
                        >= libc::CMSG_LEN(std::mem::size_of::<libc::tpacket_auxdata>() as u32)
                            as usize
                {
                    let aux: libc::tpacket_auxdata =
                        std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast());
                    if aux.tp_status & libc::TP_STATUS_VLAN_VALID != 0 || aux.tp_vlan_tci != 0 {
                        vlan_tci = Some(aux.tp_vlan_tci);
                    }
                }
                cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
            }
        }
        Ok(Received {
            len: (n as usize).min(buf.len()),
            packet_type: PacketType::from(from.sll_pkttype),
            vlan_tci,
        })
    }

    /// Registers the socket with the tokio reactor, for readiness-driven receive. Must run
    /// inside a tokio runtime.
    pub fn into_async(self) -> io::Result<tokio::io::unix::AsyncFd<PacketSocket>> {
        // SAFETY: a PacketSocket owns its descriptor, never closes or replaces it while it
        // lives, and `as_raw_fd` always returns that same descriptor.
        unsafe { tokio::io::unix::AsyncFd::register(self) }.map_err(io::Error::from)
    }

    /// Sends one whole frame out of the bound interface.
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: `frame` is valid for reads of its length; the socket is bound to an
        // interface, so no address is needed.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        if n < 0 { last_os_error() } else { Ok(()) }
    }
}

impl AsRawFd for PacketSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl AsFd for PacketSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Every interface of this network namespace: index and name.
pub fn interface_names() -> io::Result<Vec<(u32, String)>> {
    // SAFETY: if_nameindex has no preconditions; the result is checked for null.
    let list = unsafe { libc::if_nameindex() };
    if list.is_null() {
        return last_os_error();
    }
    let mut out = Vec::new();
    let mut p = list;
    // SAFETY: the array ends with a zero entry; each name is NUL-terminated and read before
    // the array is freed, once, below.
    unsafe {
        while (*p).if_index != 0 && !(*p).if_name.is_null() {
            let name = CStr::from_ptr((*p).if_name).to_string_lossy().into_owned();
            out.push(((*p).if_index, name));
            p = p.add(1);
        }
        libc::if_freenameindex(list);
    }
    Ok(out)
}

/// An interface's flags as SIOCGIFFLAGS reports them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InterfaceFlags {
    pub up: bool,
    pub loopback: bool,
    pub noarp: bool,
}

/// An interface's hardware address as SIOCGIFHWADDR reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HardwareAddr {
    Ethernet(Mac),
    /// Another ARPHRD_* type.
    Other(u16),
}

/// Interface ioctls through one datagram socket.
#[derive(Debug)]
pub struct InterfaceQuery {
    sock: OwnedFd,
}

impl InterfaceQuery {
    pub fn new() -> io::Result<InterfaceQuery> {
        // SAFETY: plain socket(2) with constant arguments; checked and owned at once.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return last_os_error();
        }
        Ok(InterfaceQuery {
            // SAFETY: `fd` is a fresh descriptor nothing else owns.
            sock: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    fn ifreq(name: &str) -> Option<libc::ifreq> {
        if name.len() >= libc::IFNAMSIZ || name.as_bytes().contains(&0) {
            return None;
        }
        // SAFETY: ifreq is plain data for which all-zero bytes are a valid value.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in req.ifr_name.iter_mut().zip(name.as_bytes()) {
            *dst = *src as libc::c_char;
        }
        Some(req)
    }

    /// The flags of `name`; `None` if it is gone or its name cannot be an interface name.
    pub fn flags(&self, name: &str) -> Option<InterfaceFlags> {
        let mut req = Self::ifreq(name)?;
        // SAFETY: SIOCGIFFLAGS reads the NUL-terminated name and writes ifr_flags of a valid
        // ifreq that lives for the call.
        if unsafe { libc::ioctl(self.sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
            return None;
        }
        // SAFETY: SIOCGIFFLAGS succeeded, so ifru_flags is the member it wrote.
        let flags = i32::from(unsafe { req.ifr_ifru.ifru_flags });
        Some(InterfaceFlags {
            up: flags & libc::IFF_UP != 0,
            loopback: flags & libc::IFF_LOOPBACK != 0,
            noarp: flags & libc::IFF_NOARP != 0,
        })
    }

    /// The hardware address of `name`; `None` if it is gone or unreadable.
    pub fn hardware_addr(&self, name: &str) -> Option<HardwareAddr> {
        let mut req = Self::ifreq(name)?;
        // SAFETY: SIOCGIFHWADDR reads the NUL-terminated name and writes ifr_hwaddr of a
        // valid ifreq that lives for the call.
        if unsafe { libc::ioctl(self.sock.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) } < 0 {
            return None;
        }
        // SAFETY: SIOCGIFHWADDR succeeded, so ifru_hwaddr is the member it wrote.
        let hw = unsafe { req.ifr_ifru.ifru_hwaddr };
        if hw.sa_family != libc::ARPHRD_ETHER {
            return Some(HardwareAddr::Other(hw.sa_family));
        }
        let mut mac = [0u8; 6];
        for (m, b) in mac.iter_mut().zip(hw.sa_data.iter()) {
            *m = *b as u8;
        }
        Some(HardwareAddr::Ethernet(Mac(mac)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bpf_interpreter_subset() {
        use BpfInstruction as I;
        let prog = [
            I::new(I::LD_B_ABS, 0, 0, 1),
            I::new(I::JEQ_K, 0, 1, 7),
            I::new(I::RET_K, 0, 0, 0xffff),
            I::new(I::RET_K, 0, 0, 0),
        ];
        assert_eq!(BpfInstruction::run(&prog, &[0, 7]), Some(0xffff));
        assert_eq!(BpfInstruction::run(&prog, &[0, 8]), Some(0));
        assert_eq!(BpfInstruction::run(&prog, &[0]), Some(0));
        assert_eq!(BpfInstruction::run(&[I::new(0x99, 0, 0, 0)], &[]), None);
        assert_eq!(BpfInstruction::run(&prog[..2], &[0, 8]), None);
    }

    #[test]
    fn interface_names_and_loopback_flags() {
        // Every network namespace has lo; reading it changes nothing.
        let names = interface_names().unwrap();
        assert!(names.iter().any(|(_, n)| n == "lo"), "{names:?}");
        let q = InterfaceQuery::new().unwrap();
        let lo = q.flags("lo").unwrap();
        assert!(lo.loopback);
        assert_eq!(q.flags("no-such-if0"), None);
        assert_eq!(q.flags("a-name-far-too-long-for-ifnamsiz"), None);
        assert!(matches!(
            q.hardware_addr("lo"),
            Some(HardwareAddr::Other(_))
        ));
    }
}
