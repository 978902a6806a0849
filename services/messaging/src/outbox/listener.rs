//! Wake-ups for the leader: the outbox trigger's NOTIFYs, forwarded.

use std::sync::Arc;

use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::NOTIFY_CHANNEL;
use crate::broker::Backoff;

/// Forwards outbox NOTIFYs to `wake` until `shutdown`. sqlx's listener reconnects by itself;
/// notifications lost meanwhile are covered by the relay's fallback poll.
pub(super) async fn listen_for_notifications(
    pool: PgPool,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::default();
    while !shutdown.is_cancelled() {
        let mut listener = match sqlx::postgres::PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(err) => {
                let delay = backoff.next_delay();
                tracing::warn!(error = %err, ?delay, "cannot LISTEN for outbox notifications, retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(delay) => continue,
                }
            }
        };
        if let Err(err) = listener.listen(NOTIFY_CHANNEL).await {
            tracing::warn!(error = %err, "LISTEN failed, retrying");
            tokio::time::sleep(backoff.next_delay()).await;
            continue;
        }
        backoff.reset();
        // The relay may have missed rows while we were not listening.
        wake.notify_one();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                received = listener.recv() => match received {
                    Ok(_) => {
                        crate::stages::notified();
                        wake.notify_one();
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "outbox listener lost its connection");
                        break;
                    }
                }
            }
        }
    }
}
