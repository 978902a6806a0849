//! Connecting to RabbitMQ, with backoff, and checking that the topology the code relies on exists.
//!
//! The library never declares exchanges or queues: Warren's operator owns the topology. A relay
//! or consumer only checks, at start and after every reconnect, that what it needs is there,
//! and fails with an error naming what is missing.

use std::time::Duration;

use lapin::options::{ExchangeDeclareOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties, ExchangeKind};
use tokio_util::sync::CancellationToken;

use crate::{Error, Result};

/// Exponential backoff with full jitter for reconnect loops.
#[derive(Debug, Clone)]
pub struct Backoff {
    /// First delay.
    pub initial: Duration,
    /// Largest delay.
    pub max: Duration,
    attempt: u32,
}

impl Backoff {
    /// A backoff from `initial` doubling up to `max`.
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max,
            attempt: 0,
        }
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let exp = self
            .initial
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        // Jitter between half and all of the delay, so replicas do not reconnect in lockstep.
        let half = exp / 2;
        half + Duration::from_millis(rand::random_range(0..=half.as_millis() as u64))
    }

    /// Starts over after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The delay after a session (a connection, a spell of publishing) that failed after
    /// running `lasted`: from the first delay again when it ran at least [`HEALTHY_SESSION`],
    /// since a hiccup after a healthy stretch is a new outage, not more of the last one.
    pub fn after_session(&mut self, lasted: Duration) -> Duration {
        if lasted >= HEALTHY_SESSION {
            self.reset();
        }
        self.next_delay()
    }
}

/// How long a session must have run for its failure to restart the backoff.
pub const HEALTHY_SESSION: Duration = Duration::from_secs(10);

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(Duration::from_millis(100), Duration::from_secs(10))
    }
}

/// Opens one AMQP connection whose name shows in the management UI (and lets tests find it).
pub async fn connect(amqp_url: &str, connection_name: &str) -> Result<Connection> {
    let props = ConnectionProperties::default().with_connection_name(connection_name.into());
    Connection::connect(amqp_url, props)
        .await
        .map_err(Error::Broker)
}

/// Connects, retrying with backoff until it works or `shutdown` fires (then `Ok(None)`).
pub async fn connect_with_backoff(
    amqp_url: &str,
    connection_name: &str,
    backoff: &mut Backoff,
    shutdown: &CancellationToken,
) -> Option<Connection> {
    loop {
        match connect(amqp_url, connection_name).await {
            Ok(conn) => {
                backoff.reset();
                return Some(conn);
            }
            Err(err) => {
                let delay = backoff.next_delay();
                tracing::warn!(error = %err, connection = connection_name, ?delay, "cannot reach RabbitMQ, retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// What a component needs to find on the broker before it starts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequiredTopology {
    /// Exchanges that must exist.
    pub exchanges: Vec<String>,
    /// Queues that must exist.
    pub queues: Vec<String>,
}

/// What a worker checks as it starts, so a missing topology fails the start (and names what is
/// missing) instead of a background task: the queues `consumer` reads and the exchange the
/// worker publishes to, on a short-lived connection of its own. Declares nothing.
pub async fn check_worker_topology(
    amqp_url: &str,
    service: &str,
    consumer: &crate::ConsumerConfig,
    publishes_to: &str,
) -> Result<()> {
    let conn = connect(amqp_url, &format!("{service}-topology-check")).await?;
    let mut required = consumer.required_topology();
    required.exchanges.push(publishes_to.to_owned());
    let checked = verify_topology(&conn, &required).await;
    let _ = conn.close(200, "topology checked".into()).await;
    checked
}

/// Checks with passive declares that every exchange and queue exists.
///
/// A failed passive declare closes its channel, so each check uses a channel of its own.
/// All missing objects are reported together.
pub async fn verify_topology(conn: &Connection, required: &RequiredTopology) -> Result<()> {
    let mut missing = Vec::new();
    for exchange in &required.exchanges {
        if exchange.is_empty() || exchange.starts_with("amq.") {
            continue; // built-in exchanges always exist
        }
        let channel = conn.create_channel().await?;
        let declared = channel
            .exchange_declare(
                exchange.as_str().into(),
                ExchangeKind::Topic, // ignored by a passive declare
                ExchangeDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await;
        match declared {
            Ok(()) => {
                let _ = channel.close(200, "topology check done".into()).await;
            }
            Err(err) if is_not_found(&err) => missing.push(format!("exchange '{exchange}'")),
            Err(err) => return Err(Error::Broker(err)),
        }
    }
    for queue in &required.queues {
        let channel = conn.create_channel().await?;
        let declared = channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await;
        match declared {
            Ok(_) => {
                let _ = channel.close(200, "topology check done".into()).await;
            }
            Err(err) if is_not_found(&err) => missing.push(format!("queue '{queue}'")),
            Err(err) => return Err(Error::Broker(err)),
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Error::MissingTopology(missing.join(", ")))
    }
}

fn is_not_found(err: &lapin::Error) -> bool {
    // RabbitMQ answers a passive declare of a missing object with channel error 404 NOT_FOUND.
    use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
    matches!(err.kind(), lapin::ErrorKind::ProtocolError(e)
        if *e.kind() == AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_healthy_session_restarts_the_backoff_and_a_short_one_does_not() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        for _ in 0..8 {
            b.next_delay();
        }
        // Still failing right away: the delays stay long (at least half the 10 s cap).
        assert!(b.after_session(Duration::from_millis(50)) >= Duration::from_secs(5));
        // After a healthy stretch, the first delay again (at most the 100 ms initial one).
        assert!(b.after_session(HEALTHY_SESSION) <= Duration::from_millis(100));
        assert!(b.after_session(Duration::ZERO) <= Duration::from_millis(200));
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(800));
        let delays: Vec<_> = (0..6).map(|_| b.next_delay()).collect();
        assert!(delays[0] <= Duration::from_millis(100));
        assert!(delays[3] >= Duration::from_millis(400));
        assert!(delays.iter().all(|d| *d <= Duration::from_millis(800)));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
