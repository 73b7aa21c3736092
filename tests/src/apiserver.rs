//! A stand-in for the Kubernetes API server, for tests.
//!
//! **This is not a Kubernetes API server**: it is a test double that speaks the subset of its
//! HTTP API metalnet uses, the way kube-rs and kube-runtime use it, for the kinds in
//! [`Kind::ALL`] (core/v1 Events included). No real API server can run on the build machines,
//! so the Kubernetes code path is tested against this.
//!
//! What it does, like the real server:
//! - LIST (all namespaces, one namespace, cluster-scoped) with the list's
//!   `metadata.resourceVersion`; `limit`/`continue` are accepted and everything is returned in
//!   one page; equality-based `labelSelector` and `metadata.name`/`metadata.namespace`
//!   `fieldSelector`s are honoured, anything else is answered 400 rather than ignored.
//!   Items of built-in kinds carry no `apiVersion`/`kind`, as the real server's lists do.
//! - WATCH (`watch=true`, `resourceVersion`, `allowWatchBookmarks`, `timeoutSeconds`): a
//!   chunked stream of JSON lines starting after the given resource version; a version older
//!   than the retained history ([`ApiServer::compact`]) gets an `ERROR` event with a 410
//!   `Status`, so clients relist.
//! - GET, POST (409 if it exists), PUT (409 on a stale `resourceVersion`), DELETE, and PATCH
//!   with merge patch, strategic merge patch (treated as a merge patch: fine for maps) and
//!   server-side apply (create, or merge the given object in), on objects and their `/status`.
//!   Status subresource writes change only `.status`; main-resource writes keep the stored
//!   `.status` of kinds that have the subresource.
//! - Every write bumps one global resource version and sets `metadata.resourceVersion`,
//!   `uid`, `creationTimestamp` and `generation`; writes that change nothing are not writes.
//!   Errors are `Status` objects (404, 409, 400, 415, 422).
//!
//! What it does not do: authentication, TLS, discovery, admission, validation against
//! schemas, namespaces existing, finalizers, garbage collection, managed fields and
//! server-side apply field ownership (an apply never removes fields), JSON patch.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use metalnet::state::{Kind, merge_patch};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// Kinds whose `.status` is a subresource: written only through `/status`.
fn has_status_subresource(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::Service
            | Kind::Node
            | Kind::Pod
            | Kind::IPAddressPool
            | Kind::ServiceL2Status
            | Kind::ServiceBGPStatus
    )
}

/// Built-in kinds: their list items carry no `apiVersion`/`kind` (custom resources' do).
fn is_builtin(kind: Kind) -> bool {
    matches!(kind.group(), "" | "discovery.k8s.io")
}

/// One request the stand-in answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestRecord {
    pub method: String,
    pub path: String,
    pub query: String,
    /// The HTTP status code.
    pub status: u16,
    /// A watch answered with a 410 `ERROR` event (its resource version was compacted away).
    pub watch_expired: bool,
}

impl RequestRecord {
    pub fn is_watch(&self) -> bool {
        self.query
            .split('&')
            .any(|p| p == "watch=true" || p == "watch=1")
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    kind: Kind,
    namespace: Option<String>,
    name: String,
}

struct Change {
    rv: u64,
    key: Key,
    type_: &'static str,
    object: Value,
}

struct Store {
    /// The global resource version: bumped by every write.
    rv: u64,
    objects: BTreeMap<Key, Value>,
    /// Every change since the last compaction, oldest first.
    history: Vec<Change>,
    /// Watches from a resource version below this get 410 Gone.
    compacted: u64,
    /// Bumped by compaction: open watches end, so their clients come back with old versions.
    epoch: u64,
    uids: u64,
    requests: Vec<RequestRecord>,
    /// Kinds answered 404, as a resource whose CRD is not installed.
    unserved: BTreeSet<Kind>,
}

struct Shared {
    store: Mutex<Store>,
    /// The current resource version, for watches to wait on.
    rv_tx: watch::Sender<u64>,
    /// Makes uids unique across servers in one process.
    instance: u64,
}

/// The API server stand-in; shuts down when dropped.
pub struct ApiServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        // The accept loop owns the connection tasks: aborting it ends every connection.
        self.task.abort();
    }
}

