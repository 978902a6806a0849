//! The `inventory` binary: JSON logs (or text with `WARREN_LOG_FORMAT=text`), settings from the
//! environment, the worker until SIGTERM or Ctrl-C, then a graceful shutdown.

use warren_inventory::{Config, start};
use warren_messaging::process::{init_logging, shutdown_signal};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    init_logging();
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "inventory failed");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> warren_inventory::Result<()> {
    let config = Config::from_env()?;
    let service = start(config).await?;
    shutdown_signal().await;
    tracing::info!("shutting down");
    service.shutdown().await
}
