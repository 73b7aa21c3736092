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
//!   Status subresource writes change only `.status` (a Pod's also its labels and
//!   annotations, as the real pod status strategy allows); main-resource writes keep the stored
//!   `.status` of kinds that have the subresource.
//! - Every write bumps one global resource version and sets `metadata.resourceVersion`,
//!   `uid`, `creationTimestamp` and `generation`; writes that change nothing are not writes.
//!   Errors are `Status` objects (404, 409, 400, 415, 422).
//!
//! What it does not do: authentication, TLS, discovery, admission, validation against
//! schemas, namespaces existing, finalizers, garbage collection, managed fields and
//! server-side apply field ownership (an apply never removes fields), JSON patch.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use metalnet::state::Kind;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

mod route;
mod store;
mod verbs;
mod watch;

use route::{Route, parse_route, query_params, route_desc};
use store::{Key, Store, key_of};
use verbs::{create, delete, get, list, parse_json, patch, replace};
use watch::start_watch;

type Body = UnsyncBoxBody<Bytes, Infallible>;

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

struct Shared {
    store: Mutex<Store>,
    /// The current resource version, for watches to wait on.
    rv_tx: tokio::sync::watch::Sender<u64>,
    /// Makes uids unique across servers in one process.
    instance: u64,
}

/// The API server stand-in; shuts down when dropped.
pub struct ApiServer {
    addr: SocketAddr,
    /// The network namespace it listens in, when not the caller's (to listen again there).
    netns: Option<String>,
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
        let listener = bind_in_netns(netns, addr).await?;
        let mut server = ApiServer::serve_on(listener)?;
        server.netns = Some(netns.to_string());
        Ok(server)
    }

    /// Serves on a bound listener until dropped.
    fn serve_on(listener: TcpListener) -> anyhow::Result<ApiServer> {
        let addr = listener.local_addr()?;
        let (rv_tx, _) = tokio::sync::watch::channel(1);
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
        Ok(ApiServer {
            addr,
            netns: None,
            shared,
            task,
        })
    }

    /// Goes away as a crashed or restarting API server does: stops listening (connections
    /// are refused) and ends every open connection and watch. The objects and their history
    /// stay, as etcd keeps them; [`ApiServer::resume`] serves them again.
    pub async fn stop(&mut self) {
        self.task.abort();
        // Once the task is gone, so are the listener and the connections it owned.
        let _ = (&mut self.task).await;
    }

    /// Listens again on the same address (and namespace) after [`ApiServer::stop`], with the
    /// same objects and resource versions; a no-op while serving.
    pub async fn resume(&mut self) -> anyhow::Result<()> {
        if !self.task.is_finished() {
            return Ok(());
        }
        let listener = match &self.netns {
            Some(netns) => bind_in_netns(netns, self.addr).await?,
            None => TcpListener::bind(self.addr)
                .await
                .with_context(|| format!("binding the API stand-in to {} again", self.addr))?,
        };
        self.task = tokio::spawn(serve(listener, self.shared.clone()));
        Ok(())
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

/// A listener on `addr` inside the network namespace `netns`.
async fn bind_in_netns(netns: &str, addr: SocketAddr) -> anyhow::Result<TcpListener> {
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
    TcpListener::from_std(bound).with_context(|| what.clone())
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

#[cfg(test)]
mod tests;
