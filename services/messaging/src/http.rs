//! The HTTP edge every worker shares, so that both APIs answer alike:
//!
//! - one error shape, `{"error": "...", "field": "..."}`, for every error answer, including
//!   those axum writes itself (unknown route, wrong method, body too large): [`json_edges`];
//! - a request body with a non-JSON `Content-Type` is a 415 before any handler runs;
//! - strings PostgreSQL cannot store (a NUL) are a 400 naming the field: [`nul_free`];
//! - a database that cannot be reached is a 503 with `Retry-After`, not a 500:
//!   [`database_unavailable`];
//! - the probes, [`Probes`]: `/healthz` ([`liveness`]) and `/readyz` ([`readiness`]), fed by
//!   [`TaskFlag`]s that [`watch`] clears when a background task ends.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use sqlx::PgPool;

use crate::Metrics;

/// Seconds a client is asked to wait (`Retry-After`) while the database is unavailable.
pub const RETRY_AFTER_SECONDS: u32 = 2;

/// An error answer in the shared shape; `field` names the request field at fault.
pub fn error_response(status: StatusCode, message: &str, field: Option<&str>) -> Response {
    let body = match field {
        Some(field) => json!({"error": message, "field": field}),
        None => json!({"error": message}),
    };
    (status, Json(body)).into_response()
}

/// The 503 of a database that cannot be reached or has no free connection.
pub fn unavailable_response() -> Response {
    let mut response = error_response(
        StatusCode::SERVICE_UNAVAILABLE,
        "the database is unavailable, retry shortly",
        None,
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS));
    response
}

/// Whether `err` means the database is out of reach (down, refusing connections, restarting,
/// every pooled connection busy) rather than a fault of the request. Pool exhaustion is logged
/// as a warning: it is the one case a bigger budget fixes.
pub fn database_unavailable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::PoolTimedOut => {
            tracing::warn!(
                "every database connection of the pool stayed busy past the acquire timeout: \
                 raise WARREN_DATABASE_MAX_CONNECTIONS or look for slow queries"
            );
            true
        }
        sqlx::Error::PoolClosed | sqlx::Error::Io(_) | sqlx::Error::Tls(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // 08: connection exception; 57P0x: shutdown, crash recovery, cannot connect now;
            // 53300: too many connections; 55000 with this text: ALLOW_CONNECTIONS false.
            code.starts_with("08")
                || code.starts_with("57P")
                || code == "53300"
                || (code == "55000" && db.message().contains("not currently accepting"))
        }),
        _ => false,
    }
}

/// Middleware (`axum::middleware::from_fn(json_edges)`): refuses a body whose `Content-Type`
/// is not JSON with 415, and rewrites every error answer that is not JSON yet (axum's own 404,
/// 405, 413, ...) into the shared shape, keeping its status and headers (`Allow`).
pub async fn json_edges(request: Request, next: Next) -> Response {
    if carries_body(&request)
        && let Some(content_type) = request.headers().get(header::CONTENT_TYPE)
        && !is_json(content_type)
    {
        let message = format!(
            "the body must be JSON (Content-Type: application/json), not {}",
            content_type.to_str().unwrap_or("a non-text type")
        );
        return error_response(StatusCode::UNSUPPORTED_MEDIA_TYPE, &message, None);
    }
    let response = next.run(request).await;
    let status = response.status();
    let answered_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(is_json);
    if !(status.is_client_error() || status.is_server_error()) || answered_json {
        return response;
    }
    let (mut parts, _) = response.into_parts();
    let message = status
        .canonical_reason()
        .unwrap_or("error")
        .to_ascii_lowercase();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let body = json!({ "error": message }).to_string();
    Response::from_parts(parts, Body::from(body))
}

fn carries_body(request: &Request) -> bool {
    let may_carry = [Method::POST, Method::PUT, Method::PATCH].contains(request.method());
    let headers = request.headers();
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    may_carry && (length.is_some_and(|n| n > 0) || headers.contains_key(header::TRANSFER_ENCODING))
}

/// `application/json` or any `application/*+json`, parameters allowed.
fn is_json(content_type: &HeaderValue) -> bool {
    let Ok(text) = content_type.to_str() else {
        return false;
    };
    let essence = text
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// The dotted path of the first string (or key) in `value` holding a NUL character, which
/// PostgreSQL's text cannot store; `Ok` when there is none.
pub fn nul_free(value: &Value) -> Result<(), String> {
    fn walk(value: &Value, path: &mut Vec<String>) -> Option<String> {
        let here = |path: &Vec<String>| {
            if path.is_empty() {
                "body".to_owned()
            } else {
                path.join("").trim_start_matches('.').to_owned()
            }
        };
        match value {
            Value::String(text) if text.contains('\0') => Some(here(path)),
            Value::Array(items) => items.iter().enumerate().find_map(|(i, item)| {
                path.push(format!("[{i}]"));
                let found = walk(item, path);
                path.pop();
                found
            }),
            Value::Object(fields) => fields.iter().find_map(|(key, item)| {
                path.push(format!(".{key}"));
                let found = if key.contains('\0') {
                    Some(here(path))
                } else {
                    walk(item, path)
                };
                path.pop();
                found
            }),
            _ => None,
        }
    }
    match walk(value, &mut Vec::new()) {
        Some(path) => Err(path),
        None => Ok(()),
    }
}

/// The `/healthz` answer of every worker: 200 `{"status": "ok"}` while each background task
/// (outbox relay, consumer) runs, else 503 `{"status": "failing", "stopped": [...]}`. A task
/// that ended for good does not come back by itself, so the kubelet's liveness probe must see
/// it and restart the pod.
pub fn liveness(stopped: &[&str]) -> (StatusCode, Value) {
    if stopped.is_empty() {
        (StatusCode::OK, json!({"status": "ok"}))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "failing", "stopped": stopped}),
        )
    }
}

