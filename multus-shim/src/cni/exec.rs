//! Running CNI plugins as libcni does: finding the binary, building each plugin's request
//! from a network configuration (one plugin or a list), and reading its answer.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::io::AsyncWriteExt;

use super::CniError;
use super::env::{Command, join_args};
use super::version;

/// Where and how plugins run.
#[derive(Debug, Clone)]
pub struct Exec {
    /// Searched in order for plugin binaries (`binDir` entries, then `CNI_PATH`).
    pub search: Vec<PathBuf>,
    /// How long one plugin call may take before it is killed.
    pub timeout: Duration,
}

/// What one call of a network configuration runs on.
#[derive(Debug, Clone, Default)]
pub struct RuntimeConf {
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    pub cni_args: Vec<(String, String)>,
    /// Capability arguments offered; each plugin gets those it declares.
    pub capability_args: Map<String, Value>,
}

/// The plugins of a network configuration: itself, or the `plugins` of a list.
pub fn plugins_of(conf: &Value) -> Vec<Value> {
    match conf.get("plugins").and_then(Value::as_array) {
        Some(list) => list.clone(),
        None => vec![conf.clone()],
    }
}

/// The network's `name`.
pub fn network_name(conf: &Value) -> &str {
    conf.get("name").and_then(Value::as_str).unwrap_or_default()
}

