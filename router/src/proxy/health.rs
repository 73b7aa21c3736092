//! healthCheckNodePort servers, as kube-proxy's (`pkg/proxy/healthcheck/service_health.go`):
//! for each `externalTrafficPolicy: Local` LoadBalancer Service, an HTTP server on its
//! `healthCheckNodePort` that tells load balancers whether this node has local endpoints
//! (200) or not (503), so they send traffic only to nodes that will not drop it. The servers
//! start and stop as Services change; a count change touches no socket.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;

/// What a healthCheckNodePort answers about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceHealth {
    pub namespace: String,
    pub name: String,
    pub local_endpoints: usize,
}

/// A server that could not start, naming the Service, the port and the reason.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error(
        "Service {namespace}/{name}: healthCheckNodePort {port}: listening on {addr}: {source}"
    )]
    Bind {
        namespace: String,
        name: String,
        port: u16,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

struct Server {
    state: Arc<Mutex<ServiceHealth>>,
    bound: Vec<SocketAddr>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The running healthCheckNodePort servers, by port.
pub struct HealthServers {
    /// Where to listen: the node addresses that serve NodePorts; empty = every address.
    addrs: Vec<IpAddr>,
    servers: BTreeMap<u16, Server>,
    proxy_healthy: Arc<AtomicBool>,
}

impl Default for HealthServers {
    fn default() -> Self {
        HealthServers::new(Vec::new())
    }
}

impl HealthServers {
    /// `addrs`: the addresses to listen on (`--nodeport-addresses` applied to the node's
    /// addresses); empty = the wildcard address.
    pub fn new(addrs: Vec<IpAddr>) -> Self {
        HealthServers {
            addrs,
            servers: BTreeMap::new(),
            proxy_healthy: Arc::new(AtomicBool::new(true)),
        }
    }

    /// Changes the listening addresses; every server is restarted on them at the next
    /// [`HealthServers::update`].
    pub fn set_addresses(&mut self, mut addrs: Vec<IpAddr>) {
        addrs.sort();
        addrs.dedup();
        if addrs != self.addrs {
            self.addrs = addrs;
            self.servers.clear();
        }
    }

    /// kube-proxy answers 503 on every port while its own rules are not in sync.
    pub fn set_proxy_healthy(&self, healthy: bool) {
        self.proxy_healthy.store(healthy, Ordering::Relaxed);
    }

    /// Runs exactly the `wanted` servers: starts the new ones, stops the ones gone, updates
    /// the answers of the others. Servers that fail to start are retried on the next call.
    /// Must run inside a tokio runtime.
    pub fn update(&mut self, wanted: &BTreeMap<u16, ServiceHealth>) -> Vec<HealthError> {
        self.servers.retain(|port, s| {
            let keep = wanted.get(port).is_some_and(|w| {
                let st = s.state.lock().unwrap_or_else(|e| e.into_inner());
                st.namespace == w.namespace && st.name == w.name
            });
            if !keep {
                tracing::info!(port, addrs = ?s.bound, "healthCheckNodePort server stopped");
            }
            keep
        });
        let mut errors = Vec::new();
        for (port, w) in wanted {
            if let Some(s) = self.servers.get(port) {
                *s.state.lock().unwrap_or_else(|e| e.into_inner()) = w.clone();
                continue;
            }
            match self.start(*port, w) {
                Ok(s) => {
                    tracing::info!(port, service = %format!("{}/{}", w.namespace, w.name),
                        addrs = ?s.bound, local_endpoints = w.local_endpoints,
                        "healthCheckNodePort server started");
                    self.servers.insert(*port, s);
                }
                Err(e) => errors.push(e),
            }
        }
        errors
    }

    /// The ports served and the addresses each listens on.
    pub fn bound(&self) -> BTreeMap<u16, Vec<SocketAddr>> {
        self.servers
            .iter()
            .map(|(p, s)| (*p, s.bound.clone()))
            .collect()
    }

    fn start(&self, port: u16, w: &ServiceHealth) -> Result<Server, HealthError> {
        let state = Arc::new(Mutex::new(w.clone()));
        let mut listeners = Vec::new();
        let bind_err = |addr, source| HealthError::Bind {
            namespace: w.namespace.clone(),
            name: w.name.clone(),
            port,
            addr,
            source,
        };
        if self.addrs.is_empty() {
            // One dual-stack socket when IPv6 is there, else IPv4 only.
            let v6 = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port);
            match listen(v6) {
                Ok(l) => listeners.push(l),
                Err(_) => {
                    let v4 = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port);
                    listeners.push(listen(v4).map_err(|e| bind_err(v4, e))?);
                }
            }
        } else {
            for ip in &self.addrs {
                let addr = SocketAddr::new(*ip, port);
                listeners.push(listen(addr).map_err(|e| bind_err(addr, e))?);
            }
        }
        let mut bound = Vec::new();
        let mut tasks = Vec::new();
        for l in listeners {
            if let Ok(a) = l.local_addr() {
                bound.push(a);
            }
            let state = state.clone();
            let healthy = self.proxy_healthy.clone();
            tasks.push(tokio::spawn(serve(l, state, healthy)));
        }
        Ok(Server {
            state,
            bound,
            tasks,
        })
    }
}

fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    // A restarted proxy must get its ports back while old connections sit in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(128)
}

async fn serve(listener: TcpListener, state: Arc<Mutex<ServiceHealth>>, healthy: Arc<AtomicBool>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let (code, body) = {
                    let st = state.lock().unwrap_or_else(|e| e.into_inner());
                    answer(&st, healthy.load(Ordering::Relaxed))
                };
                tokio::spawn(async move {
                    let _ =
                        tokio::time::timeout(Duration::from_secs(5), respond(stream, code, &body))
                            .await;
                });
            }
            Err(e) => {
                tracing::debug!(error = %e, "healthCheckNodePort accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// The status code and JSON body kube-proxy gives: 200 with local endpoints and the proxy
/// in sync, else 503. Pure.
pub fn answer(st: &ServiceHealth, proxy_healthy: bool) -> (u16, String) {
    // Written by hand to keep kube-proxy's key order (serde_json's maps sort keys).
    let quote = |s: &str| serde_json::Value::from(s).to_string();
    let body = format!(
        r#"{{"service":{{"namespace":{},"name":{}}},"localEndpoints":{},"serviceProxyHealthy":{}}}"#,
        quote(&st.namespace),
        quote(&st.name),
        st.local_endpoints,
        proxy_healthy
    );
    let code = if st.local_endpoints > 0 && proxy_healthy {
        200
    } else {
        503
    };
    (code, body)
}

async fn respond(mut stream: TcpStream, code: u16, body: &str) -> std::io::Result<()> {
    // Read the request head (any method and path get the same answer, as kube-proxy's).
    let mut buf = [0u8; 2048];
    let mut len = 0;
    while len < buf.len() && !buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf[len..]).await?;
        if n == 0 {
            break;
        }
        len += n;
    }
    let reason = if code == 200 {
        "OK"
    } else {
        "Service Unavailable"
    };
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nX-Content-Type-Options: nosniff\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(name: &str, n: usize) -> ServiceHealth {
        ServiceHealth {
            namespace: "ns".into(),
            name: name.into(),
            local_endpoints: n,
        }
    }

    async fn get(addr: SocketAddr) -> std::io::Result<String> {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await?;
        let mut out = String::new();
        s.read_to_string(&mut out).await?;
        Ok(out)
    }

    /// A port free now (bound and released); the test binds 127.0.0.1 only.
    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    #[test]
    fn answers_as_kube_proxy() {
        let (code, body) = answer(&sh("svc", 2), true);
        assert_eq!(code, 200);
        assert_eq!(
            body,
            r#"{"service":{"namespace":"ns","name":"svc"},"localEndpoints":2,"serviceProxyHealthy":true}"#
        );
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["service"]["namespace"], "ns");
        let odd = ServiceHealth {
            namespace: "n\"s".into(),
            ..sh("x", 1)
        };
        let v: serde_json::Value = serde_json::from_str(&answer(&odd, true).1).unwrap();
        assert_eq!(v["service"]["namespace"], "n\"s");
        assert_eq!(answer(&sh("svc", 0), true).0, 503);
        let (code, body) = answer(&sh("svc", 2), false);
        assert_eq!(code, 503);
        assert!(body.contains(r#""serviceProxyHealthy":false"#));
    }

    #[tokio::test]
    async fn servers_follow_the_services() {
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let mut hs = HealthServers::new(vec![lo]);
        let port = free_port();
        let addr = SocketAddr::new(lo, port);
        let mut wanted = BTreeMap::from([(port, sh("web", 1))]);
        assert!(hs.update(&wanted).is_empty());
        assert_eq!(hs.bound()[&port], vec![addr]);
        let r = get(addr).await.unwrap();
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(r.contains("Content-Type: application/json\r\n"), "{r}");
        assert!(r.contains("X-Content-Type-Options: nosniff\r\n"), "{r}");
        assert!(r.ends_with(r#"{"service":{"namespace":"ns","name":"web"},"localEndpoints":1,"serviceProxyHealthy":true}"#), "{r}");

        // The count changes: same socket, new answer.
        wanted.insert(port, sh("web", 0));
        assert!(hs.update(&wanted).is_empty());
        let r = get(addr).await.unwrap();
        assert!(r.starts_with("HTTP/1.1 503 Service Unavailable\r\n"), "{r}");
        assert!(r.contains(r#""localEndpoints":0"#), "{r}");

        // The proxy out of sync: 503 even with endpoints.
        wanted.insert(port, sh("web", 3));
        hs.update(&wanted);
        hs.set_proxy_healthy(false);
        assert!(get(addr).await.unwrap().starts_with("HTTP/1.1 503"));
        hs.set_proxy_healthy(true);

        // The Service goes: the port is freed.
        wanted.clear();
        assert!(hs.update(&wanted).is_empty());
        assert!(hs.bound().is_empty());
        let mut freed = false;
        for _ in 0..100 {
            if std::net::TcpListener::bind(addr).is_ok() {
                freed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(freed, "port {port} still bound");
    }

    #[tokio::test]
    async fn a_taken_port_is_an_error_naming_the_service_and_retried() {
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let mut hs = HealthServers::new(vec![lo]);
        let wanted = BTreeMap::from([(port, sh("web", 1))]);
        let errs = hs.update(&wanted);
        assert_eq!(errs.len(), 1);
        let msg = errs[0].to_string();
        assert!(
            msg.starts_with(&format!(
                "Service ns/web: healthCheckNodePort {port}: listening on 127.0.0.1:{port}:"
            )),
            "{msg}"
        );
        drop(taken);
        assert!(
            hs.update(&wanted).is_empty(),
            "retried once the port is free"
        );
        assert!(
            get(SocketAddr::new(lo, port))
                .await
                .unwrap()
                .starts_with("HTTP/1.1 200")
        );
    }

    #[tokio::test]
    async fn another_service_on_the_port_restarts_the_server() {
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let port = free_port();
        let mut hs = HealthServers::new(vec![lo]);
        hs.update(&BTreeMap::from([(port, sh("a", 1))]));
        let mut errs = hs.update(&BTreeMap::from([(port, sh("b", 1))]));
        // The old listener is dropped by an abort that may land a moment later.
        for _ in 0..100 {
            if errs.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            errs = hs.update(&BTreeMap::from([(port, sh("b", 1))]));
        }
        assert!(errs.is_empty(), "{errs:?}");
        let r = get(SocketAddr::new(lo, port)).await.unwrap();
        assert!(r.contains(r#""name":"b""#), "{r}");
    }
}
