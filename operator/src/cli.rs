//! `warren apply`, `diff` and `delete` as a library: YAML files in, one RabbitMQ per Broker out,
//! through the same reconcile core as the controllers. The binary only parses flags and prints.
//!
//! Environment (read by [`ApplyOptions::from_env`]):
//! - `WARREN_MANAGEMENT_URL` overrides every Broker's `spec.managementUrl` (and stands in for a
//!   Broker when the files hold none).
//! - `WARREN_RABBITMQ_USERNAME` / `WARREN_RABBITMQ_PASSWORD`: the management user (the CLI cannot
//!   read Kubernetes Secrets). Both or neither; with neither, `guest`/`guest` is used only for a
//!   loopback URL, as RabbitMQ itself only lets `guest` in from localhost.
//! - `WARREN_RABBITMQ_CA_FILE`, `WARREN_RABBITMQ_CLIENT_CERT_FILE`, `WARREN_RABBITMQ_CLIENT_KEY_FILE`:
//!   PEM files standing in for the Broker's CA and client-certificate Secrets.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    path::PathBuf,
    time::Duration,
};

pub mod dlq;
pub mod export;

use futures::StreamExt as _;

use crate::crd::{BindingSpec, Broker, DeletionPolicy, ExchangeSpec, PolicySpec, QueueSpec};
use crate::manifest::{self, Manifest, Resource};
use crate::plan::{self, Action, Desired, Object, Observed};
use crate::rabbitmq::{BrokerConnection, Credentials, HttpManagementApi, ManagementApi};
use crate::reconcile::{self, Outcome};
use crate::topology::{self, FieldError};
use crate::{Error, Result};

/// Overrides every Broker's management URL.
pub const ENV_MANAGEMENT_URL: &str = "WARREN_MANAGEMENT_URL";
/// Management user name.
pub const ENV_USERNAME: &str = "WARREN_RABBITMQ_USERNAME";
/// Management password.
pub const ENV_PASSWORD: &str = "WARREN_RABBITMQ_PASSWORD";
/// PEM bundle of extra trusted CAs.
pub const ENV_CA_FILE: &str = "WARREN_RABBITMQ_CA_FILE";
/// PEM client certificate.
pub const ENV_CLIENT_CERT_FILE: &str = "WARREN_RABBITMQ_CLIENT_CERT_FILE";
/// PEM client private key.
pub const ENV_CLIENT_KEY_FILE: &str = "WARREN_RABBITMQ_CLIENT_KEY_FILE";

/// How `apply`, `diff` and `delete` reach RabbitMQ and what they may do there.
#[derive(Clone, Debug, Default)]
pub struct ApplyOptions {
    /// Delete what the files no longer hold, in the vhosts the files use (RabbitMQ's own objects
    /// — default and `amq.*` exchanges, server-named and exclusive queues — are never touched).
    pub prune: bool,
    /// Put every resource in this vhost instead of its `spec.vhost` (tests apply the same files
    /// into a vhost of their own).
    pub vhost: Option<String>,
    /// Overrides every Broker's `spec.managementUrl`.
    pub management_url: Option<String>,
    /// Management user; `None` means guest/guest, allowed only for a loopback URL.
    pub credentials: Option<Credentials>,
    /// Extra trusted CAs (PEM file).
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM files).
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// Per-call timeout; `None` keeps the client's default.
    pub timeout: Option<Duration>,
    /// Management API calls in flight at once while applying or deleting (0:
    /// [`DEFAULT_CONCURRENCY`]).
    pub concurrency: usize,
}

/// Calls in flight at once by default: one at a time, a large apply mostly waits on round
/// trips; eight keep the management API busy without flooding it (`bench converge` compares
/// `warren apply` with raw PUTs at the same concurrency).
pub const DEFAULT_CONCURRENCY: usize = 8;

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|value| !value.is_empty())
}

