//! Several resources may name the same RabbitMQ object (two Queues, in one namespace or two, on
//! the same broker, vhost and name). The first claimant owns it; every later one is reported as a
//! `Duplicate` and never declares, changes or deletes it, so deleting one of them can never take
//! the object (and a queue's messages) away from the other.
//!
//! The claimants come from the controllers' own caches ([`Stores`]); choosing the owner is pure.

use std::any::Any;
use std::collections::HashMap;
use std::sync::Mutex;

use kube::runtime::reflector::Store;
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

/// The controllers' caches, by kind, so a reconcile can see the other resources of its kind (in
/// every scope the operator watches) without asking the API server.
#[derive(Default)]
pub struct Stores {
    by_kind: Mutex<HashMap<String, Vec<Box<dyn Any + Send + Sync>>>>,
}

impl Stores {
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
    use super::*;

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
