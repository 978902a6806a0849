//! Kubernetes Events for what Warren did to RabbitMQ and why it failed. Publishing is best effort:
//! a refused Event is logged, never a reason to fail (or repeat) a reconcile.
//!
//! Warren records its own Events instead of using kube's `Recorder`: that one keeps every Event
//! it sent for six minutes and scans them all on each publish, which at 20,000 resources (one
//! `Created` each) is tens of MB and a quadratic amount of work. Here only the most recent
//! [`REMEMBERED`] are kept, which is all a repeat (counted on the first Event's series, as
//! client-go does) ever needs.

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::Mutex;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

use super::context::Context;
use super::status::truncate;

/// The API server refuses Event notes over 1 kB.
const MAX_NOTE_BYTES: usize = 1024;

/// How many recent Events are remembered for counting repeats.
const REMEMBERED: usize = 4096;

/// A repeat within this time is counted on the earlier Event; later it is a new one.
const SERIES_WINDOW: SignedDuration = SignedDuration::from_mins(6);

/// What makes two Events the same one happening again.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Key {
    namespace: String,
    kind: String,
    name: String,
    uid: String,
    warning: bool,
    reason: String,
    action: String,
    note: String,
}

/// An Event this process created, for counting its repeats.
struct Sent {
    name: String,
    count: i32,
    last: Timestamp,
}

/// Publishes Events as `controller` (`reportingController`) and `instance` (the pod).
pub struct EventRecorder {
    client: Client,
    controller: String,
    instance: String,
    recent: Mutex<Recent>,
}

/// The Events sent lately, by their key's digest: a key holds the whole note, so keeping the
/// keys themselves (twice) took megabytes at 20,000 resources. Two keys sharing a 64-bit
/// digest among a few thousand would only count one Event's repeat on the other's series.
#[derive(Default)]
struct Recent {
    sent: HashMap<u64, Sent>,
    /// Digests in the order they were first sent, to forget the oldest.
    order: VecDeque<u64>,
}

impl Key {
    fn digest(&self) -> u64 {
        let mut hasher = std::hash::DefaultHasher::new();
        self.hash(&mut hasher);
        hasher.finish()
    }
}

impl EventRecorder {
    /// A recorder reporting as `controller`, from `instance` (else the controller's name).
    pub fn new(client: Client, controller: &str, instance: Option<String>) -> Self {
        EventRecorder {
            client,
            controller: controller.to_owned(),
            instance: instance.unwrap_or_else(|| controller.to_owned()),
            recent: Mutex::default(),
        }
    }

    /// Creates the Event, or bumps the series of the same Event sent a moment ago.
    async fn publish(
        &self,
        regarding: &ObjectReference,
        warning: bool,
        reason: &str,
        action: &str,
        note: &str,
    ) -> Result<(), kube::Error> {
        let now = Timestamp::now();
        let namespace = regarding.namespace.clone().unwrap_or_default();
        let key = Key {
            namespace: namespace.clone(),
            kind: regarding.kind.clone().unwrap_or_default(),
            name: regarding.name.clone().unwrap_or_default(),
            uid: regarding.uid.clone().unwrap_or_default(),
            warning,
            reason: reason.to_owned(),
            action: action.to_owned(),
            note: note.to_owned(),
        };
        let events: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        let repeat = self.repeat_of(&key, now);
        if let Some((name, count)) = repeat {
            let series = json!({"series": {"count": count, "lastObservedTime": MicroTime(now)}});
            match events
                .patch(&name, &PatchParams::default(), &Patch::Merge(&series))
                .await
            {
                Ok(_) => return Ok(()),
                // Expired or deleted meanwhile: a new Event then.
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(error) => return Err(error),
            }
        }
        let base = if key.name.is_empty() {
            &self.controller
        } else {
            &key.name
        };
        let name = format!("{base}.{:x}", now.as_nanosecond());
        let event = Event {
            action: Some(action.to_owned()),
            reason: Some(reason.to_owned()),
            note: Some(note.to_owned()),
            event_time: Some(MicroTime(now)),
            regarding: Some(regarding.clone()),
            metadata: ObjectMeta {
                namespace: regarding.namespace.clone(),
                name: Some(name.clone()),
                ..ObjectMeta::default()
            },
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            series: None::<EventSeries>,
            type_: Some(if warning { "Warning" } else { "Normal" }.to_owned()),
            ..Event::default()
        };
        events.create(&PostParams::default(), &event).await?;
        self.remember(&key, name, now);
        Ok(())
    }