impl ApplyOptions {
    /// Options from the `WARREN_*` environment variables (see the module documentation).
    pub fn from_env() -> Result<Self> {
        let credentials = match (env(ENV_USERNAME), env(ENV_PASSWORD)) {
            (Some(username), Some(password)) => Some(Credentials { username, password }),
            (None, None) => None,
            _ => {
                return Err(Error::Config(format!(
                    "set both {ENV_USERNAME} and {ENV_PASSWORD}, or neither"
                )));
            }
        };
        let client_cert = match (env(ENV_CLIENT_CERT_FILE), env(ENV_CLIENT_KEY_FILE)) {
            (Some(cert), Some(key)) => Some((PathBuf::from(cert), PathBuf::from(key))),
            (None, None) => None,
            _ => {
                return Err(Error::Config(format!(
                    "set both {ENV_CLIENT_CERT_FILE} and {ENV_CLIENT_KEY_FILE}, or neither"
                )));
            }
        };
        Ok(ApplyOptions {
            management_url: env(ENV_MANAGEMENT_URL),
            credentials,
            ca_file: env(ENV_CA_FILE).map(PathBuf::from),
            client_cert,
            ..ApplyOptions::default()
        })
    }
}

/// One planned or executed step.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    /// The Broker (`metadata.name`) the step runs against.
    pub broker: String,
    /// What the planner decided.
    pub action: Action,
    /// What came of it.
    pub result: StepResult,
}

/// What came of a step.
#[derive(Clone, Debug, PartialEq)]
pub enum StepResult {
    /// Only planned (`diff`).
    Planned,
    /// Carried out.
    Outcome(Outcome),
    /// RabbitMQ (or the network) failed it; the text holds RabbitMQ's reason.
    Failed(String),
}

impl Step {
    /// Whether this step leaves RabbitMQ different from the files.
    pub fn is_conflict(&self) -> bool {
        matches!(self.action, Action::Conflict { .. })
            || matches!(self.result, StepResult::Outcome(Outcome::Conflict(_)))
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let broker = &self.broker;
        match (&self.result, &self.action) {
            (StepResult::Planned, action) => {
                let sign = match action {
                    Action::Create(_) => '+',
                    Action::Update { .. } => '~',
                    Action::Delete(_) => '-',
                    Action::Conflict { .. } => '!',
                    Action::Unchanged(_) | Action::Retain(_) | Action::Absent(_) => '=',
                };
                write!(f, "{sign} {broker}: {action}")
            }
            (StepResult::Failed(error), action) => write!(f, "{broker}: FAILED {action}: {error}"),
            (StepResult::Outcome(Outcome::Conflict(reason)), action) => {
                let object = match action {
                    Action::Create(o)
                    | Action::Unchanged(o)
                    | Action::Retain(o)
                    | Action::Absent(o) => o.to_string(),
                    Action::Update { desired, .. } | Action::Conflict { desired, .. } => {
                        desired.to_string()
                    }
                    Action::Delete(existing) => existing.to_string(),
                };
                write!(f, "{broker}: CONFLICT {object}: {reason}")
            }
            (StepResult::Outcome(_), Action::Create(o)) => write!(f, "{broker}: created {o}"),
            (
                StepResult::Outcome(_),
                Action::Update {
                    desired, changes, ..
                },
            ) => {
                write!(f, "{broker}: updated {desired}: {}", changes.join("; "))
            }
            (StepResult::Outcome(_), Action::Delete(existing)) => {
                write!(f, "{broker}: deleted {existing}")
            }
            (StepResult::Outcome(_), Action::Retain(o)) => {
                write!(f, "{broker}: retained {o} (deletionPolicy: retain)")
            }
            (StepResult::Outcome(_), Action::Unchanged(o)) => write!(f, "{broker}: unchanged {o}"),
            (StepResult::Outcome(_), Action::Absent(o)) => {
                write!(f, "{broker}: absent {o} (already not in RabbitMQ)")
            }
            (StepResult::Outcome(_), Action::Conflict { desired, reason }) => {
                write!(f, "{broker}: CONFLICT {desired}: {reason}")
            }
        }
    }
}

/// Everything a command did or would do.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Report {
    /// Steps in execution order.
    pub steps: Vec<Step>,
    /// Documents that were not Warren topology (`file: Kind/name`).
    pub skipped: Vec<String>,
    /// What the plan leaves alone that a reader might expect it to change, e.g. a binding whose
    /// key or arguments changed in the files stays beside the new one unless `--prune`.
    pub notes: Vec<String>,
    /// Management API calls made: reading RabbitMQ back costs one list per kind and vhost,
    /// whatever the number of objects; each change one more.
    pub api_calls: u64,
}

