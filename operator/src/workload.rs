//! What a Worker becomes in Kubernetes, decided without a client: the Deployment and Service the
//! operator applies, the environment that wires the worker to RabbitMQ and PostgreSQL through
//! Secrets, and the backlog autoscaler's decision. The controller (`controller::worker`) reads
//! the inputs and applies the result.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::crd::worker::{Autoscaling, AutoscalingStatus, Worker};
use crate::crd::{Broker, GROUP};

/// Port of the worker's HTTP API, `/metrics`, `/healthz` and `/readyz`.
pub const HTTP_PORT: i32 = 8080;
/// Pod template annotation that changes when a Secret the worker reads changes, so a rotated
/// credential rolls the pods.
pub const SECRETS_ANNOTATION: &str = "warren.dev/secrets-version";
/// The user every worker image runs as (distroless `nonroot`).
pub const RUN_AS: i64 = 65532;

/// Everything the Deployment depends on besides the Worker itself.
pub struct Inputs<'a> {
    /// The Worker.
    pub worker: &'a Worker,
    /// Its Broker (the AMQP URL and the credentials Secret come from it).
    pub broker: &'a Broker,
    /// The vhost of the queues and exchanges it names.
    pub vhost: &'a str,
    /// Replicas to run.
    pub replicas: i32,
    /// resourceVersions of the Secrets it reads, joined; a change rolls the pods.
    pub secrets_version: &'a str,
}

/// Labels that select a Worker's pods.
pub fn selector(worker: &Worker) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/name".to_owned(),
            worker.spec.worker.as_str().to_owned(),
        ),
        (
            "app.kubernetes.io/instance".to_owned(),
            worker.metadata.name.clone().unwrap_or_default(),
        ),
    ])
}

fn labels(worker: &Worker) -> BTreeMap<String, String> {
    let mut labels = selector(worker);
    labels.insert(
        "app.kubernetes.io/component".to_owned(),
        "worker".to_owned(),
    );
    labels.insert(
        "app.kubernetes.io/managed-by".to_owned(),
        "warren-operator".to_owned(),
    );
    labels
}

fn owner_reference(worker: &Worker) -> Value {
    json!({
        "apiVersion": format!("{GROUP}/v1alpha1"),
        "kind": "Worker",
        "name": worker.metadata.name,
        "uid": worker.metadata.uid,
        "controller": true,
        "blockOwnerDeletion": true,
    })
}

/// `amqp_url` pointed at `vhost` (percent-encoded), without user info: the credentials come
/// from the Broker's Secret as separate variables.
pub fn amqp_url_for(amqp_url: &str, vhost: &str) -> String {
    let Ok(mut url) = reqwest::Url::parse(amqp_url) else {
        // Not a URL: the worker's connection attempt says so in its log.
        return amqp_url.to_owned();
    };
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url.set_query(None);
    url.set_path(&format!("/{}", urlencoding::encode(vhost)));
    url.to_string()
}

