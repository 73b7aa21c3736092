//! Maglev lookup tables (Eisenbud et al., "Maglev: A Fast and Reliable Software Network Load
//! Balancer", NSDI 2016, section 3.4). Pure.
//!
//! Each backend's permutation of the M table positions comes from a hash of its address,
//! port and protocol with a fixed seed, never of its id: ids differ between nodes, and every
//! node must build the same table so that outside traffic reaches the same backend whichever
//! node it enters.

use sha2::{Digest, Sha256};

use super::abi::{Backend, addr_bytes};

/// Fixed on every node and across versions: changing it moves every outside connection.
const SEED: &[u8] = b"metalnet-maglev-v1";

/// Whether `m` is prime (Maglev needs a prime table size so every skip is a generator).
pub fn is_prime(m: u32) -> bool {
    if m < 2 {
        return false;
    }
    let mut d = 2u64;
    while d * d <= m as u64 {
        if (m as u64).is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

fn offset_skip(b: &Backend, m: u32) -> (u64, u64) {
    let mut h = Sha256::new();
    h.update(SEED);
    h.update(addr_bytes(b.addr));
    h.update(b.port.to_be_bytes());
    h.update([b.proto.number()]);
    let d = h.finalize();
    let h1 = u64::from_le_bytes(d[0..8].try_into().unwrap_or([0; 8]));
    let h2 = u64::from_le_bytes(d[8..16].try_into().unwrap_or([0; 8]));
    let m = m as u64;
    (h1 % m, h2 % (m - 1) + 1)
}

/// The lookup table of size `m` (prime, at least 2) for these backends, each given as its id
/// and what it is: entry i holds the id of the backend that connections hashing to i go to.
/// Empty when there is no backend, or when `m` is not prime (a skip sharing a factor with M
/// would never visit some positions, and the fill would not end). Order of `backends` does
/// not matter.
pub fn table(backends: &[(u32, Backend)], m: u32) -> Vec<u32> {
    if backends.is_empty() || !is_prime(m) {
        return Vec::new();
    }
    // The population loop visits backends in turn: sort by what every node agrees on.
    let mut bs: Vec<(Backend, u32)> = backends.iter().map(|(id, b)| (*b, *id)).collect();
    bs.sort_by_key(|(b, _)| (addr_bytes(b.addr), b.port, b.proto));
    bs.dedup_by_key(|(b, _)| (addr_bytes(b.addr), b.port, b.proto));
    let perms: Vec<(u64, u64)> = bs.iter().map(|(b, _)| offset_skip(b, m)).collect();
    let mut next = vec![0u64; bs.len()];
    const EMPTY: u32 = u32::MAX;
    let mut entry = vec![EMPTY; m as usize];
    let mut filled = 0usize;
    'fill: loop {
        for (i, (offset, skip)) in perms.iter().enumerate() {
            let mut c = ((offset + next[i] * skip) % m as u64) as usize;
            while entry[c] != EMPTY {
                next[i] += 1;
                c = ((offset + next[i] * skip) % m as u64) as usize;
            }
            entry[c] = i as u32;
            next[i] += 1;
            filled += 1;
            if filled == m as usize {
                break 'fill;
            }
        }
    }
    entry.into_iter().map(|i| bs[i as usize].1).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::abi::Proto;
    use proptest::prelude::*;
    use std::collections::BTreeMap;
    use std::net::{IpAddr, Ipv4Addr};

    fn be(i: u32) -> Backend {
        Backend {
            addr: IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)),
            port: 8080,
            proto: Proto::Tcp,
            flags: 0,
        }
    }

    fn counts(t: &[u32]) -> BTreeMap<u32, usize> {
        let mut c = BTreeMap::new();
        for id in t {
            *c.entry(*id).or_insert(0) += 1;
        }
        c
    }

    #[test]
    fn primes() {
        assert!(is_prime(1021));
        assert!(is_prime(16381));
        assert!(is_prime(2));
        assert!(!is_prime(1024));
        assert!(!is_prime(1));
        assert!(!is_prime(0));
    }

    #[test]
    fn empty_and_single() {
        assert!(table(&[], 1021).is_empty());
        assert!(table(&[(1, be(1)), (2, be(2))], 1024).is_empty());
        let t = table(&[(4, be(1))], 1021);
        assert_eq!(t.len(), 1021);
        assert!(t.iter().all(|id| *id == 4));
    }

    #[test]
    fn same_backends_with_other_ids_and_order_give_the_same_assignment() {
        // Node A and node B number the same backends differently.
        let a: Vec<(u32, Backend)> = (0..5).map(|i| (i + 1, be(i))).collect();
        let b: Vec<(u32, Backend)> = (0..5).rev().map(|i| (100 + i, be(i))).collect();
        let ta = table(&a, 1021);
        let tb = table(&b, 1021);
        for (x, y) in ta.iter().zip(&tb) {
            assert_eq!(x - 1 + 100, *y);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn balanced_within_one_entry(n in 1u32..60, m in prop::sample::select(vec![251u32, 1021, 4093])) {
            let bs: Vec<(u32, Backend)> = (0..n).map(|i| (i + 1, be(i * 7 + 3))).collect();
            let t = table(&bs, m);
            prop_assert_eq!(t.len(), m as usize);
            let c = counts(&t);
            prop_assert_eq!(c.len(), n as usize);
            let (lo, hi) = (m / n, m.div_ceil(n));
            for v in c.values() {
                // Maglev's round-robin population keeps every share within one entry.
                prop_assert!((lo as usize..=hi as usize).contains(v), "{v} not in {lo}..={hi}");
            }
        }

        #[test]
        fn removing_one_backend_moves_few_entries(n in 3u32..40, gone in 0u32..40, big in any::<bool>()) {
            let m = if big { 16381u32 } else { 1021 };
            let gone = gone % n;
            let all: Vec<(u32, Backend)> = (0..n).map(|i| (i + 1, be(i))).collect();
            let rest: Vec<(u32, Backend)> = all.iter().copied().filter(|(id, _)| *id != gone + 1).collect();
            let before = table(&all, m);
            let after = table(&rest, m);
            // Entries of surviving backends that changed owner. Maglev keeps them few, the
            // fewer the larger M/N (measured over this grid: at most 0.41 of a backend's share
            // at M=16381, 2.33 at M=1021), where modulo hashing would move (N-1)/N of all.
            let moved = before.iter().zip(&after).filter(|(b, a)| **b != gone + 1 && b != a).count();
            let share = (m / n) as usize;
            let bound = if big { share } else { 3 * share };
            prop_assert!(moved <= bound, "moved {moved} of {m}, share {share}");
        }
    }
}