impl Report {
    /// Steps that change (or would change) RabbitMQ.
    pub fn changes(&self) -> usize {
        self.steps
            .iter()
            .filter(|s| s.action.changes_rabbitmq() && !matches!(s.result, StepResult::Failed(_)))
            .count()
    }

    /// Steps in conflict.
    pub fn conflicts(&self) -> usize {
        self.steps.iter().filter(|s| s.is_conflict()).count()
    }

    /// Steps that failed.
    pub fn failures(&self) -> usize {
        self.steps
            .iter()
            .filter(|s| matches!(s.result, StepResult::Failed(_)))
            .count()
    }

    /// For `diff`: nothing to create, update or delete, and no conflict.
    pub fn is_converged(&self) -> bool {
        self.steps.iter().all(|s| {
            matches!(
                s.action,
                Action::Unchanged(_) | Action::Retain(_) | Action::Absent(_)
            )
        })
    }

    /// For `apply`/`delete`: every step reached its goal.
    pub fn succeeded(&self) -> bool {
        self.conflicts() == 0 && self.failures() == 0
    }

    /// One line: counts per kind of step.
    pub fn summary(&self) -> String {
        let count =
            |wanted: fn(&Action) -> bool| self.steps.iter().filter(|s| wanted(&s.action)).count();
        format!(
            "{} create, {} update, {} delete, {} unchanged, {} retained, {} absent, {} conflict, {} failed",
            count(|a| matches!(a, Action::Create(_))),
            count(|a| matches!(a, Action::Update { .. })),
            count(|a| matches!(a, Action::Delete(_))),
            count(|a| matches!(a, Action::Unchanged(_))),
            count(|a| matches!(a, Action::Retain(_))),
            count(|a| matches!(a, Action::Absent(_))),
            self.conflicts(),
            self.failures(),
        )
    }
}

/// Desired state for one broker, gathered from the files.
struct Target {
    broker: String,
    connection: BrokerConnection,
    desired: Desired,
    removals: Vec<(Object, DeletionPolicy)>,
    vhosts: Vec<String>,
}

fn is_loopback(url: &str) -> bool {
    reqwest::Url::parse(url)
        .ok()
        .and_then(|url| url.host_str().map(str::to_owned))
        .is_some_and(|host| matches!(host.as_str(), "localhost" | "127.0.0.1" | "[::1]" | "::1"))
}

fn read_pem(path: &PathBuf) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| Error::Io {
        path: path.clone(),
        source,
    })
}

fn connection_for(
    broker_name: &str,
    broker: Option<&Broker>,
    options: &ApplyOptions,
) -> Result<BrokerConnection> {
    let url = match (&options.management_url, broker) {
        (Some(url), _) => url.clone(),
        (None, Some(broker)) => broker.spec.management_url.clone(),
        (None, None) => {
            return Err(Error::Topology(format!(
                "no Broker named {broker_name:?} in the files and {ENV_MANAGEMENT_URL} is not set"
            )));
        }
    };
    connection(&url, options).map_err(|error| match error {
        Error::Config(text) => Error::Config(format!("Broker {broker_name:?}: {text}")),
        other => other,
    })
}

/// How to reach the management API at `url` with the credentials and TLS material of `options`.
pub fn connection(url: &str, options: &ApplyOptions) -> Result<BrokerConnection> {
    let credentials = match &options.credentials {
        Some(credentials) => credentials.clone(),
        None if is_loopback(url) => Credentials {
            username: "guest".to_owned(),
            password: "guest".to_owned(),
        },
        None => {
            return Err(Error::Config(format!(
                "{url}: set {ENV_USERNAME} and {ENV_PASSWORD} (guest/guest is only assumed for localhost)"
            )));
        }
    };
    let mut connection = BrokerConnection::new(url, credentials);
    if let Some(timeout) = options.timeout {
        connection.timeout = timeout;
    }
    if let Some(ca_file) = &options.ca_file {
        connection.ca_bundle_pem = Some(read_pem(ca_file)?);
    }
    if let Some((cert, key)) = &options.client_cert {
        let mut identity = read_pem(cert)?;
        identity.push(b'\n');
        identity.extend(read_pem(key)?);
        connection.client_identity_pem = Some(identity);
    }
    Ok(connection)
}