    /// The name and next count of the same Event sent within the series window.
    fn repeat_of(&self, key: &Key, now: Timestamp) -> Option<(String, i32)> {
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        let sent = recent.sent.get_mut(&key.digest())?;
        if now.duration_since(sent.last) > SERIES_WINDOW {
            return None;
        }
        sent.count = sent.count.saturating_add(1);
        sent.last = now;
        Some((sent.name.clone(), sent.count))
    }

    fn remember(&self, key: &Key, name: String, now: Timestamp) {
        let key = key.digest();
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        let fresh = Sent {
            name,
            count: 1,
            last: now,
        };
        if recent.sent.insert(key, fresh).is_none() {
            recent.order.push_back(key);
        }
        while recent.order.len() > REMEMBERED {
            if let Some(oldest) = recent.order.pop_front() {
                recent.sent.remove(&oldest);
            }
        }
    }
}

/// Publishes one Event about `regarding`.
pub async fn publish(
    ctx: &Context,
    regarding: &ObjectReference,
    warning: bool,
    reason: &str,
    action: &str,
    note: &str,
) {
    let note = truncate(note, MAX_NOTE_BYTES);
    if let Err(error) = ctx
        .recorder
        .publish(regarding, warning, reason, action, &note)
        .await
    {
        tracing::warn!(
            reason,
            object = regarding.name.as_deref().unwrap_or_default(),
            namespace = regarding.namespace.as_deref().unwrap_or_default(),
            error = %error,
            "could not publish Event"
        );
    }
}

#[cfg(test)]
mod tests {
    use http::{Method, Request, Response};
    use kube::client::Body;
    use serde_json::Value;

    use super::*;

    /// The next call to the mocked API server: method, path and JSON body, answered with the
    /// body itself and `status`.
    async fn next(
        handle: &mut tower_test::mock::Handle<Request<Body>, Response<Body>>,
        status: u16,
    ) -> (Method, String, Value) {
        let (request, send) = match handle.next_request().await {
            Some(next) => next,
            None => panic!("no call"),
        };
        let (method, path) = (request.method().clone(), request.uri().path().to_owned());
        let bytes = request
            .into_body()
            .collect_bytes()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let body: Value = serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{e}"));
        let response = Response::builder()
            .status(status)
            .body(Body::from(bytes.to_vec()))
            .unwrap_or_else(|e| panic!("{e}"));
        send.send_response(response);
        (method, path, body)
    }

    #[tokio::test]
    async fn a_repeat_counts_on_the_first_events_series_and_a_different_note_is_new() {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let recorder = EventRecorder::new(
            Client::new(service, "ns"),
            "warren.dev/operator",
            Some("pod-0".into()),
        );
        let regarding = ObjectReference {
            kind: Some("Queue".into()),
            name: Some("orders".into()),
            namespace: Some("ns".into()),
            ..ObjectReference::default()
        };
        let publishing = tokio::spawn(async move {
            for note in ["refused", "refused", "refused", "other"] {
                recorder
                    .publish(&regarding, true, "CleanupFailed", "Delete", note)
                    .await?;
            }
            Ok::<_, kube::Error>(())
        });
        let events = "/apis/events.k8s.io/v1/namespaces/ns/events";
        let (method, path, first) = next(&mut handle, 201).await;
        assert_eq!((method, path.as_str()), (Method::POST, events));
        assert_eq!(first["type"], "Warning");
        assert_eq!(first["reportingInstance"], "pod-0");
        let name = first["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(name.starts_with("orders."), "{name}");
        for count in [2, 3] {
            let (method, path, patch) = next(&mut handle, 200).await;
            assert_eq!((method, path), (Method::PATCH, format!("{events}/{name}")));
            assert_eq!(patch["series"]["count"], count, "{patch}");
        }
        let (method, path, other) = next(&mut handle, 201).await;
        assert_eq!((method, path.as_str()), (Method::POST, events));
        assert_eq!(other["note"], "other");
        assert!(matches!(publishing.await, Ok(Ok(()))));
    }
}
