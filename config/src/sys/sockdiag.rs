//! Finding and destroying sockets through `NETLINK_SOCK_DIAG` (what `ss -K` does; needs
//! CONFIG_INET_DIAG_DESTROY): the service proxy closes TCP and UDP sockets still connected to
//! a backend that was deleted, so clients reconnect (and get a live backend) instead of
//! talking into the void. Works in the calling thread's network namespace. No `unsafe`: the
//! messages are built and parsed as bytes over netlink-sys' socket.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use rtnetlink::sys::{Socket, SocketAddr, protocols::NETLINK_SOCK_DIAG};

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLM_F_DUMP: u16 = 0x300;
const HDR: usize = 16;
/// `struct inet_diag_sockid`.
const ID_LEN: usize = 48;
/// `struct inet_diag_req_v2`.
const REQ_LEN: usize = 8 + ID_LEN;
/// `struct inet_diag_msg` up to and including the id.
const MSG_MIN: usize = 4 + ID_LEN;
const TCP_TIME_WAIT: u8 = 6;
const TCP_CLOSE: u8 = 7;
const TCP_LISTEN: u8 = 10;

/// One socket the kernel listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiagSocket {
    pub family: u8,
    pub protocol: u8,
    /// TCP state numbers (UDP uses 1 = connected, 7 = not).
    pub state: u8,
    pub src: IpAddr,
    pub sport: u16,
    pub dst: IpAddr,
    pub dport: u16,
    /// The raw `inet_diag_sockid` (with the socket's cookie), to name it in a destroy request.
    id: [u8; ID_LEN],
}

fn addr_of(family: u8, b: &[u8]) -> IpAddr {
    if family == libc::AF_INET as u8 {
        IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
    } else {
        let mut a = [0u8; 16];
        a.copy_from_slice(&b[..16]);
        let v6 = Ipv6Addr::from(a);
        // A dual-stack socket connected to an IPv4 peer shows it IPv4-mapped.
        v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
    }
}

fn open() -> io::Result<Socket> {
    let mut s = Socket::new(NETLINK_SOCK_DIAG)?;
    s.bind_auto()?;
    s.connect(&SocketAddr::new(0, 0))?;
    Ok(s)
}

fn request(kind: u16, flags: u16, seq: u32, family: u8, protocol: u8, id: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(HDR + REQ_LEN);
    m.extend_from_slice(&((HDR + REQ_LEN) as u32).to_ne_bytes());
    m.extend_from_slice(&kind.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(&[family, protocol, 0, 0]);
    m.extend_from_slice(&u32::MAX.to_ne_bytes()); // every state
    m.extend_from_slice(id);
    m
}

/// Walks the netlink messages in `buf`; `f` gets (type, payload). Returns Ok(true) at
/// NLMSG_DONE, the kernel's error for a nonzero NLMSG_ERROR.
fn walk(buf: &[u8], mut f: impl FnMut(u16, &[u8])) -> io::Result<bool> {
    let mut at = 0;
    while at + HDR <= buf.len() {
        let len = u32::from_ne_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]) as usize;
        let kind = u16::from_ne_bytes([buf[at + 4], buf[at + 5]]);
        if len < HDR || at + len > buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "sock_diag: a message of {len} bytes at {at} in {}",
                    buf.len()
                ),
            ));
        }
        let payload = &buf[at + HDR..at + len];
        match kind {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => {
                let code = payload
                    .get(..4)
                    .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                    .unwrap_or(0);
                if code != 0 {
                    return Err(io::Error::from_raw_os_error(-code));
                }
                return Ok(true);
            }
            _ => f(kind, payload),
        }
        at += (len + 3) & !3;
    }
    Ok(false)
}

