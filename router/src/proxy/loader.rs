//! The BPF objects `build.rs` compiles (`lb.o`, `sock.o`), loaded with aya, their maps pinned
//! by name under `<bpf-dir>/maps` so that a second load, a second object, or a restarted
//! proxy uses the same maps (never recreated, ids never renumbered: connections survive a
//! restart). [`Loader`] implements [`Dataplane`] over those maps; [`Maps::open`] reopens them
//! without loading programs (for `dump` and `explain`).
//!
//! Keys and values cross into aya as byte arrays encoded by [`abi`], so nothing here needs
//! `unsafe`. Large diffs go through `BPF_MAP_UPDATE_BATCH` / `BPF_MAP_DELETE_BATCH`
//! ([`metalnet::sys::bpf`]): one system call per map and step instead of one per entry.

use std::collections::BTreeSet;
use std::io;
use std::net::IpAddr;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use aya::maps::lpm_trie::{Key as LpmKey, LpmTrie};
use aya::maps::{Array, HashMap, IterableMap, Map, MapData, MapError, PerCpuArray};
use aya::programs::{Program, ProgramError};
use aya::{Ebpf, EbpfError, EbpfLoader};
use metalnet::sys::bpf as sysbpf;
use tracing::{debug, info, warn};

use super::abi::{self, names};
use super::dataplane::{Dataplane, DataplaneError, Fill};
use super::state::{MapDiff, MapState};

/// `router/bpf/lb.c`: the tc (TCX) programs.
pub static LB_OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/lb.o"));
/// `router/bpf/sock.c`: the socket-LB programs.
pub static SOCK_OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/sock.o"));

/// Where the maps are pinned, under the bpffs directory.
pub const MAPS_DIR: &str = "maps";
/// Marks a bpffs mount point metalnet made (a directory: bpffs holds no regular files and no
/// names with dots), so that cleanup unmounts only what it mounted.
pub const MOUNT_MARKER: &str = "metalnet-mounted";

/// Map sizes chosen by flags. They apply when a map is created; a map already pinned keeps
/// its size (resizing would drop its entries), and a warning says so.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sizes {
    /// `mn_ct` entries (`--bpf-ct-max`).
    pub ct_max: u32,
    /// The Maglev table size M (`--maglev-table-size`, prime).
    pub maglev_m: u32,
    /// Maglev rows: at most this many frontends use Maglev at once.
    pub maglev_rows: u32,
}

impl Default for Sizes {
    fn default() -> Self {
        Sizes {
            ct_max: 524_288,
            maglev_m: 1021,
            maglev_rows: 256,
        }
    }
}

/// Loading or opening the data path failed; names the object, map or path and the reason.
#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    #[error("bpffs directory {path}: {reason}")]
    Bpffs { path: PathBuf, reason: String },
    #[error("loading BPF object {object}.o: {source}")]
    Load {
        object: &'static str,
        #[source]
        source: Box<EbpfError>,
    },
    #[error("BPF program {program} in {object}.o: {source}")]
    Program {
        object: &'static str,
        program: String,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("BPF object {object}.o: program {program} has an unexpected type ({kind})")]
    ProgramType {
        object: &'static str,
        program: String,
        kind: String,
    },
    #[error("map {map} pinned at {path}: {reason}")]
    Map {
        map: &'static str,
        path: PathBuf,
        reason: String,
    },
}

fn bpffs_err(path: &Path, reason: impl std::fmt::Display) -> LoaderError {
    LoaderError::Bpffs {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// Makes sure `dir` exists on a bpffs: when it is not on one, mounts a bpffs on it (or, when
/// it cannot be created because its parent is not writable, as `/sys/fs/bpf` on sysfs, on the
/// nearest existing ancestor) and marks the mount as ours. Returns the mount point it made.
pub fn ensure_bpffs(dir: &Path) -> Result<Option<PathBuf>, LoaderError> {
    if std::fs::create_dir_all(dir).is_err() {
        let mut anc = dir.parent();
        while let Some(a) = anc {
            if a.exists() {
                break;
            }
            anc = a.parent();
        }
        let anc = anc.ok_or_else(|| bpffs_err(dir, "no existing ancestor"))?;
        if sysbpf::is_bpffs(anc).map_err(|e| bpffs_err(anc, e))? {
            std::fs::create_dir_all(dir).map_err(|e| bpffs_err(dir, e))?;
            return Ok(None);
        }
        mount_ours(anc)?;
        std::fs::create_dir_all(dir).map_err(|e| bpffs_err(dir, e))?;
        return Ok(Some(anc.to_path_buf()));
    }
    if sysbpf::is_bpffs(dir).map_err(|e| bpffs_err(dir, format!("statfs: {e}")))? {
        return Ok(None);
    }
    mount_ours(dir)?;
    Ok(Some(dir.to_path_buf()))
}

fn mount_ours(at: &Path) -> Result<(), LoaderError> {
    sysbpf::mount_bpffs(at).map_err(|e| bpffs_err(at, format!("mounting a bpffs: {e}")))?;
    if let Err(e) = std::fs::create_dir(at.join(MOUNT_MARKER)) {
        let _ = sysbpf::unmount(at);
        return Err(bpffs_err(at, format!("marking the mount: {e}")));
    }
    info!(path = %at.display(), "mounted a bpffs");
    Ok(())
}

/// The loaded programs: `lb` (tc) and `sock` (cgroup sock_addr). The attach module owns them
/// once taken from the [`Loader`]; dropping them unloads whatever is not attached.
pub struct Programs {
    pub lb: Ebpf,
    pub sock: Ebpf,
}

impl std::fmt::Debug for Programs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names = |e: &Ebpf| e.programs().map(|(n, _)| n.to_string()).collect::<Vec<_>>();
        f.debug_struct("Programs")
            .field("lb", &names(&self.lb))
            .field("sock", &names(&self.sock))
            .finish()
    }
}