impl ApiServer {
    /// Listens on a free loopback port and serves until dropped.
    pub async fn start() -> anyhow::Result<ApiServer> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the API stand-in to 127.0.0.1:0")?;
        ApiServer::serve_on(listener)
    }

    /// Listens on `addr` inside the network namespace `netns` (`/run/netns/NETNS`, e.g. a lab
    /// host's) and serves until dropped, so daemons in other lab namespaces reach it over
    /// the lab's links. Only the listening socket lives there: the socket keeps the namespace
    /// it was created in, so serving runs on the caller's runtime as usual.
    pub async fn start_in_netns(netns: &str, addr: SocketAddr) -> anyhow::Result<ApiServer> {
        let what = format!("binding the API stand-in to {addr} in network namespace {netns}");
        let netns_name = netns.to_string();
        let bound = tokio::task::spawn_blocking(move || {
            metalnet::netlink::in_netns(&netns_name, move || {
                let listener = std::net::TcpListener::bind(addr)?;
                listener.set_nonblocking(true)?;
                Ok::<_, std::io::Error>(listener)
            })
        })
        .await
        .with_context(|| what.clone())?
        .with_context(|| what.clone())?
        .with_context(|| what.clone())?;
        let listener = TcpListener::from_std(bound).with_context(|| what.clone())?;
        ApiServer::serve_on(listener)
    }

    /// Serves on a bound listener until dropped.
    fn serve_on(listener: TcpListener) -> anyhow::Result<ApiServer> {
        let addr = listener.local_addr()?;
        let (rv_tx, _) = watch::channel(1);
        let instance = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
            ^ u64::from(addr.port());
        let shared = Arc::new(Shared {
            store: Mutex::new(Store {
                rv: 1,
                objects: BTreeMap::new(),
                history: Vec::new(),
                compacted: 0,
                epoch: 0,
                uids: 0,
                requests: Vec::new(),
                unserved: BTreeSet::new(),
            }),
            rv_tx,
            instance,
        });
        let task = tokio::spawn(serve(listener, shared.clone()));
        Ok(ApiServer { addr, shared, task })
    }

    /// `http://ADDR:PORT`, where it listens (`127.0.0.1` unless started in a namespace).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Writes `dir/kubeconfig` pointing to this server (plain HTTP, no credentials).
    pub fn kubeconfig(&self, dir: &Path) -> anyhow::Result<PathBuf> {
        let path = dir.join("kubeconfig");
        let config = json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{ "name": "stand-in", "cluster": { "server": self.url() } }],
            "users": [{ "name": "stand-in", "user": {} }],
            "contexts": [{
                "name": "stand-in",
                "context": { "cluster": "stand-in", "user": "stand-in", "namespace": "default" }
            }],
            "current-context": "stand-in",
        });
        // JSON is YAML: kubeconfig readers take it as is.
        std::fs::write(&path, serde_json::to_vec_pretty(&config)?)
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// A kube client talking to this server.
    pub fn client(&self) -> kube::Client {
        let uri = self
            .url()
            .parse()
            .expect("a loopback URL with a port is a valid URI");
        kube::Client::try_from(kube::Config::new(uri))
            .expect("a client for a plain-HTTP loopback URL always builds")
    }

    /// Creates or replaces every object in a (multi-document) YAML text, status included,
    /// bypassing the HTTP rules (as an administrator or another controller would).
    pub fn apply_yaml(&self, yaml: &str) -> anyhow::Result<()> {
        let docs: Vec<Value> = serde_saphyr::from_multiple(yaml).context("parsing YAML")?;
        for doc in docs.into_iter().filter(|d| !d.is_null()) {
            self.put(doc)?;
        }
        Ok(())
    }

    /// Creates or replaces one object, status included; returns it as stored.
    pub fn put(&self, object: Value) -> anyhow::Result<Value> {
        let api_version = object["apiVersion"].as_str().unwrap_or_default();
        let kind_name = object["kind"].as_str().unwrap_or_default();
        let Some(kind) = Kind::from_manifest(api_version, kind_name) else {
            bail!("the stand-in does not serve {api_version} {kind_name}");
        };
        let Some(name) = object.pointer("/metadata/name").and_then(Value::as_str) else {
            bail!("{kind_name} without metadata.name");
        };
        let namespace = kind.namespaced().then(|| {
            object
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .unwrap_or("default")
                .to_string()
        });
        let key = Key {
            kind,
            namespace,
            name: name.to_string(),
        };
        let mut store = self.shared.store.lock().unwrap();
        let stored = store.write(&self.shared, &key, object);
        Ok(stored)
    }

    /// Deletes an object; false if there was none.
    pub fn delete(&self, kind: Kind, namespace: Option<&str>, name: &str) -> bool {
        let key = key_of(kind, namespace, name);
        let mut store = self.shared.store.lock().unwrap();
        store.remove(&self.shared, &key).is_some()
    }

    pub fn get(&self, kind: Kind, namespace: Option<&str>, name: &str) -> Option<Value> {
        let key = key_of(kind, namespace, name);
        self.shared.store.lock().unwrap().objects.get(&key).cloned()
    }

    /// Every object of a kind, all namespaces.
    pub fn list(&self, kind: Kind) -> Vec<Value> {
        let store = self.shared.store.lock().unwrap();
        store
            .objects
            .iter()
            .filter(|(k, _)| k.kind == kind)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// The current global resource version.
    pub fn resource_version(&self) -> u64 {
        self.shared.store.lock().unwrap().rv
    }

    /// Drops the watch history and ends open watches: every client resuming from a version
    /// it saw before gets 410 Gone and must relist.
    pub fn compact(&self) {
        let mut store = self.shared.store.lock().unwrap();
        // A version of its own, so a list made before compaction is older than the cut.
        store.rv += 1;
        store.compacted = store.rv;
        store.history.clear();
        store.epoch += 1;
        self.shared.rv_tx.send_replace(store.rv);
    }

    /// Stops serving a kind: its paths answer 404, as when its CRD is not installed.
    pub fn unserve(&self, kind: Kind) {
        self.shared.store.lock().unwrap().unserved.insert(kind);
    }

    /// Every request answered so far, oldest first.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared.store.lock().unwrap().requests.clone()
    }
}

