//! The resync clock: every resync period, the listings of RabbitMQ are dropped and every topology
//! resource is looked at again (kube's `reconcile_all_on`), so drift made behind Warren's back is
//! repaired within one period.
//!
//! A resource found in sync is not requeued on its own. At 20,000 resources those requeues were
//! 20,000 timers in the controllers' schedulers (12 MB, a tenth of the operator), held the whole
//! time; one clock ticking for all of them holds nothing between ticks.

use std::time::Duration;

use futures::Stream;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::snapshot::Snapshots;

/// Ticks once per resync period for every controller that subscribed.
pub struct ResyncClock {
    period: Duration,
    ticks: broadcast::Sender<()>,
}

impl ResyncClock {
    /// A clock of `period` (not started: see [`ResyncClock::run`]).
    pub fn new(period: Duration) -> Self {
        ResyncClock {
            period,
            ticks: broadcast::channel(4).0,
        }
    }

    /// The ticks, for `Controller::reconcile_all_on`.
    pub fn ticks(&self) -> impl Stream<Item = ()> + Send + 'static {
        futures::stream::unfold(self.ticks.subscribe(), |mut ticks| async move {
            match ticks.recv().await {
                // A controller that missed ticks needs only one to look at everything.
                Ok(()) | Err(broadcast::error::RecvError::Lagged(_)) => Some(((), ticks)),
                Err(broadcast::error::RecvError::Closed) => None,
            }
        })
    }

    /// Ticks until `stop`. The first tick is one period after the start: starting, every
    /// controller looks at every resource anyway.
    pub async fn run(self, snapshots: &Snapshots, stop: CancellationToken) {
        let start = tokio::time::Instant::now() + self.period;
        let mut clock = tokio::time::interval_at(start, self.period);
        clock.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = clock.tick() => {}
                _ = stop.cancelled() => return,
            }
            // The look at every resource must see RabbitMQ as it is now, not through a listing
            // taken a moment before the tick.
            snapshots.expire_all();
            // No subscriber (the controllers are stopping) is fine.
            let _ = self.ticks.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn ticks_once_a_period_after_the_first_period() {
        let clock = ResyncClock::new(Duration::from_secs(60));
        let mut ticks = Box::pin(clock.ticks());
        let stop = CancellationToken::new();
        let snapshots = Snapshots::new(Duration::from_secs(10));
        let started = tokio::time::Instant::now();
        let running = tokio::spawn({
            let stop = stop.clone();
            async move { clock.run(&snapshots, stop).await }
        });
        for n in 1..=2 {
            assert_eq!(ticks.next().await, Some(()));
            assert_eq!(started.elapsed(), Duration::from_secs(60 * n));
        }
        stop.cancel();
        running.await.unwrap_or_else(|e| panic!("{e}"));
        // The clock is gone: so are its ticks.
        assert_eq!(ticks.next().await, None);
    }
}
