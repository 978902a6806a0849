//! The reconcile core and `warren apply`/`diff`/`delete` against the real RabbitMQ management API.
//! Every test works in a vhost of its own, removed by a guard even when the test fails.

use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde_json::json;
use warren_operator::Error;
use warren_operator::cli::{self, ApplyOptions, Report, StepResult};
use warren_operator::plan::{Action, Object};
use warren_operator::rabbitmq::{
    BrokerConnection, Credentials, HttpManagementApi, ManagementApi, QueueDef,
};
use warren_operator::reconcile::{self, Outcome};

const MANAGEMENT_URL: &str = "http://127.0.0.1:15672";

fn connection() -> BrokerConnection {
    let options = ApplyOptions::from_env().unwrap_or_else(|e| panic!("{e}"));
    let url = options
        .management_url
        .unwrap_or_else(|| MANAGEMENT_URL.to_owned());
    let credentials = options.credentials.unwrap_or_else(|| Credentials {
        username: "guest".to_owned(),
        password: "guest".to_owned(),
    });
    BrokerConnection::new(url, credentials)
}

fn api() -> HttpManagementApi {
    HttpManagementApi::new(&connection()).unwrap_or_else(|e| panic!("{e}"))
}

fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!(
        "{prefix}-{}-{nanos}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A vhost (with permissions for the test user) and a scratch directory, both removed on drop.
struct Sandbox {
    vhost: String,
    dir: PathBuf,
    api: HttpManagementApi,
}

impl Sandbox {
    async fn new(test: &str) -> Sandbox {
        let vhost = unique(&format!("warren-test-{test}"));
        let api = api();
        api.ensure_vhost(&vhost)
            .await
            .unwrap_or_else(|e| panic!("create vhost: {e}"));
        let user = connection().credentials.username;
        api.grant_full_permissions(&vhost, &user)
            .await
            .unwrap_or_else(|e| panic!("grant: {e}"));
        let dir = std::env::temp_dir().join(&vhost);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        Sandbox { vhost, dir, api }
    }

    fn options(&self) -> ApplyOptions {
        let mut options = ApplyOptions::from_env().unwrap_or_else(|e| panic!("{e}"));
        options.vhost = Some(self.vhost.clone());
        options
    }

    fn pruning(&self) -> ApplyOptions {
        ApplyOptions {
            prune: true,
            ..self.options()
        }
    }

    /// Writes `text` (after the Broker document) as the only file of the sandbox's topology.
    fn write(&self, text: &str) -> Vec<PathBuf> {
        let file = self.dir.join("topology.yaml");
        std::fs::write(&file, format!("{BROKER}{text}")).unwrap_or_else(|e| panic!("{e}"));
        vec![self.dir.clone()]
    }
}

/// Runs a cleanup from `Drop`, which cannot await and may run after the test's runtime is
/// gone: on a thread and runtime of its own, waiting for it to finish.
fn clean_up<F>(cleanup: F)
where
    F: std::future::Future + Send + 'static,
{
    let thread = std::thread::spawn(move || {
        if let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            runtime.block_on(cleanup);
        }
    });
    let _ = thread.join();
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let vhost = self.vhost.clone();
        clean_up(async move {
            let _ = api().delete_vhost(&vhost).await;
        });
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const BROKER: &str = "apiVersion: warren.dev/v1alpha1
kind: Broker
metadata: {name: local}
spec:
  managementUrl: http://127.0.0.1:15672
  credentialsSecretRef: {name: rabbitmq-credentials}
";

fn exchange(name: &str) -> String {
    format!(
        "---\napiVersion: warren.dev/v1alpha1\nkind: Exchange\nmetadata: {{name: {}}}\nspec:\n  brokerRef: {{name: local}}\n  name: {name}\n  type: topic\n",
        name.replace('.', "-")
    )
}

fn queue(name: &str, extra: &str) -> String {
    format!(
        "---\napiVersion: warren.dev/v1alpha1\nkind: Queue\nmetadata: {{name: {}}}\nspec:\n  brokerRef: {{name: local}}\n  name: {name}\n{extra}",
        name.replace('.', "-")
    )
}

fn binding(source: &str, destination: &str, key: &str) -> String {
    format!(
        "---\napiVersion: warren.dev/v1alpha1\nkind: Binding\nmetadata: {{name: {}-{}}}\nspec:\n  brokerRef: {{name: local}}\n  source: {source}\n  destination: {destination}\n  routingKey: \"{key}\"\n",
        source.replace('.', "-"),
        destination.replace('.', "-")
    )
}

fn policy(pattern: &str, max_length: i64) -> String {
    format!(
        "---\napiVersion: warren.dev/v1alpha1\nkind: Policy\nmetadata: {{name: limit}}\nspec:\n  brokerRef: {{name: local}}\n  name: limit\n  pattern: \"{pattern}\"\n  applyTo: queues\n  definition:\n    max-length: {max_length}\n"
    )
}

async fn apply(paths: &[PathBuf], options: &ApplyOptions) -> Report {
    cli::apply(paths, options)
        .await
        .unwrap_or_else(|e| panic!("apply: {e}"))
}

async fn diff(paths: &[PathBuf], options: &ApplyOptions) -> Report {
    cli::diff(paths, options)
        .await
        .unwrap_or_else(|e| panic!("diff: {e}"))
}

fn lines(report: &Report) -> String {
    report.steps.iter().map(|s| format!("{s}\n")).collect()
}

fn topology_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/topology")
}

