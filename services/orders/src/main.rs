//! The `orders` binary: JSON logs (`WARREN_LOG_FORMAT=text` for humans), configuration from the
//! environment, the worker until SIGTERM or Ctrl-C, then a graceful shutdown.

use std::process::ExitCode;

use tracing_subscriber::EnvFilter;
use warren_orders::{Config, start};

fn init_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let text = std::env::var("WARREN_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("text"));
    if text {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    } else {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init();
    }
}

async fn terminated() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    init_logging();
    let config = match Config::from_env() {
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
    terminated().await;
    tracing::info!("stopping orders worker");
    match service.shutdown().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "orders worker stopped with an error");
            ExitCode::FAILURE
        }
    }
}
