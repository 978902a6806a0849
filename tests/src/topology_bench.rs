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
    Ok(json!({
        "scenario": "converge", "objects": objects, "concurrency": DEFAULT_CONCURRENCY,
        "unit": "objects/s", "baseline": round(baseline_rate), "warren": round(warren_rate),
        "ratio": round(warren_rate / baseline_rate),
        "baseline_seconds": round(raw.as_secs_f64()), "warren_seconds": round(warren.as_secs_f64()),
        "warren_api_calls": report.api_calls,
    }))
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