#[tokio::test]
async fn adr_topology_applies_then_diffs_converged_and_reapplies_as_a_no_op() {
    let sandbox = Sandbox::new("topology").await;
    let paths = vec![topology_dir()];
    let options = sandbox.options();

    let first = apply(&paths, &options).await;
    assert!(first.succeeded(), "{}", lines(&first));
    assert_eq!(first.changes(), 19, "{}", lines(&first));

    let plan = diff(&paths, &options).await;
    assert!(plan.is_converged(), "{}", lines(&plan));

    let again = apply(&paths, &options).await;
    assert_eq!(again.changes(), 0, "{}", lines(&again));

    let retry = sandbox
        .api
        .get_queue(&sandbox.vhost, "orders.inventory_events.retry.3")
        .await;
    let retry = retry
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("retry queue missing"));
    assert_eq!(retry.definition.queue_type, "quorum");
    assert_eq!(
        serde_json::to_value(&retry.definition.arguments).unwrap_or_default(),
        json!({"x-message-ttl": 30000, "x-dead-letter-exchange": "", "x-dead-letter-routing-key": "orders.inventory_events"})
    );
    let bindings = sandbox
        .api
        .list_bindings(&sandbox.vhost)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(bindings.iter().any(|b| b.definition.source == "warren.dlx"
        && b.definition.destination == "inventory.order_events.dlq"
        && b.definition.routing_key == "inventory.order_events"));
}

#[tokio::test]
async fn policy_and_binding_changes_are_updated_in_place() {
    let sandbox = Sandbox::new("update").await;
    let (source, destination) = ("orders.events", "audit");
    let paths = sandbox.write(&format!(
        "{}{}{}{}",
        exchange(source),
        queue(destination, ""),
        binding(source, destination, "order.created"),
        policy("^audit$", 100)
    ));
    let first = apply(&paths, &sandbox.pruning()).await;
    assert!(first.succeeded(), "{}", lines(&first));
    let noop = apply(&paths, &sandbox.pruning()).await;
    assert_eq!(noop.changes(), 0, "{}", lines(&noop));

    let paths = sandbox.write(&format!(
        "{}{}{}{}",
        exchange(source),
        queue(destination, ""),
        binding(source, destination, "order.*"),
        policy("^audit$", 500)
    ));
    // Without --prune the old binding stays beside the new one, and diff says so.
    let keeping = diff(&paths, &sandbox.options()).await;
    assert!(
        keeping
            .notes
            .iter()
            .any(|n| n.contains("\"order.created\"") && n.contains("run with --prune")),
        "{:?}",
        keeping.notes
    );
    let plan = diff(&paths, &sandbox.pruning()).await;
    assert!(plan.notes.is_empty(), "{:?}", plan.notes);
    let updates: Vec<String> = plan
        .steps
        .iter()
        .filter(|s| matches!(s.action, Action::Update { .. }))
        .map(|s| s.to_string())
        .collect();
    assert_eq!(updates.len(), 2, "{}", lines(&plan));
    assert!(
        updates
            .iter()
            .any(|u| u.contains("definition.max-length: RabbitMQ has 100, the spec says 500")),
        "{updates:?}"
    );

    let second = apply(&paths, &sandbox.pruning()).await;
    assert!(second.succeeded(), "{}", lines(&second));
    let keys: Vec<String> = sandbox
        .api
        .list_bindings(&sandbox.vhost)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .filter(|b| b.definition.source == source)
        .map(|b| b.definition.routing_key)
        .collect();
    assert_eq!(keys, ["order.*"]);
    let limit = sandbox
        .api
        .get_policy(&sandbox.vhost, "limit")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        limit.map(|p| p.definition.get("max-length").cloned()),
        Some(Some(json!(500)))
    );
    assert!(diff(&paths, &sandbox.pruning()).await.is_converged());
}

