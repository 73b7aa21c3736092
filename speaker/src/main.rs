//! metalnet-speaker: per node, announces the LoadBalancer addresses the controller assigned.

use clap::Parser;
use metalnet_config::cli::CommonArgs;

/// Announces LoadBalancer addresses from this node (MetalLB speaker compatible).
///
/// NOT YET IMPLEMENTED: this build only describes what the speaker will do.
///
/// Planned: runs on every node (DaemonSet); reads the addresses the controller wrote to
/// Services' status and MetalLB's L2Advertisement, BGPAdvertisement, BGPPeer and Community
/// objects; in layer 2 mode one elected node per address answers ARP and NDP for it; in BGP
/// mode every selected node announces it to the configured routers.
#[derive(Parser, Debug)]
#[command(name = "metalnet-speaker", version)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
}

fn main() -> std::process::ExitCode {
    let _cli = Cli::parse();
    eprintln!("metalnet-speaker is not implemented yet; see --help for what it will do");
    std::process::ExitCode::from(2)
}
