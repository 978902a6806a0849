//! Reading Warren resources from YAML: files or directories (recursively), several documents per
//! file, unknown fields refused, and every error naming the file, the resource and the field.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::crd::{Binding, Broker, Exchange, GROUP, Policy, Queue, VERSION};
use crate::{Error, Result};

/// One Warren resource, typed.
#[derive(Clone, Debug, PartialEq)]
pub enum Resource {
    /// A Broker.
    Broker(Broker),
    /// An Exchange.
    Exchange(Exchange),
    /// A Queue.
    Queue(Queue),
    /// A Binding.
    Binding(Binding),
    /// A Policy.
    Policy(Policy),
}

impl Resource {
    /// The kind, as written in `kind:`.
    pub fn kind(&self) -> &'static str {
        match self {
            Resource::Broker(_) => "Broker",
            Resource::Exchange(_) => "Exchange",
            Resource::Queue(_) => "Queue",
            Resource::Binding(_) => "Binding",
            Resource::Policy(_) => "Policy",
        }
    }

    /// `metadata.name`.
    pub fn name(&self) -> &str {
        let metadata = match self {
            Resource::Broker(r) => &r.metadata,
            Resource::Exchange(r) => &r.metadata,
            Resource::Queue(r) => &r.metadata,
            Resource::Binding(r) => &r.metadata,
            Resource::Policy(r) => &r.metadata,
        };
        metadata.name.as_deref().unwrap_or_default()
    }
}

/// A resource and the file it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct Manifest {
    /// Source file.
    pub file: PathBuf,
    /// The resource.
    pub resource: Resource,
}

impl Manifest {
    /// `Kind/name`, as messages show it.
    pub fn label(&self) -> String {
        format!("{}/{}", self.resource.kind(), self.resource.name())
    }

    /// An [`Error::Manifest`] about `field` of this resource.
    pub fn error(&self, field: &str, message: impl Into<String>) -> Error {
        Error::Manifest {
            file: self.file.clone(),
            resource: self.label(),
            field: field.to_owned(),
            message: message.into(),
        }
    }
}

/// What a set of paths held.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Loaded {
    /// Warren resources, in file order.
    pub manifests: Vec<Manifest>,
    /// Documents that are not Warren topology (e.g. Secrets, Workers), as `file: Kind/name`.
    pub skipped: Vec<String>,
}

/// Reads every `.yaml`/`.yml` file under `paths` (a named file is read whatever its extension).
pub fn load(paths: &[PathBuf]) -> Result<Loaded> {
    let mut files = Vec::new();
    for path in paths {
        collect_files(path, &mut files)?;
    }
    let mut loaded = Loaded::default();
    for file in files {
        let text = std::fs::read_to_string(&file).map_err(|source| Error::Io {
            path: file.clone(),
            source,
        })?;
        parse_documents(&file, &text, &mut loaded)?;
    }
    Ok(loaded)
}

fn collect_files(path: &Path, files: &mut Vec<PathBuf>) -> Result<()> {
    let metadata = std::fs::metadata(path).map_err(|source| Error::Io {
        path: path.to_owned(),
        source,
    })?;
    if !metadata.is_dir() {
        files.push(path.to_owned());
        return Ok(());
    }
    let entries = std::fs::read_dir(path).map_err(|source| Error::Io {
        path: path.to_owned(),
        source,
    })?;
    let mut children = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| Error::Io {
            path: path.to_owned(),
            source,
        })?;
        children.push(entry.path());
    }
    // Sorted, so output and error order do not depend on the file system.
    children.sort();
    for child in children {
        let is_yaml = child
            .extension()
            .is_some_and(|ext| ext == "yaml" || ext == "yml");
        if child.is_dir() {
            collect_files(&child, files)?;
        } else if is_yaml {
            files.push(child);
        }
    }
    Ok(())
}

/// Most documents one file may hold: a generated topology of 10,000 queues and their bindings
/// sits in one file (the YAML parser's own default stops at 1,024).
pub const MAX_DOCUMENTS_PER_FILE: usize = 100_000;

