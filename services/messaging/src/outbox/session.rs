//! The relay's sessions: connect (checking the exchanges at start), lead or stand by, and
//! reconnect with backoff when RabbitMQ or PostgreSQL goes away.

use std::time::Instant;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::OutboxRelay;
use super::leader::Leadership;
use crate::broker::Backoff;
use crate::{Error, Result};

impl OutboxRelay {
    pub(super) async fn run_sessions(
        &self,
        wake: &Notify,
        shutdown: &CancellationToken,
    ) -> Result<()> {
        let mut backoff = Backoff::default();
        let mut started = false;
        'session: while !shutdown.is_cancelled() {
            let mut channel = match self.connect().await {
                Ok(c) => c,
                // At start a missing exchange is a deployment error, said at once; once
                // running, an exchange gone for a moment must not end the relay.
                Err(Error::MissingTopology(what)) if !started => {
                    return Err(Error::MissingTopology(what));
                }
                Err(err) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %err, ?delay, service = %self.config.service, "outbox relay cannot connect, retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => break 'session,
                        _ = tokio::time::sleep(delay) => continue 'session,
                    }
                }
            };
            started = true;
            tracing::info!(service = %self.config.service, "outbox relay connected");
            self.metrics.relay_connected.set(1);
            loop {
                if shutdown.is_cancelled() {
                    self.metrics.relay_connected.set(0);
                    channel.close().await;
                    break 'session;
                }
                // Noticed here even while idle (every wake-up or poll), so readiness drops and
                // the relay reconnects before it has anything to publish.
                if !channel.is_connected() {
                    self.metrics.relay_connected.set(0);
                    channel.close().await;
                    tracing::warn!(service = %self.config.service, "outbox relay lost its broker connection, reconnecting");
                    continue 'session;
                }
                let leading_since = Instant::now();
                match self.lead(&mut channel, wake, shutdown).await {
                    Ok(Leadership::Ended) => backoff.reset(),
                    Ok(Leadership::HeldElsewhere) => {
                        // Another replica publishes. Stand by and try again at the poll
                        // interval, not on every NOTIFY: the leader handles those, and a
                        // take-over within one interval after it dies is soon enough.
                        tokio::select! {
                            _ = shutdown.cancelled() => {}
                            _ = tokio::time::sleep(self.config.poll_interval) => {}
                        }
                    }
                    Err(err) => {
                        // Grows while failures follow each other, starts over after a healthy
                        // spell (it once never reset, so every later hiccup cost 5-10 s).
                        let delay = backoff.after_session(leading_since.elapsed());
                        tracing::warn!(error = %err, ?delay, service = %self.config.service, "outbox relay failed; unconfirmed rows stay unmarked and go out again");
                        // Not ready while it waits: nothing is published meanwhile.
                        self.metrics.relay_connected.set(0);
                        if !channel.is_connected() {
                            channel.close().await;
                            tokio::select! {
                                _ = shutdown.cancelled() => {}
                                _ = tokio::time::sleep(delay) => {}
                            }
                            continue 'session;
                        }
                        tokio::select! {
                            _ = shutdown.cancelled() => {}
                            _ = tokio::time::sleep(delay) => {}
                        }
                        self.metrics.relay_connected.set(1);
                    }
                }
            }
        }
        Ok(())
    }
}
