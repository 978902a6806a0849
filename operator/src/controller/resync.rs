//! The resync clock: every resync period, the listings of RabbitMQ are dropped and every topology
//! resource is looked at again, so drift made behind Warren's back is repaired within one period.
//!
//! A resource found in sync is not requeued on its own. At 20,000 resources those requeues were
//! 20,000 requests in the controllers' schedulers (12 MB, a tenth of the operator), held the
//! whole time. One clock ticking for all of them holds nothing between ticks, and at a tick
//! [`paced`] hands the resources over a batch at a time, as the controller gets through them,
//! so the scheduler never holds them all at once either.

use std::collections::VecDeque;
use std::time::Duration;

use futures::{Stream, StreamExt};
use kube::Resource;
use kube::runtime::reflector::{ObjectRef, Store};
use tokio::sync::broadcast;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::snapshot::Snapshots;

/// Resources handed to a controller before [`paced`] waits for it to get through some.
const BATCH: u64 = 64;

/// How often [`paced`] looks at the controller's progress while it waits.
const POLL: Duration = Duration::from_millis(20);

/// The longest [`paced`] waits for progress before it hands over the next batch anyway (a
/// controller this slow is not held up by the resync, and the resync is not held up for good).
const PATIENCE: Duration = Duration::from_secs(1);

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

    /// The ticks, for [`paced`].
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

/// Every resource of `store` after each of `ticks`, for `Controller::reconcile_on`: a batch at
/// a time, the next once `finished` (the controller's count of finished reconciles) has moved
/// on by half a batch.
pub fn paced<K>(
    ticks: impl Stream<Item = ()> + Send + 'static,
    store: Store<K>,
    finished: impl Fn() -> u64 + Send + 'static,
) -> impl Stream<Item = ObjectRef<K>> + Send + 'static
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    let pace = Pace {
        ticks: ticks.boxed(),
        store,
        finished,
        due: VecDeque::new(),
        handed: 0,
        mark: 0,
    };
    futures::stream::unfold(pace, |mut pace| async move {
        let next = pace.next().await?;
        Some((next, pace))
    })
}

/// What [`paced`] keeps between the resources it hands over.
struct Pace<K: Resource<DynamicType = ()> + 'static, F> {
    ticks: futures::stream::BoxStream<'static, ()>,
    store: Store<K>,
    finished: F,
    /// The resources of this tick not handed over yet.
    due: VecDeque<ObjectRef<K>>,
    /// Handed over since `mark` was read.
    handed: u64,
    /// `finished` when the current batch began.
    mark: u64,
}

impl<K, F> Pace<K, F>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
    F: Fn() -> u64,
{
    async fn next(&mut self) -> Option<ObjectRef<K>> {
        // A tick with nothing cached hands nothing over, and the next tick is waited for.
        while self.due.is_empty() {
            self.ticks.next().await?;
            // Names only: the controller finds the object in the cache when it gets to it.
            self.due = self
                .store
                .state()
                .iter()
                .filter_map(|object| {
                    let meta = object.meta();
                    let name = meta.name.as_deref()?;
                    let reference = ObjectRef::new(name);
                    Some(match meta.namespace.as_deref() {
                        Some(namespace) => reference.within(namespace),
                        None => reference,
                    })
                })
                .collect();
            self.handed = 0;
            self.mark = (self.finished)();
        }
        if self.handed >= BATCH {
            let deadline = Instant::now() + PATIENCE;
            while (self.finished)() < self.mark + BATCH / 2 && Instant::now() < deadline {
                tokio::time::sleep(POLL).await;
            }
            self.handed = 0;
            self.mark = (self.finished)();
        }
        self.handed += 1;
        self.due.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::runtime::{reflector, watcher};

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

    #[tokio::test(start_paused = true)]
    async fn a_tick_hands_every_resource_over_as_fast_as_the_controller_gets_through_them() {
        let (store, mut writer) = reflector::store::<ConfigMap>();
        for n in 0..BATCH * 3 {
            let mut object = ConfigMap::default();
            object.metadata.name = Some(format!("c{n}"));
            object.metadata.namespace = Some("ns".into());
            writer.apply_watcher_event(&watcher::Event::Apply(object));
        }
        let finished = Arc::new(AtomicU64::new(0));
        let (ticks, _) = broadcast::channel(4);
        let clock = ResyncClock {
            period: Duration::from_secs(60),
            ticks,
        };
        let counted = finished.clone();
        let mut due = Box::pin(paced(clock.ticks(), store, move || {
            counted.load(Ordering::Relaxed)
        }));
        let mut names = std::collections::BTreeSet::new();
        // Nothing cached at the first tick: nothing handed over, and the stream goes on.
        let (empty, _) = reflector::store::<ConfigMap>();
        let mut nothing = Box::pin(paced(clock.ticks(), empty, || 0));
        clock.ticks.send(()).unwrap_or_else(|e| panic!("{e}"));
        let waited = tokio::time::timeout(Duration::from_secs(3600), nothing.next()).await;
        assert!(waited.is_err(), "{waited:?}");
        for _ in 0..BATCH {
            let reference = due.next().await.unwrap_or_else(|| panic!("ended"));
            names.insert(reference.name);
        }
        // A controller that gets through half a batch gets the next one at once...
        let started = Instant::now();
        finished.store(BATCH / 2, Ordering::Relaxed);
        for _ in 0..BATCH {
            let reference = due.next().await.unwrap_or_else(|| panic!("ended"));
            names.insert(reference.name);
        }
        assert!(started.elapsed() < PATIENCE, "{:?}", started.elapsed());
        // ...one that gets through none waits PATIENCE for the next.
        let reference = due.next().await.unwrap_or_else(|| panic!("ended"));
        names.insert(reference.name);
        assert!(started.elapsed() >= PATIENCE, "{:?}", started.elapsed());
        finished.store(BATCH * 3, Ordering::Relaxed);
        while names.len() < (BATCH * 3) as usize {
            let reference = due.next().await.unwrap_or_else(|| panic!("ended"));
            assert!(names.insert(reference.name), "handed over twice");
        }
        // All of them once; the next only come with the next tick.
        let waited = tokio::time::timeout(Duration::from_secs(3600), due.next()).await;
        assert!(waited.is_err(), "{waited:?}");
    }
}