/// Lists the sockets of one family (`libc::AF_INET`/`AF_INET6`) and protocol
/// (`libc::IPPROTO_TCP`/`IPPROTO_UDP`) in the calling thread's network namespace.
pub fn list(family: u8, protocol: u8) -> io::Result<Vec<DiagSocket>> {
    let s = open()?;
    s.send(
        &request(
            SOCK_DIAG_BY_FAMILY,
            NLM_F_REQUEST | NLM_F_DUMP,
            1,
            family,
            protocol,
            &[0; ID_LEN],
        ),
        0,
    )?;
    let mut out = Vec::new();
    loop {
        let (buf, _) = s.recv_from_full()?;
        if buf.is_empty() {
            return Ok(out);
        }
        let done = walk(&buf, |kind, p| {
            if kind != SOCK_DIAG_BY_FAMILY || p.len() < MSG_MIN {
                return;
            }
            let fam = p[0];
            let id = &p[4..4 + ID_LEN];
            let mut raw = [0u8; ID_LEN];
            raw.copy_from_slice(id);
            out.push(DiagSocket {
                family: fam,
                protocol,
                state: p[1],
                sport: u16::from_be_bytes([id[0], id[1]]),
                dport: u16::from_be_bytes([id[2], id[3]]),
                src: addr_of(fam, &id[4..20]),
                dst: addr_of(fam, &id[20..36]),
                id: raw,
            });
        })?;
        if done {
            return Ok(out);
        }
    }
}

/// Destroys one listed socket: a TCP socket is reset, a UDP one gets ECONNABORTED on its
/// next call. A socket already gone is not an error.
pub fn destroy(sock: &DiagSocket) -> io::Result<()> {
    let s = open()?;
    s.send(
        &request(
            SOCK_DESTROY,
            NLM_F_REQUEST | NLM_F_ACK,
            2,
            sock.family,
            sock.protocol,
            &sock.id,
        ),
        0,
    )?;
    let (buf, _) = s.recv_from_full()?;
    match walk(&buf, |_, _| {}) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other.map(|_| ()),
    }
}

/// Destroys every TCP and UDP socket of the calling thread's network namespace connected to
/// one of `targets` (address, port, IP protocol number); returns how many. TCP sockets that
/// are listening, closed or in TIME_WAIT are left alone (nothing to abort). A socket the
/// kernel refuses to destroy does not stop the others: the first such error is returned
/// only when nothing could be destroyed.
pub fn destroy_connected_to(targets: &[(IpAddr, u16, u8)]) -> io::Result<usize> {
    let mut n = 0;
    let mut first_err = None;
    for proto in [libc::IPPROTO_TCP as u8, libc::IPPROTO_UDP as u8] {
        if !targets.iter().any(|t| t.2 == proto) {
            continue;
        }
        for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
            for s in list(family, proto)? {
                if s.protocol == libc::IPPROTO_TCP as u8
                    && matches!(s.state, TCP_LISTEN | TCP_TIME_WAIT | TCP_CLOSE)
                {
                    continue;
                }
                if !targets
                    .iter()
                    .any(|(a, p, pr)| *pr == proto && *a == s.dst && *p == s.dport)
                {
                    continue;
                }
                match destroy(&s) {
                    Ok(()) => n += 1,
                    Err(e) => {
                        first_err.get_or_insert_with(|| {
                            io::Error::new(
                                e.kind(),
                                format!(
                                    "destroying the socket {}:{} -> {}:{}: {e}",
                                    s.src, s.sport, s.dst, s.dport
                                ),
                            )
                        });
                    }
                }
            }
        }
    }
    match first_err {
        Some(e) if n == 0 => Err(e),
        _ => Ok(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_have_the_kernels_layout() {
        let r = request(
            SOCK_DESTROY,
            NLM_F_REQUEST | NLM_F_ACK,
            9,
            2,
            17,
            &[7; ID_LEN],
        );
        assert_eq!(r.len(), 72);
        assert_eq!(&r[..4], &72u32.to_ne_bytes());
        assert_eq!(&r[4..6], &21u16.to_ne_bytes());
        assert_eq!(&r[16..20], &[2, 17, 0, 0]);
        assert_eq!(&r[24..], &[7; ID_LEN]);
    }

    #[test]
    fn a_kernel_error_is_returned() {
        let mut m = Vec::new();
        m.extend_from_slice(&20u32.to_ne_bytes());
        m.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend_from_slice(&(-libc::EOPNOTSUPP).to_ne_bytes());
        let e = walk(&m, |_, _| {}).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EOPNOTSUPP));
    }
}
