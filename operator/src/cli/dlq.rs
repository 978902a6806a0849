//! `warren dlq`: the dead-letter queue of a consuming queue, for the people on call.
//!
//! `list` and `show` read through the management API and put every message back (on a quorum
//! queue each look counts as a delivery, so a dead-letter queue must have no delivery limit, as
//! in manifests/topology); `purge` empties the queue through it. `replay` must move messages one by one without ever losing
//! one, which the management API cannot do (its `get` removes messages before anything is
//! republished), so it speaks AMQP: it takes a message unacknowledged, republishes it to its
//! original exchange and routing key with publisher confirms and `mandatory`, and acknowledges
//! it in the dead-letter queue only once the broker confirmed the republish. An interrupted
//! replay leaves the unconfirmed message in the dead-letter queue (and at worst one message both
//! there and republished, which the idempotent consumer applies once).
//!
//! Messages parked by Warren's consumer carry `x-warren-*` headers (reason, error, attempts,
//! original exchange and routing key); those RabbitMQ dead-lettered itself (a quorum queue's
//! `x-delivery-limit`, a TTL) carry `x-death`, which is read instead.

use std::collections::HashSet;
use std::fmt::Write as _;

use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions, ConfirmSelectOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Confirmation, Connection, ConnectionProperties};
use serde::Serialize;
use serde_json::Value;

use super::{ApplyOptions, connection};
use crate::rabbitmq::{BrokerConnection, HttpManagementApi, ManagementApi};
use crate::{Error, Result};

/// Headers Warren's consumer writes when it parks a message (warren-messaging's `retry`).
const ATTEMPTS: &str = "x-warren-attempts";
const REASON: &str = "x-warren-reason";
const ERROR: &str = "x-warren-error";
const ORIGINAL_EXCHANGE: &str = "x-warren-original-exchange";
const ORIGINAL_ROUTING_KEY: &str = "x-warren-original-routing-key";
const QUEUE: &str = "x-warren-queue";
const DEAD_LETTERED_AT: &str = "x-warren-dead-lettered-at";
/// Set on a replayed message, for its story.
const REPLAYED_AT: &str = "x-warren-replayed-at";

/// Headers a replay drops: the attempt count starts afresh, and the death records belong to
/// the message's previous life.
const DROPPED_ON_REPLAY: [&str; 10] = [
    ATTEMPTS,
    REASON,
    ERROR,
    QUEUE,
    DEAD_LETTERED_AT,
    "x-death",
    "x-first-death-exchange",
    "x-first-death-queue",
    "x-first-death-reason",
    "x-delivery-count",
];

/// Most messages `list` and `show` read.
pub const MAX_PEEK: usize = 10_000;

/// Where the dead-letter queue is and how to reach it.
pub struct Target {
    /// The management API client.
    pub api: HttpManagementApi,
    /// Its connection (the credentials a replay also uses for AMQP).
    pub broker: BrokerConnection,
    /// The vhost.
    pub vhost: String,
    /// The dead-letter queue.
    pub dlq: String,
}

impl Target {
    /// The dead-letter queue of `queue` in `vhost` on the broker at `management_url`, with the
    /// credentials and TLS material of `options`. Fails when that queue does not exist.
    pub async fn open(
        management_url: &str,
        vhost: &str,
        queue: &str,
        options: &ApplyOptions,
    ) -> Result<Target> {
        let broker = connection(management_url, options)?;
        let api = HttpManagementApi::new(&broker)?;
        let dlq = dead_letter_queue(queue);
        if api.get_queue(vhost, &dlq).await?.is_none() {
            return Err(Error::Topology(format!(
                "no queue {dlq} in vhost {vhost:?} on {management_url}"
            )));
        }
        Ok(Target {
            api,
            broker,
            vhost: vhost.to_owned(),
            dlq,
        })
    }

