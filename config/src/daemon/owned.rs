//! Keeping objects this process owns (status objects such as ServiceL2Status and
//! ServiceBGPStatus, plus Events) in line with what its logic decided, on the [`Driver`].
//!
//! The decision arrives through a watch channel (the latest wins); a pure function turns it
//! and the snapshot into an [`OwnedPlan`]. A write that failed is not remembered as done, so
//! the driver's retry replans it and writes it again: no failure is forgotten while the
//! decision stays the same.
//!
//! [`Driver`]: super::Driver

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;
use tokio::sync::watch;

use super::driver::{Plan, Reconcile};
use crate::state::{ClusterState, EventRecord, Kind, ObjectRef, Snapshot, StateError};

/// The writes that make the owned objects match a decision.
#[derive(Clone, Debug, Default)]
pub struct OwnedPlan {
    pub apply: Vec<(ObjectRef, Value)>,
    pub delete: Vec<ObjectRef>,
    /// Events to record (about the object named), once.
    pub events: Vec<(ObjectRef, EventRecord)>,
}

/// One write.
#[derive(Clone, Debug)]
pub enum OwnedOp {
    Apply(ObjectRef, Value),
    Delete(ObjectRef),
    Event(ObjectRef, EventRecord),
}

/// Computes the plan for a decision. It may keep state between calls (to record an Event
/// only when something starts), but does no I/O.
pub trait OwnedPlanner<D>: Send {
    fn plan(&mut self, snapshot: &Snapshot, decision: &D) -> OwnedPlan;
}

impl<D, F> OwnedPlanner<D> for F
where
    F: FnMut(&Snapshot, &D) -> OwnedPlan + Send,
{
    fn plan(&mut self, snapshot: &Snapshot, decision: &D) -> OwnedPlan {
        self(snapshot, decision)
    }
}

/// A [`Reconcile`] that writes the owned objects of the latest decision.
pub struct OwnedObjects<D, P> {
    name: &'static str,
    state: Arc<ClusterState>,
    decisions: watch::Receiver<Option<D>>,
    planner: P,
    /// What was last written (None: deleted) and has not shown up in a change since, so a
    /// snapshot that lags behind our own writes does not make us write the same again.
    written: HashMap<ObjectRef, Option<Value>>,
}

impl<D, P> OwnedObjects<D, P>
where
    D: Clone + Send + Sync,
    P: OwnedPlanner<D>,
{
    pub fn new(
        name: &'static str,
        state: Arc<ClusterState>,
        decisions: watch::Receiver<Option<D>>,
        planner: P,
    ) -> Self {
        OwnedObjects {
            name,
            state,
            decisions,
            planner,
            written: HashMap::new(),
        }
    }
}

impl<D, P> Reconcile for OwnedObjects<D, P>
where
    D: Clone + Send + Sync,
    P: OwnedPlanner<D>,
{
    type Op = OwnedOp;
    type Key = ObjectRef;
    type Error = StateError;

    fn name(&self) -> &'static str {
        self.name
    }

    fn ignored_kinds(&self) -> &[Kind] {
        &[Kind::Event]
    }

    fn plan(&mut self, input: Plan<'_, ObjectRef>) -> Vec<OwnedOp> {
        if let Some(changed) = input.changed {
            // The snapshot now shows these objects as they are: trust it over our memory.
            for r in changed {
                self.written.remove(r);
            }
        }
        let Some(decision) = self.decisions.borrow_and_update().clone() else {
            return Vec::new();
        };
        let plan = self.planner.plan(input.snapshot, &decision);
        let mut ops = Vec::new();
        for (r, value) in plan.apply {
            if self.written.get(&r) != Some(&Some(value.clone())) {
                ops.push(OwnedOp::Apply(r, value));
            }
        }
        for r in plan.delete {
            if self.written.get(&r) != Some(&None) {
                ops.push(OwnedOp::Delete(r));
            }
        }
        for (r, e) in plan.events {
            ops.push(OwnedOp::Event(r, e));
        }
        ops
    }

    fn key(&self, op: &OwnedOp) -> ObjectRef {
        match op {
            OwnedOp::Apply(r, _) | OwnedOp::Delete(r) | OwnedOp::Event(r, _) => r.clone(),
        }
    }

    async fn apply(&mut self, op: OwnedOp) -> Result<(), StateError> {
        match op {
            OwnedOp::Apply(r, value) => {
                self.state.apply(&r, value.clone()).await?;
                self.written.insert(r, Some(value));
            }
            OwnedOp::Delete(r) => {
                self.state.delete(&r).await?;
                self.written.insert(r, None);
            }
            OwnedOp::Event(r, e) => self.state.record_event(&r, &e).await?,
        }
        Ok(())
    }

    fn external(&mut self) -> impl std::future::Future<Output = ()> + Send {
        let mut rx = self.decisions.clone();
        async move {
            if rx.changed().await.is_err() {
                // The deciding side is gone (shutting down): nothing new will come.
                std::future::pending::<()>().await;
            }
        }
    }
}
