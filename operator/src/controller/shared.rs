//! One watch per kind and watched namespace, shared by every controller that looks at the kind.
//!
//! Each controller used to open its own watch of every kind it maps from: a Queue was watched
//! by the Queue, Binding, Broker and Worker controllers, so the API server encoded and sent each
//! Queue event four times (and a Broker event six), and a restart listed every kind that many
//! times. At 20,000 resources that fan-out was a large part of the API server's CPU, the
//! bottleneck of a converge. Here one watcher per kind feeds one cache ([`Store`]) and hands each
//! changed object to the subscribers, each through a bounded channel (a slow controller holds
//! the watch back rather than losing events).
//!
//! A subscriber may ask only for the changes that matter to it ([`SharedWatch::subscribe_on`]):
//! a controller wakes for a new generation of its own kind, not for its own status writes, and a
//! Binding for a Queue whose readiness changed, not for each new message count.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use futures::{Stream, StreamExt};
use kube::runtime::reflector::{self, ObjectRef, Store, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Changed objects a subscriber has not taken yet; beyond that the watch waits for it.
const BUFFER: usize = 4096;

/// The annotation `kubectl apply` (client-side) keeps the whole applied object in.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// What a subscriber is told about: every change, or only those that change `key`.
type Key<K> = Box<dyn Fn(&K) -> u64 + Send + Sync>;

struct Subscriber<K: Resource<DynamicType = ()>> {
    sender: mpsc::Sender<Arc<K>>,
    key: Option<Key<K>>,
    /// The key each object (by [`identity`]) had when last passed on (only with `key`):
    /// 16 bytes an object, as there are several such subscribers per kind.
    seen: HashMap<u64, u64>,
}

impl<K: Resource<DynamicType = ()>> Subscriber<K> {
    /// Whether `object` (applied) is news to this subscriber; remembers it.
    fn wants(&mut self, object: &K) -> bool {
        let Some(key) = &self.key else { return true };
        let value = key(object);
        self.seen.insert(identity(object), value) != Some(value)
    }
}

/// An object's namespace and name, hashed.
fn identity<K: Resource>(object: &K) -> u64 {
    let meta = object.meta();
    hash((&meta.namespace, &meta.name))
}

/// The watch of one kind in one scope, before it runs: subscribe, then [`SharedWatch::run`].
pub struct SharedWatch<K: Resource<DynamicType = ()> + Clone + 'static> {
    api: Api<K>,
    store: Store<K>,
    writer: Writer<K>,
    subscribers: Vec<Subscriber<K>>,
}

impl<K> SharedWatch<K>
where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    /// A watch of `api` (not started).
    pub fn new(api: Api<K>) -> Self {
        let (store, writer) = reflector::store();
        SharedWatch {
            api,
            store,
            writer,
            subscribers: Vec::new(),
        }
    }

    /// The cache this watch fills (ready once the first listing is in).
    pub fn store(&self) -> Store<K> {
        self.store.clone()
    }

    /// Every object added or changed, and every object deleted.
    pub fn subscribe(&mut self) -> impl Stream<Item = Arc<K>> + Send + 'static {
        self.add(None)
    }

    /// The objects whose `key` changed (a new object counts as changed), and deleted ones.
    pub fn subscribe_on(
        &mut self,
        key: impl Fn(&K) -> u64 + Send + Sync + 'static,
    ) -> impl Stream<Item = Arc<K>> + Send + 'static {
        self.add(Some(Box::new(key)))
    }

    fn add(&mut self, key: Option<Key<K>>) -> impl Stream<Item = Arc<K>> + Send + 'static {
        let (sender, receiver) = mpsc::channel(BUFFER);
        self.subscribers.push(Subscriber {
            sender,
            key,
            seen: HashMap::new(),
        });
        futures::stream::unfold(receiver, |mut receiver| async move {
            let object = receiver.recv().await?;
            Some((object, receiver))
        })
    }

    /// Watches until `stop`, keeping the cache and telling the subscribers. `observe` sees
    /// every event first (the claim index is fed from it).
    pub async fn run(
        self,
        kind: &str,
        observe: impl Fn(&watcher::Event<K>) + Send + 'static,
        stop: CancellationToken,
    ) {
        let SharedWatch {
            api,
            store,
            writer,
            mut subscribers,
        } = self;
        let events = watcher(api, watcher::Config::default().any_semantic())
            .default_backoff()
            // Nothing reads managedFields or client-side apply's copy of the whole object, and
            // at 20,000 resources they would be most of the cache.
            .modify(|object| {
                object.managed_fields_mut().clear();
                object.annotations_mut().remove(LAST_APPLIED);
            })
            .inspect(move |event| {
                if let Ok(event) = event {
                    observe(event);
                }
            })
            .reflect(writer)
            .take_until(stop.cancelled_owned());
        let mut events = std::pin::pin!(events);
        while let Some(event) = events.next().await {
            match event {
                Ok(watcher::Event::Apply(object)) => {
                    // The cache holds the object now: hand on its copy rather than another one.
                    let object = store
                        .get(&ObjectRef::from_obj(&object))
                        .unwrap_or_else(|| Arc::new(object));
                    tell(&mut subscribers, &object, false).await;
                }
                Ok(watcher::Event::Delete(object)) => {
                    tell(&mut subscribers, &Arc::new(object), true).await;
                }
                // A (re)listing is complete and swapped into the cache: every object in it is
                // news to whoever has not seen it at this version.
                Ok(watcher::Event::InitDone) => {
                    let listed = store.state();
                    // Objects deleted while the watch was away never had their Delete.
                    let present: std::collections::HashSet<u64> = listed
                        .iter()
                        .map(|object| identity(object.as_ref()))
                        .collect();
                    for subscriber in &mut subscribers {
                        subscriber.seen.retain(|id, _| present.contains(id));
                    }
                    for object in listed {
                        tell(&mut subscribers, &object, false).await;
                    }
                }
                Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
                // The watcher backs off and retries by itself; this says why it has to (RBAC,
                // a missing CRD, the API server gone).
                Err(error) => {
                    tracing::warn!(kind, error = %crate::error_chain(&error), "watch trouble");
                }
            }
            if subscribers.is_empty() {
                return;
            }
        }
    }
}