/// Loads of one program tried when the verifier is interrupted.
const LOAD_TRIES: u32 = 5;

fn load_object(
    object: &'static str,
    bytes: &[u8],
    maps_dir: &Path,
    sizes: &Sizes,
) -> Result<Ebpf, LoaderError> {
    let maglev_entries = sizes.maglev_m.saturating_mul(sizes.maglev_rows).max(1);
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(maps_dir)
        .map_max_entries(names::CT, sizes.ct_max.max(1))
        .map_max_entries(names::MAGLEV, maglev_entries)
        .load(bytes)
        .map_err(|e| LoaderError::Load {
            object,
            source: Box::new(e),
        })?;
    for (name, prog) in ebpf.programs_mut() {
        let mut attempt = 0;
        let res = loop {
            attempt += 1;
            let res = match prog {
                Program::SchedClassifier(p) => p.load(),
                Program::CgroupSockAddr(p) => p.load(),
                other => {
                    return Err(LoaderError::ProgramType {
                        object,
                        program: name.to_string(),
                        kind: format!("{:?}", other.prog_type()),
                    });
                }
            };
            match res {
                // The verifier gives up with EAGAIN when a signal is pending (a child
                // exiting, SIGTERM racing the start); libbpf retries likewise.
                Err(ProgramError::LoadError { io_error, .. })
                    if io_error.raw_os_error() == Some(libc::EAGAIN) && attempt < LOAD_TRIES =>
                {
                    debug!(
                        object,
                        program = name,
                        attempt,
                        "verifier interrupted; loading again"
                    );
                }
                other => break other,
            }
        };
        res.map_err(|e| LoaderError::Program {
            object,
            program: name.to_string(),
            source: Box::new(e),
        })?;
    }
    Ok(ebpf)
}

/// Every map's key and value size (`proxy.h`; LPM keys include their prefix length).
pub const LAYOUTS: [(&str, u32, u32); 15] = [
    (names::SVC, 20, 16),
    (names::SLOT, 8, 4),
    (names::BACKEND, 4, 20),
    (names::REV_NAT, 4, 20),
    (names::AFFINITY_MATCH, 8, 1),
    (names::CT, 40, abi::CT_VAL_LEN as u32),
    (names::SOCK_REV, 32, 20),
    (names::AFFINITY, 24, 8),
    (names::SRC_RANGE, 24, 1),
    (names::MAGLEV, 4, 4),
    (names::NODE_ADDR, 16, 4),
    (names::CLUSTER_CIDR, 20, 1),
    (names::CONFIG, 4, 32),
    (names::COUNTERS, 4, 8),
    (names::FRAG, 40, 4),
];

/// A map pinned by another version of the proxy with another layout.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ForeignLayout {
    map: &'static str,
    /// The pinned map's key and value sizes.
    pinned: (u32, u32),
    /// This version's.
    ours: (u32, u32),
}

/// The first map pinned with another layout than this version's, if any. Found before
/// anything is loaded against it: the verifier would fail the programs with a far less
/// helpful message, or, worse, accept them.
fn foreign_pinned_layout(maps_dir: &Path) -> Result<Option<ForeignLayout>, LoaderError> {
    for (name, key, value) in LAYOUTS {
        let path = maps_dir.join(name);
        if !path.exists() {
            continue;
        }
        let info = MapData::from_pin(&path)
            .and_then(|m| m.info())
            .map_err(|e| LoaderError::Map {
                map: names_static(name),
                path: path.clone(),
                reason: format!("opening the pin: {e}"),
            })?;
        if (info.key_size(), info.value_size()) != (key, value) {
            return Ok(Some(ForeignLayout {
                map: names_static(name),
                pinned: (info.key_size(), info.value_size()),
                ours: (key, value),
            }));
        }
    }
    Ok(None)
}

