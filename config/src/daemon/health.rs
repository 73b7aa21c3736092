//! Readiness as `/readyz` reports it: ready when every registered condition is.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

/// The readiness of a daemon, made of named conditions ("controller", "layer2", "source"):
/// ready when there is at least one and all are true. Clones share the conditions.
#[derive(Clone, Debug, Default)]
pub struct Health {
    conditions: Arc<Mutex<BTreeMap<String, bool>>>,
}

impl Health {
    /// Registers a condition, not ready until set.
    pub fn condition(&self, name: &str) -> Readiness {
        self.lock().insert(name.to_string(), false);
        Readiness {
            health: self.clone(),
            name: name.to_string(),
        }
    }

    /// Sets the daemon's single default condition ("ready"), for daemons with one loop.
    pub fn set_ready(&self, ready: bool) {
        self.lock().insert("ready".to_string(), ready);
    }

    pub fn is_ready(&self) -> bool {
        let c = self.lock();
        !c.is_empty() && c.values().all(|r| *r)
    }

    /// The conditions that are not ready, for the `/readyz` body and logs.
    pub fn not_ready(&self) -> Vec<String> {
        self.lock()
            .iter()
            .filter(|(_, r)| !**r)
            .map(|(n, _)| n.clone())
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, bool>> {
        // A panic elsewhere while holding this map cannot leave it inconsistent (single
        // inserts), so a poisoned lock is still usable.
        self.conditions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// One named readiness condition of a [`Health`].
#[derive(Clone, Debug)]
pub struct Readiness {
    health: Health,
    name: String,
}

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.health.lock().insert(self.name.clone(), ready);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_every_condition_is() {
        let h = Health::default();
        assert!(!h.is_ready(), "no condition yet");
        let a = h.condition("layer2");
        let b = h.condition("bgp");
        assert!(!h.is_ready());
        a.set(true);
        assert_eq!(h.not_ready(), vec!["bgp".to_string()]);
        b.set(true);
        assert!(h.is_ready());
        a.set(false);
        assert!(!h.is_ready());
    }
}
