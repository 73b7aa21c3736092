//! The pools the allocator runs on, from the IPAddressPools of a snapshot, keeping the last
//! valid version of a pool whose current version is invalid.
//!
//! MetalLB rejects the whole configuration when one object is bad and keeps running the last
//! valid one (`metallb_k8s_client_config_stale_bool` = 1). We are finer-grained: a bad pool
//! is reported (every problem, naming the field) and
//! - if it was never valid, it is ignored while every other pool works;
//! - if it was valid before, its last valid version stays in use (it is *stale*), so no
//!   Service loses an address because of a typo. Deleting the pool removes it.
//!
//! Overlapping pools: validation leaves out the later pool (by creation time, then by name,
//! so in a state directory a new pool whose name sorts first can win). A pool it leaves out
//! only for overlapping is kept when Services hold addresses from it (`in_use`), so a new
//! pool overlapping an old one by one address evicts nobody; the overlap is still reported.
//! Both pools are then in effect; each address is given out once whichever pool it is
//! drawn from, and a held address stays attributed to the pool it came from.

use std::collections::{BTreeMap, BTreeSet};

use metalnet::state::{Kind, ObjectRef, Snapshot};
use metalnet::validate::{self, ParsedPool, Problem, Severity};

use crate::allocator::Pool;

/// The pool configuration in effect.
#[derive(Debug, Clone, Default)]
pub struct PoolConfig {
    /// Every pool in effect, by object (current version, or last valid one when stale).
    effective: BTreeMap<ObjectRef, ParsedPool>,
    /// Pools running on their last valid version.
    stale: BTreeSet<ObjectRef>,
    /// Problems of the current versions (errors and warnings).
    problems: Vec<Problem>,
    /// Pools validation leaves out for overlapping another, kept because they are in use.
    kept_overlapping: BTreeSet<ObjectRef>,
}

impl PoolConfig {
    /// Re-reads the pools of `snapshot` (only those in `namespace` when given). `in_use`
    /// names the pools Services hold addresses from.
    pub fn update(
        &mut self,
        snapshot: &Snapshot,
        namespace: Option<&str>,
        in_use: &BTreeSet<String>,
    ) {
        let in_scope = |ns: Option<&str>| namespace.is_none_or(|want| ns == Some(want));
        let pools = snapshot
            .ip_address_pools
            .values()
            .filter(|p| in_scope(p.metadata.namespace.as_deref()));
        let (parsed, mut problems) = validate::valid_pools(pools.map(|p| p.as_ref()));
        // Pools that could not even be decoded.
        for (object, message) in snapshot.invalid.iter() {
            if object.kind == Kind::IPAddressPool && in_scope(object.namespace.as_deref()) {
                problems.push(Problem {
                    object: object.clone(),
                    field: String::new(),
                    reason: message.clone(),
                    severity: Severity::Error,
                });
            }
        }
        let failed: BTreeSet<ObjectRef> = problems
            .iter()
            .filter(|p| p.is_error())
            .map(|p| p.object.clone())
            .collect();

        let mut effective: BTreeMap<ObjectRef, ParsedPool> =
            parsed.into_iter().map(|p| (p.object(), p)).collect();
        let mut kept_overlapping = BTreeSet::new();
        for pool in snapshot
            .ip_address_pools
            .values()
            .filter(|p| in_scope(p.metadata.namespace.as_deref()))
        {
            let Some(name) = pool.metadata.name.as_deref() else {
                continue;
            };
            if !in_use.contains(name) {
                continue;
            }
            // Valid on its own: left out only for overlapping another pool.
            let (alone, alone_problems) = validate::valid_pools([pool.as_ref()]);
            if let [p] = alone.as_slice()
                && !alone_problems.iter().any(Problem::is_error)
                && !effective.contains_key(&p.object())
            {
                kept_overlapping.insert(p.object());
                effective.insert(p.object(), p.clone());
            }
        }
        let mut stale = BTreeSet::new();
        for object in &failed {
            if kept_overlapping.contains(object) {
                continue;
            }
            if let Some(last) = self.effective.get(object) {
                effective.insert(object.clone(), last.clone());
                stale.insert(object.clone());
            }
        }

        // The allocator and the annotations know pools by name: the same name in two
        // namespaces keeps the first (by namespace) and reports the others.
        let mut seen: BTreeMap<String, ObjectRef> = BTreeMap::new();
        effective.retain(|object, pool| match seen.get(&pool.name) {
            Some(first) => {
                problems.push(Problem {
                    object: object.clone(),
                    field: "metadata.name".into(),
                    reason: format!(
                        "another pool has the same name ({first}); pools are known by name, \
                         so this one is ignored"
                    ),
                    severity: Severity::Error,
                });
                false
            }
            None => {
                seen.insert(pool.name.clone(), object.clone());
                true
            }
        });
        stale.retain(|o| effective.contains_key(o));
        kept_overlapping.retain(|o| effective.contains_key(o));

        self.kept_overlapping = kept_overlapping;
        self.effective = effective;
        self.stale = stale;
        self.problems = problems;
    }

    /// The pools for the allocator.
    pub fn pools(&self) -> Vec<Pool> {
        self.effective.values().map(Pool::from_parsed).collect()
    }

    /// Pools running on their last valid version because the current one is invalid.
    pub fn stale(&self) -> &BTreeSet<ObjectRef> {
        &self.stale
    }

    /// Pools that overlap another and stay in use because Services hold addresses from them.
    pub fn kept_overlapping(&self) -> &BTreeSet<ObjectRef> {
        &self.kept_overlapping
    }

    /// Problems of the pools' current versions.
    pub fn problems(&self) -> &[Problem] {
        &self.problems
    }

    /// The object a pool name stands for.
    pub fn object_of(&self, name: &str) -> Option<&ObjectRef> {
        self.effective
            .iter()
            .find(|(_, p)| p.name == name)
            .map(|(o, _)| o)
    }
}