/// Removes every pin in `dir` (a missing directory has none); returns how many. A pinned map
/// or link lives on while something else (an attached program, a process) holds it.
pub(crate) fn remove_pins(dir: &Path) -> std::io::Result<usize> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut removed = 0;
    for e in entries {
        std::fs::remove_file(e?.path())?;
        removed += 1;
    }
    Ok(removed)
}

fn names_static(name: &str) -> &'static str {
    LAYOUTS
        .iter()
        .map(|(n, _, _)| *n)
        .find(|n| *n == name)
        .unwrap_or("?")
}

/// Typed handles on every pinned map (keys and values as the [`abi`] byte layouts).
pub struct Maps {
    pub svc: HashMap<MapData, [u8; 20], [u8; 16]>,
    pub slot: HashMap<MapData, [u8; 8], u32>,
    pub backend: HashMap<MapData, u32, [u8; 20]>,
    pub rev_nat: HashMap<MapData, u32, [u8; 20]>,
    pub affinity_match: HashMap<MapData, [u8; 8], u8>,
    pub ct: HashMap<MapData, [u8; 40], [u8; abi::CT_VAL_LEN]>,
    pub sock_rev: HashMap<MapData, [u8; 32], [u8; 20]>,
    pub affinity: HashMap<MapData, [u8; 24], [u8; 8]>,
    pub src_range: LpmTrie<MapData, [u8; 20], u8>,
    pub maglev: Array<MapData, u32>,
    pub node_addr: HashMap<MapData, [u8; 16], u32>,
    pub cluster_cidr: LpmTrie<MapData, [u8; 16], u8>,
    pub config: Array<MapData, [u8; 32]>,
    pub counters: PerCpuArray<MapData, u64>,
}

