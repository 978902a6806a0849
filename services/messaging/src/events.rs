//! The ADR-029 event envelope and every event it names, as typed Rust values.
//!
//! The wire format is the ADR's JSON (`eventType`, `eventId`, `timestamp`, `version`, `data`,
//! `metadata {service, correlationId}`). Decoding is strict where a consumer needs it to be:
//! an unknown type, another major version, a missing field or a malformed id is an error that
//! names the field, so the consumer can park the message with a useful reason.

use jiff::Timestamp;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The schema version this library writes; decoding accepts any `1.x`.
pub const SCHEMA_VERSION: &str = "1.0";

/// Why a message could not be decoded into an [`Envelope`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The body is not JSON, or not a JSON object.
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    /// A required field is absent.
    #[error("missing field `{0}`")]
    MissingField(String),
    /// A field is present but its value is unusable.
    #[error("invalid field `{field}`: {reason}")]
    InvalidField {
        /// Dotted path of the field, e.g. `data.orderId`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `eventType` names no event this library knows.
    #[error("unknown event type `{0}`")]
    UnknownType(String),
    /// `version` is not one this library can read.
    #[error("unsupported version `{version}` for `{event_type}` (this consumer reads 1.x)")]
    WrongVersion {
        /// The event type of the message.
        event_type: String,
        /// The version it carried.
        version: String,
    },
}

impl DecodeError {
    /// A short, stable label for metrics and dead-letter headers.
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::MalformedJson(_) => "malformed_json",
            DecodeError::MissingField(_) => "missing_field",
            DecodeError::InvalidField { .. } => "invalid_field",
            DecodeError::UnknownType(_) => "unknown_type",
            DecodeError::WrongVersion { .. } => "wrong_version",
        }
    }
}

/// Who emitted an event and which business flow it belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Metadata {
    /// The emitting service, e.g. `inventory-service`.
    pub service: String,
    /// Carried unchanged through every event of one business flow, for tracing.
    pub correlation_id: String,
}

/// One event with its envelope fields.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    /// Unique id of this event; the consumer's deduplication key and the AMQP message_id.
    pub event_id: Uuid,
    /// When the event happened.
    pub timestamp: Timestamp,
    /// Schema version, `1.0` for everything written by this library.
    pub version: String,
    /// Emitting service and correlation id.
    pub metadata: Metadata,
    /// The typed event (`eventType` + `data`).
    pub event: Event,
}

impl Envelope {
    /// Wraps `event` in a fresh envelope with a new id and the current time.
    pub fn new(
        event: Event,
        service: impl Into<String>,
        correlation_id: impl Into<String>,
    ) -> Self {
        Envelope {
            event_id: Uuid::new_v4(),
            timestamp: Timestamp::now(),
            version: SCHEMA_VERSION.to_owned(),
            metadata: Metadata {
                service: service.into(),
                correlation_id: correlation_id.into(),
            },
            event,
        }
    }

    /// The routing key and `eventType`, e.g. `inventory.reserved`.
    pub fn event_type(&self) -> &'static str {
        self.event.event_type()
    }

    /// Serialises to the ADR's JSON.
    pub fn to_json(&self) -> Vec<u8> {
        let wire = WireOut {
            event_type: self.event_type(),
            event_id: self.event_id,
            timestamp: self.timestamp,
            version: &self.version,
            data: self.event.data_json(),
            metadata: &self.metadata,
        };
        // Serialising plain structs of strings, numbers and uuids cannot fail.
        serde_json::to_vec(&wire).unwrap_or_default()
    }

    /// Decodes the ADR's JSON, naming the offending field on error.
    pub fn from_json(bytes: &[u8]) -> Result<Envelope, DecodeError> {
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| DecodeError::MalformedJson(e.to_string()))?;
        let serde_json::Value::Object(mut obj) = value else {
            return Err(DecodeError::MalformedJson(
                "the envelope must be a JSON object".into(),
            ));
        };
        let event_type = take_string(&mut obj, "eventType")?;
        let version = take_string(&mut obj, "version")?;
        if !(version == "1" || version.starts_with("1.")) {
            return Err(DecodeError::WrongVersion {
                event_type,
                version,
            });
        }
        let event_id = parse_uuid("eventId", &take_string(&mut obj, "eventId")?)?;
        let timestamp_text = take_string(&mut obj, "timestamp")?;
        let timestamp =
            timestamp_text
                .parse::<Timestamp>()
                .map_err(|e| DecodeError::InvalidField {
                    field: "timestamp".into(),
                    reason: format!("not an ISO 8601 / RFC 3339 time with an offset: {e}"),
                })?;
        let metadata: Metadata = decode_field(&mut obj, "metadata")?;
        let data = obj
            .remove("data")
            .ok_or_else(|| DecodeError::MissingField("data".into()))?;
        let event = Event::from_data(&event_type, data)?;
        Ok(Envelope {
            event_id,
            timestamp,
            version,
            metadata,
            event,
        })
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WireOut<'a> {
    event_type: &'static str,
    event_id: Uuid,
    timestamp: Timestamp,
    version: &'a str,
    data: serde_json::Value,
    metadata: &'a Metadata,
}

