//! Connection settings from the environment, with defaults for a local machine.
//!
//! `WARREN_AMQP_URL`, `WARREN_DATABASE_URL` and `WARREN_MANAGEMENT_URL` are shared by the
//! workers, the tests and the scripts. Credentials may sit in these URLs; never log them whole:
//! use [`redact`].

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

/// `url` with any password replaced by `***`, for logs.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((userinfo, host)) = rest.split_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

/// `amqp_url` pointed at `vhost` instead of its own path.
pub fn with_vhost(amqp_url: &str, vhost: &str) -> String {
    let encoded = urlencoding::encode(vhost);
    let (scheme, rest) = amqp_url.split_once("://").unwrap_or(("amqp", amqp_url));
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    format!("{scheme}://{authority}/{encoded}")
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