fn open_map<M>(maps_dir: &Path, name: &'static str) -> Result<M, LoaderError>
where
    M: TryFrom<Map, Error = MapError>,
{
    let path = maps_dir.join(name);
    let err = |reason: String| LoaderError::Map {
        map: name,
        path: path.clone(),
        reason,
    };
    let data = MapData::from_pin(&path).map_err(|e| err(format!("opening the pin: {e}")))?;
    let map = Map::from_map_data(data).map_err(|e| err(e.to_string()))?;
    // Converting checks the kernel's key and value sizes against ours: a map pinned by an
    // older layout is refused here rather than misread.
    M::try_from(map).map_err(|e| {
        err(format!(
            "layout: {e} (pinned by another version of the proxy; the proxy of this version \
             makes every map afresh when it starts)"
        ))
    })
}

impl Maps {
    /// Opens the maps pinned under `<bpf_dir>/maps` (for reading them, as `dump` does, or
    /// for a writer besides the loader).
    pub fn open(bpf_dir: &Path) -> Result<Maps, LoaderError> {
        let d = bpf_dir.join(MAPS_DIR);
        Ok(Maps {
            svc: open_map(&d, names::SVC)?,
            slot: open_map(&d, names::SLOT)?,
            backend: open_map(&d, names::BACKEND)?,
            rev_nat: open_map(&d, names::REV_NAT)?,
            affinity_match: open_map(&d, names::AFFINITY_MATCH)?,
            ct: open_map(&d, names::CT)?,
            sock_rev: open_map(&d, names::SOCK_REV)?,
            affinity: open_map(&d, names::AFFINITY)?,
            src_range: open_map(&d, names::SRC_RANGE)?,
            maglev: open_map(&d, names::MAGLEV)?,
            node_addr: open_map(&d, names::NODE_ADDR)?,
            cluster_cidr: open_map(&d, names::CLUSTER_CIDR)?,
            config: open_map(&d, names::CONFIG)?,
            counters: open_map(&d, names::COUNTERS)?,
        })
    }

    /// The kernel ids of the maps, by name (the same after a restart: nothing recreated).
    pub fn ids(&self) -> Vec<(&'static str, u32)> {
        let id = |m: &MapData| m.info().map(|i| i.id()).unwrap_or(0);
        vec![
            (names::SVC, id(data(&self.svc))),
            (names::SLOT, id(data(&self.slot))),
            (names::BACKEND, id(data(&self.backend))),
            (names::REV_NAT, id(data(&self.rev_nat))),
            (names::CT, id(data(&self.ct))),
            (names::CONFIG, id(data(&self.config))),
        ]
    }
}

/// The untyped map under one of aya's typed handles.
fn data<K: aya::Pod, V, M: IterableMap<K, V>>(m: &M) -> &MapData {
    m.map()
}

fn io_of(e: MapError) -> io::Error {
    match e {
        MapError::SyscallError(s) => s.io_error,
        MapError::KeyNotFound | MapError::ElementNotFound => {
            io::Error::from(io::ErrorKind::NotFound)
        }
        other => io::Error::other(other.to_string()),
    }
}

fn map_err(map: &'static str) -> impl Fn(MapError) -> DataplaneError {
    move |e| DataplaneError::Map {
        map,
        source: io_of(e),
    }
}

fn io_err(map: &'static str, what: &str, e: io::Error) -> DataplaneError {
    DataplaneError::Map {
        map,
        source: io::Error::new(e.kind(), format!("{what}: {e}")),
    }
}

/// An absent key on removal is fine: the diff may repeat a removal after a failed apply.
fn removed(res: Result<(), MapError>, map: &'static str) -> Result<(), DataplaneError> {
    match res {
        Ok(()) => Ok(()),
        Err(e) => {
            let e = io_of(e);
            if e.raw_os_error() == Some(libc::ENOENT) || e.kind() == io::ErrorKind::NotFound {
                Ok(())
            } else {
                Err(DataplaneError::Map { map, source: e })
            }
        }
    }
}

/// Diffs at least this long go through the batch system calls.
const BATCH_MIN: usize = 16;

/// Writes one entry through aya (the fallback when a batch is refused).
type WriteOne<'a, const K: usize, const V: usize> =
    &'a mut dyn FnMut(&[u8; K], &[u8; V]) -> Result<(), MapError>;

/// Writes entries to a hash-like map: batched when there are many, one by one otherwise.
fn upsert_all<const K: usize, const V: usize>(
    fd: std::os::fd::BorrowedFd<'_>,
    map: &'static str,
    entries: &[([u8; K], [u8; V])],
    one: WriteOne<'_, K, V>,
) -> Result<(), DataplaneError> {
    if entries.len() >= BATCH_MIN {
        let mut keys = Vec::with_capacity(entries.len() * K);
        let mut vals = Vec::with_capacity(entries.len() * V);
        for (k, v) in entries {
            keys.extend_from_slice(k);
            vals.extend_from_slice(v);
        }
        match sysbpf::map_update_batch(fd, &keys, K, &vals, V) {
            Ok(()) => return Ok(()),
            // Maps without batch support (LPM tries) answer EINVAL/ENOTSUPP: write one by one.
            Err((e, 0)) if matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(524)) => {
                debug!(map, error = %e, "batch update refused; writing one by one");
            }
            Err((e, done)) => {
                return Err(io_err(
                    map,
                    &format!("batch update of {} entries ({done} written)", entries.len()),
                    e,
                ));
            }
        }
    }
    for (k, v) in entries {
        one(k, v).map_err(map_err(map))?;
    }
    Ok(())
}

/// Removes keys: batched when there are many (a missing key ends a batch with ENOENT; the
/// rest are then removed one by one, missing ones ignored).
fn remove_all<const K: usize>(
    fd: std::os::fd::BorrowedFd<'_>,
    map: &'static str,
    keys: &[[u8; K]],
    one: &mut dyn FnMut(&[u8; K]) -> Result<(), MapError>,
) -> Result<(), DataplaneError> {
    let mut start = 0;
    if keys.len() >= BATCH_MIN {
        let flat: Vec<u8> = keys.iter().flatten().copied().collect();
        match sysbpf::map_delete_batch(fd, &flat, K) {
            Ok(()) => return Ok(()),
            Err((e, done)) => {
                debug!(map, error = %e, done, "batch delete stopped; removing the rest one by one");
                start = done as usize;
            }
        }
    }
    for k in &keys[start..] {
        removed(one(k), map)?;
    }
    Ok(())
}

fn u32_key_bytes(k: u32) -> [u8; 4] {
    k.to_ne_bytes()
}