fn field(manifest: &Manifest) -> impl Fn(FieldError) -> Error + '_ {
    move |e| manifest.error(&e.field, e.message)
}

/// The RabbitMQ object a topology resource stands for, with its broker and deletion policy
/// (`None` for a Broker, which declares nothing).
fn desired_object(
    manifest: &Manifest,
    options: &ApplyOptions,
) -> Result<Option<(String, Object, DeletionPolicy)>> {
    let vhost = |spec_vhost: &String| options.vhost.clone().unwrap_or_else(|| spec_vhost.clone());
    let desired = match &manifest.resource {
        Resource::Broker(_) => return Ok(None),
        Resource::Exchange(r) => {
            let spec = ExchangeSpec {
                vhost: vhost(&r.spec.vhost),
                ..r.spec.clone()
            };
            let def = topology::exchange_def(&spec).map_err(field(manifest))?;
            (
                spec.broker_ref.name,
                Object::Exchange(def),
                spec.deletion_policy,
            )
        }
        Resource::Queue(r) => {
            let spec = QueueSpec {
                vhost: vhost(&r.spec.vhost),
                ..r.spec.clone()
            };
            let def = topology::queue_def(&spec).map_err(field(manifest))?;
            (
                spec.broker_ref.name,
                Object::Queue(def),
                spec.deletion_policy,
            )
        }
        Resource::Binding(r) => {
            let spec = BindingSpec {
                vhost: vhost(&r.spec.vhost),
                ..r.spec.clone()
            };
            let def = topology::binding_def(&spec).map_err(field(manifest))?;
            (
                spec.broker_ref.name,
                Object::Binding(def),
                DeletionPolicy::Delete,
            )
        }
        Resource::Policy(r) => {
            let spec = PolicySpec {
                vhost: vhost(&r.spec.vhost),
                ..r.spec.clone()
            };
            let def = topology::policy_def(&spec).map_err(field(manifest))?;
            (
                spec.broker_ref.name,
                Object::Policy(def),
                DeletionPolicy::Delete,
            )
        }
    };
    Ok(Some(desired))
}