fn secret_env(name: &str, secret: &str, key: &str) -> Value {
    json!({"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}})
}

fn plain_env(name: &str, value: impl ToString) -> Value {
    json!({"name": name, "value": value.to_string()})
}

/// The worker's environment: Warren's variables, then the spec's extra ones. A spec variable of
/// the same name replaces Warren's (server-side apply refuses a list with a name twice).
pub fn environment(inputs: &Inputs<'_>) -> Vec<Value> {
    let spec = &inputs.worker.spec;
    let credentials = &inputs.broker.spec.credentials_secret_ref.name;
    let settings = &spec.settings;
    let mut env = vec![
        plain_env("WARREN_HTTP_ADDR", format!("0.0.0.0:{HTTP_PORT}")),
        plain_env(
            "WARREN_AMQP_URL",
            amqp_url_for(
                inputs.broker.spec.amqp_url.as_deref().unwrap_or_default(),
                inputs.vhost,
            ),
        ),
        secret_env("WARREN_AMQP_USERNAME", credentials, "username"),
        secret_env("WARREN_AMQP_PASSWORD", credentials, "password"),
        secret_env(
            "WARREN_DATABASE_URL",
            &spec.database.secret_ref.name,
            &spec.database.secret_ref.key,
        ),
        plain_env("RUST_LOG", settings.log_level.as_deref().unwrap_or("info")),
    ];
    let optional = [
        (
            "WARREN_DATABASE_MAX_CONNECTIONS",
            settings.database_max_connections.map(i64::from),
        ),
        (
            "WARREN_CONSUMER_LANES",
            settings.consumer_lanes.map(i64::from),
        ),
        (
            "WARREN_PROCESSED_RETENTION_SECONDS",
            settings.processed_retention_seconds,
        ),
        (
            "WARREN_RESERVATION_TTL_SECONDS",
            settings.reservation_ttl_seconds,
        ),
        (
            "WARREN_EXPIRY_SWEEP_INTERVAL_SECONDS",
            settings.expiry_sweep_interval_seconds,
        ),
        (
            "WARREN_RESERVATION_REDRIVE_INTERVAL_SECONDS",
            settings.reservation_redrive_interval_seconds,
        ),
    ];
    env.extend(
        optional
            .into_iter()
            .filter_map(|(name, value)| value.map(|v| plain_env(name, v))),
    );
    if let Some(url) = &settings.inventory_url {
        env.push(plain_env("WARREN_INVENTORY_URL", url));
    }
    env.retain(|var| !spec.env.iter().any(|own| var["name"] == own.name.as_str()));
    env.extend(
        spec.env
            .iter()
            .filter_map(|var| serde_json::to_value(var).ok()),
    );
    env
}

/// The Deployment Warren applies for a Worker (server-side apply: only the fields Warren sets).
pub fn deployment(inputs: &Inputs<'_>) -> Value {
    let worker = inputs.worker;
    let spec = &worker.spec;
    let name = worker.metadata.name.clone().unwrap_or_default();
    let probe = |path: &str, period: i32| json!({"httpGet": {"path": path, "port": "http"}, "periodSeconds": period, "failureThreshold": 3});
    let mut container = json!({
        "name": spec.worker.as_str(),
        "image": spec.image,
        "ports": [{"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"}],
        "env": environment(inputs),
        "livenessProbe": probe("/healthz", 10),
        "readinessProbe": probe("/readyz", 5),
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "runAsNonRoot": true,
            "capabilities": {"drop": ["ALL"]},
        },
    });
    if let Some(policy) = spec.image_pull_policy {
        container["imagePullPolicy"] = json!(policy.as_str());
    }
    if let Some(resources) = &spec.resources {
        container["resources"] = serde_json::to_value(resources).unwrap_or(Value::Null);
    }
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": worker.metadata.namespace,
            "labels": labels(worker),
            "ownerReferences": [owner_reference(worker)],
        },
        "spec": {
            "replicas": inputs.replicas,
            "selector": {"matchLabels": selector(worker)},
            "template": {
                "metadata": {
                    "labels": labels(worker),
                    "annotations": {SECRETS_ANNOTATION: inputs.secrets_version},
                },
                "spec": {
                    "automountServiceAccountToken": false,
                    "securityContext": {
                        "runAsNonRoot": true,
                        "runAsUser": RUN_AS,
                        "runAsGroup": RUN_AS,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    // Running messages finish and the outbox relay stops cleanly on SIGTERM.
                    "terminationGracePeriodSeconds": 30,
                    "containers": [container],
                },
            },
        },
    })
}

/// The Service in front of a Worker's pods: its HTTP API and `/metrics`.
pub fn service(worker: &Worker) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": worker.metadata.name,
            "namespace": worker.metadata.namespace,
            "labels": labels(worker),
            "ownerReferences": [owner_reference(worker)],
        },
        "spec": {
            "selector": selector(worker),
            "ports": [{"name": "http", "port": HTTP_PORT, "targetPort": "http", "protocol": "TCP"}],
        },
    })
}

