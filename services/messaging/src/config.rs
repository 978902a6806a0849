//! Connection settings from the environment, with defaults for a local machine.
//!
//! `WARREN_AMQP_URL`, `WARREN_DATABASE_URL` and `WARREN_MANAGEMENT_URL` are shared by the
//! workers, the tests and the scripts. Credentials may sit in these URLs; never log them whole:
//! use [`redact`].

use std::time::Duration;

use crate::Result;
use crate::consumer::DEFAULT_PROCESSED_RETENTION;
use crate::database::ConnectionBudget;

/// Default AMQP URL: the local broker's default vhost.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// Default PostgreSQL URL: the local server, trust auth.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// Default management API URL.
pub const DEFAULT_MANAGEMENT_URL: &str = "http://127.0.0.1:15672";

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| default.to_owned())
}

/// `WARREN_AMQP_URL` or the local default.
pub fn amqp_url() -> String {
    env_or("WARREN_AMQP_URL", DEFAULT_AMQP_URL)
}

/// `WARREN_DATABASE_URL` or the local default.
pub fn database_url() -> String {
    env_or("WARREN_DATABASE_URL", DEFAULT_DATABASE_URL)
}

/// `WARREN_MANAGEMENT_URL` or the local default.
pub fn management_url() -> String {
    env_or("WARREN_MANAGEMENT_URL", DEFAULT_MANAGEMENT_URL)
}

/// `WARREN_AMQP_URL` as a worker reads it: when `WARREN_AMQP_USERNAME` and
/// `WARREN_AMQP_PASSWORD` are both set (on Kubernetes they come from the Broker's Secret), they
/// replace the URL's user info, so a password never has to sit in the URL or be URL-encoded by
/// hand. `lookup` stands in for the environment.
pub fn amqp_url_from(lookup: impl Fn(&str) -> Option<String>) -> String {
    let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
    let url = get("WARREN_AMQP_URL").unwrap_or_else(|| DEFAULT_AMQP_URL.to_owned());
    match (get("WARREN_AMQP_USERNAME"), get("WARREN_AMQP_PASSWORD")) {
        // `kubectl create secret --from-file` keeps a trailing newline no credential has.
        (Some(user), Some(password)) => with_credentials(
            &url,
            user.trim_end_matches(['\r', '\n']),
            password.trim_end_matches(['\r', '\n']),
        ),
        _ => url,
    }
}

/// What every worker reads from the environment the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerSettings {
    /// The database connections of one replica (`WARREN_DATABASE_MAX_CONNECTIONS`,
    /// `WARREN_CONSUMER_LANES`).
    pub database: ConnectionBudget,
    /// How long applied event ids are kept for deduplication
    /// (`WARREN_PROCESSED_RETENTION_SECONDS`, default 7 days).
    pub processed_retention: Duration,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        WorkerSettings {
            database: ConnectionBudget::default(),
            processed_retention: DEFAULT_PROCESSED_RETENTION,
        }
    }
}

/// The command-line options (each also read from its `WARREN_*` variable) behind
/// [`WorkerSettings`]; both workers flatten them into their own options.
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerArgs {
    /// Every database connection one replica opens: one per consumer lane, one for the leading
    /// outbox relay, the rest pooled (at least 3, the relay's LISTEN among them).
    #[arg(long, env = "WARREN_DATABASE_MAX_CONNECTIONS", default_value_t = crate::database::DEFAULT_MAX_CONNECTIONS,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub database_max_connections: u32,
    /// Parallel consumer lanes, a database connection each.
    #[arg(long, env = "WARREN_CONSUMER_LANES", default_value_t = crate::database::DEFAULT_CONSUMER_LANES as u32,
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub consumer_lanes: u32,
    /// How long applied event ids are kept to recognise a redelivery, in seconds.
    #[arg(long, env = "WARREN_PROCESSED_RETENTION_SECONDS", default_value_t = DEFAULT_PROCESSED_RETENTION.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..))]
    pub processed_retention_seconds: u64,
}

impl WorkerArgs {
    /// The settings, once the lanes are checked to fit in the connection budget.
    pub fn settings(&self) -> Result<WorkerSettings> {
        let settings = WorkerSettings {
            database: ConnectionBudget {
                total: self.database_max_connections,
                consumer_lanes: self.consumer_lanes as usize,
            },
            processed_retention: Duration::from_secs(self.processed_retention_seconds),
        };
        settings.database.pool_size()?;
        Ok(settings)
    }
}

/// The AMQP credentials a worker reads from the environment only (never from a flag, so they
/// never show in a process list): `WARREN_AMQP_USERNAME` and `WARREN_AMQP_PASSWORD`, which
/// replace the user info of `amqp_url` (see [`amqp_url_from`]).
pub fn amqp_url_with_env_credentials(amqp_url: &str) -> String {
    amqp_url_from(|name| match name {
        "WARREN_AMQP_URL" => Some(amqp_url.to_owned()),
        other => std::env::var(other).ok(),
    })
}

