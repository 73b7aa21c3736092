//! Frontend ids (`rev_id`), backend ids and Maglev rows, stable across recomputations and
//! restarts. Pure.
//!
//! The maps are the record: [`Ids::from_state`] rebuilds the assignment from what `mn_svc`,
//! `mn_rev_nat` and `mn_backend` hold, so a restarted proxy gives every existing frontend and
//! backend the id its conntrack and affinity entries already carry. A new frontend or backend
//! gets the lowest free id (never 0, which the data path reads as "none"); the id of a removed
//! one is reused only once it is gone from the maps ([`Ids::committed`]), so a packet never
//! finds an old id pointing at a new object.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;

use super::abi::{Proto, svc_flags};
use super::state::MapState;

/// `mn_maglev`'s default size in entries (`MN_MAGLEV_ENTRIES` in `proxy.h`).
pub const DEFAULT_MAGLEV_ENTRIES: u32 = 1021 * 256;

/// How many Maglev rows of `m` entries fit in `entries` (what [`Ids::new`] takes).
pub fn maglev_rows(entries: u32, m: u32) -> u32 {
    entries.checked_div(m).unwrap_or(0)
}

/// A frontend or backend as ids know it: address, port, protocol (not the scope, not flags).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Endpoint {
    pub addr: IpAddr,
    pub port: u16,
    pub proto: Proto,
}

/// One id space: objects -> ids, with the ids the maps may still hold kept reserved.
#[derive(Clone, Debug)]
struct Space<K> {
    assigned: HashMap<K, u32>,
    /// Ids in use: assigned ones and those the maps still hold.
    taken: BTreeSet<u32>,
    /// Ids the maps held at the last [`Ids::committed`] (or [`Ids::from_state`]).
    live: BTreeSet<u32>,
    /// Keys used since the last [`Ids::begin`].
    used: std::collections::HashSet<K>,
    /// Every id below this is taken (a search start, so assigning N ids costs O(N)).
    low: u32,
    first: u32,
    /// Ids are below this.
    end: u64,
}

impl<K: Copy + Eq + std::hash::Hash> Space<K> {
    fn new(first: u32, end: u64) -> Self {
        Space {
            assigned: HashMap::new(),
            taken: BTreeSet::new(),
            live: BTreeSet::new(),
            used: Default::default(),
            low: first,
            first,
            end,
        }
    }

    fn get(&mut self, key: K) -> Option<u32> {
        if let Some(&id) = self.assigned.get(&key) {
            self.used.insert(key);
            return Some(id);
        }
        let mut id = self.low;
        while self.taken.contains(&id) {
            id = id.checked_add(1)?;
        }
        if id as u64 >= self.end {
            return None;
        }
        self.low = id + 1;
        self.taken.insert(id);
        // About to be written: held until the maps are known not to have it.
        self.live.insert(id);
        self.assigned.insert(key, id);
        self.used.insert(key);
        Some(id)
    }

    /// Forgets a key now (an incremental update dropped it); its id stays taken while the
    /// maps may hold it.
    fn release(&mut self, key: &K) {
        self.used.remove(key);
        if let Some(id) = self.assigned.remove(key)
            && !self.live.contains(&id)
        {
            self.taken.remove(&id);
            self.low = self.low.min(id);
        }
    }

    fn peek(&self, key: &K) -> Option<u32> {
        self.assigned.get(key).copied()
    }

    /// Records a key's id read back from the maps.
    fn restore(&mut self, key: K, id: u32) {
        if id < self.first || self.assigned.contains_key(&key) {
            // A second id for the same object (left by a failed write): keep it reserved
            // only, so the maps' entry is not reused before it is gone.
            self.taken.insert(id);
            self.live.insert(id);
            return;
        }
        self.assigned.insert(key, id);
        self.taken.insert(id);
        self.live.insert(id);
    }

    fn reserve(&mut self, id: u32) {
        if id >= self.first {
            self.taken.insert(id);
            self.live.insert(id);
        }
    }