impl Maps {
    /// Writes a diff in [`MapDiff::APPLY_ORDER`].
    pub fn apply(&mut self, d: &MapDiff, maglev_m: u32) -> Result<(), DataplaneError> {
        // 1. everything a frontend may point at, before the frontends.
        let be: Vec<([u8; 4], [u8; 20])> = d
            .backend_upsert
            .iter()
            .map(|(id, b)| (u32_key_bytes(*id), b.to_bytes()))
            .collect();
        let fd = fd_of(&self.backend, names::BACKEND)?;
        let backend = &mut self.backend;
        upsert_all(fd.as_fd(), names::BACKEND, &be, &mut |k, v| {
            backend.insert(u32::from_ne_bytes(*k), v, 0)
        })?;
        let rn: Vec<([u8; 4], [u8; 20])> = d
            .rev_nat_upsert
            .iter()
            .map(|(id, r)| (u32_key_bytes(*id), r.to_bytes()))
            .collect();
        let fd = fd_of(&self.rev_nat, names::REV_NAT)?;
        let rev_nat = &mut self.rev_nat;
        upsert_all(fd.as_fd(), names::REV_NAT, &rn, &mut |k, v| {
            rev_nat.insert(u32::from_ne_bytes(*k), v, 0)
        })?;
        let sl: Vec<([u8; 8], [u8; 4])> = d
            .slot_upsert
            .iter()
            .map(|(k, id)| (k.to_bytes(), id.to_ne_bytes()))
            .collect();
        let fd = fd_of(&self.slot, names::SLOT)?;
        let slot = &mut self.slot;
        upsert_all(fd.as_fd(), names::SLOT, &sl, &mut |k, v| {
            slot.insert(k, u32::from_ne_bytes(*v), 0)
        })?;
        let am: Vec<([u8; 8], [u8; 1])> = d
            .affinity_match_add
            .iter()
            .map(|m| (m.to_bytes(), [1]))
            .collect();
        let fd = fd_of(&self.affinity_match, names::AFFINITY_MATCH)?;
        let affinity_match = &mut self.affinity_match;
        upsert_all(fd.as_fd(), names::AFFINITY_MATCH, &am, &mut |k, v| {
            affinity_match.insert(k, v[0], 0)
        })?;
        for r in &d.src_range_add {
            let (len, data) = src_range_lpm(r);
            self.src_range
                .insert(&LpmKey::new(len, data), 1, 0)
                .map_err(map_err(names::SRC_RANGE))?;
        }
        for (row, table) in &d.maglev_write {
            self.write_maglev_row(*row, table, maglev_m)?;
        }
        // 2. frontends (a grown count finds its slots), 3. removed frontends.
        let sv: Vec<([u8; 20], [u8; 16])> = d
            .svc_upsert
            .iter()
            .map(|(k, v)| (k.to_bytes(), v.to_bytes()))
            .collect();
        let fd = fd_of(&self.svc, names::SVC)?;
        let svc = &mut self.svc;
        upsert_all(fd.as_fd(), names::SVC, &sv, &mut |k, v| svc.insert(k, v, 0))?;
        let sr: Vec<[u8; 20]> = d.svc_remove.iter().map(|k| k.to_bytes()).collect();
        let svc = &mut self.svc;
        remove_all(fd.as_fd(), names::SVC, &sr, &mut |k| svc.remove(k))?;
        // 4. what shrunk frontends no longer reach.
        let sl: Vec<[u8; 8]> = d.slot_remove.iter().map(|k| k.to_bytes()).collect();
        let fd = fd_of(&self.slot, names::SLOT)?;
        let slot = &mut self.slot;
        remove_all(fd.as_fd(), names::SLOT, &sl, &mut |k| slot.remove(k))?;
        let am: Vec<[u8; 8]> = d
            .affinity_match_remove
            .iter()
            .map(|m| m.to_bytes())
            .collect();
        let fd = fd_of(&self.affinity_match, names::AFFINITY_MATCH)?;
        let affinity_match = &mut self.affinity_match;
        remove_all(fd.as_fd(), names::AFFINITY_MATCH, &am, &mut |k| {
            affinity_match.remove(k)
        })?;
        for r in &d.src_range_remove {
            let (len, data) = src_range_lpm(r);
            removed(
                self.src_range.remove(&LpmKey::new(len, data)),
                names::SRC_RANGE,
            )?;
        }
        // 5. reverse NAT and backends last.
        let rn: Vec<[u8; 4]> = d.rev_nat_remove.iter().map(|k| u32_key_bytes(*k)).collect();
        let fd = fd_of(&self.rev_nat, names::REV_NAT)?;
        let rev_nat = &mut self.rev_nat;
        remove_all(fd.as_fd(), names::REV_NAT, &rn, &mut |k| {
            rev_nat.remove(&u32::from_ne_bytes(*k))
        })?;
        let be: Vec<[u8; 4]> = d.backend_remove.iter().map(|k| u32_key_bytes(*k)).collect();
        let fd = fd_of(&self.backend, names::BACKEND)?;
        let backend = &mut self.backend;
        remove_all(fd.as_fd(), names::BACKEND, &be, &mut |k| {
            backend.remove(&u32::from_ne_bytes(*k))
        })?;
        Ok(())
    }

