//! The meta-plugin's commands (ADD, DEL, CHECK, GC, STATUS, VERSION) on the CNI protocol
//! ([`crate::cni`]) and Multus's semantics ([`crate::multus`]). Used by the thin plugin (one
//! process per call) and by the thick daemon ([`crate::daemon`]) alike.
//!
//! The orchestration ([`Runner`]) works on a delegate list in hand, so it is tested with
//! hand-made lists; [`handle`] makes the list from the configuration and the pod.

pub mod cache;
pub mod route;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::Value;
use tracing::{info, warn};

use metalnet::model::core::Pod;
use metalnet::model::{Kind, NetworkAttachmentDefinition, ObjectKey, ObjectRef};
use metalnet::state::{EventRecord, EventType, MetadataPatch, Snapshot};

use crate::cni::cache::ResultCache;
use crate::cni::exec::{Exec, RuntimeConf};
use crate::cni::{CniEnv, CniError, CniResult, Command, Request, version};
use crate::multus::config::MultusConf;
use crate::multus::plan::{Attachment, Delegate, Nads};

/// The annotation network-status is written to.
pub const NETWORK_STATUS: &str = "k8s.v1.cni.cncf.io/network-status";
/// The hidden test hook: `cache` aborts right after the delegate cache is written,
/// `delegate:N` right after delegate N's ADD (before its result cache), `result:N` right
/// after its result cache. The process exits with status 137, as if killed. Honoured only
/// when the process itself has it in its environment, never from a forwarded request alone.
pub const TEST_ABORT_ENV: &str = "MULTUS_SHIM_TEST_ABORT_AFTER";
/// How long one delegate call may take.
pub const DELEGATE_TIMEOUT: Duration = Duration::from_secs(60);

/// What a call runs against.
pub struct Context {
    /// Pods and NetworkAttachmentDefinitions, and where network-status and Events are
    /// written. `None`: no cluster is configured (only the configuration's own `delegates`).
    pub state: Option<metalnet::state::ClusterState>,
    /// Where Events go: `None` records them before the call answers (a plugin process ends
    /// with its call); a queue has them recorded after the answer by [`record_queued`].
    pub events: Option<EventQueue>,
}

impl Context {
    /// A context whose Events are recorded before each call answers.
    pub fn new(state: Option<metalnet::state::ClusterState>) -> Context {
        Context {
            state,
            events: None,
        }
    }
}

/// Events waiting to be recorded after their call has answered, as Kubernetes' event
/// recorders do (Multus's included): Events are informational, so the runtime need not wait
/// for their writes, and a full queue drops them (with a warning) rather than slow pods
/// down. Only for a process that outlives its calls (the daemon).
#[derive(Clone)]
pub struct EventQueue {
    tx: tokio::sync::mpsc::Sender<(ObjectRef, EventRecord)>,
    pending: Arc<AtomicUsize>,
}

/// The receiving end of an [`EventQueue`].
pub struct EventReceiver {
    rx: tokio::sync::mpsc::Receiver<(ObjectRef, EventRecord)>,
    pending: Arc<AtomicUsize>,
}

impl EventQueue {
    /// How many Events may wait at once (client-go's broadcaster queues 1000 too).
    pub const CAPACITY: usize = 1000;

    /// A queue whose Events not yet recorded are counted in `pending` (so a shutdown can
    /// wait for them).
    pub fn new(pending: Arc<AtomicUsize>) -> (EventQueue, EventReceiver) {
        let (tx, rx) = tokio::sync::mpsc::channel(Self::CAPACITY);
        (
            EventQueue {
                tx,
                pending: pending.clone(),
            },
            EventReceiver { rx, pending },
        )
    }

    fn push(&self, obj: ObjectRef, rec: EventRecord) {
        self.pending.fetch_add(1, Ordering::SeqCst);
        if let Err(e) = self.tx.try_send((obj, rec)) {
            self.pending.fetch_sub(1, Ordering::SeqCst);
            warn!(error = %e, "event queue full or closed: event dropped");
        }
    }
}