fn key_of(kind: Kind, namespace: Option<&str>, name: &str) -> Key {
    Key {
        kind,
        namespace: kind
            .namespaced()
            .then(|| namespace.unwrap_or("default").to_string()),
        name: name.to_string(),
    }
}

impl Store {
    /// Stores `object` under `key` as a create or update, filling in the server-set metadata;
    /// returns it as stored. An update that changes nothing is not recorded.
    fn write(&mut self, shared: &Shared, key: &Key, mut object: Value) -> Value {
        let old = self.objects.get(key).cloned();
        if !object.is_object() {
            object = json!({});
        }
        object["apiVersion"] = Value::String(key.kind.api_version());
        object["kind"] = Value::String(key.kind.name().into());
        if !object["metadata"].is_object() {
            object["metadata"] = json!({});
        }
        let meta = &mut object["metadata"];
        meta["name"] = Value::String(key.name.clone());
        match &key.namespace {
            Some(ns) => meta["namespace"] = Value::String(ns.clone()),
            None => {
                if let Some(m) = meta.as_object_mut() {
                    m.remove("namespace");
                }
            }
        }
        match &old {
            Some(old) => {
                for field in ["uid", "creationTimestamp", "resourceVersion"] {
                    meta[field] = old["metadata"][field].clone();
                }
                if let Some(m) = meta.as_object_mut() {
                    m.retain(|_, v| !v.is_null());
                }
                let generation = old["metadata"]["generation"].as_i64().unwrap_or(1);
                let spec_changed = spec_of(old) != spec_of(&object);
                object["metadata"]["generation"] = json!(if spec_changed {
                    generation + 1
                } else {
                    generation
                });
                if *old == object {
                    return object;
                }
            }
            None => {
                self.uids += 1;
                let n = self.uids;
                let i = shared.instance;
                meta["uid"] = Value::String(format!(
                    "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
                    (i >> 32) as u32,
                    (i >> 16) as u16,
                    i as u16 & 0xfff,
                    (n >> 48) as u16 & 0xfff,
                    n & 0xffff_ffff_ffff
                ));
                meta["creationTimestamp"] = Value::String(now_seconds());
                meta["generation"] = json!(1);
            }
        }
        self.rv += 1;
        object["metadata"]["resourceVersion"] = Value::String(self.rv.to_string());
        let type_ = if old.is_some() { "MODIFIED" } else { "ADDED" };
        self.objects.insert(key.clone(), object.clone());
        self.record(shared, key, type_, object.clone());
        object
    }

    fn remove(&mut self, shared: &Shared, key: &Key) -> Option<Value> {
        let mut object = self.objects.remove(key)?;
        self.rv += 1;
        object["metadata"]["resourceVersion"] = Value::String(self.rv.to_string());
        self.record(shared, key, "DELETED", object.clone());
        Some(object)
    }

    fn record(&mut self, shared: &Shared, key: &Key, type_: &'static str, object: Value) {
        self.history.push(Change {
            rv: self.rv,
            key: key.clone(),
            type_,
            object,
        });
        shared.rv_tx.send_replace(self.rv);
    }
}

