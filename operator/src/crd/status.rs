//! Status shared by the topology kinds: `observedGeneration` and standard conditions.
//! `Ready` carries a reason and, when RabbitMQ refused, RabbitMQ's own error text.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::KubeSchema;
use serde::{Deserialize, Serialize};

use super::Arguments;

/// The condition type Argo CD, Flux and `kubectl get` read.
pub const READY: &str = "Ready";
/// kstatus' "abnormal-true" condition: present (True) while Warren is still working toward the
/// spec (a new generation, or a failure it retries by itself). Flux, `kubectl wait` and cli-utils
/// read it as InProgress.
pub const RECONCILING: &str = "Reconciling";
/// kstatus' "abnormal-true" condition: present (True) when Warren cannot make progress until
/// someone changes something (the spec, the Broker, RabbitMQ). Read as Failed.
pub const STALLED: &str = "Stalled";

/// Status of an Exchange or Policy (a Binding adds what it declared: [`BindingStatus`]).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TopologyStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Standard conditions, merged per type by server-side apply.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// The exchange as Warren created it (absent when Warren found it already there): deleting
    /// the resource deletes this object even after the spec was edited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<CreatedObject>,
}

/// The fixed properties of an exchange or queue as Warren created it in RabbitMQ. RabbitMQ
/// cannot change them in place, so an object that still has them is the one Warren created.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreatedObject {
    /// Exchange or queue type.
    #[serde(rename = "type")]
    pub object_type: String,
    /// Durable.
    #[serde(default)]
    pub durable: bool,
    /// Auto-delete.
    #[serde(default)]
    pub auto_delete: bool,
    /// Internal (exchanges only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub internal: Option<bool>,
    /// Arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::schema::free_form_object")]
    pub arguments: Option<Arguments>,
}

/// Status of a Binding: the shared status plus the RabbitMQ binding this resource last declared.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct BindingStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Standard conditions, merged per type by server-side apply.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// The binding this resource last declared, as RabbitMQ reported it. A binding has no name,
    /// so when `spec.arguments` changes this record is the only way to find (and delete) exactly
    /// the old binding without touching another resource's binding between the same ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binding: Option<DeclaredBinding>,
}

/// A binding as declared in RabbitMQ; its ends are the spec's, which are immutable.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeclaredBinding {
    /// Routing key.
    #[serde(default)]
    pub routing_key: String,
    /// Binding arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::schema::free_form_object")]
    pub arguments: Option<Arguments>,
    /// RabbitMQ's `properties_key`, which identifies the binding in the management API.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub properties_key: String,
}

/// Builds a `Ready` condition for `generation`.
pub fn ready_condition(
    ready: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
) -> Condition {
    Condition {
        type_: READY.to_owned(),
        status: if ready { "True" } else { "False" }.to_owned(),
        reason: reason.to_owned(),
        message: message.to_owned(),
        observed_generation: generation,
        last_transition_time: Time(jiff::Timestamp::now()),
    }
}

/// Replaces the condition of the same type, keeping its transition time when the status did not
/// change (so "Ready since" stays truthful across reconciles).
pub fn set_condition(conditions: &mut Vec<Condition>, mut new: Condition) {
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        Some(existing) => {
            if existing.status == new.status {
                new.last_transition_time = existing.last_transition_time.clone();
            }
            *existing = new;
        }
        None => conditions.push(new),
    }
}

/// A condition of `type_` for `generation`, True, with `reason` and `message`.
pub fn true_condition(
    type_: &str,
    reason: &str,
    message: &str,
    generation: Option<i64>,
) -> Condition {
    Condition {
        type_: type_.to_owned(),
        status: "True".to_owned(),
        reason: reason.to_owned(),
        message: message.to_owned(),
        observed_generation: generation,
        last_transition_time: Time(jiff::Timestamp::now()),
    }
}

/// The `Ready` condition, if any.
pub fn ready(conditions: &[Condition]) -> Option<&Condition> {
    conditions.iter().find(|c| c.type_ == READY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_condition_keeps_transition_time_while_status_holds() {
        let mut conditions = Vec::new();
        let first = ready_condition(true, "Created", "", Some(1));
        let since = first.last_transition_time.clone();
        set_condition(&mut conditions, first);
        let mut again = ready_condition(true, "Unchanged", "", Some(2));
        again.last_transition_time = Time(jiff::Timestamp::UNIX_EPOCH);
        set_condition(&mut conditions, again);
        assert_eq!(conditions.len(), 1);
        assert_eq!(conditions[0].reason, "Unchanged");
        assert_eq!(conditions[0].last_transition_time, since);

        let mut failed = ready_condition(false, "Conflict", "x", Some(3));
        failed.last_transition_time = Time(jiff::Timestamp::UNIX_EPOCH);
        set_condition(&mut conditions, failed);
        assert_eq!(ready(&conditions).map(|c| c.status.as_str()), Some("False"));
        assert_eq!(
            conditions[0].last_transition_time,
            Time(jiff::Timestamp::UNIX_EPOCH)
        );
    }
}
