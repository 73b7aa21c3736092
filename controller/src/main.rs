//! metalnet-controller: assigns LoadBalancer addresses from MetalLB IPAddressPools.

mod validate_cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use metalnet_config::cli::CommonArgs;

/// Assigns external addresses from MetalLB IPAddressPools to Services of type LoadBalancer
/// and writes them to the Services' status (MetalLB controller compatible).
#[derive(Parser, Debug)]
#[command(name = "metalnet-controller", version)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Check manifests (files or directories of YAML/JSON) without a cluster: prints every
    /// problem, naming the object, the field and the reason; exits 1 when there is an error.
    Validate {
        /// Files or directories to check (directories recursively).
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Validate { paths }) => {
            match validate_cmd::run(&paths, &mut std::io::stdout().lock()) {
                Ok(false) => ExitCode::SUCCESS,
                Ok(true) => ExitCode::from(1),
                Err(e) => {
                    eprintln!("metalnet-controller validate: {e}");
                    ExitCode::from(2)
                }
            }
        }
        None => {
            let _ = &cli.common;
            eprintln!("metalnet-controller: allocation is not implemented yet; `validate` works");
            ExitCode::from(2)
        }
    }
}