fn take_string(
    obj: &mut serde_json::Map<String, serde_json::Value>,
    field: &str,
) -> Result<String, DecodeError> {
    match obj.remove(field) {
        None | Some(serde_json::Value::Null) => Err(DecodeError::MissingField(field.into())),
        Some(serde_json::Value::String(s)) => Ok(s),
        Some(other) => Err(DecodeError::InvalidField {
            field: field.into(),
            reason: format!("expected a string, found {other}"),
        }),
    }
}

fn parse_uuid(field: &str, text: &str) -> Result<Uuid, DecodeError> {
    Uuid::parse_str(text).map_err(|e| DecodeError::InvalidField {
        field: field.into(),
        reason: format!("not a UUID: {e}"),
    })
}

fn decode_field<T: DeserializeOwned>(
    obj: &mut serde_json::Map<String, serde_json::Value>,
    field: &str,
) -> Result<T, DecodeError> {
    let value = obj
        .remove(field)
        .ok_or_else(|| DecodeError::MissingField(field.into()))?;
    decode_value(field, value)
}

/// Deserialises `value`, turning serde's error into one that names the dotted field path.
fn decode_value<T: DeserializeOwned>(
    prefix: &str,
    value: serde_json::Value,
) -> Result<T, DecodeError> {
    serde_path_to_error::deserialize(value).map_err(|err| {
        // serde_path_to_error renders the root as ".".
        let path = match err.path().to_string() {
            root if root == "." => String::new(),
            path => path,
        };
        let inner = err.into_inner().to_string();
        // serde reports a missing field as "missing field `x`" at the parent's path.
        if let Some(rest) = inner.strip_prefix("missing field `") {
            let name = rest.split('`').next().unwrap_or(rest);
            return DecodeError::MissingField(join_path(prefix, &join_path(&path, name)));
        }
        DecodeError::InvalidField {
            field: join_path(prefix, &path),
            reason: inner,
        }
    })
}

fn join_path(prefix: &str, path: &str) -> String {
    match (prefix.is_empty(), path.is_empty() || path == ".") {
        (_, true) => prefix.to_owned(),
        (true, false) => path.to_owned(),
        (false, false) => format!("{prefix}.{path}"),
    }
}

/// One product line of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderItem {
    /// The product.
    pub product_id: Uuid,
    /// How many units; at least 1.
    pub quantity: Quantity,
}

/// A positive quantity of units; decoding refuses zero and negatives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "i64")]
pub struct Quantity(i32);

impl Quantity {
    /// A quantity of `n` units, `None` unless `1 <= n <= i32::MAX`.
    pub fn new(n: i64) -> Option<Quantity> {
        i32::try_from(n).ok().filter(|n| *n > 0).map(Quantity)
    }

    /// The number of units.
    pub fn get(self) -> i32 {
        self.0
    }
}

impl TryFrom<i64> for Quantity {
    type Error = String;
    fn try_from(n: i64) -> Result<Self, Self::Error> {
        Quantity::new(n)
            .ok_or_else(|| format!("quantity must be between 1 and {}, got {n}", i32::MAX))
    }
}

impl From<Quantity> for i64 {
    fn from(q: Quantity) -> i64 {
        i64::from(q.0)
    }
}

/// Why inventory released a reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReleaseReason {
    /// The order was cancelled.
    OrderCancelled,
    /// Nobody confirmed the reservation before it expired.
    ReservationExpired,
    /// The payment for the order failed.
    PaymentFailed,
}

/// Why an order was cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelReason {
    /// The customer asked for it.
    CustomerRequest,
    /// The payment failed.
    PaymentFailed,
    /// The order timed out (for example its reservation expired).
    Timeout,
}

/// `inventory.reserved`: stock was set aside for an order line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InventoryReserved {
    /// The reservation.
    pub reservation_id: Uuid,
    /// The order it belongs to.
    pub order_id: Uuid,
    /// The product reserved.
    pub product_id: Uuid,
    /// Units reserved.
    pub quantity: Quantity,
    /// When the reservation lapses unless confirmed.
    pub expires_at: Timestamp,
}