#[tokio::test]
async fn queue_with_other_arguments_is_a_conflict_and_is_left_alone() {
    let sandbox = Sandbox::new("conflict").await;
    let paths = sandbox.write(&queue("orders.work", "  messageTtl: 1000\n"));
    assert!(apply(&paths, &sandbox.options()).await.succeeded());

    let paths = sandbox.write(&queue("orders.work", "  messageTtl: 5000\n"));
    let report = apply(&paths, &sandbox.pruning()).await;
    assert!(!report.succeeded());
    assert_eq!(report.conflicts(), 1, "{}", lines(&report));
    let text = lines(&report);
    assert!(
        text.contains("x-message-ttl: RabbitMQ has 1000, the spec says 5000"),
        "{text}"
    );
    let kept = sandbox
        .api
        .get_queue(&sandbox.vhost, "orders.work")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let ttl = kept.and_then(|q| q.definition.arguments.get("x-message-ttl").cloned());
    assert_eq!(
        ttl,
        Some(json!(1000)),
        "the queue must survive the conflict unchanged"
    );
    assert!(!diff(&paths, &sandbox.options()).await.is_converged());

    // A declaration racing a change is refused by RabbitMQ; its own words come through.
    let racing = QueueDef {
        vhost: sandbox.vhost.clone(),
        name: "orders.work".to_owned(),
        queue_type: "quorum".to_owned(),
        durable: true,
        auto_delete: false,
        arguments: serde_json::from_value(json!({"x-message-ttl": 5000})).unwrap_or_default(),
    };
    let outcome = reconcile::execute(&sandbox.api, &Action::Create(Object::Queue(racing))).await;
    assert!(
        matches!(&outcome, Ok(Outcome::Conflict(reason)) if reason.contains("inequivalent arg 'x-message-ttl'")),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn delete_removes_objects_but_retains_what_asks_to_be_retained() {
    let sandbox = Sandbox::new("delete").await;
    let paths = sandbox.write(&format!(
        "{}{}{}{}",
        exchange("billing.events"),
        queue("billing.scratch", ""),
        queue("billing.ledger", "  deletionPolicy: retain\n"),
        binding("billing.events", "billing.scratch", "#")
    ));
    assert!(apply(&paths, &sandbox.options()).await.succeeded());

    let report = cli::delete(&paths, &sandbox.options())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(report.succeeded(), "{}", lines(&report));
    let retained: Vec<String> = report
        .steps
        .iter()
        .filter(|s| s.result == StepResult::Outcome(Outcome::Retained))
        .map(|s| s.to_string())
        .collect();
    assert_eq!(retained.len(), 1, "{}", lines(&report));
    assert!(retained[0].contains("billing.ledger"));

    let api = &sandbox.api;
    let vhost = &sandbox.vhost;
    assert!(
        api.get_queue(vhost, "billing.scratch")
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .is_none()
    );
    assert!(
        api.get_exchange(vhost, "billing.events")
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .is_none()
    );
    assert!(
        api.get_queue(vhost, "billing.ledger")
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .is_some()
    );

    // Deleting again finds nothing to do, and says the objects are absent, not "unchanged".
    let again = cli::delete(&paths, &sandbox.options())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        again.succeeded() && again.changes() == 0,
        "{}",
        lines(&again)
    );
    let text = lines(&again);
    assert!(
        text.contains("absent queue \"billing.scratch\"") && !text.contains("unchanged"),
        "{text}"
    );
    assert!(again.summary().contains("3 absent"), "{}", again.summary());
}

#[tokio::test]
async fn delete_leaves_a_queue_that_differs_from_the_files_like_the_operator_does() {
    let sandbox = Sandbox::new("delete-conflict").await;
    let api = &sandbox.api;
    let vhost = &sandbox.vhost;
    // Somebody else's queue of the same name, with other arguments.
    let theirs = QueueDef {
        vhost: vhost.clone(),
        name: "billing.shared".into(),
        queue_type: "classic".into(),
        durable: true,
        auto_delete: false,
        arguments: serde_json::from_value(serde_json::json!({"x-max-length": 5}))
            .unwrap_or_default(),
    };
    api.put_queue(&theirs)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let paths = sandbox.write(&queue("billing.shared", ""));
    let report = cli::delete(&paths, &sandbox.options())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!report.succeeded(), "{}", lines(&report));
    assert_eq!(report.conflicts(), 1, "{}", lines(&report));
    assert!(lines(&report).contains("not deleted"), "{}", lines(&report));
    assert!(
        api.get_queue(vhost, "billing.shared")
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .is_some(),
        "still there with its messages"
    );
}