    fn write_maglev_row(
        &mut self,
        row: u32,
        table: &[u32],
        maglev_m: u32,
    ) -> Result<(), DataplaneError> {
        let m = maglev_m as usize;
        if table.len() != m {
            return Err(DataplaneError::Other {
                what: format!("map {} row {row}", names::MAGLEV),
                reason: format!("{} entries, the table size is {m}", table.len()),
            });
        }
        let base = row as u64 * m as u64;
        if base + m as u64 > self.maglev.len() as u64 {
            return Err(DataplaneError::Other {
                what: format!("map {} row {row}", names::MAGLEV),
                reason: format!(
                    "beyond the map's {} entries (rows of {m})",
                    self.maglev.len()
                ),
            });
        }
        let keys: Vec<u8> = (0..m as u32)
            .flat_map(|i| (base as u32 + i).to_ne_bytes())
            .collect();
        let vals: Vec<u8> = table.iter().flat_map(|b| b.to_ne_bytes()).collect();
        let fd = fd_of(&self.maglev, names::MAGLEV)?;
        match sysbpf::map_update_batch(fd.as_fd(), &keys, 4, &vals, 4) {
            Ok(()) => Ok(()),
            Err((e, _)) => {
                debug!(error = %e, "maglev batch refused; writing one by one");
                for (i, b) in table.iter().enumerate() {
                    self.maglev
                        .set(base as u32 + i as u32, b, 0)
                        .map_err(map_err(names::MAGLEV))?;
                }
                Ok(())
            }
        }
    }

    /// The control-plane maps as the kernel holds them.
    pub fn read(&self, maglev_m: u32) -> Result<MapState, DataplaneError> {
        let dec = |e: abi::DecodeError| DataplaneError::Other {
            what: format!("map {}", e.map),
            reason: e.reason,
        };
        let mut st = MapState::default();
        for kv in self.svc.iter() {
            let (k, v) = kv.map_err(map_err(names::SVC))?;
            st.svc.insert(
                abi::SvcKey::from_bytes(&k).map_err(dec)?,
                abi::SvcVal::from_bytes(&v),
            );
        }
        for kv in self.slot.iter() {
            let (k, v) = kv.map_err(map_err(names::SLOT))?;
            st.slot
                .insert(abi::SlotKey::from_bytes(&k).map_err(dec)?, v);
        }
        for kv in self.backend.iter() {
            let (k, v) = kv.map_err(map_err(names::BACKEND))?;
            st.backend
                .insert(k, abi::Backend::from_bytes(&v).map_err(dec)?);
        }
        for kv in self.rev_nat.iter() {
            let (k, v) = kv.map_err(map_err(names::REV_NAT))?;
            st.rev_nat.insert(k, abi::RevNat::from_bytes(&v));
        }
        for k in self.affinity_match.keys() {
            let k = k.map_err(map_err(names::AFFINITY_MATCH))?;
            st.affinity_match.insert(abi::AffinityMatch::from_bytes(&k));
        }
        for k in self.src_range.keys() {
            let k = k.map_err(map_err(names::SRC_RANGE))?;
            let mut b = [0u8; 24];
            b[..4].copy_from_slice(&k.prefix_len().to_ne_bytes());
            b[4..].copy_from_slice(&k.data());
            st.src_range
                .insert(abi::SrcRange::from_bytes(&b).map_err(dec)?);
        }
        let rows: BTreeSet<u32> = st
            .svc
            .values()
            .filter(|v| v.flags & abi::svc_flags::MAGLEV != 0)
            .map(|v| v.maglev_row)
            .collect();
        for row in rows {
            let base = row.saturating_mul(maglev_m);
            let mut t = Vec::with_capacity(maglev_m as usize);
            for i in 0..maglev_m {
                t.push(
                    self.maglev
                        .get(&(base + i), 0)
                        .map_err(map_err(names::MAGLEV))?,
                );
            }
            st.maglev.insert(row, t);
        }
        Ok(st)
    }

    /// Makes `mn_node_addr` hold exactly `addrs`.
    pub fn set_node_addrs(&mut self, addrs: &BTreeSet<IpAddr>) -> Result<(), DataplaneError> {
        let want: BTreeSet<[u8; 16]> = addrs.iter().map(|a| abi::addr_bytes(*a)).collect();
        let have = self
            .node_addr
            .keys()
            .collect::<Result<BTreeSet<_>, _>>()
            .map_err(map_err(names::NODE_ADDR))?;
        for a in want.difference(&have) {
            self.node_addr
                .insert(a, 0, 0)
                .map_err(map_err(names::NODE_ADDR))?;
        }
        for a in have.difference(&want) {
            removed(self.node_addr.remove(a), names::NODE_ADDR)?;
        }
        Ok(())
    }

    /// The addresses `mn_node_addr` holds.
    pub fn node_addrs(&self) -> Result<BTreeSet<IpAddr>, DataplaneError> {
        self.node_addr
            .keys()
            .map(|k| k.map(abi::addr_from))
            .collect::<Result<_, _>>()
            .map_err(map_err(names::NODE_ADDR))
    }