/// What `generation` counts changes of: everything but metadata and status.
fn spec_of(object: &Value) -> Value {
    let mut v = object.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
    }
    v
}

fn now_seconds() -> String {
    let now = k8s_openapi::jiff::Timestamp::now();
    now.round(k8s_openapi::jiff::Unit::Second)
        .unwrap_or(now)
        .to_string()
}

async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let shared = shared.clone();
                    connections.spawn(async move {
                        let service = service_fn(move |req| {
                            let shared = shared.clone();
                            async move { Ok::<_, Infallible>(handle(&shared, req).await) }
                        });
                        if let Err(e) = http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await
                        {
                            tracing::debug!(error = %e, "API stand-in connection ended");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "API stand-in accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Where a request goes: a kind's collection, one object, or one object's subresource.
struct Route {
    kind: Kind,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

fn parse_route(path: &str) -> Result<Route, Reply> {
    let not_found = || {
        Reply::error(
            404,
            "NotFound",
            format!("the server could not find the requested resource ({path})"),
        )
    };
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Err(not_found()),
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, plural, rest @ ..] if !matches!(*plural, "status" | "finalize") => {
            (Some(ns.to_string()), [&[*plural][..], rest].concat())
        }
        _ => (None, rest.to_vec()),
    };
    let (plural, name, subresource) = match rest.as_slice() {
        [plural] => (*plural, None, None),
        [plural, name] => (*plural, Some(name.to_string()), None),
        [plural, name, sub] => (*plural, Some(name.to_string()), Some(sub.to_string())),
        _ => return Err(not_found()),
    };
    let kind = Kind::ALL
        .into_iter()
        .find(|k| k.group() == group && k.version() == version && k.plural() == plural)
        .ok_or_else(not_found)?;
    // A namespaced object is only addressed through its namespace; a cluster-scoped kind
    // never is.
    if (namespace.is_some() && !kind.namespaced())
        || (namespace.is_none() && kind.namespaced() && name.is_some())
    {
        return Err(not_found());
    }
    Ok(Route {
        kind,
        namespace,
        name,
        subresource,
    })
}

/// An answer before it becomes an HTTP response.
struct Reply {
    status: u16,
    body: Value,
}

impl Reply {
    fn ok(status: u16, body: Value) -> Reply {
        Reply { status, body }
    }

    fn error(code: u16, reason: &str, message: String) -> Reply {
        Reply {
            status: code,
            body: status_object(code, reason, message),
        }
    }

    fn for_object(code: u16, reason: &str, route: &Route, name: &str, message: String) -> Reply {
        let mut r = Reply::error(code, reason, message);
        r.body["details"] = json!({
            "name": name,
            "group": route.kind.group(),
            "kind": route.kind.plural(),
        });
        r
    }
}

fn status_object(code: u16, reason: &str, message: String) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
}

fn json_response(status: u16, body: &Value) -> Response<Body> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(bytes)).boxed_unsync())
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed_unsync()))
}

fn query_params(query: &str) -> BTreeMap<String, String> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (percent_decode(k), percent_decode(v)),
            None => (percent_decode(p), String::new()),
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn handle(shared: &Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or_default().to_string();
    let content_type = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_string();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            let reply = Reply::error(400, "BadRequest", format!("reading the body: {e}"));
            return json_response(reply.status, &reply.body);
        }
    };
    let params = query_params(&query);
    let route = parse_route(&path).and_then(|r| {
        if shared.store.lock().unwrap().unserved.contains(&r.kind) {
            Err(Reply::error(
                404,
                "NotFound",
                format!("the server could not find the requested resource ({path})"),
            ))
        } else {
            Ok(r)
        }
    });
    let (response, status, watch_expired) = match route {
        Err(reply) => (
            json_response(reply.status, &reply.body),
            reply.status,
            false,
        ),
        Ok(route) => {
            let is_watch = matches!(params.get("watch").map(String::as_str), Some("true" | "1"));
            if method == Method::GET && route.name.is_none() && is_watch {
                match start_watch(shared, &route, &params) {
                    Ok((body, expired)) => (
                        Response::builder()
                            .status(200)
                            .header("content-type", "application/json")
                            .body(body)
                            .unwrap_or_else(|_| {
                                Response::new(Full::new(Bytes::new()).boxed_unsync())
                            }),
                        200,
                        expired,
                    ),
                    Err(reply) => (
                        json_response(reply.status, &reply.body),
                        reply.status,
                        false,
                    ),
                }
            } else {
                let reply = answer(shared, &method, &route, &params, &content_type, &body);
                (
                    json_response(reply.status, &reply.body),
                    reply.status,
                    false,
                )
            }
        }
    };
    shared.store.lock().unwrap().requests.push(RequestRecord {
        method: method.to_string(),
        path,
        query,
        status,
        watch_expired,
    });
    response
}

