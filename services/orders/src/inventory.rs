//! The HTTP client of inventory's `POST /inventory/reserve`, with retries and backoff.
//!
//! The idempotency key is (orderId, productId): every retry sends the same body, so inventory
//! answers a repeat with the reservation it already made instead of reserving twice.

use std::time::Duration;

use serde::Deserialize;
use uuid::Uuid;
use warren_messaging::broker::Backoff;
use warren_messaging::events::Quantity;

use crate::{Error, Result};

/// What inventory decided about one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReserveOutcome {
    /// 201 (new) or 200 (repeat): inventory holds, or held, this reservation.
    Accepted {
        /// Inventory's reservation id.
        reservation_id: Uuid,
    },
    /// 409: not enough stock.
    InsufficientStock {
        /// Units available, when inventory said.
        available: Option<i64>,
    },
    /// 404: inventory does not know the product.
    UnknownProduct,
}

/// A reservation call that did not get a decision; the line stays to be re-driven.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ReserveFailed {
    /// What went wrong.
    pub message: String,
    /// False when inventory answered in a way retrying cannot fix (an unexpected 4xx, a body
    /// without a reservation): a bug or a version mismatch someone must look at.
    pub retryable: bool,
}

impl ReserveFailed {
    fn retryable(message: String) -> ReserveFailed {
        ReserveFailed {
            message,
            retryable: true,
        }
    }

    fn unexpected(message: String) -> ReserveFailed {
        ReserveFailed {
            message,
            retryable: false,
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReservationBody {
    reservation_id: Uuid,
}

#[derive(Deserialize)]
struct ConflictBody {
    available: Option<i64>,
}

/// Talks to one inventory worker.
#[derive(Clone)]
pub struct InventoryClient {
    http: reqwest::Client,
    reserve_url: reqwest::Url,
    attempts: u32,
}

impl InventoryClient {
    /// A client of the inventory at `base_url`; each call times out after `timeout` and is tried
    /// `attempts` times on network errors and 5xx answers.
    pub fn new(base_url: &str, timeout: Duration, attempts: u32) -> Result<InventoryClient> {
        let base = reqwest::Url::parse(base_url).map_err(|e| {
            Error::Config(format!(
                "inventory URL `{}` is not a URL: {e}",
                warren_messaging::config::redact(base_url)
            ))
        })?;
        let reserve_url = base
            .join("/inventory/reserve")
            .map_err(|e| Error::Config(format!("inventory URL cannot take a path: {e}")))?;
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()
            .map_err(|e| Error::Config(format!("HTTP client: {e}")))?;
        Ok(InventoryClient {
            http,
            reserve_url,
            attempts: attempts.max(1),
        })
    }

    /// Asks inventory to reserve `quantity` of `product_id` for `order_id`, retrying network
    /// errors and 5xx answers with backoff.
    pub async fn reserve(
        &self,
        order_id: Uuid,
        product_id: Uuid,
        quantity: Quantity,
    ) -> std::result::Result<ReserveOutcome, ReserveFailed> {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let mut last = ReserveFailed::retryable("no attempt made".into());
        for attempt in 1..=self.attempts {
            match self.reserve_once(order_id, product_id, quantity).await {
                Ok(outcome) => return Ok(outcome),
                Err(Attempt::Final(failed)) => return Err(failed),
                Err(Attempt::Retry(failed)) => {
                    tracing::warn!(%order_id, %product_id, attempt, error = %failed, "reservation call failed");
                    last = failed;
                }
            }
            if attempt < self.attempts {
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
        Err(last)
    }

    async fn reserve_once(
        &self,
        order_id: Uuid,
        product_id: Uuid,
        quantity: Quantity,
    ) -> std::result::Result<ReserveOutcome, Attempt> {
        let body = serde_json::json!({
            "orderId": order_id,
            "productId": product_id,
            "quantity": quantity.get(),
        });
        let response = self
            .http
            .post(self.reserve_url.clone())
            .json(&body)
            .send()
            .await
            .map_err(|e| {
                Attempt::Retry(ReserveFailed::retryable(format!(
                    "inventory unreachable: {e}"
                )))
            })?;
        let status = response.status();
        let text = response.text().await.map_err(|e| {
            Attempt::Retry(ReserveFailed::retryable(format!(
                "inventory answer cut off: {e}"
            )))
        })?;
        match status.as_u16() {
            200 | 201 => serde_json::from_str::<ReservationBody>(&text)
                .map(|b| ReserveOutcome::Accepted {
                    reservation_id: b.reservation_id,
                })
                .map_err(|e| {
                    Attempt::Final(ReserveFailed::unexpected(format!(
                        "inventory answered {status} without a reservationId: {e}"
                    )))
                }),
            409 => Ok(ReserveOutcome::InsufficientStock {
                available: serde_json::from_str::<ConflictBody>(&text)
                    .ok()
                    .and_then(|b| b.available),
            }),
            404 => Ok(ReserveOutcome::UnknownProduct),
            s if s >= 500 || s == 429 || s == 408 => Err(Attempt::Retry(ReserveFailed::retryable(
                format!("inventory answered {status}"),
            ))),
            _ => Err(Attempt::Final(ReserveFailed::unexpected(format!(
                "inventory refused the request with {status}: {}",
                text.chars().take(200).collect::<String>()
            )))),
        }
    }
}

enum Attempt {
    Retry(ReserveFailed),
    Final(ReserveFailed),
}