    /// The AMQP URL a replay connects to: `explicit` (its credentials and path are replaced),
    /// else the node's AMQP listener on the management host; pointed at the vhost, with the
    /// management credentials.
    pub async fn amqp_url(&self, explicit: Option<&str>) -> Result<String> {
        let base = match explicit {
            Some(url) => url.to_owned(),
            None => {
                super::export::derived_amqp_url(self.api.base_url(), &self.api.overview().await?)
                    .ok_or_else(|| {
                        Error::Config(
                            "the broker reports no AMQP listener: pass --amqp-url".to_owned(),
                        )
                    })?
            }
        };
        let mut url = reqwest::Url::parse(&crate::workload::amqp_url_for(&base, &self.vhost))
            .map_err(|e| Error::Config(format!("AMQP URL {base:?}: {e}")))?;
        let credentials = &self.broker.credentials;
        url.set_username(&credentials.username)
            .and_then(|()| url.set_password(Some(&credentials.password)))
            .map_err(|()| Error::Config(format!("AMQP URL {base:?} has no host")))?;
        Ok(url.to_string())
    }
}

/// The dead-letter queue of `queue`: `<queue>.dlq`, or `queue` itself when it already is one.
pub fn dead_letter_queue(queue: &str) -> String {
    if queue.ends_with(".dlq") {
        queue.to_owned()
    } else {
        format!("{queue}.dlq")
    }
}

/// One parked message, as `list` and `show` print it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ParkedMessage {
    /// The message id (Warren's event id), when it has one.
    pub message_id: Option<String>,
    /// The event type (`type` property, else the body's `eventType`).
    pub event_type: Option<String>,
    /// Why it was parked: `permanent`, `retries_exhausted`, a decode error kind, or RabbitMQ's
    /// own reason (`delivery_limit`, `expired`, `rejected`, `maxlen`).
    pub reason: Option<String>,
    /// The handler's error text.
    pub error: Option<String>,
    /// Failed handling attempts (Warren's count) or deliveries (RabbitMQ's).
    pub attempts: Option<i64>,
    /// The exchange it was first published to.
    pub original_exchange: Option<String>,
    /// Its routing key there.
    pub original_routing_key: Option<String>,
    /// When it was parked.
    pub dead_lettered_at: Option<String>,
    /// The body (`show` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<Value>,
}

impl ParkedMessage {
    /// Reads one entry of the management API's `get` answer.
    pub fn from_management(entry: &Value) -> ParkedMessage {
        let properties = &entry["properties"];
        let headers = &properties["headers"];
        let text = |value: &Value| match value {
            Value::String(s) => Some(s.clone()),
            Value::Null => None,
            other => Some(other.to_string()),
        };
        let header = |name: &str| text(&headers[name]);
        // RabbitMQ keeps one `x-death` record per queue and reason, the latest first; the
        // first death's queue names the record of the original publish.
        let first_queue = header("x-first-death-queue");
        let deaths = headers["x-death"].as_array().cloned().unwrap_or_default();
        let first_death = deaths
            .iter()
            .find(|d| first_queue.is_some() && d["queue"].as_str() == first_queue.as_deref())
            .or(deaths.last())
            .cloned()
            .unwrap_or(Value::Null);
        let payload = match entry["payload_encoding"].as_str() {
            Some("string") => entry["payload"]
                .as_str()
                .map(|body| serde_json::from_str(body).unwrap_or(Value::String(body.to_owned()))),
            _ => entry.get("payload").cloned(),
        };
        ParkedMessage {
            message_id: text(&properties["message_id"]),
            event_type: text(&properties["type"]).or_else(|| {
                payload
                    .as_ref()
                    .and_then(|p| p["eventType"].as_str().map(str::to_owned))
            }),
            reason: header(REASON)
                .or_else(|| header("x-first-death-reason"))
                .or_else(|| text(&first_death["reason"])),
            error: header(ERROR),
            attempts: headers[ATTEMPTS]
                .as_i64()
                .or_else(|| headers["x-delivery-count"].as_i64())
                .or_else(|| first_death["count"].as_i64()),
            original_exchange: header(ORIGINAL_EXCHANGE)
                .or_else(|| header("x-first-death-exchange"))
                .or_else(|| text(&first_death["exchange"])),
            original_routing_key: header(ORIGINAL_ROUTING_KEY).or_else(|| {
                first_death["routing-keys"]
                    .as_array()
                    .and_then(|keys| keys.first())
                    .and_then(text)
            }),
            dead_lettered_at: header(DEAD_LETTERED_AT)
                .or_else(|| first_death["time"].as_i64().map(|t| t.to_string())),
            payload,
        }
    }
}