/// Everything but watches.
fn answer(
    shared: &Shared,
    method: &Method,
    route: &Route,
    params: &BTreeMap<String, String>,
    content_type: &str,
    body: &Bytes,
) -> Reply {
    let result = match (method, &route.name) {
        (&Method::GET, None) => list(shared, route, params),
        (&Method::GET, Some(name)) => get(shared, route, name),
        (&Method::POST, None) => parse_json(body).and_then(|b| create(shared, route, b)),
        (&Method::PUT, Some(name)) => {
            parse_json(body).and_then(|b| replace(shared, route, name, b))
        }
        (&Method::PATCH, Some(name)) => patch(shared, route, name, params, content_type, body),
        (&Method::DELETE, Some(name)) => delete(shared, route, name),
        _ => Err(Reply::error(
            405,
            "MethodNotAllowed",
            format!("{method} is not supported on {}", route_desc(route)),
        )),
    };
    result.unwrap_or_else(|e| e)
}

fn route_desc(route: &Route) -> String {
    let mut s = route.kind.plural().to_string();
    if let Some(n) = &route.name {
        s = format!("{s}/{n}");
    }
    if let Some(sub) = &route.subresource {
        s = format!("{s}/{sub}");
    }
    s
}

fn parse_json(body: &Bytes) -> Result<Value, Reply> {
    serde_json::from_slice(body)
        .map_err(|e| Reply::error(400, "BadRequest", format!("the body is not JSON: {e}")))
}

fn route_key(route: &Route, name: &str) -> Key {
    Key {
        kind: route.kind,
        namespace: route.namespace.clone(),
        name: name.to_string(),
    }
}

fn check_subresource(route: &Route) -> Result<bool, Reply> {
    match route.subresource.as_deref() {
        None => Ok(false),
        Some("status") if has_status_subresource(route.kind) => Ok(true),
        Some(sub) => Err(Reply::error(
            404,
            "NotFound",
            format!("{} has no subresource {sub}", route.kind.plural()),
        )),
    }
}

