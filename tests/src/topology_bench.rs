//! The topology benchmarks of `bench converge` and `bench resync`: the raw management API and
//! Warren side by side on the same objects, each in a vhost of its own, removed afterwards.
//!
//! The objects: 10 topic exchanges, N classic queues and N bindings (queue i bound to exchange
//! i mod 10 with key `k.i`), 2N + 10 in all.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use serde_json::{Value, json};
use warren_messaging::config;
use warren_operator::cli::{self, ApplyOptions, DEFAULT_CONCURRENCY};
use warren_operator::controller::observe_one;
use warren_operator::crd::DestinationType;
use warren_operator::plan::Object;
use warren_operator::rabbitmq::{BindingDef, HttpManagementApi, QueueDef};

use crate::support::{Management, management, unique_name};

const EXCHANGES: usize = 10;

fn exchange(i: usize) -> String {
    format!("bench.x{}", i % EXCHANGES)
}

fn queue(i: usize) -> String {
    format!("bench.q{i}")
}

/// A vhost of the benchmark's own; [`BenchVhost::delete`] removes it with everything in it.
struct BenchVhost {
    name: String,
    mgmt: Management,
}

impl BenchVhost {
    async fn create(prefix: &str) -> BenchVhost {
        let mgmt = management();
        let name = unique_name(prefix);
        mgmt.create_vhost(&name).await;
        BenchVhost { name, mgmt }
    }

