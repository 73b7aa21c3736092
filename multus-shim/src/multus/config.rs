//! Multus's own configuration (`00-multus.conf` / `.conflist`, the configuration on stdin),
//! with Multus's key names and defaults.

use std::path::PathBuf;

/// The meta-plugin's configuration as Multus reads it. Defaults are Multus's.
#[derive(Debug, Clone, PartialEq)]
pub struct MultusConf {
    /// `cniVersion`: results are printed in this version.
    pub cni_version: String,
    /// `name`.
    pub name: String,
    /// `delegates`: inline delegate configurations, the first the cluster network
    /// (ignored when `clusterNetwork` is set).
    pub delegates: Vec<serde_json::Value>,
    /// `clusterNetwork`: a NetworkAttachmentDefinition name, a configuration's `name` in
    /// `confDir`, a directory, or a file path.
    pub cluster_network: Option<String>,
    /// `defaultNetworks`: attached to every pod outside `systemNamespaces`.
    pub default_networks: Vec<String>,
    /// `confDir` (default `/etc/cni/multus/net.d`).
    pub conf_dir: PathBuf,
    /// `cniDir`: the delegate and result caches (default `/var/lib/cni/multus`).
    pub cni_dir: PathBuf,
    /// `binDir`: searched for delegate binaries before `CNI_PATH` (default `/opt/cni/bin`).
    pub bin_dir: Vec<PathBuf>,
    /// `kubeconfig`.
    pub kubeconfig: Option<PathBuf>,
    /// `stateDir` (metalnet's): the embedded default's state directory (else
    /// `METALNET_STATE_DIR`).
    pub state_dir: Option<PathBuf>,
    /// `namespaceIsolation`.
    pub namespace_isolation: bool,
    /// `globalNamespaces` (default `["default"]`, as the comma string Multus reads).
    pub global_namespaces: Vec<String>,
    /// `systemNamespaces` (default `["kube-system"]`).
    pub system_namespaces: Vec<String>,
    /// `multusNamespace` (default `kube-system`).
    pub multus_namespace: String,
    /// `readinessindicatorfile`.
    pub readiness_indicator_file: Option<PathBuf>,
    /// `retryDeleteOnError`.
    pub retry_delete_on_error: bool,
    /// `daemonSocketDir` (thick mode: the shim forwards to `<dir>/multus.sock`).
    pub daemon_socket_dir: Option<PathBuf>,
    /// `logFile`, `logLevel`, `logToStderr`.
    pub log_file: Option<PathBuf>,
    pub log_level: Option<String>,
    pub log_to_stderr: bool,
    /// `runtimeConfig` the runtime passed (capability arguments for the cluster network).
    pub runtime_config: serde_json::Map<String, serde_json::Value>,
    /// The configuration as received, for what the above does not cover.
    pub raw: serde_json::Value,
}
