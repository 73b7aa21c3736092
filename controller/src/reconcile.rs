//! The reconciler: a snapshot of the cluster and the allocator in, the writes that make every
//! Service's status and annotation match its allocation out ([`Action`]s), with no I/O.
//!
//! # What it does (as MetalLB's controller, `controller/service.go`)
//! - **Ours**: Services of `type: LoadBalancer` without `spec.loadBalancerClass` (or, with
//!   `--lb-class NAME`, exactly those of class NAME, as MetalLB's flag). Others are never
//!   written to.
//! - **Adoption before allocation**: in every batch (the first pass, and Services that come
//!   back together: a file readable again, a directory copied back) every address already in
//!   the status of a Service that holds nothing here is adopted when still valid, and only
//!   then is anything assigned, so one conflict cannot renumber the Services after it.
//!   Two claims on one address (a state directory removes a deleted Service's status only
//!   once it has stayed gone for a second, so a Service of that name created again within
//!   it returns with the old status): a status written for another `metadata.uid` is not
//!   adopted; else the later allocation (`metalnet.io/ip-allocated-at`, written with every
//!   new address) wins, as it is the current holder; then most addresses first.
//!   The controller does not delete a deleted Service's status itself (the backend owns
//!   that file): a stale status can only bring back an address nobody holds.
//! - **Each Service**: its request is built ([`ServiceRequest::from_service`]) and assigned;
//!   the status and the `metallb.io/ip-allocated-from-pool` annotation are written when they
//!   differ from what it holds. Events: `IPAllocated` (new addresses), `ClearAssignment`
//!   (addresses taken away, and why), `AllocationFailed` (why not; repeated only when the
//!   reason changes).
//! - **Not a LoadBalancer any more, or deleted**: its addresses are freed; the status and the
//!   annotation are cleared (a Service of another class is left alone).
//! - **Pool or namespace changes** re-evaluate every Service (namespace: those in it); a
//!   Service change re-evaluates only that Service, plus the Services still waiting for an
//!   address when the change freed one (MetalLB reprocesses all Services then).
//!
//! # Order within a batch (deterministic; MetalLB's is the informer's)
//! Releases first, then Services that request addresses, then those that request a pool,
//! then the rest, each group by namespace/name. So on a fresh start, an automatic assignment
//! never takes an address another Service asks for by name.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;

use k8s_openapi::jiff::Timestamp;
use metalnet::state::{EventRecord, EventType, Kind, ObjectKey, ObjectRef, Snapshot};
use metalnet::validate::Severity;

use crate::allocator::{
    ANNOTATION_IP_ALLOCATED_FROM_POOL, ANNOTATION_LOAD_BALANCER_IPS, AllocError, Allocator, Claim,
    DEPRECATED_ANNOTATION_IP_ALLOCATED_FROM_POOL, DEPRECATED_ANNOTATION_LOAD_BALANCER_IPS, Outcome,
    Pool, ServiceKey, ServiceRequest,
};
use crate::pools::PoolConfig;

/// The `reportingComponent` of our Events.
pub const REPORTER: &str = "metalnet-controller";

/// When the addresses in a Service's status were allocated (RFC 3339, written with them).
/// After a restart, two Services may claim one address in their status: a deleted Service's
/// status outlives it in a state directory for a second, and comes back with a Service of
/// that name created again within it. The later allocation is the current holder and wins.
pub const ANNOTATION_IP_ALLOCATED_AT: &str = "metalnet.io/ip-allocated-at";

/// The `metadata.uid` of the Service the addresses were allocated for, when it had one: a
/// status written for another uid belongs to an earlier Service of that name and is not
/// adopted.
pub const ANNOTATION_IP_ALLOCATED_FOR_UID: &str = "metalnet.io/ip-allocated-for-uid";

/// Kubernetes labels every Namespace with its own name; state directories rarely spell it.
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// What the controller serves and reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    /// Serve only Services of this `spec.loadBalancerClass` (else only those without one).
    pub lb_class: Option<String>,
    /// Read IPAddressPools only from this namespace (else from every namespace).
    pub config_namespace: Option<String>,
}

/// One write the reconciler wants.
#[derive(Debug, Clone)]
pub enum Action {
    /// Set `status.loadBalancer.ingress` to these addresses; none clears it.
    SetIngress {
        service: ObjectRef,
        ips: Vec<IpAddr>,
    },
    /// Set (`Some`) or remove the `metallb.io/ip-allocated-from-pool` annotation; the
    /// deprecated `metallb.universe.tf/` one is removed either way.
    SetPoolAnnotation {
        service: ObjectRef,
        pool: Option<String>,
        drop_deprecated: bool,
        /// Other annotations about the allocation to set (`Some`) or remove (`None`):
        /// [`ANNOTATION_IP_ALLOCATED_AT`] and [`ANNOTATION_IP_ALLOCATED_FOR_UID`].
        extra: BTreeMap<String, Option<String>>,
    },
    Event {
        object: ObjectRef,
        event: EventRecord,
    },
}

/// Why a Service is or is not served by this controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    Ours,
    NotLoadBalancer { type_: String },
    OtherClass { class: Option<String> },
}

/// The reconciler's state: the allocator, the pools in effect, what was reported.
#[derive(Debug, Clone)]
pub struct Reconciler {
    opts: Options,
    alloc: Allocator,
    pools: PoolConfig,
    /// The pools last given to the allocator.
    applied: Option<Vec<Pool>>,
    started: bool,
    /// The last failure reported per Service, so a repeat is not reported again.
    failures: BTreeMap<ServiceKey, String>,
    /// Why an address in status could not be adopted at start (reported when it is replaced).
    adopt_errors: BTreeMap<ServiceKey, String>,
    /// Pool problems already reported, per pool object.
    reported: BTreeMap<ObjectRef, BTreeSet<String>>,
    /// The wall clock, for [`ANNOTATION_IP_ALLOCATED_AT`].
    clock: fn() -> Timestamp,
    /// The latest allocation time written or seen (nanoseconds since the epoch): times
    /// written are strictly increasing even when the clock stalls or steps back a little.
    last_stamp: i128,
    /// Services that took their addresses back mid-run: their allocation time is renewed.
    restamp: BTreeSet<ServiceKey>,
}

