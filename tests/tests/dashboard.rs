//! The Grafana dashboard (charts/warren/dashboards/warren.json) and the PrometheusRule
//! (charts/warren/templates/prometheusrule.yaml) query only metrics that the workers and the
//! operator really export: names are taken from their registries' own exposition.

use std::collections::BTreeSet;

use serde_json::Value;
use warren_tests::envtest::workspace;

/// Every sample name the exposition `text` can hold (`# TYPE` lines: counters get `_total`,
/// histograms `_bucket`, `_sum` and `_count`).
fn exported(text: &str, names: &mut BTreeSet<String>) {
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("#") || words.next() != Some("TYPE") {
            continue;
        }
        let (Some(name), Some(kind)) = (words.next(), words.next()) else {
            continue;
        };
        match kind {
            "counter" => {
                names.insert(format!("{name}_total"));
            }
            "histogram" => {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
            _ => {
                names.insert(name.to_owned());
            }
        }
    }
}

/// Every family exported, each given one sample (the client leaves families without samples
/// out of the exposition).
fn exported_names() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for service in ["orders", "inventory"] {
        let metrics = warren_messaging::Metrics::new(service);
        metrics
            .events_published
            .get_or_create(&warren_messaging::metrics::EventTypeLabels {
                event_type: "x".into(),
            })
            .inc();
        metrics
            .events_publish_errors
            .get_or_create(&warren_messaging::metrics::EventTypeLabels {
                event_type: "x".into(),
            })
            .inc();
        metrics
            .events_dlq
            .get_or_create(&warren_messaging::metrics::EventTypeLabels {
                event_type: "x".into(),
            })
            .inc();
        metrics
            .events_consumed
            .get_or_create(&warren_messaging::metrics::ConsumedLabels {
                event_type: "x".into(),
                status: "success".into(),
            })
            .inc();
        match service {
            "orders" => drop(warren_orders::metrics::OrdersMetrics::register(&metrics)),
            _ => drop(warren_inventory::metrics::InventoryMetrics::register(
                &metrics,
            )),
        }
        exported(&metrics.encode(), &mut names);
    }
    let mut registry = prometheus_client::registry::Registry::default();
    let operator = warren_operator::controller::Metrics::new(&mut registry);
    operator.reconciled("Queue", std::time::Duration::from_millis(1));
    operator.failed("Queue", "rabbitmq_unreachable");
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)
        .unwrap_or_else(|e| panic!("{e}"));
    exported(&text, &mut names);
    names
}

/// Metric names a PromQL expression uses: identifiers followed by `{`, `[` or a closing
/// parenthesis/space, that are not PromQL's own words.
fn queried(expr: &str) -> BTreeSet<String> {
    const PROMQL: [&str; 14] = [
        "sum",
        "by",
        "rate",
        "max",
        "count",
        "histogram_quantile",
        "or",
        "and",
        "le",
        "without",
        "min",
        "avg",
        "irate",
        "increase",
    ];
    let mut names = BTreeSet::new();
    let mut word = String::new();
    let mut in_braces = 0;
    let mut in_string = false;
    for c in expr.chars().chain(std::iter::once(' ')) {
        if c == '"' {
            in_string = !in_string;
        }
        if in_string {
            continue;
        }
        if c.is_ascii_alphanumeric() || c == '_' {
            word.push(c);
            continue;
        }
        if !word.is_empty()
            && in_braces == 0
            && word.contains('_')
            && !PROMQL.contains(&word.as_str())
            && !word.chars().next().is_some_and(|f| f.is_ascii_digit())
        {
            names.insert(word.clone());
        }
        word.clear();
        match c {
            '{' => in_braces += 1,
            '}' => in_braces -= 1,
            _ => {}
        }
        // Grouping labels: `by (le, kind)` lists labels, not metrics.
    }
    names.retain(|n| {
        ![
            "event_type",
            "vhost",
            "queue",
            "kind",
            "reason",
            "status",
            "namespace",
            "name",
        ]
        .contains(&n.as_str())
    });
    names
}

#[test]
fn every_metric_the_dashboard_and_the_alerts_query_is_exported() {
    let exported = exported_names();
    let path = workspace().join("charts/warren/dashboards/warren.json");
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_default())
            .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
    let mut expressions: Vec<String> = dashboard["panels"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_owned))
        .collect();
    assert!(expressions.len() >= 10, "{expressions:?}");
    let rules =
        std::fs::read_to_string(workspace().join("charts/warren/templates/prometheusrule.yaml"))
            .unwrap_or_default();
    let mut in_expr = false;
    for line in rules.lines() {
        let trimmed = line.trim();
        if let Some(expr) = trimmed.strip_prefix("expr:") {
            in_expr = expr.trim() == "|";
            if !in_expr {
                expressions.push(expr.trim().to_owned());
            }
        } else if in_expr && trimmed.contains(':') && !trimmed.starts_with('(') {
            in_expr = false;
        } else if in_expr {
            expressions.push(trimmed.to_owned());
        }
    }
    let mut used = BTreeSet::new();
    for expr in &expressions {
        used.extend(queried(expr));
    }
    for name in [
        "warren_queue_messages",
        "orders_events_lag_seconds_bucket",
        "inventory_outbox_oldest_unpublished_age_seconds",
        "warren_resource_ready",
        "warren_reconcile_failures_total",
        "orders_events_dlq_total",
    ] {
        assert!(used.contains(name), "{name} is queried: {used:?}");
    }
    let unknown: Vec<&String> = used.difference(&exported).collect();
    assert!(
        unknown.is_empty(),
        "queried but not exported: {unknown:?}\nexported: {exported:?}"
    );
}
