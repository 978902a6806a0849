//! Warren's operator run in-process against the envtest control plane and the machine's real
//! RabbitMQ, with exactly the permissions charts/warren grants: a test namespace of its own, a
//! RabbitMQ vhost of its own, the chart's RBAC rendered for that namespace, and a token of the
//! chart's ServiceAccount for the operator's client.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::api::{ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use warren_operator::controller::{HttpConnector, OperatorArgs, serve};
use warren_operator::crd::{Binding, Broker, Exchange, Policy, Queue, Worker};

use crate::envtest::{ControlPlane, TestNamespace, workspace};
use crate::support::{TestVhost, management};

/// The Broker every fixture declares (as manifests/topology names it).
pub const BROKER: &str = "local";
/// The Secret holding the Broker's credentials (as manifests/topology names it).
pub const CREDENTIALS: &str = "rabbitmq-credentials";

/// One test's world: namespace, vhost, the chart's RBAC, admin and operator clients.
pub struct Fixture {
    /// The test's namespace: the one the operator watches, where the resources live.
    pub ns: TestNamespace,
    /// The chart's release namespace: the operator's ServiceAccount and Lease.
    pub system: TestNamespace,
    /// The test's RabbitMQ vhost; every topology resource is pointed at it.
    pub vhost: TestVhost,
    /// A cluster-admin client, for what a user does.
    pub admin: Client,
    /// The chart's ServiceAccount (in `system`), as the operator's pod would be.
    pub service_account: String,
}

/// How the chart grants the operator its permissions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rbac {
    /// The default: a ClusterRole (the operator still watches only the test's namespace, so
    /// tests that run at once never see each other's resources).
    Cluster,
    /// `watchNamespaces: [ns]`: a Role in the watched namespace, nothing cluster-wide.
    Namespaced,
}

impl Fixture {
    /// Sets everything up with the chart's default (cluster-wide) RBAC, or `None` (with a loud
    /// message) when there are no envtest assets.
    pub async fn new(prefix: &str) -> Option<Fixture> {
        Fixture::with_rbac(prefix, Rbac::Cluster).await
    }

