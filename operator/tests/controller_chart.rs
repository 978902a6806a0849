//! The deployment artifacts stay in step with the code: the chart's CRDs are exactly `warren crds`,
//! its version is the crate's, its RBAC names every kind, and the kind Broker matches the topology.

use std::path::{Path, PathBuf};

use warren_operator::crd::{self, Broker};

const REGENERATE: &str =
    "run `cargo run -p warren-operator -- crds > charts/warren/crds/warren.dev.yaml`";

fn chart() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/warren")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

#[test]
fn chart_crds_are_exactly_warren_crds_output() {
    let path = chart().join("crds/warren.dev.yaml");
    let generated = crd::crds_yaml().unwrap_or_else(|e| panic!("CRDs render: {e}"));
    assert!(
        read(&path) == generated,
        "{} is stale: {REGENERATE}",
        path.display()
    );
}

#[test]
fn chart_app_version_is_the_operators_version() {
    let chart_yaml = read(&chart().join("Chart.yaml"));
    let expected = format!("appVersion: \"{}\"", env!("CARGO_PKG_VERSION"));
    assert!(
        chart_yaml.lines().any(|line| line.trim() == expected),
        "Chart.yaml must say {expected}"
    );
}

#[test]
fn chart_rbac_covers_every_kind_with_status_and_finalizers() {
    let rules = read(&chart().join("templates/_helpers.tpl"));
    for crd in crd::all() {
        assert_eq!(crd.spec.group, crd::GROUP);
        let plural = &crd.spec.names.plural;
        for resource in [plural.clone(), format!("{plural}/status")] {
            assert!(
                rules.contains(&format!("\"{resource}\"")),
                "chart RBAC lacks {resource}"
            );
        }
        assert!(
            rules.contains(&format!("\"{plural}/finalizers\"")),
            "chart RBAC lacks {plural}/finalizers"
        );
    }
}

fn broker(path: &str) -> Broker {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path);
    serde_saphyr::from_str(&read(&path))
        .unwrap_or_else(|e| panic!("{} is not a Broker: {e}", path.display()))
}

#[test]
fn the_kind_broker_replaces_the_topologys_broker_with_in_cluster_urls() {
    let local = broker("manifests/topology/broker.yaml");
    let kind = broker("manifests/infra/broker.yaml");
    assert_eq!(
        kind.metadata.name, local.metadata.name,
        "same Broker name, so the topology finds it"
    );
    assert_eq!(
        kind.spec.credentials_secret_ref,
        local.spec.credentials_secret_ref
    );
    // The operator runs in another namespace: only a fully qualified Service name reaches RabbitMQ.
    assert!(
        kind.spec.management_url.contains(".warren-demo.svc"),
        "{}",
        kind.spec.management_url
    );
    let secrets =
        read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/infra/secrets.yaml"));
    assert!(
        secrets.contains(&format!("name: {}", kind.spec.credentials_secret_ref.name))
            && secrets.contains("username:")
            && secrets.contains("password:"),
        "manifests/infra/secrets.yaml holds the Broker's Secret with username and password"
    );
}
