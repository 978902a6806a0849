//! Housekeeping on a timer: the relay's retention cleanup and the consumer's pruning of
//! `processed_events` both run this way.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Runs `work` at once and then every `period` until `stop`. A run that overruns the period
/// delays the next one instead of bunching them up.
pub(crate) async fn every<F, Fut>(period: Duration, stop: CancellationToken, mut work: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticks.tick() => work().await,
        }
    }
}