#[tokio::test]
async fn a_queue_deleted_by_hand_is_recreated_with_its_binding() {
    let sandbox = Sandbox::new("recreate").await;
    let paths = sandbox.write(&format!(
        "{}{}{}",
        exchange("stock.events"),
        queue("stock.audit", ""),
        binding("stock.events", "stock.audit", "stock.#")
    ));
    assert!(apply(&paths, &sandbox.options()).await.succeeded());
    sandbox
        .api
        .delete_queue(&sandbox.vhost, "stock.audit")
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    let plan = diff(&paths, &sandbox.options()).await;
    let creates: Vec<String> = plan
        .steps
        .iter()
        .filter(|s| matches!(s.action, Action::Create(_)))
        .map(|s| s.to_string())
        .collect();
    assert_eq!(creates.len(), 2, "queue and its binding: {}", lines(&plan));

    let report = apply(&paths, &sandbox.options()).await;
    assert_eq!(report.changes(), 2, "{}", lines(&report));
    assert!(diff(&paths, &sandbox.options()).await.is_converged());
}

#[tokio::test]
async fn prune_deletes_unmanaged_objects_only_when_asked_and_never_rabbitmqs_own() {
    let sandbox = Sandbox::new("prune").await;
    let paths = sandbox.write(&queue("kept", ""));
    let stray = QueueDef {
        vhost: sandbox.vhost.clone(),
        name: "stray".to_owned(),
        queue_type: "classic".to_owned(),
        durable: true,
        auto_delete: false,
        arguments: Default::default(),
    };
    sandbox
        .api
        .put_queue(&stray)
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    assert!(apply(&paths, &sandbox.options()).await.succeeded());
    assert!(
        sandbox
            .api
            .get_queue(&sandbox.vhost, "stray")
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .is_some()
    );

    let report = apply(&paths, &sandbox.pruning()).await;
    assert!(report.succeeded(), "{}", lines(&report));
    assert!(
        sandbox
            .api
            .get_queue(&sandbox.vhost, "stray")
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .is_none()
    );
    let exchanges = sandbox
        .api
        .list_exchanges(&sandbox.vhost)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        exchanges.iter().any(|e| e.name == "amq.topic"),
        "amq.* exchanges stay"
    );
    assert!(
        exchanges.iter().any(|e| e.name.is_empty()),
        "the default exchange stays"
    );
    assert!(diff(&paths, &sandbox.pruning()).await.is_converged());
}

#[tokio::test]
async fn a_missing_vhost_is_an_error_and_nothing_is_created() {
    let sandbox = Sandbox::new("novhost").await;
    let paths = sandbox.write(&queue("q", ""));
    let mut options = sandbox.options();
    let missing = unique("warren-test-missing");
    options.vhost = Some(missing.clone());
    let error = cli::apply(&paths, &options).await.err();
    assert!(
        matches!(&error, Some(Error::VhostMissing { vhost, .. }) if *vhost == missing),
        "{error:?}"
    );
    assert!(!sandbox.api.vhost_exists(&missing).await.unwrap_or(true));
}

