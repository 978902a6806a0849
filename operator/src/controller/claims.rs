//! Several resources may name the same RabbitMQ object (two Queues, in one namespace or two, on
//! the same broker, vhost and name). The first claimant owns it; every later one is reported as a
//! `Duplicate` and never declares, changes or deletes it, so deleting one of them can never take
//! the object (and a queue's messages) away from the other.
//!
//! The claimants come from the controllers' own caches ([`Stores`]), found through a
//! [`ClaimIndex`] by the name they claim (a scan of 10,000 Queues per reconcile was most of the
//! operator's CPU); choosing the owner is pure.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};

/// One resource naming a RabbitMQ object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claimant {
    /// `Kind namespace/name`, as messages show it.
    pub resource: String,
    /// Namespace and name, for ordering ties.
    pub key: (String, String),
    /// `metadata.creationTimestamp`; `None` sorts last.
    pub created: Option<jiff::Timestamp>,
    /// Being deleted: it no longer claims anything.
    pub deleting: bool,
}

impl Claimant {
    /// The claimant a resource makes.
    pub fn of<K: Resource<DynamicType = ()>>(object: &K) -> Claimant {
        let namespace = object.namespace().unwrap_or_default();
        let name = object.name_any();
        Claimant {
            resource: format!("{} {namespace}/{name}", K::kind(&())),
            key: (namespace, name),
            created: object.meta().creation_timestamp.as_ref().map(|t| t.0),
            deleting: object.meta().deletion_timestamp.is_some(),
        }
    }
}

/// The owner among `claimants`: the earliest created that is not being deleted (ties by
/// namespace and name, so every replica and every reconcile picks the same one).
pub fn owner(claimants: &[Claimant]) -> Option<&Claimant> {
    claimants.iter().filter(|c| !c.deleting).min_by(|a, b| {
        let at = |c: &Claimant| c.created.unwrap_or(jiff::Timestamp::MAX);
        at(a).cmp(&at(b)).then_with(|| a.key.cmp(&b.key))
    })
}

/// Which resources of one kind claim which name (a queue's name, a binding's destination), kept
/// from the same watch events as the controller's cache.
#[derive(Default)]
pub struct ClaimIndex {
    inner: Mutex<IndexState>,
}

/// Namespace and name of a resource.
type Key = (String, String);

#[derive(Default)]
struct IndexState {
    /// Usually one claimant a name: a Vec holds it in one small allocation, where a set would
    /// take room for several (megabytes at 20,000 resources). What each resource claimed before
    /// is not kept here: the cache still holds the resource as it was when its next event comes.
    by_claim: HashMap<String, Vec<Key>>,
    /// A re-list in progress: it replaces everything once done, as the cache does.
    relisting: Option<Vec<(Key, String)>>,
}

impl IndexState {
    fn insert(&mut self, key: Key, claim: String) {
        let keys = self.by_claim.entry(claim).or_default();
        if !keys.contains(&key) {
            keys.push(key);
            keys.shrink_to_fit();
        }
    }

    fn remove(&mut self, key: &Key, claim: &str) {
        if let Some(keys) = self.by_claim.get_mut(claim) {
            keys.retain(|k| k != key);
            if keys.is_empty() {
                self.by_claim.remove(claim);
            }
        }
    }
}

impl ClaimIndex {
    /// Follows one watch event, before the cache does: `cached` is the cache's copy of the
    /// event's object (as it was, so what it claimed), `claim` the name an object claims.
    pub fn observe<K: Resource>(
        &self,
        event: &watcher::Event<K>,
        cached: impl Fn(&K) -> Option<Arc<K>>,
        claim: impl Fn(&K) -> String,
    ) {
        let key = |object: &K| (object.namespace().unwrap_or_default(), object.name_any());
        let mut state = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        match event {
            watcher::Event::Apply(object) | watcher::Event::Delete(object) => {
                let key = key(object);
                if let Some(before) = cached(object) {
                    state.remove(&key, &claim(&before));
                }
                if let watcher::Event::Apply(object) = event {
                    state.insert(key, claim(object));
                }
            }
            watcher::Event::Init => state.relisting = Some(Vec::new()),
            watcher::Event::InitApply(object) => {
                let entry = (key(object), claim(object));
                state.relisting.get_or_insert_with(Vec::new).push(entry);
            }
            watcher::Event::InitDone => {
                let listed = state.relisting.take().unwrap_or_default();
                state.by_claim.clear();
                for (key, claim) in listed {
                    state.insert(key, claim);
                }
            }
        }
    }

    /// The resources claiming `claim`, as namespace and name.
    pub fn claiming(&self, claim: &str) -> Vec<Key> {
        let state = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        state.by_claim.get(claim).cloned().unwrap_or_default()
    }
}

/// The controllers' caches, by kind, so a reconcile can see the other resources of its kind (in
/// every scope the operator watches) without asking the API server.
#[derive(Default)]
pub struct Stores {
    by_kind: Mutex<HashMap<String, Vec<Box<dyn Any + Send + Sync>>>>,
    claims: Mutex<HashMap<String, Arc<ClaimIndex>>>,
}

impl Stores {
    /// The claim index of `K`, shared by its controllers (one per watched namespace).
    pub fn claim_index<K: Resource<DynamicType = ()>>(&self) -> Arc<ClaimIndex> {
        self.claims
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(K::kind(&()).into_owned())
            .or_default()
            .clone()
    }

