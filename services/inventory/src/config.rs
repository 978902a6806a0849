//! The inventory worker's settings: [`Args`], the binary's options, each also read from its
//! `WARREN_*` variable (clap's `env`, so `inventory --help` lists them all), or a [`Config`]
//! built by hand (tests do) since every field is public.

use std::net::SocketAddr;
use std::time::Duration;

use warren_messaging::config::WorkerSettings;

use crate::Result;

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
}

/// The `inventory` binary's options; each is also read from its `WARREN_*` variable.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "inventory", version, about = "Warren's inventory worker (ADR-029)",
          after_help = warren_messaging::config::ENV_ONLY_HELP)]
pub struct Args {
    /// RabbitMQ; its vhost must hold manifests/topology (`start` fails otherwise).
    #[arg(long, env = "WARREN_AMQP_URL", default_value = warren_messaging::config::DEFAULT_AMQP_URL,
          hide_env_values = true)]
    pub amqp_url: String,
    /// The inventory's own database, created on first start.
    #[arg(long, env = "WARREN_DATABASE_URL", default_value = DEFAULT_DATABASE_URL,
          hide_env_values = true)]
    pub database_url: String,
    /// Where the HTTP API listens (port 0 picks a free port).
    #[arg(long, env = "WARREN_HTTP_ADDR", default_value = DEFAULT_HTTP_ADDR)]
    pub http_addr: SocketAddr,
    /// How long a reservation holds stock, in seconds.
    #[arg(long, env = "WARREN_RESERVATION_TTL_SECONDS", default_value_t = DEFAULT_RESERVATION_TTL.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..))]
    pub reservation_ttl_seconds: u64,
    /// Seconds between two sweeps for expired reservations.
    #[arg(long, env = "WARREN_EXPIRY_SWEEP_INTERVAL_SECONDS", default_value_t = DEFAULT_EXPIRY_SWEEP_INTERVAL.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..))]
    pub expiry_sweep_interval_seconds: u64,
    /// The connection budget and processed-id retention.
    #[command(flatten)]
    pub worker: warren_messaging::config::WorkerArgs,
}

impl Args {
    /// The configuration these options describe, with the AMQP credentials of the
    /// environment.
    pub fn into_config(self) -> Result<Config> {
        let mut config = Config::new(
            &warren_messaging::config::amqp_url_with_env_credentials(&self.amqp_url),
            &self.database_url,
        );
        config.http_addr = self.http_addr;
        config.reservation_ttl = Duration::from_secs(self.reservation_ttl_seconds);
        config.expiry_sweep_interval = Duration::from_secs(self.expiry_sweep_interval_seconds);
        config.worker = self.worker.settings()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    fn parse(flags: &[&str]) -> std::result::Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("inventory").chain(flags.iter().copied()))
    }

    #[test]
    fn defaults_fit_a_local_machine() {
        let c = parse(&[])
            .unwrap_or_else(|e| panic!("{e}"))
            .into_config()
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.database_url, DEFAULT_DATABASE_URL);
        assert_eq!(c.http_addr.to_string(), DEFAULT_HTTP_ADDR);
        assert_eq!(c.reservation_ttl, Duration::from_secs(900));
        assert_eq!(c.expiry_sweep_interval, Duration::from_secs(5));
    }

    #[test]
    fn reads_and_checks_every_option() {
        let c = parse(&[
            "--http-addr=0.0.0.0:9000",
            "--reservation-ttl-seconds=60",
            "--expiry-sweep-interval-seconds=2",
            "--database-url=postgres://u@db/inv",
        ])
        .unwrap_or_else(|e| panic!("{e}"))
        .into_config()
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.http_addr.port(), 9000);
        assert_eq!(c.reservation_ttl, Duration::from_secs(60));
        assert_eq!(c.expiry_sweep_interval, Duration::from_secs(2));
        assert_eq!(c.database_url, "postgres://u@db/inv");
        for (flag, name) in [
            ("--http-addr=nowhere", "--http-addr"),
            ("--reservation-ttl-seconds=0", "--reservation-ttl-seconds"),
            (
                "--expiry-sweep-interval-seconds=-1",
                "--expiry-sweep-interval-seconds",
            ),
            (
                "--database-max-connections=many",
                "--database-max-connections",
            ),
        ] {
            let err = parse(&[flag]).map(|_| ()).unwrap_err().to_string();
            assert!(err.contains(name), "{err}");
        }
        let help = parse(&["--help"]).map(|_| ()).unwrap_err().to_string();
        for variable in ["WARREN_RESERVATION_TTL_SECONDS", "WARREN_CONSUMER_LANES"] {
            assert!(help.contains(variable), "--help names {variable}: {help}");
        }
    }
}
