//! Frontend ids (`rev_id`), backend ids and Maglev rows, stable across recomputations and
//! restarts. Pure.
//!
//! The maps are the record: [`Ids::from_state`] rebuilds the assignment from what `mn_svc`,
//! `mn_rev_nat` and `mn_backend` hold, so a restarted proxy gives every existing frontend and
//! backend the id its conntrack and affinity entries already carry. A new frontend or backend
//! gets the lowest free id (never 0, which the data path reads as "none"); the id of a removed
//! one is reused only once it is gone from the maps ([`Ids::committed`]), so a packet never
//! finds an old id pointing at a new object.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;

use super::abi::{Proto, svc_flags};
use super::state::{MapDiff, MapState};

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
    used: HashSet<K>,
    /// id -> its key (the first one, when a read-back state gave two keys one id).
    owner: HashMap<u32, K>,
    /// A read-back state gave two keys one id: [`Space::commit_touched`] sweeps in full.
    shared: bool,
    /// How many map entries refer to each id, as of the last commit (for
    /// [`Ids::committed_diff`]).
    held: HashMap<u32, u32>,
    /// Ids put in `live` since the last commit without the maps holding them yet.
    pending: Vec<u32>,
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
            owner: HashMap::new(),
            shared: false,
            held: HashMap::new(),
            pending: Vec::new(),
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
        self.pending.push(id);
        self.assigned.insert(key, id);
        self.owner.insert(id, key);
        self.used.insert(key);
        Some(id)
    }

    /// Forgets a key now (an incremental update dropped it); its id stays taken while the
    /// maps may hold it.
    fn release(&mut self, key: &K) {
        self.used.remove(key);
        if let Some(id) = self.assigned.remove(key) {
            if self.owner.get(&id) == Some(key) {
                self.owner.remove(&id);
            }
            if !self.live.contains(&id) {
                self.taken.remove(&id);
                self.low = self.low.min(id);
            }
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
        if self.owner.insert(id, key).is_some() {
            self.shared = true;
        }
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
                freed.push((*k, *id));
            }
            keep
        });
        for (k, id) in freed {
            if self.owner.get(&id) == Some(&k) {
                self.owner.remove(&id);
            }
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
                self.pending.push(*id);
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
        self.pending.clear();
        self.sweep();
    }

    /// [`Space::commit`] for the ids whose references changed (`touched`, with `held`
    /// already updated) and those handed out since the last commit: O(changes).
    fn commit_touched(&mut self, mut touched: Vec<u32>, also_live: impl Fn(u32) -> bool) {
        touched.append(&mut self.pending);
        touched.sort_unstable();
        touched.dedup();
        for id in touched {
            if self.held.contains_key(&id) || also_live(id) {
                self.live.insert(id);
                self.taken.insert(id);
                continue;
            }
            self.live.remove(&id);
            match self.owner.get(&id) {
                Some(k) if self.assigned.get(k) == Some(&id) => {
                    if !self.used.contains(k) {
                        let k = *k;
                        self.assigned.remove(&k);
                        self.owner.remove(&id);
                        self.taken.remove(&id);
                        self.low = self.low.min(id);
                    }
                }
                _ => {
                    if !(self.shared && self.assigned.values().any(|v| *v == id)) {
                        self.taken.remove(&id);
                        self.low = self.low.min(id);
                    }
                }
            }
        }
        if self.shared {
            self.sweep();
        }
    }

    fn inc(&mut self, id: u32, touched: &mut Vec<u32>) {
        *self.held.entry(id).or_insert(0) += 1;
        touched.push(id);
    }

    fn count(&mut self, id: u32, up: bool, touched: &mut Vec<u32>) {
        if up {
            self.inc(id, touched);
        } else {
            self.dec(id, touched);
        }
    }

    fn dec(&mut self, id: u32, touched: &mut Vec<u32>) {
        if let std::collections::hash_map::Entry::Occupied(mut e) = self.held.entry(id) {
            *e.get_mut() -= 1;
            if *e.get() == 0 {
                e.remove();
            }
        }
        touched.push(id);
    }
}

/// Counts the ids of a map keyed by id after a diff: `upserted` keys new to `before` hold
/// their id once more, `removed` keys `before` had once less.
fn count_keys<'a, K: Copy + Eq + std::hash::Hash, V>(
    space: &mut Space<K>,
    before: &BTreeMap<u32, V>,
    upserted: impl Iterator<Item = &'a u32>,
    removed: &[u32],
    touched: &mut Vec<u32>,
) {
    for id in upserted {
        if !before.contains_key(id) {
            space.inc(*id, touched);
        }
    }
    for id in removed {
        if before.contains_key(id) {
            space.dec(*id, touched);
        }
    }
}