/// A label selector of equality and existence terms (`a=b`, `a==b`, `a!=b`, `a`, `!a`).
fn label_selector_matches(selector: &str, object: &Value) -> Result<bool, Reply> {
    let labels = &object["metadata"]["labels"];
    for term in selector.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        if term.contains(" in ") || term.contains(" notin ") || term.contains('(') {
            return Err(Reply::error(
                400,
                "BadRequest",
                format!(
                    "label selector term {term:?}: set-based selectors are not supported by the stand-in"
                ),
            ));
        }
        let ok = if let Some((k, v)) = term.split_once("!=") {
            labels[k.trim()].as_str() != Some(v.trim())
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            labels[k.trim()].as_str() == Some(v.trim())
        } else if let Some(k) = term.strip_prefix('!') {
            labels.get(k.trim()).is_none()
        } else {
            labels.get(term).is_some()
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

fn field_selector_matches(selector: &str, object: &Value) -> Result<bool, Reply> {
    for term in selector.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let (field, want, equal) = if let Some((f, v)) = term.split_once("!=") {
            (f, v, false)
        } else if let Some((f, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            (f, v, true)
        } else {
            return Err(Reply::error(
                400,
                "BadRequest",
                format!("field selector {term:?}"),
            ));
        };
        let have = match field.trim() {
            "metadata.name" => object["metadata"]["name"].as_str(),
            "metadata.namespace" => object["metadata"]["namespace"].as_str(),
            other => {
                return Err(Reply::error(
                    400,
                    "BadRequest",
                    format!("field selector on {other:?} is not supported by the stand-in"),
                ));
            }
        };
        if (have == Some(want.trim())) != equal {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Which objects of the route's kind a list or watch selects.
struct Filter {
    kind: Kind,
    namespace: Option<String>,
    labels: Option<String>,
    fields: Option<String>,
}

impl Filter {
    fn new(route: &Route, params: &BTreeMap<String, String>) -> Result<Filter, Reply> {
        let f = Filter {
            kind: route.kind,
            namespace: route.namespace.clone(),
            labels: params.get("labelSelector").cloned(),
            fields: params.get("fieldSelector").cloned(),
        };
        // Reject selectors we cannot evaluate now rather than on the first object.
        if let Some(sel) = &f.labels {
            label_selector_matches(sel, &json!({}))?;
        }
        if let Some(sel) = &f.fields {
            field_selector_matches(sel, &json!({}))?;
        }
        Ok(f)
    }

    fn matches(&self, key: &Key, object: &Value) -> Result<bool, Reply> {
        if key.kind != self.kind {
            return Ok(false);
        }
        if self.namespace.is_some() && key.namespace != self.namespace {
            return Ok(false);
        }
        if let Some(s) = &self.labels
            && !label_selector_matches(s, object)?
        {
            return Ok(false);
        }
        if let Some(s) = &self.fields
            && !field_selector_matches(s, object)?
        {
            return Ok(false);
        }
        Ok(true)
    }
}

fn list(shared: &Shared, route: &Route, params: &BTreeMap<String, String>) -> Result<Reply, Reply> {
    let filter = Filter::new(route, params)?;
    let store = shared.store.lock().unwrap();
    let mut items = Vec::new();
    for (key, object) in &store.objects {
        if filter.matches(key, object)? {
            let mut item = object.clone();
            if is_builtin(route.kind)
                && let Some(m) = item.as_object_mut()
            {
                m.remove("apiVersion");
                m.remove("kind");
            }
            items.push(item);
        }
    }
    Ok(Reply::ok(
        200,
        json!({
            "apiVersion": route.kind.api_version(),
            "kind": format!("{}List", route.kind.name()),
            "metadata": { "resourceVersion": store.rv.to_string() },
            "items": items,
        }),
    ))
}

fn get(shared: &Shared, route: &Route, name: &str) -> Result<Reply, Reply> {
    check_subresource(route)?;
    let store = shared.store.lock().unwrap();
    match store.objects.get(&route_key(route, name)) {
        Some(o) => Ok(Reply::ok(200, o.clone())),
        None => Err(not_found(route, name)),
    }
}

fn not_found(route: &Route, name: &str) -> Reply {
    Reply::for_object(
        404,
        "NotFound",
        route,
        name,
        format!("{} \"{name}\" not found", route.kind.plural()),
    )
}

/// Checks the body names the route's kind, object and namespace.
fn check_identity(route: &Route, name: Option<&str>, body: &Value) -> Result<(), Reply> {
    if !body.is_object() {
        return Err(Reply::error(
            400,
            "BadRequest",
            "the body is not an object".into(),
        ));
    }
    if let Some(k) = body["kind"].as_str()
        && k != route.kind.name()
    {
        return Err(Reply::error(
            400,
            "BadRequest",
            format!(
                "kind {k} does not match the resource {}",
                route.kind.plural()
            ),
        ));
    }
    if let Some(av) = body["apiVersion"].as_str()
        && av != route.kind.api_version()
    {
        return Err(Reply::error(
            400,
            "BadRequest",
            format!("apiVersion {av} is not served for {}", route.kind.plural()),
        ));
    }
    if let (Some(want), Some(have)) = (name, body["metadata"]["name"].as_str())
        && want != have
    {
        return Err(Reply::error(
            400,
            "BadRequest",
            format!("the name of the object ({have}) does not match the name on the URL ({want})"),
        ));
    }
    if let (Some(want), Some(have)) = (&route.namespace, body["metadata"]["namespace"].as_str())
        && want != have
    {
        return Err(Reply::error(
            400,
            "BadRequest",
            "the namespace of the provided object does not match the namespace sent on the request"
                .into(),
        ));
    }
    Ok(())
}

fn create(shared: &Shared, route: &Route, mut body: Value) -> Result<Reply, Reply> {
    if route.subresource.is_some() {
        return Err(Reply::error(
            405,
            "MethodNotAllowed",
            "create on a subresource".into(),
        ));
    }
    check_identity(route, None, &body)?;
    if route.kind.namespaced() && route.namespace.is_none() {
        return Err(Reply::error(
            404,
            "NotFound",
            "namespaced objects are created in a namespace path".into(),
        ));
    }
    let mut store = shared.store.lock().unwrap();
    let name = match (
        body["metadata"]["name"].as_str(),
        body["metadata"]["generateName"].as_str(),
    ) {
        (Some(n), _) if !n.is_empty() => n.to_string(),
        (_, Some(prefix)) if !prefix.is_empty() => {
            format!("{prefix}{:05x}", (store.rv ^ shared.instance) & 0xfffff)
        }
        _ => {
            return Err(Reply::error(
                422,
                "Invalid",
                format!(
                    "{} is invalid: metadata.name: Required value: name or generateName is required",
                    route.kind.name()
                ),
            ));
        }
    };
    let key = route_key(route, &name);
    if store.objects.contains_key(&key) {
        return Err(Reply::for_object(
            409,
            "AlreadyExists",
            route,
            &name,
            format!("{} \"{name}\" already exists", route.kind.plural()),
        ));
    }
    if has_status_subresource(route.kind)
        && let Some(m) = body.as_object_mut()
    {
        m.remove("status");
    }
    let stored = store.write(shared, &key, body);
    Ok(Reply::ok(201, stored))
}

/// The object a main-resource or status write leaves: status writes change only `.status`;
/// main writes keep the stored `.status` of kinds with the subresource.
fn merge_write(route: &Route, old: &Value, mut new: Value, status_write: bool) -> Value {
    if status_write {
        let mut result = old.clone();
        match new.get("status") {
            Some(s) => result["status"] = s.clone(),
            None => {
                if let Some(m) = result.as_object_mut() {
                    m.remove("status");
                }
            }
        }
        result
    } else {
        if has_status_subresource(route.kind)
            && let Some(m) = new.as_object_mut()
        {
            match old.get("status") {
                Some(s) => {
                    m.insert("status".into(), s.clone());
                }
                None => {
                    m.remove("status");
                }
            }
        }
        new
    }
}

fn conflict(route: &Route, name: &str) -> Reply {
    Reply::for_object(
        409,
        "Conflict",
        route,
        name,
        format!(
            "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
            route.kind.plural()
        ),
    )
}

fn check_precondition(route: &Route, name: &str, old: &Value, body: &Value) -> Result<(), Reply> {
    match body["metadata"]["resourceVersion"].as_str() {
        Some(rv) if !rv.is_empty() && Some(rv) != old["metadata"]["resourceVersion"].as_str() => {
            Err(conflict(route, name))
        }
        _ => Ok(()),
    }
}

fn replace(shared: &Shared, route: &Route, name: &str, body: Value) -> Result<Reply, Reply> {
    let status_write = check_subresource(route)?;
    check_identity(route, Some(name), &body)?;
    let key = route_key(route, name);
    let mut store = shared.store.lock().unwrap();
    let Some(old) = store.objects.get(&key).cloned() else {
        return Err(not_found(route, name));
    };
    check_precondition(route, name, &old, &body)?;
    let new = merge_write(route, &old, body, status_write);
    let stored = store.write(shared, &key, new);
    Ok(Reply::ok(200, stored))
}

fn patch(
    shared: &Shared,
    route: &Route,
    name: &str,
    params: &BTreeMap<String, String>,
    content_type: &str,
    body: &Bytes,
) -> Result<Reply, Reply> {
    let status_write = check_subresource(route)?;
    let is_apply = match content_type {
        "application/merge-patch+json" | "application/strategic-merge-patch+json" => false,
        "application/apply-patch+yaml" => true,
        other => {
            return Err(Reply::error(
                415,
                "UnsupportedMediaType",
                format!(
                    "the body of the request was in an unknown format - accepted media types include: application/merge-patch+json, application/strategic-merge-patch+json, application/apply-patch+yaml (got {other:?})"
                ),
            ));
        }
    };
    let patch_value: Value = if is_apply {
        if params.get("fieldManager").is_none_or(String::is_empty) {
            return Err(Reply::error(
                400,
                "BadRequest",
                "PATCH, application/apply-patch+yaml: fieldManager is required for apply requests"
                    .into(),
            ));
        }
        match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(_) => {
                let text = std::str::from_utf8(body).map_err(|e| {
                    Reply::error(400, "BadRequest", format!("the body is not UTF-8: {e}"))
                })?;
                serde_saphyr::from_str(text).map_err(|e| {
                    Reply::error(400, "BadRequest", format!("the body is not YAML: {e}"))
                })?
            }
        }
    } else {
        parse_json(body)?
    };
    if is_apply {
        check_identity(route, Some(name), &patch_value)?;
    } else if !patch_value.is_object() {
        return Err(Reply::error(
            400,
            "BadRequest",
            "a merge patch must be an object".into(),
        ));
    }
    let key = route_key(route, name);
    let mut store = shared.store.lock().unwrap();
    let old = store.objects.get(&key).cloned();
    let Some(old) = old else {
        if is_apply && !status_write {
            // Server-side apply creates what does not exist.
            let mut new = patch_value;
            if has_status_subresource(route.kind)
                && let Some(m) = new.as_object_mut()
            {
                m.remove("status");
            }
            let stored = store.write(shared, &key, new);
            return Ok(Reply::ok(201, stored));
        }
        return Err(not_found(route, name));
    };
    check_precondition(route, name, &old, &patch_value)?;
    let mut patched = old.clone();
    merge_patch(&mut patched, &patch_value);
    let new = merge_write(route, &old, patched, status_write);
    let stored = store.write(shared, &key, new);
    Ok(Reply::ok(200, stored))
}

fn delete(shared: &Shared, route: &Route, name: &str) -> Result<Reply, Reply> {
    if route.subresource.is_some() {
        return Err(Reply::error(
            405,
            "MethodNotAllowed",
            "delete on a subresource".into(),
        ));
    }
    let key = route_key(route, name);
    let mut store = shared.store.lock().unwrap();
    match store.remove(shared, &key) {
        Some(o) => Ok(Reply::ok(200, o)),
        None => Err(not_found(route, name)),
    }
}

fn watch_line(type_: &str, object: &Value) -> Bytes {
    let mut line =
        serde_json::to_vec(&json!({ "type": type_, "object": object })).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

struct WatchState {
    shared: Arc<Shared>,
    filter: Filter,
    rx: watch::Receiver<u64>,
    /// The last resource version this watch has covered.
    last: u64,
    epoch: u64,
    deadline: tokio::time::Instant,
    bookmarks: bool,
    pending: VecDeque<Bytes>,
    done: bool,
}

/// A watch response body; true if it is a 410 answer.
fn start_watch(
    shared: &Arc<Shared>,
    route: &Route,
    params: &BTreeMap<String, String>,
) -> Result<(Body, bool), Reply> {
    let filter = Filter::new(route, params)?;
    let since = match params.get("resourceVersion").map(String::as_str) {
        None | Some("") | Some("0") => None,
        Some(v) => Some(v.parse::<u64>().map_err(|_| {
            Reply::error(400, "BadRequest", format!("invalid resourceVersion {v:?}"))
        })?),
    };
    let timeout = params
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .unwrap_or(1800);
    let mut rx = shared.rv_tx.subscribe();
    rx.borrow_and_update();
    let store = shared.store.lock().unwrap();
    let mut pending = VecDeque::new();
    let last = match since {
        Some(n) if n < store.compacted => {
            let status = status_object(
                410,
                "Expired",
                format!("too old resource version: {n} ({})", store.compacted),
            );
            let line = watch_line("ERROR", &status);
            let body = StreamBody::new(futures::stream::iter([Ok::<_, Infallible>(Frame::data(
                line,
            ))]));
            return Ok((body.boxed_unsync(), true));
        }
        Some(n) => n,
        None => {
            // No version: the current objects as ADDED, then changes.
            for (key, object) in &store.objects {
                if filter.matches(key, object)? {
                    pending.push_back(watch_line("ADDED", object));
                }
            }
            store.rv
        }
    };
    let state = WatchState {
        shared: shared.clone(),
        filter,
        rx,
        last,
        epoch: store.epoch,
        deadline: tokio::time::Instant::now() + Duration::from_secs(timeout),
        bookmarks: params.get("allowWatchBookmarks").map(String::as_str) == Some("true"),
        pending,
        done: false,
    };
    drop(store);
    let stream = futures::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(chunk) = st.pending.pop_front() {
                return Some((Ok::<_, Infallible>(Frame::data(chunk)), st));
            }
            if st.done {
                return None;
            }
            st.rx.borrow_and_update();
            {
                let store = st.shared.store.lock().unwrap();
                if store.epoch != st.epoch {
                    return None;
                }
                for change in store.history.iter().filter(|c| c.rv > st.last) {
                    if st
                        .filter
                        .matches(&change.key, &change.object)
                        .unwrap_or(false)
                    {
                        st.pending
                            .push_back(watch_line(change.type_, &change.object));
                    }
                }
                st.last = st.last.max(store.rv);
            }
            if !st.pending.is_empty() {
                continue;
            }
            tokio::select! {
                changed = st.rx.changed() => if changed.is_err() { return None },
                _ = tokio::time::sleep_until(st.deadline) => {
                    // Like the real server, a bookmark with the version reached before the
                    // watch ends, so the client resumes from there.
                    st.done = true;
                    if st.bookmarks {
                        st.pending.push_back(watch_line("BOOKMARK", &json!({
                            "apiVersion": st.filter.kind.api_version(),
                            "kind": st.filter.kind.name(),
                            "metadata": { "resourceVersion": st.last.to_string() },
                        })));
                    }
                }
            }
        }
    });
    Ok((StreamBody::new(stream).boxed_unsync(), false))
}

#[cfg(test)]
mod tests;