/// What to do with the allocation-time annotations when writing a Service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stamp {
    /// Addresses unchanged: leave them.
    Keep,
    /// New addresses: record now (and the uid).
    New,
    /// No addresses: remove them.
    Clear,
}

fn event(type_: EventType, reason: &str, message: String) -> EventRecord {
    EventRecord {
        type_,
        reason: reason.into(),
        message,
        reporter: REPORTER.into(),
    }
}

fn service_ref(key: &ServiceKey) -> ObjectRef {
    ObjectRef::new(Kind::Service, Some(&key.namespace), &key.name)
}

fn object_key(key: &ServiceKey) -> ObjectKey {
    ObjectKey {
        namespace: Some(key.namespace.clone()),
        name: key.name.clone(),
    }
}

fn ips_text(ips: &[IpAddr]) -> String {
    ips.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// The addresses in a Service's `status.loadBalancer.ingress` (`None` for an entry without a
/// parsable `ip`).
pub fn ingress_ips(svc: &k8s_openapi::api::core::v1::Service) -> Vec<Option<IpAddr>> {
    svc.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .map(|ingress| {
            ingress
                .iter()
                .map(|i| {
                    i.ip.as_deref()
                        .and_then(|ip| ip.trim().parse::<IpAddr>().ok())
                        .map(|ip| ip.to_canonical())
                })
                .collect()
        })
        .unwrap_or_default()
}

fn annotation<'a>(svc: &'a k8s_openapi::api::core::v1::Service, name: &str) -> Option<&'a str> {
    svc.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(name))
        .map(String::as_str)
}

/// Labels of namespace `ns`, with `kubernetes.io/metadata.name` as the API server sets it.
pub fn namespace_labels(snapshot: &Snapshot, ns: &str) -> BTreeMap<String, String> {
    let mut labels = snapshot
        .namespaces
        .get(&ObjectKey {
            namespace: None,
            name: ns.to_string(),
        })
        .and_then(|n| n.metadata.labels.clone())
        .unwrap_or_default();
    labels
        .entry(NAMESPACE_NAME_LABEL.into())
        .or_insert_with(|| ns.to_string());
    labels
}

/// The order of assignment within a batch (see the module documentation).
fn rank(req: &Result<ServiceRequest, AllocError>) -> u8 {
    match req {
        Ok(r) if !r.requested_ips.is_empty() => 0,
        Ok(r) if r.requested_pool.is_some() => 1,
        Ok(_) => 2,
        Err(_) => 3,
    }
}

impl Reconciler {
    pub fn new(opts: Options) -> Self {
        Reconciler {
            opts,
            alloc: Allocator::new(),
            pools: PoolConfig::default(),
            applied: None,
            started: false,
            failures: BTreeMap::new(),
            adopt_errors: BTreeMap::new(),
            reported: BTreeMap::new(),
            clock: Timestamp::now,
            last_stamp: 0,
            restamp: BTreeSet::new(),
        }
    }

    /// The same reconciler with another clock (tests).
    pub fn with_clock(mut self, clock: fn() -> Timestamp) -> Self {
        self.clock = clock;
        self
    }

    /// The allocation time to record now.
    fn next_stamp(&mut self) -> String {
        let now = (self.clock)().as_nanosecond();
        self.last_stamp = now.max(self.last_stamp.saturating_add(1));
        Timestamp::from_nanosecond(self.last_stamp)
            .unwrap_or(Timestamp::MAX)
            .to_string()
    }

    pub fn options(&self) -> &Options {
        &self.opts
    }

    pub fn allocator(&self) -> &Allocator {
        &self.alloc
    }

    pub fn pool_config(&self) -> &PoolConfig {
        &self.pools
    }

    /// Whether the first (adopting) pass has run.
    pub fn started(&self) -> bool {
        self.started
    }

    /// The last allocation failure of a Service that holds nothing because of it.
    pub fn failure(&self, key: &ServiceKey) -> Option<&str> {
        self.failures.get(key).map(String::as_str)
    }

    /// Whether this controller serves `svc`.
    pub fn scope(&self, svc: &k8s_openapi::api::core::v1::Service) -> Scope {
        let spec = svc.spec.as_ref();
        let type_ = spec.and_then(|s| s.type_.as_deref()).unwrap_or("ClusterIP");
        if type_ != "LoadBalancer" {
            return Scope::NotLoadBalancer {
                type_: type_.to_string(),
            };
        }
        let class = spec.and_then(|s| s.load_balancer_class.clone());
        if class == self.opts.lb_class {
            Scope::Ours
        } else {
            Scope::OtherClass { class }
        }
    }

    /// Reconciles `snapshot`: everything on the first call or when `changed` is `None`, else
    /// what `changed` affects. Returns the writes to make.
    pub fn reconcile(
        &mut self,
        snapshot: &Snapshot,
        changed: Option<&BTreeSet<ObjectRef>>,
    ) -> Vec<Action> {
        let mut out = Vec::new();
        let changed = changed.filter(|_| self.started);
        let pools_changed = match changed {
            None => true,
            Some(c) => c.iter().any(|o| o.kind == Kind::IPAddressPool),
        };
        let mut everything = changed.is_none();
        if pools_changed && self.refresh_pools(snapshot, &mut out) {
            everything = true;
        }
        let first = !self.started;
        self.started = true;
        let keys: BTreeSet<ServiceKey> = match changed {
            Some(changed) if !everything => self.affected(snapshot, changed),
            _ => snapshot
                .services
                .keys()
                .map(|k| ServiceKey::new(k.namespace.clone().unwrap_or_default(), &k.name))
                .chain(self.alloc.assignments().map(|(k, _, _)| k.clone()))
                .chain(self.alloc.pending())
                .collect(),
        };
        self.process(snapshot, keys, first, &mut out);
        out
    }

