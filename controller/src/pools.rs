//! The pools the allocator runs on, from the IPAddressPools of a snapshot, keeping the last
//! valid version of a pool whose current version is invalid.
//!
//! MetalLB rejects the whole configuration when one object is bad and keeps running the last
//! valid one (`metallb_k8s_client_config_stale_bool` = 1). We are finer-grained: a bad pool
//! is reported (every problem, naming the field) and
//! - if it was never valid, it is ignored while every other pool works;
//! - if it was valid before, its last valid version stays in use (it is *stale*), so no
//!   Service loses an address because of a typo. Deleting the pool removes it.

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
}

impl PoolConfig {
    /// Re-reads the pools of `snapshot` (only those in `namespace` when given).
    pub fn update(&mut self, snapshot: &Snapshot, namespace: Option<&str>) {
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
        let mut stale = BTreeSet::new();
        for object in &failed {
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
