//! The relay's AMQP channel in confirm mode, the properties every event is published with, and
//! what a confirm means for its row.

use std::collections::HashSet;
use std::time::Instant;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Confirmation, Connection};
use uuid::Uuid;

use super::{OutboxRow, RowOutcome};
use crate::broker::{self, RequiredTopology};
use crate::{Error, Result};

/// An AMQP channel in confirm mode, plus which exchanges were seen to exist on it.
pub struct RelayChannel {
    connection: Connection,
    channel: Channel,
    known_exchanges: HashSet<String>,
}

impl RelayChannel {
    /// Opens a confirm-mode channel on `connection`.
    pub async fn open(connection: Connection) -> Result<RelayChannel> {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(RelayChannel {
            connection,
            channel,
            known_exchanges: HashSet::new(),
        })
    }

    /// Whether the connection is still usable.
    pub fn is_connected(&self) -> bool {
        self.connection.status().connected() && self.channel.status().connected()
    }

    /// Closes the connection (best effort).
    pub async fn close(self) {
        let _ = self.connection.close(200, "relay stopping".into()).await;
    }

    /// A passive check, so a row naming a missing exchange is held back instead of killing the
    /// publishing channel with NOT_FOUND. Only an exchange found is remembered (for the
    /// connection's life): a missing one is asked for again when its row is next due, so an
    /// exchange declared later is used without a reconnect.
    pub(super) async fn exchange_exists(&mut self, exchange: &str) -> Result<bool> {
        if self.known_exchanges.contains(exchange) {
            return Ok(true);
        }
        let required = RequiredTopology {
            exchanges: vec![exchange.to_owned()],
            queues: vec![],
        };
        match broker::verify_topology(&self.connection, &required).await {
            Ok(()) => {
                self.known_exchanges.insert(exchange.to_owned());
                Ok(true)
            }
            Err(Error::MissingTopology(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Publishes `row` (persistent, `mandatory`) for `service`, without waiting for its
    /// confirm.
    pub(super) fn publish<'a>(
        &'a self,
        row: &'a OutboxRow,
        service: &'a str,
    ) -> impl std::future::Future<Output = lapin::Result<lapin::PublisherConfirm>> + 'a {
        let props = message_properties(
            row.event_id,
            &row.correlation_id,
            &row.event_type,
            service,
            row.occurred_at,
        );
        self.channel.basic_publish(
            row.exchange.as_str().into(),
            row.routing_key.as_str().into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            row.payload.as_bytes(),
            props,
        )
    }
}

/// The properties the relay publishes an event with: persistent JSON, message id = event id,
/// correlation id, type, the publishing service as app id, and when the event occurred.
/// Public so a benchmark's raw baseline can send exactly what the relay sends.
pub fn message_properties(
    event_id: Uuid,
    correlation_id: &str,
    event_type: &str,
    service: &str,
    occurred_at: jiff::Timestamp,
) -> BasicProperties {
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_message_id(event_id.to_string().into())
        .with_correlation_id(correlation_id.into())
        .with_type(event_type.into())
        .with_app_id(service.into())
        .with_timestamp(occurred_at.as_second().max(0) as u64)
}

/// Waits for one confirm and says what it means for the row.
pub(super) async fn confirm_outcome(
    confirm: &mut lapin::PublisherConfirm,
    started: Instant,
) -> Result<RowOutcome> {
    Ok(match confirm.await? {
        Confirmation::Ack(None) => RowOutcome::Published(started.elapsed()),
        Confirmation::Ack(Some(returned)) => RowOutcome::Failed(format!(
            "returned by the broker: {} {} (no queue is bound for this routing key)",
            returned.reply_code, returned.reply_text
        )),
        Confirmation::Nack(_) => RowOutcome::Failed("the broker refused the message (nack)".into()),
        Confirmation::NotRequested => RowOutcome::Failed("not published".into()),
    })
}
