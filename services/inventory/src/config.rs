//! The inventory worker's settings: read from `WARREN_*` environment variables by `from_env`,
//! or built by hand (tests do) since every field is public.

use std::net::SocketAddr;
use std::time::Duration;

use warren_messaging::config::WorkerSettings;

use crate::{Error, Result};

/// Default database: the local server's `warren_inventory`, created on first start.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/warren_inventory";
/// Default HTTP listen address.
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:8081";
/// Default time a reservation holds its stock: 15 minutes.
pub const DEFAULT_RESERVATION_TTL: Duration = Duration::from_secs(900);
/// Default pause between expiry sweeps.
pub const DEFAULT_EXPIRY_SWEEP_INTERVAL: Duration = Duration::from_secs(5);

/// How the inventory worker runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// RabbitMQ (`WARREN_AMQP_URL`); its vhost must hold manifests/topology.
    pub amqp_url: String,
    /// The inventory's own database (`WARREN_DATABASE_URL`), created if missing.
    pub database_url: String,
    /// Where the HTTP API listens (`WARREN_HTTP_ADDR`); port 0 picks a free one.
    pub http_addr: SocketAddr,
    /// How long a reservation holds stock (`WARREN_RESERVATION_TTL_SECONDS`).
    pub reservation_ttl: Duration,
    /// Pause between expiry sweeps (`WARREN_EXPIRY_SWEEP_INTERVAL_SECONDS`).
    pub expiry_sweep_interval: Duration,
    /// Reservations released per sweep transaction.
    pub expiry_sweep_batch: i64,
    /// The connection budget and processed-id retention every worker reads
    /// (`WARREN_DATABASE_MAX_CONNECTIONS`, `WARREN_CONSUMER_LANES`,
    /// `WARREN_PROCESSED_RETENTION_SECONDS`).
    pub worker: WorkerSettings,
}

impl Config {
    /// Settings for `amqp_url` and `database_url` with every other value at its default.
    pub fn new(amqp_url: &str, database_url: &str) -> Config {
        Config {
            amqp_url: amqp_url.to_owned(),
            database_url: database_url.to_owned(),
            http_addr: SocketAddr::from(([127, 0, 0, 1], 8081)),
            reservation_ttl: DEFAULT_RESERVATION_TTL,
            expiry_sweep_interval: DEFAULT_EXPIRY_SWEEP_INTERVAL,
            expiry_sweep_batch: 500,
            worker: WorkerSettings::default(),
        }
    }

    /// Reads the `WARREN_*` variables, with local defaults for those unset.
    pub fn from_env() -> Result<Config> {
        Config::from_lookup(|name| std::env::var(name).ok())
    }

    /// Like [`Config::from_env`] with `lookup` standing in for the environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Config> {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        // With WARREN_AMQP_USERNAME / WARREN_AMQP_PASSWORD (the Broker's Secret on Kubernetes).
        let amqp_url = warren_messaging::config::amqp_url_from(&lookup);
        let database_url =
            get("WARREN_DATABASE_URL").unwrap_or_else(|| DEFAULT_DATABASE_URL.to_owned());
        let mut config = Config::new(&amqp_url, &database_url);
        if let Some(addr) = get("WARREN_HTTP_ADDR") {
            config.http_addr = addr.trim().parse().map_err(|e| {
                Error::Config(format!("WARREN_HTTP_ADDR `{addr}` is not host:port: {e}"))
            })?;
        }
        if let Some(text) = get("WARREN_RESERVATION_TTL_SECONDS") {
            config.reservation_ttl = seconds("WARREN_RESERVATION_TTL_SECONDS", &text)?;
        }
        if let Some(text) = get("WARREN_EXPIRY_SWEEP_INTERVAL_SECONDS") {
            config.expiry_sweep_interval = seconds("WARREN_EXPIRY_SWEEP_INTERVAL_SECONDS", &text)?;
        }
        config.worker = WorkerSettings::from_lookup(&lookup)?;
        Ok(config)
    }
}

fn seconds(name: &str, text: &str) -> Result<Duration> {
    text.trim()
        .parse::<u64>()
        .ok()
        .filter(|n| *n > 0)
        .map(Duration::from_secs)
        .ok_or_else(|| {
            Error::Config(format!(
                "{name} `{text}` is not a positive number of seconds"
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn from(pairs: &[(&str, &str)]) -> Result<Config> {
        let env: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| env.get(k).cloned())
    }

    #[test]
    fn defaults_fit_a_local_machine() {
        let c = from(&[]).unwrap();
        assert_eq!(c.database_url, DEFAULT_DATABASE_URL);
        assert_eq!(c.http_addr.to_string(), DEFAULT_HTTP_ADDR);
        assert_eq!(c.reservation_ttl, Duration::from_secs(900));
        assert_eq!(c.expiry_sweep_interval, Duration::from_secs(5));
    }

    #[test]
    fn reads_and_checks_every_variable() {
        let c = from(&[
            ("WARREN_HTTP_ADDR", "0.0.0.0:9000"),
            ("WARREN_RESERVATION_TTL_SECONDS", "60"),
            ("WARREN_EXPIRY_SWEEP_INTERVAL_SECONDS", "2"),
            ("WARREN_DATABASE_URL", "postgres://u@db/inv"),
        ])
        .unwrap();
        assert_eq!(c.http_addr.port(), 9000);
        assert_eq!(c.reservation_ttl, Duration::from_secs(60));
        assert_eq!(c.expiry_sweep_interval, Duration::from_secs(2));
        assert_eq!(c.database_url, "postgres://u@db/inv");
        for (k, v) in [
            ("WARREN_HTTP_ADDR", "nowhere"),
            ("WARREN_RESERVATION_TTL_SECONDS", "0"),
            ("WARREN_EXPIRY_SWEEP_INTERVAL_SECONDS", "-1"),
            ("WARREN_DATABASE_MAX_CONNECTIONS", "many"),
        ] {
            let err = from(&[(k, v)]).unwrap_err().to_string();
            assert!(err.contains(k), "{err}");
        }
    }
}
