#!/usr/bin/env bash
# Renders charts/warren offline, as `helm template` would, and prints the objects as one YAML
# stream (CRDs not included). Used by the real-API-server tests to run the operator with exactly
# the chart's RBAC.
#
# Usage: scripts/chart-render.sh RELEASE NAMESPACE [VALUES_JSON]
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { echo "usage: $0 RELEASE NAMESPACE [VALUES_JSON]" >&2; exit 2; }
venv=$(scripts/chart-venv.sh)
"$venv/bin/python" - charts/warren "$1" "$2" "${3:-{\}}" <<'PY'
import json
import sys

import helm_python as helm

chart_dir, release, namespace, values = sys.argv[1:5]
chart = helm.Chart.load(chart_dir)
manifests = chart.render(json.loads(values), name=release, namespace=namespace, is_install=True)
for path, text in sorted(manifests.items()):
    if path.endswith("NOTES.txt") or not text.strip():
        continue
    print(f"---\n# Source: {path}\n{text.strip()}")
PY