    /// Services a change affects: the changed Services, and those in changed Namespaces.
    fn affected(&self, snapshot: &Snapshot, changed: &BTreeSet<ObjectRef>) -> BTreeSet<ServiceKey> {
        let mut keys = BTreeSet::new();
        for o in changed {
            match o.kind {
                Kind::Service => {
                    keys.insert(ServiceKey::new(
                        o.namespace.clone().unwrap_or_default(),
                        &o.name,
                    ));
                }
                Kind::Namespace => {
                    let from = ObjectKey {
                        namespace: Some(o.name.clone()),
                        name: String::new(),
                    };
                    keys.extend(
                        snapshot
                            .services
                            .range(from..)
                            .take_while(|(k, _)| k.namespace.as_deref() == Some(&o.name))
                            .map(|(k, _)| ServiceKey::new(&o.name, &k.name)),
                    );
                }
                _ => {}
            }
        }
        keys
    }

    /// Re-reads the pools; reports new problems; gives the allocator the pools when they
    /// changed and reports the Services that lost their addresses. Whether they changed.
    fn refresh_pools(&mut self, snapshot: &Snapshot, out: &mut Vec<Action>) -> bool {
        let in_use = self.pools_in_use(snapshot);
        self.pools
            .update(snapshot, self.opts.config_namespace.as_deref(), &in_use);
        let mut now: BTreeMap<ObjectRef, BTreeSet<String>> = BTreeMap::new();
        for p in self.pools.problems() {
            let consequence = match p.severity {
                Severity::Warning => "",
                Severity::Error if self.pools.kept_overlapping().contains(&p.object) => {
                    "; Services hold addresses from this pool, so it stays in use and they \
                     keep them (each address is given out once)"
                }
                Severity::Error if self.pools.stale().contains(&p.object) => {
                    "; the last valid version of the pool stays in use"
                }
                Severity::Error => "; the pool is ignored",
            };
            let field = if p.field.is_empty() {
                String::new()
            } else {
                format!("{}: ", p.field)
            };
            let message = format!("{field}{}{consequence}", p.reason);
            let fresh = !self
                .reported
                .get(&p.object)
                .is_some_and(|m| m.contains(&message));
            if fresh {
                tracing::warn!(pool = %p.object, field = %p.field, reason = %p.reason, "{message}");
                let reason = match p.severity {
                    Severity::Error => "InvalidConfiguration",
                    Severity::Warning => "ConfigurationWarning",
                };
                out.push(Action::Event {
                    object: p.object.clone(),
                    event: event(EventType::Warning, reason, message.clone()),
                });
            }
            now.entry(p.object.clone()).or_default().insert(message);
        }
        self.reported = now;

        let pools = self.pools.pools();
        if self.applied.as_ref() == Some(&pools) {
            return false;
        }
        tracing::info!(
            pools = pools.len(),
            stale = self.pools.stale().len(),
            "address pools changed"
        );
        let lost = self.alloc.set_pools(pools.clone());
        self.applied = Some(pools);
        for (key, err) in lost {
            tracing::warn!(service = %key, reason = %err, "address taken away");
            out.push(Action::Event {
                object: service_ref(&key),
                event: event(
                    EventType::Warning,
                    "ClearAssignment",
                    format!(
                        "current IP for {:?} not allowed by config, will attempt for new IP \
                         assignment: {err} (the pool changed or was removed)",
                        key.to_string()
                    ),
                ),
            });
        }
        true
    }

    /// Pools Services hold addresses from: here, or (before the first pass) as their
    /// status and `metallb.io/ip-allocated-from-pool` annotation say.
    fn pools_in_use(&self, snapshot: &Snapshot) -> BTreeSet<String> {
        let mut in_use: BTreeSet<String> = self
            .alloc
            .assignments()
            .map(|(_, _, pool)| pool.to_string())
            .collect();
        if !self.started {
            for svc in snapshot.services.values() {
                if self.scope(svc) == Scope::Ours
                    && ingress_ips(svc).iter().any(Option::is_some)
                    && let Some(pool) = annotation(svc, ANNOTATION_IP_ALLOCATED_FROM_POOL)
                {
                    in_use.insert(pool.to_string());
                }
            }
        }
        in_use
    }

    /// The request of an ours-and-LoadBalancer Service.
    fn request(
        &self,
        snapshot: &Snapshot,
        svc: &k8s_openapi::api::core::v1::Service,
    ) -> Result<ServiceRequest, AllocError> {
        let ns = svc.metadata.namespace.as_deref().unwrap_or("default");
        ServiceRequest::from_service(svc, &namespace_labels(snapshot, ns))
    }

