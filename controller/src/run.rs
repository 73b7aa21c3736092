//! Running the reconciler on a [`ClusterState`] through the common [`Driver`]: once
//! (`--once`), or following every change until shut down. This is where the writes happen.

use std::collections::{BTreeMap, BTreeSet};

use metalnet::daemon::{Driver, Health, PassReport, Plan, Reconcile, Shutdown};
use metalnet::state::{ClusterState, Kind, MetadataPatch, ObjectRef, Snapshot, StateError};
use serde_json::{Value, json};

use crate::allocator::{
    ANNOTATION_IP_ALLOCATED_FROM_POOL, DEPRECATED_ANNOTATION_IP_ALLOCATED_FROM_POOL,
};
use crate::metrics::Metrics;
use crate::reconcile::{Action, Options, REPORTER, Reconciler};

/// The kinds the controller reads.
pub const KINDS: [Kind; 3] = [Kind::Service, Kind::Namespace, Kind::IPAddressPool];

/// Failures of a run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{failed} write(s) failed; first: {first}")]
    Writes { failed: usize, first: String },
}

/// What a pass left behind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Services holding addresses.
    pub allocated: usize,
    /// Served Services without an address.
    pub pending: usize,
    /// Writes made (status, annotations, events).
    pub writes: usize,
}

fn summary(r: &Reconciler, writes: usize) -> Summary {
    Summary {
        allocated: r.allocator().assignments().count(),
        pending: r.allocator().pending_count(),
        writes,
    }
}

/// Per involved object (kind, namespace, name): the (reason, message)s of the latest Events
/// this controller recorded, so a restart does not repeat them.
type PastEvents = BTreeMap<(String, String, String), (String, Vec<(String, String)>)>;

/// Reads the latest Events this controller recorded about the Services' namespaces.
async fn past_events(state: &ClusterState, snapshot: &Snapshot) -> PastEvents {
    let namespaces: BTreeSet<String> = snapshot
        .services
        .keys()
        .map(|k| k.namespace.clone().unwrap_or_else(|| "default".into()))
        .collect();
    let mut latest = PastEvents::new();
    for ns in namespaces {
        let events = match state.list_events(&ns).await {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(namespace = %ns, error = %e, "cannot read past events; they may repeat");
                continue;
            }
        };
        for e in events {
            let ours = e["reportingComponent"] == REPORTER || e["source"]["component"] == REPORTER;
            if !ours {
                continue;
            }
            let inv = &e["involvedObject"];
            let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
            let key = (s(&inv["kind"]), s(&inv["namespace"]), s(&inv["name"]));
            let at = s(&e["lastTimestamp"]);
            let entry = latest
                .entry(key)
                .or_insert_with(|| (at.clone(), Vec::new()));
            if at > entry.0 {
                *entry = (at.clone(), Vec::new());
            }
            if at == entry.0 {
                entry.1.push((s(&e["reason"]), s(&e["message"])));
            }
        }
    }
    latest
}

/// Drops Events identical (reason and message) to the latest one already recorded about the
/// same object.
fn drop_repeated_events(past: &PastEvents, actions: &mut Vec<Action>) {
    actions.retain(|a| match a {
        Action::Event { object, event } => {
            let key = (
                object.kind.name().to_string(),
                object.namespace.clone().unwrap_or_default(),
                object.name.clone(),
            );
            !past.get(&key).is_some_and(|(_, last)| {
                last.iter()
                    .any(|(r, m)| *r == event.reason && *m == event.message)
            })
        }
        _ => true,
    });
}

/// The controller as the driver runs it: the pure [`Reconciler`] plans, this writes.
pub struct ControllerLoop<'s> {
    state: &'s ClusterState,
    reconciler: Reconciler,
    metrics: Option<&'s Metrics>,
    /// Events recorded before this start, consulted on the first pass only.
    past: Option<PastEvents>,
    writes: usize,
}

impl<'s> ControllerLoop<'s> {
    /// A loop that has not planned yet; reads the Events of an earlier run first, so a
    /// restart does not repeat them.
    pub async fn new(
        state: &'s ClusterState,
        opts: &Options,
        metrics: Option<&'s Metrics>,
    ) -> ControllerLoop<'s> {
        let past = past_events(state, &state.snapshot()).await;
        ControllerLoop {
            state,
            reconciler: Reconciler::new(opts.clone()),
            metrics,
            past: Some(past),
            writes: 0,
        }
    }

    pub fn reconciler(&self) -> &Reconciler {
        &self.reconciler
    }
}

