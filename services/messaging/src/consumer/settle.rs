//! After the database: ack a handled message, or park it (a retry tier or the dead-letter
//! queue, publisher-confirmed) and only then ack it.

use std::time::Duration;

use lapin::Confirmation;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicPublishOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel};
use tokio_util::sync::CancellationToken;

use crate::broker::Backoff;
use crate::metrics::Metrics;
use crate::retry::{self, Disposition};
use crate::{Error, Result};

use super::batch::Handled;
use super::session::{Item, LaneChannels};
use super::{EventHandler, IdempotentConsumer};

impl<H: EventHandler> IdempotentConsumer<H> {
    /// Acks a handled message, or parks it (retry tier or dead-letter queue) and then acks it.
    /// False when the message could not be parked because the publishing channel is gone.
    pub(super) async fn settle(
        &self,
        item: Item,
        handled: Handled,
        channels: &LaneChannels,
        stop: &CancellationToken,
    ) -> bool {
        let previous_attempts = header_u32(
            item.delivery.properties.headers().as_ref(),
            retry::ATTEMPTS_HEADER,
        );
        let disposition = match &handled {
            Handled::Done => {
                self.metrics.consumed(item.event_type(), "success");
                ack(&item.delivery).await;
                return true;
            }
            Handled::Duplicate => {
                if let Ok(env) = &item.decoded {
                    tracing::info!(event_id = %env.event_id, correlation_id = %env.metadata.correlation_id, "duplicate event acknowledged and skipped");
                }
                self.metrics.consumed(item.event_type(), "duplicate");
                ack(&item.delivery).await;
                return true;
            }
            Handled::Failed(err) => retry::after_handler_failure(
                &self.config.retry,
                &self.config.queue,
                previous_attempts,
                err,
            ),
            Handled::Undecodable => match &item.decoded {
                Err(decode_err) => retry::after_decode_failure(previous_attempts, decode_err),
                Ok(_) => return true,
            },
        };
        let error_text = match (&handled, &item.decoded) {
            (Handled::Failed(e), _) => e.to_string(),
            (_, Err(e)) => e.to_string(),
            _ => String::new(),
        };
        let (exchange, routing_key, headers, status) = match &disposition {
            Disposition::Retry {
                queue,
                delay,
                attempts,
            } => {
                tracing::warn!(
                    event_id = %item.event_id(),
                    attempts, ?delay, error = %error_text, "handling failed; retrying later");
                let headers = self.park_headers(&item, *attempts, &error_text, None);
                (String::new(), queue.clone(), headers, "retried")
            }
            Disposition::DeadLetter {
                reason,
                detail,
                attempts,
            } => {
                tracing::error!(
                    event_id = %item.event_id(),
                    correlation_id = ?item.decoded.as_ref().ok().map(|e| e.metadata.correlation_id.clone()),
                    reason, attempts, detail = %detail, "message dead-lettered");
                let headers = self.park_headers(&item, *attempts, detail, Some(reason));
                (
                    self.config.dead_letter_exchange.clone(),
                    self.config.queue.clone(),
                    headers,
                    "dead_lettered",
                )
            }
        };
        let properties = item.delivery.properties.clone().with_headers(headers);
        // A park that fails (a retry queue unbound, RabbitMQ refusing) is tried again with
        // backoff while the message stays unacknowledged: the handler does not run again, and
        // none of the message's attempts or deliveries are spent on it.
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        loop {
            match publish_confirmed(
                &channels.publish,
                &exchange,
                &routing_key,
                &item.delivery.data,
                properties.clone(),
            )
            .await
            {
                Ok(()) => {
                    self.metrics.consumed(item.event_type(), status);
                    if status == "dead_lettered" {
                        Metrics::by_type(&self.metrics.events_dlq, item.event_type()).inc();
                    }
                    ack(&item.delivery).await;
                    return true;
                }
                Err(err) => {
                    let delay = backoff.next_delay();
                    tracing::error!(error = %err, exchange = %exchange, routing_key = %routing_key, ?delay,
                        "could not park a failed message; holding it and trying again");
                    if !channels.publish.status().connected() {
                        // Without a publishing channel nothing can be parked: give the message
                        // back (the session reconnects and makes a new channel).
                        requeue(&item.delivery).await;
                        return false;
                    }
                    tokio::select! {
                        // Unacknowledged: RabbitMQ delivers it again once the channel closes.
                        _ = stop.cancelled() => return true,
                        _ = tokio::time::sleep(delay) => {}
                    }
                    if !channels.consume.status().connected() {
                        return true;
                    }
                }
            }
        }
    }

