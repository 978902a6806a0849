//! The orders worker's settings: [`Args`], the binary's options, each also read from its
//! `WARREN_*` variable (clap's `env`, so `orders --help` lists them all).
//!
//! Tests build a [`Config`] by hand; [`Args`] is for the binary. URLs may hold credentials and
//! are only ever logged through `warren_messaging::config::redact`.

use std::net::SocketAddr;
use std::time::Duration;

use warren_messaging::config::WorkerSettings;

use crate::Result;

/// Default database of the orders worker.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/warren_orders";
/// Default HTTP listen address.
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:8082";
/// Default base URL of the inventory worker.
pub const DEFAULT_INVENTORY_URL: &str = "http://127.0.0.1:8081";

/// Everything the orders worker needs to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// RabbitMQ, `WARREN_AMQP_URL`.
    pub amqp_url: String,
    /// This worker's own database, `WARREN_DATABASE_URL`; created at start if missing.
    pub database_url: String,
    /// Where the HTTP API listens, `WARREN_HTTP_ADDR` (port 0 picks a free port).
    pub http_addr: SocketAddr,
    /// Base URL of the inventory worker, `WARREN_INVENTORY_URL`.
    pub inventory_url: String,
    /// How often the reservation driver looks for pending orders to re-drive,
    /// `WARREN_RESERVATION_REDRIVE_INTERVAL_SECONDS` (default 5).
    pub redrive_interval: Duration,
    /// Per-request timeout of calls to inventory (default 5 s).
    pub inventory_timeout: Duration,
    /// Attempts of one reservation call before the line waits for the driver's next round
    /// (default 3).
    pub inventory_attempts: u32,
    /// Largest delay between two driver rounds of one order (default 60 s).
    pub redrive_backoff_max: Duration,
    /// The connection budget and processed-id retention every worker reads
    /// (`WARREN_DATABASE_MAX_CONNECTIONS`, `WARREN_CONSUMER_LANES`,
    /// `WARREN_PROCESSED_RETENTION_SECONDS`).
    pub worker: WorkerSettings,
}

impl Config {
    /// Defaults for a local machine.
    pub fn local() -> Config {
        Config {
            amqp_url: warren_messaging::config::DEFAULT_AMQP_URL.to_owned(),
            database_url: DEFAULT_DATABASE_URL.to_owned(),
            // A literal that always parses.
            http_addr: SocketAddr::from(([127, 0, 0, 1], 8082)),
            inventory_url: DEFAULT_INVENTORY_URL.to_owned(),
            redrive_interval: Duration::from_secs(5),
            inventory_timeout: Duration::from_secs(5),
            inventory_attempts: 3,
            redrive_backoff_max: Duration::from_secs(60),
            worker: WorkerSettings::default(),
        }
    }
}

/// The `orders` binary's options; each is also read from its `WARREN_*` variable.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "orders", version, about = "Warren's orders worker (ADR-029)",
          after_help = warren_messaging::config::ENV_ONLY_HELP)]
pub struct Args {
    /// RabbitMQ; its vhost must hold manifests/topology.
    #[arg(long, env = "WARREN_AMQP_URL", default_value = warren_messaging::config::DEFAULT_AMQP_URL,
          hide_env_values = true)]
    pub amqp_url: String,
    /// This worker's own database, created if missing.
    #[arg(long, env = "WARREN_DATABASE_URL", default_value = DEFAULT_DATABASE_URL,
          hide_env_values = true)]
    pub database_url: String,
    /// Where the HTTP API listens (port 0 picks a free port).
    #[arg(long, env = "WARREN_HTTP_ADDR", default_value = DEFAULT_HTTP_ADDR)]
    pub http_addr: SocketAddr,
    /// Base URL of the inventory worker's API.
    #[arg(long, env = "WARREN_INVENTORY_URL", default_value = DEFAULT_INVENTORY_URL,
          value_parser = parse_http_url)]
    pub inventory_url: String,
    /// Seconds between two looks for pending orders to re-drive.
    #[arg(long, env = "WARREN_RESERVATION_REDRIVE_INTERVAL_SECONDS", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub reservation_redrive_interval_seconds: u64,
    /// The connection budget and processed-id retention.
    #[command(flatten)]
    pub worker: warren_messaging::config::WorkerArgs,
}

fn parse_http_url(text: &str) -> std::result::Result<String, String> {
    reqwest::Url::parse(text)
        .map(|_| text.to_owned())
        .map_err(|e| format!("not a URL: {e}"))
}

impl Args {
    /// The configuration these options describe, with the AMQP credentials of the
    /// environment.
    pub fn into_config(self) -> Result<Config> {
        Ok(Config {
            amqp_url: warren_messaging::config::amqp_url_with_env_credentials(&self.amqp_url),
            database_url: self.database_url,
            http_addr: self.http_addr,
            inventory_url: self.inventory_url,
            redrive_interval: Duration::from_secs(self.reservation_redrive_interval_seconds),
            worker: self.worker.settings()?,
            ..Config::local()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    fn parse(flags: &[&str]) -> std::result::Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("orders").chain(flags.iter().copied()))
    }

    #[test]
    fn defaults_and_overrides() {
        let c = parse(&[])
            .unwrap_or_else(|e| panic!("{e}"))
            .into_config()
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.http_addr.to_string(), DEFAULT_HTTP_ADDR);
        assert_eq!(c.database_url, DEFAULT_DATABASE_URL);
        assert_eq!(c.inventory_url, DEFAULT_INVENTORY_URL);
        let c = parse(&[
            "--http-addr=0.0.0.0:9000",
            "--reservation-redrive-interval-seconds=2",
        ])
        .unwrap_or_else(|e| panic!("{e}"))
        .into_config()
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.http_addr.port(), 9000);
        assert_eq!(c.redrive_interval, Duration::from_secs(2));
    }

    #[test]
    fn bad_values_name_the_option_and_its_variable() {
        for (flag, name) in [
            ("--http-addr=nope", "--http-addr"),
            (
                "--reservation-redrive-interval-seconds=0",
                "--reservation-redrive-interval-seconds",
            ),
            ("--inventory-url=not a url", "--inventory-url"),
        ] {
            let err = parse(&[flag]).map(|_| ()).unwrap_err().to_string();
            assert!(err.contains(name), "{err}");
        }
        let help = parse(&["--help"]).map(|_| ()).unwrap_err().to_string();
        for variable in [
            "WARREN_AMQP_URL",
            "WARREN_DATABASE_URL",
            "WARREN_DATABASE_MAX_CONNECTIONS",
            "WARREN_AMQP_PASSWORD",
        ] {
            assert!(help.contains(variable), "--help names {variable}: {help}");
        }
    }
}