/// What the autoscaler decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scale {
    /// Replicas to run now.
    pub replicas: i32,
    /// What the status records.
    pub status: AutoscalingStatus,
}

/// Replicas from the consumed queues' backlog (`None`: RabbitMQ has not reported it yet).
///
/// Up at once; down only once the lower count has been wanted for the stabilization window
/// (from `previous.lower_since`), so a backlog that drains and refills does not flap the pods.
pub fn autoscale(
    policy: &Autoscaling,
    backlog: Option<i64>,
    current: Option<i32>,
    previous: Option<&AutoscalingStatus>,
    now: jiff::Timestamp,
) -> Scale {
    let (min, max) = (
        policy.min_replicas,
        policy.max_replicas.max(policy.min_replicas),
    );
    let per = policy.messages_per_replica.max(1);
    let wanted = backlog.map(|b| {
        let needed = (b.max(0) + per - 1) / per;
        i32::try_from(needed).unwrap_or(i32::MAX).clamp(min, max)
    });
    let last_scale_time = previous.and_then(|p| p.last_scale_time.clone());
    let now_text = now.to_string();
    let status = |desired: i32, reason: String, scaled: bool, lower_since: Option<String>| {
        AutoscalingStatus {
            backlog: backlog.unwrap_or_default(),
            desired_replicas: desired,
            reason,
            last_scale_time: if scaled {
                Some(now_text.clone())
            } else {
                last_scale_time.clone()
            },
            lower_since,
        }
    };
    let Some(wanted) = wanted else {
        let keep = current.unwrap_or(min).clamp(min, max);
        return Scale {
            replicas: keep,
            status: status(
                keep,
                "the consumed queues' backlog is not known yet (RabbitMQ has not reported it)"
                    .to_owned(),
                current != Some(keep),
                None,
            ),
        };
    };
    let backlog = backlog.unwrap_or_default();
    let why = format!(
        "backlog {backlog} at {per} messages per replica asks for {wanted} (min {min}, max {max})"
    );
    // A count outside the bounds (they were just changed) is brought inside at once.
    let current = current.map(|c| c.clamp(min, max));
    match current {
        Some(current) if wanted < current => {
            let since = previous
                .and_then(|p| p.lower_since.as_deref())
                .and_then(|t| t.parse::<jiff::Timestamp>().ok())
                .unwrap_or(now);
            let held = now.duration_since(since).as_secs();
            if held >= policy.scale_down_stabilization_seconds {
                Scale {
                    replicas: wanted,
                    status: status(
                        wanted,
                        format!("scaled down from {current}: {why}"),
                        true,
                        None,
                    ),
                }
            } else {
                Scale {
                    replicas: current,
                    status: status(
                        wanted,
                        format!(
                            "holding {current} replicas: {why}; scaling down at {} unless the backlog grows ({}s stabilization)",
                            since
                                .checked_add(jiff::SignedDuration::from_secs(
                                    policy.scale_down_stabilization_seconds
                                ))
                                .unwrap_or(since),
                            policy.scale_down_stabilization_seconds
                        ),
                        false,
                        Some(since.to_string()),
                    ),
                }
            }
        }
        Some(current) if wanted > current => Scale {
            replicas: wanted,
            status: status(
                wanted,
                format!("scaled up from {current}: {why}"),
                true,
                None,
            ),
        },
        Some(current) => Scale {
            replicas: current,
            status: status(wanted, why, false, None),
        },
        None => Scale {
            replicas: wanted,
            status: status(wanted, why, true, None),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Autoscaling {
        Autoscaling {
            min_replicas: 1,
            max_replicas: 5,
            messages_per_replica: 100,
            scale_down_stabilization_seconds: 60,
        }
    }

    fn at(second: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_second(1_800_000_000 + second).unwrap_or(jiff::Timestamp::UNIX_EPOCH)
    }

    #[test]
    fn scales_up_at_once_within_min_and_max() {
        let scale = autoscale(&policy(), Some(250), Some(1), None, at(0));
        assert_eq!(scale.replicas, 3);
        assert!(
            scale.status.reason.starts_with("scaled up from 1"),
            "{:?}",
            scale.status
        );
        assert_eq!(scale.status.last_scale_time, Some(at(0).to_string()));
        assert_eq!(
            autoscale(&policy(), Some(100_000), Some(1), None, at(0)).replicas,
            5
        );
        assert_eq!(autoscale(&policy(), Some(0), None, None, at(0)).replicas, 1);
    }

    #[test]
    fn scales_down_only_after_the_stabilization_window() {
        let first = autoscale(&policy(), Some(0), Some(3), None, at(0));
        assert_eq!(first.replicas, 3, "{:?}", first.status);
        assert!(
            first.status.reason.starts_with("holding 3"),
            "{:?}",
            first.status
        );
        let later = autoscale(&policy(), Some(0), Some(3), Some(&first.status), at(30));
        assert_eq!(later.replicas, 3);
        let done = autoscale(&policy(), Some(0), Some(3), Some(&later.status), at(61));
        assert_eq!(done.replicas, 1, "{:?}", done.status);
        // The backlog coming back resets the window.
        let back = autoscale(&policy(), Some(300), Some(3), Some(&later.status), at(40));
        assert_eq!(back.status.lower_since, None);
    }

    #[test]
    fn a_lowered_maximum_applies_at_once_and_holding_says_until_when() {
        let scale = autoscale(&policy(), Some(100_000), Some(10), None, at(0));
        assert_eq!(scale.replicas, 5, "max is 5: {:?}", scale.status);
        let hold = autoscale(&policy(), Some(0), Some(3), None, at(0));
        let again = autoscale(&policy(), Some(0), Some(3), Some(&hold.status), at(30));
        assert_eq!(
            hold.status.reason, again.status.reason,
            "no ticking counter in the status"
        );
    }

    #[test]
    fn a_spec_variable_replaces_warrens_of_the_same_name() {
        let mut worker: Worker = serde_json::from_value(serde_json::json!({
            "apiVersion": "warren.dev/v1alpha1", "kind": "Worker",
            "metadata": {"name": "orders", "namespace": "ns"},
            "spec": {"worker": "orders", "image": "i", "brokerRef": {"name": "b"},
                     "database": {"secretRef": {"name": "db"}},
                     "env": [{"name": "RUST_LOG", "value": "debug"}]}
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        worker.metadata.uid = Some("u".into());
        let broker: Broker = serde_json::from_value(serde_json::json!({
            "apiVersion": "warren.dev/v1alpha1", "kind": "Broker",
            "metadata": {"name": "b", "namespace": "ns"},
            "spec": {"managementUrl": "http://mq:15672", "amqpUrl": "amqp://mq:5672",
                     "credentialsSecretRef": {"name": "creds"}}
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        let env = environment(&Inputs {
            worker: &worker,
            broker: &broker,
            vhost: "/",
            replicas: 1,
            secrets_version: "1/2",
        });
        let logs: Vec<&Value> = env.iter().filter(|v| v["name"] == "RUST_LOG").collect();
        assert_eq!(
            logs,
            [&serde_json::json!({"name": "RUST_LOG", "value": "debug"})]
        );
    }

    #[test]
    fn an_unknown_backlog_keeps_what_runs() {
        let scale = autoscale(&policy(), None, Some(2), None, at(0));
        assert_eq!(scale.replicas, 2);
        assert!(scale.status.reason.contains("not known"));
    }

    #[test]
    fn amqp_urls_lose_their_user_info_and_get_the_vhost() {
        assert_eq!(
            amqp_url_for("amqp://guest:guest@rabbitmq.infra:5672/%2f", "/"),
            "amqp://rabbitmq.infra:5672/%2F"
        );
        assert_eq!(
            amqp_url_for("amqps://mq:5671", "orders"),
            "amqps://mq:5671/orders"
        );
    }
}
