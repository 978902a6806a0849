//! The HTTP error body of every endpoint, `{"error": "...", "field": "..."}`, and the strict
//! JSON request parsing that names the field at fault.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde_json::json;
use warren_messaging::http::{error_response, unavailable_response};

/// An error answer of the HTTP API.
#[derive(Debug)]
pub enum ApiError {
    /// 400: the request is malformed; `field` is the dotted path at fault, when there is one.
    BadRequest {
        /// What is wrong.
        message: String,
        /// The field at fault.
        field: Option<String>,
    },
    /// 404: the named thing does not exist.
    NotFound {
        /// What was not found.
        message: String,
        /// The field that named it.
        field: Option<String>,
    },
    /// 409 on a reservation: not enough stock.
    InsufficientStock {
        /// Units available right now.
        available: i64,
    },
    /// 503: a row stayed locked too long; the caller should retry.
    Busy,
    /// 503: the database is out of reach or has no free connection; the caller should retry.
    Unavailable,
    /// 500: logged in full, answered without internals.
    Internal(crate::Error),
}

impl ApiError {
    /// A 400 naming `field`.
    pub fn bad_field(field: &str, message: impl Into<String>) -> ApiError {
        ApiError::BadRequest {
            message: message.into(),
            field: Some(field.to_owned()),
        }
    }

    /// A 404 naming `field`.
    pub fn not_found(field: &str, message: impl Into<String>) -> ApiError {
        ApiError::NotFound {
            message: message.into(),
            field: Some(field.to_owned()),
        }
    }
}

impl From<crate::Error> for ApiError {
    fn from(err: crate::Error) -> Self {
        let database = match &err {
            crate::Error::Database(db)
            | crate::Error::Messaging(warren_messaging::Error::Database(db)) => Some(db),
            _ => None,
        };
        if crate::store::is_lock_timeout(&err) {
            ApiError::Busy
        } else if database.is_some_and(warren_messaging::http::database_unavailable) {
            tracing::warn!(error = %err, "request refused: the database is unavailable");
            ApiError::Unavailable
        } else {
            ApiError::Internal(err)
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::BadRequest { message, field } => {
                error_response(StatusCode::BAD_REQUEST, &message, field.as_deref())
            }
            ApiError::NotFound { message, field } => {
                error_response(StatusCode::NOT_FOUND, &message, field.as_deref())
            }
            ApiError::InsufficientStock { available } => (
                StatusCode::CONFLICT,
                Json(json!({"error": "insufficient stock", "available": available})),
            )
                .into_response(),
            ApiError::Busy => (
                [(axum::http::header::RETRY_AFTER, "1")],
                error_response(StatusCode::SERVICE_UNAVAILABLE, "busy, retry shortly", None),
            )
                .into_response(),
            ApiError::Unavailable => unavailable_response(),
            ApiError::Internal(err) => {
                tracing::error!(error = %err, "request failed");
                error_response(StatusCode::INTERNAL_SERVER_ERROR, "internal error", None)
            }
        }
    }
}

/// Decodes a JSON body into `T`, turning serde's error into a 400 that names the field.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| ApiError::BadRequest {
            message: format!("the body is not valid JSON: {e}"),
            field: None,
        })?;
    if !value.is_object() {
        return Err(ApiError::BadRequest {
            message: "the body must be a JSON object".into(),
            field: None,
        });
    }
    if let Err(field) = warren_messaging::http::nul_free(&value) {
        return Err(ApiError::bad_field(
            &field,
            format!("`{field}` must not contain NUL"),
        ));
    }
    serde_path_to_error::deserialize(value).map_err(|err| {
        let path = err.path().to_string();
        let parent = if path == "." { String::new() } else { path };
        let inner = err.into_inner().to_string();
        // serde reports a missing field as "missing field `x`" at the parent's path.
        if let Some(rest) = inner.strip_prefix("missing field `") {
            let name = rest.split('`').next().unwrap_or(rest);
            let field = if parent.is_empty() {
                name.to_owned()
            } else {
                format!("{parent}.{name}")
            };
            return ApiError::bad_field(&field, format!("`{field}` is required"));
        }
        let field = if parent.is_empty() {
            "body".to_owned()
        } else {
            parent
        };
        ApiError::bad_field(&field, inner)
    })
}

/// Parses a path segment as a UUID, or a 400 naming `field`.
pub fn parse_id(field: &str, text: &str) -> Result<uuid::Uuid, ApiError> {
    uuid::Uuid::parse_str(text)
        .map_err(|e| ApiError::bad_field(field, format!("`{field}` is not a UUID: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase")]
    #[allow(dead_code)]
    struct Req {
        order_id: uuid::Uuid,
        quantity: warren_messaging::events::Quantity,
    }

    fn field_of(body: &str) -> Option<String> {
        match parse_json::<Req>(body.as_bytes()) {
            Err(ApiError::BadRequest { field, .. }) => field,
            other => panic!("expected a 400, got {other:?}"),
        }
    }

    #[test]
    fn names_the_field_at_fault() {
        let id = "6f1c2f0e-9a51-4c4e-8f5e-2f8f3b2a9d01";
        assert_eq!(field_of(r#"{"quantity": 1}"#).as_deref(), Some("orderId"));
        assert_eq!(
            field_of(r#"{"orderId": "x", "quantity": 1}"#).as_deref(),
            Some("orderId")
        );
        assert_eq!(
            field_of(&format!(r#"{{"orderId": "{id}", "quantity": 0}}"#)).as_deref(),
            Some("quantity")
        );
        assert_eq!(
            field_of(&format!(r#"{{"orderId": "{id}", "quantity": "2"}}"#)).as_deref(),
            Some("quantity")
        );
        assert_eq!(field_of("{not json"), None);
        assert_eq!(field_of("[1]"), None);
        assert!(
            parse_json::<Req>(format!(r#"{{"orderId": "{id}", "quantity": 2}}"#).as_bytes())
                .is_ok()
        );
    }

    #[test]
    fn bad_ids_in_paths_are_400s() {
        assert!(parse_id("id", "nope").is_err());
        assert!(parse_id("id", "6f1c2f0e-9a51-4c4e-8f5e-2f8f3b2a9d01").is_ok());
    }
}
