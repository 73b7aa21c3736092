//! multus-shim: a CNI meta-plugin (Multus compatible).

#![forbid(unsafe_code)]

use clap::Parser;

/// A CNI meta-plugin: the default network first, then one delegate per
/// NetworkAttachmentDefinition a pod asks for (Multus compatible).
///
/// NOT YET IMPLEMENTED: this build only describes what the plugin will do.
///
/// Planned: called by the container runtime as a CNI plugin (CNI_COMMAND ADD/DEL/CHECK/
/// VERSION, configuration on stdin); reads the pod's k8s.v1.cni.cncf.io/networks
/// annotation, runs the default network's plugin and then each requested delegate from
/// /usr/lib/cni (or /opt/cni/bin), and writes the network-status annotation.
#[derive(Parser, Debug)]
#[command(name = "multus-shim", version)]
struct Cli {}

fn main() -> std::process::ExitCode {
    let _cli = Cli::parse();
    // A CNI plugin must answer with a CNI error object on stdout.
    println!(
        "{{\"cniVersion\":\"1.0.0\",\"code\":999,\"msg\":\"multus-shim is not implemented yet\"}}"
    );
    std::process::ExitCode::from(1)
}