/// Hands `object` to every subscriber that wants it; forgets subscribers that went away.
async fn tell<K: Resource<DynamicType = ()>>(
    subscribers: &mut Vec<Subscriber<K>>,
    object: &Arc<K>,
    deleted: bool,
) {
    let mut gone = false;
    for subscriber in subscribers.iter_mut() {
        let news = if deleted {
            subscriber.seen.remove(&identity(object.as_ref()));
            true
        } else {
            subscriber.wants(object)
        };
        if news && subscriber.sender.send(object.clone()).await.is_err() {
            gone = true;
        }
    }
    if gone {
        subscribers.retain(|subscriber| !subscriber.sender.is_closed());
    }
}

/// A key that changes with the object's identity and generation: a new spec or a deletion
/// (which bumps the generation), not a status or metadata write.
pub fn generation<K: Resource>(object: &K) -> u64 {
    let meta = object.meta();
    hash((&meta.uid, meta.generation))
}

/// Hashes a key's parts.
pub fn hash(parts: impl Hash) -> u64 {
    let mut hasher = DefaultHasher::new();
    parts.hash(&mut hasher);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::Queue;
    use serde_json::json;

    fn queue(name: &str, generation: i64, messages: i64) -> Queue {
        serde_json::from_value(json!({
            "apiVersion": "warren.dev/v1alpha1", "kind": "Queue",
            "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}"),
                         "generation": generation},
            "spec": {"brokerRef": {"name": "rabbit"}, "name": name},
            "status": {"messages": messages}
        }))
        .unwrap_or_else(|e| panic!("fixture parses: {e}"))
    }

    fn subscriber(key: Option<Key<Queue>>) -> (Subscriber<Queue>, mpsc::Receiver<Arc<Queue>>) {
        let (sender, receiver) = mpsc::channel(16);
        let subscriber = Subscriber {
            sender,
            key,
            seen: HashMap::new(),
        };
        (subscriber, receiver)
    }

    fn names(receiver: &mut mpsc::Receiver<Arc<Queue>>) -> Vec<String> {
        let mut names = Vec::new();
        while let Ok(object) = receiver.try_recv() {
            names.push(format!(
                "{}@{}",
                object.name_any(),
                object.meta().generation.unwrap_or_default()
            ));
        }
        names
    }

    #[tokio::test]
    async fn a_keyed_subscriber_hears_only_changes_of_its_key_and_deletions() {
        let (all, mut all_rx) = subscriber(None);
        let (keyed, mut keyed_rx) = subscriber(Some(Box::new(generation::<Queue>)));
        let mut subscribers = vec![all, keyed];
        for object in [
            queue("a", 1, 0),
            queue("a", 1, 5), // a status write
            queue("b", 1, 0),
            queue("a", 2, 5), // a spec change
        ] {
            tell(&mut subscribers, &Arc::new(object), false).await;
        }
        tell(&mut subscribers, &Arc::new(queue("b", 1, 0)), true).await;
        // After a deletion the same name is news again.
        tell(&mut subscribers, &Arc::new(queue("b", 1, 0)), false).await;
        assert_eq!(
            names(&mut all_rx),
            ["a@1", "a@1", "b@1", "a@2", "b@1", "b@1"]
        );
        assert_eq!(names(&mut keyed_rx), ["a@1", "b@1", "a@2", "b@1", "b@1"]);
    }

    #[tokio::test]
    async fn a_subscriber_that_went_away_is_forgotten() {
        let (kept, mut kept_rx) = subscriber(None);
        let (gone, gone_rx) = subscriber(None);
        drop(gone_rx);
        let mut subscribers = vec![kept, gone];
        tell(&mut subscribers, &Arc::new(queue("a", 1, 0)), false).await;
        assert_eq!(subscribers.len(), 1);
        assert_eq!(names(&mut kept_rx), ["a@1"]);
    }
}