fn object_of(action: &Action) -> &ObjectRef {
    match action {
        Action::SetIngress { service, .. } | Action::SetPoolAnnotation { service, .. } => service,
        Action::Event { object, .. } => object,
    }
}

impl Reconcile for ControllerLoop<'_> {
    type Op = Action;
    type Key = ObjectRef;
    type Error = StateError;

    fn name(&self) -> &'static str {
        "controller"
    }

    fn plan(&mut self, input: Plan<'_, ObjectRef>) -> Vec<Action> {
        let changed: Option<BTreeSet<ObjectRef>> = input.changed.map(|c| {
            c.iter()
                .cloned()
                // A failed Event is about its Service: replanning the Service rewrites both.
                .chain(input.retry.iter().cloned())
                .collect()
        });
        let mut actions = self.reconciler.reconcile(input.snapshot, changed.as_ref());
        if let Some(past) = self.past.take() {
            drop_repeated_events(&past, &mut actions);
        }
        actions
    }

    fn key(&self, op: &Action) -> ObjectRef {
        object_of(op).clone()
    }

    async fn apply(&mut self, action: Action) -> Result<(), StateError> {
        let result = write(self.state, action).await;
        if let Some(m) = self.metrics {
            m.wrote(result.is_ok());
        }
        if result.is_ok() {
            self.writes += 1;
        }
        result
    }

    fn finished(&mut self, report: &PassReport) {
        if let Some(m) = self.metrics {
            m.reconciled(report.first);
            m.observe(&self.reconciler);
        }
        if report.first {
            let s = summary(&self.reconciler, report.applied);
            tracing::info!(
                allocated = s.allocated,
                pending = s.pending,
                writes = s.writes,
                failed = report.failed.len(),
                "first full reconcile done"
            );
        }
    }
}

/// Performs one write.
async fn write(state: &ClusterState, action: Action) -> Result<(), StateError> {
    match action {
        Action::SetIngress { service, ips } => {
            let ingress = if ips.is_empty() {
                Value::Null
            } else {
                Value::Array(
                    ips.iter()
                        .map(|ip| json!({ "ip": ip.to_string() }))
                        .collect(),
                )
            };
            tracing::debug!(service = %service, ingress = %ingress, "writing status");
            state
                .patch_status(&service, json!({ "loadBalancer": { "ingress": ingress } }))
                .await
        }
        Action::SetPoolAnnotation {
            service,
            pool,
            drop_deprecated,
            extra,
        } => {
            let mut annotations =
                BTreeMap::from([(ANNOTATION_IP_ALLOCATED_FROM_POOL.to_string(), pool)]);
            annotations.extend(extra);
            if drop_deprecated {
                annotations.insert(
                    DEPRECATED_ANNOTATION_IP_ALLOCATED_FROM_POOL.to_string(),
                    None,
                );
            }
            let patch = MetadataPatch {
                annotations,
                labels: BTreeMap::new(),
            };
            state.patch_metadata(&service, &patch).await
        }
        Action::Event { object, event } => state.record_event(&object, &event).await,
    }
}

/// Reconciles the current state once, writes the results and returns (`--once`). Stops
/// early, between writes, when `shutdown` is requested.
pub async fn reconcile_once(
    state: &ClusterState,
    opts: &Options,
    shutdown: &Shutdown,
) -> Result<Summary, RunError> {
    let mut driver =
        Driver::new(ControllerLoop::new(state, opts, None).await).shutdown(shutdown.clone());
    let report = driver.once(state).await;
    let s = summary(driver.reconciler().reconciler(), report.applied);
    tracing::info!(
        allocated = s.allocated,
        pending = s.pending,
        writes = s.writes,
        abandoned = report.abandoned,
        "reconciled once"
    );
    match report.failed.first() {
        None => Ok(s),
        Some((object, _, message)) => Err(RunError::Writes {
            failed: report.failed.len(),
            first: format!("{object}: {message}"),
        }),
    }
}

/// Follows the cluster state and keeps every Service reconciled until `shutdown` is
/// requested. `/readyz` turns ready after the first full pass. Failed writes are retried
/// with backoff by the driver, according to the failure's class.
pub async fn run(
    state: &ClusterState,
    opts: &Options,
    metrics: &Metrics,
    health: &Health,
    shutdown: &Shutdown,
) {
    let driver = Driver::new(ControllerLoop::new(state, opts, Some(metrics)).await)
        .shutdown(shutdown.clone())
        .metrics(metrics.driver.clone())
        .readiness(health.condition("controller"));
    driver.run(state).await;
    tracing::info!("shutting down");
}
