//! The one reconcile loop every daemon runs: follow the cluster state, compute a pure plan
//! from the snapshot and what changed, apply it op by op, and retry each failed object with
//! a backoff chosen by the failure's [`ErrorClass`].
//!
//! The split follows kube-runtime's `Controller::run(reconcile, error_policy)`, but over the
//! whole snapshot instead of one object at a time: MetalLB's decisions (allocation order,
//! election) are about all objects together. What differs between daemons is only the
//! [`Reconcile`] implementation; subscription, filtering of the process's own writes,
//! retries, readiness, metrics and shutdown are the same everywhere.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::time::Instant;

use super::health::Readiness;
use super::shutdown::Shutdown;
use crate::state::{ClusterState, ErrorClass, Kind, ObjectRef, Snapshot, StateError};

/// What a plan is computed from.
#[derive(Clone, Copy, Debug)]
pub struct Plan<'a, K> {
    pub snapshot: &'a Arc<Snapshot>,
    /// The objects changed since the last plan, the process's own writes left out; `None`
    /// on the first pass, when everything is new.
    pub changed: Option<&'a BTreeSet<ObjectRef>>,
    /// Objects whose ops failed earlier and are due for another try.
    pub retry: &'a BTreeSet<K>,
    /// Whether an input outside the cluster state changed (see [`Reconcile::external`]).
    pub external: bool,
}

/// Errors the driver can classify to choose a retry.
pub trait Classify {
    fn class(&self) -> ErrorClass;
}

impl Classify for StateError {
    fn class(&self) -> ErrorClass {
        StateError::class(self)
    }
}

/// For loops whose ops cannot fail (in-memory tables).
impl Classify for std::convert::Infallible {
    fn class(&self) -> ErrorClass {
        match *self {}
    }
}

/// A daemon's logic as the [`Driver`] runs it: a pure plan and the edge that applies it.
pub trait Reconcile: Send {
    /// One thing to do, about one object.
    type Op: Send;
    /// What an op is about; failures are retried per key.
    type Key: Ord + Clone + fmt::Display + Send + Sync;
    type Error: std::error::Error + Classify + Send + Sync + 'static;

    /// A short name for logs, metrics and readiness (`controller`, `layer2`, ...).
    fn name(&self) -> &'static str;

    /// Kinds whose changes never call for a new plan: the ones this process writes itself.
    fn ignored_kinds(&self) -> &[Kind] {
        &[]
    }

    /// Computes what to do. Pure: it may update the reconciler's own bookkeeping, but reads
    /// and writes nothing outside it.
    fn plan(&mut self, input: Plan<'_, Self::Key>) -> Vec<Self::Op>;

    fn key(&self, op: &Self::Op) -> Self::Key;

    /// Performs one op.
    fn apply(&mut self, op: Self::Op) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Completes when an input outside the cluster state changed (membership, interfaces,
    /// timers); the driver then plans again. The default never completes.
    fn external(&mut self) -> impl Future<Output = ()> + Send {
        std::future::pending()
    }

    /// Whether the daemon may report ready, asked after each pass (after the first one).
    fn ready(&self) -> bool {
        true
    }

    /// Called after each pass, for metrics and logs.
    fn finished(&mut self, _report: &PassReport) {}
}

/// How long to wait before trying a failed object again, by class; `None`: do not retry
/// (the object is gone, or the same request would fail the same way until it changes).
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    pub conflict: Option<(Duration, Duration)>,
    pub transient: Option<(Duration, Duration)>,
    pub forbidden: Option<(Duration, Duration)>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            conflict: Some((Duration::from_millis(100), Duration::from_secs(5))),
            transient: Some((Duration::from_secs(1), Duration::from_secs(30))),
            // RBAC or permissions need an operator; keep trying, slowly.
            forbidden: Some((Duration::from_secs(30), Duration::from_secs(300))),
        }
    }
}

impl RetryPolicy {
    /// The delay before attempt `attempt + 1` (the first retry has `attempt` 1).
    pub fn delay(&self, class: ErrorClass, attempt: u32) -> Option<Duration> {
        let (min, max) = match class {
            ErrorClass::Conflict => self.conflict?,
            ErrorClass::Transient => self.transient?,
            ErrorClass::Forbidden => self.forbidden?,
            ErrorClass::NotFound | ErrorClass::Invalid => return None,
        };
        let factor = 1u32 << attempt.saturating_sub(1).min(16);
        Some(min.saturating_mul(factor).min(max))
    }
}

/// What one pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PassReport {
    pub first: bool,
    /// Ops the plan asked for.
    pub planned: usize,
    pub applied: usize,
    /// Failed ops: the key, the class and the message.
    pub failed: Vec<(String, ErrorClass, String)>,
    /// Ops not tried because shutdown was requested.
    pub abandoned: usize,
}