/// Records the Events of `rx` with `ctx`'s state, in order, until the queue is closed.
pub async fn record_queued(ctx: Arc<Context>, mut rx: EventReceiver) {
    while let Some((obj, rec)) = rx.rx.recv().await {
        if let Some(state) = &ctx.state
            && let Err(e) = state.record_event(&obj, &rec).await
        {
            warn!(reason = %rec.reason, object = %obj, error = %e, "cannot record the event");
        }
        rx.pending.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Runs delegate lists: ADD with its caches and rollback, DEL from the caches, CHECK, GC.
#[derive(Debug, Clone)]
pub struct Runner {
    pub exec: Exec,
    pub cni_dir: PathBuf,
    pub retry_delete_on_error: bool,
    /// The test hook's value ([`TEST_ABORT_ENV`]).
    pub abort_after: Option<String>,
}

/// One delegate added: the delegate and its result (in the delegate's version).
pub type Added = (Delegate, Value);

fn rt_of(d: &Delegate, container_id: &str, netns: &str) -> RuntimeConf {
    RuntimeConf {
        container_id: container_id.into(),
        netns: netns.into(),
        ifname: d.ifname.clone(),
        cni_args: d.cni_args.clone(),
        capability_args: d.runtime_config.clone(),
    }
}

fn net_name(d: &Delegate) -> &str {
    crate::cni::exec::network_name(&d.conf)
}

impl Runner {
    fn abort_point(&self, point: &str) {
        if self.abort_after.as_deref() == Some(point) {
            warn!(point, "test hook: aborting");
            std::process::exit(137);
        }
    }

    fn result_path(&self, d: &Delegate, container_id: &str) -> PathBuf {
        ResultCache::path(&self.cni_dir, net_name(d), container_id, &d.ifname)
    }

    /// ADD of every delegate in order, after writing the delegate cache. On a failure the
    /// delegates already added and the failed one are deleted in reverse (their errors
    /// ignored), the caches removed, and the error names the network and the interface.
    pub async fn add(
        &self,
        container_id: &str,
        netns: &str,
        delegates: &[Delegate],
    ) -> Result<Vec<Added>, CniError> {
        let mut seen = BTreeSet::new();
        for d in delegates {
            if !seen.insert(d.ifname.as_str()) {
                return Err(CniError::new(
                    CniError::INVALID_CONFIG,
                    format!(
                        "network {:?}: interface {:?} is requested twice in the pod",
                        d.status_name, d.ifname
                    ),
                ));
            }
            crate::cni::exec::check_type(
                &d.status_name,
                d.conf
                    .get("type")
                    .or_else(|| d.conf.pointer("/plugins/0/type"))
                    .and_then(Value::as_str)
                    .unwrap_or_default(),
            )?;
        }
        // A cache left by an ADD that never finished (killed, and retried by the runtime
        // without a DEL): undo it first, or what it attached would no longer be listed
        // anywhere once this ADD overwrites the cache with a possibly different plan.
        let leftover = cache::path(&self.cni_dir, container_id).exists()
            || !ResultCache::of_container(&self.cni_dir, container_id).is_empty();
        if leftover {
            warn!(container = %container_id, "ADD over a leftover attachment: deleting it first");
            if let Err(e) = self.del_cached(container_id, netns).await {
                warn!(container = %container_id, error = %e, "DEL of the leftover attachment");
            }
        }
        cache::write(&self.cni_dir, container_id, delegates)?;
        self.abort_point("cache");
        let mut added = Vec::new();
        for d in delegates {
            let rt = rt_of(d, container_id, netns);
            match self.exec.add_network(&d.conf, &rt).await {
                Ok(result) => {
                    self.abort_point(&format!("delegate:{}", d.index));
                    let rc = ResultCache::new(
                        container_id,
                        &d.ifname,
                        &d.conf,
                        &d.cni_args,
                        &d.runtime_config,
                        &result,
                    );
                    if let Err(e) = rc.write(&self.cni_dir) {
                        added.push((d.clone(), result));
                        self.rollback(container_id, netns, &added, None).await;
                        return Err(e);
                    }
                    self.abort_point(&format!("result:{}", d.index));
                    info!(network = %d.status_name, ifname = %d.ifname, "delegate added");
                    added.push((d.clone(), result));
                }
                Err(e) => {
                    self.rollback(container_id, netns, &added, Some(d)).await;
                    let mut e = e;
                    e.msg = format!(
                        "ADD of network {:?} on interface {:?} failed: {}",
                        d.status_name, d.ifname, e.msg
                    );
                    return Err(e);
                }
            }
        }
        Ok(added)
    }

    /// Undoes a failed ADD: DEL of `failed` and of `added` in reverse, errors ignored, and
    /// the caches removed.
    pub async fn rollback(
        &self,
        container_id: &str,
        netns: &str,
        added: &[Added],
        failed: Option<&Delegate>,
    ) {
        if let Some(d) = failed
            && let Err(e) = self
                .exec
                .del_network(&d.conf, &rt_of(d, container_id, netns), None)
                .await
        {
            warn!(network = %d.status_name, error = %e, "rollback: DEL of the failed delegate");
        }
        for (d, result) in added.iter().rev() {
            let rt = rt_of(d, container_id, netns);
            if let Err(e) = self.exec.del_network(&d.conf, &rt, Some(result)).await {
                warn!(network = %d.status_name, error = %e, "rollback: DEL");
            }
            let _ = crate::cni::cache::remove(&self.result_path(d, container_id));
        }
        if let Some(d) = failed {
            let _ = crate::cni::cache::remove(&self.result_path(d, container_id));
        }
        let _ = crate::cni::cache::remove(&cache::path(&self.cni_dir, container_id));
    }

    /// `default-route`: when a delegate asks for it, the default routes of the others are
    /// removed in the pod's namespace, the requested gateways set on its interface, and the
    /// results (returned and cached) changed to match, so CHECK finds what is there.
    pub async fn default_route(
        &self,
        container_id: &str,
        netns: &str,
        added: &mut [Added],
    ) -> Result<(), CniError> {
        let Some(i) = added.iter().position(|(d, _)| !d.default_route.is_empty()) else {
            return Ok(());
        };
        let mut results: Vec<CniResult> = added
            .iter()
            .map(|(d, r)| CniResult::parse(r, crate::cni::exec::network_version(&d.conf)))
            .collect::<Result<_, _>>()?;
        let others: Vec<String> = added
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .flat_map(|(j, (d, _))| {
                let mut names: Vec<String> = results[j]
                    .sandbox_interfaces()
                    .map(|(_, f)| f.name.clone())
                    .collect();
                names.push(d.ifname.clone());
                names
            })
            .collect();
        let gws = added[i].0.default_route.clone();
        route::apply(netns, &others, &added[i].0.ifname, &gws).await?;
        for (j, ((d, result), r)) in added.iter_mut().zip(results.iter_mut()).enumerate() {
            route::apply_to_result(r, (j == i).then_some(gws.as_slice()));
            *result = r.to_version(crate::cni::exec::network_version(&d.conf))?;
            ResultCache::new(
                container_id,
                &d.ifname,
                &d.conf,
                &d.cni_args,
                &d.runtime_config,
                result,
            )
            .write(&self.cni_dir)?;
        }
        Ok(())
    }

    /// DEL of `delegates` in reverse, each with its cached result; the caches are removed
    /// unless a DEL failed and `retryDeleteOnError` is set. The first error is returned.
    pub async fn del_delegates(
        &self,
        container_id: &str,
        netns: &str,
        delegates: &[Delegate],
    ) -> Result<(), CniError> {
        let mut first: Option<CniError> = None;
        for d in delegates.iter().rev() {
            let path = self.result_path(d, container_id);
            let prev = match ResultCache::read(&path) {
                Ok(c) => c.map(|c| c.result),
                Err(e) => {
                    warn!(error = %e, "DEL without the cached result");
                    None
                }
            };
            let rt = rt_of(d, container_id, netns);
            if let Err(mut e) = self.exec.del_network(&d.conf, &rt, prev.as_ref()).await {
                e.msg = format!(
                    "DEL of network {:?} on interface {:?} failed: {}",
                    d.status_name, d.ifname, e.msg
                );
                warn!(error = %e, "DEL");
                first.get_or_insert(e);
            }
        }
        if first.is_none() || !self.retry_delete_on_error {
            for d in delegates {
                crate::cni::cache::remove(&self.result_path(d, container_id))?;
            }
            crate::cni::cache::remove(&cache::path(&self.cni_dir, container_id))?;
        }
        first.map_or(Ok(()), Err)
    }

    /// DEL from the result caches alone (when the delegate cache is gone or corrupt):
    /// every `<cniDir>/results/*-<containerID>-*`. Returns whether any was found.
    pub async fn del_from_result_caches(
        &self,
        container_id: &str,
        netns: &str,
    ) -> Result<bool, CniError> {
        let paths = ResultCache::of_container(&self.cni_dir, container_id);
        let mut first: Option<CniError> = None;
        let mut any = false;
        for p in paths.iter().rev() {
            let c = match ResultCache::read(p) {
                Ok(Some(c)) if c.container_id == container_id => c,
                Ok(_) => continue,
                Err(e) => {
                    // Nothing can be undone from it; it must not stay forever either.
                    warn!(error = %e, "removing an unreadable result cache");
                    let _ = crate::cni::cache::remove(p);
                    continue;
                }
            };
            any = true;
            let conf = match c.conf(p) {
                Ok(conf) => conf,
                Err(e) => {
                    warn!(error = %e, "removing an unreadable result cache");
                    let _ = crate::cni::cache::remove(p);
                    continue;
                }
            };
            let rt = RuntimeConf {
                container_id: container_id.into(),
                netns: netns.into(),
                ifname: c.if_name.clone(),
                cni_args: c
                    .cni_args
                    .iter()
                    .map(|[k, v]| (k.clone(), v.clone()))
                    .collect(),
                capability_args: c.capability_args.clone(),
            };
            let r = self.exec.del_network(&conf, &rt, Some(&c.result)).await;
            match r {
                Ok(()) => crate::cni::cache::remove(p)?,
                Err(e) => {
                    if !self.retry_delete_on_error {
                        crate::cni::cache::remove(p)?;
                    }
                    first.get_or_insert(e);
                }
            }
        }
        if first.is_none() || !self.retry_delete_on_error {
            crate::cni::cache::remove(&cache::path(&self.cni_dir, container_id))?;
        }
        first.map_or(Ok(any), Err)
    }

    /// DEL of a container from what is cached: the delegate cache, else the result caches.
    /// `Ok(false)`: nothing was cached.
    pub async fn del_cached(&self, container_id: &str, netns: &str) -> Result<bool, CniError> {
        match cache::read(&self.cni_dir, container_id) {
            Ok(Some(ds)) => {
                self.del_delegates(container_id, netns, &ds).await?;
                // Result caches of delegates the cache does not list (there should be none).
                self.del_from_result_caches(container_id, netns).await?;
                Ok(true)
            }
            Ok(None) => self.del_from_result_caches(container_id, netns).await,
            Err(e) => {
                warn!(error = %e, "DEL falls back to the result caches");
                self.del_from_result_caches(container_id, netns).await?;
                crate::cni::cache::remove(&cache::path(&self.cni_dir, container_id))?;
                Ok(true)
            }
        }
    }

    /// CHECK of `delegates`, each with its cached result.
    pub async fn check(
        &self,
        container_id: &str,
        netns: &str,
        delegates: &[Delegate],
    ) -> Result<(), CniError> {
        for d in delegates {
            let path = self.result_path(d, container_id);
            let Some(c) = ResultCache::read(&path)? else {
                return Err(CniError::new(
                    CniError::UNKNOWN_CONTAINER,
                    format!(
                        "CHECK of network {:?} on interface {:?}: no cached result ({})",
                        d.status_name,
                        d.ifname,
                        path.display()
                    ),
                ));
            };
            self.exec
                .check_network(&d.conf, &rt_of(d, container_id, netns), &c.result)
                .await?;
        }
        Ok(())
    }

    /// GC: DEL of every cached attachment not in `valid` (container id, interface), with
    /// its caches removed.
    pub async fn gc(&self, valid: &[(String, String)]) -> Result<(), CniError> {
        let mut cids: BTreeSet<String> = cache::containers(&self.cni_dir).into_iter().collect();
        if let Ok(rd) = std::fs::read_dir(self.cni_dir.join("results")) {
            for e in rd.filter_map(|e| e.ok()) {
                if let Ok(Some(c)) = ResultCache::read(&e.path()) {
                    cids.insert(c.container_id);
                }
            }
        }
        let mut first = None;
        for cid in cids {
            let master_if = cache::read(&self.cni_dir, &cid)
                .ok()
                .flatten()
                .and_then(|ds| ds.into_iter().find(|d| d.master).map(|d| d.ifname));
            let is_valid = valid
                .iter()
                .any(|(c, i)| *c == cid && master_if.as_deref().is_none_or(|m| m == i));
            if is_valid {
                continue;
            }
            info!(container = %cid, "GC: attachment no longer valid");
            if let Err(e) = self.del_cached(&cid, "").await {
                warn!(container = %cid, error = %e, "GC: DEL");
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }
}

struct SnapshotNads<'a>(&'a Snapshot);

impl Nads for SnapshotNads<'_> {
    fn nad(&self, namespace: &str, name: &str) -> Option<NetworkAttachmentDefinition> {
        self.0
            .network_attachment_definitions
            .get(&ObjectKey {
                namespace: Some(namespace.into()),
                name: name.into(),
            })
            .map(|n| (**n).clone())
    }
}

struct NoNads;

impl Nads for NoNads {
    fn nad(&self, _: &str, _: &str) -> Option<NetworkAttachmentDefinition> {
        None
    }
}

/// The cniVersion an error is printed in: the configuration's, if it is one this plugin
/// speaks, else the newest.
pub fn error_version(req: &Request) -> String {
    serde_json::from_slice::<Value>(&req.stdin)
        .ok()
        .and_then(|v| {
            v.get("cniVersion")
                .and_then(Value::as_str)
                .map(String::from)
        })
        .filter(|v| version::SUPPORTED.contains(&v.as_str()))
        .unwrap_or_else(|| version::LATEST.to_string())
}

/// Whether the call needs the cluster (the pod, NADs): ADD always; DEL only when nothing of
/// the container is cached (then it re-plans from the pod if it can), so a DEL with the API
/// down never waits for it.
pub fn needs_cluster(req: &Request) -> bool {
    match req.env.get("CNI_COMMAND").map(String::as_str) {
        Some("ADD") => true,
        Some("DEL") => {
            let Ok((_, conf)) = parse_stdin(req) else {
                return false;
            };
            let cid = req.env.get("CNI_CONTAINERID").cloned().unwrap_or_default();
            if crate::cni::env::check_container_id(&cid).is_err() {
                return false;
            }
            !cache::path(&conf.cni_dir, &cid).exists()
                && ResultCache::of_container(&conf.cni_dir, &cid).is_empty()
        }
        _ => false,
    }
}

/// Reads the configuration on stdin: invalid JSON is error 6.
pub fn parse_stdin(req: &Request) -> Result<(Value, MultusConf), CniError> {
    let conf = MultusConf::parse(&req.stdin)?;
    let v = conf.raw.clone();
    version::layout(&conf.cni_version)?;
    Ok((v, conf))
}

fn runner(conf: &MultusConf, env: &CniEnv, req: &Request) -> Runner {
    let mut search = conf.bin_dir.clone();
    search.extend(env.path.iter().cloned());
    Runner {
        exec: Exec {
            search,
            timeout: DELEGATE_TIMEOUT,
        },
        cni_dir: conf.cni_dir.clone(),
        retry_delete_on_error: conf.retry_delete_on_error,
        // Only when this very process was started with it (thin mode): a request forwarded
        // to the daemon must never be able to stop it.
        abort_after: req
            .env
            .get(TEST_ABORT_ENV)
            .filter(|v| std::env::var(TEST_ABORT_ENV).ok().as_ref() == Some(*v))
            .cloned(),
    }
}

fn pod_ref(env: &CniEnv) -> Option<(String, String)> {
    let ns = env.arg("K8S_POD_NAMESPACE")?;
    let name = env.arg("K8S_POD_NAME")?;
    (!ns.is_empty() && !name.is_empty()).then(|| (ns.to_string(), name.to_string()))
}

/// The pod of the call, checked against `K8S_POD_UID` (static pods excepted).
fn find_pod(snapshot: &Snapshot, env: &CniEnv) -> Result<Option<Pod>, CniError> {
    let Some((ns, name)) = pod_ref(env) else {
        return Ok(None);
    };
    let Some(pod) = snapshot.pods.get(&ObjectKey {
        namespace: Some(ns.clone()),
        name: name.clone(),
    }) else {
        // Fail closed: without the pod we cannot know which networks it asks for.
        return Err(CniError::new(
            CniError::TRY_AGAIN_LATER,
            format!("pod {ns}/{name} (CNI_ARGS K8S_POD_NAMESPACE, K8S_POD_NAME) not found"),
        ));
    };
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let static_pod = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("kubernetes.io/config.source"))
        .is_some_and(|s| s != "api");
    if let Some(want) = env.arg("K8S_POD_UID")
        && !want.is_empty()
        && !static_pod
        && want != uid
    {
        return Err(CniError::new(
            CniError::TRY_AGAIN_LATER,
            format!(
                "pod {ns}/{name}: metadata.uid is {uid:?}, CNI_ARGS K8S_POD_UID is {want:?} (the pod was recreated)"
            ),
        ));
    }
    Ok(Some((**pod).clone()))
}

/// The delegate list of the call (Multus's planner).
fn make_plan(
    conf: &MultusConf,
    pod: Option<&Pod>,
    att: &Attachment,
    nads: &dyn Nads,
) -> Result<Vec<Delegate>, crate::multus::plan::PlanError> {
    crate::multus::plan::plan(conf, pod, att, nads)
}

fn attachment(env: &CniEnv) -> Attachment {
    Attachment {
        container_id: env.container_id.clone(),
        ifname: env.ifname.clone(),
        cni_args: env.args.clone(),
    }
}

fn ready(conf: &MultusConf, code: u32) -> Result<(), CniError> {
    if let Some(f) = &conf.readiness_indicator_file
        && !f.exists()
    {
        return Err(CniError::new(
            code,
            format!(
                "readinessindicatorfile {} does not exist yet: the cluster network is not ready",
                f.display()
            ),
        ));
    }
    Ok(())
}

/// Runs one CNI call of the meta-plugin and returns what it prints on success (the result
/// in the configuration's `cniVersion`, or nothing for DEL/GC/STATUS).
pub async fn handle(ctx: &Context, req: Request) -> Result<Option<Value>, CniError> {
    let env = CniEnv::from_env(&req.env)?;
    let command = env.command.unwrap_or(Command::Version);
    if command == Command::Version {
        let v = serde_json::from_slice::<Value>(&req.stdin).ok();
        let ver = v
            .as_ref()
            .and_then(|v| v.get("cniVersion"))
            .and_then(Value::as_str)
            .unwrap_or_default();
        return Ok(Some(version::version_answer(ver)));
    }
    let (raw, conf) = parse_stdin(&req)?;
    let run = runner(&conf, &env, &req);
    match command {
        Command::Add => add(ctx, &conf, &env, &run).await.map(Some),
        Command::Del => del(ctx, &conf, &env, &run).await.map(|()| None),
        Command::Check => check(&conf, &env, &run).await.map(|()| None),
        Command::Gc => gc(&conf, &env, &run, &raw).await.map(|()| None),
        Command::Status => status(&conf, &env, &run).await.map(|()| None),
        Command::Version => unreachable!("answered above"),
    }
}

async fn add(
    ctx: &Context,
    conf: &MultusConf,
    env: &CniEnv,
    run: &Runner,
) -> Result<Value, CniError> {
    ready(conf, CniError::TRY_AGAIN_LATER)?;
    let att = attachment(env);
    let snapshot = ctx.state.as_ref().map(|s| s.snapshot());
    let pod = match &snapshot {
        Some(s) => find_pod(s, env)?,
        None => None,
    };
    let delegates = match &snapshot {
        Some(s) => make_plan(conf, pod.as_ref(), &att, &SnapshotNads(s)),
        None => make_plan(conf, None, &att, &NoNads),
    };
    let delegates = match delegates {
        Ok(d) => d,
        Err(e) => {
            if let (Some(state), Some(pod)) = (&ctx.state, &pod)
                && e.is_no_network_found()
            {
                event(
                    ctx,
                    state,
                    pod,
                    EventType::Warning,
                    "NoNetworkFound",
                    &e.to_string(),
                )
                .await;
            }
            return Err(e.into());
        }
    };
    let mut added = run.add(&env.container_id, &env.netns, &delegates).await?;
    if let Err(e) = finish_add(ctx, env, run, pod.as_ref(), &mut added).await {
        run.rollback(&env.container_id, &env.netns, &added, None)
            .await;
        return Err(e);
    }
    let (master, result) = added
        .iter()
        .find(|(d, _)| d.master)
        .or(added.first())
        .ok_or_else(|| CniError::new(CniError::INVALID_CONFIG, "no delegate to run"))?;
    CniResult::convert(
        result,
        crate::cni::exec::network_version(&master.conf),
        &conf.cni_version,
    )
}

/// After every delegate is added: `default-route`, network-status and Events.
async fn finish_add(
    ctx: &Context,
    env: &CniEnv,
    run: &Runner,
    pod: Option<&Pod>,
    added: &mut [Added],
) -> Result<(), CniError> {
    run.default_route(&env.container_id, &env.netns, added)
        .await?;
    let results: Vec<CniResult> = added
        .iter()
        .map(|(d, r)| CniResult::parse(r, crate::cni::exec::network_version(&d.conf)))
        .collect::<Result<_, _>>()?;
    let (Some(state), Some(pod)) = (&ctx.state, pod) else {
        return Ok(());
    };
    let entries: Vec<(Delegate, Value)> = added
        .iter()
        .zip(&results)
        .map(|((d, _), r)| Ok((d.clone(), r.to_version("1.0.0")?)))
        .collect::<Result<_, CniError>>()?;
    let status = crate::multus::status::network_status(&entries);
    let obj = pod_object(pod);
    let mut patch = MetadataPatch::default();
    patch
        .annotations
        .insert(NETWORK_STATUS.into(), Some(status));
    state.patch_metadata(&obj, &patch).await.map_err(|e| {
        CniError::new(
            CniError::TRY_AGAIN_LATER,
            format!(
                "cannot write {NETWORK_STATUS} on pod {}/{}: {e}",
                obj.namespace.as_deref().unwrap_or_default(),
                obj.name
            ),
        )
    })?;
    for ((d, _), r) in added.iter().zip(&results) {
        let ips: Vec<String> = r.ips.iter().map(|i| i.address.to_string()).collect();
        let msg = format!(
            "Add {} [{}] from {}",
            d.ifname,
            ips.join(","),
            d.status_name
        );
        event(ctx, state, pod, EventType::Normal, "AddedInterface", &msg).await;
    }
    Ok(())
}

fn pod_object(pod: &Pod) -> ObjectRef {
    ObjectRef::new(
        Kind::Pod,
        pod.metadata.namespace.as_deref(),
        pod.metadata.name.as_deref().unwrap_or_default(),
    )
}

/// Records an Event about `pod`: queued when the context has a queue, else at once.
async fn event(
    ctx: &Context,
    state: &metalnet::state::ClusterState,
    pod: &Pod,
    type_: EventType,
    reason: &str,
    message: &str,
) {
    let rec = EventRecord {
        type_,
        reason: reason.into(),
        message: message.into(),
        reporter: "multus".into(),
    };
    if let Some(q) = &ctx.events {
        q.push(pod_object(pod), rec);
        return;
    }
    if let Err(e) = state.record_event(&pod_object(pod), &rec).await {
        warn!(reason, error = %e, "cannot record the event");
    }
}

async fn del(ctx: &Context, conf: &MultusConf, env: &CniEnv, run: &Runner) -> Result<(), CniError> {
    if let Err(e) = ready(conf, CniError::TRY_AGAIN_LATER) {
        // DEL must work whatever the state of the cluster network.
        info!(error = %e, "DEL goes on");
    }
    if run.del_cached(&env.container_id, &env.netns).await? {
        return Ok(());
    }
    // Nothing cached: re-plan from the pod if it can be read, else nothing to do.
    let Some(state) = &ctx.state else {
        info!(container = %env.container_id, "DEL: nothing cached, nothing to do");
        return Ok(());
    };
    let snapshot = state.snapshot();
    let pod = match find_pod(&snapshot, env) {
        Ok(Some(p)) => p,
        _ => {
            info!(container = %env.container_id, "DEL: nothing cached and no pod, nothing to do");
            return Ok(());
        }
    };
    // Best effort: the delegate cache is written before any delegate runs and removed only
    // once they are all deleted (or rolled back), so with no cache at all this pod most
    // likely has nothing of ours attached (a refused or rolled-back ADD, which the runtime
    // follows with a DEL). The re-plan only frees what a lost cache directory would leak
    // (host-local's allocations survive a reboot); failing here would keep the runtime from
    // ever removing the pod.
    let ds = match make_plan(conf, Some(&pod), &attachment(env), &SnapshotNads(&snapshot)) {
        Ok(ds) => ds,
        Err(e) => {
            info!(container = %env.container_id, error = %e, "DEL: nothing cached and no plan for the pod, nothing to do");
            return Ok(());
        }
    };
    if let Err(e) = run.del_delegates(&env.container_id, &env.netns, &ds).await {
        info!(container = %env.container_id, error = %e, "DEL: nothing cached; DEL of the re-planned delegates failed, ignored");
    }
    Ok(())
}

async fn check(conf: &MultusConf, env: &CniEnv, run: &Runner) -> Result<(), CniError> {
    if !version::at_least(&conf.cni_version, "0.4.0") {
        return Err(CniError::new(
            CniError::INCOMPATIBLE_VERSION,
            format!(
                "CHECK needs cniVersion 0.4.0 or later, the configuration {:?} has {:?}",
                conf.name, conf.cni_version
            ),
        ));
    }
    // The configuration's own delegates, as the ADD cached them when it can be read.
    let ds = match cache::read(&run.cni_dir, &env.container_id) {
        Ok(Some(ds)) => ds.into_iter().filter(|d| d.nad.is_none()).collect(),
        _ => make_plan(conf, None, &attachment(env), &NoNads)?,
    };
    run.check(&env.container_id, &env.netns, &ds).await
}

/// The runtime's `cni.dev/valid-attachments`.
fn valid_attachments(raw: &Value) -> Result<Vec<(String, String)>, CniError> {
    let bad = |why: &str| {
        CniError::new(
            CniError::DECODE,
            format!("field cni.dev/valid-attachments {why}"),
        )
    };
    // Without the list every attachment would look stale: refuse rather than delete all.
    let Some(list) = raw.get("cni.dev/valid-attachments") else {
        return Err(bad(
            "is missing (GC needs the runtime's list of valid attachments)",
        ));
    };
    let list = list.as_array().ok_or_else(|| bad("is not a list"))?;
    list.iter()
        .enumerate()
        .map(|(i, a)| {
            let cid = a.get("containerID").and_then(Value::as_str);
            let ifname = a.get("ifname").and_then(Value::as_str);
            match (cid, ifname) {
                (Some(c), Some(i)) => Ok((c.to_string(), i.to_string())),
                _ => Err(bad(&format!("[{i}] needs containerID and ifname strings"))),
            }
        })
        .collect()
}

fn cluster_network(conf: &MultusConf, env: &CniEnv) -> Option<Delegate> {
    make_plan(conf, None, &attachment(env), &NoNads)
        .ok()
        .and_then(|ds| ds.into_iter().find(|d| d.master))
}

async fn gc(conf: &MultusConf, env: &CniEnv, run: &Runner, raw: &Value) -> Result<(), CniError> {
    ready(conf, CniError::TRY_AGAIN_LATER)?;
    let valid = valid_attachments(raw)?;
    let r = run.gc(&valid).await;
    if let Some(d) = cluster_network(conf, env)
        && version::at_least(crate::cni::exec::network_version(&d.conf), "1.1.0")
    {
        let list = raw
            .get("cni.dev/valid-attachments")
            .cloned()
            .unwrap_or(Value::Array(vec![]));
        run.exec.gc_network(&d.conf, &list).await?;
    }
    r
}

async fn status(conf: &MultusConf, env: &CniEnv, run: &Runner) -> Result<(), CniError> {
    ready(conf, CniError::PLUGIN_NOT_AVAILABLE)?;
    if let Some(d) = cluster_network(conf, env)
        && version::at_least(crate::cni::exec::network_version(&d.conf), "1.1.0")
    {
        run.exec.status_network(&d.conf).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn req(env: &[(&str, &str)], stdin: &[u8]) -> Request {
        Request {
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            stdin: stdin.to_vec(),
        }
    }

    #[test]
    fn error_version_is_the_configurations_when_it_can() {
        assert_eq!(
            error_version(&req(&[], br#"{"cniVersion":"0.3.1"}"#)),
            "0.3.1"
        );
        assert_eq!(
            error_version(&req(&[], br#"{"cniVersion":"7.0.0"}"#)),
            "1.1.0"
        );
        assert_eq!(error_version(&req(&[], b"{")), "1.1.0");
    }

    #[test]
    fn valid_attachments_are_read_strictly() {
        let v = json!({"cni.dev/valid-attachments": [{"containerID": "a", "ifname": "eth0"}]});
        assert_eq!(
            valid_attachments(&v).unwrap(),
            vec![("a".to_string(), "eth0".to_string())]
        );
        assert_eq!(
            valid_attachments(&json!({"cni.dev/valid-attachments": []})).unwrap(),
            vec![]
        );
        for bad in [
            json!({}),
            json!({"cni.dev/valid-attachments": {}}),
            json!({"cni.dev/valid-attachments": [{"containerID": "a"}]}),
        ] {
            let e = valid_attachments(&bad).unwrap_err();
            assert!(e.msg.contains("cni.dev/valid-attachments"), "{}", e.msg);
        }
    }

    #[test]
    fn del_needs_the_cluster_only_without_caches() {
        let dir = tempfile::tempdir().unwrap();
        let conf = serde_json::to_vec(
            &json!({"cniVersion": "1.0.0", "name": "m", "cniDir": dir.path(),
                   "delegates": [{"name": "a", "type": "bridge"}]}),
        )
        .unwrap();
        let del = req(&[("CNI_COMMAND", "DEL"), ("CNI_CONTAINERID", "c1")], &conf);
        assert!(needs_cluster(&del));
        std::fs::write(dir.path().join("c1"), b"[]").unwrap();
        assert!(!needs_cluster(&del));
        assert!(needs_cluster(&req(&[("CNI_COMMAND", "ADD")], &conf)));
        assert!(!needs_cluster(&req(&[("CNI_COMMAND", "CHECK")], &conf)));
        assert!(!needs_cluster(&req(
            &[("CNI_COMMAND", "DEL"), ("CNI_CONTAINERID", "../x")],
            &conf
        )));
    }

    #[tokio::test]
    async fn version_and_env_errors_need_no_configuration() {
        let ctx = Context::new(None);
        let out = handle(&ctx, req(&[("CNI_COMMAND", "VERSION")], b""))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(out["cniVersion"], "1.1.0");
        let e = handle(&ctx, req(&[("CNI_COMMAND", "ADD")], b"{}"))
            .await
            .unwrap_err();
        assert_eq!(e.code, 4);
        let e = handle(
            &ctx,
            req(
                &[("CNI_COMMAND", "STATUS"), ("CNI_PATH", "/opt/cni/bin")],
                br#"{"cniVersion":"1.1.0","delegates":7}"#,
            ),
        )
        .await
        .unwrap_err();
        assert_eq!(e.code, 7);
        assert!(e.msg.contains("delegates"), "{}", e.msg);
    }

    #[tokio::test]
    async fn queued_events_are_counted_until_recorded_and_a_full_queue_drops_them() {
        let pending = Arc::new(AtomicUsize::new(0));
        let (q, rx) = EventQueue::new(pending.clone());
        let rec = EventRecord {
            type_: EventType::Normal,
            reason: "AddedInterface".into(),
            message: "Add eth0 [] from net".into(),
            reporter: "multus".into(),
        };
        for _ in 0..EventQueue::CAPACITY + 5 {
            q.push(ObjectRef::new(Kind::Pod, Some("ns"), "p"), rec.clone());
        }
        // What did not fit was dropped, not counted: a shutdown never waits for it.
        assert_eq!(pending.load(Ordering::SeqCst), EventQueue::CAPACITY);
        let task = tokio::spawn(record_queued(Arc::new(Context::new(None)), rx));
        drop(q);
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(pending.load(Ordering::SeqCst), 0);
    }
}
