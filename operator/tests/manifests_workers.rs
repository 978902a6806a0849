//! manifests/workers as users apply them: every Worker parses as the CRD's type, names Queues and
//! Exchanges that manifests/topology declares and a database Secret that manifests/workers holds,
//! and runs an image the Dockerfile builds under the tag the chart's version gives.

use std::path::{Path, PathBuf};

use serde_json::Value;
use warren_operator::crd::Worker;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn documents(dir: &str) -> Vec<Value> {
    let mut all = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(root().join(dir))
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    for file in files {
        let text =
            std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let docs: Vec<Value> = serde_saphyr::from_multiple(&text)
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        all.extend(docs.into_iter().filter(Value::is_object));
    }
    all
}

fn names(docs: &[Value], kind: &str) -> Vec<String> {
    docs.iter()
        .filter(|d| d["kind"] == kind)
        .filter_map(|d| d["metadata"]["name"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn workers_name_what_the_topology_declares_and_images_the_dockerfile_builds() {
    let workers_dir = documents("manifests/workers");
    let topology = documents("manifests/topology");
    let (queues, exchanges) = (names(&topology, "Queue"), names(&topology, "Exchange"));
    let secrets = names(&workers_dir, "Secret");
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap_or_default();
    let version = env!("CARGO_PKG_VERSION");
    let workers: Vec<Worker> = workers_dir
        .iter()
        .filter(|d| d["kind"] == "Worker")
        .map(|d| {
            serde_json::from_value(d.clone()).unwrap_or_else(|e| panic!("Worker parses: {e}\n{d}"))
        })
        .collect();
    let kinds: Vec<&str> = workers.iter().map(|w| w.spec.worker.as_str()).collect();
    assert_eq!(kinds.len(), 2, "both workers: {kinds:?}");
    assert!(
        kinds.contains(&"orders") && kinds.contains(&"inventory"),
        "{kinds:?}"
    );
    for worker in &workers {
        let kind = worker.spec.worker.as_str();
        for queue in &worker.spec.consumes {
            assert!(
                queues.contains(queue),
                "{kind} consumes {queue}, not in manifests/topology"
            );
        }
        for exchange in &worker.spec.publishes_to {
            assert!(
                exchanges.contains(exchange),
                "{kind} publishes to {exchange}, not in manifests/topology"
            );
        }
        assert!(
            secrets.contains(&worker.spec.database.secret_ref.name),
            "{kind}'s database Secret is in manifests/workers"
        );
        assert_eq!(worker.spec.image, format!("warren-{kind}:{version}"));
        assert!(
            dockerfile.contains(&format!(" AS {kind}\n")),
            "the Dockerfile has a `{kind}` target"
        );
    }
}
