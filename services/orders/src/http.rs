//! The HTTP API: orders (`POST /orders`, `GET /orders/{id}`, cancel, complete, payment-failed)
//! and the probes (`/healthz`, `/readyz`, `/metrics`).
//!
//! Bodies are parsed by hand from JSON values so that every 400 names the field at fault; the
//! edge shared with inventory ([`warren_messaging::http`]) gives every error the same JSON shape,
//! refuses non-JSON bodies with 415 and answers 503 while the database is out of reach.

use std::collections::HashSet;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;
use warren_messaging::Metrics;
use warren_messaging::events::Quantity;
use warren_messaging::http::{Probes, json_edges};

use crate::driver::ReservationDriver;
use crate::lifecycle::{self, Input, Transition};
use crate::store::{self, OrderView};

/// Lines one order may hold.
const MAX_ITEMS: usize = 100;
/// Longest payment failure explanation kept.
const MAX_REASON_LEN: usize = 500;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    /// The orders database.
    pub pool: PgPool,
    /// Drives new orders' reservations.
    pub driver: ReservationDriver,
    /// Served on `/metrics`.
    pub metrics: Metrics,
    /// Answers `/healthz` and `/readyz`.
    pub probes: Probes,
}

/// The router of the orders API.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/orders", post(create_order))
        .route("/orders/{id}", get(get_order))
        .route("/orders/{id}/cancel", post(cancel_order))
        .route("/orders/{id}/complete", post(complete_order))
        .route("/orders/{id}/payment-failed", post(payment_failed))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(|| async {
            ApiError {
                status: StatusCode::NOT_FOUND,
                message: "no such endpoint".into(),
                field: None,
            }
        })
        .layer(axum::middleware::from_fn(json_edges))
        .with_state(state)
}

/// An error answer: `{"error": ..., "field": ...}` with its status.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    field: Option<String>,
}

impl ApiError {
    fn bad_field(field: impl Into<String>, message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            field: Some(field.into()),
        }
    }

    fn bad_body(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            field: None,
        }
    }

    fn not_found(id: Uuid) -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            message: format!("order {id} not found"),
            field: None,
        }
    }
}

impl From<crate::Error> for ApiError {
    fn from(err: crate::Error) -> ApiError {
        let database = match &err {
            crate::Error::Database(db)
            | crate::Error::Messaging(warren_messaging::Error::Database(db)) => Some(db),
            _ => None,
        };
        if database.is_some_and(warren_messaging::http::database_unavailable) {
            tracing::warn!(error = %err, "request refused: the database is unavailable");
            return ApiError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                message: "the database is unavailable, retry shortly".into(),
                field: None,
            };
        }
        // The details stay in the log; the client learns only that it failed.
        tracing::error!(error = %err, "request failed");
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: "internal error".into(),
            field: None,
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(err: sqlx::Error) -> ApiError {
        ApiError::from(crate::Error::Database(err))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            return warren_messaging::http::unavailable_response();
        }
        warren_messaging::http::error_response(self.status, &self.message, self.field.as_deref())
    }
}

/// The body as JSON, with no string PostgreSQL could not store.
fn parse_json(body: &Bytes) -> Result<Value, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_body(format!("request body is not valid JSON: {e}")))?;
    warren_messaging::http::nul_free(&value)
        .map_err(|field| ApiError::bad_field(&field, format!("{field} must not contain NUL")))?;
    Ok(value)
}

fn parse_uuid(field: &str, value: Option<&Value>) -> Result<Uuid, ApiError> {
    match value {
        None | Some(Value::Null) => Err(ApiError::bad_field(field, format!("{field} is required"))),
        Some(Value::String(s)) => Uuid::parse_str(s)
            .map_err(|_| ApiError::bad_field(field, format!("{field} must be a UUID"))),
        Some(_) => Err(ApiError::bad_field(
            field,
            format!("{field} must be a UUID string"),
        )),
    }
}