/// Up to `limit` messages of the dead-letter queue, left in place.
pub async fn list(
    api: &HttpManagementApi,
    vhost: &str,
    dlq: &str,
    limit: usize,
) -> Result<Vec<ParkedMessage>> {
    Ok(api
        .peek_messages(vhost, dlq, limit.min(MAX_PEEK))
        .await?
        .iter()
        .map(|entry| {
            let mut message = ParkedMessage::from_management(entry);
            message.payload = None;
            message
        })
        .collect())
}

/// The parked message with this message id, body included, left in place.
pub async fn show(
    api: &HttpManagementApi,
    vhost: &str,
    dlq: &str,
    message_id: &str,
) -> Result<ParkedMessage> {
    api.peek_messages(vhost, dlq, MAX_PEEK)
        .await?
        .iter()
        .map(ParkedMessage::from_management)
        .find(|m| m.message_id.as_deref() == Some(message_id))
        .ok_or_else(|| {
            Error::Topology(format!(
                "no message {message_id} in {dlq} (vhost {vhost:?})"
            ))
        })
}

/// `list` as a table, one message per line.
pub fn table(messages: &[ParkedMessage]) -> String {
    let mut out = String::from("MESSAGE ID\tEVENT TYPE\tREASON\tATTEMPTS\tDEAD-LETTERED\tERROR\n");
    let or_dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".to_owned());
    for m in messages {
        let error: String = or_dash(&m.error).chars().take(120).collect();
        let _ = writeln!(
            out,
            "{}\t{}\t{}\t{}\t{}\t{}",
            or_dash(&m.message_id),
            or_dash(&m.event_type),
            or_dash(&m.reason),
            m.attempts.map_or_else(|| "-".to_owned(), |n| n.to_string()),
            or_dash(&m.dead_lettered_at),
            error
        );
    }
    out
}

/// Which messages `replay` moves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// Every message that was in the queue when the replay started.
    All,
    /// The messages with these message ids.
    Ids(HashSet<String>),
}

/// What `replay` did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Replayed {
    /// Message ids republished and confirmed, then removed from the dead-letter queue.
    pub replayed: Vec<String>,
    /// Messages left in the dead-letter queue, with why.
    pub failed: Vec<(String, String)>,
    /// Selected message ids that were not found.
    pub missing: Vec<String>,
}