    /// Deletes the vhost, waiting until RabbitMQ no longer lists it (removing 20,000 objects
    /// takes it a while, longer than one call's timeout).
    async fn delete(self) {
        self.mgmt.delete_vhost(&self.name).await;
        let deadline = Instant::now() + Duration::from_secs(300);
        while Instant::now() < deadline
            && self
                .mgmt
                .get("vhosts")
                .await
                .as_array()
                .is_some_and(|all| all.iter().any(|v| v["name"] == self.name.as_str()))
        {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// The management API as `warren apply` would reach it from this machine.
fn options(vhost: &str) -> Result<ApplyOptions> {
    let mut options = ApplyOptions::from_env()?;
    options.management_url = Some(config::management_url());
    options.vhost = Some(vhost.to_owned());
    options.concurrency = DEFAULT_CONCURRENCY;
    Ok(options)
}

/// Writes the topology as Warren resources (JSON documents, which YAML reads as they are).
fn write_topology(dir: &Path, n: usize) -> Result<()> {
    let resource = |kind: &str, name: String, spec: Value| {
        json!({"apiVersion": "warren.dev/v1alpha1", "kind": kind,
               "metadata": {"name": name}, "spec": spec})
        .to_string()
    };
    let broker = json!({"name": "bench"});
    let mut docs = vec![resource(
        "Broker",
        "bench".into(),
        json!({"managementUrl": config::management_url(),
               "credentialsSecretRef": {"name": "unused-by-the-cli"}}),
    )];
    for i in 0..EXCHANGES {
        docs.push(resource(
            "Exchange",
            format!("x{i}"),
            json!({"brokerRef": broker, "name": exchange(i), "type": "topic", "durable": true}),
        ));
    }
    for i in 0..n {
        docs.push(resource(
            "Queue",
            format!("q{i}"),
            json!({"brokerRef": broker, "name": queue(i), "type": "classic", "durable": true}),
        ));
        docs.push(resource(
            "Binding",
            format!("b{i}"),
            json!({"brokerRef": broker, "source": exchange(i), "destination": queue(i),
                   "destinationType": "queue", "routingKey": format!("k.{i}")}),
        ));
    }
    std::fs::write(dir.join("topology.yaml"), docs.join("\n---\n"))?;
    Ok(())
}

/// The baseline: every object PUT (bindings POSTed) straight to the management API, exchanges,
/// then queues, then bindings, `DEFAULT_CONCURRENCY` calls at a time.
async fn raw_declare(vhost: &str, n: usize) -> Result<Duration> {
    let http = reqwest::Client::new();
    let base = config::management_url();
    let user = std::env::var("WARREN_RABBITMQ_USERNAME").unwrap_or_else(|_| "guest".into());
    let password = std::env::var("WARREN_RABBITMQ_PASSWORD").unwrap_or_else(|_| "guest".into());
    let v = urlencoding::encode(vhost).into_owned();
    let call = |method: reqwest::Method, path: String, body: Value| {
        let request = http
            .request(method, format!("{base}/api/{path}"))
            .basic_auth(&user, Some(&password))
            .json(&body);
        async move {
            let response = request.send().await?;
            if !response.status().is_success() {
                bail!(
                    "{} {}",
                    response.status(),
                    response.text().await.unwrap_or_default()
                );
            }
            Ok(())
        }
    };
    let started = Instant::now();
    let phases: [Vec<(reqwest::Method, String, Value)>; 3] = [
        (0..EXCHANGES)
            .map(|i| {
                (
                    reqwest::Method::PUT,
                    format!("exchanges/{v}/{}", exchange(i)),
                    json!({"type": "topic", "durable": true}),
                )
            })
            .collect(),
        (0..n)
            .map(|i| {
                (
                    reqwest::Method::PUT,
                    format!("queues/{v}/{}", queue(i)),
                    json!({"durable": true, "auto_delete": false, "arguments": {}}),
                )
            })
            .collect(),
        (0..n)
            .map(|i| {
                (
                    reqwest::Method::POST,
                    format!("bindings/{v}/e/{}/q/{}", exchange(i), queue(i)),
                    json!({"routing_key": format!("k.{i}"), "arguments": {}}),
                )
            })
            .collect(),
    ];
    for phase in phases {
        let results: Vec<Result<()>> = futures::stream::iter(
            phase
                .into_iter()
                .map(|(method, path, body)| call(method, path, body)),
        )
        .buffer_unordered(DEFAULT_CONCURRENCY)
        .collect()
        .await;
        results.into_iter().collect::<Result<Vec<()>>>()?;
    }
    Ok(started.elapsed())
}

fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// `converge N`: the raw management API against `warren apply` for the same 2N + 10 objects.
pub async fn converge(n: usize) -> Result<Value> {
    let objects = 2 * n + EXCHANGES;
    let raw_vhost = BenchVhost::create("bench-converge-raw").await;
    let raw = raw_declare(&raw_vhost.name, n).await;
    raw_vhost.delete().await;
    let raw = raw?;

    let warren_vhost = BenchVhost::create("bench-converge-warren").await;
    let dir = std::env::temp_dir().join(&warren_vhost.name);
    std::fs::create_dir_all(&dir)?;
    write_topology(&dir, n)?;
    let started = Instant::now();
    let applied = match options(&warren_vhost.name) {
        Ok(options) => cli::apply(std::slice::from_ref(&dir), &options)
            .await
            .map_err(Into::into),
        Err(error) => Err(error),
    };
    let warren = started.elapsed();
    let _ = std::fs::remove_dir_all(&dir);
    warren_vhost.delete().await;
    let report = applied.context("warren apply")?;
    if report.failures() > 0 || report.changes() != objects {
        bail!("warren apply: {}", report.summary());
    }
    let (baseline_rate, warren_rate) = (
        objects as f64 / raw.as_secs_f64(),
        objects as f64 / warren.as_secs_f64(),
    );
    let mut line = json!({
        "scenario": "converge", "objects": objects, "concurrency": DEFAULT_CONCURRENCY,
        "unit": "objects/s", "baseline": round(baseline_rate), "warren": round(warren_rate),
        "ratio": round(warren_rate / baseline_rate),
        "baseline_seconds": round(raw.as_secs_f64()), "warren_seconds": round(warren.as_secs_f64()),
        "warren_api_calls": report.api_calls,
    });
    match operator::converge(n).await? {
        Some(measured) => {
            let rate = objects as f64 / measured.seconds;
            line["operator"] = json!(round(rate));
            line["operator_ratio"] = json!(round(rate / baseline_rate));
            line["operator_seconds"] = json!(round(measured.seconds));
            line["operator_apply_seconds"] = json!(round(measured.apply_seconds));
            // The API server takes four writes per resource when the operator runs: the user's
            // apply, the finalizer, the status and the Created Event. Its rate for one of them
            // alone, divided by four, is as fast as any operator could converge here.
            let floor = objects as f64 / measured.apply_alone_seconds;
            line["api_server_floor"] = json!(round(floor));
            line["operator_floor"] = json!(round(floor.min(baseline_rate * 4.0) / 4.0));
            line["operator_floor_ratio"] =
                json!(round(rate / (floor.min(baseline_rate * 4.0) / 4.0)));
            line["operator_resources"] = json!(measured.resources);
            line["operator_peak_rss_mib"] = json!(round(measured.peak_rss_mib));
            line["operator_cpu_seconds"] = json!(round(measured.cpu_seconds));
            line["operator_reconciles"] = json!(measured.converged.reconciliations);
            line["operator_api_calls"] = json!(measured.converged.calls);
            line["operator_resync_seconds"] = json!(operator::RESYNC.as_secs());
            line["operator_resync_api_calls"] = json!(measured.resync.calls);
            line["operator_resync_writes"] = json!(measured.resync.writes);
            line["operator_restart_seconds"] = json!(round(measured.restart_seconds));
            line["operator_restart_api_calls"] = json!(measured.restart.calls);
            line["operator_restart_writes"] = json!(measured.restart.writes);
            line["operator_api_server_requests"] = json!(measured.api_server_requests);
            line["operator_api_server_watch_events"] = json!(measured.api_server_watch_events);
        }
        None => line["operator"] = json!("skipped: no envtest assets (scripts/envtest.sh)"),
    }
    Ok(line)
}

/// `resync N`: one full drift check of 2N + 10 objects with nothing to change. Warren's
/// (`warren diff`: each kind listed once per vhost, compared in memory) against reading each
/// object back on its own, as a per-resource reconcile does (measured on a sample of
/// `sample` queues and bindings and scaled to all of them).
pub async fn resync(n: usize, sample: usize) -> Result<Value> {
    let objects = 2 * n + EXCHANGES;
    let vhost = BenchVhost::create("bench-resync").await;
    let dir = std::env::temp_dir().join(&vhost.name);
    std::fs::create_dir_all(&dir)?;
    write_topology(&dir, n)?;
    let measured = measure_resync(&vhost.name, &dir, n, sample).await;
    let _ = std::fs::remove_dir_all(&dir);
    vhost.delete().await;
    let (diff_calls, warren, per_object, calls_per_object, sampled) = measured?;
    Ok(json!({
        "scenario": "resync", "objects": objects,
        "warren_api_calls": diff_calls, "warren_seconds": round(warren.as_secs_f64()),
        "per_object_api_calls": round(calls_per_object * objects as f64),
        "per_object_seconds": round(per_object * objects as f64),
        "per_object_sample": sampled,
    }))
}

/// [`resync`]'s measurements in `vhost`: the diff's calls and time, then the seconds and calls
/// per object of reading each back on its own, and how many objects that sample read.
async fn measure_resync(
    vhost: &str,
    dir: &Path,
    n: usize,
    sample: usize,
) -> Result<(u64, Duration, f64, f64, usize)> {
    let options = options(vhost)?;
    let applied = cli::apply(&[dir.to_owned()], &options).await?;
    if applied.failures() > 0 {
        bail!("warren apply: {}", applied.summary());
    }
    let started = Instant::now();
    let diff = cli::diff(&[dir.to_owned()], &options).await?;
    let warren = started.elapsed();
    if !diff.is_converged() {
        bail!("the drift check found changes: {}", diff.summary());
    }

    let api = HttpManagementApi::new(&cli::connection(&config::management_url(), &options)?)?;
    let sample = sample.min(n).max(1);
    let started = Instant::now();
    for i in 0..sample {
        let queue = Object::Queue(QueueDef {
            vhost: vhost.to_owned(),
            name: queue(i),
            queue_type: "classic".into(),
            durable: true,
            auto_delete: false,
            arguments: Default::default(),
        });
        let binding = Object::Binding(BindingDef {
            vhost: vhost.to_owned(),
            source: exchange(i),
            destination: self::queue(i),
            destination_type: DestinationType::Queue,
            routing_key: format!("k.{i}"),
            arguments: Default::default(),
        });
        for object in [queue, binding] {
            observe_one(&api, api.base_url(), &object).await?;
        }
    }
    let per_object = started.elapsed().as_secs_f64() / (2 * sample) as f64;
    let calls_per_object = api.calls() as f64 / (2 * sample) as f64;
    Ok((
        diff.api_calls,
        warren,
        per_object,
        calls_per_object,
        2 * sample,
    ))
}

/// The operator's side of `converge`: the same topology as Warren resources, server-side applied
/// into a namespace of a private envtest API server (16 at once, as `kubectl apply
/// --server-side` runs would), reconciled by `warren operator` in a process of its own with the
/// chart's RBAC, until every resource reports Ready for its generation.
pub mod operator {
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use anyhow::{Context, Result, bail};
    use futures::StreamExt;
    use std::collections::{BTreeMap, HashSet};
    use std::sync::{Arc, Mutex};

    use kube::api::{Patch, PatchParams};
    use kube::runtime::{WatchStreamExt, watcher};
    use serde_json::{Value, json};

    use super::{EXCHANGES, exchange, queue};
    use crate::operator::{BROKER, CREDENTIALS, Fixture};

    /// What one operator converge measured.
    pub struct Measured {
        /// Resources applied (Broker included).
        pub resources: usize,
        /// From the first apply until every resource was Ready.
        pub seconds: f64,
        /// Of those, the applies themselves.
        pub apply_seconds: f64,
        /// The API server's floor: the same applies into another namespace with no operator
        /// watching, in seconds.
        pub apply_alone_seconds: f64,
        /// The operator process's peak resident memory (VmHWM), in MiB.
        pub peak_rss_mib: f64,
        /// The CPU time the operator process used (user and system) until every resource was
        /// Ready, in seconds.
        pub cpu_seconds: f64,
        /// What the operator had done by then.
        pub converged: Calls,
        /// The management calls of one resync period after that, nothing having changed.
        pub resync: Calls,
        /// What a restarted operator did until it had reconciled every resource once.
        pub restart: Calls,
        /// How long that took.
        pub restart_seconds: f64,
        /// The API server's requests during the converge, by `verb resource[/subresource]`
        /// (its own `apiserver_request_total`; watches excluded).
        pub api_server_requests: BTreeMap<String, u64>,
        /// The watch events the API server sent during the converge, by kind
        /// (`apiserver_watch_events_total`).
        pub api_server_watch_events: BTreeMap<String, u64>,
    }

    /// The API server's request and watch-event counters, from its `/metrics`.
    #[derive(Default)]
    struct ApiServerCounts {
        requests: BTreeMap<String, u64>,
        watch_events: BTreeMap<String, u64>,
    }

    impl ApiServerCounts {
        async fn scrape(client: &kube::Client) -> Result<ApiServerCounts> {
            let request = http::Request::get("/metrics").body(Vec::new())?;
            let text = client.request_text(request).await?;
            let mut counts = ApiServerCounts::default();
            for line in text.lines().filter(|l| !l.starts_with('#')) {
                let Some((series, value)) = line.rsplit_once(' ') else {
                    continue;
                };
                let value = value.parse::<f64>().unwrap_or_default() as u64;
                let label = |name: &str| {
                    series
                        .split_once(&format!("{name}=\""))
                        .and_then(|(_, rest)| rest.split_once('"'))
                        .map(|(value, _)| value.to_owned())
                        .unwrap_or_default()
                };
                if series.starts_with("apiserver_request_total{") {
                    let verb = label("verb");
                    if verb == "WATCH" || verb == "CONNECT" {
                        continue;
                    }
                    let mut key = format!("{verb} {}", label("resource"));
                    let subresource = label("subresource");
                    if !subresource.is_empty() {
                        key = format!("{key}/{subresource}");
                    }
                    *counts.requests.entry(key).or_default() += value;
                } else if series.starts_with("apiserver_watch_events_total{") {
                    // `resource` on recent API servers, `kind` on older ones.
                    let resource = Some(label("resource"))
                        .filter(|r| !r.is_empty())
                        .unwrap_or_else(|| label("kind"));
                    *counts.watch_events.entry(resource).or_default() += value;
                }
            }
            Ok(counts)
        }

        /// What happened since `before`, leaving out what barely happened (the control plane's
        /// own chatter).
        fn since(&self, before: &ApiServerCounts, at_least: u64) -> ApiServerCounts {
            let diff = |now: &BTreeMap<String, u64>, then: &BTreeMap<String, u64>| {
                now.iter()
                    .map(|(k, v)| {
                        (
                            k.clone(),
                            v.saturating_sub(then.get(k).copied().unwrap_or(0)),
                        )
                    })
                    .filter(|(_, v)| *v >= at_least)
                    .collect()
            };
            ApiServerCounts {
                requests: diff(&self.requests, &before.requests),
                watch_events: diff(&self.watch_events, &before.watch_events),
            }
        }
    }

    /// The resync period the benchmark's operator runs with.
    pub const RESYNC: Duration = Duration::from_secs(30);

    /// Counters from the operator's `/metrics`.
    #[derive(Clone, Copy, Debug, Default)]
    pub struct Calls {
        /// `warren_management_api_calls_total`.
        pub calls: u64,
        /// `warren_management_api_writes_total`.
        pub writes: u64,
        /// `warren_reconciliations_total` of the topology kinds.
        pub reconciliations: u64,
    }

    impl Calls {
        async fn scrape(url: &str) -> Result<Calls> {
            let text = reqwest::get(url).await?.error_for_status()?.text().await?;
            let mut calls = Calls::default();
            for line in text.lines().filter(|l| !l.starts_with('#')) {
                let Some((series, value)) = line.rsplit_once(' ') else {
                    continue;
                };
                let value = value.parse::<f64>().unwrap_or_default() as u64;
                if series == "warren_management_api_calls_total" {
                    calls.calls = value;
                } else if series == "warren_management_api_writes_total" {
                    calls.writes = value;
                } else if series.starts_with("warren_reconciliations_total")
                    && !series.contains("\"Broker\"")
                {
                    calls.reconciliations += value;
                }
            }
            Ok(calls)
        }

        fn since(&self, before: &Calls) -> Calls {
            Calls {
                calls: self.calls.saturating_sub(before.calls),
                writes: self.writes.saturating_sub(before.writes),
                reconciliations: self.reconciliations.saturating_sub(before.reconciliations),
            }
        }
    }

    /// `warren operator`, killed when dropped.
    struct Process(Child);

    impl Drop for Process {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    impl Process {
        /// User and system CPU time so far, from /proc (fields 14 and 15, in clock ticks).
        fn cpu_seconds(&self) -> Result<f64> {
            let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.0.id()))?;
            // The command name (field 2) may hold spaces; the fields after it do not.
            let after = stat
                .rsplit_once(')')
                .map(|(_, rest)| rest)
                .unwrap_or_default();
            let fields: Vec<&str> = after.split_whitespace().collect();
            let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
            // Field 14 is the 12th after the name and state.
            let (user, system) = (ticks(11), ticks(12));
            // SAFETY: sysconf has no preconditions.
            let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
            match (user, system) {
                (Some(u), Some(s)) if per_second > 0.0 => Ok((u + s) / per_second),
                _ => bail!("cannot read the CPU time from /proc/<pid>/stat"),
            }
        }

        /// Peak resident memory so far, from /proc.
        fn peak_rss_mib(&self) -> Result<f64> {
            let status = std::fs::read_to_string(format!("/proc/{}/status", self.0.id()))?;
            let kib: f64 = status
                .lines()
                .find_map(|line| line.strip_prefix("VmHWM:"))
                .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
                .context("no VmHWM in /proc/<pid>/status")?;
            Ok(kib / 1024.0)
        }
    }

    /// The `warren` binary built next to this one (`cargo build --release --bins`).
    fn warren_binary() -> Result<std::path::PathBuf> {
        let path = std::env::current_exe()?.with_file_name("warren");
        if !path.is_file() {
            bail!(
                "{} is missing: build it with `cargo build --release -p warren-operator` first",
                path.display()
            );
        }
        Ok(path)
    }

    fn resources(vhost: &str, n: usize) -> Vec<Value> {
        let broker = json!({"name": BROKER});
        let resource = |kind: &str, name: String, spec: Value| {
            json!({"apiVersion": "warren.dev/v1alpha1", "kind": kind,
                   "metadata": {"name": name}, "spec": spec})
        };
        let mut all = Vec::with_capacity(2 * n + EXCHANGES);
        for i in 0..EXCHANGES {
            all.push(resource(
                "Exchange",
                format!("x{i}"),
                json!({"brokerRef": broker, "vhost": vhost, "name": exchange(i), "type": "topic", "durable": true}),
            ));
        }
        for i in 0..n {
            all.push(resource(
                "Queue",
                format!("q{i}"),
                json!({"brokerRef": broker, "vhost": vhost, "name": queue(i), "type": "classic", "durable": true}),
            ));
            all.push(resource(
                "Binding",
                format!("b{i}"),
                json!({"brokerRef": broker, "vhost": vhost, "source": exchange(i), "destination": queue(i),
                       "destinationType": "queue", "routingKey": format!("k.{i}")}),
            ));
        }
        all
    }

    /// Server-side applies `objects` into `namespace`, 16 at once.
    async fn apply_all(f: &Fixture, namespace: &str, objects: &[Value]) -> Result<()> {
        let applied: Vec<Result<()>> = futures::stream::iter(objects.iter().map(|object| {
            let kind = object["kind"].as_str().unwrap_or_default();
            let name = object["metadata"]["name"].as_str().unwrap_or_default();
            let api: kube::Api<kube::api::DynamicObject> = kube::Api::namespaced_with(
                f.admin.clone(),
                namespace,
                &crate::operator::resource(kind),
            );
            async move {
                api.patch(name, &PatchParams::apply("kubectl"), &Patch::Apply(object))
                    .await
                    .map(drop)
                    .with_context(|| format!("apply {kind} {name}"))
            }
        }))
        .buffer_unordered(16)
        .collect()
        .await;
        applied.into_iter().collect()
    }

    /// The resources of the namespace that are Ready=True for their generation, kept up to date
    /// by one watch per kind (listing 20,000 resources over and over would load the API server
    /// more than the operator does).
    struct ReadyWatch {
        ready: Arc<Mutex<HashSet<(String, String)>>>,
        tasks: Vec<tokio::task::JoinHandle<()>>,
    }

    impl ReadyWatch {
        fn start(f: &Fixture, kinds: &[&'static str]) -> ReadyWatch {
            let ready: Arc<Mutex<HashSet<(String, String)>>> = Arc::default();
            let tasks = kinds
                .iter()
                .map(|&kind| {
                    let (api, ready) = (f.api(kind), ready.clone());
                    tokio::spawn(async move {
                        let mut events = std::pin::pin!(
                            watcher(api, watcher::Config::default()).applied_objects()
                        );
                        while let Some(event) = events.next().await {
                            let Ok(object) = event else { continue };
                            let object = serde_json::to_value(object).unwrap_or(Value::Null);
                            let key = (
                                kind.to_owned(),
                                object["metadata"]["name"]
                                    .as_str()
                                    .unwrap_or_default()
                                    .to_owned(),
                            );
                            let is_ready = crate::operator::current(&object)
                                && crate::operator::condition(&object, "Ready")
                                    .is_some_and(|c| c["status"] == "True");
                            if let Ok(mut ready) = ready.lock() {
                                if is_ready {
                                    ready.insert(key);
                                } else {
                                    ready.remove(&key);
                                }
                            }
                        }
                    })
                })
                .collect();
            ReadyWatch { ready, tasks }
        }

        fn count(&self) -> usize {
            self.ready.lock().map(|r| r.len()).unwrap_or_default()
        }
    }

    impl Drop for ReadyWatch {
        fn drop(&mut self) {
            for task in &self.tasks {
                task.abort();
            }
        }
    }

    /// Runs the operator converge of `n` queues and `n` bindings; `None` without envtest assets.
    pub async fn converge(n: usize) -> Result<Option<Measured>> {
        let Some(f) = Fixture::new("bench-operator").await else {
            return Ok(None);
        };
        let plane = f.ns.plane();
        let token = plane
            .service_account_token(&f.system.name, &f.service_account)
            .await;
        let kubeconfig = plane.dir.join(format!("{}.kubeconfig", f.ns.name));
        std::fs::write(&kubeconfig, plane.kubeconfig_yaml(&token, &f.ns.name))?;
        let start = |run: &str| -> Result<(Process, String)> {
            let port = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            let log = std::fs::File::create(plane.dir.join(format!("bench-operator-{run}.log")))?;
            let process = Process(
                Command::new(warren_binary()?)
                    .args([
                        "operator",
                        "--namespace",
                        &f.ns.name,
                        "--leader-elect",
                        "false",
                    ])
                    .args(["--port", &port.to_string(), "--identity", "bench"])
                    .args(["--resync-seconds", &RESYNC.as_secs().to_string()])
                    .env("KUBECONFIG", &kubeconfig)
                    .env("RUST_LOG", "warn")
                    .stdin(Stdio::null())
                    .stdout(log.try_clone()?)
                    .stderr(log)
                    .spawn()
                    .context("start warren operator")?,
            );
            Ok((process, format!("http://127.0.0.1:{port}/metrics")))
        };
        let (operator, metrics) = start("first")?;
        let broker = json!({"apiVersion": "warren.dev/v1alpha1", "kind": "Broker",
            "metadata": {"name": BROKER},
            "spec": {"managementUrl": warren_messaging::config::management_url(),
                     "credentialsSecretRef": {"name": CREDENTIALS}}});
        let all = resources(&f.vhost.name, n);
        // The floor: the API server taking the same applies with nobody watching them (into a
        // namespace the operator does not watch, with a Broker name nothing defines).
        let alone = plane.namespace("bench-apply-alone").await;
        let started = Instant::now();
        apply_all(&f, &alone.name, &all).await?;
        let apply_alone_seconds = started.elapsed().as_secs_f64();

        let admin = plane.admin().await;
        let api_server_before = ApiServerCounts::scrape(&admin).await?;
        let watch = ReadyWatch::start(&f, &["Exchange", "Queue", "Binding"]);
        let started = Instant::now();
        f.apply(&[broker]).await;
        apply_all(&f, &f.ns.name, &all).await?;
        let apply_seconds = started.elapsed().as_secs_f64();
        let deadline = Instant::now() + Duration::from_secs(1800);
        loop {
            let done = watch.count();
            if done == all.len() {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "only {done} of {} resources Ready after 30 minutes",
                    all.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let seconds = started.elapsed().as_secs_f64();
        let cpu_seconds = operator.cpu_seconds()?;
        let converged = Calls::scrape(&metrics).await?;
        // The benchmark's own Ready watch is among the watch events; counts below one per ten
        // resources are the control plane's own chatter.
        let api_server = ApiServerCounts::scrape(&admin)
            .await?
            .since(&api_server_before, n as u64 / 10);

        // One resync period with nothing to change: what re-reading RabbitMQ costs.
        tokio::time::sleep(RESYNC).await;
        let resync = Calls::scrape(&metrics).await?.since(&converged);
        let mut peak_rss_mib = operator.peak_rss_mib()?;
        drop(operator);

        // A restart: a new process reconciles every resource once.
        let restarted = Instant::now();
        let (operator, metrics) = start("restart")?;
        let deadline = Instant::now() + Duration::from_secs(1800);
        let restart = loop {
            if let Ok(calls) = Calls::scrape(&metrics).await
                && calls.reconciliations >= all.len() as u64
            {
                break calls;
            }
            if Instant::now() > deadline {
                bail!("the restarted operator did not reconcile everything within 30 minutes");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        let restart_seconds = restarted.elapsed().as_secs_f64();
        peak_rss_mib = peak_rss_mib.max(operator.peak_rss_mib()?);
        drop(operator);
        // The control plane goes with this process; RabbitMQ's side must be removed.
        let vhost = f.vhost.name.clone();
        super::BenchVhost {
            name: vhost,
            mgmt: crate::support::management(),
        }
        .delete()
        .await;
        Ok(Some(Measured {
            resources: all.len() + 1,
            seconds,
            apply_seconds,
            apply_alone_seconds,
            peak_rss_mib,
            cpu_seconds,
            converged,
            resync,
            restart,
            restart_seconds,
            api_server_requests: api_server.requests,
            api_server_watch_events: api_server.watch_events,
        }))
    }
}