/// The network's `cniVersion`.
pub fn network_version(conf: &Value) -> &str {
    conf.get("cniVersion")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// Checks a plugin `type` is a plain file name: it must never name a path out of the plugin
/// directories. Error 7 naming the network and the field.
pub fn check_type(network: &str, ty: &str) -> Result<(), CniError> {
    let bad = if ty.is_empty() {
        Some("is empty")
    } else if ty.contains('/') {
        Some("contains '/'")
    } else if ty == "." || ty == ".." {
        Some("is '.' or '..'")
    } else if ty.contains('\0') {
        Some("contains a NUL")
    } else {
        None
    };
    match bad {
        Some(why) => Err(CniError::new(
            CniError::INVALID_CONFIG,
            format!("network {network:?}: field type {ty:?} {why}: it must be a plain file name"),
        )),
        None => Ok(()),
    }
}

impl Exec {
    /// The binary for `ty`, first match in the search path.
    pub fn find(&self, network: &str, ty: &str) -> Result<PathBuf, CniError> {
        check_type(network, ty)?;
        for dir in &self.search {
            let p = dir.join(ty);
            if p.is_file() {
                return Ok(p);
            }
        }
        Err(CniError::new(
            CniError::INVALID_CONFIG,
            format!(
                "network {network:?}: plugin type {ty:?} not found in {}",
                if self.search.is_empty() {
                    "any directory (binDir and CNI_PATH are empty)".to_string()
                } else {
                    self.search
                        .iter()
                        .map(|d| d.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            ),
        ))
    }

    /// Runs one plugin binary with `conf` on stdin. Output on success (possibly empty);
    /// a CNI error object on failure, or one made from the exit status and stderr.
    pub async fn run(
        &self,
        network: &str,
        ty: &str,
        command: Command,
        rt: &RuntimeConf,
        conf: &Value,
    ) -> Result<Vec<u8>, CniError> {
        let bin = self.find(network, ty)?;
        let path = std::env::join_paths(&self.search)
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut cmd = tokio::process::Command::new(&bin);
        cmd.env("CNI_COMMAND", command.as_str())
            .env("CNI_CONTAINERID", &rt.container_id)
            .env("CNI_NETNS", &rt.netns)
            .env("CNI_IFNAME", &rt.ifname)
            .env("CNI_ARGS", join_args(&rt.cni_args))
            .env("CNI_PATH", path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let what = format!("network {network:?}: plugin {ty:?} ({})", command.as_str());
        let mut child = spawn(&mut cmd).await.map_err(|e| {
            CniError::new(
                CniError::IO,
                format!("{what}: cannot start {}: {e}", bin.display()),
            )
        })?;
        let input = serde_json::to_vec(conf).unwrap_or_default();
        let mut stdin = child.stdin.take();
        let fut = async move {
            if let Some(s) = stdin.as_mut() {
                // A plugin that exits without reading its stdin is not an error here; its
                // exit status says what happened.
                let _ = s.write_all(&input).await;
            }
            drop(stdin);
            child.wait_with_output().await
        };
        let out = match tokio::time::timeout(self.timeout, fut).await {
            Err(_) => {
                return Err(CniError::new(
                    CniError::TRY_AGAIN_LATER,
                    format!("{what}: no answer within {:?}, killed", self.timeout),
                ));
            }
            Ok(Err(e)) => {
                return Err(CniError::new(CniError::IO, format!("{what}: {e}")));
            }
            Ok(Ok(o)) => o,
        };
        if out.status.success() {
            return Ok(out.stdout);
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stderr = stderr.trim();
        if let Ok(v) = serde_json::from_slice::<Value>(&out.stdout)
            && let Some(code) = v.get("code").and_then(Value::as_u64)
        {
            let msg = v.get("msg").and_then(Value::as_str).unwrap_or_default();
            let details = v.get("details").and_then(Value::as_str).unwrap_or_default();
            return Err(CniError::new(
                u32::try_from(code).unwrap_or(999),
                format!("{what}: {msg}"),
            )
            .with_details(details));
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        Err(CniError::new(
            999,
            format!(
                "{what}: failed with {} and no CNI error object (stdout {:?}, stderr {:?})",
                out.status,
                truncate(stdout.trim(), 512),
                truncate(stderr, 512)
            ),
        ))
    }

    /// The request one plugin of a network gets: its own configuration with the network's
    /// `name` and `cniVersion`, `runtimeConfig` holding only the capability arguments it
    /// declares, `capabilities` removed, and `prevResult` when given.
    pub fn plugin_request(
        net: &Value,
        plugin: &Value,
        rt: &RuntimeConf,
        prev: Option<&Value>,
        extra: Option<(&str, Value)>,
    ) -> Value {
        let mut p = plugin.as_object().cloned().unwrap_or_default();
        p.insert("name".into(), network_name(net).into());
        p.insert("cniVersion".into(), network_version(net).into());
        let caps: Vec<String> = p
            .remove("capabilities")
            .and_then(|c| c.as_object().cloned())
            .map(|m| {
                m.into_iter()
                    .filter(|(_, v)| v.as_bool() == Some(true))
                    .map(|(k, _)| k)
                    .collect()
            })
            .unwrap_or_default();
        let runtime: Map<String, Value> = rt
            .capability_args
            .iter()
            .filter(|(k, _)| caps.contains(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if runtime.is_empty() {
            p.remove("runtimeConfig");
        } else {
            p.insert("runtimeConfig".into(), Value::Object(runtime));
        }
        match prev {
            Some(r) => {
                p.insert("prevResult".into(), r.clone());
            }
            None => {
                p.remove("prevResult");
            }
        }
        if let Some((k, v)) = extra {
            p.insert(k.into(), v);
        }
        Value::Object(p)
    }

    fn plugin_type<'a>(net: &str, plugin: &'a Value, i: usize) -> Result<&'a str, CniError> {
        plugin.get("type").and_then(Value::as_str).ok_or_else(|| {
            CniError::new(
                CniError::INVALID_CONFIG,
                format!("network {net:?}: plugins[{i}]: field type is missing or not a string"),
            )
        })
    }

    /// ADD of a network: each plugin in turn with the previous one's result. Returns the
    /// last result (as printed, in the network's version).
    pub async fn add_network(&self, net: &Value, rt: &RuntimeConf) -> Result<Value, CniError> {
        let name = network_name(net).to_string();
        let ver = network_version(net).to_string();
        version::layout(&ver).map_err(|e| named(&name, e))?;
        let mut prev: Option<Value> = None;
        for (i, plugin) in plugins_of(net).iter().enumerate() {
            let ty = Self::plugin_type(&name, plugin, i)?;
            let req = Self::plugin_request(net, plugin, rt, prev.as_ref(), None);
            let out = self.run(&name, ty, Command::Add, rt, &req).await?;
            let v: Value = serde_json::from_slice(&out).map_err(|e| {
                CniError::new(
                    CniError::DECODE,
                    format!("network {name:?}: plugin {ty:?} (ADD) printed no result: {e}"),
                )
            })?;
            // Checks it is a result this version can read; a chained plugin gets it as is.
            super::CniResult::parse(&v, &ver).map_err(|e| named(&name, e))?;
            prev = Some(v);
        }
        prev.ok_or_else(|| {
            CniError::new(
                CniError::INVALID_CONFIG,
                format!("network {name:?}: field plugins is empty"),
            )
        })
    }

    /// DEL of a network: plugins in reverse, each with `prev` (the cached result) as
    /// `prevResult`. Every plugin is called; the first error is returned.
    pub async fn del_network(
        &self,
        net: &Value,
        rt: &RuntimeConf,
        prev: Option<&Value>,
    ) -> Result<(), CniError> {
        let name = network_name(net).to_string();
        let mut first = None;
        for (i, plugin) in plugins_of(net).iter().enumerate().rev() {
            let r = async {
                let ty = Self::plugin_type(&name, plugin, i)?;
                let req = Self::plugin_request(net, plugin, rt, prev, None);
                self.run(&name, ty, Command::Del, rt, &req).await
            }
            .await;
            if let Err(e) = r {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// CHECK of a network with its cached result.
    pub async fn check_network(
        &self,
        net: &Value,
        rt: &RuntimeConf,
        prev: &Value,
    ) -> Result<(), CniError> {
        let name = network_name(net).to_string();
        let ver = network_version(net);
        if !version::at_least(ver, "0.4.0") {
            return Err(CniError::new(
                CniError::INCOMPATIBLE_VERSION,
                format!(
                    "network {name:?}: CHECK needs cniVersion 0.4.0 or later, the configuration has {ver:?}"
                ),
            ));
        }
        if net.get("disableCheck").and_then(Value::as_bool) == Some(true) {
            return Ok(());
        }
        for (i, plugin) in plugins_of(net).iter().enumerate() {
            let ty = Self::plugin_type(&name, plugin, i)?;
            let req = Self::plugin_request(net, plugin, rt, Some(prev), None);
            self.run(&name, ty, Command::Check, rt, &req).await?;
        }
        Ok(())
    }

    /// GC (1.1.0) of a network with the attachments still valid.
    pub async fn gc_network(&self, net: &Value, valid: &Value) -> Result<(), CniError> {
        let name = network_name(net).to_string();
        if net.get("disableGC").and_then(Value::as_bool) == Some(true) {
            return Ok(());
        }
        let rt = RuntimeConf::default();
        for (i, plugin) in plugins_of(net).iter().enumerate() {
            let ty = Self::plugin_type(&name, plugin, i)?;
            let req = Self::plugin_request(
                net,
                plugin,
                &rt,
                None,
                Some(("cni.dev/valid-attachments", valid.clone())),
            );
            self.run(&name, ty, Command::Gc, &rt, &req).await?;
        }
        Ok(())
    }

    /// STATUS (1.1.0) of a network: every plugin must be ready.
    pub async fn status_network(&self, net: &Value) -> Result<(), CniError> {
        let name = network_name(net).to_string();
        let rt = RuntimeConf::default();
        for (i, plugin) in plugins_of(net).iter().enumerate() {
            let ty = Self::plugin_type(&name, plugin, i)?;
            let req = Self::plugin_request(net, plugin, &rt, None, None);
            self.run(&name, ty, Command::Status, &rt, &req).await?;
        }
        Ok(())
    }
}

fn named(network: &str, mut e: CniError) -> CniError {
    e.msg = format!("network {network:?}: {}", e.msg);
    e
}

fn truncate(s: &str, n: usize) -> &str {
    if s.len() <= n {
        return s;
    }
    let mut end = n;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Starts `cmd`, trying again for a moment while the binary is "busy": a plugin file that
/// was just written (an installer copying it, or another thread of this process forking
/// while it still held the file open for writing) cannot be executed until every writer has
/// closed it, which takes microseconds.
async fn spawn(cmd: &mut tokio::process::Command) -> std::io::Result<tokio::process::Child> {
    let mut tries = 0;
    loop {
        match cmd.spawn() {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && tries < 20 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            r => return r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn type_must_be_a_file_name() {
        for ty in ["", "/bin/sh", "../x", "..", ".", "a\0b", "x/.."] {
            let e = check_type("net1", ty).unwrap_err();
            assert_eq!(e.code, 7, "{ty:?}");
            assert!(
                e.msg.contains("\"net1\"") && e.msg.contains("field type"),
                "{}",
                e.msg
            );
        }
        check_type("n", "bridge").unwrap();
        check_type("n", "a..b").unwrap();
        let ex = Exec {
            search: vec!["/nonexistent-a".into(), "/nonexistent-b".into()],
            timeout: Duration::from_secs(1),
        };
        let e = ex.find("n", "nope").unwrap_err();
        assert!(
            e.msg.contains("\"nope\"") && e.msg.contains("/nonexistent-a, /nonexistent-b"),
            "{}",
            e.msg
        );
    }

    #[test]
    fn plugin_request_filters_capabilities() {
        let net = json!({"cniVersion": "1.0.0", "name": "n", "plugins": [
            {"type": "bridge", "capabilities": {"mac": true, "ips": false}, "runtimeConfig": {"stale": 1}}
        ]});
        let rt = RuntimeConf {
            capability_args:
                json!({"mac": "0a:00:00:00:00:01", "ips": ["192.0.2.1/24"], "portMappings": []})
                    .as_object()
                    .unwrap()
                    .clone(),
            ..Default::default()
        };
        let req = Exec::plugin_request(
            &net,
            &plugins_of(&net)[0],
            &rt,
            Some(&json!({"cniVersion":"1.0.0"})),
            None,
        );
        assert_eq!(
            req,
            json!({"type": "bridge", "name": "n", "cniVersion": "1.0.0",
                   "runtimeConfig": {"mac": "0a:00:00:00:00:01"},
                   "prevResult": {"cniVersion": "1.0.0"}})
        );
        let single = json!({"cniVersion": "0.3.1", "name": "s", "type": "ptp"});
        let req = Exec::plugin_request(
            &single,
            &plugins_of(&single)[0],
            &RuntimeConf::default(),
            None,
            None,
        );
        assert_eq!(req, single);
    }
}