/// Moves the selected messages of `dlq` back to their original exchange and routing key, with
/// a fresh attempt count. `amqp_url` points at the vhost. Reads at most as many messages as the
/// queue held at the start, so a message dead-lettered again during the replay is not replayed
/// twice in one run.
pub async fn replay(amqp_url: &str, dlq: &str, selection: &Selection) -> Result<Replayed> {
    let amqp = |action: &str| {
        let action = action.to_owned();
        move |source| Error::Amqp { action, source }
    };
    let connection = Connection::connect(
        amqp_url,
        ConnectionProperties::default().with_connection_name("warren-dlq-replay".into()),
    )
    .await
    .map_err(amqp("connect"))?;
    let channel = connection
        .create_channel()
        .await
        .map_err(amqp("open a channel"))?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(amqp("enable publisher confirms"))?;
    let mut report = Replayed::default();
    let mut skipped = Vec::new();
    // Messages still to read after the current one: those ready when the replay started.
    let mut left: Option<u32> = None;
    while left != Some(0) {
        let Some(message) = channel
            .basic_get(dlq.into(), BasicGetOptions { no_ack: false })
            .await
            .map_err(amqp(&format!("get from {dlq}")))?
        else {
            break;
        };
        left = Some(left.map_or(message.message_count, |n| n.saturating_sub(1)));
        let delivery = message.delivery;
        let properties = delivery.properties.clone();
        let id = properties
            .message_id()
            .as_ref()
            .map(|id| id.as_str().to_owned())
            .unwrap_or_else(|| format!("(no message id, delivery {})", delivery.delivery_tag));
        let wanted = match selection {
            Selection::All => true,
            Selection::Ids(ids) => ids.contains(&id),
        };
        if !wanted {
            skipped.push(delivery);
            continue;
        }
        let headers = properties.headers().clone().unwrap_or_default();
        let Some((exchange, routing_key)) = original_destination(&headers) else {
            let why = "no original exchange in its headers".to_owned();
            report.failed.push((id, why));
            skipped.push(delivery);
            continue;
        };
        let republish = properties.with_headers(fresh_headers(headers));
        let confirmed = async {
            channel
                .basic_publish(
                    exchange.as_str().into(),
                    routing_key.as_str().into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    &delivery.data,
                    republish,
                )
                .await?
                .await
        }
        .await;
        match confirmed {
            Ok(Confirmation::Ack(None)) => {
                delivery
                    .acker
                    .ack(BasicAckOptions::default())
                    .await
                    .map_err(amqp(&format!("acknowledge {id} in {dlq}")))?;
                report.replayed.push(id);
            }
            Ok(other) => {
                let why = match other {
                    Confirmation::Ack(Some(returned)) => format!(
                        "{exchange:?} routed it nowhere ({} {}): nothing is bound for {routing_key:?}",
                        returned.reply_code, returned.reply_text
                    ),
                    _ => "the broker did not confirm the republish".to_owned(),
                };
                report.failed.push((id, why));
                skipped.push(delivery);
            }
            // The channel is gone (a missing exchange closes it): whatever is unacknowledged
            // goes back to the dead-letter queue with it.
            Err(error) => {
                report
                    .failed
                    .push((id, format!("republish to {exchange:?}: {error}")));
                let _ = connection.close(200, "replay stopped".into()).await;
                if let Selection::Ids(ids) = selection {
                    report.missing = missing(ids, &report);
                }
                return Ok(report);
            }
        }
    }
    for delivery in skipped {
        delivery
            .acker
            .nack(BasicNackOptions {
                requeue: true,
                ..Default::default()
            })
            .await
            .map_err(amqp(&format!("return a message to {dlq}")))?;
    }
    let _ = connection.close(200, "replay done".into()).await;
    if let Selection::Ids(ids) = selection {
        report.missing = missing(ids, &report);
    }
    Ok(report)
}

fn missing(ids: &HashSet<String>, report: &Replayed) -> Vec<String> {
    let seen: HashSet<&String> = report
        .replayed
        .iter()
        .chain(report.failed.iter().map(|(id, _)| id))
        .collect();
    let mut missing: Vec<String> = ids
        .iter()
        .filter(|id| !seen.contains(id))
        .cloned()
        .collect();
    missing.sort();
    missing
}