    /// Sets everything up with the chart's RBAC in the given mode.
    pub async fn with_rbac(prefix: &str, rbac: Rbac) -> Option<Fixture> {
        // The operator's logs, shown for a failing test (RUST_LOG picks the level; warn by default).
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
            )
            .with_test_writer()
            .try_init();
        let plane = ControlPlane::shared()?;
        let ns = plane.namespace(prefix).await;
        let system = plane.namespace(&format!("{prefix}-system")).await;
        let vhost = TestVhost::create(prefix).await;
        let admin = plane.admin().await;
        // A release name of its own, so the ClusterRoles of tests running at once differ.
        let release = crate::support::unique_name("warren");
        let values = match rbac {
            Rbac::Cluster => json!({}),
            Rbac::Namespaced => json!({"watchNamespaces": [ns.name]}),
        };
        let rendered = crate::chart::render(&release, &system.name, &values);
        crate::chart::apply(&admin, &crate::chart::rbac(&rendered)).await;
        let service_account = rendered
            .iter()
            .find(|o| o["kind"] == "ServiceAccount")
            .and_then(|o| o["metadata"]["name"].as_str())
            .unwrap_or_else(|| panic!("the chart renders a ServiceAccount"))
            .to_owned();
        let fixture = Fixture {
            ns,
            system,
            vhost,
            admin,
            service_account,
        };
        fixture.credentials_secret("guest", "guest").await;
        Some(fixture)
    }

    /// The test's namespace name.
    pub fn namespace(&self) -> &str {
        &self.ns.name
    }

    /// A client authenticated as the chart's ServiceAccount.
    pub async fn operator_client(&self) -> Client {
        let plane = self.ns.plane();
        let token = plane
            .service_account_token(&self.system.name, &self.service_account)
            .await;
        plane.client_with_token(&token, &self.ns.name).await
    }

    /// Starts `warren operator` in-process as the chart's ServiceAccount, watching the test's
    /// namespace, with `identity` in the Lease.
    pub async fn start_operator(&self, identity: &str) -> RunningOperator {
        self.start_operator_with(identity, |_| {}).await
    }

    /// Like [`Fixture::start_operator`], with `tweak` applied to the arguments.
    pub async fn start_operator_with(
        &self,
        identity: &str,
        tweak: impl FnOnce(&mut OperatorArgs),
    ) -> RunningOperator {
        self.start_operator_through(identity, tweak, Arc::new(HttpConnector::default()))
            .await
    }

    /// Like [`Fixture::start_operator_with`], reaching RabbitMQ through `connector` (whose
    /// call counters the test then reads).
    pub async fn start_operator_through(
        &self,
        identity: &str,
        tweak: impl FnOnce(&mut OperatorArgs),
        connector: Arc<HttpConnector>,
    ) -> RunningOperator {
        let mut args = OperatorArgs {
            namespaces: vec![self.ns.name.clone()],
            port: 0,
            leader_elect: true,
            // The chart's leader-election Role names this Lease.
            lease_name: "warren-operator".to_owned(),
            lease_namespace: self.system.name.clone(),
            lease_seconds: 15,
            resync_seconds: 60,
            cleanup_grace_seconds: 600,
            concurrency: 4,
            broker_max_in_flight: 8,
            broker_requests_per_second: 0,
            identity: Some(identity.to_owned()),
        };
        tweak(&mut args);
        let client = self.operator_client().await;
        let shutdown = CancellationToken::new();
        let task = tokio::spawn({
            let shutdown = shutdown.clone();
            async move { serve(client, &args, connector, shutdown).await }
        });
        RunningOperator {
            shutdown,
            task: Some(task),
        }
    }

    /// (Re)writes the Broker's credentials Secret.
    pub async fn credentials_secret(&self, username: &str, password: &str) {
        self.secret(
            CREDENTIALS,
            json!({"username": username, "password": password}),
        )
        .await;
    }

    /// (Re)writes a Secret in the test's namespace from `string_data`.
    pub async fn secret(&self, name: &str, string_data: Value) {
        let secrets: Api<Secret> = Api::namespaced(self.admin.clone(), &self.ns.name);
        let secret = json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name},
            "stringData": string_data,
        });
        secrets
            .patch(
                name,
                &PatchParams::apply("warren-envtest").force(),
                &Patch::Apply(&secret),
            )
            .await
            .unwrap_or_else(|e| panic!("apply Secret {name}: {e}"));
    }

    /// The objects of manifests/topology (Broker included), in file order, pointed at the test's
    /// vhost and RabbitMQ.
    pub fn topology_manifests(&self) -> Vec<Value> {
        let dir = workspace().join("manifests/topology");
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|path| path.extension().is_some_and(|x| x == "yaml"))
            .collect();
        // broker, exchanges, queues, bindings: the order a user would apply them in.
        files.sort_by_key(|path| {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            ["broker", "exchanges", "queues", "bindings"]
                .iter()
                .position(|stem| name.as_deref() == Some(&format!("{stem}.yaml")))
                .unwrap_or(9)
        });
        let mut objects = Vec::new();
        for file in files {
            let text = std::fs::read_to_string(&file)
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            for mut object in serde_saphyr::from_multiple::<Value>(&text)
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
            {
                if !object.is_object() {
                    continue;
                }
                if object["kind"] == "Broker" {
                    object["spec"]["managementUrl"] =
                        json!(warren_messaging::config::management_url());
                } else {
                    object["spec"]["vhost"] = json!(self.vhost.name);
                }
                objects.push(object);
            }
        }
        objects
    }

    /// Server-side applies Warren resources into the test's namespace, as `kubectl apply
    /// --server-side` would.
    pub async fn apply(&self, objects: &[Value]) {
        for object in objects {
            let kind = object["kind"].as_str().unwrap_or_default();
            let name = object["metadata"]["name"].as_str().unwrap_or_default();
            self.api(kind)
                .patch(
                    name,
                    &PatchParams::apply("kubectl").force(),
                    &Patch::Apply(object),
                )
                .await
                .unwrap_or_else(|e| panic!("apply {kind} {name}: {e}"));
        }
    }

    /// Creates one Warren resource; the API server's answer (refusals included) is returned.
    pub async fn create(&self, object: &Value) -> Result<DynamicObject, kube::Error> {
        let kind = object["kind"].as_str().unwrap_or_default();
        let object: DynamicObject = serde_json::from_value(object.clone())
            .unwrap_or_else(|e| panic!("{kind} is not an object: {e}"));
        self.api(kind).create(&PostParams::default(), &object).await
    }

    /// Deletes one Warren resource by kind and name (a missing one is fine).
    pub async fn delete(&self, kind: &str, name: &str) {
        match self.api(kind).delete(name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(e) => panic!("delete {kind} {name}: {e}"),
        }
    }

    /// The dynamic API of Warren's `kind` in the test's namespace, as admin.
    pub fn api(&self, kind: &str) -> Api<DynamicObject> {
        Api::namespaced_with(self.admin.clone(), &self.ns.name, &resource(kind))
    }

    /// One resource as JSON, or `None` when it does not exist.
    pub async fn get(&self, kind: &str, name: &str) -> Option<Value> {
        self.api(kind)
            .get_opt(name)
            .await
            .unwrap_or_else(|e| panic!("get {kind} {name}: {e}"))
            .map(|object| serde_json::to_value(object).unwrap_or(Value::Null))
    }

    /// Polls until `check` holds for the resource (absent counts as `None`); panics with the last
    /// state seen after `timeout`.
    pub async fn wait_for(
        &self,
        kind: &str,
        name: &str,
        what: &str,
        timeout: Duration,
        check: impl Fn(Option<&Value>) -> bool,
    ) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let current = self.get(kind, name).await;
            if check(current.as_ref()) {
                return current;
            }
            assert!(
                Instant::now() < deadline,
                "{kind} {name}: timed out after {timeout:?} waiting for {what}; last seen: {}",
                serde_json::to_string_pretty(&current).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the resource's `type` condition has `status` (and `reason` when given) for its
    /// current generation; returns the resource.
    pub async fn wait_condition(
        &self,
        kind: &str,
        name: &str,
        type_: &str,
        status: &str,
        reason: Option<&str>,
    ) -> Value {
        let what = format!("{type_}={status} {}", reason.unwrap_or(""));
        self.wait_for(kind, name, &what, Duration::from_secs(60), |object| {
            object.is_some_and(|o| {
                current(o)
                    && condition(o, type_).is_some_and(|c| {
                        c["status"] == status && reason.is_none_or(|r| c["reason"] == r)
                    })
            })
        })
        .await
        .unwrap_or(Value::Null)
    }

    /// Waits until every resource of `objects` is Ready=True for its current generation.
    pub async fn wait_all_ready(&self, objects: &[Value]) {
        for object in objects {
            let kind = object["kind"].as_str().unwrap_or_default();
            let name = object["metadata"]["name"].as_str().unwrap_or_default();
            self.wait_condition(kind, name, "Ready", "True", None).await;
        }
    }

    /// Runs kubectl as admin with the test's namespace.
    pub fn kubectl(&self, args: &[&str]) -> (bool, String) {
        let mut all = vec!["-n", self.ns.name.as_str()];
        all.extend_from_slice(args);
        let output = self.ns.plane().kubectl(&all);
        let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stderr));
        (output.status.success(), text)
    }

    /// Names of the queues RabbitMQ has in the test's vhost.
    pub async fn rabbitmq_queues(&self) -> Vec<String> {
        names(
            &management()
                .get(&format!("queues/{}", enc(&self.vhost.name)))
                .await,
        )
    }

    /// Names of the exchanges RabbitMQ has in the test's vhost (the default and `amq.*` ones left
    /// out).
    pub async fn rabbitmq_exchanges(&self) -> Vec<String> {
        names(
            &management()
                .get(&format!("exchanges/{}", enc(&self.vhost.name)))
                .await,
        )
        .into_iter()
        .filter(|name| !name.is_empty() && !name.starts_with("amq."))
        .collect()
    }

    /// The bindings RabbitMQ has in the test's vhost, as `source -> destination (key)`, the
    /// default exchange's implicit ones left out.
    pub async fn rabbitmq_bindings(&self) -> Vec<String> {
        let all = management()
            .get(&format!("bindings/{}", enc(&self.vhost.name)))
            .await;
        all.as_array()
            .into_iter()
            .flatten()
            .filter(|b| b["source"] != "")
            .map(|b| {
                format!(
                    "{} -> {} ({})",
                    b["source"].as_str().unwrap_or_default(),
                    b["destination"].as_str().unwrap_or_default(),
                    b["routing_key"].as_str().unwrap_or_default()
                )
            })
            .collect()
    }
}