/// Turns the files into one [`Target`] per Broker, refusing duplicates.
fn targets(manifests: &[Manifest], options: &ApplyOptions) -> Result<Vec<Target>> {
    let mut brokers: BTreeMap<&str, &Manifest> = BTreeMap::new();
    for manifest in manifests {
        if let Resource::Broker(_) = manifest.resource
            && let Some(first) = brokers.insert(manifest.resource.name(), manifest)
        {
            return Err(manifest.error(
                "metadata.name",
                format!("a Broker of this name is also in {}", first.file.display()),
            ));
        }
    }
    let mut targets: BTreeMap<String, Target> = BTreeMap::new();
    // (broker, kind, vhost, RabbitMQ identity) -> where it was first declared.
    let mut declared: BTreeMap<(String, &'static str, String, String), String> = BTreeMap::new();
    for manifest in manifests {
        let Some((broker_name, object, deletion)) = desired_object(manifest, options)? else {
            continue;
        };
        let (kind, identity) = match &object {
            Object::Exchange(e) => ("exchange", e.name.clone()),
            Object::Queue(q) => ("queue", q.name.clone()),
            Object::Binding(b) => ("binding", b.to_string()),
            Object::Policy(p) => ("policy", p.name.clone()),
        };
        let key = (
            broker_name.clone(),
            kind,
            object.vhost().to_owned(),
            identity,
        );
        let here = format!("{} in {}", manifest.label(), manifest.file.display());
        if let Some(first) = declared.insert(key, here) {
            return Err(manifest.error("spec", format!("declares the same {kind} as {first}")));
        }
        let target = match targets.entry(broker_name.clone()) {
            std::collections::btree_map::Entry::Occupied(entry) => entry.into_mut(),
            std::collections::btree_map::Entry::Vacant(entry) => {
                let broker = brokers
                    .get(broker_name.as_str())
                    .and_then(|m| match &m.resource {
                        Resource::Broker(broker) => Some(broker),
                        _ => None,
                    });
                if broker.is_none() && options.management_url.is_none() {
                    return Err(manifest.error(
                        "spec.brokerRef.name",
                        format!("no Broker named {broker_name:?} in the files; add it or set {ENV_MANAGEMENT_URL}"),
                    ));
                }
                let connection = connection_for(&broker_name, broker, options)?;
                entry.insert(Target {
                    broker: broker_name.clone(),
                    connection,
                    desired: Desired::default(),
                    removals: Vec::new(),
                    vhosts: Vec::new(),
                })
            }
        };
        if !target.vhosts.iter().any(|v| v == object.vhost()) {
            target.vhosts.push(object.vhost().to_owned());
        }
        target.removals.push((object.clone(), deletion));
        match object {
            Object::Exchange(e) => target.desired.exchanges.push(e),
            Object::Queue(q) => target.desired.queues.push(q),
            Object::Binding(b) => target.desired.bindings.push(b),
            Object::Policy(p) => target.desired.policies.push(p),
        }
    }
    let mut targets: Vec<Target> = targets.into_values().collect();
    for target in &mut targets {
        let unique: BTreeSet<String> = target.vhosts.drain(..).collect();
        target.vhosts = unique.into_iter().collect();
    }
    Ok(targets)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Diff,
    Apply,
    Delete,
}

async fn run(
    paths: &[PathBuf],
    options: &ApplyOptions,
    mode: Mode,
    progress: &mut (dyn FnMut(&Step) + Send),
) -> Result<Report> {
    let loaded = manifest::load(paths)?;
    let targets = targets(&loaded.manifests, options)?;
    let mut report = Report {
        steps: Vec::new(),
        skipped: loaded.skipped,
        notes: Vec::new(),
        api_calls: 0,
    };
    let concurrency = match options.concurrency {
        0 => DEFAULT_CONCURRENCY,
        n => n,
    };
    for target in targets {
        let api = HttpManagementApi::new(&target.connection)?;
        let observed = reconcile::observe(&api, api.base_url(), &target.vhosts).await?;
        let plan = match mode {
            Mode::Delete => plan::plan_removal(&target.removals, &observed),
            Mode::Diff | Mode::Apply => plan::plan(&target.desired, &observed, options.prune),
        };
        if mode != Mode::Delete && !options.prune {
            report
                .notes
                .extend(kept_binding_notes(&target, &plan, &observed));
        }
        // The plan runs phase by phase (exchanges, queues, bindings, policies, then deletions
        // in reverse), each phase's calls `concurrency` at a time: a binding is declared only
        // once both its ends are. Steps are reported in plan order.
        let mut actions = plan.actions.into_iter().peekable();
        while let Some(first) = actions.next() {
            let phase = first.phase();
            let mut group = vec![first];
            while let Some(next) = actions.next_if(|a| a.phase() == phase) {
                group.push(next);
            }
            let api = &api;
            let mut results = futures::stream::iter(group.into_iter().map(|action| async move {
                let result = if mode == Mode::Diff {
                    StepResult::Planned
                } else {
                    match reconcile::execute(api as &dyn ManagementApi, &action).await {
                        Ok(outcome) => StepResult::Outcome(outcome),
                        Err(error) => StepResult::Failed(crate::error_chain(&error)),
                    }
                };
                (action, result)
            }))
            .buffered(concurrency);
            while let Some((action, result)) = results.next().await {
                let step = Step {
                    broker: target.broker.clone(),
                    action,
                    result,
                };
                progress(&step);
                report.steps.push(step);
            }
        }
        report.api_calls += api.calls();
    }
    Ok(report)
}

/// One note per binding that stays beside a binding the plan creates between the same ends.
/// Without `--prune` the CLI cannot know what the files used to say, so it deletes nothing; the
/// note keeps a changed key or arguments from silently leaving the old binding routing messages.
fn kept_binding_notes(target: &Target, plan: &plan::Plan, observed: &Observed) -> Vec<String> {
    plan::bindings_left_beside(plan, &target.desired, observed)
        .into_iter()
        .map(|old| {
            format!(
                "{}: binding {} in vhost {:?} stays in RabbitMQ beside the new one (no file declares it); run with --prune to delete it",
                target.broker, old.definition, old.definition.vhost
            )
        })
        .collect()
}

/// Writes the topology of `vhost` at `management_url` as Warren resources (a Broker named
/// `broker` first), ready for `apply`.
pub async fn export(
    management_url: &str,
    broker: &str,
    vhost: &str,
    amqp_url: Option<&str>,
    options: &ApplyOptions,
) -> Result<String> {
    let api = HttpManagementApi::new(&connection(management_url, options)?)?;
    export::export_yaml(&api, api.base_url(), broker, vhost, amqp_url).await
}

/// Reconciles the resources in `paths` (files or directories) into their brokers.
///
/// Errors before anything changed (unreadable or invalid files, unreachable broker, missing
/// vhost) are `Err`; what happened to each object, conflicts and failures included, is in the report.
pub async fn apply(paths: &[PathBuf], options: &ApplyOptions) -> Result<Report> {
    apply_with_progress(paths, options, &mut |_| {}).await
}

/// [`apply`], calling `progress` after every step.
pub async fn apply_with_progress(
    paths: &[PathBuf],
    options: &ApplyOptions,
    progress: &mut (dyn FnMut(&Step) + Send),
) -> Result<Report> {
    run(paths, options, Mode::Apply, progress).await
}

/// The plan `apply` would carry out, changing nothing.
pub async fn diff(paths: &[PathBuf], options: &ApplyOptions) -> Result<Report> {
    run(paths, options, Mode::Diff, &mut |_| {}).await
}

/// Deletes the objects the files declare, except those with `deletionPolicy: retain`.
pub async fn delete(paths: &[PathBuf], options: &ApplyOptions) -> Result<Report> {
    delete_with_progress(paths, options, &mut |_| {}).await
}

/// [`delete`], calling `progress` after every step.
pub async fn delete_with_progress(
    paths: &[PathBuf],
    options: &ApplyOptions,
    progress: &mut (dyn FnMut(&Step) + Send),
) -> Result<Report> {
    run(paths, options, Mode::Delete, progress).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifests(text: &str) -> Vec<Manifest> {
        let mut loaded = manifest::Loaded::default();
        manifest::parse_documents(std::path::Path::new("t.yaml"), text, &mut loaded)
            .unwrap_or_else(|e| panic!("{e}"));
        loaded.manifests
    }

    const BROKER: &str = "apiVersion: warren.dev/v1alpha1\nkind: Broker\nmetadata: {name: local}\nspec:\n  managementUrl: http://127.0.0.1:15672\n  credentialsSecretRef: {name: rabbitmq-credentials}\n";
    const QUEUE: &str = "---\napiVersion: warren.dev/v1alpha1\nkind: Queue\nmetadata: {name: q}\nspec:\n  brokerRef: {name: local}\n  name: q\n";

    #[test]
    fn vhost_override_moves_every_object() {
        let options = ApplyOptions {
            vhost: Some("test-1".into()),
            ..ApplyOptions::default()
        };
        let targets = targets(&manifests(&format!("{BROKER}{QUEUE}")), &options)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(targets.len(), 1);
        assert_eq!(targets[0].vhosts, ["test-1"]);
        assert_eq!(targets[0].desired.queues[0].vhost, "test-1");
        assert_eq!(targets[0].connection.credentials.username, "guest");
    }

    #[test]
    fn duplicates_and_unknown_brokers_are_refused_with_the_resource_named() {
        let duplicate = format!(
            "{BROKER}{QUEUE}{}",
            QUEUE.replace("metadata: {name: q}", "metadata: {name: q2}")
        );
        let error = targets(&manifests(&duplicate), &ApplyOptions::default())
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            error.as_deref(),
            Some("t.yaml: Queue/q2: spec: declares the same queue as Queue/q in t.yaml")
        );

        let error = targets(&manifests(QUEUE), &ApplyOptions::default())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            error.starts_with("t.yaml: Queue/q: spec.brokerRef.name: no Broker named \"local\""),
            "{error}"
        );
    }

    #[test]
    fn guest_is_only_assumed_for_loopback() {
        let remote = BROKER.replace("127.0.0.1", "rabbitmq.example.com");
        let error = targets(
            &manifests(&format!("{remote}{QUEUE}")),
            &ApplyOptions::default(),
        )
        .err();
        assert!(
            matches!(error, Some(Error::Config(ref text)) if text.contains(ENV_USERNAME)),
            "{error:?}"
        );
    }
}