fn header_text(headers: &FieldTable, name: &str) -> Option<String> {
    match headers.inner().get(&ShortString::from(name))? {
        AMQPValue::LongString(s) => Some(s.to_string()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// The exchange and routing key the message was first published to: Warren's headers, else
/// RabbitMQ's `x-death` record of its first death (as [`ParkedMessage::from_management`]).
fn original_destination(headers: &FieldTable) -> Option<(String, String)> {
    if let Some(exchange) = header_text(headers, ORIGINAL_EXCHANGE) {
        let key = header_text(headers, ORIGINAL_ROUTING_KEY).unwrap_or_default();
        return Some((exchange, key));
    }
    let AMQPValue::FieldArray(deaths) = headers.inner().get(&ShortString::from("x-death"))? else {
        return None;
    };
    let first_queue = header_text(headers, "x-first-death-queue");
    let records: Vec<&FieldTable> = deaths
        .as_slice()
        .iter()
        .filter_map(|d| match d {
            AMQPValue::FieldTable(t) => Some(t),
            _ => None,
        })
        .collect();
    let death = records
        .iter()
        .find(|d| first_queue.is_some() && header_text(d, "queue") == first_queue)
        .or(records.last())?;
    let exchange = header_text(headers, "x-first-death-exchange")
        .or_else(|| header_text(death, "exchange"))?;
    let key = match death.inner().get(&ShortString::from("routing-keys")) {
        Some(AMQPValue::FieldArray(keys)) => keys.as_slice().first().and_then(|k| match k {
            AMQPValue::LongString(s) => Some(s.to_string()),
            _ => None,
        }),
        _ => None,
    }
    .unwrap_or_default();
    Some((exchange, key))
}

fn fresh_headers(headers: FieldTable) -> FieldTable {
    let mut fresh = FieldTable::default();
    for (name, value) in headers.inner() {
        if !DROPPED_ON_REPLAY.contains(&name.as_str()) {
            fresh.insert(name.clone(), value.clone());
        }
    }
    fresh.insert(
        REPLAYED_AT.into(),
        AMQPValue::LongString(jiff::Timestamp::now().to_string().into()),
    );
    fresh
}

/// Empties the dead-letter queue; `confirmed` must be true (`--yes`), else nothing happens and
/// the error says how many messages would go.
pub async fn purge(api: &HttpManagementApi, vhost: &str, dlq: &str, confirmed: bool) -> Result<()> {
    if !confirmed {
        let count = api
            .get_queue(vhost, dlq)
            .await?
            .and_then(|q| q.messages)
            .unwrap_or_default();
        return Err(Error::Topology(format!(
            "purging deletes the {count} message(s) of {dlq} for good: add --yes to confirm"
        )));
    }
    api.purge_queue(vhost, dlq).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_dead_letter_queue_of_a_queue() {
        assert_eq!(
            dead_letter_queue("orders.inventory_events"),
            "orders.inventory_events.dlq"
        );
        assert_eq!(dead_letter_queue("x.dlq"), "x.dlq");
    }

    #[test]
    fn warren_headers_and_rabbitmq_death_records_are_both_read() {
        let parked = json!({
            "payload": "{\"eventType\": \"inventory.reserved\"}",
            "payload_encoding": "string",
            "properties": {"message_id": "e1", "headers": {
                "x-warren-reason": "permanent", "x-warren-error": "no such order",
                "x-warren-attempts": 1, "x-warren-original-exchange": "inventory.events",
                "x-warren-original-routing-key": "inventory.reserved"}}
        });
        let m = ParkedMessage::from_management(&parked);
        assert_eq!(m.message_id.as_deref(), Some("e1"));
        assert_eq!(m.event_type.as_deref(), Some("inventory.reserved"));
        assert_eq!(m.reason.as_deref(), Some("permanent"));
        assert_eq!(m.attempts, Some(1));
        assert_eq!(m.original_exchange.as_deref(), Some("inventory.events"));
        let by_rabbitmq = json!({
            "payload": "not json", "payload_encoding": "string",
            "properties": {"type": "order.completed", "headers": {
                "x-first-death-reason": "delivery_limit",
                "x-death": [{"count": 1, "reason": "delivery_limit", "exchange": "orders.events",
                             "routing-keys": ["order.completed"], "queue": "q"}]}}
        });
        let m = ParkedMessage::from_management(&by_rabbitmq);
        assert_eq!(m.reason.as_deref(), Some("delivery_limit"));
        assert_eq!(m.original_exchange.as_deref(), Some("orders.events"));
        assert_eq!(m.original_routing_key.as_deref(), Some("order.completed"));
        assert_eq!(m.payload, Some(json!("not json")));
    }

    #[test]
    fn a_replay_starts_a_fresh_attempt_count_and_keeps_the_rest() {
        let mut headers = FieldTable::default();
        headers.insert(ATTEMPTS.into(), AMQPValue::LongLongInt(5));
        headers.insert(
            REASON.into(),
            AMQPValue::LongString("retries_exhausted".into()),
        );
        headers.insert("x-custom".into(), AMQPValue::LongString("kept".into()));
        let fresh = fresh_headers(headers);
        let names: Vec<&str> = fresh.inner().keys().map(ShortString::as_str).collect();
        assert!(
            names.contains(&"x-custom") && names.contains(&REPLAYED_AT),
            "{names:?}"
        );
        assert!(
            !names.contains(&ATTEMPTS) && !names.contains(&REASON),
            "{names:?}"
        );
    }
}