/// The `type` condition of a resource's status.
pub fn condition<'a>(object: &'a Value, type_: &str) -> Option<&'a Value> {
    object["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

/// Whether the status speaks of the resource's current generation.
pub fn current(object: &Value) -> bool {
    object["status"]["observedGeneration"] == object["metadata"]["generation"]
}

fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o["name"].as_str().map(str::to_owned))
        .collect()
}

fn enc(s: &str) -> String {
    urlencoding::encode(s).into_owned()
}

/// The API resource of one of Warren's kinds.
pub fn resource(kind: &str) -> ApiResource {
    match kind {
        "Broker" => ApiResource::erase::<Broker>(&()),
        "Exchange" => ApiResource::erase::<Exchange>(&()),
        "Queue" => ApiResource::erase::<Queue>(&()),
        "Binding" => ApiResource::erase::<Binding>(&()),
        "Policy" => ApiResource::erase::<Policy>(&()),
        "Worker" => ApiResource::erase::<Worker>(&()),
        other => panic!("not a Warren kind: {other}"),
    }
}

/// Plural of each kind, for kubectl.
pub fn plural(kind: &str) -> String {
    resource(kind).plural
}

/// `warren operator` running on a task of its own.
pub struct RunningOperator {
    shutdown: CancellationToken,
    task: Option<JoinHandle<warren_operator::Result<()>>>,
}

impl RunningOperator {
    /// Stops it as SIGTERM would (running reconciles finish, the Lease is released) and returns
    /// how it ended.
    pub async fn stop(mut self) -> warren_operator::Result<()> {
        self.shutdown.cancel();
        let Some(task) = self.task.take() else {
            return Ok(());
        };
        match tokio::time::timeout(Duration::from_secs(60), task).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => panic!("the operator task panicked: {join}"),
            Err(_) => panic!("the operator did not stop within 60 s of its shutdown signal"),
        }
    }

    /// Whether it has ended on its own (a fatal error, lost leadership).
    pub fn is_finished(&self) -> bool {
        self.task.as_ref().is_none_or(JoinHandle::is_finished)
    }
}

impl Drop for RunningOperator {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
