//! The `warren` binary: prints the CRDs and reconciles topology files straight into RabbitMQ.
//! Everything it does is a thin call into the `warren_operator` library.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Warren: RabbitMQ topology as Kubernetes resources.
#[derive(Parser)]
#[command(name = "warren", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print every CustomResourceDefinition as multi-document YAML (what crds/ holds).
    Crds,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crds => match warren_operator::crd::crds_yaml() {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("error: cannot render the CRDs: {error}");
                ExitCode::from(2)
            }
        },
    }
}
