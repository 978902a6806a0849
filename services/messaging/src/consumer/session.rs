//! A consumer session: one AMQP connection, a dispatcher spreading deliveries over lanes by
//! aggregate, and the lanes, each with a database connection of its own.

use std::time::Duration;

use futures::StreamExt;
use lapin::Channel;
use lapin::message::Delivery;
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use sqlx::{ConnectOptions, Connection, PgConnection};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::broker::{self, Backoff};
use crate::events::{DecodeError, Envelope};
use crate::stages::{self, Stage};
use crate::{Error, Result};

use super::{EventHandler, IdempotentConsumer};

/// One delivery and what decoding made of it.
pub(super) struct Item {
    pub(super) delivery: Delivery,
    pub(super) decoded: std::result::Result<Envelope, DecodeError>,
}

impl Item {
    /// The event's id for logs: the decoded one, else the message id (the relay sets it to the
    /// event id), else `unknown`.
    pub(super) fn event_id(&self) -> String {
        match &self.decoded {
            Ok(env) => env.event_id.to_string(),
            Err(_) => self
                .delivery
                .properties
                .message_id()
                .as_ref()
                .map_or_else(|| "unknown".to_owned(), |id| id.to_string()),
        }
    }

    pub(super) fn event_type(&self) -> &str {
        match &self.decoded {
            Ok(env) => env.event_type(),
            Err(_) => crate::metrics::UNKNOWN_EVENT_TYPE,
        }
    }
}

/// The channels of a consumer session a lane works with: deliveries come (and are acked) on
/// `consume`; failed messages are parked through `publish`, in confirm mode.
pub(super) struct LaneChannels {
    pub(super) consume: Channel,
    pub(super) publish: Channel,
}