/// `inventory.confirmed`: reserved stock was taken for good.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InventoryConfirmed {
    /// The reservation.
    pub reservation_id: Uuid,
    /// The order it belongs to.
    pub order_id: Uuid,
    /// The product.
    pub product_id: Uuid,
    /// Units sold.
    pub quantity: Quantity,
    /// Available stock after the confirmation.
    pub new_stock_level: i64,
}

/// `inventory.released`: a reservation was given back to stock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InventoryReleased {
    /// The reservation.
    pub reservation_id: Uuid,
    /// The order it belonged to.
    pub order_id: Uuid,
    /// The product.
    pub product_id: Uuid,
    /// Units returned to stock.
    pub quantity: Quantity,
    /// Why it was released.
    pub reason: ReleaseReason,
}

/// `inventory.stock_depleted`: available stock fell below the product's threshold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StockDepleted {
    /// The product.
    pub product_id: Uuid,
    /// Units still available.
    pub available_quantity: i64,
    /// The low-stock threshold that was crossed.
    pub threshold: i64,
}

/// `inventory.stock_replenished`: stock was added to a product.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StockReplenished {
    /// The product.
    pub product_id: Uuid,
    /// Units added.
    pub quantity_added: Quantity,
    /// Available stock afterwards.
    pub new_stock_level: i64,
}

/// `order.cancelled`: an order will not be fulfilled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderCancelled {
    /// The order.
    pub order_id: Uuid,
    /// Who placed it.
    pub user_id: Uuid,
    /// Its lines.
    pub items: Vec<OrderItem>,
    /// Why it was cancelled.
    pub reason: CancelReason,
}

/// `order.completed`: payment succeeded; reserved stock can be taken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderCompleted {
    /// The order.
    pub order_id: Uuid,
    /// Who placed it.
    pub user_id: Uuid,
    /// Its lines.
    pub items: Vec<OrderItem>,
}

/// `order.payment_failed`: payment failed; reserved stock must be released.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderPaymentFailed {
    /// The order.
    pub order_id: Uuid,
    /// Who placed it.
    pub user_id: Uuid,
    /// Its lines.
    pub items: Vec<OrderItem>,
    /// The payment provider's explanation.
    pub reason: String,
}

/// Every event of ADR-029. The variant fixes `eventType` and the shape of `data`.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// `inventory.reserved`
    InventoryReserved(InventoryReserved),
    /// `inventory.confirmed`
    InventoryConfirmed(InventoryConfirmed),
    /// `inventory.released`
    InventoryReleased(InventoryReleased),
    /// `inventory.stock_depleted`
    StockDepleted(StockDepleted),
    /// `inventory.stock_replenished`
    StockReplenished(StockReplenished),
    /// `order.cancelled`
    OrderCancelled(OrderCancelled),
    /// `order.completed`
    OrderCompleted(OrderCompleted),
    /// `order.payment_failed`
    OrderPaymentFailed(OrderPaymentFailed),
}

/// Every `eventType` this library knows, in a stable order.
pub const EVENT_TYPES: [&str; 8] = [
    "inventory.reserved",
    "inventory.confirmed",
    "inventory.released",
    "inventory.stock_depleted",
    "inventory.stock_replenished",
    "order.cancelled",
    "order.completed",
    "order.payment_failed",
];