#[derive(Clone, Debug)]
struct Retry {
    attempts: u32,
    due: Instant,
}

/// Metrics of the reconcile loops of a daemon, labelled by loop name.
#[derive(Clone, Debug, Default)]
pub struct DriverMetrics {
    passes: Family<LoopLabel, Counter>,
    ops: Family<OpLabels, Counter>,
    retrying: Family<LoopLabel, Gauge>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LoopLabel {
    r#loop: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabels {
    r#loop: String,
    result: String,
}

impl DriverMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "metalnet_reconcile_passes",
            "Reconcile passes, by loop",
            self.passes.clone(),
        );
        registry.register(
            "metalnet_reconcile_ops",
            "Ops applied by the reconcile loops, by loop and result (ok or the failure class)",
            self.ops.clone(),
        );
        registry.register(
            "metalnet_reconcile_retrying",
            "Objects waiting for a retry after a failed op, by loop",
            self.retrying.clone(),
        );
    }
}

/// Runs a [`Reconcile`] on a [`ClusterState`].
pub struct Driver<R: Reconcile> {
    reconciler: R,
    policy: RetryPolicy,
    readiness: Option<Readiness>,
    shutdown: Shutdown,
    metrics: Option<DriverMetrics>,
    retries: BTreeMap<R::Key, Retry>,
    /// How long an op in flight may still run once shutdown is requested.
    grace: Duration,
}

impl<R: Reconcile> Driver<R> {
    pub fn new(reconciler: R) -> Self {
        Driver {
            reconciler,
            policy: RetryPolicy::default(),
            readiness: None,
            shutdown: Shutdown::new(),
            metrics: None,
            retries: BTreeMap::new(),
            grace: Duration::from_secs(1),
        }
    }

    /// The readiness condition this loop sets: ready after its first pass, while the
    /// reconciler says so.
    pub fn readiness(mut self, readiness: Readiness) -> Self {
        readiness.set(false);
        self.readiness = Some(readiness);
        self
    }

    pub fn shutdown(mut self, shutdown: Shutdown) -> Self {
        self.shutdown = shutdown;
        self
    }

    pub fn metrics(mut self, metrics: DriverMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    pub fn retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.policy = policy;
        self
    }

    pub fn reconciler(&self) -> &R {
        &self.reconciler
    }

    /// One pass over the current snapshot, everything new (`--once`).
    pub async fn once(&mut self, state: &ClusterState) -> PassReport {
        let snapshot = state.snapshot();
        self.pass(&snapshot, None, BTreeSet::new(), false).await
    }