impl<H: EventHandler> IdempotentConsumer<H> {
    /// The connect, check and consume loop of [`IdempotentConsumer::run`].
    pub(super) async fn consume(&self, shutdown: &CancellationToken) -> Result<()> {
        let shutdown = shutdown.clone();
        let mut backoff = Backoff::default();
        let name = format!("{}-consumer-{}", self.config.service, self.config.queue);
        let mut started = false;
        let mut topology_backoff =
            Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        while !shutdown.is_cancelled() {
            let Some(conn) =
                broker::connect_with_backoff(&self.config.amqp_url, &name, &mut backoff, &shutdown)
                    .await
            else {
                break;
            };
            match broker::verify_topology(&conn, &self.config.required_topology()).await {
                Ok(()) => {
                    started = true;
                    topology_backoff.reset();
                }
                // At start a missing queue is a deployment error, said at once; once running,
                // a queue deleted for a moment (a topology blip) must not end the consumer.
                Err(Error::MissingTopology(what)) if !started => {
                    return Err(Error::MissingTopology(what));
                }
                Err(err) => {
                    // A missing queue, or the connection failed mid-check: try again like any
                    // other outage (a backoff of its own: connecting resets the other one).
                    let delay = topology_backoff.next_delay();
                    tracing::warn!(error = %err, ?delay, queue = %self.config.queue, "topology check failed, reconnecting");
                    let _ = conn.close(200, "retrying".into()).await;
                    tokio::select! {
                        _ = shutdown.cancelled() => {}
                        _ = tokio::time::sleep(delay) => {}
                    }
                    continue;
                }
            }
            match self.session(&conn, &shutdown).await {
                Ok(()) => {}
                Err(err) => {
                    tracing::warn!(error = %err, queue = %self.config.queue, "consumer session ended, reconnecting");
                }
            }
            let _ = conn.close(200, "consumer stopping".into()).await;
            if !shutdown.is_cancelled() {
                let delay = backoff.next_delay();
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
        Ok(())
    }

    /// One connection's life: consume, dispatch to lanes, wait for the lanes on the way out.
    pub(super) async fn session(
        &self,
        conn: &lapin::Connection,
        shutdown: &CancellationToken,
    ) -> Result<()> {
        let consume_channel = conn.create_channel().await?;
        consume_channel
            .basic_qos(self.config.prefetch, BasicQosOptions::default())
            .await?;
        let publish_channel = conn.create_channel().await?;
        publish_channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let tag = format!(
            "{}-{}-{}",
            self.config.service,
            self.config.queue,
            &Uuid::new_v4().simple().to_string()[..8]
        );
        let mut deliveries = consume_channel
            .basic_consume(
                self.config.queue.as_str().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        tracing::info!(queue = %self.config.queue, consumer_tag = %tag, "consuming");
        self.metrics.set_consuming(&self.config.queue, true);

        let lanes = self.config.lanes.max(1);
        let per_lane = (usize::from(self.config.prefetch) / lanes).max(1) + 1;
        let mut senders = Vec::with_capacity(lanes);
        let mut workers = tokio::task::JoinSet::new();
        for _ in 0..lanes {
            let (tx, rx) = mpsc::channel::<Item>(per_lane);
            senders.push(tx);
            let lane = self.clone();
            let channels = LaneChannels {
                consume: consume_channel.clone(),
                publish: publish_channel.clone(),
            };
            let stop = shutdown.clone();
            workers.spawn(async move { lane.run_lane(rx, channels, stop).await });
        }

        let ended = loop {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    let _ = consume_channel
                        .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
                        .await;
                    break Ok(());
                }
                next = deliveries.next() => match next {
                    Some(Ok(delivery)) => {
                        let decoded = Envelope::from_json(&delivery.data);
                        if let Ok(env) = &decoded {
                            stages::reached(Stage::Delivered, env.event_id);
                        }
                        let lane = lane_of(&decoded, delivery.delivery_tag, lanes);
                        tokio::select! {
                            sent = senders[lane].send(Item { delivery, decoded }) => {
                                if sent.is_err() {
                                    break Err(Error::Config("a consumer lane stopped".into()));
                                }
                            }
                            // A lane held up (database outage, park retries) fills its queue;
                            // stopping must not wait for it.
                            _ = shutdown.cancelled() => {
                                let _ = consume_channel
                                    .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
                                    .await;
                                break Ok(());
                            }
                        }
                    }
                    Some(Err(err)) => break Err(Error::Broker(err)),
                    None => break Err(Error::Config("the broker cancelled the consumer".into())),
                }
            }
        };
        self.metrics.set_consuming(&self.config.queue, false);
        // Lanes finish what they hold, then stop.
        drop(senders);
        while workers.join_next().await.is_some() {}
        let _ = publish_channel.close(200, "done".into()).await;
        let _ = consume_channel.close(200, "done".into()).await;
        ended
    }

    /// Handles the batches of one lane on a database connection of the lane's own.
    ///
    /// A lane is busy for the consumer's whole life, so it keeps its connection instead of
    /// taking one from the pool per batch: that saves the pool's liveness ping, a round trip
    /// on the way of every event. A connection that fails is dropped and opened afresh.
    ///
    /// An unusable database is not the messages' fault: the batch stays unacknowledged and is
    /// tried again, with backoff, until the database answers. A requeue would spend a delivery
    /// of each message, and quorum queues dead-letter a message after `x-delivery-limit` of
    /// those, handled or not. The lane gives the batch up (unacknowledged: RabbitMQ delivers it
    /// again once the channel closes) only when the consumer stops or its channel is gone.
    pub(super) async fn run_lane(
        self,
        mut rx: mpsc::Receiver<Item>,
        channels: LaneChannels,
        stop: CancellationToken,
    ) {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        let mut db: Option<PgConnection> = None;
        while let Some(first) = rx.recv().await {
            let mut batch = vec![first];
            while batch.len() < self.config.max_batch.max(1) {
                match rx.try_recv() {
                    Ok(item) => batch.push(item),
                    Err(_) => break,
                }
            }
            if stages::enabled() {
                for env in batch.iter().filter_map(|item| item.decoded.as_ref().ok()) {
                    stages::reached(Stage::Picked, env.event_id);
                }
            }
            let handled = loop {
                let attempt = match db.as_mut() {
                    Some(conn) => self.handle_batch(conn, &batch).await,
                    None => match self.pool.connect_options().connect().await {
                        Ok(conn) => self.handle_batch(db.insert(conn), &batch).await,
                        Err(err) => Err(err),
                    },
                };
                match attempt {
                    Ok(handled) => break Some(handled),
                    Err(err) => {
                        if let Some(conn) = db.take() {
                            let _ = conn.close_hard().await;
                        }
                        let delay = backoff.next_delay();
                        tracing::warn!(error = %err, ?delay, held = batch.len(), queue = %self.config.queue,
                            "database unavailable; holding the batch unacknowledged until it answers");
                        tokio::select! {
                            _ = stop.cancelled() => break None,
                            _ = tokio::time::sleep(delay) => {}
                        }
                        if !channels.consume.status().connected() {
                            break None;
                        }
                    }
                }
            };
            let Some(handled) = handled else {
                // Stopping, or the deliveries' channel is gone: RabbitMQ hands them out again.
                return;
            };
            backoff.reset();
            // Together: lapin resolves each ack only once its I/O loop wrote it, so one at a
            // time would cost a thread hand-off per message.
            let settles = batch
                .into_iter()
                .zip(handled)
                .map(|(item, handled)| self.settle(item, handled, &channels, &stop));
            if futures::future::join_all(settles)
                .await
                .into_iter()
                .any(|settled| !settled)
            {
                // A message could not be parked and the publishing channel is gone: end the
                // session (its deliveries go back to the queue) and reconnect.
                return;
            }
        }
        if let Some(conn) = db {
            let _ = conn.close().await;
        }
    }
}

/// Events of one aggregate share a lane; undecodable messages spread by delivery tag.
fn lane_of(decoded: &std::result::Result<Envelope, DecodeError>, tag: u64, lanes: usize) -> usize {
    let key = match decoded {
        Ok(env) => env.event.aggregate_id().as_u128() as u64,
        Err(_) => tag,
    };
    (key % lanes as u64) as usize
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::events::{Event, StockReplenished};

    fn event_of(product: Uuid) -> std::result::Result<Envelope, DecodeError> {
        let quantity =
            crate::events::Quantity::new(1).ok_or(DecodeError::MalformedJson("q".into()))?;
        Ok(Envelope::new(
            Event::StockReplenished(StockReplenished {
                product_id: product,
                quantity_added: quantity,
                new_stock_level: 1,
            }),
            "test",
            "c",
        ))
    }

    #[test]
    fn one_aggregate_always_takes_one_lane_and_undecodable_messages_spread() {
        let product = Uuid::new_v4();
        let lanes: HashSet<usize> = (0..50)
            .map(|tag| lane_of(&event_of(product), tag, 8))
            .collect();
        assert_eq!(lanes.len(), 1, "every event of one product in one lane");
        let spread: HashSet<usize> = (0..8)
            .map(|tag| lane_of(&Err(DecodeError::MalformedJson("x".into())), tag, 8))
            .collect();
        assert_eq!(spread.len(), 8, "undecodable messages by delivery tag");
        assert!(lane_of(&event_of(Uuid::new_v4()), 3, 1) == 0);
    }
}
