//! The few BPF-related system calls aya 0.14 does not offer: bpffs mounts, opening a pinned
//! object, replacing a link's program in place (`BPF_LINK_UPDATE`), batch map updates and
//! deletes, and the network namespace cookie of a socket.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// `BPF_FS_MAGIC` from linux/magic.h.
pub const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_LINK_UPDATE: libc::c_long = 29;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_TCX_INGRESS: u32 = 46;
const BPF_TCX_EGRESS: u32 = 47;
/// `SO_NETNS_COOKIE` (asm-generic/socket.h), not in every libc version.
const SO_NETNS_COOKIE: libc::c_int = 71;

fn cpath(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{}: a NUL byte in the path", path.display()),
        )
    })
}

/// Whether `path` lies on a bpffs.
pub fn is_bpffs(path: &Path) -> io::Result<bool> {
    let c = cpath(path)?;
    // SAFETY: statfs is plain data; all-zero bytes are a valid value.
    let mut buf: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path alive for the call and `buf` a writable statfs.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut buf) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(buf.f_type as i64 == BPF_FS_MAGIC)
}

/// Mounts a fresh bpffs on `path` (mode 0700: pins hold maps other processes must not write).
pub fn mount_bpffs(path: &Path) -> io::Result<()> {
    let target = cpath(path)?;
    let src = c"bpf";
    let opts = c"mode=0700";
    // SAFETY: every pointer is a NUL-terminated string alive for the call; mount reads them only.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            src.as_ptr(),
            0,
            opts.as_ptr().cast(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Unmounts whatever is mounted on `path`.
pub fn unmount(path: &Path) -> io::Result<()> {
    let target = cpath(path)?;
    // SAFETY: `target` is a NUL-terminated path alive for the call.
    let rc = unsafe { libc::umount2(target.as_ptr(), 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, initialised #[repr(C)] prefix of `union bpf_attr` for `cmd`
    // (the kernel zero-extends shorter attrs) and its exact size is passed; the kernel only
    // reads and writes within that size. Pointers inside it are set by the callers to buffers
    // that outlive this call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

#[repr(C)]
#[derive(Default)]
struct ObjGetAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    _pad: u32,
}

/// Opens the BPF object (map, program or link) pinned at `path`.
pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let c = cpath(path)?;
    let mut attr = ObjGetAttr {
        pathname: c.as_ptr() as u64,
        ..Default::default()
    };
    let fd = bpf(BPF_OBJ_GET, &mut attr)?;
    // SAFETY: BPF_OBJ_GET returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

#[repr(C)]
#[derive(Default)]
struct ObjPinAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    _pad: u32,
}

/// Pins a BPF object (here: a link) at `path` on a bpffs.
pub fn obj_pin(obj: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    let c = cpath(path)?;
    let mut attr = ObjPinAttr {
        pathname: c.as_ptr() as u64,
        bpf_fd: obj.as_raw_fd() as u32,
        ..Default::default()
    };
    bpf(BPF_OBJ_PIN, &mut attr).map(|_| ())
}

/// `link_create` for TCX: target ifindex, attach type, flags, then the tcx union (relative
/// fd or id, expected revision), all zero: append after the programs already there.
#[repr(C)]
#[derive(Default)]
struct TcxLinkCreateAttr {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
    relative_fd: u32,
    _pad: u32,
    expected_revision: u64,
}

/// Attaches a tc program to TCX ingress or egress of interface `ifindex` (kernel 6.6+) and
/// returns the link. Unlike netlink tc filters, this takes the interface by index, so a
/// renamed interface cannot be confused with another.
pub fn tcx_link_create(prog: BorrowedFd<'_>, ifindex: u32, egress: bool) -> io::Result<OwnedFd> {
    let mut attr = TcxLinkCreateAttr {
        prog_fd: prog.as_raw_fd() as u32,
        target_ifindex: ifindex,
        attach_type: if egress {
            BPF_TCX_EGRESS
        } else {
            BPF_TCX_INGRESS
        },
        ..Default::default()
    };
    let fd = bpf(BPF_LINK_CREATE, &mut attr)?;
    // SAFETY: BPF_LINK_CREATE returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

#[repr(C)]
#[derive(Default)]
struct LinkUpdateAttr {
    link_fd: u32,
    new_prog_fd: u32,
    flags: u32,
    old_prog_fd: u32,
}

/// Replaces the program of a BPF link atomically: no packet or connect sees the hook empty.
/// Fails with ENOLINK when the link's target is gone (a deleted interface).
pub fn link_update(link: BorrowedFd<'_>, new_prog: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = LinkUpdateAttr {
        link_fd: link.as_raw_fd() as u32,
        new_prog_fd: new_prog.as_raw_fd() as u32,
        ..Default::default()
    };
    bpf(BPF_LINK_UPDATE, &mut attr).map(|_| ())
}

#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Writes `keys.len() / key_size` entries in one system call (`BPF_MAP_UPDATE_BATCH`,
/// flags BPF_ANY). `keys` and `values` are the entries laid end to end. On failure returns the
/// error and how many entries the kernel wrote before it.
pub fn map_update_batch(
    map: BorrowedFd<'_>,
    keys: &[u8],
    key_size: usize,
    values: &[u8],
    value_size: usize,
) -> Result<(), (io::Error, u32)> {
    let count = check_batch(keys, key_size, Some((values, value_size))).map_err(|e| (e, 0))?;
    if count == 0 {
        return Ok(());
    }
    let mut attr = BatchAttr {
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        count,
        map_fd: map.as_raw_fd() as u32,
        ..Default::default()
    };
    // The kernel only reads `keys` and `values` (valid for count entries, checked above) and
    // writes back `count`.
    bpf(BPF_MAP_UPDATE_BATCH, &mut attr)
        .map(|_| ())
        .map_err(|e| (e, attr.count))
}

/// Deletes `keys.len() / key_size` entries in one system call (`BPF_MAP_DELETE_BATCH`).
/// A missing key fails the call with ENOENT after the entries before it were deleted; the
/// error comes with that count.
pub fn map_delete_batch(
    map: BorrowedFd<'_>,
    keys: &[u8],
    key_size: usize,
) -> Result<(), (io::Error, u32)> {
    let count = check_batch(keys, key_size, None).map_err(|e| (e, 0))?;
    if count == 0 {
        return Ok(());
    }
    let mut attr = BatchAttr {
        keys: keys.as_ptr() as u64,
        count,
        map_fd: map.as_raw_fd() as u32,
        ..Default::default()
    };
    bpf(BPF_MAP_DELETE_BATCH, &mut attr)
        .map(|_| ())
        .map_err(|e| (e, attr.count))
}

/// Counts the entries of a hash map (LRU included) with `BPF_MAP_LOOKUP_BATCH`, a few
/// thousand per system call, instead of one `get_next_key` call per key.
pub fn map_count(map: BorrowedFd<'_>, key_size: usize, value_size: usize) -> io::Result<u64> {
    const CHUNK: usize = 4096;
    // Per-CPU maps would need value_size * CPUs: refuse rather than overrun.
    if key_size == 0 || value_size == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("counting a map with key size {key_size} and value size {value_size}"),
        ));
    }
    let mut keys = vec![0u8; CHUNK * key_size];
    let mut values = vec![0u8; CHUNK * value_size.div_ceil(8) * 8];
    // The hash map's batch token is a bucket index (u32); 8 bytes leave room.
    let mut token_in = [0u8; 8];
    let mut token_out = [0u8; 8];
    let mut total = 0u64;
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { token_in.as_ptr() as u64 },
            out_batch: token_out.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: CHUNK as u32,
            map_fd: map.as_raw_fd() as u32,
            ..Default::default()
        };
        // The kernel writes at most `count` keys and values into buffers sized for CHUNK of
        // each, and one token into `token_out`.
        let res = bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
        total += u64::from(attr.count);
        match res {
            Ok(_) => {}
            // ENOENT: the walk is done (the count of this last call is valid).
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(total),
            Err(e) => return Err(e),
        }
        token_in = token_out;
        first = false;
    }
}

