//! Flags shared by every metalnet daemon, and the choice of cluster-state source they imply.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::state::{Kind, Source, StateError};

/// Output format of the logs.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// The flags every daemon takes, with the same names and meanings everywhere.
#[derive(clap::Args, Clone, Debug)]
pub struct CommonArgs {
    /// Kubeconfig file to reach the API server. Without it, and without --state-dir, the
    /// in-cluster service account is used, else ~/.kube/config.
    #[arg(long, value_name = "PATH", global = true)]
    pub kubeconfig: Option<PathBuf>,

    /// Run on the embedded default instead of Kubernetes: a directory of ordinary YAML
    /// manifests (the same ones you would `kubectl apply`), watched for changes. What
    /// metalnet writes (Service status, annotations, status objects, events) goes under
    /// DIR/status/; your files are never rewritten.
    #[arg(long, value_name = "DIR", env = "METALNET_STATE_DIR", global = true)]
    pub state_dir: Option<PathBuf>,

    /// Name of the node this process runs on (daemons that run per node need it). A
    /// DaemonSet sets NODE_NAME from spec.nodeName.
    #[arg(long, value_name = "NAME", env = "NODE_NAME", global = true)]
    pub node_name: Option<String>,

    /// Address for the HTTP endpoint serving Prometheus metrics on /metrics and health on
    /// /healthz and /readyz; `off` disables it. Default: 0.0.0.0 on the daemon's own port
    /// (controller 7472, speaker 7473, vxlan 7474, router 7475).
    #[arg(long, value_name = "ADDR:PORT|off", global = true)]
    pub metrics_addr: Option<String>,

    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,

    /// Log level or filter (`info`, `debug`, `metalnet=debug,info`; RUST_LOG syntax).
    #[arg(long, value_name = "FILTER", default_value = "info", global = true)]
    pub log_level: String,
}

/// Errors in the shared flags.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("--metrics-addr {value:?}: expected ADDR:PORT (e.g. 0.0.0.0:7472) or `off`")]
    MetricsAddr { value: String },
    #[error("--node-name is required (or the NODE_NAME environment variable)")]
    NodeName,
}

impl CommonArgs {
    /// The metrics address to listen on, `None` when disabled.
    pub fn metrics_addr(&self, default_port: u16) -> Result<Option<SocketAddr>, CliError> {
        match self.metrics_addr.as_deref() {
            None => Ok(Some(SocketAddr::from(([0, 0, 0, 0], default_port)))),
            Some("off") => Ok(None),
            Some(v) => v.parse().map(Some).map_err(|_| CliError::MetricsAddr {
                value: v.to_string(),
            }),
        }
    }

    /// The node name, required by per-node daemons.
    pub fn node_name(&self) -> Result<&str, CliError> {
        self.node_name
            .as_deref()
            .filter(|n| !n.is_empty())
            .ok_or(CliError::NodeName)
    }

    /// Where the cluster state comes from: the state directory when given, else Kubernetes.
    pub async fn source(&self) -> Result<Source, StateError> {
        match &self.state_dir {
            Some(dir) => Ok(Source::Dir(dir.clone())),
            None => Ok(Source::Kube(
                crate::state::kube::client(self.kubeconfig.as_deref()).await?,
            )),
        }
    }

    /// Starts the cluster state for `kinds` from the source these flags name.
    pub async fn cluster_state(
        &self,
        kinds: impl IntoIterator<Item = Kind>,
    ) -> Result<crate::state::ClusterState, StateError> {
        crate::state::ClusterState::start(self.source().await?, kinds).await
    }

    /// Installs the global tracing subscriber as the flags say.
    pub fn init_logging(&self) {
        super::telemetry::init_logging(self.log_format, &self.log_level);
    }
}

/// The flags in a binary's long `--help` output that have no description: clap prints each
/// flag on its own line and its description on the following lines, indented further. Each
/// binary's tests call this so every flag stays explained.
pub fn undescribed_flags(long_help: &str) -> Vec<String> {
    let lines: Vec<&str> = long_help.lines().collect();
    lines
        .iter()
        .enumerate()
        .filter(|(_, line)| {
            let t = line.trim_start();
            t.starts_with('-') && line.len() - t.len() <= 6
        })
        .filter(|(i, _)| {
            let next = lines.get(i + 1).copied().unwrap_or("");
            next.trim().is_empty() || next.trim_start().starts_with('-')
        })
        .map(|(_, line)| line.trim().to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_flags_without_description() {
        let help = "Usage: x\n\nOptions:\n      --a <A>\n          Does a\n\n      --b\n\n  -h, --help\n          Print help\n";
        assert_eq!(undescribed_flags(help), vec!["--b".to_string()]);
    }
}