    /// Makes `mn_cluster_cidr` hold exactly `cidrs`.
    pub fn set_cluster_cidrs(&mut self, cidrs: &[ipnet::IpNet]) -> Result<(), DataplaneError> {
        let want: BTreeSet<(u32, [u8; 16])> = cidrs
            .iter()
            .map(|n| {
                let b = abi::cidr_key(n.trunc());
                (
                    u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
                    b[4..].try_into().unwrap_or([0; 16]),
                )
            })
            .collect();
        let have = self
            .cluster_cidr
            .keys()
            .map(|k| k.map(|k| (k.prefix_len(), k.data())))
            .collect::<Result<BTreeSet<_>, _>>()
            .map_err(map_err(names::CLUSTER_CIDR))?;
        for (len, a) in want.difference(&have) {
            self.cluster_cidr
                .insert(&LpmKey::new(*len, *a), 1, 0)
                .map_err(map_err(names::CLUSTER_CIDR))?;
        }
        for (len, a) in have.difference(&want) {
            removed(
                self.cluster_cidr.remove(&LpmKey::new(*len, *a)),
                names::CLUSTER_CIDR,
            )?;
        }
        Ok(())
    }

    pub fn set_config(&mut self, cfg: &abi::Config) -> Result<(), DataplaneError> {
        self.config
            .set(0, cfg.to_bytes(), 0)
            .map_err(map_err(names::CONFIG))
    }

    /// `mn_config[0]` as the kernel holds it.
    pub fn config(&self) -> Result<abi::Config, DataplaneError> {
        let b = self.config.get(&0, 0).map_err(map_err(names::CONFIG))?;
        Ok(config_from_bytes(&b))
    }

    pub fn counters(&self) -> Result<Vec<u64>, DataplaneError> {
        (0..self.counters.len())
            .map(|i| {
                self.counters
                    .get(&i, 0)
                    .map(|per_cpu| per_cpu.iter().fold(0u64, |a, v| a.wrapping_add(*v)))
                    .map_err(map_err(names::COUNTERS))
            })
            .collect()
    }

    /// `mn_maglev`'s size as the kernel holds it (a pinned map keeps the size it was made
    /// with): the model's row count is this divided by M (`ids::maglev_rows`).
    pub fn maglev_entries(&self) -> u32 {
        self.maglev.len()
    }

    /// Entries and capacity of the per-connection maps, counted with batch lookups.
    pub fn fill(&self) -> Result<Fill, DataplaneError> {
        let count = |m: &MapData, map: &'static str, k: usize, v: usize| {
            let info = m.info().map_err(map_err(map))?;
            let n = sysbpf::map_count(m.fd().as_fd(), k, v)
                .map_err(|e| io_err(map, "counting entries", e))?;
            Ok::<_, DataplaneError>((map, n, u64::from(info.max_entries())))
        };
        Ok(Fill {
            maps: vec![
                count(data(&self.ct), names::CT, 40, abi::CT_VAL_LEN)?,
                count(data(&self.sock_rev), names::SOCK_REV, 32, 20)?,
                count(data(&self.affinity), names::AFFINITY, 24, 8)?,
            ],
        })
    }
}

fn fd_of<K: aya::Pod, V, M: IterableMap<K, V>>(
    m: &M,
    map: &'static str,
) -> Result<std::os::fd::OwnedFd, DataplaneError> {
    // A duplicate keeps the borrow checker out of the way of the typed handle's &mut; it costs
    // one fcntl per map and step, nothing next to the writes.
    data(m)
        .fd()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| io_err(map, "duplicating the map descriptor", e))
}

/// `struct mn_config` decoded (abi.rs encodes only; the layout is the one `to_bytes` writes).
fn config_from_bytes(b: &[u8; 32]) -> abi::Config {
    let u32at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let mut cookie = [0u8; 8];
    cookie.copy_from_slice(&b[..8]);
    abi::Config {
        host_netns_cookie: u64::from_le_bytes(cookie),
        socket_lb: u32at(8),
        maglev_m: u32at(12),
        masq_mark: u32at(16),
        ct_timeout_tcp: u32at(20),
        ct_timeout_other: u32at(24),
        snat_port_min: u16::from_le_bytes([b[28], b[29]]),
        snat_port_max: u16::from_le_bytes([b[30], b[31]]),
    }
}

/// The LPM key parts of a source range: aya's `Key` carries the prefix length apart.
fn src_range_lpm(r: &abi::SrcRange) -> (u32, [u8; 20]) {
    let b = r.to_bytes();
    let len = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    let mut data = [0u8; 20];
    data.copy_from_slice(&b[4..]);
    (len, data)
}