    fn park_headers(
        &self,
        item: &Item,
        attempts: u32,
        error: &str,
        reason: Option<&str>,
    ) -> FieldTable {
        park_headers(
            item.delivery
                .properties
                .headers()
                .clone()
                .unwrap_or_default(),
            Delivered {
                exchange: item.delivery.exchange.as_str(),
                routing_key: item.delivery.routing_key.as_str(),
                queue: &self.config.queue,
            },
            Parked {
                attempts,
                error,
                reason,
                at: jiff::Timestamp::now(),
            },
        )
    }
}

async fn publish_confirmed(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    properties: BasicProperties,
) -> Result<()> {
    let confirm = channel
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            body,
            properties,
        )
        .await?
        .await?;
    match confirm {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(returned)) => Err(Error::NotConfirmed(format!(
            "returned: {} {} (is the queue bound?)",
            returned.reply_code, returned.reply_text
        ))),
        Confirmation::Nack(_) => Err(Error::NotConfirmed("nacked by the broker".into())),
        Confirmation::NotRequested => Err(Error::NotConfirmed("confirms not enabled".into())),
    }
}

pub(super) async fn ack(delivery: &Delivery) {
    if let Err(err) = delivery.acker.ack(BasicAckOptions::default()).await {
        // The broker will redeliver; processed_events turns that into a duplicate.
        tracing::warn!(error = %err, "ack failed");
    }
}

pub(super) async fn requeue(delivery: &Delivery) {
    let options = BasicNackOptions {
        requeue: true,
        ..Default::default()
    };
    if let Err(err) = delivery.acker.nack(options).await {
        tracing::warn!(error = %err, "nack failed; the broker redelivers when the channel closes");
    }
}

/// Where a message to park was delivered from.
struct Delivered<'a> {
    exchange: &'a str,
    routing_key: &'a str,
    queue: &'a str,
}

/// Why and when it is parked.
struct Parked<'a> {
    /// Failed attempts, this one included.
    attempts: u32,
    error: &'a str,
    /// Set when it goes to the dead-letter queue (not a retry tier).
    reason: Option<&'a str>,
    at: jiff::Timestamp,
}

/// The headers a parked message carries: its own, plus the attempt count, the exchange and
/// routing key it was first published with (kept from an earlier park: a message back from a
/// retry tier arrives through the default exchange), the queue, the error (at most 2000
/// characters, whatever the handler wrote) and, for the dead-letter queue, the reason and when.
fn park_headers(
    mut headers: FieldTable,
    delivered: Delivered<'_>,
    parked: Parked<'_>,
) -> FieldTable {
    let original_exchange = header_string(Some(&headers), retry::ORIGINAL_EXCHANGE_HEADER)
        .unwrap_or_else(|| delivered.exchange.to_owned());
    let original_key = header_string(Some(&headers), retry::ORIGINAL_ROUTING_KEY_HEADER)
        .unwrap_or_else(|| delivered.routing_key.to_owned());
    let text = |s: &str| AMQPValue::LongString(s.into());
    headers.insert(
        retry::ATTEMPTS_HEADER.into(),
        AMQPValue::LongLongInt(i64::from(parked.attempts)),
    );
    headers.insert(
        retry::ORIGINAL_EXCHANGE_HEADER.into(),
        text(&original_exchange),
    );
    headers.insert(
        retry::ORIGINAL_ROUTING_KEY_HEADER.into(),
        text(&original_key),
    );
    headers.insert(retry::QUEUE_HEADER.into(), text(delivered.queue));
    let error: String = parked.error.chars().take(2000).collect();
    headers.insert(retry::ERROR_HEADER.into(), text(&error));
    if let Some(reason) = parked.reason {
        headers.insert(retry::REASON_HEADER.into(), text(reason));
        headers.insert(
            retry::DEAD_LETTERED_AT_HEADER.into(),
            text(&parked.at.to_string()),
        );
    }
    headers
}