impl Event {
    /// The `eventType`, which is also the routing key.
    pub fn event_type(&self) -> &'static str {
        match self {
            Event::InventoryReserved(_) => "inventory.reserved",
            Event::InventoryConfirmed(_) => "inventory.confirmed",
            Event::InventoryReleased(_) => "inventory.released",
            Event::StockDepleted(_) => "inventory.stock_depleted",
            Event::StockReplenished(_) => "inventory.stock_replenished",
            Event::OrderCancelled(_) => "order.cancelled",
            Event::OrderCompleted(_) => "order.completed",
            Event::OrderPaymentFailed(_) => "order.payment_failed",
        }
    }

    /// The id of the entity whose events must stay in order: the order for order and
    /// reservation events, the product for stock events.
    pub fn aggregate_id(&self) -> Uuid {
        match self {
            Event::InventoryReserved(e) => e.order_id,
            Event::InventoryConfirmed(e) => e.order_id,
            Event::InventoryReleased(e) => e.order_id,
            Event::StockDepleted(e) => e.product_id,
            Event::StockReplenished(e) => e.product_id,
            Event::OrderCancelled(e) => e.order_id,
            Event::OrderCompleted(e) => e.order_id,
            Event::OrderPaymentFailed(e) => e.order_id,
        }
    }

    fn data_json(&self) -> serde_json::Value {
        let value = match self {
            Event::InventoryReserved(e) => serde_json::to_value(e),
            Event::InventoryConfirmed(e) => serde_json::to_value(e),
            Event::InventoryReleased(e) => serde_json::to_value(e),
            Event::StockDepleted(e) => serde_json::to_value(e),
            Event::StockReplenished(e) => serde_json::to_value(e),
            Event::OrderCancelled(e) => serde_json::to_value(e),
            Event::OrderCompleted(e) => serde_json::to_value(e),
            Event::OrderPaymentFailed(e) => serde_json::to_value(e),
        };
        value.unwrap_or(serde_json::Value::Null)
    }

    fn from_data(event_type: &str, data: serde_json::Value) -> Result<Event, DecodeError> {
        Ok(match event_type {
            "inventory.reserved" => Event::InventoryReserved(decode_value("data", data)?),
            "inventory.confirmed" => Event::InventoryConfirmed(decode_value("data", data)?),
            "inventory.released" => Event::InventoryReleased(decode_value("data", data)?),
            "inventory.stock_depleted" => Event::StockDepleted(decode_value("data", data)?),
            "inventory.stock_replenished" => Event::StockReplenished(decode_value("data", data)?),
            "order.cancelled" => Event::OrderCancelled(decode_value("data", data)?),
            "order.completed" => Event::OrderCompleted(decode_value("data", data)?),
            "order.payment_failed" => Event::OrderPaymentFailed(decode_value("data", data)?),
            other => return Err(DecodeError::UnknownType(other.to_owned())),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reserved_json() -> serde_json::Value {
        serde_json::json!({
            "eventType": "inventory.reserved",
            "eventId": "6f1c2f0e-9a51-4c4e-8f5e-2f8f3b2a9d01",
            "timestamp": "2025-10-17T10:00:00Z",
            "version": "1.0",
            "data": {
                "reservationId": "0b7e6c8a-3c1d-4f0a-9e0b-6a4b5c3d2e1f",
                "orderId": "a3c9e2d4-7b6f-4e1a-8c2d-5f4e3d2c1b0a",
                "productId": "c1d2e3f4-a5b6-4c7d-8e9f-0a1b2c3d4e5f",
                "quantity": 2,
                "expiresAt": "2025-10-17T10:15:00Z"
            },
            "metadata": {"service": "inventory-service", "correlationId": "corr-1"}
        })
    }

    fn decode(v: &serde_json::Value) -> Result<Envelope, DecodeError> {
        Envelope::from_json(&serde_json::to_vec(v).unwrap())
    }

    #[test]
    fn round_trips_every_event() {
        let env = decode(&reserved_json()).unwrap();
        assert_eq!(env.event_type(), "inventory.reserved");
        let again = Envelope::from_json(&env.to_json()).unwrap();
        assert_eq!(env, again);
    }

    #[test]
    fn names_the_missing_data_field() {
        let mut v = reserved_json();
        v["data"].as_object_mut().unwrap().remove("orderId");
        assert_eq!(
            decode(&v).unwrap_err(),
            DecodeError::MissingField("data.orderId".into())
        );
    }

    #[test]
    fn names_a_bad_id() {
        let mut v = reserved_json();
        v["data"]["productId"] = "not-a-uuid".into();
        match decode(&v).unwrap_err() {
            DecodeError::InvalidField { field, .. } => assert_eq!(field, "data.productId"),
            other => panic!("unexpected {other:?}"),
        }
        let mut v = reserved_json();
        v["eventId"] = "42".into();
        match decode(&v).unwrap_err() {
            DecodeError::InvalidField { field, .. } => assert_eq!(field, "eventId"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn refuses_unknown_type_and_wrong_version() {
        let mut v = reserved_json();
        v["eventType"] = "inventory.teleported".into();
        assert_eq!(
            decode(&v).unwrap_err(),
            DecodeError::UnknownType("inventory.teleported".into())
        );
        let mut v = reserved_json();
        v["version"] = "2.0".into();
        assert!(matches!(
            decode(&v).unwrap_err(),
            DecodeError::WrongVersion { .. }
        ));
    }

    #[test]
    fn refuses_non_positive_quantity_and_bad_metadata() {
        let mut v = reserved_json();
        v["data"]["quantity"] = 0.into();
        match decode(&v).unwrap_err() {
            DecodeError::InvalidField { field, .. } => assert_eq!(field, "data.quantity"),
            other => panic!("unexpected {other:?}"),
        }
        let mut v = reserved_json();
        v["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("correlationId");
        assert_eq!(
            decode(&v).unwrap_err(),
            DecodeError::MissingField("metadata.correlationId".into())
        );
    }

    #[test]
    fn refuses_garbage() {
        assert!(matches!(
            Envelope::from_json(b"{not json").unwrap_err(),
            DecodeError::MalformedJson(_)
        ));
        assert!(matches!(
            Envelope::from_json(b"[1,2]").unwrap_err(),
            DecodeError::MalformedJson(_)
        ));
    }
}
