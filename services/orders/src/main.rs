//! The `orders` binary: JSON logs (`WARREN_LOG_FORMAT=text` for humans), options from the
//! command line or the environment (`orders --help`), the worker until SIGTERM or Ctrl-C, then a graceful shutdown.

use std::process::ExitCode;

use clap::Parser as _;
use warren_messaging::process::{init_logging, shutdown_signal};
use warren_orders::config::Args;
use warren_orders::start;

#[tokio::main]
async fn main() -> ExitCode {
    // `--help` and a malformed option end here, before any log line.
    let args = Args::parse();
    init_logging();
    let config = match args.into_config() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "invalid configuration");
            return ExitCode::FAILURE;
        }
    };
    let service = match start(config).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "orders worker failed to start");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(http_addr = %service.http_addr(), "orders worker running; SIGTERM or Ctrl-C stops it");
    shutdown_signal().await;
    tracing::info!("stopping orders worker");
    match service.shutdown().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "orders worker stopped with an error");
            ExitCode::FAILURE
        }
    }
}