/// What decides a space's future ids: keys and ids, taken, live, the search start.
#[cfg(test)]
type Fingerprint<K> = (Vec<(K, u32)>, BTreeSet<u32>, BTreeSet<u32>, u32);

#[cfg(test)]
impl<K: Copy + Ord> Space<K> {
    /// What decides future ids, for comparing two assignments.
    fn fingerprint(&self) -> Fingerprint<K> {
        let mut a: Vec<(K, u32)> = self.assigned.iter().map(|(k, v)| (*k, *v)).collect();
        a.sort();
        (a, self.taken.clone(), self.live.clone(), self.low)
    }
}

/// How many map entries refer to each id (see [`Ids::committed`]).
struct Refs {
    fe: HashMap<u32, u32>,
    be: HashMap<u32, u32>,
    /// Frontends using each Maglev row.
    row_svc: HashMap<u32, u32>,
    /// Rows `mn_maglev` holds.
    row_maglev: HashSet<u32>,
}

impl Refs {
    fn of(state: &MapState) -> Refs {
        let mut fe: HashMap<u32, u32> = HashMap::new();
        let mut be: HashMap<u32, u32> = HashMap::new();
        let mut row_svc: HashMap<u32, u32> = HashMap::new();
        for id in state.rev_nat.keys() {
            *fe.entry(*id).or_insert(0) += 1;
        }
        for v in state.svc.values() {
            *fe.entry(v.rev_id).or_insert(0) += 1;
            if v.flags & svc_flags::MAGLEV != 0 {
                *row_svc.entry(v.maglev_row).or_insert(0) += 1;
            }
        }
        for (k, b) in &state.slot {
            *fe.entry(k.rev_id).or_insert(0) += 1;
            *be.entry(*b).or_insert(0) += 1;
        }
        for id in state.backend.keys() {
            *be.entry(*id).or_insert(0) += 1;
        }
        Refs {
            fe,
            be,
            row_svc,
            row_maglev: state.maglev.keys().copied().collect(),
        }
    }
}