/// The loaded data path: maps opened from their pins and, until the attach module takes
/// them, the programs.
pub struct Loader {
    dir: PathBuf,
    maps: Maps,
    programs: Option<Programs>,
    sizes: Sizes,
}

impl std::fmt::Debug for Loader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loader")
            .field("dir", &self.dir)
            .field("sizes", &self.sizes)
            .field("programs", &self.programs)
            .finish()
    }
}

impl Loader {
    /// Mounts a bpffs on `bpf_dir` when it is not on one, loads `lb.o` and `sock.o` with
    /// their maps pinned by name under `<bpf_dir>/maps` (reused when already there) and opens
    /// the maps.
    pub fn open(bpf_dir: &Path, sizes: &Sizes) -> Result<Loader, LoaderError> {
        ensure_bpffs(bpf_dir)?;
        let maps_dir = bpf_dir.join(MAPS_DIR);
        std::fs::create_dir_all(&maps_dir).map_err(|e| bpffs_err(&maps_dir, e))?;
        if let Some(foreign) = foreign_pinned_layout(&maps_dir)? {
            // An upgrade (or downgrade) that changed a layout: as Cilium does, every map is
            // made afresh rather than the node left without a proxy until someone runs
            // --cleanup-config. All of them, as ids in one map point into the others; the
            // daemon programs them again from the cluster state.
            let unpinned = remove_pins(&maps_dir).map_err(|e| bpffs_err(&maps_dir, e))?;
            warn!(
                map = foreign.map,
                pinned_key_bytes = foreign.pinned.0,
                pinned_value_bytes = foreign.pinned.1,
                key_bytes = foreign.ours.0,
                value_bytes = foreign.ours.1,
                unpinned,
                "a map was pinned by another version of the proxy with another layout: every \
                 map is created afresh (connections tracked by the per-packet path are reset; \
                 socket-LB connections are not affected)"
            );
        }
        let reused = maps_dir.join(names::SVC).exists();
        let lb = load_object("lb", LB_OBJECT, &maps_dir, sizes)?;
        let sock = load_object("sock", SOCK_OBJECT, &maps_dir, sizes)?;
        let maps = Maps::open(bpf_dir)?;
        let ct_max = data(&maps.ct).info().map(|i| i.max_entries()).unwrap_or(0);
        if ct_max != sizes.ct_max {
            warn!(
                map = names::CT,
                pinned = ct_max,
                requested = sizes.ct_max,
                "the pinned conntrack map keeps its size (resizing would drop every connection); \
                 run --cleanup-config to recreate it"
            );
        }
        let loader = Loader {
            dir: bpf_dir.to_path_buf(),
            maps,
            programs: Some(Programs { lb, sock }),
            sizes: sizes.clone(),
        };
        info!(dir = %bpf_dir.display(), reused, maps = ?loader.maps.ids(), "BPF data path loaded");
        Ok(loader)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn maps(&self) -> &Maps {
        &self.maps
    }

    /// The programs, for the attach module (once).
    pub fn take_programs(&mut self) -> Option<Programs> {
        self.programs.take()
    }

    fn maglev_m(&self) -> u32 {
        // The size the pinned map was built for wins over the flag: rows must line up with
        // what the programs read (mn_config.maglev_m, set by the daemon from the same flag).
        match self.maps.config() {
            Ok(c) if c.maglev_m != 0 => c.maglev_m,
            _ => self.sizes.maglev_m,
        }
    }
}

impl Dataplane for Loader {
    fn apply(&mut self, diff: &MapDiff) -> Result<(), DataplaneError> {
        let m = self.maglev_m();
        self.maps.apply(diff, m)
    }
    fn read(&self) -> Result<MapState, DataplaneError> {
        self.maps.read(self.maglev_m())
    }
    fn set_node_addrs(&mut self, addrs: &BTreeSet<IpAddr>) -> Result<(), DataplaneError> {
        self.maps.set_node_addrs(addrs)
    }
    fn set_cluster_cidrs(&mut self, cidrs: &[ipnet::IpNet]) -> Result<(), DataplaneError> {
        self.maps.set_cluster_cidrs(cidrs)
    }
    fn set_config(&mut self, cfg: &abi::Config) -> Result<(), DataplaneError> {
        self.maps.set_config(cfg)
    }
    fn counters(&self) -> Result<Vec<u64>, DataplaneError> {
        self.maps.counters()
    }
    fn fill(&self) -> Result<Fill, DataplaneError> {
        self.maps.fill()
    }
    fn destroy_sockets(&mut self, backends: &[abi::Backend]) -> Result<usize, DataplaneError> {
        super::attach::destroy_sockets(backends)
    }
}