fn header<'a>(headers: Option<&'a FieldTable>, name: &str) -> Option<&'a AMQPValue> {
    headers.and_then(|h| h.inner().get(name))
}

/// A numeric header as a count; 0 when missing, negative or not a number.
fn header_u32(headers: Option<&FieldTable>, name: &str) -> u32 {
    let n = match header(headers, name) {
        Some(AMQPValue::LongLongInt(n)) => *n,
        Some(AMQPValue::LongInt(n)) => i64::from(*n),
        Some(AMQPValue::LongUInt(n)) => i64::from(*n),
        Some(AMQPValue::ShortInt(n)) => i64::from(*n),
        Some(AMQPValue::ShortUInt(n)) => i64::from(*n),
        Some(AMQPValue::ShortShortInt(n)) => i64::from(*n),
        Some(AMQPValue::ShortShortUInt(n)) => i64::from(*n),
        _ => 0,
    };
    u32::try_from(n).unwrap_or(0)
}

fn header_string(headers: Option<&FieldTable>, name: &str) -> Option<String> {
    match header(headers, name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parked<'a>(reason: Option<&'a str>, error: &'a str) -> Parked<'a> {
        Parked {
            attempts: 2,
            error,
            reason,
            at: jiff::Timestamp::now(),
        }
    }

    const DELIVERED: Delivered<'static> = Delivered {
        exchange: "inventory.events",
        routing_key: "inventory.reserved",
        queue: "orders.inventory_events",
    };

    #[test]
    fn a_retry_records_the_attempts_and_where_the_message_first_went() {
        let headers = park_headers(FieldTable::default(), DELIVERED, parked(None, "timeout"));
        let h = Some(&headers);
        assert_eq!(header_u32(h, retry::ATTEMPTS_HEADER), 2);
        assert_eq!(
            header_string(h, retry::ORIGINAL_EXCHANGE_HEADER).as_deref(),
            Some("inventory.events")
        );
        assert_eq!(
            header_string(h, retry::ERROR_HEADER).as_deref(),
            Some("timeout")
        );
        assert_eq!(
            header_string(h, retry::REASON_HEADER),
            None,
            "not dead-lettered"
        );
        // Back from the retry tier through the default exchange, it keeps the first ones.
        let back = Delivered {
            exchange: "",
            routing_key: "orders.inventory_events",
            queue: "orders.inventory_events",
        };
        let again = park_headers(headers, back, parked(Some("retries_exhausted"), "timeout"));
        let h = Some(&again);
        assert_eq!(
            header_string(h, retry::ORIGINAL_EXCHANGE_HEADER).as_deref(),
            Some("inventory.events")
        );
        assert_eq!(
            header_string(h, retry::ORIGINAL_ROUTING_KEY_HEADER).as_deref(),
            Some("inventory.reserved")
        );
        assert_eq!(
            header_string(h, retry::REASON_HEADER).as_deref(),
            Some("retries_exhausted")
        );
        assert!(header_string(h, retry::DEAD_LETTERED_AT_HEADER).is_some());
    }

    #[test]
    fn a_long_error_is_cut_and_odd_counts_read_as_zero() {
        let long = "x".repeat(5000);
        let headers = park_headers(FieldTable::default(), DELIVERED, parked(None, &long));
        let error = header_string(Some(&headers), retry::ERROR_HEADER).unwrap_or_default();
        assert_eq!(error.chars().count(), 2000);
        let mut odd = FieldTable::default();
        odd.insert("n".into(), AMQPValue::LongLongInt(-4));
        odd.insert("s".into(), AMQPValue::LongString("3".into()));
        assert_eq!(header_u32(Some(&odd), "n"), 0);
        assert_eq!(header_u32(Some(&odd), "s"), 0);
        assert_eq!(header_u32(None, "n"), 0);
    }
}
