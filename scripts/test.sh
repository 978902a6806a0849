#!/usr/bin/env bash
# Runs every check and test of Warren: formatting, clippy, no unused dependency, the Helm
# chart (offline lint, render and schema validation), unit tests, the tests against the real
# RabbitMQ and PostgreSQL (started by scripts/services.sh), the operator's tests against a real
# Kubernetes API server (envtest assets from KUBEBUILDER_ASSETS or ../shared/envtest, prepared
# by scripts/envtest.sh), the fault suite (alone: it stops RabbitMQ), and scripts/node-e2e.sh:
# the chart, the topology and both workers as real pods on a one-node cluster of this machine,
# and an order through them.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh
KUBEBUILDER_ASSETS=$(scripts/envtest.sh)
export KUBEBUILDER_ASSETS
if [ -z "$KUBEBUILDER_ASSETS" ]; then
  echo "test.sh: WARNING: no envtest assets; the real-API-server tests will be SKIPPED" >&2
fi
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
scripts/unused-deps.py
scripts/chart-check.sh
# cargo prints one summary per test binary (the last one is often an empty doc-test run), so
# close with one line that adds them all up.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
awk '/^test result:/ { for (i = 1; i < NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
[ "$status" = 0 ] || exit "$status"
# The fault suite stops the shared RabbitMQ, so it runs alone, after the others: both workers as
# processes under load through kill -9, forced connection closes, a RabbitMQ stop and a
# PostgreSQL outage, then every invariant (tests/tests/faults.rs).
# (`cargo test --workspace` above built the worker binaries it runs: their own tests use them.)
cargo test -p warren-tests --test faults -- --ignored --nocapture
scripts/node-e2e.sh
