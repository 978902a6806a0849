//! Connection settings from the environment, with defaults for a local machine.
//!
//! `WARREN_AMQP_URL`, `WARREN_DATABASE_URL` and `WARREN_MANAGEMENT_URL` are shared by the
//! workers, the tests and the scripts. Credentials may sit in these URLs; never log them whole:
//! use [`redact`].

use std::str::FromStr;
use std::time::Duration;

use crate::consumer::DEFAULT_PROCESSED_RETENTION;
use crate::database::ConnectionBudget;
use crate::{Error, Result};

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

impl WorkerSettings {
    /// Reads the variables above (`lookup` stands in for the environment), with defaults for
    /// those unset; a value that is not a positive whole number, or a budget the lanes do not
    /// fit in, is an error naming the variable.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<WorkerSettings> {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let mut settings = WorkerSettings::default();
        if let Some(text) = get("WARREN_DATABASE_MAX_CONNECTIONS") {
            settings.database.total = positive("WARREN_DATABASE_MAX_CONNECTIONS", &text)?;
        }
        if let Some(text) = get("WARREN_CONSUMER_LANES") {
            settings.database.consumer_lanes = positive("WARREN_CONSUMER_LANES", &text)?;
        }
        if let Some(text) = get("WARREN_PROCESSED_RETENTION_SECONDS") {
            settings.processed_retention =
                Duration::from_secs(positive("WARREN_PROCESSED_RETENTION_SECONDS", &text)?);
        }
        settings.database.pool_size()?;
        Ok(settings)
    }
}

/// `text` as a whole number above zero, or an error naming variable `name`.
pub fn positive<T: FromStr + Default + PartialOrd>(name: &str, text: &str) -> Result<T> {
    text.trim()
        .parse::<T>()
        .ok()
        .filter(|n| *n > T::default())
        .ok_or_else(|| Error::Config(format!("{name} `{text}` is not a positive whole number")))
}

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

    #[test]
    fn worker_settings_are_read_and_checked() {
        let read = |pairs: Vec<(&str, &str)>| {
            WorkerSettings::from_lookup(move |name| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| (*v).to_owned())
            })
        };
        assert_eq!(read(vec![]).ok(), Some(WorkerSettings::default()));
        let settings = read(vec![
            ("WARREN_DATABASE_MAX_CONNECTIONS", "20"),
            ("WARREN_CONSUMER_LANES", "8"),
            ("WARREN_PROCESSED_RETENTION_SECONDS", "3600"),
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(settings.database.total, 20);
        assert_eq!(settings.database.consumer_lanes, 8);
        assert_eq!(settings.processed_retention, Duration::from_secs(3600));
        for (name, value) in [
            ("WARREN_DATABASE_MAX_CONNECTIONS", "many"),
            ("WARREN_DATABASE_MAX_CONNECTIONS", "3"),
            ("WARREN_CONSUMER_LANES", "0"),
            ("WARREN_PROCESSED_RETENTION_SECONDS", "-5"),
        ] {
            let err = read(vec![(name, value)])
                .map(|_| ())
                .unwrap_err()
                .to_string();
            assert!(err.contains(name), "{name}={value}: {err}");
        }
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