    /// Forgets keys not used this round whose ids the maps no longer hold.
    fn sweep(&mut self) {
        let (used, live) = (&self.used, &self.live);
        let mut freed = Vec::new();
        self.assigned.retain(|k, id| {
            let keep = used.contains(k) || live.contains(id);
            if !keep {
                freed.push(*id);
            }
            keep
        });
        for id in freed {
            self.taken.remove(&id);
            self.low = self.low.min(id);
        }
    }

    /// Ends a round: the ids handed out are about to be written, so they count as held by the
    /// maps until [`Ids::committed`] says otherwise.
    fn end(&mut self) {
        self.sweep();
        for k in &self.used {
            if let Some(id) = self.assigned.get(k) {
                self.live.insert(*id);
            }
        }
    }

    fn commit(&mut self, live: BTreeSet<u32>) {
        let assigned: BTreeSet<u32> = self.assigned.values().copied().collect();
        self.live = live;
        // Ids only the maps held (no key) and now gone are free again.
        let stale: Vec<u32> = self
            .taken
            .iter()
            .copied()
            .filter(|id| !assigned.contains(id) && !self.live.contains(id))
            .collect();
        for id in stale {
            self.taken.remove(&id);
            self.low = self.low.min(id);
        }
        for id in &self.live {
            self.taken.insert(*id);
        }
        self.sweep();
    }
}

/// The id assignment. Ask it for ids while computing a desired state between
/// [`Ids::begin`] and [`Ids::end`]; tell it what the maps hold after each write with
/// [`Ids::committed`].
#[derive(Clone, Debug)]
pub struct Ids {
    frontends: Space<Endpoint>,
    backends: Space<Endpoint>,
    /// Maglev rows, keyed by the frontend's rev_id; rows count from 0.
    rows: Space<u32>,
}

impl Default for Ids {
    fn default() -> Self {
        Ids::new(u32::MAX)
    }
}

impl Ids {
    /// An empty assignment with `maglev_rows` rows available (`mn_maglev`'s entries / M).
    pub fn new(maglev_rows: u32) -> Ids {
        Ids {
            frontends: Space::new(1, u32::MAX as u64 + 1),
            backends: Space::new(1, u32::MAX as u64 + 1),
            rows: Space::new(0, maglev_rows as u64),
        }
    }

    /// The assignment the maps record (after a restart).
    pub fn from_state(state: &MapState, maglev_rows: u32) -> Ids {
        let mut ids = Ids::new(maglev_rows);
        // mn_svc knows each frontend's protocol; mn_rev_nat alone does not.
        for (k, v) in &state.svc {
            let key = Endpoint {
                addr: k.addr,
                port: k.port,
                proto: k.proto,
            };
            if ids.frontends.peek(&key) != Some(v.rev_id) {
                ids.frontends.restore(key, v.rev_id);
            }
            if v.flags & svc_flags::MAGLEV != 0 && ids.rows.peek(&v.rev_id) != Some(v.maglev_row) {
                ids.rows.restore(v.rev_id, v.maglev_row);
            }
        }
        for id in state.rev_nat.keys() {
            ids.frontends.reserve(*id);
        }
        for id in state.slot.keys().map(|k| k.rev_id) {
            ids.frontends.reserve(id);
        }
        for row in state.maglev.keys() {
            ids.rows.reserve(*row);
        }
        for (id, b) in &state.backend {
            ids.backends.restore(
                Endpoint {
                    addr: b.addr,
                    port: b.port,
                    proto: b.proto,
                },
                *id,
            );
        }
        for id in state.slot.values() {
            ids.backends.reserve(*id);
        }
        ids
    }

    /// Starts a recomputation: what is not asked for before [`Ids::end`] may be released.
    pub fn begin(&mut self) {
        self.frontends.used.clear();
        self.backends.used.clear();
        self.rows.used.clear();
    }