/// Help text naming the variables read from the environment only.
pub const ENV_ONLY_HELP: &str = "\
Environment only (never a flag):
  WARREN_AMQP_USERNAME / WARREN_AMQP_PASSWORD   replace the user info of --amqp-url
  WARREN_LOG_FORMAT=text                        human-readable logs instead of JSON
  RUST_LOG                                      log filter (default info)";

/// `amqp_url` with `username` and `password` (percent-encoded) as its user info. A URL that
/// does not parse is returned as it is: connecting to it fails and says why.
pub fn with_credentials(amqp_url: &str, username: &str, password: &str) -> String {
    let Ok(mut url) = url::Url::parse(amqp_url) else {
        return amqp_url.to_owned();
    };
    // Only a URL without a host refuses user info, and such a URL cannot be connected to.
    if url.set_username(username).is_err() || url.set_password(Some(password)).is_err() {
        return amqp_url.to_owned();
    }
    url.to_string()
}

/// `url` with any password replaced by `***`, for logs. A URL that does not parse is shown only
/// when it cannot hold a password.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        Ok(parsed) => parsed.to_string(),
        Err(_) if !url.contains('@') => url.to_owned(),
        Err(_) => "(a URL that does not parse, not shown: it may hold a password)".to_owned(),
    }
}

/// `amqp_url` pointed at `vhost` (percent-encoded, `/` included) instead of its own path.
pub fn with_vhost(amqp_url: &str, vhost: &str) -> String {
    let Ok(mut url) = url::Url::parse(amqp_url) else {
        return amqp_url.to_owned();
    };
    url.set_query(None);
    url.set_path(&format!("/{}", urlencoding::encode(vhost)));
    url.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact("amqp://guest:secret@h:5672/%2f"),
            "amqp://guest:***@h:5672/%2f"
        );
        assert_eq!(
            redact("postgres://postgres@h/db"),
            "postgres://postgres@h/db"
        );
        assert_eq!(
            redact("postgres://u:s3cret@h:5432/db?sslmode=require"),
            "postgres://u:***@h:5432/db?sslmode=require"
        );
        assert!(!redact("amqp://u:s3cret@[bad").contains("s3cret"));
    }

    #[test]
    fn credentials_from_the_environment_replace_the_urls_own() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        assert_eq!(
            amqp_url_from(env(&[
                ("WARREN_AMQP_URL", "amqp://rabbitmq:5672/orders%2Fv"),
                ("WARREN_AMQP_USERNAME", "warren"),
                ("WARREN_AMQP_PASSWORD", "p@ss:w/rd\n"),
            ])),
            "amqp://warren:p%40ss%3Aw%2Frd@rabbitmq:5672/orders%2Fv"
        );
        assert_eq!(
            amqp_url_from(env(&[("WARREN_AMQP_URL", "amqp://u:p@h:5672/%2f")])),
            "amqp://u:p@h:5672/%2f",
            "no credentials in the environment: the URL as it is"
        );
        assert_eq!(
            with_credentials("amqp://old:pw@h:5672", "a", "b"),
            "amqp://a:b@h:5672"
        );
    }

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        worker: WorkerArgs,
    }

    fn parse(flags: &[&str]) -> std::result::Result<Result<WorkerSettings>, clap::Error> {
        use clap::Parser as _;
        let args = std::iter::once("worker").chain(flags.iter().copied());
        Cli::try_parse_from(args).map(|cli| cli.worker.settings())
    }

    #[test]
    fn worker_settings_are_read_and_checked() {
        let settings = parse(&[
            "--database-max-connections=20",
            "--consumer-lanes=8",
            "--processed-retention-seconds=3600",
        ]);
        let settings = settings
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(settings.database.total, 20);
        assert_eq!(settings.database.consumer_lanes, 8);
        assert_eq!(settings.processed_retention, Duration::from_secs(3600));
        for bad in [
            "--database-max-connections=many",
            "--consumer-lanes=0",
            "--processed-retention-seconds=-5",
        ] {
            assert!(parse(&[bad]).is_err(), "{bad}");
        }
        let too_small = parse(&["--database-max-connections=7"]).unwrap_or_else(|e| panic!("{e}"));
        let err = too_small.map(|_| ()).unwrap_err().to_string();
        assert!(err.contains("WARREN_DATABASE_MAX_CONNECTIONS"), "{err}");
    }

    #[test]
    fn replaces_the_vhost() {
        assert_eq!(
            with_vhost("amqp://u:p@h:5672/%2f", "t-1/x"),
            "amqp://u:p@h:5672/t-1%2Fx"
        );
        assert_eq!(with_vhost("amqp://h:5672", "/"), "amqp://h:5672/%2F");
    }
}
