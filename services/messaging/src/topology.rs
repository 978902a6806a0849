//! The RabbitMQ names of ADR-029's topology, as declared in manifests/topology.
//!
//! Warren's operator declares these objects; the library only refers to them by name.

/// Topic exchange for inventory events (`inventory.*`).
pub const INVENTORY_EXCHANGE: &str = "inventory.events";
/// Topic exchange for order events (`order.*`).
pub const ORDERS_EXCHANGE: &str = "orders.events";
/// Direct exchange routing dead letters to `<queue>.dlq` by the source queue's name.
pub const DEAD_LETTER_EXCHANGE: &str = "warren.dlx";
/// Orders consumes inventory events here.
pub const ORDERS_INVENTORY_EVENTS_QUEUE: &str = "orders.inventory_events";
/// Inventory consumes order events here.
pub const INVENTORY_ORDER_EVENTS_QUEUE: &str = "inventory.order_events";

/// The dead-letter queue of `queue`.
pub fn dead_letter_queue(queue: &str) -> String {
    format!("{queue}.dlq")
}