    /// Ends a recomputation: forgets objects not asked for whose ids the maps no longer hold.
    pub fn end(&mut self) {
        self.frontends.end();
        self.backends.end();
        self.rows.end();
    }

    /// What the maps hold now (after a write, or read back after a failed one): ids absent
    /// from them and not in the last desired state become free.
    pub fn committed(&mut self, state: &MapState) {
        let mut fe: BTreeSet<u32> = state.rev_nat.keys().copied().collect();
        fe.extend(state.svc.values().map(|v| v.rev_id));
        fe.extend(state.slot.keys().map(|k| k.rev_id));
        let mut be: BTreeSet<u32> = state.backend.keys().copied().collect();
        be.extend(state.slot.values().copied());
        let mut rows: BTreeSet<u32> = state.maglev.keys().copied().collect();
        rows.extend(
            state
                .svc
                .values()
                .filter(|v| v.flags & svc_flags::MAGLEV != 0)
                .map(|v| v.maglev_row),
        );
        self.frontends.commit(fe);
        self.backends.commit(be);
        self.rows.commit(rows);
    }

    /// The frontend's rev_id (`None` only when all 2^32-1 are taken).
    pub fn frontend(&mut self, fe: Endpoint) -> Option<u32> {
        self.frontends.get(fe)
    }

    /// The backend's id.
    pub fn backend(&mut self, be: Endpoint) -> Option<u32> {
        self.backends.get(be)
    }

    /// The Maglev row of a frontend (`None` when every row is taken).
    pub fn maglev_row(&mut self, rev_id: u32) -> Option<u32> {
        self.rows.get(rev_id)
    }

    /// Drops a frontend outside a full recomputation ([`super::model::Model::update`]).
    pub fn release_frontend(&mut self, fe: &Endpoint) {
        self.frontends.release(fe);
    }

    /// Drops a backend outside a full recomputation.
    pub fn release_backend(&mut self, be: &Endpoint) {
        self.backends.release(be);
    }

    /// Drops a frontend's Maglev row outside a full recomputation.
    pub fn release_row(&mut self, rev_id: u32) {
        self.rows.release(&rev_id);
    }

    /// The rev_id already assigned to a frontend, without assigning one.
    pub fn peek_frontend(&self, fe: &Endpoint) -> Option<u32> {
        self.frontends.peek(fe)
    }