fn parse_quantity(field: &str, value: Option<&Value>) -> Result<Quantity, ApiError> {
    match value {
        None | Some(Value::Null) => Err(ApiError::bad_field(field, format!("{field} is required"))),
        Some(v) => v.as_i64().and_then(Quantity::new).ok_or_else(|| {
            ApiError::bad_field(
                field,
                format!("{field} must be a whole number between 1 and {}", i32::MAX),
            )
        }),
    }
}

/// A validated `POST /orders` body.
#[derive(Debug, PartialEq, Eq)]
pub struct NewOrder {
    /// Who places it.
    pub user_id: Uuid,
    /// Its lines, one per product.
    pub items: Vec<(Uuid, Quantity)>,
}

/// Validates a `POST /orders` body, naming the first field at fault.
pub fn parse_new_order(body: &Value) -> Result<NewOrder, ApiError> {
    let Value::Object(obj) = body else {
        return Err(ApiError::bad_body("request body must be a JSON object"));
    };
    let user_id = parse_uuid("userId", obj.get("userId"))?;
    let items = match obj.get("items") {
        None | Some(Value::Null) => return Err(ApiError::bad_field("items", "items is required")),
        Some(Value::Array(items)) => items,
        Some(_) => return Err(ApiError::bad_field("items", "items must be an array")),
    };
    if items.is_empty() {
        return Err(ApiError::bad_field("items", "items must not be empty"));
    }
    if items.len() > MAX_ITEMS {
        return Err(ApiError::bad_field(
            "items",
            format!("items must hold at most {MAX_ITEMS} lines"),
        ));
    }
    let mut seen = HashSet::new();
    let mut lines = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let Value::Object(item) = item else {
            return Err(ApiError::bad_field(
                format!("items[{i}]"),
                format!("items[{i}] must be an object"),
            ));
        };
        let product_field = format!("items[{i}].productId");
        let product_id = parse_uuid(&product_field, item.get("productId"))?;
        let quantity = parse_quantity(&format!("items[{i}].quantity"), item.get("quantity"))?;
        // One line per product: (orderId, productId) is inventory's idempotency key.
        if !seen.insert(product_id) {
            return Err(ApiError::bad_field(
                product_field.clone(),
                format!("{product_field} repeats a product already in the order"),
            ));
        }
        lines.push((product_id, quantity));
    }
    Ok(NewOrder {
        user_id,
        items: lines,
    })
}

async fn create_order(State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let order = parse_new_order(&parse_json(&body)?)?;
    let id = store::create_order(
        &state.pool,
        order.user_id,
        &order.items,
        ReservationDriver::claim_lease(),
    )
    .await?;
    tracing::info!(order_id = %id, user_id = %order.user_id, lines = order.items.len(), "order created");
    // Read before the driver starts, so the answer shows the order as created: pending.
    let view = store::view(&state.pool, id)
        .await?
        .ok_or_else(|| ApiError::from(crate::Error::Corrupt(format!("order {id} vanished"))))?;
    state.driver.drive_soon(id);
    let mut response = (StatusCode::CREATED, axum::Json(view)).into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/orders/{id}")) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

fn parse_id(id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id).map_err(|_| ApiError::bad_field("id", "id must be a UUID"))
}

