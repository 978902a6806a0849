//! The `inventory` binary: JSON logs (or text with `WARREN_LOG_FORMAT=text`), options from the
//! command line or the environment (`inventory --help`), the worker until SIGTERM or Ctrl-C, then a graceful shutdown.

use clap::Parser as _;
use warren_inventory::config::Args;
use warren_inventory::start;
use warren_messaging::process::{init_logging, shutdown_signal};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // `--help` and a malformed option end here, before any log line.
    let args = Args::parse();
    init_logging();
    match run(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "inventory failed");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> warren_inventory::Result<()> {
    let config = args.into_config()?;
    let service = start(config).await?;
    shutdown_signal().await;
    tracing::info!("shutting down");
    service.shutdown().await
}