    /// The cached resources of `K` that claim `claim` (see [`ClaimIndex`]).
    pub fn claiming<K>(&self, claim: &str) -> Vec<Arc<K>>
    where
        K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
    {
        let keys = self.claim_index::<K>().claiming(claim);
        if keys.is_empty() {
            return Vec::new();
        }
        let by_kind = self.by_kind.lock().unwrap_or_else(|p| p.into_inner());
        let stores: Vec<&Store<K>> = by_kind
            .get(K::kind(&()).as_ref())
            .into_iter()
            .flatten()
            .filter_map(|store| store.downcast_ref::<Store<K>>())
            .collect();
        keys.iter()
            .filter_map(|(namespace, name)| {
                let reference = ObjectRef::new(name).within(namespace);
                stores.iter().find_map(|store| store.get(&reference))
            })
            .collect()
    }

    /// Adds the cache of one controller of `K`.
    pub fn add<K>(&self, store: Store<K>)
    where
        K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
    {
        self.by_kind
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(K::kind(&()).into_owned())
            .or_default()
            .push(Box::new(store));
    }

    /// Every cached object of `K`.
    pub fn all<K>(&self) -> Vec<std::sync::Arc<K>>
    where
        K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
    {
        let by_kind = self.by_kind.lock().unwrap_or_else(|p| p.into_inner());
        by_kind
            .get(K::kind(&()).as_ref())
            .into_iter()
            .flatten()
            .filter_map(|store| store.downcast_ref::<Store<K>>())
            .flat_map(Store::state)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::ObjectMeta;

    use super::*;

    /// A ConfigMap stands in for a resource; its one data value is the name it claims.
    fn object(name: &str, claim: &str) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                ..ObjectMeta::default()
            },
            data: Some([("claim".to_owned(), claim.to_owned())].into()),
            ..ConfigMap::default()
        }
    }

    fn claim(object: &ConfigMap) -> String {
        object
            .data
            .as_ref()
            .and_then(|d| d.get("claim").cloned())
            .unwrap_or_default()
    }

    fn names(index: &ClaimIndex, claimed: &str) -> Vec<String> {
        let mut names: Vec<String> = index
            .claiming(claimed)
            .into_iter()
            .map(|(_, name)| name)
            .collect();
        names.sort();
        names
    }

    /// The index and the cache it runs ahead of, fed the way a shared watch feeds them.
    struct Watched {
        index: ClaimIndex,
        cache: kube::runtime::reflector::store::Writer<ConfigMap>,
    }

    impl Watched {
        fn event(&mut self, event: watcher::Event<ConfigMap>) {
            let cache = self.cache.as_reader();
            self.index
                .observe(&event, |o| cache.get(&ObjectRef::from_obj(o)), claim);
            self.cache.apply_watcher_event(&event);
        }
    }

    #[test]
    fn the_index_follows_applies_renames_deletes_and_relists() {
        let mut watched = Watched {
            index: ClaimIndex::default(),
            cache: Default::default(),
        };
        watched.event(watcher::Event::Apply(object("a", "orders")));
        watched.event(watcher::Event::Apply(object("b", "orders")));
        // The same again (a status write): still one entry.
        watched.event(watcher::Event::Apply(object("b", "orders")));
        assert_eq!(names(&watched.index, "orders"), ["a", "b"]);
        // A spec edit moves the claim.
        watched.event(watcher::Event::Apply(object("b", "stock")));
        assert_eq!(names(&watched.index, "orders"), ["a"]);
        assert_eq!(names(&watched.index, "stock"), ["b"]);
        watched.event(watcher::Event::Delete(object("a", "orders")));
        assert!(names(&watched.index, "orders").is_empty());
        // A re-list replaces everything once done, and serves the old view until then.
        watched.event(watcher::Event::Init);
        watched.event(watcher::Event::InitApply(object("c", "orders")));
        assert_eq!(names(&watched.index, "stock"), ["b"]);
        watched.event(watcher::Event::InitDone);
        assert!(names(&watched.index, "stock").is_empty());
        assert_eq!(names(&watched.index, "orders"), ["c"]);
        // After it, the relisted objects' claims move as before.
        watched.event(watcher::Event::Apply(object("c", "stock")));
        assert!(names(&watched.index, "orders").is_empty());
        assert_eq!(names(&watched.index, "stock"), ["c"]);
    }

    fn claimant(namespace: &str, name: &str, second: Option<i64>, deleting: bool) -> Claimant {
        Claimant {
            resource: format!("Queue {namespace}/{name}"),
            key: (namespace.to_owned(), name.to_owned()),
            created: second.and_then(|s| jiff::Timestamp::from_second(s).ok()),
            deleting,
        }
    }

    #[test]
    fn the_earliest_live_claimant_owns_the_object() {
        let first = claimant("b", "q", Some(100), false);
        let later = claimant("a", "q", Some(200), false);
        assert_eq!(owner(&[later.clone(), first.clone()]), Some(&first));
        // Same second: namespace and name decide, the same way everywhere.
        let tie = claimant("a", "q", Some(100), false);
        assert_eq!(owner(&[first.clone(), tie.clone()]), Some(&tie));
        // One being deleted hands the object over to the next.
        let gone = claimant("b", "q", Some(100), true);
        assert_eq!(owner(&[gone.clone(), later.clone()]), Some(&later));
        assert_eq!(owner(&[gone]), None);
        // No timestamp (not yet stored) sorts last.
        let unsaved = claimant("a", "a", None, false);
        assert_eq!(owner(&[unsaved, later.clone()]), Some(&later));
    }
}
