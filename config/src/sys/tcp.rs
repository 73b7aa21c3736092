//! TCP socket options the standard library and tokio do not offer: the IP TTL / hop limit
//! (for BGP's single-hop eBGP rule) and the RFC 2385 TCP MD5 signature key.

use std::io;
use std::net::IpAddr;
use std::os::fd::AsRawFd;

use crate::bgp::peer::TCP_MD5_MAX_KEY_LEN;

/// Sets a socket option to the bytes of `value`.
fn setsockopt<T>(
    fd: &impl AsRawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
) -> io::Result<()> {
    // SAFETY: the pointer and length describe `value`, a live and initialised `T` borrowed for
    // the duration of the call; the kernel only reads that many bytes and keeps no reference.
    // An invalid descriptor or option is reported through the return value, not UB.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sets the TTL (IPv4) or unicast hop limit (IPv6) of the socket's packets; `family` is an
/// address of the socket's family.
pub fn set_ttl(fd: &impl AsRawFd, family: &IpAddr, ttl: u32) -> io::Result<()> {
    let ttl = libc::c_int::try_from(ttl)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "TTL above i32::MAX"))?;
    match family {
        IpAddr::V4(_) => setsockopt(fd, libc::IPPROTO_IP, libc::IP_TTL, &ttl),
        IpAddr::V6(_) => setsockopt(fd, libc::IPPROTO_IPV6, libc::IPV6_UNICAST_HOPS, &ttl),
    }
}

/// `struct tcp_md5sig` from linux/tcp.h (not in the libc crate).
#[repr(C)]
struct TcpMd5Sig {
    addr: libc::sockaddr_storage,
    flags: u8,
    prefixlen: u8,
    keylen: u16,
    ifindex: u32,
    key: [u8; TCP_MD5_MAX_KEY_LEN],
}

/// Sets the RFC 2385 TCP MD5 key for segments to and from `peer`. On a listening socket the
/// key is inherited by the connections it accepts.
pub fn set_md5(fd: &impl AsRawFd, peer: IpAddr, key: &[u8]) -> io::Result<()> {
    if key.len() > TCP_MD5_MAX_KEY_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("TCP MD5 password longer than {TCP_MD5_MAX_KEY_LEN} octets"),
        ));
    }
    // SAFETY: every field of TcpMd5Sig is an integer, an integer array or sockaddr_storage
    // (itself plain integers), for all of which the all-zero pattern is a valid value.
    let mut sig: TcpMd5Sig = unsafe { std::mem::zeroed() };
    match peer {
        IpAddr::V4(a) => {
            // SAFETY: sockaddr_storage is defined to be large enough and suitably aligned for
            // every sockaddr type, sockaddr_in included; the reference is unique (borrowed
            // from `sig`, which nothing else holds) and dropped at the end of this block.
            let sin = unsafe {
                &mut *(&mut sig.addr as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>()
            };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_addr.s_addr = u32::from_ne_bytes(a.octets());
        }
        IpAddr::V6(a) => {
            // SAFETY: as for sockaddr_in above: sockaddr_storage holds any sockaddr_in6, and
            // the reference is unique for this block.
            let sin6 = unsafe {
                &mut *(&mut sig.addr as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_addr.s6_addr = a.octets();
        }
    }
    // Checked above: at most 80.
    sig.keylen = key.len() as u16;
    sig.key[..key.len()].copy_from_slice(key);
    setsockopt(fd, libc::IPPROTO_TCP, libc::TCP_MD5SIG, &sig)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5_sig_struct_matches_the_kernel_layout() {
        assert_eq!(std::mem::size_of::<TcpMd5Sig>(), 216);
    }

    #[test]
    fn md5_key_over_the_kernel_limit_is_refused_before_the_call() {
        // Any descriptor will do: the length is checked before the system call.
        let err =
            set_md5(&std::io::stdin(), "192.0.2.1".parse().unwrap(), &[b'k'; 81]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
