//! Status written by server-side apply on the `/status` subresource, as Warren's field manager.
//! The API server refuses an apply without apiVersion and kind, so the patch always carries them.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Patch, PatchParams};
use kube::{Api, Resource, ResourceExt};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::{Value, json};

use super::FIELD_MANAGER;
use crate::crd::status::{ready_condition, set_condition};
use crate::{Error, Result};

/// What a reconcile concluded, as the `Ready` condition shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// `Ready` is True.
    pub ready: bool,
    /// CamelCase reason, e.g. `Created`, `Conflict`, `BrokerNotFound`.
    pub reason: &'static str,
    /// Human text; RabbitMQ's own error text when it refused.
    pub message: String,
}

/// The API server refuses condition messages over 32 768 bytes.
const MAX_MESSAGE_BYTES: usize = 32_768;

impl Verdict {
    /// A Ready=True verdict.
    pub fn ready(reason: &'static str, message: impl Into<String>) -> Self {
        Verdict {
            ready: true,
            reason,
            message: truncate(&message.into(), MAX_MESSAGE_BYTES),
        }
    }

    /// A Ready=False verdict.
    pub fn not_ready(reason: &'static str, message: impl Into<String>) -> Self {
        Verdict {
            ready: false,
            reason,
            message: truncate(&message.into(), MAX_MESSAGE_BYTES),
        }
    }

    /// The conditions after this verdict, keeping the transition time while Ready holds.
    pub fn conditions(&self, current: &[Condition], generation: Option<i64>) -> Vec<Condition> {
        let mut conditions = current.to_vec();
        set_condition(
            &mut conditions,
            ready_condition(self.ready, self.reason, &self.message, generation),
        );
        conditions
    }

    /// Whether `current` already says the same (status, reason and message).
    pub fn matches(&self, current: &[Condition]) -> bool {
        crate::crd::status::ready(current).is_some_and(|c| {
            c.status == if self.ready { "True" } else { "False" }
                && c.reason == self.reason
                && c.message == self.message
        })
    }
}

/// Applies `status` through `api` (the object's namespace) unless the object already has exactly
/// that status: a reconcile that changes nothing writes nothing, so it neither bumps the
/// resourceVersion nor wakes the controller's own watch.
pub async fn apply<K>(api: &Api<K>, object: &K, status: Value) -> Result<()>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    let current = serde_json::to_value(object)
        .ok()
        .and_then(|json| json.get("status").cloned())
        .unwrap_or(Value::Null);
    if current == status {
        return Ok(());
    }
    let name = object.name_any();
    let patch = json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(|source| Error::Kube {
        action: format!(
            "apply status of {} {}/{}",
            K::kind(&()),
            object.namespace().unwrap_or_default(),
            name
        ),
        source,
    })?;
    Ok(())
}

/// Cuts `text` to at most `max` bytes on a character boundary, marking the cut with `...`.
pub(super) fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max.saturating_sub(3);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_respects_character_boundaries() {
        assert_eq!(truncate("short", 10), "short");
        let long = "é".repeat(600);
        let cut = truncate(&long, 1024);
        assert!(cut.len() <= 1024);
        assert!(cut.ends_with("..."));
    }

    #[test]
    fn oversized_rabbitmq_text_still_fits_a_condition() {
        let verdict = Verdict::not_ready("RabbitMQError", "x".repeat(100_000));
        assert!(verdict.message.len() <= MAX_MESSAGE_BYTES);
    }
}