/// Parses one file's documents into `loaded`.
pub fn parse_documents(file: &Path, text: &str, loaded: &mut Loaded) -> Result<()> {
    // The parser's budgets stop inputs that amplify (anchors, deep nesting); documents and
    // nodes are raised to what a large topology needs, about twenty nodes per resource.
    let options = serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_documents: MAX_DOCUMENTS_PER_FILE,
            max_nodes: MAX_DOCUMENTS_PER_FILE * 50,
            max_events: MAX_DOCUMENTS_PER_FILE * 100,
        },
    };
    let documents: Vec<Value> =
        serde_saphyr::from_multiple_with_options(text, options).map_err(|e| Error::Manifest {
            file: file.to_owned(),
            resource: "(file)".to_owned(),
            field: "(yaml)".to_owned(),
            message: e.to_string(),
        })?;
    for (index, document) in documents.into_iter().enumerate() {
        if document.is_null() {
            continue;
        }
        let label = document_label(&document, index);
        let error = |field: &str, message: String| Error::Manifest {
            file: file.to_owned(),
            resource: label.clone(),
            field: field.to_owned(),
            message,
        };
        let Some(object) = document.as_object() else {
            return Err(error(
                "(document)",
                "expected a Kubernetes-style object with apiVersion and kind".to_owned(),
            ));
        };
        let api_version = object
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let kind = object
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if api_version.is_empty() || kind.is_empty() {
            return Err(error(
                "apiVersion",
                "every document needs apiVersion and kind".to_owned(),
            ));
        }
        if api_version.split('/').next() != Some(GROUP) {
            loaded.skipped.push(format!("{}: {label}", file.display()));
            continue;
        }
        if api_version != format!("{GROUP}/{VERSION}") {
            return Err(error(
                "apiVersion",
                format!("{api_version} is not served: use {GROUP}/{VERSION}"),
            ));
        }
        let resource = match kind {
            "Broker" => Resource::Broker(typed(&document, &error)?),
            "Exchange" => Resource::Exchange(typed(&document, &error)?),
            "Queue" => Resource::Queue(typed(&document, &error)?),
            "Binding" => Resource::Binding(typed(&document, &error)?),
            "Policy" => Resource::Policy(typed(&document, &error)?),
            // Workers are deployed by the operator; they declare no topology.
            _ => {
                loaded.skipped.push(format!("{}: {label}", file.display()));
                continue;
            }
        };
        check_metadata_name(&document, &error)?;
        loaded.manifests.push(Manifest {
            file: file.to_owned(),
            resource,
        });
    }
    Ok(())
}

fn document_label(document: &Value, index: usize) -> String {
    let kind = document["kind"].as_str().unwrap_or("document");
    match document["metadata"]["name"].as_str() {
        Some(name) => format!("{kind}/{name}"),
        None => format!("{kind} #{} (no metadata.name)", index + 1),
    }
}

/// Kubernetes names (DNS-1123 subdomains), so the same files work with the operator.
fn check_metadata_name(document: &Value, error: &dyn Fn(&str, String) -> Error) -> Result<()> {
    let name = document["metadata"]["name"].as_str().unwrap_or_default();
    let valid = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if valid {
        Ok(())
    } else {
        Err(error(
            "metadata.name",
            format!(
                "{name:?} is not a valid Kubernetes name: use lowercase letters, digits, '-' and '.', and put the RabbitMQ name in spec.name"
            ),
        ))
    }
}

/// Deserializes with the failing field's path, then refuses fields the type does not know
/// (the API server would drop or refuse them; silently ignoring a typo is worse).
fn typed<T: DeserializeOwned + serde::Serialize>(
    document: &Value,
    error: &dyn Fn(&str, String) -> Error,
) -> Result<T> {
    let typed: T = serde_path_to_error::deserialize(document).map_err(|e| {
        let path = e.path().to_string();
        error(
            if path == "." { "(document)" } else { &path },
            e.into_inner().to_string(),
        )
    })?;
    let round_trip =
        serde_json::to_value(&typed).map_err(|e| error("(document)", e.to_string()))?;
    if let Some(unknown) = unknown_field(document, &round_trip, "") {
        return Err(error(
            &unknown,
            "unknown field (check the spelling; field names are camelCase)".to_owned(),
        ));
    }
    Ok(typed)
}

