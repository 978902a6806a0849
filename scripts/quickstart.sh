#!/usr/bin/env bash
# Warren's local quick start: RabbitMQ and PostgreSQL up, ADR-029 topology applied by
# `warren apply`, then the messaging demo (outbox → relay → RabbitMQ → idempotent consumer)
# until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh
echo "quickstart: building warren and the demo (release)"
cargo build --release -q -p warren-operator -p warren-tests --bin warren --bin demo
echo "quickstart: applying manifests/topology"
target/release/warren apply -f manifests/topology
exec target/release/demo
