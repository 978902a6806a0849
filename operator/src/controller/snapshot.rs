//! Bulk read-back for the topology reconciles: each kind listed once per vhost and shared, for a
//! few seconds, by every resource of that vhost. A resync of 10,000 queues then costs one
//! `GET /api/queues/{vhost}` instead of 10,000 `GET /api/queues/{vhost}/{name}`, and a restart
//! with 20,000 resources reads RabbitMQ back in a handful of calls.
//!
//! A snapshot only ever confirms: a resource whose object the snapshot shows exactly as planned
//! is in sync. Anything else (missing, different, a listing that failed) is read back on its own
//! before Warren acts, so a snapshot taken before someone's change can delay noticing it by at
//! most its age, never cause a wrong write. The resync clock ([`super::resync`]) drops every
//! listing before it has every resource looked at again, so drift is still repaired within one
//! resync period.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::crd::DestinationType;
use crate::plan::{Object, Observed};
use crate::rabbitmq::{BindingState, ExchangeDef, ManagementApi, PolicyDef, QueueState};

/// The kinds a snapshot lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    Exchanges,
    Queues,
    Bindings,
    Policies,
}

impl Kind {
    fn of(object: &Object) -> Kind {
        match object {
            Object::Exchange(_) => Kind::Exchanges,
            Object::Queue(_) => Kind::Queues,
            Object::Binding(_) => Kind::Bindings,
            Object::Policy(_) => Kind::Policies,
        }
    }
}

/// A binding's two ends: what one Binding resource reads back.
type Ends = (String, DestinationType, String);

/// One kind of one vhost as RabbitMQ listed it, indexed the way reconciles look objects up.
enum Listing {
    Exchanges(HashMap<String, ExchangeDef>),
    Queues(HashMap<String, QueueState>),
    Bindings(HashMap<Ends, Vec<BindingState>>),
    Policies(HashMap<String, PolicyDef>),
}

impl Listing {
    async fn take(api: &dyn ManagementApi, vhost: &str, kind: Kind) -> crate::Result<Listing> {
        Ok(match kind {
            Kind::Exchanges => Listing::Exchanges(
                api.list_exchanges(vhost)
                    .await?
                    .into_iter()
                    .map(|e| (e.name.clone(), e))
                    .collect(),
            ),
            Kind::Queues => Listing::Queues(
                api.list_queues(vhost)
                    .await?
                    .into_iter()
                    .map(|q| (q.definition.name.clone(), q))
                    .collect(),
            ),
            Kind::Bindings => {
                let mut by_ends: HashMap<Ends, Vec<BindingState>> = HashMap::new();
                for binding in api.list_bindings(vhost).await? {
                    let d = &binding.definition;
                    // Every queue's implicit binding from the default exchange: as many as
                    // the queues, and never a Binding resource's (RabbitMQ refuses to bind
                    // there). One that asked would be read back on its own.
                    if d.source.is_empty() {
                        continue;
                    }
                    by_ends
                        .entry((d.source.clone(), d.destination_type, d.destination.clone()))
                        .or_default()
                        .push(binding);
                }
                // Most ends have one binding; a pushed-to Vec holds room for four, which at
                // 10,000 bindings is megabytes of every listing kept.
                for bindings in by_ends.values_mut() {
                    bindings.shrink_to_fit();
                }
                Listing::Bindings(by_ends)
            }
            Kind::Policies => Listing::Policies(
                api.list_policies(vhost)
                    .await?
                    .into_iter()
                    .map(|p| (p.name.clone(), p))
                    .collect(),
            ),
        })
    }

    /// What `observe_one` would read back for `object`.
    fn narrowed(&self, object: &Object) -> Observed {
        let mut observed = Observed::default();
        match (self, object) {
            (Listing::Exchanges(all), Object::Exchange(e)) => {
                observed.exchanges.extend(all.get(&e.name).cloned())
            }
            (Listing::Queues(all), Object::Queue(q)) => {
                observed.queues.extend(all.get(&q.name).cloned())
            }
            (Listing::Bindings(all), Object::Binding(b)) => observed.bindings.extend(
                all.get(&(b.source.clone(), b.destination_type, b.destination.clone()))
                    .cloned()
                    .unwrap_or_default(),
            ),
            (Listing::Policies(all), Object::Policy(p)) => {
                observed.policies.extend(all.get(&p.name).cloned())
            }
            // Kind::of picks the listing, so the kinds always agree.
            _ => {}
        }
        observed
    }
}

/// Where one listing is kept: per Broker resource (its credentials decide what it may see),
/// vhost and kind.
type Key = (String, String, Kind);

/// The slot of one key. Its lock is held while listing, so reconciles that need the same
/// listing at once wait for the one call instead of each making it.
type Slot = Arc<tokio::sync::Mutex<Option<(Instant, Arc<Listing>)>>>;

/// Every snapshot this operator holds.
pub struct Snapshots {
    max_age: Duration,
    slots: Mutex<HashMap<Key, Slot>>,
    /// Listings made, for tests and the benchmark.
    listings: std::sync::atomic::AtomicU64,
}

impl Snapshots {
    /// Snapshots that confirm for `max_age` after they were taken (zero turns them off).
    pub fn new(max_age: Duration) -> Self {
        Snapshots {
            max_age,
            slots: Mutex::default(),
            listings: Default::default(),
        }
    }