/// Free-form maps whose keys are RabbitMQ's, not ours.
const FREE_FORM: [&str; 5] = [
    "spec.arguments",
    "spec.definition",
    "metadata.labels",
    "metadata.annotations",
    "status",
];

/// The first key of `input` that did not survive a typed round trip.
fn unknown_field(input: &Value, round_trip: &Value, path: &str) -> Option<String> {
    if FREE_FORM.contains(&path) {
        return None;
    }
    match (input, round_trip) {
        (Value::Object(input), Value::Object(output)) => input.iter().find_map(|(key, value)| {
            let child = if path.is_empty() {
                key.clone()
            } else {
                format!("{path}.{key}")
            };
            match output.get(key) {
                None if value.is_null() => None,
                None => Some(child),
                Some(output) => unknown_field(value, output, &child),
            }
        }),
        (Value::Array(input), Value::Array(output)) => input
            .iter()
            .zip(output)
            .enumerate()
            .find_map(|(i, (value, output))| unknown_field(value, output, &format!("{path}[{i}]"))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Loaded> {
        let mut loaded = Loaded::default();
        parse_documents(Path::new("topology.yaml"), text, &mut loaded).map(|()| loaded)
    }

    fn manifest_error(text: &str) -> (String, String, String) {
        match parse(text) {
            Err(Error::Manifest {
                resource,
                field,
                message,
                ..
            }) => (resource, field, message),
            other => panic!("expected a manifest error, got {other:?}"),
        }
    }

    const QUEUE: &str = "apiVersion: warren.dev/v1alpha1\nkind: Queue\nmetadata:\n  name: orders\nspec:\n  brokerRef: {name: local}\n  name: orders.q\n";

    #[test]
    fn reads_several_documents_and_skips_foreign_kinds() {
        let text = format!(
            "{QUEUE}---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: rabbitmq-credentials\n---\n"
        );
        let loaded = parse(&text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(loaded.manifests.len(), 1);
        assert_eq!(loaded.manifests[0].label(), "Queue/orders");
        assert_eq!(
            loaded.skipped,
            ["topology.yaml: Secret/rabbitmq-credentials"]
        );
    }

    #[test]
    fn one_file_holds_a_topology_of_twenty_thousand_resources() {
        let text: Vec<String> = (0..20_000)
            .map(|i| QUEUE.replace("name: orders\n", &format!("name: orders-{i}\n")))
            .collect();
        let loaded = parse(&text.join("---\n")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(loaded.manifests.len(), 20_000);
    }

    #[test]
    fn misspelt_field_is_named() {
        let (resource, field, _) = manifest_error(&format!("{QUEUE}  messageTTL: 1000\n"));
        assert_eq!(
            (resource.as_str(), field.as_str()),
            ("Queue/orders", "spec.messageTTL")
        );
    }

    #[test]
    fn wrong_type_is_named_with_its_path() {
        let (resource, field, message) = manifest_error(&format!("{QUEUE}  messageTtl: soon\n"));
        assert_eq!(
            (resource.as_str(), field.as_str()),
            ("Queue/orders", "spec.messageTtl")
        );
        assert!(message.contains("invalid"), "{message}");
    }

    #[test]
    fn arguments_are_free_form() {
        let loaded = parse(&format!(
            "{QUEUE}  arguments:\n    x-max-priority: 10\n    x-nested: {{a: 1}}\n"
        ));
        assert!(loaded.is_ok(), "{loaded:?}");
    }

    #[test]
    fn missing_required_field_and_bad_names_are_refused() {
        let (_, field, message) = manifest_error(
            "apiVersion: warren.dev/v1alpha1\nkind: Queue\nmetadata: {name: q}\nspec:\n  name: q\n",
        );
        assert_eq!(field, "spec");
        assert!(message.contains("brokerRef"), "{message}");
        let (_, field, _) = manifest_error(&QUEUE.replace("name: orders\n", "name: orders_q\n"));
        assert_eq!(field, "metadata.name");
        let (_, field, _) = manifest_error(&QUEUE.replace("v1alpha1", "v1"));
        assert_eq!(field, "apiVersion");
    }
}
