//! Rate limiting of repeated log warnings: a flood of identical events (one per received
//! frame) must not become a flood of log lines.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// How often one key may log.
pub const WARN_INTERVAL: Duration = Duration::from_secs(10);
/// Keys remembered at most; beyond this, stale keys are forgotten, and while every
/// remembered key is fresh, new keys are suppressed.
pub const MAX_KEYS: usize = 4096;

/// What to do with one occurrence of an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Log it, saying how many occurrences of the same key were suppressed since the last
    /// line.
    Log { suppressed: u64 },
    /// Count it, do not log.
    Suppress,
}

#[derive(Debug)]
struct Entry {
    last: Instant,
    suppressed: u64,
}

/// At most one log line per key per interval (pure: the caller passes the time).
#[derive(Debug)]
pub struct WarnLimiter<K> {
    interval: Duration,
    max_keys: usize,
    entries: HashMap<K, Entry>,
}

impl<K: Eq + Hash> Default for WarnLimiter<K> {
    fn default() -> Self {
        WarnLimiter::new(WARN_INTERVAL, MAX_KEYS)
    }
}

impl<K: Eq + Hash> WarnLimiter<K> {
    pub fn new(interval: Duration, max_keys: usize) -> WarnLimiter<K> {
        WarnLimiter {
            interval,
            max_keys: max_keys.max(1),
            entries: HashMap::new(),
        }
    }

    /// Records one occurrence of `key` at `now`.
    pub fn check(&mut self, key: K, now: Instant) -> Verdict {
        if let Some(e) = self.entries.get_mut(&key) {
            if now.saturating_duration_since(e.last) < self.interval {
                e.suppressed += 1;
                return Verdict::Suppress;
            }
            let suppressed = std::mem::take(&mut e.suppressed);
            e.last = now;
            return Verdict::Log { suppressed };
        }
        if self.entries.len() >= self.max_keys {
            let interval = self.interval;
            self.entries
                .retain(|_, e| now.saturating_duration_since(e.last) < interval);
            if self.entries.len() >= self.max_keys {
                return Verdict::Suppress;
            }
        }
        self.entries.insert(
            key,
            Entry {
                last: now,
                suppressed: 0,
            },
        );
        Verdict::Log { suppressed: 0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_key_per_interval_with_the_suppressed_count() {
        let mut l = WarnLimiter::new(Duration::from_secs(10), 100);
        let t0 = Instant::now();
        assert_eq!(l.check("a", t0), Verdict::Log { suppressed: 0 });
        for i in 1..=1000 {
            assert_eq!(
                l.check("a", t0 + Duration::from_millis(i)),
                Verdict::Suppress
            );
        }
        // Another key is independent.
        assert_eq!(l.check("b", t0), Verdict::Log { suppressed: 0 });
        assert_eq!(
            l.check("a", t0 + Duration::from_secs(10)),
            Verdict::Log { suppressed: 1000 }
        );
        assert_eq!(
            l.check("a", t0 + Duration::from_secs(11)),
            Verdict::Suppress
        );
        assert_eq!(
            l.check("a", t0 + Duration::from_secs(25)),
            Verdict::Log { suppressed: 1 }
        );
    }

    #[test]
    fn memory_is_bounded_under_many_keys() {
        let mut l = WarnLimiter::new(Duration::from_secs(10), 3);
        let t0 = Instant::now();
        for k in 0..3 {
            assert_eq!(l.check(k, t0), Verdict::Log { suppressed: 0 });
        }
        // Full of fresh keys: a new key is suppressed, not remembered.
        assert_eq!(l.check(99, t0), Verdict::Suppress);
        assert_eq!(l.entries.len(), 3);
        // Once the old keys are stale they make room.
        assert_eq!(
            l.check(99, t0 + Duration::from_secs(10)),
            Verdict::Log { suppressed: 0 }
        );
        assert_eq!(l.entries.len(), 1);
    }
}