async fn get_order(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<axum::Json<OrderView>, ApiError> {
    let id = parse_id(&id)?;
    store::view(&state.pool, id)
        .await?
        .map(axum::Json)
        .ok_or_else(|| ApiError::not_found(id))
}

/// Applies a customer or payment request to the locked order; 409 when its status forbids it.
async fn request(
    state: &AppState,
    id: &str,
    input: Input,
    verb: &str,
    detail: Option<&str>,
) -> Result<axum::Json<OrderView>, ApiError> {
    let id = parse_id(id)?;
    let mut tx = state.pool.begin().await?;
    let order = store::lock(&mut tx, id)
        .await?
        .ok_or_else(|| ApiError::not_found(id))?;
    let transition = lifecycle::apply(order.status, input);
    if transition == Transition::Refuse {
        return Err(ApiError {
            status: StatusCode::CONFLICT,
            message: format!("order {id} is {}; it cannot be {verb}", order.status),
            field: None,
        });
    }
    store::commit(&mut tx, &order, transition, None, detail).await?;
    tx.commit().await?;
    tracing::info!(order_id = %id, from = %order.status, ?transition, "order {verb}");
    store::view(&state.pool, id)
        .await?
        .map(axum::Json)
        .ok_or_else(|| ApiError::not_found(id))
}

async fn cancel_order(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<axum::Json<OrderView>, ApiError> {
    request(&state, &id, Input::CancelRequested, "cancelled", None).await
}

async fn complete_order(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<axum::Json<OrderView>, ApiError> {
    request(&state, &id, Input::CompleteRequested, "completed", None).await
}

/// Body (optional): `{"reason": "card declined"}`, the payment provider's explanation.
async fn payment_failed(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<axum::Json<OrderView>, ApiError> {
    let detail = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        match parse_json(&body)? {
            Value::Object(obj) => match obj.get("reason") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) if s.chars().count() <= MAX_REASON_LEN => Some(s.clone()),
                Some(Value::String(_)) => {
                    return Err(ApiError::bad_field(
                        "reason",
                        format!("reason must be at most {MAX_REASON_LEN} characters"),
                    ));
                }
                Some(_) => return Err(ApiError::bad_field("reason", "reason must be a string")),
            },
            _ => return Err(ApiError::bad_body("request body must be a JSON object")),
        }
    };
    request(
        &state,
        &id,
        Input::PaymentFailed,
        "marked payment-failed",
        detail.as_deref(),
    )
    .await
}

async fn healthz(State(state): State<AppState>) -> Response {
    state.probes.healthz()
}

async fn readyz(State(state): State<AppState>) -> Response {
    state.probes.readyz().await
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn field_of(body: Value) -> Option<String> {
        parse_new_order(&body).unwrap_err().field
    }

    #[test]
    fn a_good_order_parses() {
        let p = Uuid::new_v4();
        let u = Uuid::new_v4();
        let order =
            parse_new_order(&json!({"userId": u, "items": [{"productId": p, "quantity": 2}]}))
                .unwrap();
        assert_eq!(order.user_id, u);
        assert_eq!(order.items, vec![(p, Quantity::new(2).unwrap())]);
    }

    #[test]
    fn every_bad_field_is_named() {
        let p = Uuid::new_v4().to_string();
        let u = Uuid::new_v4().to_string();
        let item = json!({"productId": p, "quantity": 1});
        assert_eq!(field_of(json!({"items": [item]})), Some("userId".into()));
        assert_eq!(
            field_of(json!({"userId": "x", "items": [item]})),
            Some("userId".into())
        );
        assert_eq!(field_of(json!({"userId": u})), Some("items".into()));
        assert_eq!(
            field_of(json!({"userId": u, "items": []})),
            Some("items".into())
        );
        assert_eq!(
            field_of(json!({"userId": u, "items": {}})),
            Some("items".into())
        );
        assert_eq!(
            field_of(json!({"userId": u, "items": [item, 3]})),
            Some("items[1]".into())
        );
        assert_eq!(
            field_of(json!({"userId": u, "items": [{"quantity": 1}]})),
            Some("items[0].productId".into())
        );
        for q in [
            json!(0),
            json!(-1),
            json!(1.5),
            json!("2"),
            json!(3_000_000_000i64),
        ] {
            assert_eq!(
                field_of(json!({"userId": u, "items": [{"productId": p, "quantity": q}]})),
                Some("items[0].quantity".into())
            );
        }
        assert_eq!(
            field_of(json!({"userId": u, "items": [item, item]})),
            Some("items[1].productId".into())
        );
        assert_eq!(field_of(json!([1])), None);
    }
}
