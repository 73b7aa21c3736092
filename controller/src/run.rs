//! Running the reconciler on a [`ClusterState`]: once (`--once`), or following every change
//! until shut down. This is where the writes happen.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::time::Duration;

use metalnet::state::{ClusterState, Kind, MetadataPatch, ObjectRef, StateError};
use metalnet::telemetry::Health;
use serde_json::{Value, json};

use crate::allocator::{
    ANNOTATION_IP_ALLOCATED_FROM_POOL, DEPRECATED_ANNOTATION_IP_ALLOCATED_FROM_POOL,
};
use crate::metrics::Metrics;
use crate::reconcile::{Action, Options, REPORTER, Reconciler};

/// The kinds the controller reads.
pub const KINDS: [Kind; 3] = [Kind::Service, Kind::Namespace, Kind::IPAddressPool];

/// First delay before retrying failed writes; doubles up to [`RETRY_MAX`].
const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// Failures of a run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{failed} write(s) failed; first: {first}")]
    Writes { failed: usize, first: StateError },
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

/// Performs `actions`; returns how many succeeded and the failures, by object.
async fn execute(
    state: &ClusterState,
    actions: Vec<Action>,
    metrics: Option<&Metrics>,
) -> (usize, Vec<(ObjectRef, StateError)>) {
    let mut done = 0;
    let mut failed = Vec::new();
    for action in actions {
        let (object, result) = match action {
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
                let r = state
                    .patch_status(&service, json!({ "loadBalancer": { "ingress": ingress } }))
                    .await;
                (service, r)
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
                let r = state.patch_metadata(&service, &patch).await;
                (service, r)
            }
            Action::Event { object, event } => {
                let r = state.record_event(&object, &event).await;
                (object, r)
            }
        };
        if let Some(m) = metrics {
            m.wrote(result.is_ok());
        }
        match result {
            Ok(()) => done += 1,
            Err(e) => {
                tracing::warn!(object = %object, error = %e, "write failed");
                failed.push((object, e));
            }
        }
    }
    (done, failed)
}

/// After a restart: drops Events identical (reason and message) to the latest one this
/// controller already recorded about the same object, so a restart does not repeat them.
async fn drop_repeated_events(state: &ClusterState, actions: &mut Vec<Action>) {
    let namespaces: BTreeSet<String> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Event { object, .. } => {
                Some(object.namespace.clone().unwrap_or("default".into()))
            }
            _ => None,
        })
        .collect();
    // Per (kind, namespace, name): the latest lastTimestamp of our events and their
    // (reason, message)s.
    type Involved = (String, String, String);
    type Latest = (String, Vec<(String, String)>);
    let mut latest: BTreeMap<Involved, Latest> = BTreeMap::new();
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
    actions.retain(|a| match a {
        Action::Event { object, event } => {
            let key = (
                object.kind.name().to_string(),
                object.namespace.clone().unwrap_or_default(),
                object.name.clone(),
            );
            !latest.get(&key).is_some_and(|(_, last)| {
                last.iter()
                    .any(|(r, m)| *r == event.reason && *m == event.message)
            })
        }
        _ => true,
    });
}

/// Reconciles the current state once, writes the results and returns (`--once`).
pub async fn reconcile_once(state: &ClusterState, opts: &Options) -> Result<Summary, RunError> {
    let mut r = Reconciler::new(opts.clone());
    let snapshot = state.snapshot();
    let mut actions = r.reconcile(&snapshot, None);
    drop_repeated_events(state, &mut actions).await;
    let (writes, failed) = execute(state, actions, None).await;
    let s = summary(&r, writes);
    tracing::info!(
        allocated = s.allocated,
        pending = s.pending,
        writes = s.writes,
        "reconciled once"
    );
    let failed_count = failed.len();
    match failed.into_iter().next() {
        None => Ok(s),
        Some((_, first)) => Err(RunError::Writes {
            failed: failed_count,
            first,
        }),
    }
}

/// Follows the cluster state and keeps every Service reconciled until `shutdown` completes.
/// `/readyz` turns ready after the first full pass. Failed writes are retried with backoff.
pub async fn run(
    state: &ClusterState,
    opts: &Options,
    metrics: &Metrics,
    health: &Health,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    let mut r = Reconciler::new(opts.clone());
    let mut sub = state.subscribe();
    tokio::pin!(shutdown);
    let mut retry: BTreeSet<ObjectRef> = BTreeSet::new();
    let mut delay = RETRY_MIN;
    let retry_timer = tokio::time::sleep(Duration::from_secs(365 * 24 * 3600));
    tokio::pin!(retry_timer);
    loop {
        let (snapshot, changed) = tokio::select! {
            _ = &mut shutdown => {
                tracing::info!("shutting down");
                return Ok(());
            }
            update = sub.next() => (update.snapshot, update.changed),
            _ = &mut retry_timer, if !retry.is_empty() => {
                (state.snapshot(), std::mem::take(&mut retry))
            }
        };
        let first = !r.started();
        let mut actions = r.reconcile(&snapshot, Some(&changed));
        metrics.reconciled(first);
        if first {
            drop_repeated_events(state, &mut actions).await;
        }
        let (writes, failed) = execute(state, actions, Some(metrics)).await;
        metrics.observe(&r);
        if first {
            let s = summary(&r, writes);
            tracing::info!(
                allocated = s.allocated,
                pending = s.pending,
                writes = s.writes,
                "first full reconcile done; ready"
            );
            health.set_ready(true);
        }
        let failed_services: Vec<ObjectRef> = failed
            .into_iter()
            .map(|(o, _)| o)
            .filter(|o| o.kind == Kind::Service)
            .collect();
        if failed_services.is_empty() {
            delay = RETRY_MIN;
        } else {
            retry.extend(failed_services);
            retry_timer
                .as_mut()
                .reset(tokio::time::Instant::now() + delay);
            tracing::info!(
                services = retry.len(),
                delay_s = delay.as_secs(),
                "retrying failed writes"
            );
            delay = (delay * 2).min(RETRY_MAX);
        }
    }
}
