#!/usr/bin/env bash
# Runs every check and test of Warren: formatting, clippy, the Helm chart (offline lint, render
# and schema validation), unit tests and the tests against the real RabbitMQ and PostgreSQL
# (started by scripts/services.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
scripts/chart-check.sh
cargo test --workspace
