//! Warren's custom resources: group `warren.dev`, version `v1alpha1`, category `warren`.
//! One module per kind; the pieces every kind shares (broker reference, status, schemas) live here.

pub mod binding;
pub mod broker;
pub mod exchange;
pub mod policy;
pub mod queue;
pub mod schema;
pub mod status;
pub mod worker;

use std::collections::BTreeMap;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use binding::{Binding, BindingSpec, DestinationType};
pub use broker::{Broker, BrokerSpec, BrokerStatus, BrokerTls, SecretKeyRef, SecretRef};
pub use exchange::{Exchange, ExchangeSpec, ExchangeType};
pub use policy::{ApplyTo, Policy, PolicySpec};
pub use queue::{Overflow, Queue, QueueSpec, QueueStatus, QueueType};
pub use status::{
    BindingStatus, CreatedObject, DeclaredBinding, READY, RECONCILING, STALLED, TopologyStatus,
};
pub use worker::{Worker, WorkerKind, WorkerSpec, WorkerStatus};

/// API group of every Warren kind.
pub const GROUP: &str = "warren.dev";
/// The one served and stored version.
pub const VERSION: &str = "v1alpha1";
/// `kubectl get warren` lists every Warren resource.
pub const CATEGORY: &str = "warren";

/// Free-form RabbitMQ arguments (`x-*` keys) or a policy definition, kept as JSON.
pub type Arguments = BTreeMap<String, serde_json::Value>;

/// Every CRD Warren installs, in the order `warren crds` prints them.
///
/// Kinds added later (Worker) append here so `crds/` and the chart stay generated from one list.
pub fn all() -> Vec<CustomResourceDefinition> {
    vec![
        Broker::crd(),
        Exchange::crd(),
        Queue::crd(),
        Binding::crd(),
        Policy::crd(),
        Worker::crd(),
    ]
}

/// Every CRD as one multi-document YAML stream: what `warren crds` prints and `crds/` holds.
pub fn crds_yaml() -> Result<String, serde_saphyr::SerializeError> {
    serde_saphyr::to_string_multiple(&all())
}

/// Names the Broker (in the same namespace) a topology resource is declared on.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BrokerRef {
    /// Name of a Broker in the same namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// What happens in RabbitMQ when the Kubernetes resource is deleted.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeletionPolicy {
    /// Delete the RabbitMQ object (and, for a queue, its messages).
    #[default]
    Delete,
    /// Leave the RabbitMQ object in place; only the Kubernetes resource goes away.
    Retain,
}

impl DeletionPolicy {
    /// Serde's skip predicate: the default is not written back out (e.g. by `warren export`).
    pub fn is_delete(&self) -> bool {
        *self == DeletionPolicy::Delete
    }
}

/// RabbitMQ's default virtual host, also Warren's default.
pub fn default_vhost() -> String {
    "/".to_owned()
}

