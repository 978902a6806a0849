//! Kubernetes Events for what Warren did to RabbitMQ and why it failed. Publishing is best effort:
//! a refused Event is logged, never a reason to fail (or repeat) a reconcile.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType};

use super::context::Context;
use super::status::truncate;

/// The API server refuses Event notes over 1 kB.
const MAX_NOTE_BYTES: usize = 1024;

/// Publishes one Event about `regarding`.
pub async fn publish(
    ctx: &Context,
    regarding: &ObjectReference,
    warning: bool,
    reason: &str,
    action: &str,
    note: &str,
) {
    let event = Event {
        type_: if warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: reason.to_owned(),
        note: Some(truncate(note, MAX_NOTE_BYTES)),
        action: action.to_owned(),
        secondary: None,
    };
    if let Err(error) = ctx.recorder.publish(&event, regarding).await {
        tracing::warn!(
            reason,
            object = regarding.name.as_deref().unwrap_or_default(),
            namespace = regarding.namespace.as_deref().unwrap_or_default(),
            error = %error,
            "could not publish Event"
        );
    }
}
