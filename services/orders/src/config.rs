//! The orders worker's settings, read from `WARREN_*` environment variables.
//!
//! Tests build a [`Config`] by hand; `from_env` is for the binary. URLs may hold credentials and
//! are only ever logged through `warren_messaging::config::redact`.

use std::net::SocketAddr;
use std::time::Duration;

use warren_messaging::config::WorkerSettings;

use crate::{Error, Result};

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

    /// Reads `WARREN_AMQP_URL` (with `WARREN_AMQP_USERNAME` / `WARREN_AMQP_PASSWORD`),
    /// `WARREN_DATABASE_URL`, `WARREN_HTTP_ADDR`, `WARREN_INVENTORY_URL`,
    /// `WARREN_RESERVATION_REDRIVE_INTERVAL_SECONDS` and the [`WorkerSettings`].
    pub fn from_env() -> Result<Config> {
        Config::from_lookup(|name| std::env::var(name).ok())
    }

    fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Config> {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let mut config = Config::local();
        if get("WARREN_AMQP_URL").is_some() || get("WARREN_AMQP_USERNAME").is_some() {
            config.amqp_url = warren_messaging::config::amqp_url_from(&lookup);
        }
        if let Some(url) = get("WARREN_DATABASE_URL") {
            config.database_url = url;
        }
        if let Some(addr) = get("WARREN_HTTP_ADDR") {
            config.http_addr = addr.trim().parse().map_err(|e| {
                Error::Config(format!("WARREN_HTTP_ADDR `{addr}` is not host:port: {e}"))
            })?;
        }
        if let Some(url) = get("WARREN_INVENTORY_URL") {
            reqwest::Url::parse(&url).map_err(|e| {
                Error::Config(format!(
                    "WARREN_INVENTORY_URL `{}` is not a URL: {e}",
                    warren_messaging::config::redact(&url)
                ))
            })?;
            config.inventory_url = url;
        }
        config.worker = WorkerSettings::from_lookup(&lookup)?;
        if let Some(secs) = get("WARREN_RESERVATION_REDRIVE_INTERVAL_SECONDS") {
            let n: u64 = secs.trim().parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                Error::Config(format!(
                    "WARREN_RESERVATION_REDRIVE_INTERVAL_SECONDS `{secs}` is not a positive number of seconds"
                ))
            })?;
            config.redrive_interval = Duration::from_secs(n);
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        let c = Config::from_lookup(|_| None).unwrap();
        assert_eq!(c.http_addr.to_string(), DEFAULT_HTTP_ADDR);
        assert_eq!(c.database_url, DEFAULT_DATABASE_URL);
        assert_eq!(c.inventory_url, DEFAULT_INVENTORY_URL);
        let c = Config::from_lookup(|k| match k {
            "WARREN_HTTP_ADDR" => Some("0.0.0.0:9000".into()),
            "WARREN_RESERVATION_REDRIVE_INTERVAL_SECONDS" => Some("2".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(c.http_addr.port(), 9000);
        assert_eq!(c.redrive_interval, Duration::from_secs(2));
    }

    #[test]
    fn bad_values_name_the_variable() {
        let err = Config::from_lookup(|k| (k == "WARREN_HTTP_ADDR").then(|| "nope".into()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("WARREN_HTTP_ADDR"), "{err}");
        let err = Config::from_lookup(|k| {
            (k == "WARREN_RESERVATION_REDRIVE_INTERVAL_SECONDS").then(|| "0".into())
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("REDRIVE"), "{err}");
    }
}