    /// Adopts the addresses in the status of `services` (served, holding nothing here) when
    /// still valid, all before anything is allocated: at start, and whenever Services come
    /// back together (a file readable again, a directory copied back), so one conflict cannot
    /// renumber the Services after it. Two claims on one address: the later allocation wins.
    fn adopt(
        &mut self,
        snapshot: &Snapshot,
        services: &[&k8s_openapi::api::core::v1::Service],
    ) -> Vec<ServiceKey> {
        let mut claims = Vec::new();
        for svc in services {
            let ips: Vec<IpAddr> = ingress_ips(svc).into_iter().flatten().collect();
            if ips.is_empty() {
                continue;
            }
            let key = ServiceKey::new(
                svc.metadata.namespace.clone().unwrap_or("default".into()),
                svc.metadata.name.clone().unwrap_or_default(),
            );
            if let (Some(uid), Some(written_for)) = (
                svc.metadata.uid.as_deref(),
                annotation(svc, ANNOTATION_IP_ALLOCATED_FOR_UID),
            ) && uid != written_for
            {
                self.adopt_errors.insert(
                    key,
                    format!(
                        "the status was written for an earlier Service of this name (uid \
                         {written_for:?}; this one is {uid:?})"
                    ),
                );
                continue;
            }
            let allocated_at = annotation(svc, ANNOTATION_IP_ALLOCATED_AT)
                .and_then(|t| t.parse::<Timestamp>().ok())
                .map(|t| t.as_nanosecond());
            if let Some(t) = allocated_at {
                self.last_stamp = self.last_stamp.max(t);
            }
            // A malformed address request does not cost the Service what it holds (as
            // MetalLB): adopt with the request's other fields.
            let req = self.request(snapshot, svc).or_else(|_| {
                let mut relaxed = (*svc).clone();
                if let Some(a) = relaxed.metadata.annotations.as_mut() {
                    a.remove(ANNOTATION_LOAD_BALANCER_IPS);
                    a.remove(DEPRECATED_ANNOTATION_LOAD_BALANCER_IPS);
                }
                if let Some(s) = relaxed.spec.as_mut() {
                    s.load_balancer_ip = None;
                }
                self.request(snapshot, &relaxed)
            });
            match req {
                Ok(req) => claims.push(Claim {
                    req,
                    ips,
                    pool: annotation(svc, ANNOTATION_IP_ALLOCATED_FROM_POOL).map(String::from),
                    allocated_at,
                }),
                Err(e) => {
                    self.adopt_errors.insert(key, e.to_string());
                }
            }
        }
        if claims.is_empty() {
            return Vec::new();
        }
        let adopted = claims.len();
        let mut failed = 0;
        let mut taken = Vec::new();
        for (key, result) in self.alloc.adopt_claims(claims) {
            match result {
                Ok(a) => {
                    tracing::debug!(service = %key, ip = %ips_text(&a.ips), pool = %a.pool, "adopted");
                    taken.push(key);
                }
                Err(e) => {
                    failed += 1;
                    tracing::info!(service = %key, reason = %e, "address in status not adopted");
                    self.adopt_errors.insert(key, e.to_string());
                }
            }
        }
        tracing::info!(
            services = adopted - failed,
            rejected = failed,
            "adopted the addresses already in Service status"
        );
        taken
    }

    /// Reconciles the Services `keys` (present, changed or gone) in batch order.
    fn process(
        &mut self,
        snapshot: &Snapshot,
        keys: BTreeSet<ServiceKey>,
        first: bool,
        out: &mut Vec<Action>,
    ) {
        let mut freed = false;
        let mut assign = Vec::new();
        for key in &keys {
            let obj = service_ref(key);
            if snapshot.invalid.contains_key(&obj) {
                // Unreadable now: keep what it holds until it is readable again.
                continue;
            }
            let Some(svc) = snapshot.services.get(&object_key(key)) else {
                self.failures.remove(key);
                if let Some((ips, pool)) = self.alloc.release(key) {
                    tracing::info!(service = %key, ip = %ips_text(&ips), %pool, "service deleted; address freed");
                    freed = true;
                }
                continue;
            };
            match self.scope(svc) {
                Scope::Ours => {
                    let req = self.request(snapshot, svc);
                    assign.push((rank(&req), key.clone(), req, svc.clone()));
                }
                Scope::NotLoadBalancer { type_ } => {
                    self.failures.remove(key);
                    let held = self.alloc.release(key);
                    if let Some((ips, pool)) = &held {
                        tracing::info!(service = %key, ip = %ips_text(ips), %pool, %type_, "not a LoadBalancer any more; address freed");
                        freed = true;
                    }
                    // Clear what a LoadBalancer left behind, as MetalLB does; with --lb-class
                    // only what is visibly ours.
                    let ours = held.is_some()
                        || annotation(svc, ANNOTATION_IP_ALLOCATED_FROM_POOL).is_some()
                        || self.opts.lb_class.is_none();
                    if ours {
                        self.write(svc, None, Stamp::Clear, out);
                    }
                }
                Scope::OtherClass { .. } => {
                    // Never touched; forget it if we knew it (its class cannot change while
                    // it is a LoadBalancer, so this is a Service replaced under the same name).
                    self.failures.remove(key);
                    freed |= self.alloc.release(key).is_some();
                }
            }
        }
        let returning: Vec<&k8s_openapi::api::core::v1::Service> = assign
            .iter()
            .filter(|(_, key, _, _)| self.alloc.held(key).is_none())
            .map(|(_, _, _, svc)| svc.as_ref())
            .collect();
        let adopted = self.adopt(snapshot, &returning);
        if !first {
            // Back while this controller watched (a file readable again, a directory copied
            // back): its address is its own again from now on, so it is the current holder
            // should a stale claim on the same address turn up after a restart.
            self.restamp.extend(adopted);
        }
        assign.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        for (_, _, req, svc) in &assign {
            freed |= self.assign(svc, req, out);
        }
        if freed {
            // Services waiting for an address may fit now.
            let waiting: Vec<ServiceKey> = self.failures.keys().cloned().collect();
            for key in waiting {
                if keys.contains(&key) {
                    continue;
                }
                if let Some(svc) = snapshot.services.get(&object_key(&key)).cloned()
                    && self.scope(&svc) == Scope::Ours
                {
                    let req = self.request(snapshot, &svc);
                    self.assign(&svc, &req, out);
                }
            }
        }
    }

