//! The Helm chart stays generated from the code: its CRDs are exactly `warren crds`, its version
//! is the crate's, and its RBAC names every kind the controllers reconcile.

use std::path::{Path, PathBuf};

use warren_operator::crd;

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
        // The Broker owns nothing in RabbitMQ and carries no finalizer.
        if crd.spec.names.kind != "Broker" {
            assert!(
                rules.contains(&format!("\"{plural}/finalizers\"")),
                "chart RBAC lacks {plural}/finalizers"
            );
        }
    }
}
