//! The contents of the maps the control plane owns ([`MapState`]), and the difference between
//! two of them ([`MapDiff`]) in the order that keeps the data path consistent while it is
//! applied. Pure.

use std::collections::{BTreeMap, BTreeSet};

use super::abi::{AffinityMatch, Backend, RevNat, SlotKey, SrcRange, SvcKey, SvcVal};

/// What the control-plane-owned maps hold (`mn_svc`, `mn_slot`, `mn_backend`, `mn_rev_nat`,
/// `mn_affinity_match`, `mn_src_range`, and the used rows of `mn_maglev`). The per-connection
/// maps (conntrack, socket reverse NAT, affinity) belong to the data path and are not here.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapState {
    pub svc: BTreeMap<SvcKey, SvcVal>,
    pub slot: BTreeMap<SlotKey, u32>,
    pub backend: BTreeMap<u32, Backend>,
    pub rev_nat: BTreeMap<u32, RevNat>,
    pub affinity_match: BTreeSet<AffinityMatch>,
    pub src_range: BTreeSet<SrcRange>,
    /// Maglev rows in use: row -> the M backend ids of the lookup table.
    pub maglev: BTreeMap<u32, Vec<u32>>,
}

/// Upserts and removals per map. [`MapDiff::apply_order`] says how to apply them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapDiff {
    pub svc_upsert: Vec<(SvcKey, SvcVal)>,
    pub svc_remove: Vec<SvcKey>,
    pub slot_upsert: Vec<(SlotKey, u32)>,
    pub slot_remove: Vec<SlotKey>,
    pub backend_upsert: Vec<(u32, Backend)>,
    pub backend_remove: Vec<u32>,
    pub rev_nat_upsert: Vec<(u32, RevNat)>,
    pub rev_nat_remove: Vec<u32>,
    pub affinity_match_add: Vec<AffinityMatch>,
    pub affinity_match_remove: Vec<AffinityMatch>,
    pub src_range_add: Vec<SrcRange>,
    pub src_range_remove: Vec<SrcRange>,
    /// Rows to (re)write in full; removed rows need no write (nothing points at them).
    pub maglev_write: Vec<(u32, Vec<u32>)>,
}

fn diff_map<K: Ord + Clone, V: PartialEq + Clone>(
    old: &BTreeMap<K, V>,
    new: &BTreeMap<K, V>,
    upsert: &mut Vec<(K, V)>,
    remove: &mut Vec<K>,
) {
    for (k, v) in new {
        if old.get(k) != Some(v) {
            upsert.push((k.clone(), v.clone()));
        }
    }
    for k in old.keys() {
        if !new.contains_key(k) {
            remove.push(k.clone());
        }
    }
}

fn diff_set<K: Ord + Clone>(
    old: &BTreeSet<K>,
    new: &BTreeSet<K>,
    add: &mut Vec<K>,
    remove: &mut Vec<K>,
) {
    add.extend(new.difference(old).cloned());
    remove.extend(old.difference(new).cloned());
}