    /// Assigns one served Service and queues its writes and events. Whether it gave up an
    /// address it held.
    fn assign(
        &mut self,
        svc: &k8s_openapi::api::core::v1::Service,
        req: &Result<ServiceRequest, AllocError>,
        out: &mut Vec<Action>,
    ) -> bool {
        let key = ServiceKey::new(
            svc.metadata.namespace.clone().unwrap_or("default".into()),
            svc.metadata.name.clone().unwrap_or_default(),
        );
        let obj = service_ref(&key);
        let before: Option<Vec<IpAddr>> = self.alloc.held(&key).map(|(ips, _)| ips.to_vec());
        let result = match req {
            Ok(req) => self.alloc.assign(req),
            Err(e) => Err(e.clone()),
        };
        match result {
            Ok(a) => {
                self.failures.remove(&key);
                let adopt_error = self.adopt_errors.remove(&key);
                match &a.outcome {
                    Outcome::Unchanged => {}
                    Outcome::Allocated | Outcome::Reallocated { .. } => {
                        let cleared = match (&a.outcome, adopt_error) {
                            (Outcome::Reallocated { previous, reason }, _) => {
                                Some(format!("{} ({reason})", ips_text(previous)))
                            }
                            (_, Some(reason)) => Some(reason),
                            _ => None,
                        };
                        if let Some(why) = cleared {
                            out.push(Action::Event {
                                object: obj.clone(),
                                event: event(
                                    EventType::Normal,
                                    "ClearAssignment",
                                    format!(
                                        "current IP for {:?} not allowed by config, will attempt \
                                         for new IP assignment: {why}",
                                        key.to_string()
                                    ),
                                ),
                            });
                        }
                        tracing::info!(service = %key, ip = %ips_text(&a.ips), pool = %a.pool, "IP address assigned");
                        out.push(Action::Event {
                            object: obj.clone(),
                            event: event(
                                EventType::Normal,
                                "IPAllocated",
                                format!("Assigned IP {:?} from pool {:?}", a.ips, a.pool),
                            ),
                        });
                    }
                    Outcome::AddedFamily => {
                        tracing::info!(service = %key, ip = %ips_text(&a.ips), pool = %a.pool, "additional IP address assigned");
                        out.push(Action::Event {
                            object: obj.clone(),
                            event: event(
                                EventType::Normal,
                                "IPAllocated",
                                format!(
                                    "Assigned additional IP {:?} from pool {:?}",
                                    a.ips.last(),
                                    a.pool
                                ),
                            ),
                        });
                    }
                }
            }
            Err(e) => {
                self.adopt_errors.remove(&key);
                let message = format!("Failed to allocate IP for {:?}: {e}", key.to_string());
                if self.failures.get(&key) != Some(&message) {
                    tracing::warn!(service = %key, reason = %e, "IP allocation failed");
                    out.push(Action::Event {
                        object: obj.clone(),
                        event: event(EventType::Warning, "AllocationFailed", message.clone()),
                    });
                    self.failures.insert(key.clone(), message);
                }
            }
        }
        let held = self
            .alloc
            .held(&key)
            .map(|(ips, pool)| (ips.to_vec(), pool.to_string()));
        let after = held.as_ref().map(|(ips, _)| ips.clone());
        let restamp = self.restamp.remove(&key);
        let stamp = match &after {
            None => Stamp::Clear,
            Some(a) if before.as_ref() != Some(a) || restamp => Stamp::New,
            Some(_) => Stamp::Keep,
        };
        self.write(svc, held, stamp, out);
        before.is_some_and(|b| after.is_none_or(|a| b.iter().any(|ip| !a.contains(ip))))
    }

    /// Queues the writes that make `svc`'s status and annotation say `held`.
    fn write(
        &mut self,
        svc: &k8s_openapi::api::core::v1::Service,
        held: Option<(Vec<IpAddr>, String)>,
        stamp: Stamp,
        out: &mut Vec<Action>,
    ) {
        let service = ObjectRef::new(
            Kind::Service,
            svc.metadata.namespace.as_deref(),
            svc.metadata.name.as_deref().unwrap_or_default(),
        );
        let (ips, pool) = match held {
            Some((ips, pool)) => (ips, Some(pool)),
            None => (Vec::new(), None),
        };
        let current: Vec<Option<IpAddr>> = ingress_ips(svc);
        let wanted: Vec<Option<IpAddr>> = ips.iter().copied().map(Some).collect();
        if current != wanted {
            out.push(Action::SetIngress {
                service: service.clone(),
                ips,
            });
        }
        let current_pool = annotation(svc, ANNOTATION_IP_ALLOCATED_FROM_POOL);
        let deprecated = annotation(svc, DEPRECATED_ANNOTATION_IP_ALLOCATED_FROM_POOL).is_some();
        let mut extra = BTreeMap::new();
        let uid = svc.metadata.uid.clone();
        let recorded_uid = annotation(svc, ANNOTATION_IP_ALLOCATED_FOR_UID);
        match stamp {
            Stamp::Keep => {}
            Stamp::New => {
                extra.insert(ANNOTATION_IP_ALLOCATED_AT.into(), Some(self.next_stamp()));
                if uid.is_some() || recorded_uid.is_some() {
                    extra.insert(ANNOTATION_IP_ALLOCATED_FOR_UID.into(), uid);
                }
            }
            Stamp::Clear => {
                for a in [ANNOTATION_IP_ALLOCATED_AT, ANNOTATION_IP_ALLOCATED_FOR_UID] {
                    if annotation(svc, a).is_some() {
                        extra.insert(a.into(), None);
                    }
                }
            }
        }
        if current_pool != pool.as_deref() || deprecated || !extra.is_empty() {
            out.push(Action::SetPoolAnnotation {
                service,
                pool,
                drop_deprecated: deprecated,
                extra,
            });
        }
    }