    /// The id already assigned to a backend, without assigning one.
    pub fn peek_backend(&self, be: &Endpoint) -> Option<u32> {
        self.backends.peek(be)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::abi::{Backend, RevNat, Scope, SvcKey, SvcVal};

    fn ep(a: &str, port: u16) -> Endpoint {
        Endpoint {
            addr: a.parse().unwrap(),
            port,
            proto: Proto::Tcp,
        }
    }

    #[test]
    fn lowest_free_from_one_and_stable() {
        let mut ids = Ids::default();
        ids.begin();
        assert_eq!(ids.frontend(ep("10.96.0.1", 80)), Some(1));
        assert_eq!(ids.frontend(ep("10.96.0.2", 80)), Some(2));
        assert_eq!(ids.frontend(ep("10.96.0.1", 80)), Some(1));
        assert_eq!(ids.backend(ep("192.0.2.1", 80)), Some(1));
        ids.end();
        ids.begin();
        assert_eq!(ids.frontend(ep("10.96.0.2", 80)), Some(2));
        assert_eq!(ids.frontend(ep("10.96.0.1", 80)), Some(1));
        ids.end();
    }

    #[test]
    fn removed_ids_are_reused_only_once_gone_from_the_maps() {
        let mut ids = Ids::default();
        ids.begin();
        ids.frontend(ep("10.96.0.1", 80));
        ids.frontend(ep("10.96.0.2", 80));
        ids.end();
        // The maps hold both.
        let mut st = MapState::default();
        st.rev_nat.insert(
            1,
            RevNat {
                addr: "10.96.0.1".parse().unwrap(),
                port: 80,
            },
        );
        st.rev_nat.insert(
            2,
            RevNat {
                addr: "10.96.0.2".parse().unwrap(),
                port: 80,
            },
        );
        ids.committed(&st);
        // 10.96.0.1 is removed; a new frontend must not get id 1 while the maps hold it.
        ids.begin();
        ids.frontend(ep("10.96.0.2", 80));
        assert_eq!(ids.frontend(ep("10.96.0.3", 80)), Some(3));
        ids.end();
        st.rev_nat.remove(&1);
        st.rev_nat.insert(
            3,
            RevNat {
                addr: "10.96.0.3".parse().unwrap(),
                port: 80,
            },
        );
        ids.committed(&st);
        ids.begin();
        ids.frontend(ep("10.96.0.2", 80));
        ids.frontend(ep("10.96.0.3", 80));
        assert_eq!(ids.frontend(ep("10.96.0.4", 80)), Some(1));
        ids.end();
    }

    #[test]
    fn from_state_keeps_every_id() {
        let mut st = MapState::default();
        let key = SvcKey {
            addr: "10.96.0.9".parse().unwrap(),
            port: 53,
            proto: Proto::Udp,
            scope: Scope::External,
        };
        st.svc.insert(
            key,
            SvcVal {
                rev_id: 7,
                count: 1,
                flags: svc_flags::MAGLEV,
                affinity_timeout: 0,
                maglev_row: 3,
            },
        );
        st.rev_nat.insert(
            7,
            RevNat {
                addr: key.addr,
                port: 53,
            },
        );
        // A rev NAT entry with no frontend left (an interrupted write): reserved.
        st.rev_nat.insert(
            1,
            RevNat {
                addr: "10.96.0.1".parse().unwrap(),
                port: 1,
            },
        );
        st.backend.insert(
            5,
            Backend {
                addr: "192.0.2.5".parse().unwrap(),
                port: 53,
                proto: Proto::Udp,
                flags: 0,
            },
        );
        let mut ids = Ids::from_state(&st, 8);
        ids.begin();
        let udp = Endpoint {
            addr: key.addr,
            port: 53,
            proto: Proto::Udp,
        };
        assert_eq!(ids.frontend(udp), Some(7));
        assert_eq!(ids.maglev_row(7), Some(3));
        // TCP on the same address and port is another frontend.
        assert_eq!(
            ids.frontend(Endpoint {
                proto: Proto::Tcp,
                ..udp
            }),
            Some(2)
        );
        assert_eq!(
            ids.backend(Endpoint {
                addr: "192.0.2.5".parse().unwrap(),
                port: 53,
                proto: Proto::Udp
            }),
            Some(5)
        );
        assert_eq!(ids.backend(ep("192.0.2.6", 53)), Some(1));
        assert_eq!(ids.maglev_row(99), Some(0));
        ids.end();
    }

    #[test]
    fn rows_fit_the_map() {
        assert_eq!(maglev_rows(DEFAULT_MAGLEV_ENTRIES, 1021), 256);
        assert_eq!(maglev_rows(DEFAULT_MAGLEV_ENTRIES, 16381), 15);
        assert_eq!(maglev_rows(DEFAULT_MAGLEV_ENTRIES, 0), 0);
        let mut none = Ids::new(0);
        assert_eq!(none.maglev_row(1), None);
    }

    #[test]
    fn rows_run_out() {
        let mut ids = Ids::new(2);
        ids.begin();
        assert_eq!(ids.maglev_row(10), Some(0));
        assert_eq!(ids.maglev_row(11), Some(1));
        assert_eq!(ids.maglev_row(12), None);
        ids.end();
        // Row 0 freed (frontend 10 gone and not in the maps).
        ids.begin();
        ids.maglev_row(11);
        ids.end();
        ids.committed(&MapState::default());
        ids.begin();
        ids.maglev_row(11);
        assert_eq!(ids.maglev_row(12), Some(0));
        ids.end();
    }
}
