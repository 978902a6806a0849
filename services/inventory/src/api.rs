//! The HTTP API (axum): products, stock, reservations, and the health, readiness and metrics
//! endpoints. Handlers validate input, call the store, and map outcomes to status codes.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use uuid::Uuid;
use warren_messaging::Metrics;
use warren_messaging::events::Quantity;
use warren_messaging::http::{Probes, json_edges};

use crate::api_error::{ApiError, parse_id, parse_json};
use crate::metrics::InventoryMetrics;
use crate::store::{self, ReserveOutcome, ReserveRequest};

/// Longest product name accepted.
const MAX_NAME_CHARS: usize = 200;

/// Shared by every request.
#[derive(Clone)]
pub struct AppState {
    /// The inventory database.
    pub pool: PgPool,
    /// How long a new reservation holds its stock.
    pub reservation_ttl: Duration,
    /// The messaging core's metrics and registry.
    pub metrics: Metrics,
    /// Inventory's own counters.
    pub inventory_metrics: InventoryMetrics,
    /// Answers `/healthz` and `/readyz`.
    pub probes: Probes,
}

/// Every route of the inventory service.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/products", post(create_product))
        .route("/products/{id}", get(get_product))
        .route("/products/{id}/stock", post(add_stock))
        .route("/inventory/reserve", post(reserve))
        .route("/reservations/{id}", get(get_reservation))
        .fallback(no_such_route)
        .layer(axum::middleware::from_fn(json_edges))
        .with_state(state)
}

/// Unknown paths answer in the API's JSON error shape too.
async fn no_such_route() -> ApiError {
    ApiError::NotFound {
        message: "no such route".into(),
        field: None,
    }
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

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreateProduct {
    name: String,
    initial_stock: i64,
    low_stock_threshold: Option<i64>,
}

async fn create_product(
    State(state): State<AppState>,
    body: Bytes,
) -> Result<(StatusCode, Json<store::Product>), ApiError> {
    let req: CreateProduct = parse_json(&body)?;
    let name = req.name.trim();
    if name.is_empty() {
        return Err(ApiError::bad_field("name", "`name` must not be empty"));
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(ApiError::bad_field(
            "name",
            format!("`name` must be at most {MAX_NAME_CHARS} characters"),
        ));
    }
    if req.initial_stock < 0 {
        return Err(ApiError::bad_field(
            "initialStock",
            "`initialStock` must not be negative",
        ));
    }
    let threshold = req.low_stock_threshold.unwrap_or(10);
    if threshold < 0 {
        return Err(ApiError::bad_field(
            "lowStockThreshold",
            "`lowStockThreshold` must not be negative",
        ));
    }
    let product = store::create_product(&state.pool, name, req.initial_stock, threshold).await?;
    tracing::info!(product_id = %product.id, available = product.available, "product created");
    Ok((StatusCode::CREATED, Json(product)))
}

async fn get_product(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<store::Product>, ApiError> {
    let id = parse_id("id", &id)?;
    store::product(&state.pool, id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found("id", "product not found"))
}

#[derive(Deserialize)]
struct AddStock {
    quantity: Quantity,
}

/// The caller's correlation id (`X-Correlation-Id`), or a fresh one: stock arrivals start flows
/// of their own.
fn correlation_id(headers: &HeaderMap) -> String {
    headers
        .get("x-correlation-id")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty() && v.len() <= 200)
        .map(str::to_owned)
        .unwrap_or_else(|| Uuid::new_v4().to_string())
}

async fn add_stock(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<store::Product>, ApiError> {
    let id = parse_id("id", &id)?;
    let req: AddStock = parse_json(&body)?;
    let product = store::replenish(&state.pool, id, req.quantity, &correlation_id(&headers))
        .await
        .map_err(|err| match err {
            crate::Error::StockOverflow => {
                ApiError::bad_field("quantity", "`quantity` would overflow the stock counters")
            }
            other => ApiError::from(other),
        })?
        .ok_or_else(|| ApiError::not_found("id", "product not found"))?;
    tracing::info!(product_id = %id, added = req.quantity.get(), available = product.available, "stock replenished");
    Ok(Json(product))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Reserve {
    order_id: Uuid,
    product_id: Uuid,
    quantity: Quantity,
}

/// A reservation as the API shows it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ReservationView {
    reservation_id: Uuid,
    order_id: Uuid,
    product_id: Uuid,
    quantity: i32,
    status: String,
    release_reason: Option<String>,
    expires_at: jiff::Timestamp,
}

impl From<store::Reservation> for ReservationView {
    fn from(r: store::Reservation) -> Self {
        ReservationView {
            reservation_id: r.id,
            order_id: r.order_id,
            product_id: r.product_id,
            quantity: r.quantity,
            status: r.status,
            release_reason: r.release_reason,
            expires_at: r.expires_at,
        }
    }
}

async fn reserve(
    State(state): State<AppState>,
    body: Bytes,
) -> Result<(StatusCode, Json<ReservationView>), ApiError> {
    let req: Reserve = parse_json(&body)?;
    let request = ReserveRequest {
        order_id: req.order_id,
        product_id: req.product_id,
        quantity: req.quantity,
    };
    let outcome = store::reserve(&state.pool, request, state.reservation_ttl).await?;
    let m = &state.inventory_metrics;
    match outcome {
        ReserveOutcome::Created(r) => {
            m.reservation("reserved");
            tracing::info!(order_id = %r.order_id, product_id = %r.product_id, reservation_id = %r.id, quantity = r.quantity, "stock reserved");
            Ok((StatusCode::CREATED, Json(r.into())))
        }
        ReserveOutcome::Existing(r) => {
            m.reservation("repeat");
            Ok((StatusCode::OK, Json(r.into())))
        }
        ReserveOutcome::UnknownProduct => {
            m.reservation("unknown_product");
            Err(ApiError::not_found("productId", "product not found"))
        }
        ReserveOutcome::Insufficient { available } => {
            m.reservation("insufficient_stock");
            tracing::info!(order_id = %req.order_id, product_id = %req.product_id, wanted = req.quantity.get(), available, "insufficient stock");
            Err(ApiError::InsufficientStock { available })
        }
    }
}

async fn get_reservation(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ReservationView>, ApiError> {
    let id = parse_id("id", &id)?;
    store::reservation(&state.pool, id)
        .await?
        .map(|r| Json(r.into()))
        .ok_or_else(|| ApiError::not_found("id", "reservation not found"))
}