#[tokio::test]
async fn wrong_credentials_keep_rabbitmqs_status_and_an_unreachable_broker_times_out() {
    let mut bad = connection();
    bad.credentials.password = "definitely-not-the-password".to_owned();
    let api = HttpManagementApi::new(&bad).unwrap_or_else(|e| panic!("{e}"));
    let error = api.overview().await.err();
    assert!(
        matches!(&error, Some(Error::RabbitMq { status: 401, .. })),
        "{error:?}"
    );
    assert!(
        !error
            .map(|e| e.to_string())
            .unwrap_or_default()
            .contains("definitely-not-the-password")
    );

    let mut closed = connection();
    closed.management_url = "http://127.0.0.1:9".to_owned();
    closed.timeout = Duration::from_secs(2);
    let api = HttpManagementApi::new(&closed).unwrap_or_else(|e| panic!("{e}"));
    let error = api.overview().await.err();
    assert!(matches!(&error, Some(Error::Transport { .. })), "{error:?}");

    let overview = self::api()
        .overview()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(overview.rabbitmq_version.starts_with("3."), "{overview:?}");
}

#[tokio::test]
async fn invalid_files_name_the_file_the_resource_and_the_field() {
    let sandbox = Sandbox::new("invalid").await;
    let paths = sandbox.write(&queue("q", "  type: classic\n  deliveryLimit: 3\n"));
    let error = cli::apply(&paths, &sandbox.options())
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        error.contains("topology.yaml: Queue/q: spec.deliveryLimit: applies to quorum queues only"),
        "{error}"
    );
    assert!(
        sandbox
            .api
            .get_queue(&sandbox.vhost, "q")
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .is_none()
    );
}

/// Runs the `warren` binary; returns its exit status and stdout.
fn warren(args: &[&str]) -> (i32, String, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run warren: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output.status.code().unwrap_or(-1), stdout, stderr)
}

#[test]
fn each_subcommand_shows_only_its_own_options_and_the_environment_it_reads() {
    let help = |command: &str| {
        let (status, stdout, stderr) = warren(&[command, "--help"]);
        assert_eq!(status, 0, "{stderr}");
        stdout
    };
    let (apply, diff, delete, export) =
        (help("apply"), help("diff"), help("delete"), help("export"));
    assert!(
        apply.contains("--prune") && !apply.contains("--all"),
        "{apply}"
    );
    assert!(diff.contains("--prune") && diff.contains("--all"), "{diff}");
    assert!(
        !delete.contains("--prune") && !delete.contains("--all"),
        "{delete}"
    );
    assert!(export.contains("--amqp-url"), "{export}");
    for (name, text) in [
        ("apply", &apply),
        ("diff", &diff),
        ("delete", &delete),
        ("export", &export),
    ] {
        assert!(text.contains("--management-url"), "{name}: {text}");
        for variable in [
            "WARREN_MANAGEMENT_URL",
            "WARREN_RABBITMQ_USERNAME",
            "WARREN_RABBITMQ_CA_FILE",
        ] {
            assert!(text.contains(variable), "{name} names {variable}: {text}");
        }
    }
    // An option of another subcommand is refused, not silently ignored.
    let (status, _, stderr) = warren(&["delete", "-f", "x.yaml", "--prune"]);
    assert_eq!(status, 2, "{stderr}");
    assert!(stderr.contains("--prune"), "{stderr}");
}

