//! A set of addresses (as integers) stored as maximal runs of consecutive values, so that
//! "lowest free address in [lo, hi]" costs O(log n) per run skipped rather than per address.

use std::collections::BTreeMap;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Runs {
    /// start → end (inclusive); runs never touch or overlap.
    runs: BTreeMap<u128, u128>,
}

impl Runs {
    /// The run containing `v`, if any.
    fn containing(&self, v: u128) -> Option<(u128, u128)> {
        self.runs
            .range(..=v)
            .next_back()
            .filter(|(_, end)| **end >= v)
            .map(|(s, e)| (*s, *e))
    }

    pub(crate) fn contains(&self, v: u128) -> bool {
        self.containing(v).is_some()
    }

    pub(crate) fn insert(&mut self, v: u128) {
        if self.contains(v) {
            return;
        }
        let mut start = v;
        let mut end = v;
        if let Some(prev) = v.checked_sub(1)
            && let Some((s, _)) = self.containing(prev)
        {
            start = s;
        }
        if let Some(next) = v.checked_add(1)
            && let Some(e) = self.runs.remove(&next)
        {
            end = e;
        }
        self.runs.insert(start, end);
    }

    pub(crate) fn remove(&mut self, v: u128) {
        let Some((s, e)) = self.containing(v) else {
            return;
        };
        self.runs.remove(&s);
        if s < v {
            self.runs.insert(s, v - 1);
        }
        if v < e {
            self.runs.insert(v + 1, e);
        }
    }

    /// The lowest value in `[lo, hi]` that is not in the set and not `skip`ped. `skip(v)`
    /// returns the last value of the skipped block containing `v` (at least `v`), so a
    /// skipped block costs one call whatever its size.
    pub(crate) fn first_free(
        &self,
        lo: u128,
        hi: u128,
        skip: impl Fn(u128) -> Option<u128>,
    ) -> Option<u128> {
        let mut c = lo;
        loop {
            if c > hi {
                return None;
            }
            if let Some((_, end)) = self.containing(c) {
                c = end.checked_add(1)?;
                continue;
            }
            if let Some(last) = skip(c) {
                c = last.max(c).checked_add(1)?;
                continue;
            }
            return Some(c);
        }
    }

    #[cfg(test)]
    pub(crate) fn run_count(&self) -> usize {
        self.runs.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_and_splits() {
        let mut r = Runs::default();
        for v in [5, 7, 6, 1, 2] {
            r.insert(v);
        }
        assert_eq!(r.run_count(), 2);
        assert_eq!(r.first_free(0, 10, |_| None), Some(0));
        assert_eq!(r.first_free(1, 10, |_| None), Some(3));
        assert_eq!(r.first_free(5, 10, |_| None), Some(8));
        assert_eq!(r.first_free(5, 7, |_| None), None);
        r.remove(6);
        assert_eq!(r.run_count(), 3);
        assert_eq!(r.first_free(5, 10, |_| None), Some(6));
        assert_eq!(r.first_free(8, 10, |v| (v == 8).then_some(v)), Some(9));
        assert_eq!(r.first_free(0, 10, |v| (v < 4).then_some(3)), Some(4));
        r.insert(u128::MAX);
        assert_eq!(
            r.first_free(u128::MAX - 1, u128::MAX, |_| None),
            Some(u128::MAX - 1)
        );
        assert_eq!(r.first_free(u128::MAX, u128::MAX, |_| None), None);
        r.remove(u128::MAX);
        r.insert(0);
        assert!(r.contains(0) && r.contains(1) && !r.contains(3));
    }
}
