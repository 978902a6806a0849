//! Status written by server-side apply on the `/status` subresource, as Warren's field manager.
//! The API server refuses an apply without apiVersion and kind, so the patch always carries them.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Patch, PatchParams};
use kube::{Api, Resource, ResourceExt};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::{Value, json};

use super::{FIELD_MANAGER, reason};
use crate::crd::status::{
    RECONCILING, STALLED, ready, ready_condition, set_condition, true_condition,
};
use crate::{Error, Result};

/// Where a resource stands, as kstatus (Flux, `kubectl wait`, cli-utils) and Argo CD read it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// Converged: `Ready=True`, neither Reconciling nor Stalled.
    Done,
    /// Not ready yet, and Warren retries by itself (broker unreachable, a binding waiting for
    /// its exchange): `Ready=False`, `Reconciling=True`.
    Working,
    /// Not ready until someone acts (invalid spec, missing Broker, conflict, duplicate):
    /// `Ready=False`, `Stalled=True`.
    Stalled,
}

/// What a reconcile concluded, as the `Ready`, `Reconciling` and `Stalled` conditions show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// `Ready` is True.
    pub ready: bool,
    /// Whether a not-ready resource is being worked on or is stuck.
    pub progress: Progress,
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
        Verdict::new(Progress::Done, reason, message)
    }

    /// A Ready=False verdict that Warren retries by itself (Reconciling).
    pub fn not_ready(reason: &'static str, message: impl Into<String>) -> Self {
        Verdict::new(Progress::Working, reason, message)
    }

    /// A Ready=False verdict that needs someone to act (Stalled).
    pub fn stalled(reason: &'static str, message: impl Into<String>) -> Self {
        Verdict::new(Progress::Stalled, reason, message)
    }

    fn new(progress: Progress, reason: &'static str, message: impl Into<String>) -> Self {
        Verdict {
            ready: progress == Progress::Done,
            progress,
            reason,
            message: truncate(&message.into(), MAX_MESSAGE_BYTES),
        }
    }

    /// Whether the verdict is worth a Warning Event: a failure someone may have to look at.
    /// A resource waiting for something Warren expects to appear, or a rollout in progress, is not.
    pub fn is_warning(&self) -> bool {
        !self.ready
            && ![
                reason::WAITING,
                reason::ROLLING_OUT,
                reason::TOPOLOGY_NOT_READY,
            ]
            .contains(&self.reason)
    }

    /// The conditions after this verdict: `Ready` (its transition time kept while its status
    /// holds), plus `Reconciling` or `Stalled` when they are true (kstatus' abnormal-true
    /// conditions are left out when false).
    ///
    /// An InSync verdict keeps a Ready=True condition of the same generation as it is, so the
    /// reason says what Warren last did (Created, Updated) and a resync that finds nothing to do
    /// writes nothing.
    pub fn conditions(&self, current: &[Condition], generation: Option<i64>) -> Vec<Condition> {
        let mut conditions: Vec<Condition> = current
            .iter()
            .filter(|c| c.type_ != RECONCILING && c.type_ != STALLED)
            .cloned()
            .collect();
        let keep = self.reason == reason::IN_SYNC
            && ready(current)
                .is_some_and(|c| c.status == "True" && c.observed_generation == generation);
        if !keep {
            set_condition(
                &mut conditions,
                ready_condition(self.ready, self.reason, &self.message, generation),
            );
        }
        let abnormal = match self.progress {
            Progress::Done => None,
            Progress::Working => Some(RECONCILING),
            Progress::Stalled => Some(STALLED),
        };
        if let Some(type_) = abnormal {
            let mut condition = true_condition(type_, self.reason, &self.message, generation);
            // Keep the transition time while the same condition stays true.
            if let Some(previous) = current.iter().find(|c| c.type_ == type_) {
                condition.last_transition_time = previous.last_transition_time.clone();
            }
            conditions.push(condition);
        }
        conditions
    }

    /// Whether `current` already says the same (status, reason and message).
    pub fn matches(&self, current: &[Condition]) -> bool {
        if self.reason == reason::IN_SYNC && ready(current).is_some_and(|c| c.status == "True") {
            return true;
        }
        ready(current).is_some_and(|c| {
            c.status == if self.ready { "True" } else { "False" }
                && c.reason == self.reason
                && c.message == self.message
        })
    }
}

/// Whether a status apply was refused because the object it was worked out from is stale.
pub fn is_stale(error: &Error) -> bool {
    matches!(error, Error::Kube { source: kube::Error::Api(status), .. } if status.code == 409)
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
    // The resourceVersion makes the apply conditional: a status worked out from a cached object
    // older than the stored one (a reconcile woken before the watch delivered Warren's own last
    // write) is refused with 409 instead of overwriting what that write recorded.
    let patch = json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "metadata": {"resourceVersion": object.meta().resource_version},
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

    fn types(conditions: &[Condition]) -> Vec<(String, String, String)> {
        conditions
            .iter()
            .map(|c| (c.type_.clone(), c.status.clone(), c.reason.clone()))
            .collect()
    }

    fn triple(type_: &str, status: &str, reason: &str) -> (String, String, String) {
        (type_.to_owned(), status.to_owned(), reason.to_owned())
    }

    #[test]
    fn kstatus_conditions_follow_the_verdict() {
        let stuck = Verdict::stalled("Conflict", "x-message-ttl differs");
        let conditions = stuck.conditions(&[], Some(1));
        assert_eq!(
            types(&conditions),
            [
                triple("Ready", "False", "Conflict"),
                triple("Stalled", "True", "Conflict")
            ]
        );
        let retrying = Verdict::not_ready("BrokerUnreachable", "connection refused");
        let conditions = retrying.conditions(&conditions, Some(1));
        assert_eq!(
            types(&conditions),
            [
                triple("Ready", "False", "BrokerUnreachable"),
                triple("Reconciling", "True", "BrokerUnreachable")
            ]
        );
        let done = Verdict::ready("Created", "created queue");
        assert_eq!(
            types(&done.conditions(&conditions, Some(1))),
            [triple("Ready", "True", "Created")]
        );
    }

    #[test]
    fn in_sync_keeps_what_warren_last_did_for_the_same_generation() {
        let created = Verdict::ready("Created", "created queue").conditions(&[], Some(3));
        let again = Verdict::ready(reason::IN_SYNC, "matches").conditions(&created, Some(3));
        assert_eq!(again, created, "nothing to write");
        assert!(Verdict::ready(reason::IN_SYNC, "matches").matches(&created));
        // A new generation is news: InSync for it.
        let next = Verdict::ready(reason::IN_SYNC, "matches").conditions(&created, Some(4));
        assert_eq!(types(&next), [triple("Ready", "True", "InSync")]);
    }

    #[test]
    fn waiting_is_not_a_warning() {
        assert!(!Verdict::not_ready(reason::WAITING, "no exchange yet").is_warning());
        assert!(Verdict::not_ready("BrokerUnreachable", "refused").is_warning());
        assert!(!Verdict::ready("Created", "").is_warning());
    }

    #[test]
    fn oversized_rabbitmq_text_still_fits_a_condition() {
        let verdict = Verdict::not_ready("RabbitMQError", "x".repeat(100_000));
        assert!(verdict.message.len() <= MAX_MESSAGE_BYTES);
    }
}