    /// Listings made so far.
    pub fn listings(&self) -> u64 {
        self.listings.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// What RabbitMQ had of `object`, from a listing of its kind and vhost at most `max_age`
    /// old, taken now when there is none. `None` when snapshots are off or the listing failed
    /// (a missing vhost, an unreachable broker): the caller reads the object back on its own,
    /// and that read reports the failure properly.
    pub async fn observed(
        &self,
        api: &dyn ManagementApi,
        broker: &str,
        object: &Object,
    ) -> Option<Observed> {
        if self.max_age.is_zero() {
            return None;
        }
        let kind = Kind::of(object);
        let slot = self.slot((broker.to_owned(), object.vhost().to_owned(), kind));
        let mut held = slot.lock().await;
        let fresh = held
            .as_ref()
            .filter(|(taken, _)| taken.elapsed() < self.max_age)
            .map(|(_, listing)| listing.clone());
        let listing = match fresh {
            Some(listing) => listing,
            None => {
                self.listings
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let taken = Instant::now();
                match Listing::take(api, object.vhost(), kind).await {
                    Ok(listing) => {
                        let listing = Arc::new(listing);
                        *held = Some((taken, listing.clone()));
                        listing
                    }
                    Err(error) => {
                        tracing::debug!(error = %crate::error_chain(&error), vhost = object.vhost(), "bulk read-back failed; reading back one by one");
                        *held = None;
                        return None;
                    }
                }
            }
        };
        drop(held);
        Some(listing.narrowed(object))
    }

    /// Drops every listing: the next reconcile of each kind and vhost lists again.
    pub fn expire_all(&self) {
        self.slots.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// Forgets what is known of `broker` (its Broker was deleted).
    pub fn forget(&self, broker: &str) {
        self.slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(b, _, _), _| b != broker);
    }

    /// The slot of `key`. Listings past their age are dropped on the way: they confirm nothing
    /// any more, and one of a large vhost is megabytes.
    fn slot(&self, key: Key) -> Slot {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.retain(|_, slot| match slot.try_lock() {
            Ok(held) => held
                .as_ref()
                .is_none_or(|(taken, _)| taken.elapsed() < self.max_age),
            // Being listed right now.
            Err(_) => true,
        });
        slots.entry(key).or_default().clone()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::rabbitmq::{BindingDef, FakeBroker, QueueDef};

    fn queue(name: &str) -> QueueDef {
        QueueDef {
            vhost: "/".into(),
            name: name.into(),
            queue_type: "classic".into(),
            durable: true,
            auto_delete: false,
            arguments: serde_json::from_value(json!({})).unwrap_or_default(),
        }
    }

    #[tokio::test]
    async fn one_listing_answers_for_every_object_of_the_kind_while_fresh() {
        let api = FakeBroker::new();
        for i in 0..50 {
            let put = api.put_queue(&queue(&format!("q{i}"))).await;
            assert!(put.is_ok(), "{put:?}");
        }
        let snapshots = Snapshots::new(Duration::from_secs(60));
        for i in 0..50 {
            let observed = snapshots
                .observed(&api, "b", &Object::Queue(queue(&format!("q{i}"))))
                .await
                .unwrap_or_else(|| panic!("a listing"));
            assert_eq!(observed.queues.len(), 1);
            assert_eq!(observed.queues[0].definition.name, format!("q{i}"));
        }
        let missing = snapshots
            .observed(&api, "b", &Object::Queue(queue("nope")))
            .await
            .unwrap_or_else(|| panic!("a listing"));
        assert!(missing.queues.is_empty());
        assert_eq!(snapshots.listings(), 1);
    }

    #[tokio::test]
    async fn a_binding_sees_every_binding_between_its_ends_and_no_other() {
        let api = FakeBroker::new();
        let binding = |key: &str, destination: &str| BindingDef {
            vhost: "/".into(),
            source: "amq.topic".into(),
            destination: destination.into(),
            destination_type: DestinationType::Queue,
            routing_key: key.into(),
            arguments: Default::default(),
        };
        for name in ["a", "b"] {
            assert!(api.put_queue(&queue(name)).await.is_ok());
        }
        for (key, destination) in [("k1", "a"), ("k2", "a"), ("k1", "b")] {
            assert!(api.put_binding(&binding(key, destination)).await.is_ok());
        }
        let snapshots = Snapshots::new(Duration::from_secs(60));
        let observed = snapshots
            .observed(&api, "b", &Object::Binding(binding("k3", "a")))
            .await
            .unwrap_or_else(|| panic!("a listing"));
        let mut keys: Vec<_> = observed
            .bindings
            .iter()
            .map(|b| b.definition.routing_key.as_str())
            .collect();
        keys.sort();
        assert_eq!(keys, ["k1", "k2"]);
    }

    #[tokio::test(start_paused = true)]
    async fn an_old_listing_is_taken_again_and_snapshots_can_be_off() {
        let api = FakeBroker::new();
        let snapshots = Snapshots::new(Duration::from_secs(5));
        let object = Object::Queue(queue("q"));
        assert!(snapshots.observed(&api, "b", &object).await.is_some());
        tokio::time::advance(Duration::from_secs(4)).await;
        assert!(snapshots.observed(&api, "b", &object).await.is_some());
        assert_eq!(snapshots.listings(), 1);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(snapshots.observed(&api, "b", &object).await.is_some());
        assert_eq!(snapshots.listings(), 2);

        let off = Snapshots::new(Duration::ZERO);
        assert!(off.observed(&api, "b", &object).await.is_none());
        assert_eq!(off.listings(), 0);
    }
}