#[tokio::test]
async fn the_warren_command_exits_like_kubectl_diff_and_export_round_trips() {
    let sandbox = Sandbox::new("binary").await;
    let topology = topology_dir();
    let topology = topology.to_string_lossy();
    let vhost = sandbox.vhost.as_str();

    let (status, stdout, _) = warren(&["diff", "-f", &topology, "--vhost", vhost]);
    assert_eq!(status, 1, "changes pending: {stdout}");
    assert!(
        stdout.contains("+ local: create queue \"orders.inventory_events.retry.4\""),
        "{stdout}"
    );

    let (status, stdout, stderr) = warren(&["apply", "-f", &topology, "--vhost", vhost]);
    assert_eq!(status, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains("local: created exchange \"warren.dlx\""),
        "{stdout}"
    );

    let (status, stdout, _) = warren(&["diff", "-f", &topology, "--vhost", vhost]);
    assert_eq!(status, 0, "converged: {stdout}");

    // Exported YAML, applied back to the same vhost, is already converged.
    let (status, exported, stderr) = warren(&["export", "--vhost", vhost]);
    assert_eq!(status, 0, "{stderr}");
    assert!(
        exported.contains("amqpUrl: amqp://127.0.0.1:5672"),
        "the Broker keeps its AMQP URL: {exported}"
    );
    let file = sandbox.dir.join("exported.yaml");
    std::fs::write(&file, &exported).unwrap_or_else(|e| panic!("{e}"));
    let file = file.to_string_lossy();
    let (status, stdout, stderr) = warren(&["diff", "-f", &file, "--vhost", vhost, "--prune"]);
    assert_eq!(status, 0, "{stdout}{stderr}\n{exported}");

    let broken = sandbox.dir.join("broken.yaml");
    std::fs::write(
        &broken,
        format!("{BROKER}{}", queue("q", "  messageTTL: 5\n")),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let (status, _, stderr) = warren(&["apply", "-f", &broken.to_string_lossy(), "--vhost", vhost]);
    assert_eq!(status, 2);
    assert!(
        stderr.contains("broken.yaml: Queue/q: spec.messageTTL: unknown field"),
        "{stderr}"
    );
}

/// A RabbitMQ user with the `policymaker` tag (not an administrator), removed on drop.
struct PolicymakerUser {
    credentials: Credentials,
}

impl PolicymakerUser {
    async fn new(vhost: &str) -> PolicymakerUser {
        let credentials = Credentials {
            username: unique("warren-test-policymaker"),
            password: unique("pw"),
        };
        let guest = connection();
        let http = reqwest::Client::new();
        let url = |path: String| format!("{MANAGEMENT_URL}/api/{path}");
        for (path, body) in [
            (
                format!("users/{}", credentials.username),
                json!({"password": credentials.password, "tags": "policymaker"}),
            ),
            (
                format!("permissions/{}/{}", vhost, credentials.username),
                json!({"configure": ".*", "write": ".*", "read": ".*"}),
            ),
        ] {
            let response = http
                .put(url(path.clone()))
                .basic_auth(
                    &guest.credentials.username,
                    Some(&guest.credentials.password),
                )
                .json(&body)
                .send()
                .await
                .unwrap_or_else(|e| panic!("PUT {path}: {e}"));
            assert!(
                response.status().is_success(),
                "PUT {path}: {}",
                response.status()
            );
        }
        PolicymakerUser { credentials }
    }
}

impl Drop for PolicymakerUser {
    fn drop(&mut self) {
        let url = format!("{MANAGEMENT_URL}/api/users/{}", self.credentials.username);
        let guest = connection().credentials;
        clean_up(async move {
            let _ = reqwest::Client::new()
                .delete(url)
                .basic_auth(&guest.username, Some(&guest.password))
                .send()
                .await;
        });
    }
}

#[tokio::test]
async fn a_broker_user_without_the_administrator_tag_reconciles_its_vhost() {
    // RabbitMQ answers `GET /api/vhosts/{name}` to administrators only; the Broker's user needs
    // no more than the policymaker tag and permissions in its vhost.
    let sandbox = Sandbox::new("policymaker").await;
    let other = Sandbox::new("policymaker-other").await;
    let user = PolicymakerUser::new(&sandbox.vhost).await;
    let mut connection = connection();
    connection.credentials = user.credentials.clone();
    let as_user = HttpManagementApi::new(&connection).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        as_user
            .vhost_exists(&sandbox.vhost)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    );
    // A vhost the user has no permissions in is as missing as one that does not exist.
    assert!(
        !as_user
            .vhost_exists(&other.vhost)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    );

    let paths = sandbox.write(&format!(
        "{}{}",
        exchange("policymaker.events"),
        queue("policymaker.jobs", "  type: quorum\n")
    ));
    let mut options = sandbox.options();
    options.credentials = Some(user.credentials.clone());
    cli::apply(&paths, &options)
        .await
        .unwrap_or_else(|e| panic!("apply as a policymaker: {e}"));
    assert!(diff(&paths, &options).await.is_converged());
    assert!(
        sandbox
            .api
            .get_queue(&sandbox.vhost, "policymaker.jobs")
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .is_some()
    );
}