    /// Why `key` has its addresses, or none, in words; `None` when there is no such Service.
    pub fn explain(&self, snapshot: &Snapshot, key: &ServiceKey) -> Option<String> {
        let svc = snapshot.services.get(&object_key(key))?;
        let mut s = String::new();
        let status: Vec<String> = ingress_ips(svc)
            .into_iter()
            .map(|ip| ip.map_or("(unparsable)".into(), |ip| ip.to_string()))
            .collect();
        let _ = writeln!(
            s,
            "Service {key}: status.loadBalancer.ingress [{}], annotation {}: {}",
            status.join(", "),
            ANNOTATION_IP_ALLOCATED_FROM_POOL,
            annotation(svc, ANNOTATION_IP_ALLOCATED_FROM_POOL).unwrap_or("(none)")
        );
        let serves = match &self.opts.lb_class {
            Some(c) => format!("Services of loadBalancerClass {c:?}"),
            None => "Services without a loadBalancerClass".to_string(),
        };
        match self.scope(svc) {
            Scope::NotLoadBalancer { type_ } => {
                let _ = writeln!(
                    s,
                    "not served: type {type_}, not LoadBalancer; it gets no address"
                );
                return Some(s);
            }
            Scope::OtherClass { class } => {
                let _ = writeln!(
                    s,
                    "not served: spec.loadBalancerClass is {}; this controller serves only {serves}",
                    class.map_or("unset".into(), |c| format!("{c:?}"))
                );
                return Some(s);
            }
            Scope::Ours => {}
        }
        let req = match self.request(snapshot, svc) {
            Ok(req) => req,
            Err(e) => {
                let _ = writeln!(s, "its request is invalid: {e}");
                if let Some((ips, pool)) = self.alloc.held(key) {
                    let _ = writeln!(
                        s,
                        "it keeps {} from pool {pool:?} until the request is fixed",
                        ips_text(ips)
                    );
                }
                return Some(s);
            }
        };
        let explanation = self.alloc.explain_request(&req);
        match &explanation.held {
            Some((ips, pool)) => {
                let _ = writeln!(s, "has {} from pool {pool:?}", ips_text(ips));
            }
            None => {
                let why = self
                    .failures
                    .get(key)
                    .cloned()
                    .unwrap_or_else(|| "it has not been reconciled yet".into());
                let _ = writeln!(s, "has no address: {why}");
            }
        }
        let _ = write!(s, "{explanation}");
        for p in self.pools.problems() {
            let _ = writeln!(s, "pool problem: {p}");
        }
        for o in self.pools.stale() {
            let _ = writeln!(
                s,
                "pool {o} is invalid now; its last valid version is in use"
            );
        }
        Some(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use metalnet::testing::{Manifest, pool, service};
    use serde_json::{Value, json};
    use std::sync::Arc;

    /// A snapshot of these pools and Services.
    fn snapshot(pools: Vec<Value>, services: Vec<Value>) -> Arc<Snapshot> {
        metalnet::testing::snapshot(pools.into_iter().chain(services))
    }

    /// A Service in `ns` with the address it was given from pool `pool`, as the controller
    /// writes it back.
    fn assigned(name: &str, ip: &str, pool: &str) -> Value {
        service(name)
            .namespace("ns")
            .ingress([ip])
            .annotation(ANNOTATION_IP_ALLOCATED_FROM_POOL, pool)
            .json()
    }

    fn ingress(actions: &[Action]) -> BTreeMap<String, Vec<String>> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::SetIngress { service, ips } => Some((
                    format!("{}/{}", service.namespace.as_deref().unwrap(), service.name),
                    ips.iter().map(ToString::to_string).collect(),
                )),
                _ => None,
            })
            .collect()
    }

    fn events(actions: &[Action]) -> Vec<(String, String)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Event { object, event } => {
                    Some((object.name.clone(), event.reason.clone()))
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn requested_addresses_go_first_and_others_fill_in() {
        let snap = snapshot(
            vec![pool("a", ["192.0.2.0/30"]).json()],
            vec![
                service("a-auto").namespace("ns").json(),
                service("b-wants-0")
                    .namespace("ns")
                    .annotation("metallb.io/loadBalancerIPs", "192.0.2.0")
                    .json(),
            ],
        );
        let mut r = Reconciler::new(Options::default());
        let actions = r.reconcile(&snap, None);
        let got = ingress(&actions);
        assert_eq!(got["ns/b-wants-0"], ["192.0.2.0"]);
        assert_eq!(got["ns/a-auto"], ["192.0.2.1"]);
        assert!(
            actions
                .iter()
                .any(|a| matches!(a, Action::SetPoolAnnotation { pool: Some(p), .. } if p == "a"))
        );
    }

    #[test]
    fn restart_adopts_and_writes_nothing() {
        let svc = assigned("web", "192.0.2.3", "a");
        let snap = snapshot(
            vec![pool("a", ["192.0.2.0/30"]).json()],
            vec![svc, service("another").namespace("ns").json()],
        );
        let mut r = Reconciler::new(Options::default());
        let actions = r.reconcile(&snap, None);
        let got = ingress(&actions);
        assert!(!got.contains_key("ns/web"), "{actions:?}");
        assert_eq!(got["ns/another"], ["192.0.2.0"]);
    }

    #[test]
    fn other_classes_are_untouched_and_lb_class_selects() {
        let classed = service("classed")
            .namespace("ns")
            .spec("loadBalancerClass", json!("example.com/other"))
            .json();
        let plain = service("plain").namespace("ns").json();
        let snap = snapshot(
            vec![pool("a", ["192.0.2.0/30"]).json()],
            vec![classed, plain],
        );
        let actions = Reconciler::new(Options::default()).reconcile(&snap, None);
        assert_eq!(ingress(&actions).keys().collect::<Vec<_>>(), ["ns/plain"]);
        let opts = Options {
            lb_class: Some("example.com/other".into()),
            ..Default::default()
        };
        let actions = Reconciler::new(opts).reconcile(&snap, None);
        assert_eq!(ingress(&actions).keys().collect::<Vec<_>>(), ["ns/classed"]);
    }

    #[test]
    fn a_pool_turning_invalid_keeps_its_last_valid_version() {
        let svc = service("web").namespace("ns").json();
        let good = snapshot(vec![pool("a", ["192.0.2.0/30"]).json()], vec![svc.clone()]);
        let mut r = Reconciler::new(Options::default());
        let actions = r.reconcile(&good, None);
        assert_eq!(ingress(&actions)["ns/web"], ["192.0.2.0"]);

        let bad = snapshot(vec![pool("a", ["192.0.2.0/33"]).json()], vec![svc]);
        let changed = BTreeSet::from([ObjectRef::new(
            Kind::IPAddressPool,
            Some("metallb-system"),
            "a",
        )]);
        let actions = r.reconcile(&bad, Some(&changed));
        assert!(ingress(&actions).is_empty(), "{actions:?}");
        assert_eq!(
            events(&actions),
            [("a".into(), "InvalidConfiguration".into())]
        );
        assert_eq!(r.pool_config().stale().len(), 1);
        assert!(r.allocator().held(&ServiceKey::new("ns", "web")).is_some());
        // The same problem again is not reported again.
        assert!(events(&r.reconcile(&bad, Some(&changed))).is_empty());
    }

    #[test]
    fn shrinking_a_pool_frees_only_what_left_it() {
        let a = service("a").namespace("ns").json();
        let b = service("b").namespace("ns").json();
        let snap1 = snapshot(vec![pool("p", ["192.0.2.0/30"]).json()], vec![a, b]);
        let mut r = Reconciler::new(Options::default());
        r.reconcile(&snap1, None);
        // Write back what the controller would have written.
        let with_status = |name: &str, ip: &str| assigned(name, ip, "p");
        let snap2 = snapshot(
            vec![pool("p", ["192.0.2.1/32"]).json()],
            vec![with_status("a", "192.0.2.0"), with_status("b", "192.0.2.1")],
        );
        let changed = BTreeSet::from([ObjectRef::new(
            Kind::IPAddressPool,
            Some("metallb-system"),
            "p",
        )]);
        let actions = r.reconcile(&snap2, Some(&changed));
        assert_eq!(
            ingress(&actions),
            BTreeMap::from([("ns/a".to_string(), vec![])])
        );
        let ev = events(&actions);
        assert!(
            ev.contains(&("a".into(), "ClearAssignment".into())),
            "{ev:?}"
        );
        assert!(
            ev.contains(&("a".into(), "AllocationFailed".into())),
            "{ev:?}"
        );
        assert!(!ev.iter().any(|(n, _)| n == "b"), "{ev:?}");
    }

    #[test]
    fn explain_names_the_pool_or_the_reason() {
        let snap = snapshot(
            vec![pool("p", ["192.0.2.0/32"]).json()],
            vec![
                service("a").namespace("ns").json(),
                service("b").namespace("ns").json(),
            ],
        );
        let mut r = Reconciler::new(Options::default());
        r.reconcile(&snap, None);
        let a = r.explain(&snap, &ServiceKey::new("ns", "a")).unwrap();
        assert!(a.contains("has 192.0.2.0 from pool \"p\""), "{a}");
        let b = r.explain(&snap, &ServiceKey::new("ns", "b")).unwrap();
        assert!(b.contains("has no address"), "{b}");
        assert!(b.contains("exhausted"), "{b}");
        assert!(r.explain(&snap, &ServiceKey::new("ns", "c")).is_none());
    }

    /// The Services as they are after the controller's writes.
    fn written(services: &[Value], actions: &[Action]) -> Vec<Value> {
        services
            .iter()
            .map(|svc| {
                let mut v = svc.clone();
                let name = svc["metadata"]["name"].as_str().unwrap();
                for a in actions {
                    match a {
                        Action::SetIngress { service, ips } if service.name == name => {
                            let ingress: Vec<_> =
                                ips.iter().map(|ip| json!({"ip": ip.to_string()})).collect();
                            let ingress = if ingress.is_empty() {
                                serde_json::Value::Null
                            } else {
                                json!(ingress)
                            };
                            metalnet::state::merge_patch(
                                &mut v,
                                &json!({"status": {"loadBalancer": {"ingress": ingress}}}),
                            );
                        }
                        Action::SetPoolAnnotation {
                            service,
                            pool,
                            extra,
                            ..
                        } if service.name == name => {
                            let mut annotations = extra.clone();
                            annotations
                                .insert(ANNOTATION_IP_ALLOCATED_FROM_POOL.into(), pool.clone());
                            metalnet::state::merge_patch(
                                &mut v,
                                &json!({"metadata": {"annotations": annotations}}),
                            );
                        }
                        _ => {}
                    }
                }
                v
            })
            .collect()
    }

    fn services_changed(names: &[&str]) -> BTreeSet<ObjectRef> {
        names
            .iter()
            .map(|n| ObjectRef::new(Kind::Service, Some("ns"), n))
            .collect()
    }

    #[test]
    fn services_coming_back_together_keep_their_addresses() {
        let p = || vec![pool("p", ["192.0.2.0/28"]).json()];
        let names: Vec<String> = (0..10).map(|i| format!("s{i}")).collect();
        let mut r = Reconciler::new(Options::default());
        let first = vec![service("a-new").namespace("ns").json()];
        let actions = r.reconcile(&snapshot(p(), first.clone()), None);
        assert_eq!(ingress(&actions)["ns/a-new"], ["192.0.2.0"]);
        let mut all = written(&first, &actions);
        // Ten Services come back at once (a file readable again), with the addresses
        // .0 to .9 in their status from before; .0 went to a-new meanwhile.
        for (i, n) in names.iter().enumerate() {
            all.push(assigned(n, &format!("192.0.2.{i}"), "p"));
        }
        let changed = services_changed(&names.iter().map(String::as_str).collect::<Vec<_>>());
        let actions = r.reconcile(&snapshot(p(), all), Some(&changed));
        let got = ingress(&actions);
        assert_eq!(
            got,
            BTreeMap::from([("ns/s0".to_string(), vec!["192.0.2.10".to_string()])]),
            "only the one whose address was taken moves"
        );
    }

    #[test]
    fn a_stale_status_does_not_take_an_address_from_its_holder() {
        let p = || vec![pool("p", ["192.0.2.0/30"]).json()];
        let a = service("a").namespace("ns").json();
        let mut r = Reconciler::new(Options::default());
        let actions = r.reconcile(&snapshot(p(), vec![a.clone()]), None);
        let a_written = written(&[a], &actions);
        assert_eq!(ingress(&actions)["ns/a"], ["192.0.2.0"]);

        // a is deleted (its status stays on disk); b arrives and gets the freed address.
        let b = service("b").namespace("ns").json();
        let actions = r.reconcile(
            &snapshot(p(), vec![b.clone()]),
            Some(&services_changed(&["a", "b"])),
        );
        assert_eq!(ingress(&actions)["ns/b"], ["192.0.2.0"]);
        let b_written = written(&[b], &actions);

        // Down; a is created again and comes back with its old status. b keeps its address.
        let mut all = a_written;
        all.extend(b_written);
        let mut r = Reconciler::new(Options::default());
        let actions = r.reconcile(&snapshot(p(), all), None);
        assert_eq!(
            ingress(&actions),
            BTreeMap::from([("ns/a".to_string(), vec!["192.0.2.1".to_string()])])
        );
    }

    #[test]
    fn a_status_written_for_another_uid_is_not_adopted() {
        fn late() -> Timestamp {
            "2030-01-01T00:00:00Z".parse().unwrap()
        }
        fn early() -> Timestamp {
            "2020-01-01T00:00:00Z".parse().unwrap()
        }
        let p = || vec![pool("p", ["192.0.2.0/30"]).json()];
        let a = service("a").namespace("ns").uid("uid-1").json();
        let mut r = Reconciler::new(Options::default()).with_clock(late);
        let actions = r.reconcile(&snapshot(p(), vec![a.clone()]), None);
        let a_written = written(&[a], &actions);

        // a deleted while the controller was down; the clock stepped back since; b gets
        // the address.
        let b = service("b").namespace("ns").uid("uid-2").json();
        let mut r = Reconciler::new(Options::default()).with_clock(early);
        let actions = r.reconcile(&snapshot(p(), vec![b.clone()]), None);
        assert_eq!(ingress(&actions)["ns/b"], ["192.0.2.0"]);
        let b_written = written(&[b], &actions);

        // a created again (a new uid) with the old status: its time is later, but it was
        // written for uid-1, so it is not a's any more.
        let mut a_again = a_written[0].clone();
        a_again["metadata"]["uid"] = json!("uid-3");
        let mut r = Reconciler::new(Options::default()).with_clock(early);
        let actions = r.reconcile(&snapshot(p(), vec![a_again, b_written[0].clone()]), None);
        assert_eq!(
            ingress(&actions),
            BTreeMap::from([("ns/a".to_string(), vec!["192.0.2.1".to_string()])])
        );
        let ev = events(&actions);
        assert!(
            ev.contains(&("a".into(), "ClearAssignment".into())),
            "{ev:?}"
        );
    }

    #[test]
    fn a_new_overlapping_pool_evicts_nobody_now_or_after_a_restart() {
        let s1 = service("s1").namespace("ns").json();
        let s2 = service("s2").namespace("ns").json();
        let old = || pool("zz-old", ["192.0.2.0/30"]).json();
        let mut r = Reconciler::new(Options::default());
        let actions = r.reconcile(&snapshot(vec![old()], vec![s1.clone(), s2.clone()]), None);
        assert_eq!(ingress(&actions)["ns/s2"], ["192.0.2.1"]);
        let services = written(&[s1, s2], &actions);

        // A new pool overlapping by one address, whose name sorts first.
        let both = || vec![old(), pool("aa-new", ["192.0.2.1/32"]).json()];
        let changed = BTreeSet::from([ObjectRef::new(
            Kind::IPAddressPool,
            Some("metallb-system"),
            "aa-new",
        )]);
        let actions = r.reconcile(&snapshot(both(), services.clone()), Some(&changed));
        assert!(
            !actions.iter().any(|a| !matches!(a, Action::Event { .. })),
            "nothing is rewritten: {actions:?}"
        );
        let reported: Vec<String> = actions
            .iter()
            .filter_map(|a| match a {
                Action::Event { object, event } => Some(format!(
                    "{} {} {}",
                    object.name, event.reason, event.message
                )),
                _ => None,
            })
            .collect();
        assert!(
            reported.iter().any(|m| m.contains("zz-old")
                && m.contains("aa-new")
                && m.contains("stays in use")),
            "{reported:?}"
        );

        // Restart: both still hold what they held, from the pool they came from.
        let mut r = Reconciler::new(Options::default());
        let actions = r.reconcile(&snapshot(both(), services), None);
        assert!(
            !actions.iter().any(|a| !matches!(a, Action::Event { .. })),
            "nothing is rewritten after a restart: {actions:?}"
        );
        assert_eq!(
            r.allocator().held(&ServiceKey::new("ns", "s2")).unwrap().1,
            "zz-old"
        );
    }
}