    /// Follows the state until shutdown is requested, then returns the reconciler so the
    /// caller can tear down what it owns (BGP Cease, gossip leave, kernel state).
    pub async fn run(mut self, state: &ClusterState) -> R {
        let name = self.reconciler.name();
        let mut sub = state.subscribe();
        let ignored: BTreeSet<Kind> = self.reconciler.ignored_kinds().iter().copied().collect();
        // The subscription's first update reports every object: the first pass plans all.
        let mut first = true;
        let mut snapshot = state.snapshot();
        let mut changed: BTreeSet<ObjectRef> = BTreeSet::new();
        // Never ready while blind: a state directory that vanished keeps its last state in
        // force, but nothing new is seen until it is back.
        let mut attached = state.attached();
        let mut attached_open = true;
        let mut ready = false;
        loop {
            let next_retry = self.retries.values().map(|r| r.due).min();
            let mut external = false;
            tokio::select! {
                biased;
                _ = self.shutdown.wait() => break,
                r = attached.changed(), if attached_open => {
                    // A closed channel (the backend gone) keeps its last value; stop waiting
                    // on it rather than wake at once again and again.
                    attached_open = r.is_ok();
                    self.set_ready(ready && *attached.borrow());
                    continue;
                }
                u = sub.next() => {
                    snapshot = u.snapshot;
                    changed.extend(u.changed.into_iter().filter(|o| !ignored.contains(&o.kind)));
                }
                _ = self.reconciler.external() => external = true,
                _ = sleep_until_opt(next_retry) => {}
            }
            let now = Instant::now();
            let due: BTreeSet<R::Key> = self
                .retries
                .iter()
                .filter(|(_, r)| r.due <= now)
                .map(|(k, _)| k.clone())
                .collect();
            if !first && changed.is_empty() && due.is_empty() && !external {
                continue;
            }
            let c = std::mem::take(&mut changed);
            let report = self
                .pass(&snapshot, (!first).then_some(&c), due, external)
                .await;
            first = false;
            ready = self.reconciler.ready() && !self.shutdown.requested();
            self.set_ready(ready && *attached.borrow());
            if report.abandoned > 0 {
                tracing::info!(
                    r#loop = name,
                    abandoned = report.abandoned,
                    "shutdown requested mid-pass: the rest is left for the next start"
                );
            }
        }
        tracing::debug!(r#loop = name, "stopped");
        if let Some(r) = &self.readiness {
            r.set(false);
        }
        self.reconciler
    }

    async fn pass(
        &mut self,
        snapshot: &Arc<Snapshot>,
        changed: Option<&BTreeSet<ObjectRef>>,
        due: BTreeSet<R::Key>,
        external: bool,
    ) -> PassReport {
        let name = self.reconciler.name();
        let ops = self.reconciler.plan(Plan {
            snapshot,
            changed,
            retry: &due,
            external,
        });
        // A retried key whose plan no longer has an op for it is settled.
        let planned_keys: BTreeSet<R::Key> = ops.iter().map(|o| self.reconciler.key(o)).collect();
        for k in &due {
            if !planned_keys.contains(k) {
                self.retries.remove(k);
            }
        }
        let mut report = PassReport {
            first: changed.is_none(),
            planned: ops.len(),
            ..PassReport::default()
        };
        let mut ops = ops.into_iter();
        for op in ops.by_ref() {
            if self.shutdown.requested() {
                report.abandoned += 1;
                break;
            }
            let key = self.reconciler.key(&op);
            let shutdown = self.shutdown.clone();
            let grace = self.grace;
            let result = tokio::select! {
                r = self.reconciler.apply(op) => Some(r),
                _ = async { shutdown.wait().await; tokio::time::sleep(grace).await } => None,
            };
            match result {
                None => {
                    report.abandoned += 1;
                    break;
                }
                Some(Ok(())) => {
                    report.applied += 1;
                    self.retries.remove(&key);
                    self.count(name, "ok");
                }
                Some(Err(e)) => {
                    let class = e.class();
                    self.count(name, &class.to_string());
                    let attempts = self.retries.get(&key).map_or(1, |r| r.attempts + 1);
                    match self.policy.delay(class, attempts) {
                        Some(delay) => {
                            tracing::warn!(r#loop = name, object = %key, class = %class, attempt = attempts, retry_in = ?delay, error = %e, "write failed; will retry");
                            self.retries.insert(
                                key.clone(),
                                Retry {
                                    attempts,
                                    due: Instant::now() + delay,
                                },
                            );
                        }
                        None => {
                            tracing::warn!(r#loop = name, object = %key, class = %class, error = %e, "write failed; not retried until the object changes");
                            self.retries.remove(&key);
                        }
                    }
                    report.failed.push((key.to_string(), class, e.to_string()));
                }
            }
        }
        report.abandoned += ops.count();
        if let Some(m) = &self.metrics {
            m.passes
                .get_or_create(&LoopLabel {
                    r#loop: name.into(),
                })
                .inc();
            m.retrying
                .get_or_create(&LoopLabel {
                    r#loop: name.into(),
                })
                .set(self.retries.len() as i64);
        }
        self.reconciler.finished(&report);
        report
    }

    fn set_ready(&self, ready: bool) {
        if let Some(r) = &self.readiness {
            r.set(ready);
        }
    }

    fn count(&self, name: &str, result: &str) {
        if let Some(m) = &self.metrics {
            m.ops
                .get_or_create(&OpLabels {
                    r#loop: name.into(),
                    result: result.into(),
                })
                .inc();
        }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Source;
    use crate::testing::{Manifest, service, yaml_stream};
    use std::sync::Mutex;

    /// Plans one op per Service (its name); fails the ones named in `fail` with that class.
    struct Echo {
        fail: Arc<Mutex<BTreeMap<String, ErrorClass>>>,
        tried: Arc<Mutex<Vec<String>>>,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("scripted {0}")]
    struct Scripted(ErrorClass);

    impl Classify for Scripted {
        fn class(&self) -> ErrorClass {
            self.0
        }
    }

    impl Reconcile for Echo {
        type Op = String;
        type Key = String;
        type Error = Scripted;
        fn name(&self) -> &'static str {
            "echo"
        }
        fn plan(&mut self, input: Plan<'_, String>) -> Vec<String> {
            let mut names: BTreeSet<String> = match input.changed {
                None => input
                    .snapshot
                    .services
                    .keys()
                    .map(|k| k.name.clone())
                    .collect(),
                Some(c) => c.iter().map(|o| o.name.clone()).collect(),
            };
            names.extend(input.retry.iter().cloned());
            names.into_iter().collect()
        }
        fn key(&self, op: &String) -> String {
            op.clone()
        }
        async fn apply(&mut self, op: String) -> Result<(), Scripted> {
            self.tried.lock().unwrap().push(op.clone());
            match self.fail.lock().unwrap().get(&op) {
                Some(class) => Err(Scripted(*class)),
                None => Ok(()),
            }
        }
    }

    #[tokio::test]
    async fn retries_transient_failures_and_not_invalid_ones() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("s.yaml"),
            yaml_stream(&[
                service("flaky").json(),
                service("bad").json(),
                service("good").json(),
            ]),
        )
        .unwrap();
        let state = ClusterState::start(Source::Dir(dir.path().into()), [Kind::Service])
            .await
            .unwrap();
        let fail = Arc::new(Mutex::new(BTreeMap::from([
            ("flaky".to_string(), ErrorClass::Transient),
            ("bad".to_string(), ErrorClass::Invalid),
        ])));
        let tried = Arc::new(Mutex::new(Vec::new()));
        let shutdown = Shutdown::new();
        let health = crate::daemon::Health::default();
        let driver = Driver::new(Echo {
            fail: fail.clone(),
            tried: tried.clone(),
        })
        .shutdown(shutdown.clone())
        .readiness(health.condition("echo"))
        .retry_policy(RetryPolicy {
            transient: Some((Duration::from_millis(20), Duration::from_millis(40))),
            ..RetryPolicy::default()
        });
        let state = Arc::new(state);
        let s = state.clone();
        let task = tokio::spawn(async move { driver.run(&s).await });
        let count = |name: &str| tried.lock().unwrap().iter().filter(|t| *t == name).count();
        let deadline = Instant::now() + Duration::from_secs(10);
        while count("flaky") < 3 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(count("flaky") >= 3, "transient failures are retried");
        assert!(health.is_ready(), "ready after the first pass");
        // Healed: the next retry succeeds and the retries stop.
        fail.lock().unwrap().remove("flaky");
        tokio::time::sleep(Duration::from_millis(200)).await;
        let settled = count("flaky");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(count("flaky"), settled, "no retry after success");
        assert_eq!(count("bad"), 1, "invalid requests are not retried");
        assert_eq!(count("good"), 1);
        shutdown.request("test");
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("stops on shutdown")
            .unwrap();
        assert!(!health.is_ready(), "not ready once stopped");
    }

    /// A state directory deleted and put back: not ready while it is gone (the daemon is
    /// blind), ready again once it is watched again.
    #[tokio::test]
    async fn never_ready_while_the_state_directory_is_gone() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("state");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("s.yaml"), service("web").yaml()).unwrap();
        let state = Arc::new(
            ClusterState::start(Source::Dir(dir.clone()), [Kind::Service])
                .await
                .unwrap(),
        );
        let health = crate::daemon::Health::default();
        let shutdown = Shutdown::new();
        let driver = Driver::new(Echo {
            fail: Arc::default(),
            tried: Arc::default(),
        })
        .shutdown(shutdown.clone())
        .readiness(health.condition("echo"));
        let s = state.clone();
        let task = tokio::spawn(async move { driver.run(&s).await });
        let until = |want: bool| {
            let health = health.clone();
            async move {
                let deadline = Instant::now() + Duration::from_secs(10);
                while health.is_ready() != want {
                    assert!(Instant::now() < deadline, "readiness never became {want}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        until(true).await;
        let aside = parent.path().join("aside");
        std::fs::rename(&dir, &aside).unwrap();
        until(false).await;
        std::fs::rename(&aside, &dir).unwrap();
        until(true).await;
        shutdown.request("test");
        task.await.unwrap();
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_and_skips_permanent_failures() {
        let p = RetryPolicy::default();
        assert_eq!(
            p.delay(ErrorClass::Transient, 1),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            p.delay(ErrorClass::Transient, 3),
            Some(Duration::from_secs(4))
        );
        assert_eq!(
            p.delay(ErrorClass::Transient, 30),
            Some(Duration::from_secs(30))
        );
        assert_eq!(p.delay(ErrorClass::NotFound, 1), None);
        assert_eq!(p.delay(ErrorClass::Invalid, 1), None);
        assert!(p.delay(ErrorClass::Forbidden, 1).unwrap() > Duration::from_secs(10));
    }

    #[test]
    fn api_status_codes_keep_their_class() {
        let obj = ObjectRef::new(Kind::Service, Some("default"), "web");
        let e = |code| StateError::Object {
            object: obj.clone(),
            message: "x".into(),
            status: Some(code),
        };
        assert_eq!(e(404).class(), ErrorClass::NotFound);
        assert_eq!(e(409).class(), ErrorClass::Conflict);
        assert_eq!(e(403).class(), ErrorClass::Forbidden);
        assert_eq!(e(422).class(), ErrorClass::Invalid);
        assert_eq!(e(500).class(), ErrorClass::Transient);
        assert_eq!(e(429).class(), ErrorClass::Transient);
        assert_eq!(e(403).status_code(), Some(403));
    }
}
