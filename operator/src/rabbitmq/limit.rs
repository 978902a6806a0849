//! How hard Warren may press one broker's management API: at most so many calls in flight, and,
//! when set, at most so many started per second. One [`BrokerLimit`] is shared by every client of
//! the same management URL, so a 10,000-object apply, every controller and a rotated credential's
//! new client all queue behind the same bound instead of each having their own.
//!
//! The management API answers each call on the broker's own schedulers, next to the messages it
//! routes; what overloads it is many calls at once, not a high rate of cheap ones. That is why the
//! in-flight bound is always on and the rate is an opt-in cap.

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::time::Instant;

/// The default bound on one broker's calls in flight: the CLI's `--concurrency` default too. The
/// converge benchmark found no gain past it on a 2-core broker (the calls queue in RabbitMQ).
pub const DEFAULT_MAX_IN_FLIGHT: usize = 8;

/// The limits one broker's clients share.
#[derive(Debug)]
pub struct BrokerLimit {
    in_flight: Semaphore,
    /// Least time between two call starts; zero for no rate cap.
    spacing: Duration,
    /// When the next call may start under the rate cap.
    next_start: Mutex<Instant>,
}

impl BrokerLimit {
    /// At most `max_in_flight` calls at once (at least 1) and, unless `per_second` is 0, at most
    /// `per_second` call starts per second, spread evenly.
    pub fn new(max_in_flight: usize, per_second: u32) -> Self {
        let spacing = match per_second {
            0 => Duration::ZERO,
            rate => Duration::from_secs(1) / rate,
        };
        BrokerLimit {
            in_flight: Semaphore::new(max_in_flight.max(1)),
            spacing,
            next_start: Mutex::new(Instant::now()),
        }
    }

    /// Waits for a slot; the call may run while the returned permit lives.
    ///
    /// `None` only if the semaphore were closed, which nothing does: the call then runs
    /// unbounded rather than failing a reconcile.
    pub async fn acquire(&self) -> Option<SemaphorePermit<'_>> {
        if !self.spacing.is_zero() {
            // Reserve the next start time, then wait for it outside the lock.
            let start = {
                let mut next = self.next_start.lock().unwrap_or_else(|p| p.into_inner());
                let start = (*next).max(Instant::now());
                *next = start + self.spacing;
                start
            };
            tokio::time::sleep_until(start).await;
        }
        self.in_flight.acquire().await.ok()
    }
}

impl Default for BrokerLimit {
    fn default() -> Self {
        BrokerLimit::new(DEFAULT_MAX_IN_FLIGHT, 0)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn no_more_calls_than_the_bound_run_at_once() {
        let limit = Arc::new(BrokerLimit::new(3, 0));
        let (running, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let (limit, running, peak) = (limit.clone(), running.clone(), peak.clone());
                tokio::spawn(async move {
                    let _permit = limit.acquire().await;
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    tokio::task::yield_now().await;
                    running.fetch_sub(1, Ordering::SeqCst);
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap_or_else(|e| panic!("{e}"));
        }
        assert_eq!(peak.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_rate_cap_spreads_call_starts_evenly() {
        let limit = BrokerLimit::new(100, 10);
        let started = Instant::now();
        for _ in 0..11 {
            drop(limit.acquire().await);
        }
        // The first starts at once, each next one 100 ms later.
        assert_eq!(started.elapsed(), Duration::from_secs(1));
    }
}