/// The id assignment. Ask it for ids while computing a desired state between
/// [`Ids::begin`] and [`Ids::end`]; tell it what the maps hold after each write with
/// [`Ids::committed`].
#[derive(Clone, Debug)]
pub struct Ids {
    frontends: Space<Endpoint>,
    backends: Space<Endpoint>,
    /// Maglev rows, keyed by the frontend's rev_id; rows count from 0. Its `held` counts
    /// the frontends using a row.
    rows: Space<u32>,
    /// Rows `mn_maglev` holds, as of the last commit.
    row_maglev: HashSet<u32>,
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
            row_maglev: HashSet::new(),
        }
    }

    fn set_refs(&mut self, state: &MapState) {
        let r = Refs::of(state);
        self.frontends.held = r.fe;
        self.backends.held = r.be;
        self.rows.held = r.row_svc;
        self.row_maglev = r.row_maglev;
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
        ids.set_refs(state);
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
        self.set_refs(state);
    }

    /// [`Ids::committed`] after `diff` was written to maps that held `before` (call it before
    /// applying the diff to `before`): O(changes), where [`Ids::committed`] is O(state). It
    /// needs the counts the last [`Ids::committed`] or [`Ids::from_state`] took, so the maps
    /// must have been changed by diffs only since then.
    pub fn committed_diff(&mut self, before: &MapState, diff: &MapDiff) {
        let (mut fe, mut be, mut rows) = (Vec::new(), Vec::new(), Vec::new());
        // An mn_svc value holds its frontend's id and, under Maglev, its row.
        let mut count_svc = |ids: &mut Ids, v: &super::abi::SvcVal, up: bool| {
            let maglev = v.flags & svc_flags::MAGLEV != 0;
            ids.frontends.count(v.rev_id, up, &mut fe);
            if maglev {
                ids.rows.count(v.maglev_row, up, &mut rows);
            }
        };
        for (k, v) in &diff.svc_upsert {
            if let Some(o) = before.svc.get(k) {
                count_svc(self, o, false);
            }
            count_svc(self, v, true);
        }
        for k in &diff.svc_remove {
            if let Some(o) = before.svc.get(k) {
                count_svc(self, o, false);
            }
        }
        for (k, b) in &diff.slot_upsert {
            match before.slot.get(k) {
                Some(o) => self.backends.dec(*o, &mut be),
                None => self.frontends.inc(k.rev_id, &mut fe),
            }
            self.backends.inc(*b, &mut be);
        }
        for k in &diff.slot_remove {
            if let Some(o) = before.slot.get(k) {
                self.frontends.dec(k.rev_id, &mut fe);
                self.backends.dec(*o, &mut be);
            }
        }
        // mn_backend and mn_rev_nat are keyed by the id: a new key holds it once more, a
        // removed one once less.
        let upserted = diff.backend_upsert.iter().map(|(id, _)| id);
        count_keys(
            &mut self.backends,
            &before.backend,
            upserted,
            &diff.backend_remove,
            &mut be,
        );
        let upserted = diff.rev_nat_upsert.iter().map(|(id, _)| id);
        count_keys(
            &mut self.frontends,
            &before.rev_nat,
            upserted,
            &diff.rev_nat_remove,
            &mut fe,
        );
        for (row, _) in &diff.maglev_write {
            self.row_maglev.insert(*row);
            rows.push(*row);
        }
        // As `state::apply`: rows written or left by frontends that no frontend uses leave
        // mn_maglev's bookkeeping.
        for row in &rows {
            if !self.rows.held.contains_key(row) {
                self.row_maglev.remove(row);
            }
        }
        self.frontends.commit_touched(fe, |_| false);
        self.backends.commit_touched(be, |_| false);
        let row_maglev = &self.row_maglev;
        self.rows
            .commit_touched(rows, |row| row_maglev.contains(&row));
    }

    /// What decides future ids (tests compare [`Ids::committed`] with
    /// [`Ids::committed_diff`] by it).
    #[cfg(test)]
    pub(crate) fn fingerprint(
        &self,
    ) -> (
        Fingerprint<Endpoint>,
        Fingerprint<Endpoint>,
        Fingerprint<u32>,
    ) {
        (
            self.frontends.fingerprint(),
            self.backends.fingerprint(),
            self.rows.fingerprint(),
        )
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
    use crate::proxy::abi::{Backend, RevNat, Scope, SlotKey, SvcKey, SvcVal};

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

    /// A read-back state with an orphan Maglev row and a rev NAT entry left over, ids handed
    /// out and never written: [`Ids::committed_diff`] ends where [`Ids::committed`] does.
    #[test]
    fn committed_diff_matches_committed_on_read_back_states() {
        use crate::proxy::state::apply;
        let mut st = MapState::default();
        let key = SvcKey {
            addr: "10.96.0.9".parse().unwrap(),
            port: 53,
            proto: Proto::Udp,
            scope: Scope::External,
        };
        let val = SvcVal {
            rev_id: 7,
            count: 1,
            flags: svc_flags::MAGLEV,
            affinity_timeout: 0,
            maglev_row: 3,
        };
        st.svc.insert(key, val);
        let rn = |a: &str| RevNat {
            addr: a.parse().unwrap(),
            port: 53,
        };
        st.rev_nat.insert(7, rn("10.96.0.9"));
        st.rev_nat.insert(1, rn("10.96.0.1"));
        st.maglev.insert(3, vec![5; 7]);
        st.maglev.insert(6, vec![5; 7]);
        let be = Backend {
            addr: "192.0.2.5".parse().unwrap(),
            port: 53,
            proto: Proto::Udp,
            flags: 0,
        };
        st.backend.insert(5, be);
        st.slot.insert(
            SlotKey {
                rev_id: 7,
                slot: 0,
                scope: Scope::External,
            },
            5,
        );
        let mut next = st.clone();
        next.rev_nat.remove(&1);
        next.svc.remove(&key);
        next.slot.clear();
        next.rev_nat.remove(&7);
        next.svc.insert(
            SvcKey { port: 54, ..key },
            SvcVal {
                rev_id: 2,
                flags: 0,
                ..val
            },
        );
        next.rev_nat.insert(2, rn("10.96.0.9"));
        for (before, after) in [(&st, &next), (&next, &st), (&st, &st)] {
            let mut ids = Ids::from_state(before, 8);
            ids.begin();
            ids.frontend(ep("10.96.0.9", 54));
            // Handed out, never written.
            ids.frontend(ep("10.96.0.20", 80));
            ids.backend(ep("192.0.2.9", 80));
            ids.end();
            let diff = MapDiff::between(before, after);
            let mut full = ids.clone();
            ids.committed_diff(before, &diff);
            let mut live = before.clone();
            apply(&mut live, &diff);
            full.committed(&live);
            assert_eq!(ids.fingerprint(), full.fingerprint());
            // And once more with nothing written.
            let mut full2 = ids.clone();
            ids.committed_diff(&live, &MapDiff::default());
            full2.committed(&live);
            assert_eq!(ids.fingerprint(), full2.fingerprint());
        }
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