pub(crate) fn default_true() -> bool {
    true
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    const REGENERATE: &str = "run `cargo run -p warren-operator -- crds > crds/warren.dev.yaml`";

    fn crd_json(kind: &str) -> Value {
        let crd = all()
            .into_iter()
            .find(|crd| crd.spec.names.kind == kind)
            .unwrap_or_else(|| panic!("no CRD for kind {kind}"));
        serde_json::to_value(crd).unwrap_or_else(|e| panic!("CRD {kind} serializes: {e}"))
    }

    fn spec_schema(kind: &str) -> Value {
        crd_json(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
            .clone()
    }

    fn rules(schema: &Value) -> Vec<String> {
        schema["x-kubernetes-validations"]
            .as_array()
            .map(|rules| {
                rules
                    .iter()
                    .filter_map(|r| r["rule"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    #[test]
    fn crds_directory_matches_generated_output() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds/warren.dev.yaml");
        let on_disk = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}; {REGENERATE}", path.display()));
        let generated = crds_yaml().unwrap_or_else(|e| panic!("CRDs render: {e}"));
        assert!(
            on_disk == generated,
            "{} is stale: {REGENERATE}",
            path.display()
        );
    }

    #[test]
    fn every_kind_is_in_group_version_and_category_with_status_and_ready_column() {
        for crd in all() {
            let kind = &crd.spec.names.kind;
            assert_eq!(crd.spec.group, GROUP, "{kind}");
            assert_eq!(
                crd.spec.names.categories.as_deref(),
                Some(&[CATEGORY.to_owned()][..]),
                "{kind}"
            );
            let version = &crd.spec.versions[0];
            assert_eq!(version.name, VERSION, "{kind}");
            assert!(
                version
                    .subresources
                    .as_ref()
                    .and_then(|s| s.status.as_ref())
                    .is_some(),
                "{kind}"
            );
            let columns: Vec<_> = version
                .additional_printer_columns
                .iter()
                .flatten()
                .map(|c| (c.name.as_str(), c.json_path.as_str()))
                .collect();
            assert_eq!(
                columns[0],
                ("Ready", r#".status.conditions[?(@.type=="Ready")].status"#),
                "{kind}"
            );
            assert_eq!(
                columns.last().copied(),
                Some(("Age", ".metadata.creationTimestamp")),
                "{kind}"
            );
        }
    }

    #[test]
    fn queue_columns_show_type_messages_and_consumers() {
        let crd = crd_json("Queue");
        let names: Vec<&str> = crd["spec"]["versions"][0]["additionalPrinterColumns"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str())
            .collect();
        for wanted in ["Ready", "Queue", "Type", "Messages", "Consumers", "Age"] {
            assert!(
                names.contains(&wanted),
                "Queue lacks column {wanted}: {names:?}"
            );
        }
    }

    #[test]
    fn immutable_fields_carry_cel_rules_with_guidance() {
        let immutable_fields = [
            (
                "Exchange",
                vec![
                    "brokerRef",
                    "name",
                    "vhost",
                    "type",
                    "durable",
                    "autoDelete",
                    "internal",
                ],
            ),
            (
                "Queue",
                vec![
                    "brokerRef",
                    "name",
                    "vhost",
                    "type",
                    "durable",
                    "autoDelete",
                ],
            ),
            (
                "Binding",
                vec![
                    "brokerRef",
                    "vhost",
                    "source",
                    "destination",
                    "destinationType",
                    "routingKey",
                ],
            ),
            ("Policy", vec!["brokerRef", "name", "vhost"]),
        ];
        for (kind, fields) in immutable_fields {
            let spec = spec_schema(kind);
            for field in fields {
                let field_schema = &spec["properties"][field];
                assert_eq!(
                    rules(field_schema),
                    vec!["self == oldSelf"],
                    "{kind}.spec.{field}"
                );
                let message = field_schema["x-kubernetes-validations"][0]["message"]
                    .as_str()
                    .unwrap_or("");
                assert!(
                    message.contains("immutable") && message.contains("create a new"),
                    "{kind}.{field}: {message}"
                );
            }
        }
        // Optional queue arguments are locked on the parent, so setting or clearing them is refused too.
        let queue_rules = rules(&spec_schema("Queue"));
        for field in [
            "deadLetterExchange",
            "deadLetterRoutingKey",
            "messageTtl",
            "maxLength",
            "overflow",
            "deliveryLimit",
        ] {
            assert!(
                queue_rules
                    .iter()
                    .any(|r| r.starts_with(&format!("has(self.{field}) == has(oldSelf.{field})"))),
                "Queue lacks a set-once rule for {field}: {queue_rules:?}"
            );
        }
        // Policies change in place.
        assert!(rules(&spec_schema("Policy")["properties"]["definition"]).is_empty());
    }

    #[test]
    fn conditions_merge_per_type_under_server_side_apply() {
        for kind in ["Broker", "Exchange", "Queue", "Binding", "Policy"] {
            let conditions = &crd_json(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
                ["status"]["properties"]["conditions"];
            assert_eq!(conditions["x-kubernetes-list-type"], "map", "{kind}");
            assert_eq!(
                conditions["x-kubernetes-list-map-keys"],
                serde_json::json!(["type"]),
                "{kind}"
            );
        }
    }

    /// The checks a real API server applies to a structural schema that matter for us.
    fn assert_structural(path: &str, schema: &Value) {
        let Some(object) = schema.as_object() else {
            panic!("{path}: schema is not an object");
        };
        if object.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true)) {
            assert_eq!(
                object.get("type"),
                Some(&Value::from("object")),
                "{path}: free-form must be an object"
            );
            return;
        }
        // Quantities (a Worker's resources, env divisor): the API server's own untyped form.
        if object.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true)) {
            return;
        }
        let Some(schema_type) = object.get("type").and_then(Value::as_str) else {
            panic!(
                "{path}: schema without a type (empty or untyped schemas are refused): {schema}"
            );
        };
        for forbidden in ["$ref", "anyOf", "oneOf", "allOf"] {
            assert!(
                !object.contains_key(forbidden),
                "{path}: {forbidden} is not structural"
            );
        }
        if let Some(format) = object.get("format").and_then(Value::as_str) {
            assert!(
                !format.starts_with("uint"),
                "{path}: format {format} is unknown to the API server"
            );
        }
        match schema_type {
            "object" => {
                let properties = object.get("properties").and_then(Value::as_object);
                assert!(
                    properties.is_some_and(|p| !p.is_empty())
                        || object.contains_key("additionalProperties"),
                    "{path}: object without properties"
                );
                for (name, property) in properties.into_iter().flatten() {
                    assert_structural(&format!("{path}.{name}"), property);
                }
            }
            "array" => assert_structural(&format!("{path}[]"), &object["items"]),
            _ => {}
        }
    }

    #[test]
    fn schemas_are_structural() {
        for crd in all() {
            let kind = crd.spec.names.kind.clone();
            let json = serde_json::to_value(crd).unwrap_or_else(|e| panic!("{e}"));
            let root = &json["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
            assert_structural(&kind, &root["properties"]["spec"]);
            assert_structural(&kind, &root["properties"]["status"]);
        }
    }

    #[test]
    fn free_form_maps_preserve_unknown_fields_and_nothing_else_does() {
        let yaml = crds_yaml().unwrap_or_else(|e| panic!("{e}"));
        // Exchange, Queue and Binding arguments, the Policy definition, the arguments a
        // Binding's status records having declared, and those of the exchange or queue a status
        // records having created (Exchange, Queue, and Policy through the shared status type).
        assert_eq!(
            yaml.matches("x-kubernetes-preserve-unknown-fields: true")
                .count(),
            8
        );
    }

    #[test]
    fn binding_status_records_arguments_with_the_spec_schema_and_arguments_carry_no_cel() {
        let crd = crd_json("Binding");
        let root = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"];
        let spec_arguments = &root["spec"]["properties"]["arguments"];
        let recorded = &root["status"]["properties"]["binding"]["properties"];
        let without_description = |schema: &Value| {
            let mut schema = schema.clone();
            if let Some(object) = schema.as_object_mut() {
                object.remove("description");
            }
            schema
        };
        assert_eq!(
            without_description(&recorded["arguments"]),
            without_description(spec_arguments)
        );
        assert_eq!(recorded["propertiesKey"]["type"], "string");
        assert_eq!(recorded["routingKey"]["type"], "string");
        // CEL over a free-form map may exceed a real API server's cost budget.
        assert!(spec_arguments.get("x-kubernetes-validations").is_none());
        assert!(
            !rules(&root["spec"])
                .iter()
                .any(|rule| rule.contains("arguments"))
        );
    }
}
