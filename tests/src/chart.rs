//! charts/warren as the real-API-server tests use it: rendered offline by Helm 4
//! (`scripts/chart-render.sh`), and its RBAC objects applied so that an operator run in-process
//! holds exactly the permissions the chart grants.

use std::process::Command;

use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::Value;

use crate::envtest::workspace;

/// Kinds of the chart that carry its permissions.
const RBAC_KINDS: [&str; 5] = [
    "ServiceAccount",
    "ClusterRole",
    "ClusterRoleBinding",
    "Role",
    "RoleBinding",
];

/// Every object `helm template RELEASE charts/warren -n NAMESPACE --set-json VALUES` gives.
pub fn render(release: &str, namespace: &str, values: &Value) -> Vec<Value> {
    let script = workspace().join("scripts/chart-render.sh");
    let output = Command::new(&script)
        .args([release, namespace, &values.to_string()])
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", script.display()));
    assert!(
        output.status.success(),
        "chart-render.sh failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8_lossy(&output.stdout);
    serde_saphyr::from_multiple::<Value>(&text)
        .unwrap_or_else(|e| panic!("rendered chart is not YAML: {e}"))
        .into_iter()
        .filter(|object| object.is_object())
        .collect()
}

/// The ServiceAccount, (Cluster)Roles and their bindings of a rendered chart.
pub fn rbac(objects: &[Value]) -> Vec<Value> {
    objects
        .iter()
        .filter(|object| {
            object["kind"]
                .as_str()
                .is_some_and(|kind| RBAC_KINDS.contains(&kind))
        })
        .cloned()
        .collect()
}

/// Server-side applies `objects` as they are (namespaced ones into their own namespace).
pub async fn apply(client: &Client, objects: &[Value]) {
    for object in objects {
        let api_version = object["apiVersion"].as_str().unwrap_or_default();
        let kind = object["kind"].as_str().unwrap_or_default();
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind));
        let name = object["metadata"]["name"].as_str().unwrap_or_default();
        let api: Api<DynamicObject> = match object["metadata"]["namespace"].as_str() {
            Some(namespace) => Api::namespaced_with(client.clone(), namespace, &resource),
            None => Api::all_with(client.clone(), &resource),
        };
        api.patch(
            name,
            &PatchParams::apply("warren-envtest").force(),
            &Patch::Apply(object),
        )
        .await
        .unwrap_or_else(|e| panic!("apply {kind} {name}: {e}"));
    }
}