impl MapDiff {
    /// What turns `old` into `new`.
    pub fn between(old: &MapState, new: &MapState) -> MapDiff {
        let mut d = MapDiff::default();
        diff_map(&old.svc, &new.svc, &mut d.svc_upsert, &mut d.svc_remove);
        diff_map(&old.slot, &new.slot, &mut d.slot_upsert, &mut d.slot_remove);
        diff_map(
            &old.backend,
            &new.backend,
            &mut d.backend_upsert,
            &mut d.backend_remove,
        );
        diff_map(
            &old.rev_nat,
            &new.rev_nat,
            &mut d.rev_nat_upsert,
            &mut d.rev_nat_remove,
        );
        diff_set(
            &old.affinity_match,
            &new.affinity_match,
            &mut d.affinity_match_add,
            &mut d.affinity_match_remove,
        );
        diff_set(
            &old.src_range,
            &new.src_range,
            &mut d.src_range_add,
            &mut d.src_range_remove,
        );
        for (row, table) in &new.maglev {
            if old.maglev.get(row) != Some(table) {
                d.maglev_write.push((*row, table.clone()));
            }
        }
        d
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Map operations it takes (a Maglev row counts as one).
    pub fn len(&self) -> usize {
        self.svc_upsert.len()
            + self.svc_remove.len()
            + self.slot_upsert.len()
            + self.slot_remove.len()
            + self.backend_upsert.len()
            + self.backend_remove.len()
            + self.rev_nat_upsert.len()
            + self.rev_nat_remove.len()
            + self.affinity_match_add.len()
            + self.affinity_match_remove.len()
            + self.src_range_add.len()
            + self.src_range_remove.len()
            + self.maglev_write.len()
    }

    /// The order a writer must follow so that a packet never finds a frontend pointing at a
    /// slot, backend or row that is not there yet, or no longer there:
    /// 1. backends, reverse NAT, slots, affinity matches, source ranges, Maglev rows (adds);
    /// 2. frontends (upserts, so a grown count sees its new slots);
    /// 3. frontends (removals);
    /// 4. slots, affinity matches, source ranges (removals, after a shrunk count);
    /// 5. reverse NAT and backends (removals).
    pub const APPLY_ORDER: &'static str =
        "adds, svc upserts, svc removals, slot removals, backend removals";
}

/// Applies a diff to a state in memory, as a writer applies it to the maps (for tests and for
/// the writer's own bookkeeping).
pub fn apply(state: &mut MapState, d: &MapDiff) {
    use super::abi::svc_flags::MAGLEV;
    // Rows that may be left unused: those written and those of the frontends changed or
    // removed. Only they are checked, not every row.
    let mut maybe_unused: BTreeSet<u32> = d.maglev_write.iter().map(|(row, _)| *row).collect();
    for k in d.svc_upsert.iter().map(|(k, _)| k).chain(&d.svc_remove) {
        if let Some(v) = state.svc.get(k).filter(|v| v.flags & MAGLEV != 0) {
            maybe_unused.insert(v.maglev_row);
        }
    }
    for (k, v) in &d.backend_upsert {
        state.backend.insert(*k, *v);
    }
    for (k, v) in &d.rev_nat_upsert {
        state.rev_nat.insert(*k, *v);
    }
    for (k, v) in &d.slot_upsert {
        state.slot.insert(*k, *v);
    }
    state
        .affinity_match
        .extend(d.affinity_match_add.iter().copied());
    state.src_range.extend(d.src_range_add.iter().copied());
    for (row, t) in &d.maglev_write {
        state.maglev.insert(*row, t.clone());
    }
    for (k, v) in &d.svc_upsert {
        state.svc.insert(*k, *v);
    }
    for k in &d.svc_remove {
        state.svc.remove(k);
    }
    for k in &d.slot_remove {
        state.slot.remove(k);
    }
    for k in &d.affinity_match_remove {
        state.affinity_match.remove(k);
    }
    for k in &d.src_range_remove {
        state.src_range.remove(k);
    }
    for k in &d.rev_nat_remove {
        state.rev_nat.remove(k);
    }
    for k in &d.backend_remove {
        state.backend.remove(k);
    }
    // Rows no frontend uses any more are dropped from the bookkeeping, not written. The
    // frontends written use theirs; only for the other rows are all frontends looked
    // through (no allocation), and only when there are such rows.
    for (_, v) in &d.svc_upsert {
        if v.flags & MAGLEV != 0 {
            maybe_unused.remove(&v.maglev_row);
        }
    }
    if !maybe_unused.is_empty() {
        for v in state.svc.values() {
            if v.flags & MAGLEV != 0 {
                maybe_unused.remove(&v.maglev_row);
            }
        }
    }
    for row in maybe_unused {
        state.maglev.remove(&row);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::abi::{Proto, Scope, svc_flags};

    fn fe(n: u8) -> SvcKey {
        SvcKey {
            addr: format!("198.51.100.{n}").parse().unwrap(),
            port: 80,
            proto: Proto::Tcp,
            scope: Scope::External,
        }
    }

    fn maglev(row: u32) -> SvcVal {
        SvcVal {
            rev_id: row + 1,
            count: 1,
            flags: svc_flags::MAGLEV,
            affinity_timeout: 0,
            maglev_row: row,
        }
    }

    /// Rows are dropped when the diff leaves them unused, whichever way, and only then.
    #[test]
    fn rows_left_unused_by_a_diff_are_dropped() {
        let mut st = MapState::default();
        for n in 1..=3u8 {
            st.svc.insert(fe(n), maglev(u32::from(n)));
            st.maglev.insert(u32::from(n), vec![7; 3]);
        }
        // A row rewritten for a frontend that keeps it.
        let mut d = MapDiff::default();
        d.maglev_write.push((2, vec![8; 3]));
        apply(&mut st, &d);
        assert_eq!(st.maglev.get(&2), Some(&vec![8; 3]));
        // A frontend gone, another moved to a new row, a row written that nothing uses.
        let d = MapDiff {
            svc_remove: vec![fe(1)],
            svc_upsert: vec![(fe(3), maglev(4))],
            maglev_write: vec![(4, vec![9; 3]), (5, vec![9; 3])],
            ..MapDiff::default()
        };
        apply(&mut st, &d);
        assert_eq!(st.maglev.keys().copied().collect::<Vec<_>>(), vec![2, 4]);
        // Maglev off for a frontend: its row goes.
        let d = MapDiff {
            svc_upsert: vec![(
                fe(2),
                SvcVal {
                    flags: 0,
                    ..maglev(2)
                },
            )],
            ..MapDiff::default()
        };
        apply(&mut st, &d);
        assert_eq!(st.maglev.keys().copied().collect::<Vec<_>>(), vec![4]);
    }
}