/// The `/readyz` answer of every worker: 200 `{"status": "ready", "checks": {...}}` when every
/// named check passes, else 503 with `"status": "not_ready"`; each check is `ok` or `failing`.
pub fn readiness(checks: &[(&str, bool)]) -> (StatusCode, Value) {
    let ready = checks.iter().all(|(_, ok)| *ok);
    let named: Map<String, Value> = checks
        .iter()
        .map(|(name, ok)| {
            (
                (*name).to_owned(),
                json!(if *ok { "ok" } else { "failing" }),
            )
        })
        .collect();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let word = if ready { "ready" } else { "not_ready" };
    (status, json!({"status": word, "checks": named}))
}

/// How long the readiness probe's database check may take.
const DATABASE_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// What a worker's probes look at: its database, the connection state the messaging core keeps
/// in [`Metrics`], and its outbox relay and consumer tasks.
#[derive(Clone)]
pub struct Probes {
    pool: PgPool,
    metrics: Metrics,
    queue: &'static str,
    relay: TaskFlag,
    consumer: TaskFlag,
}

impl Probes {
    /// Probes of a worker whose consumer reads `queue`.
    pub fn new(
        pool: PgPool,
        metrics: Metrics,
        queue: &'static str,
        relay: TaskFlag,
        consumer: TaskFlag,
    ) -> Probes {
        Probes {
            pool,
            metrics,
            queue,
            relay,
            consumer,
        }
    }

    /// The background tasks that ended for good.
    pub fn stopped_tasks(&self) -> Vec<&'static str> {
        [("relay", &self.relay), ("consumer", &self.consumer)]
            .into_iter()
            .filter(|(_, flag)| !flag.is_running())
            .map(|(name, _)| name)
            .collect()
    }

    /// The `/healthz` answer: see [`liveness`].
    pub fn healthz(&self) -> Response {
        let (status, body) = liveness(&self.stopped_tasks());
        (status, Json(body)).into_response()
    }

    /// The `/readyz` answer: the database answers within 2 s, the relay is connected (with its
    /// topology checked) and the consumer consuming, and neither task has ended.
    pub async fn readyz(&self) -> Response {
        let query = sqlx::query("SELECT 1").execute(&self.pool);
        let database = matches!(
            tokio::time::timeout(DATABASE_CHECK_TIMEOUT, query).await,
            Ok(Ok(_))
        );
        let broker = self.metrics.is_relay_connected() && self.metrics.is_consuming(self.queue);
        let (status, body) = readiness(&[
            ("database", database),
            ("broker", broker),
            ("relay", self.relay.is_running()),
            ("consumer", self.consumer.is_running()),
        ]);
        (status, Json(body)).into_response()
    }
}

/// Whether a background task still runs; cleared by [`watch`] when the task ends.
#[derive(Clone, Debug)]
pub struct TaskFlag(Arc<AtomicBool>);

impl TaskFlag {
    /// A flag for a task that runs.
    pub fn running() -> TaskFlag {
        TaskFlag(Arc::new(AtomicBool::new(true)))
    }

    /// Whether the task still runs.
    pub fn is_running(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    fn ended(&self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

impl Default for TaskFlag {
    fn default() -> Self {
        TaskFlag::running()
    }
}

/// Runs a background task; when it ends, logs an error it ended with and clears `flag`, so
/// the probes report it.
pub async fn watch<T>(
    flag: TaskFlag,
    what: &'static str,
    task: impl Future<Output = crate::Result<T>>,
) -> crate::Result<T> {
    let result = task.await;
    if let Err(err) = &result {
        tracing::error!(error = %err, task = what, "background task stopped");
    }
    flag.ended();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nul_anywhere_is_found_and_its_field_named() {
        assert_eq!(nul_free(&json!({"name": "ok", "n": 1})), Ok(()));
        assert_eq!(nul_free(&json!({"name": "a\u{0}b"})), Err("name".into()));
        assert_eq!(
            nul_free(&json!({"items": [{"p": "x"}, {"p": "\u{0}"}]})),
            Err("items[1].p".into())
        );
        assert_eq!(nul_free(&json!("\u{0}")), Err("body".into()));
    }

    #[test]
    fn json_content_types_are_recognised() {
        for ok in [
            "application/json",
            "Application/JSON; charset=utf-8",
            "application/merge-patch+json",
        ] {
            assert!(is_json(&HeaderValue::from_static(ok)), "{ok}");
        }
        for not in ["text/plain", "application/x-www-form-urlencoded", "json"] {
            assert!(!is_json(&HeaderValue::from_static(not)), "{not}");
        }
    }

    #[test]
    fn probes_answer_in_one_shape() {
        assert_eq!(liveness(&[]), (StatusCode::OK, json!({"status": "ok"})));
        let (status, body) = liveness(&["relay"]);
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body, json!({"status": "failing", "stopped": ["relay"]}));
        let (status, body) = readiness(&[("database", true), ("broker", false)]);
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            body,
            json!({"status": "not_ready", "checks": {"database": "ok", "broker": "failing"}})
        );
        assert_eq!(readiness(&[("database", true)]).0, StatusCode::OK);
    }
}