fn check_batch(keys: &[u8], key_size: usize, values: Option<(&[u8], usize)>) -> io::Result<u32> {
    let invalid = |m: String| io::Error::new(io::ErrorKind::InvalidInput, m);
    if key_size == 0 || !keys.len().is_multiple_of(key_size) {
        return Err(invalid(format!(
            "batch keys: {} bytes is not a multiple of the key size {key_size}",
            keys.len()
        )));
    }
    let count = keys.len() / key_size;
    if let Some((values, value_size)) = values
        && values.len() != count * value_size
    {
        return Err(invalid(format!(
            "batch values: {} bytes for {count} entries of {value_size} bytes",
            values.len()
        )));
    }
    u32::try_from(count).map_err(|_| invalid(format!("batch of {count} entries")))
}

/// The cookie of the network namespace `sock` lives in (what `bpf_get_netns_cookie` returns
/// for sockets of that namespace).
pub fn netns_cookie(sock: BorrowedFd<'_>) -> io::Result<u64> {
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: `cookie` and `len` are live and writable for the call and `len` holds the size
    // of `cookie`.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(cookie)
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_of_the_wrong_shape_are_refused_before_the_kernel() {
        let e = check_batch(&[0; 7], 4, None).unwrap_err();
        assert!(e.to_string().contains("key size 4"), "{e}");
        let e = check_batch(&[0; 8], 4, Some((&[0; 3], 4))).unwrap_err();
        assert!(e.to_string().contains("2 entries of 4 bytes"), "{e}");
        assert_eq!(check_batch(&[0; 8], 4, Some((&[0; 8], 4))).unwrap(), 2);
    }

    #[test]
    fn proc_is_not_a_bpffs() {
        assert!(!is_bpffs(Path::new("/proc")).unwrap());
    }
}
